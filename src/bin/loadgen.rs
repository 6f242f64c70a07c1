//! The load generator (the performance issue): measures how fast a change reaches every
//! subscriber of a live stream, the same way every time, on one monotonic clock in one
//! process. Loopback only; every loop is bounded in count and in time.
//!
//! Scenarios so far (BENCHMARKS.md has the figures and the exact commands):
//! - `queue`: N subscribers of `/agents/events`; jobs nobody can take are scheduled one at a
//!   time, `--interval-ms` apart; each subscriber parses the `queued` event with the new
//!   count. Against `--server URL`, or a `ferrocd serve` it starts itself in a temp dir.
//! - `floor`: the same client against a bare axum SSE server inside the loadgen (a counter
//!   and a broadcast channel, nothing else; it broadcasts before it answers), so every
//!   figure can be given as a ratio to what the machine itself allows.
//!
//! Each change's delay is measured from the moment the scheduling call returned and from
//! its send, to the moment each subscriber has parsed the event; the report gives
//! min/p50/p99/max over every (change, subscriber), how many subscribers missed a change
//! (must be 0), the calls' own answer time, and the server's RSS and CPU time from `/proc`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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
    Queue(Common),
    /// The same client against a bare axum SSE server inside the loadgen.
    Floor(Common),
}

#[derive(clap::Args, Clone)]
struct Common {
    /// How many streams subscribe.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// How many changes are made, one at a time.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Between two changes.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    /// A server already running on loopback (`http://127.0.0.1:8153`); without it the loadgen
    /// starts `ferrocd serve` (the binary beside its own) in a temp dir.
    #[arg(long)]
    server: Option<String>,
}

/// The longest any phase may take: connecting, or waiting for the last event.
const PHASE_LIMIT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (name, common) = match &args.scenario {
        Scenario::Queue(c) => ("queue", c.clone()),
        Scenario::Floor(c) => ("floor", c.clone()),
    };
    let needed = common.subscribers as u64 + 64;
    match raise_file_limit() {
        Ok(hard) if hard < needed => {
            println!("{name}: skipped: hard limit {hard} open files, {needed} needed");
            return;
        }
        Ok(_) => {}
        Err(error) => eprintln!("cannot raise the open-file limit: {error}"),
    }
    let target = match &args.scenario {
        Scenario::Floor(_) => Target::floor().await,
        Scenario::Queue(c) => match &c.server {
            Some(url) => Target::running(url),
            None => Target::spawned().await,
        },
    };
    match run(&target, &common).await {
        Ok(report) => report.print(name, &common, &target),
        Err(error) => {
            eprintln!("{name}: {error}");
            std::process::exit(1);
        }
    }
}

/// What is measured: an address, and the server's process when the loadgen knows it.
struct Target {
    addr: SocketAddr,
    process: Option<Child>,
    /// The spawned server's data dir, removed at the end.
    data_dir: Option<std::path::PathBuf>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = self.process.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Target {
    fn running(url: &str) -> Target {
        let host = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let addr: SocketAddr = host
            .parse()
            .unwrap_or_else(|_| panic!("--server: {url} is not http://IP:PORT on loopback"));
        assert!(addr.ip().is_loopback(), "--server: loopback only");
        Target {
            addr,
            process: None,
            data_dir: None,
        }
    }

    async fn spawned() -> Target {
        let binary = std::env::current_exe()
            .expect("the loadgen's own path")
            .with_file_name("ferrocd");
        let data_dir = std::env::temp_dir().join(format!(
            "ferrocd-loadgen-{}-{}",
            std::process::id(),
            free_port()
        ));
        let port = free_port();
        let child = Command::new(&binary)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--max-streams-per-address")
            .arg("0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let target = Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            process: Some(child),
            data_dir: Some(data_dir),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + PHASE_LIMIT;
        while client
            .get(format!("http://{}/api/health", target.addr))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the server did not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        target
    }

    async fn floor() -> Target {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("the floor's port");
        tokio::spawn(async move {
            axum::serve(listener, floor::router()).await.ok();
        });
        Target {
            addr,
            process: None,
            data_dir: None,
        }
    }

    fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }
}

/// The bare server the figures are compared with: a counter and a broadcast channel.
mod floor {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use axum::Router;
    use axum::body::Body;
    use axum::extract::State;
    use axum::http::header;
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use bytes::Bytes;
    use tokio::sync::broadcast;

    #[derive(Clone)]
    struct Floor {
        count: Arc<AtomicU64>,
        changes: broadcast::Sender<u64>,
    }

    pub fn router() -> Router {
        let floor = Floor {
            count: Arc::default(),
            changes: broadcast::channel(1024).0,
        };
        Router::new()
            .route("/agents/events", get(events))
            .route("/api/jobs/schedule", post(schedule))
            .with_state(floor)
    }

    fn frame(count: u64) -> Bytes {
        Bytes::from(format!("event: queued\ndata: {count}\n\n"))
    }

    async fn events(State(floor): State<Floor>) -> impl IntoResponse {
        let mut changes = floor.changes.subscribe();
        let first = floor.count.load(Ordering::SeqCst);
        let body = async_stream::stream! {
            yield Ok::<_, std::convert::Infallible>(frame(first));
            while let Ok(count) = changes.recv().await {
                yield Ok(frame(count));
            }
        };
        (
            [(header::CONTENT_TYPE, "text/event-stream")],
            Body::from_stream(body),
        )
    }

    /// Counts and broadcasts, then answers.
    async fn schedule(State(floor): State<Floor>) -> impl IntoResponse {
        let count = floor.count.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = floor.changes.send(count);
        (
            axum::http::StatusCode::CREATED,
            format!("{{\"count\":{count}}}"),
        )
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Raises the soft open-file limit to the hard one; answers the hard limit.
fn raise_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading and setting our own process's limit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_max)
}

/// One subscriber: the counts it parsed, each with when.
type Seen = Vec<(u64, Instant)>;

/// Connects one raw SSE stream (HTTP/1.0: no chunked framing to undo) and reports the
/// first `queued` count once connected; then records every count until `last` or the end.
async fn subscriber(
    addr: SocketAddr,
    ready: tokio::sync::mpsc::Sender<u64>,
    last: Arc<AtomicU64>,
) -> std::io::Result<Seen> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream
        .write_all(
            format!(
                "GET /agents/events HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut lines = BufReader::new(stream).lines();
    // The head, up to its blank line.
    while let Some(line) = lines.next_line().await? {
        if line.is_empty() {
            break;
        }
    }
    let mut seen = Vec::new();
    let mut event = String::new();
    let mut first = true;
    let deadline = tokio::time::Instant::now() + PHASE_LIMIT * 2;
    loop {
        let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            _ => break,
        };
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim().to_string();
        } else if let Some(data) = line.strip_prefix("data:") {
            if event == "queued"
                && let Ok(count) = data.trim().parse::<u64>()
            {
                let now = Instant::now();
                if first {
                    first = false;
                    let _ = ready.send(count).await;
                } else {
                    seen.push((count, now));
                }
                let until = last.load(Ordering::SeqCst);
                if until != 0 && count >= until {
                    break;
                }
            }
        } else if line.is_empty() {
            event.clear();
        }
    }
    Ok(seen)
}

struct Change {
    count: u64,
    sent: Instant,
    answered: Instant,
}

struct Report {
    from_answer: Vec<f64>,
    from_send: Vec<f64>,
    answer_ms: Vec<f64>,
    missed: usize,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    cpu_seconds: Option<f64>,
}

async fn run(target: &Target, common: &Common) -> Result<Report, String> {
    let last = Arc::new(AtomicU64::new(0));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(common.subscribers.max(1));
    let mut tasks = Vec::with_capacity(common.subscribers);
    for _ in 0..common.subscribers {
        tasks.push(tokio::spawn(subscriber(
            target.addr,
            ready_tx.clone(),
            Arc::clone(&last),
        )));
    }
    drop(ready_tx);
    let mut base = None;
    for connected in 0..common.subscribers {
        match tokio::time::timeout(PHASE_LIMIT, ready_rx.recv()).await {
            Ok(Some(count)) => {
                if base.is_some_and(|b| b != count) {
                    return Err("subscribers started from different counts".into());
                }
                base = Some(count);
            }
            _ => return Err(format!("only {connected} subscribers connected")),
        }
    }
    let base = base.unwrap_or(0);
    last.store(base + common.changes as u64, Ordering::SeqCst);
    let pid = target.pid();
    let rss_before = pid.and_then(rss_bytes);
    let cpu_before = pid.and_then(cpu_seconds);
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("http://{}/api/jobs/schedule", target.addr);
    let mut changes = Vec::with_capacity(common.changes);
    for i in 0..common.changes {
        let sent = Instant::now();
        let reply = client
            .post(&url)
            .json(&serde_json::json!({
                "pipeline_name": "loadgen", "stage_name": "s", "job_name": format!("j{i}"),
                "tasks": [{"command": "true"}], "resources": ["no-agent-has-this"]
            }))
            .send()
            .await
            .map_err(|e| format!("schedule: {e}"))?;
        let answered = Instant::now();
        if !reply.status().is_success() {
            return Err(format!("schedule answered {}", reply.status()));
        }
        changes.push(Change {
            count: base + i as u64 + 1,
            sent,
            answered,
        });
        tokio::time::sleep(Duration::from_millis(common.interval_ms)).await;
    }
    let mut everyone = Vec::with_capacity(tasks.len());
    for task in tasks {
        everyone.push(task.await.map_err(|e| e.to_string())?.unwrap_or_default());
    }
    let rss_after = pid.and_then(rss_bytes);
    let cpu_seconds = match (cpu_before, pid.and_then(cpu_seconds)) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let ms = |d: f64| d * 1000.0;
    let (mut from_answer, mut from_send, mut missed) = (Vec::new(), Vec::new(), 0);
    for change in &changes {
        for seen in &everyone {
            // Coalesced counts are fine: a later count shows this change too.
            match seen.iter().find(|(count, _)| *count >= change.count) {
                Some((_, at)) => {
                    from_answer.push(ms(signed_seconds(*at, change.answered)));
                    from_send.push(ms(signed_seconds(*at, change.sent)));
                }
                None => missed += 1,
            }
        }
    }
    let answer_ms = changes
        .iter()
        .map(|c| ms((c.answered - c.sent).as_secs_f64()))
        .collect();
    Ok(Report {
        from_answer,
        from_send,
        answer_ms,
        missed,
        rss_before,
        rss_after,
        cpu_seconds,
    })
}

/// `later - earlier` in seconds, negative when `later` came first.
fn signed_seconds(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        (later - earlier).as_secs_f64()
    } else {
        -(earlier - later).as_secs_f64()
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: a plain query of a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / per_second)
}

/// min / p50 / p99 / max of `values`, in ms.
fn spread(values: &[f64]) -> String {
    if values.is_empty() {
        return "none".into();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    format!(
        "min {:.2} / p50 {:.2} / p99 {:.2} / max {:.2} ms",
        sorted[0],
        at(0.5),
        at(0.99),
        sorted[sorted.len() - 1]
    )
}

impl Report {
    fn print(&self, name: &str, common: &Common, target: &Target) {
        println!(
            "{name}: {} subscribers, {} changes {} ms apart, server {}",
            common.subscribers, common.changes, common.interval_ms, target.addr
        );
        println!("  from the answer: {}", spread(&self.from_answer));
        println!("  from the send:   {}", spread(&self.from_send));
        println!("  answer time:     {}", spread(&self.answer_ms));
        println!(
            "  missed: {} of {}",
            self.missed,
            common.subscribers * common.changes
        );
        if let (Some(before), Some(after)) = (self.rss_before, self.rss_after) {
            println!(
                "  server RSS: {:.1} → {:.1} MB",
                before as f64 / 1048576.0,
                after as f64 / 1048576.0
            );
        }
        if let Some(cpu) = self.cpu_seconds {
            println!("  server CPU during the changes: {cpu:.3} s");
        }
    }
}
