//! Command-line flags and their environment variables (CONTRACT.md, "Command line").

use std::net::SocketAddr;
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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the server (the default).
    Serve(ServeArgs),
    /// Start an agent that registers, polls for work, runs tasks and streams their console.
    Agent(AgentArgs),
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8153
    #[arg(long, env = "FERROCD_SERVER")]
    pub server: String,
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
    /// Address to bind; use 0.0.0.0:8153 to accept remote agents.
    #[arg(long, env = "FERROCD_LISTEN", default_value = "127.0.0.1:8153")]
    pub listen: SocketAddr,
    /// `sqlite://…` (embedded, created on first start). Defaults to `sqlite://DATA_DIR/ferrocd.db`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where the embedded database and any files live.
    #[arg(long, env = "FERROCD_DATA_DIR", default_value = "ferrocd-data")]
    pub data_dir: PathBuf,
    /// GoCD's auto-register key: agents presenting it start Enabled.
    #[arg(long, env = "FERROCD_AGENT_REGISTRATION_KEY")]
    pub agent_registration_key: Option<String>,
    /// Seconds after which a silent Enabled agent becomes LostContact.
    #[arg(long, env = "FERROCD_LOST_CONTACT_AFTER", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub lost_contact_after: u64,
}

/// The settings the server runs with, resolved from flags (or built directly by tests).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    pub data_dir: PathBuf,
    pub agent_registration_key: Option<String>,
    pub lost_contact_after: Duration,
}

impl From<ServeArgs> for Config {
    fn from(args: ServeArgs) -> Self {
        let database_url = args
            .database_url
            .unwrap_or_else(|| format!("sqlite://{}/ferrocd.db", args.data_dir.display()));
        Config {
            listen: args.listen,
            database_url,
            data_dir: args.data_dir,
            agent_registration_key: args.agent_registration_key.filter(|k| !k.is_empty()),
            lost_contact_after: Duration::from_secs(args.lost_contact_after),
        }
    }
}

impl Config {
    /// A server on a free loopback port with its database in `data_dir` (tests, tools).
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Config {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            database_url: format!("sqlite://{}/ferrocd.db", data_dir.display()),
            data_dir,
            agent_registration_key: None,
            lost_contact_after: Duration::from_secs(30),
        }
    }
}
