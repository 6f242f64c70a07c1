//! A raw SSE subscriber: one TCP connection speaking HTTP/1.0 (so there is no chunked
//! framing to undo), parsing events as an EventSource does (a blank line dispatches; `data`
//! lines join with a newline) and timing each on the loadgen's one clock. What an event
//! means is the scenario's `Matcher`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Connecting may be refused for a moment while the server's accept backlog is full.
const CONNECT_TRIES: u32 = 50;

/// What one dispatched event means to a scenario.
pub enum Heard {
    /// Not one the scenario counts.
    Other,
    /// The connection's first state: it is now following.
    Ready,
    /// A change the scenario made, by its key.
    Change(u64),
}

/// A scenario's reading of one connection's events (their name and data), made afresh for
/// each connection so that it may keep that connection's state.
pub type Reading = Box<dyn FnMut(&str, &str) -> Heard + Send>;
pub type Matcher = Arc<dyn Fn() -> Reading + Send + Sync>;

/// Whether a follower has every change it waits for, from what it has recorded so far.
pub type Done = Arc<dyn Fn(&[(u64, Instant)]) -> bool + Send + Sync>;

/// What one subscriber saw after it was ready: each change's key and when, and the bytes
/// that arrived after the ready event.
#[derive(Default)]
pub struct Seen {
    pub changes: Vec<(u64, Instant)>,
    pub bytes: u64,
}

/// How long a follower goes on reading once it has every change it waits for: until the
/// stream has been quiet this long (zero: it stops at once). A scenario that compares each
/// connection's final state with a fresh load lets the last render's events all arrive.
#[derive(Clone, Copy)]
pub struct Settle(pub Duration);

impl Settle {
    pub const NONE: Settle = Settle(Duration::ZERO);
    /// For a follower timing changes: one that has every change keeps reading until its
    /// stream has been quiet this long before it closes. Closing at once made the last
    /// change's figures the cost of the first followers' sockets closing while the rest
    /// still read it (1,000 subscribers of agents: that change alone at p50 81 ms, against
    /// 7–12 ms for the others).
    pub const AFTER_LAST: Settle = Settle(Duration::from_millis(300));
}

/// Opens `path` on `addr` and follows it: tells `ready` once its first state has arrived,
/// then records every change until `done` says it has all it waits for (and the stream has
/// then been quiet for `settle`), or `limit` passes.
pub async fn follow(
    addr: SocketAddr,
    path: String,
    matcher: Matcher,
    ready: tokio::sync::mpsc::Sender<()>,
    done: Done,
    limit: Duration,
    settle: Settle,
) -> std::io::Result<Seen> {
    let mut stream = connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut line = String::new();
    // The head, up to its blank line.
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let deadline = tokio::time::Instant::now() + limit;
    let (mut event, mut data) = (String::new(), String::new());
    let mut seen = Seen::default();
    let mut following = false;
    let mut reading = matcher();
    let mut finished = false;
    loop {
        line.clear();
        let until = match finished {
            true => deadline.min(tokio::time::Instant::now() + settle.0),
            false => deadline,
        };
        let read = match tokio::time::timeout_at(until, reader.read_line(&mut line)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(read) => read?,
        };
        if following {
            seen.bytes += read as u64;
        }
        let text = line.trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            let heard = reading(&event, &data);
            let now = Instant::now();
            event.clear();
            data.clear();
            match heard {
                Heard::Other => {}
                Heard::Ready if !following => {
                    following = true;
                    let _ = ready.send(()).await;
                }
                Heard::Ready => {}
                Heard::Change(key) if following => {
                    // While settling, changes the last render sent in another order count too.
                    seen.changes.push((key, now));
                    if !finished && done(&seen.changes) {
                        if settle.0.is_zero() {
                            break;
                        }
                        finished = true;
                    }
                }
                Heard::Change(_) => {}
            }
        } else if let Some(name) = text.strip_prefix("event:") {
            event = name.trim_start().to_string();
        } else if let Some(value) = text.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    Ok(seen)
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut tries = 0;
    loop {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(error) if tries < CONNECT_TRIES => {
                tries += 1;
                let _ = error;
                tokio::time::sleep(Duration::from_millis(20 * tries as u64)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Starts `count` followers and waits until every one is ready (or says how many were).
pub async fn followers(
    count: usize,
    addr: SocketAddr,
    path: &str,
    matcher: Matcher,
    done: Done,
    limit: Duration,
    settle: Settle,
) -> Result<Vec<tokio::task::JoinHandle<std::io::Result<Seen>>>, String> {
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(count.max(1));
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            tokio::spawn(follow(
                addr,
                path.to_string(),
                Arc::clone(&matcher),
                ready_tx.clone(),
                Arc::clone(&done),
                limit,
                settle,
            ))
        })
        .collect();
    drop(ready_tx);
    for connected in 0..count {
        match tokio::time::timeout(limit, ready_rx.recv()).await {
            Ok(Some(())) => {}
            _ => return Err(format!("only {connected} of {count} subscribers connected")),
        }
    }
    Ok(tasks)
}

/// Every follower's record, once each has ended.
pub async fn collect(tasks: Vec<tokio::task::JoinHandle<std::io::Result<Seen>>>) -> Vec<Seen> {
    let mut all = Vec::with_capacity(tasks.len());
    for task in tasks {
        all.push(task.await.ok().and_then(Result::ok).unwrap_or_default());
    }
    all
}
