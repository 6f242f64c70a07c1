//! Command-line flags and their environment variables (CONTRACT.md, "Command line").

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ferrocd",
    version,
    about = "A continuous-delivery server in the GoCD tradition"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `ferrocd` with no subcommand serves, with these flags.
    #[command(flatten)]
    pub serve: ServeArgs,
}

// Parsed once at start and taken apart at once: the larger variant's size costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the server (the default).
    Serve(ServeArgs),
    /// Start an agent that registers, polls for work, runs tasks and streams their console.
    Agent(AgentArgs),
    /// Database tools: `ferrocd db copy` moves an embedded installation to PostgreSQL.
    Db(DbArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    #[command(subcommand)]
    pub command: DbCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DbCommand {
    /// Copy every row of an embedded (SQLite) database into an empty PostgreSQL database, in
    /// one transaction; then start `ferrocd serve --database-url postgres://…`. Stop the
    /// server first. Both are migrated to this version's schema before the copy.
    Copy(CopyArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CopyArgs {
    /// The embedded database to read: `sqlite://PATH`, e.g. `sqlite://ferrocd-data/ferrocd.db`.
    #[arg(long, env = "FERROCD_COPY_FROM")]
    pub from: String,
    /// The empty PostgreSQL database to fill: `postgres://user:password@host:port/db`. Its
    /// value is never shown in `--help`, as it may hold a password.
    #[arg(long, env = "FERROCD_COPY_TO", hide_env_values = true)]
    pub to: String,
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The server's base URL: https://ci.example.com behind a TLS proxy, or
    /// http://127.0.0.1:8153 on the same machine.
    #[arg(long, env = "FERROCD_SERVER")]
    pub server: String,
    /// A PEM file of CA certificates trusted for an https:// server, besides the system's
    /// (for a private CA).
    #[arg(long, env = "FERROCD_AGENT_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// The server's auto-register key: the agent starts Enabled instead of Pending.
    #[arg(long, env = "FERROCD_AGENT_REGISTRATION_KEY")]
    pub registration_key: Option<String>,
    /// Where the agent keeps its identity (uuid and token) and its build sandboxes.
    #[arg(long, env = "FERROCD_AGENT_WORK_DIR", default_value = "ferrocd-agent")]
    pub work_dir: PathBuf,
    /// Resources this agent offers, comma-separated (jobs needing them can run here).
    #[arg(long, value_delimiter = ',')]
    pub resources: Vec<String>,
    /// Environments this agent belongs to, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub environments: Vec<String>,
    /// The hostname to register with (default: this machine's).
    #[arg(long)]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to bind. Anything but loopback (e.g. 0.0.0.0:8153, for remote agents and
    /// users) needs --password-file, or --insecure-open.
    #[arg(long, env = "FERROCD_LISTEN", default_value = "127.0.0.1:8153")]
    pub listen: SocketAddr,
    /// `sqlite://…` (embedded, created on first start; the default is
    /// `sqlite://DATA_DIR/ferrocd.db`) or `postgres://user:password@host:port/db` (several nodes
    /// may share one). Its value is never shown in `--help`, as it may hold a password.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the embedded database and any files live.
    #[arg(long, env = "FERROCD_DATA_DIR", default_value = "ferrocd-data")]
    pub data_dir: PathBuf,
    /// Pipeline config: a GoCD YAML file, or a directory searched for `**/*.gocd.yaml` and
    /// `**/*.gocd.yml`. Repeatable (comma-separated in the environment). Re-read on SIGHUP and
    /// on `POST /api/admin/config/reload`.
    #[arg(long = "config", env = "FERROCD_CONFIG", value_delimiter = ',')]
    pub config: Vec<PathBuf>,
    /// A config repository, `URL[#branch]` (branch `master` when absent): every
    /// `*.gocd.yaml`/`*.gocd.yml` in it is pipeline config, polled with the materials.
    /// Repeatable (comma-separated in the environment).
    #[arg(
        long = "config-repo",
        env = "FERROCD_CONFIG_REPOS",
        value_delimiter = ','
    )]
    pub config_repos: Vec<crate::config_sources::ConfigRepo>,
    /// GoCD's auto-register key: agents presenting it start Enabled.
    #[arg(long, env = "FERROCD_AGENT_REGISTRATION_KEY")]
    pub agent_registration_key: Option<String>,
    /// Seconds after which a silent Enabled agent becomes LostContact.
    #[arg(long, env = "FERROCD_LOST_CONTACT_AFTER", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub lost_contact_after: u64,
    /// Minutes of console silence after which a running job is cancelled, for jobs that set
    /// no `timeout` of their own (GoCD's default job timeout); 0: never.
    #[arg(long, env = "FERROCD_DEFAULT_JOB_TIMEOUT", default_value_t = 0)]
    pub default_job_timeout: u64,
    /// Where jobs' artifacts are kept (default: `artifacts` in the data dir).
    #[arg(long, env = "FERROCD_ARTIFACTS_DIR")]
    pub artifacts_dir: Option<PathBuf>,
    /// The most bytes of artifacts one job may upload; past it an upload is refused (413).
    #[arg(long, env = "FERROCD_MAX_ARTIFACT_BYTES", default_value_t = 10 * 1024 * 1024 * 1024)]
    pub max_artifact_bytes: u64,
    /// Keep the artifacts of each pipeline's newest N instances (and always those of its
    /// latest passed one and of `keep_artifacts` stages); older ones are deleted, oldest
    /// first. Default: keep all.
    #[arg(long, env = "FERROCD_ARTIFACTS_KEEP", value_parser = clap::value_parser!(u32).range(1..))]
    pub artifacts_keep: Option<u32>,
    /// A file holding the secret GitHub, GitLab and Bitbucket sign their webhooks with (or
    /// the secret itself in `FERROCD_WEBHOOK_SECRET`); without one, webhooks are refused.
    #[arg(long, env = "FERROCD_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Seconds between polls of the git materials (the first poll runs right after start);
    /// 0: never poll.
    #[arg(long, env = "FERROCD_MATERIAL_POLL_INTERVAL", default_value_t = 60)]
    pub material_poll_interval: u64,
    /// A build's console is cut here: one line says so and the agent stops uploading.
    #[arg(long, env = "FERROCD_MAX_CONSOLE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_console_bytes: u64,
    /// New agents without the registration key are refused (429) while this many wait for
    /// approval.
    #[arg(long, env = "FERROCD_MAX_PENDING_AGENTS", default_value_t = 200)]
    pub max_pending_agents: u32,
    /// Registrations without the key allowed per second from one address (five times as
    /// many at once); 0 turns the limit off (agent farms on one host, benchmarks).
    #[arg(long, env = "FERROCD_REGISTRATIONS_PER_SECOND", default_value_t = 10)]
    pub registrations_per_second: u32,
    /// Users and their bcrypt password hashes, in htpasswd format (`htpasswd -B -c FILE alice`);
    /// re-read when it changes. With it, every page, stream and API call needs a user.
    #[arg(long, env = "FERROCD_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// Users of the password file who are admins (change agents, schedule ad-hoc jobs),
    /// comma-separated.
    #[arg(long, env = "FERROCD_ADMINS", value_delimiter = ',')]
    pub admins: Vec<String>,
    /// Serve a non-loopback address without authentication: anyone who can reach it can run
    /// commands on every agent.
    #[arg(long, env = "FERROCD_INSECURE_OPEN")]
    pub insecure_open: bool,
    /// The address people use, e.g. https://ci.example.com: its host is accepted in `Host`.
    #[arg(long, env = "FERROCD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Further host names people may use to reach the server, comma-separated.
    #[arg(long, env = "FERROCD_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// A reverse proxy whose `X-Forwarded-Proto` and `X-Forwarded-For` are believed (from
    /// that address only).
    #[arg(long, env = "FERROCD_TRUSTED_PROXY")]
    pub trusted_proxy: Option<IpAddr>,
    /// Connections served at once; past it a new connection is answered 503 and closed.
    #[arg(long, env = "FERROCD_MAX_CONNECTIONS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Event streams open at once from one client address, beyond which a stream is 503
    /// (0: no cap, for benchmarks that open many from one machine).
    #[arg(long, env = "FERROCD_MAX_STREAMS_PER_ADDRESS", default_value_t = 2000)]
    pub max_streams_per_address: u64,
    /// Seconds a client has to send a request's headers, and that a kept-alive connection
    /// may wait for its next request, before it is closed.
    #[arg(long, env = "FERROCD_HEADER_READ_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout: u64,
    /// On PostgreSQL, how often (seconds) a node checks the connection it hears other nodes'
    /// events on; a check unanswered for as long drops the connection (a NAT or firewall can
    /// drop an idle one without a word), and the node connects again and re-reads every view.
    #[arg(long, env = "FERROCD_DATABASE_HEARTBEAT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub database_heartbeat: u64,
}

/// The settings the server runs with, resolved from flags (or built directly by tests).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    pub data_dir: PathBuf,
    /// `--config` files and directories.
    pub config_paths: Vec<PathBuf>,
    /// `--config-repo`s.
    pub config_repos: Vec<crate::config_sources::ConfigRepo>,
    pub agent_registration_key: Option<String>,
    pub lost_contact_after: Duration,
    /// Console silence after which a job without a timeout of its own is cancelled; zero:
    /// never (`--default-job-timeout`, in minutes).
    pub default_job_timeout: Duration,
    /// Between polls of the git materials; zero: never.
    pub material_poll_interval: Duration,
    /// The webhooks' secret: read from this file at start, else `webhook_secret`.
    pub webhook_secret_file: Option<PathBuf>,
    /// Where jobs' artifacts are kept.
    pub artifacts_dir: PathBuf,
    pub max_artifact_bytes: u64,
    /// `--artifacts-keep`: `None` keeps all.
    pub artifacts_keep: Option<u32>,
    /// From `FERROCD_WEBHOOK_SECRET` (never a flag: argv is visible to everyone).
    pub webhook_secret: Option<String>,
    pub max_console_bytes: u64,
    pub max_pending_agents: u32,
    pub registrations_per_second: u32,
    pub password_file: Option<PathBuf>,
    pub admins: Vec<String>,
    pub insecure_open: bool,
    /// The host people use (from `--public-url`), and any others they may.
    pub public_url: Option<String>,
    pub allowed_hosts: Vec<String>,
    pub trusted_proxy: Option<IpAddr>,
    /// Connections served at once (at least 1).
    pub max_connections: usize,
    /// Open event streams per client IP address; 0 means no cap.
    pub max_streams_per_address: usize,
    /// How long a request's headers, or a kept-alive connection's next request, may take.
    pub header_read_timeout: Duration,
    pub database_heartbeat: Duration,
    /// How long shutdown lets in-flight requests finish before it drops their connections.
    pub shutdown_deadline: Duration,
}

/// How long a stopping server waits for in-flight requests (the issue: "SIGTERM finishes
/// within 10 s").
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

impl From<ServeArgs> for Config {
    fn from(args: ServeArgs) -> Self {
        let artifacts_dir = args
            .artifacts_dir
            .clone()
            .unwrap_or_else(|| args.data_dir.join("artifacts"));
        let database_url = args
            .database_url
            .unwrap_or_else(|| format!("sqlite://{}/ferrocd.db", args.data_dir.display()));
        Config {
            listen: args.listen,
            database_url,
            data_dir: args.data_dir,
            config_paths: args.config,
            config_repos: args.config_repos,
            agent_registration_key: args.agent_registration_key.filter(|k| !k.is_empty()),
            lost_contact_after: Duration::from_secs(args.lost_contact_after),
            default_job_timeout: Duration::from_secs(args.default_job_timeout.saturating_mul(60)),
            material_poll_interval: Duration::from_secs(args.material_poll_interval),
            webhook_secret_file: args.webhook_secret_file,
            artifacts_dir,
            max_artifact_bytes: args.max_artifact_bytes,
            artifacts_keep: args.artifacts_keep,
            webhook_secret: std::env::var("FERROCD_WEBHOOK_SECRET")
                .ok()
                .filter(|s| !s.trim().is_empty()),
            max_console_bytes: args.max_console_bytes,
            max_pending_agents: args.max_pending_agents,
            registrations_per_second: args.registrations_per_second,
            password_file: args.password_file,
            admins: names(args.admins),
            insecure_open: args.insecure_open,
            public_url: args.public_url.filter(|u| !u.trim().is_empty()),
            allowed_hosts: names(args.allowed_hosts),
            trusted_proxy: args.trusted_proxy,
            max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
            max_streams_per_address: usize::try_from(args.max_streams_per_address)
                .unwrap_or(usize::MAX),
            header_read_timeout: Duration::from_secs(args.header_read_timeout),
            database_heartbeat: Duration::from_secs(args.database_heartbeat),
            shutdown_deadline: SHUTDOWN_DEADLINE,
        }
    }
}

impl Config {
    /// A server on a free loopback port with its database in `data_dir` (tests, tools).
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Config {
            artifacts_dir: data_dir.join("artifacts"),
            listen: "127.0.0.1:0".parse().expect("valid address"),
            database_url: format!("sqlite://{}/ferrocd.db", data_dir.display()),
            data_dir,
            config_paths: Vec::new(),
            config_repos: Vec::new(),
            agent_registration_key: None,
            lost_contact_after: Duration::from_secs(30),
            default_job_timeout: Duration::ZERO,
            // Tests poll when they ask to.
            material_poll_interval: Duration::ZERO,
            webhook_secret_file: None,
            webhook_secret: None,
            max_artifact_bytes: 10 * 1024 * 1024 * 1024,
            artifacts_keep: None,
            max_console_bytes: 256 * 1024 * 1024,
            max_pending_agents: 200,
            registrations_per_second: 10,
            password_file: None,
            admins: Vec::new(),
            insecure_open: false,
            public_url: None,
            allowed_hosts: Vec::new(),
            trusted_proxy: None,
            max_connections: 20_000,
            max_streams_per_address: 2000,
            header_read_timeout: Duration::from_secs(10),
            database_heartbeat: Duration::from_secs(10),
            shutdown_deadline: SHUTDOWN_DEADLINE,
        }
    }
}

/// A comma-separated flag's names, trimmed, empty ones dropped.
fn names(raw: Vec<String>) -> Vec<String> {
    raw.into_iter()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect()
}
