//! The accept loop: our own, because `axum::serve` exposes no header-read timeout, no cap on
//! connections and no deadline for a graceful shutdown, and hostile clients use all three
//! gaps (idle and slowloris sockets held open until the file limit is reached; a request
//! that never finishes, or an event stream nobody reads, holding SIGTERM open).
//!
//! Each connection is served by hyper's HTTP/1 server with tokio's timer, so its header-read
//! timeout works (without a timer hyper silently applies none, as under `axum::serve`). We
//! read hyper 1.12's source (`proto/h1/conn.rs`) for what that timeout covers: the timer is
//! armed in `Conn::poll_read_head` whenever hyper waits for a request head and is not reset
//! by bytes arriving, so it bounds a whole slow head (one header byte every 200 ms does not
//! keep it alive), a connection that sends nothing at all, and, because `State::idle` sets
//! `notify_read` when a timeout is configured so the next head read starts at once, the wait
//! of a kept-alive connection for its next request. That last wait is the idle timeout, so
//! there is no separate one: a second timer could only fire later than this one. It does not
//! cover a request body or the writing of a response (an event stream is long-lived by
//! design); the connection cap and the per-address stream cap bound those.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// What the loop enforces (from `Config`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// After shutdown starts, in-flight requests get this long; then their connections drop.
    pub shutdown_deadline: Duration,
}

/// After an accept error that is not one client's (no file descriptors left, no memory),
/// retrying at once would spin; this pause lets connections close meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Connections over the cap that are being answered 503 at once. Beyond this they are
/// closed unanswered, so a flood cannot turn the answering itself into a new pile of sockets.
const REFUSING_AT_ONCE: usize = 64;

/// How long a refused connection may take to send its request head, and then to read the
/// answer (each), before it is dropped.
const REFUSAL_STEP: Duration = Duration::from_millis(500);

/// The most of a refused connection's request we read before answering.
const REFUSAL_HEAD_MAX: usize = 8 * 1024;

/// Serves `router` on `listener` until `shutdown` fires; then stops accepting, lets
/// in-flight requests finish for at most `limits.shutdown_deadline`, drops every connection
/// still open and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let connection_slots = Arc::new(Semaphore::new(max_connections));
    let refusal_slots = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    let refusal = busy_answer(max_connections);
    let connections = TaskTracker::new();
    let drop_now = CancellationToken::new();
    let mut accept_errors = AcceptErrors::default();

    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                accept_errors.recovered();
                accepted
            }
            // One client gave up between its connect and our accept: nothing to wait for.
            Err(error) if concerns_one_client(&error) => continue,
            Err(error) => {
                accept_errors.failed(&error);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        match Arc::clone(&connection_slots).try_acquire_owned() {
            Ok(slot) => {
                connections.spawn(serve_connection(
                    stream,
                    peer,
                    router.clone(),
                    http.clone(),
                    slot,
                    shutdown.clone(),
                    drop_now.clone(),
                ));
            }
            Err(_) => match Arc::clone(&refusal_slots).try_acquire_owned() {
                Ok(slot) => {
                    connections.spawn(refuse(stream, refusal.clone(), slot, drop_now.clone()));
                }
                // Dropping it closes it: the cheapest answer when even refusing is busy.
                Err(_) => drop(stream),
            },
        }
    }

    drop(listener);
    connections.close();
    let open = connections.len();
    if open > 0 {
        tracing::info!(open, "waiting for in-flight requests");
    }
    if tokio::time::timeout(limits.shutdown_deadline, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "dropping the connections still open {:?} after shutdown began",
            limits.shutdown_deadline
        );
        drop_now.cancel();
        connections.wait().await;
    }
}

/// One connection: its requests go to the router with the peer's address as
/// `ConnectInfo<SocketAddr>`. On shutdown, hyper closes it once the response in flight is
/// done (at once if it is idle); `drop_now` drops it whatever it is doing, which is what
/// frees a task blocked writing into a client's full receive buffer.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    http: http1::Builder,
    _slot: OwnedSemaphorePermit,
    shutdown: CancellationToken,
    drop_now: CancellationToken,
) {
    // An event is one small write; Nagle's algorithm would hold it back while an earlier
    // segment waits for its (delayed) acknowledgement.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, %peer, "could not set TCP_NODELAY");
    }
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let connection = http.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let outcome = tokio::select! {
        outcome = connection.as_mut() => Some(outcome),
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                outcome = connection.as_mut() => Some(outcome),
                _ = drop_now.cancelled() => None,
            }
        }
    };
    // Timeouts and clients that hang up land here; they are routine, not the server's fault.
    if let Some(Err(error)) = outcome {
        tracing::debug!(%peer, %error, "connection ended");
    }
}

/// `503` with a JSON message, for a connection over the cap; `Connection: close`.
fn busy_answer(max_connections: usize) -> Bytes {
    let body = serde_json::json!({
        "message": format!(
            "the server is serving its maximum of {max_connections} connections; try again shortly"
        )
    })
    .to_string();
    Bytes::from(format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// Answers a connection over the cap and closes it. It reads the request head first (for a
/// moment): a client answered before it has sent its request may take the answer for a
/// broken connection, and closing a socket with unread bytes sends a reset that can destroy
/// the answer before the client reads it. For the same reason it reads on after answering
/// until the client closes, briefly.
async fn refuse(
    mut stream: TcpStream,
    answer: Bytes,
    _slot: OwnedSemaphorePermit,
    drop_now: CancellationToken,
) {
    let refusal = async {
        let _ = tokio::time::timeout(REFUSAL_STEP, read_head(&mut stream)).await;
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(REFUSAL_STEP, async {
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, io::Error>(())
        })
        .await;
        Ok::<_, io::Error>(())
    };
    tokio::select! {
        // Writing to a fresh socket does not block, but nothing here may wait unbounded.
        _ = tokio::time::timeout(3 * REFUSAL_STEP, refusal) => {}
        _ = drop_now.cancelled() => {}
    }
}

/// Reads until the blank line that ends a request head, the client stops, or
/// `REFUSAL_HEAD_MAX` bytes.
async fn read_head(stream: &mut TcpStream) -> io::Result<()> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while head.len() < REFUSAL_HEAD_MAX {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    Ok(())
}

/// Errors that concern one connection only (it was reset before we accepted it).
fn concerns_one_client(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Logs a run of failing accepts once when it starts and once when it ends, rather than
/// once per attempt (every 50 ms for as long as, say, the file limit is reached).
#[derive(Default)]
struct AcceptErrors {
    failing: u64,
}

impl AcceptErrors {
    fn failed(&mut self, error: &io::Error) {
        if self.failing == 0 {
            tracing::warn!(%error, "cannot accept connections; retrying every {ACCEPT_BACKOFF:?}");
        }
        self.failing += 1;
    }

    fn recovered(&mut self) {
        if self.failing > 0 {
            tracing::info!(failed = self.failing, "accepting connections again");
            self.failing = 0;
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit, so the server can hold
/// the connections it is configured for (systemd's soft limit is 1024), and returns the soft
/// limit it now has (`None`: unlimited, or not a Unix).
#[cfg(unix)]
pub fn raise_file_limit() -> io::Result<Option<u64>> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            // Some systems (macOS) refuse an unlimited soft limit: keep what we have.
            tracing::warn!(
                error = %io::Error::last_os_error(),
                "could not raise the file limit to the hard limit"
            );
        } else {
            limit = raised;
        }
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "rlim_t is u64 here but a 32-bit unsigned long on 32-bit Linux"
    )]
    let soft = limit.rlim_cur as u64;
    Ok((limit.rlim_cur != libc::RLIM_INFINITY).then_some(soft))
}

#[cfg(not(unix))]
pub fn raise_file_limit() -> io::Result<Option<u64>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_is_a_complete_http_response_with_a_json_message() {
        let answer = busy_answer(7);
        let text = std::str::from_utf8(&answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["message"].as_str().unwrap().contains("maximum of 7"));
    }
}
