//! What a scenario measures: a `ferrocd serve` the loadgen starts in a temp dir (or one the
//! user started), or the floor, a bare SSE server in a child process of its own, so that it
//! pays for its sockets and its CPU apart from the client's, as ferrocd does. Either way the
//! loadgen reads the server's RSS and CPU time from `/proc` when it knows the process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The longest a server may take to answer its first request.
const START_LIMIT: Duration = Duration::from_secs(60);

/// The registration key a spawned server is given, so agents the loadgen registers start
/// Enabled.
pub const REGISTRATION_KEY: &str = "loadgen-key";

pub struct Target {
    pub addr: SocketAddr,
    process: Option<Child>,
    /// The spawned server's data dir, removed at the end.
    data_dir: Option<PathBuf>,
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
    /// A server already running, at `http://IP:PORT` on loopback, as `flag` gave it.
    pub fn running(flag: &str, url: &str) -> Result<Target, String> {
        let host = url.trim_start_matches("http://").trim_end_matches('/');
        let addr: SocketAddr = host
            .parse()
            .map_err(|_| format!("{flag}: {url} is not http://IP:PORT"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("{flag}: loopback only"));
        }
        Ok(Target {
            addr,
            process: None,
            data_dir: None,
        })
    }

    /// `ferrocd serve` (the binary beside the loadgen's own) on a free port and a fresh data
    /// dir, with no per-address stream cap and no registration rate limit (every client here
    /// is one address), the registration key, and `extra` flags.
    pub async fn ferrocd(extra: &[&str]) -> Result<Target, String> {
        let binary = sibling("ferrocd");
        let data_dir = std::env::temp_dir().join(format!(
            "ferrocd-loadgen-{}-{}",
            std::process::id(),
            free_port()
        ));
        let port = free_port();
        let child = Command::new(&binary)
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--max-streams-per-address", "0"])
            .args(["--registrations-per-second", "0"])
            .args(["--agent-registration-key", REGISTRATION_KEY])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let target = Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            process: Some(child),
            data_dir: Some(data_dir),
        };
        target.wait_until_up("/api/health").await?;
        Ok(target)
    }

    /// The floor: `loadgen floor-server` in a child process.
    pub async fn floor() -> Result<Target, String> {
        let port = free_port();
        let child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .args(["floor-server", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the floor: {e}"))?;
        let target = Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            process: Some(child),
            data_dir: None,
        };
        target.wait_until_up("/health").await?;
        Ok(target)
    }

    async fn wait_until_up(&self, path: &str) -> Result<(), String> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + START_LIMIT;
        while client
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err(format!("the server at {} did not answer", self.addr));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    /// The server's resident memory now, when its process is known.
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_of(self.pid()?)
    }

    /// The server's CPU time (user and system) so far, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(&self.pid()?.to_string())
    }
}

/// The resident memory of process `pid` now.
pub fn rss_of(pid: u32) -> Option<u64> {
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

/// The CPU time (user and system) so far of `/proc/{pid}` (`self`: the loadgen), in seconds.
pub fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's closing parenthesis, utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: a plain query of a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / per_second)
}

/// A binary next to the loadgen's own (cargo builds them into one folder).
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .expect("the loadgen's own path")
        .with_file_name(name)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Raises this process's soft open-file limit to the hard one; answers the hard limit.
pub fn raise_file_limit() -> std::io::Result<u64> {
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

/// The bare server the figures are compared with: a counter and a broadcast channel,
/// nothing else. It broadcasts before it answers.
pub mod floor {
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

    pub async fn serve(port: u16) {
        let _ = super::raise_file_limit();
        let floor = Floor {
            count: Arc::default(),
            changes: broadcast::channel(1024).0,
        };
        let router = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/agents/events", get(events))
            .route("/api/jobs/schedule", post(schedule))
            .with_state(floor);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the floor's port");
        axum::serve(listener, router).await.ok();
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
