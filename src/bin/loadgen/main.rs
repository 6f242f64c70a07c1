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

mod console;
mod fanout;
mod idle;
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
        #[command(flatten)]
        server: Server,
    },
    /// One build's log uploaded while F subscribers follow it; then R readers of a whole log.
    Console(Console),
    /// The floor's own server (started by `--floor`; not a scenario).
    #[command(hide = true)]
    FloorServer {
        #[arg(long)]
        port: u16,
    },
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
    #[command(flatten)]
    target: Server,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Scenario::FloorServer { port } = args.scenario {
        target::floor::serve(port).await;
        return;
    }
    let (name, streams) = match &args.scenario {
        Scenario::Queue(f) | Scenario::Idle(f) | Scenario::Agents { fanout: f, .. } => {
            ("fan-out", f.subscribers)
        }
        Scenario::Scheduler { agents, .. } => ("scheduler", *agents),
        Scenario::Console(c) => ("console", c.followers.max(c.replay_followers)),
        Scenario::FloorServer { .. } => unreachable!("handled above"),
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
        Scenario::Queue(f) => fanout::queue(&fanout_target(f).await?, f).await,
        Scenario::Idle(f) => idle::idle(&fanout_target(f).await?, f).await,
        Scenario::Agents { fanout: f, agents } => {
            if f.floor {
                return Err("agents has no floor: compare with queue --floor".into());
            }
            fanout::agents(&server(&f.target).await?, f, *agents).await
        }
        Scenario::Scheduler {
            jobs,
            agents,
            server: s,
        } => scheduler::scheduler(&server(s).await?, *jobs, *agents).await,
        Scenario::Console(c) => console::console(&server(&c.target).await?, c).await,
        Scenario::FloorServer { .. } => unreachable!("handled in main"),
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
        Some(url) => Target::running(url),
        None => Target::ferrocd(&[]).await,
    }
}
