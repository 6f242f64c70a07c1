//! The load generator (the performance issue): measures what a change costs and how fast it
//! reaches every subscriber of a live stream, the same way every time, on one monotonic
//! clock in one process. Loopback only; every loop is bounded in count and in time.
//! BENCHMARKS.md has the figures and the exact commands.
//!
//! Each scenario drives a `ferrocd serve` the loadgen starts itself (the binary beside its
//! own, in a temp dir), or one given with `--server`; with `--floor` the fan-out scenarios
//! run against a bare axum SSE server in a child process instead (a counter and a broadcast
//! channel, nothing else), so every figure can be given as a ratio to what the machine
//! itself allows. Delays are measured from the moment the triggering call returned and from
//! its send, to the moment each subscriber has parsed the event: min/p50/p99/max over every
//! (change, subscriber), how many subscribers missed a change (must be 0), the calls' own
//! answer time, and the server's RSS and CPU time from `/proc`.
//!
//! Across two nodes on one PostgreSQL database: `--subscribe-to` (`queue`, `agents`,
//! `console`) has the subscribers connect to a second node while the changes go through
//! `--server`, and `--also-server` (`scheduler`) has half the agents poll the second one. The
//! loadgen starts no server then: both are given, and neither's RSS or CPU is known.

mod churn;
mod console;
mod dashboard;
mod fanout;
mod fleet;
mod idle;
mod lines;
mod report;
mod scheduler;
mod sse;
mod target;

use std::time::Duration;

use clap::{Parser, Subcommand};

use target::Target;

/// The longest any phase may take: connecting, or waiting for the last event.
pub const PHASE_LIMIT: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "ferrocd's load generator (see BENCHMARKS.md)"
)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// A job scheduled → `queued` at N subscribers of /agents/events.
    Queue(Fanout),
    /// Agents registered, then one disabled at a time → its row at N subscribers.
    Agents {
        #[command(flatten)]
        fanout: Fanout,
        /// How many agents are registered first.
        #[arg(long, default_value_t = 500)]
        agents: usize,
    },
    /// N open streams that nothing changes: the server's memory per stream.
    Idle(Fanout),
    /// J queued jobs drained by A agents polling at once: assignments per second.
    Scheduler {
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        #[arg(long, default_value_t = 100)]
        agents: usize,
        /// Another node on the same database (loopback, like `--server`, which must be given
        /// too): every other agent polls it, and reports its runs to it; jobs are scheduled
        /// through `--server`.
        #[arg(long)]
        also_server: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// One build's log uploaded while F subscribers follow it; then R readers of a whole log.
    Console(Console),
    /// Agents registering and being deleted while N subscribers follow /agents/events; each
    /// must end equal to a fresh load. `--slow-readers`: some that never read.
    Churn(Churn),
    /// P pipelines, triggered at a steady rate, N subscribers of /pipelines/events.
    Dashboard(Dashboard),
    /// Agents at scale: A simulated agents pinging and polling for work: server CPU, ping time.
    Fleet(Fleet),
    /// Line latency: a real `ferrocd agent` runs a task printing a stamped line every 10 ms.
    Lines(Lines),
    /// The floor's own server (started by `--floor`; not a scenario).
    #[command(hide = true)]
    FloorServer {
        #[arg(long)]
        port: u16,
    },
    /// The `lines` scenario's task: numbered lines stamped with the monotonic clock.
    #[command(hide = true)]
    Ticker {
        #[arg(long)]
        lines: u64,
        #[arg(long)]
        every_ms: u64,
    },
}

#[derive(clap::Args, Clone)]
pub struct Churn {
    /// Subscribers that read and keep the table.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Registrations a second; each agent is deleted a second after it registered.
    #[arg(long, default_value_t = 20)]
    rate: u64,
    /// How long the churn lasts.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Subscribers that never read a byte.
    #[arg(long, default_value_t = 0)]
    slow_readers: usize,
    #[command(flatten)]
    target: Server,
}

#[derive(clap::Args, Clone)]
pub struct Dashboard {
    /// Pipelines in the config (one stage, one job each).
    #[arg(long, default_value_t = 500)]
    pipelines: usize,
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Triggers, one pipeline after another.
    #[arg(long, default_value_t = 500)]
    changes: usize,
    /// Triggers a second (each puts a stage into Building).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    #[command(flatten)]
    target: Server,
}

#[derive(clap::Args, Clone)]
pub struct Fleet {
    #[arg(long, default_value_t = 2000)]
    agents: usize,
    /// Each agent pings and then polls for work once every interval.
    #[arg(long, default_value_t = 5000)]
    interval_ms: u64,
    /// How long it runs.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    #[command(flatten)]
    target: Server,
}

#[derive(clap::Args, Clone)]
pub struct Lines {
    /// Lines the task prints.
    #[arg(long, default_value_t = 3000)]
    lines: u64,
    /// Between two lines.
    #[arg(long, default_value_t = 10)]
    every_ms: u64,
    /// Subscribers following the build's console.
    #[arg(long, default_value_t = 1)]
    followers: usize,
    #[command(flatten)]
    target: Server,
}

#[derive(clap::Args, Clone)]
pub struct Server {
    /// A server already running on loopback (`http://127.0.0.1:8153`); without it the
    /// loadgen starts `ferrocd serve` (the binary beside its own) in a temp dir.
    #[arg(long)]
    server: Option<String>,
}

#[derive(clap::Args, Clone)]
pub struct Fanout {
    /// How many streams subscribe.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// How many changes are made, one at a time.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Between two changes.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    /// Against the bare floor server instead of ferrocd (`queue` and `idle`).
    #[arg(long, conflicts_with = "server")]
    floor: bool,
    /// Another node on the same database (loopback, like `--server`, which must be given
    /// too): the subscribers connect there while the changes go through `--server`
    /// (`queue` and `agents`).
    #[arg(long, conflicts_with = "floor")]
    subscribe_to: Option<String>,
    #[command(flatten)]
    target: Server,
}

#[derive(clap::Args, Clone)]
pub struct Console {
    /// The live log's size.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    bytes: u64,
    /// Each append's size.
    #[arg(long, default_value_t = 64 * 1024)]
    chunk: usize,
    /// Subscribers following the live log.
    #[arg(long, default_value_t = 10)]
    followers: usize,
    /// The stored log's size that readers replay from offset 0.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    replay_bytes: u64,
    /// Readers of the stored log (0: no replay).
    #[arg(long, default_value_t = 100)]
    replay_followers: usize,
    /// Another node on the same database (loopback, like `--server`, which must be given
    /// too): the followers and the readers connect there while the agent uploads to
    /// `--server`.
    #[arg(long)]
    subscribe_to: Option<String>,
    #[command(flatten)]
    target: Server,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    match args.scenario {
        Scenario::FloorServer { port } => return target::floor::serve(port).await,
        Scenario::Ticker { lines, every_ms } => {
            return lines::ticker(lines, std::time::Duration::from_millis(every_ms));
        }
        _ => {}
    }
    let (name, streams) = match &args.scenario {
        Scenario::Queue(f) | Scenario::Idle(f) | Scenario::Agents { fanout: f, .. } => {
            ("fan-out", f.subscribers)
        }
        Scenario::Scheduler { agents, .. } => ("scheduler", *agents),
        Scenario::Console(c) => ("console", c.followers.max(c.replay_followers)),
        Scenario::Churn(c) => ("churn", c.subscribers + c.slow_readers),
        Scenario::Dashboard(d) => ("dashboard", d.subscribers),
        Scenario::Fleet(f) => ("fleet", f.agents),
        Scenario::Lines(l) => ("lines", l.followers),
        Scenario::FloorServer { .. } | Scenario::Ticker { .. } => unreachable!("handled above"),
    };
    let needed = streams as u64 + 64;
    match target::raise_file_limit() {
        Ok(hard) if hard < needed => {
            println!("{name}: skipped: hard limit {hard} open files, {needed} needed");
            return;
        }
        Ok(_) => {}
        Err(error) => eprintln!("cannot raise the open-file limit: {error}"),
    }
    if let Err(error) = run(&args.scenario).await {
        eprintln!("{name}: {error}");
        std::process::exit(1);
    }
}

async fn run(scenario: &Scenario) -> Result<(), String> {
    match scenario {
        Scenario::Queue(f) if f.subscribe_to.is_none() => {
            let target = fanout_target(f).await?;
            fanout::queue(&target, &target, f).await
        }
        Scenario::Queue(f) => {
            let (target, other) = two_nodes(&f.target, "--subscribe-to", &f.subscribe_to)?;
            fanout::queue(&target, &other, f).await
        }
        Scenario::Idle(f) => {
            if f.subscribe_to.is_some() {
                return Err("idle has no --subscribe-to: nothing changes its streams".into());
            }
            idle::idle(&fanout_target(f).await?, f).await
        }
        Scenario::Agents { fanout: f, agents } => {
            if f.floor {
                return Err("agents has no floor: compare with queue --floor".into());
            }
            if f.subscribe_to.is_none() {
                let target = server(&f.target).await?;
                return fanout::agents(&target, &target, f, *agents).await;
            }
            let (target, other) = two_nodes(&f.target, "--subscribe-to", &f.subscribe_to)?;
            fanout::agents(&target, &other, f, *agents).await
        }
        Scenario::Scheduler {
            jobs,
            agents,
            also_server: None,
            server: s,
        } => scheduler::scheduler(&server(s).await?, None, *jobs, *agents).await,
        Scenario::Scheduler {
            jobs,
            agents,
            also_server,
            server: s,
        } => {
            let (target, other) = two_nodes(s, "--also-server", also_server)?;
            scheduler::scheduler(&target, Some(&other), *jobs, *agents).await
        }
        Scenario::Console(c) if c.subscribe_to.is_none() => {
            let target = server(&c.target).await?;
            console::console(&target, &target, c).await
        }
        Scenario::Console(c) => {
            let (target, other) = two_nodes(&c.target, "--subscribe-to", &c.subscribe_to)?;
            console::console(&target, &other, c).await
        }
        Scenario::Churn(c) => churn::churn(&server(&c.target).await?, c).await,
        Scenario::Dashboard(d) => dashboard::dashboard(&server(&d.target).await?, d).await,
        Scenario::Fleet(f) => fleet::fleet(&server(&f.target).await?, f).await,
        Scenario::Lines(l) => lines::lines(&server(&l.target).await?, l).await,
        Scenario::FloorServer { .. } | Scenario::Ticker { .. } => {
            unreachable!("handled in main")
        }
    }
}

async fn fanout_target(f: &Fanout) -> Result<Target, String> {
    if f.floor {
        Target::floor().await
    } else {
        server(&f.target).await
    }
}

async fn server(s: &Server) -> Result<Target, String> {
    match &s.server {
        Some(url) => Target::running("--server", url),
        None => Target::ferrocd(&[]).await,
    }
}

/// `--server` and the second node `flag` names (`--subscribe-to`, `--also-server`), both
/// already running on one database: across two nodes the loadgen starts neither.
fn two_nodes(s: &Server, flag: &str, other: &Option<String>) -> Result<(Target, Target), String> {
    match (&s.server, other) {
        (Some(server), Some(other)) => Ok((
            Target::running("--server", server)?,
            Target::running(flag, other)?,
        )),
        _ => Err(format!(
            "{flag} needs --server too: across two nodes the loadgen starts no server; start \
             both on one database (`ferrocd serve --database-url postgres://…`) and give both"
        )),
    }
}
