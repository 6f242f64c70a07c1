//! Hostile clients cannot stall the server: slow or idle sockets are closed after the
//! header-read timeout, connections and event streams are capped (503 with a message past
//! the cap), the file limit is raised at start, and shutdown drops whatever does not finish
//! within its deadline. Most of this happens below HTTP (when a socket closes, what a client
//! that never reads does to the server), so these tests speak raw TCP where reqwest would
//! hide it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferrocd::config::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::*;

/// The address of a test app (`http://127.0.0.1:PORT`).
fn address(api: &Api) -> SocketAddr {
    api.base
        .strip_prefix("http://")
        .expect("an http base")
        .parse()
        .expect("a socket address")
}

async fn connect(api: &Api) -> TcpStream {
    TcpStream::connect(address(api)).await.expect("connects")
}

/// A response read off a raw socket.
struct RawReply {
    status: u16,
    /// The header lines, lowercased.
    head: String,
    body: Value,
}

/// Sends a bodyless request on `stream`.
async fn send_get(stream: &mut TcpStream, path: &str) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("the request is sent");
}

/// Reads one response with a `content-length` body.
async fn read_reply(stream: &mut TcpStream) -> RawReply {
    tokio::time::timeout(DEADLINE, async {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            let n = stream.read(&mut chunk).await.expect("reads the answer");
            assert!(
                n > 0,
                "closed before answering: {:?}",
                String::from_utf8_lossy(&bytes)
            );
            bytes.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&bytes[..head_end]).to_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a status line: {head}"));
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().expect("a numeric content-length"))
            .unwrap_or_else(|| panic!("a content-length: {head}"));
        let body_start = head_end + 4;
        while bytes.len() < body_start + length {
            let n = stream.read(&mut chunk).await.expect("reads the body");
            assert!(n > 0, "closed inside the body");
            bytes.extend_from_slice(&chunk[..n]);
        }
        let body =
            serde_json::from_slice(&bytes[body_start..body_start + length]).unwrap_or(Value::Null);
        RawReply { status, head, body }
    })
    .await
    .expect("an answer within the deadline")
}

/// Waits until the server closes `stream` (end of file, or a reset), ignoring anything it
/// sends first; panics if it is still open at the deadline.
async fn wait_closed(stream: &mut (impl AsyncRead + Unpin), what: &str) {
    let mut sink = [0u8; 4096];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: still open after {DEADLINE:?}");
}

#[tokio::test]
async fn a_slow_or_silent_client_is_disconnected_after_the_header_read_timeout() {
    let timeout = Duration::from_millis(500);
    let app = spawn_app_with(|c| c.header_read_timeout = timeout).await;

    let started = Instant::now();
    let silent = connect(&app).await;
    let (mut slow_reader, mut slow_writer) = connect(&app).await.into_split();
    slow_writer
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // One header byte every 200 ms: each arrives well inside any per-read timeout.
    let trickle = tokio::spawn(async move {
        while slow_writer.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    wait_closed(&mut slow_reader, "the slowloris connection").await;
    assert!(
        started.elapsed() >= timeout,
        "closed before the timeout: {:?}",
        started.elapsed()
    );
    wait_closed(&mut { silent }, "the connection that sent nothing").await;
    trickle.abort();

    // The server is still there for everyone else.
    app.get("/api/health").await.expect(200);
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_read_timeout() {
    let timeout = Duration::from_millis(500);
    let app = spawn_app_with(|c| c.header_read_timeout = timeout).await;
    let mut stream = connect(&app).await;
    // The server's timer starts once it has answered, which is after this; reading the
    // clock after the answer instead may read it a moment after the timer started.
    let idle_since = Instant::now();
    send_get(&mut stream, "/api/health").await;
    let reply = read_reply(&mut stream).await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert!(
        !reply.head.contains("connection: close"),
        "kept alive: {}",
        reply.head
    );

    wait_closed(&mut stream, "the idle kept-alive connection").await;
    assert!(
        idle_since.elapsed() >= timeout,
        "closed before the timeout: {:?}",
        idle_since.elapsed()
    );
}

#[tokio::test]
async fn a_connection_past_the_cap_is_answered_503_with_a_message_and_closed() {
    let app = spawn_app_with(|c| {
        c.max_connections = 2;
        // The held connections must outlast the test.
        c.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(&app).await;
        send_get(&mut stream, "/api/health").await;
        assert_eq!(read_reply(&mut stream).await.status, 200);
        held.push(stream);
    }

    let mut third = connect(&app).await;
    send_get(&mut third, "/api/health").await;
    let reply = read_reply(&mut third).await;
    assert_eq!(reply.status, 503, "{}", reply.head);
    assert!(
        reply.head.contains("content-type: application/json"),
        "{}",
        reply.head
    );
    assert!(
        message(&reply.body).contains("maximum of 2 connections"),
        "{}",
        reply.body
    );
    wait_closed(&mut third, "the refused connection").await;

    // An ordinary client reads the refusal as an answer, not as a broken connection.
    let refused = crate::helpers::http_client()
        .get(app.url("/api/health"))
        .send()
        .await
        .expect("an answer, not a reset");
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.expect("a JSON body");
    assert!(!message(&body).is_empty());

    // Once one held connection closes, a new one is served.
    drop(held.remove(0));
    eventually("a connection served after one closed", || async {
        let mut stream = connect(&app).await;
        send_get(&mut stream, "/api/health").await;
        (read_reply(&mut stream).await.status == 200).then_some(())
    })
    .await;
}

/// Opens a stream and keeps its response (its body unread) so it stays open; or returns the
/// refusal's status and body.
async fn open_stream(api: &Api, path: &str) -> Result<reqwest::Response, (u16, Value)> {
    let response = tokio::time::timeout(
        DEADLINE,
        crate::helpers::http_client()
            .get(api.url(path))
            .header("Accept", "text/event-stream")
            .send(),
    )
    .await
    .expect("an answer within the deadline")
    .expect("the stream request");
    if response.status() == 200 {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Err((status, body))
}

#[tokio::test]
async fn a_stream_past_the_cap_for_one_address_is_answered_503_with_a_message() {
    let app = spawn_app_with(|c| c.max_streams_per_address = 2).await;
    let first = open_stream(&app, "/agents/events")
        .await
        .expect("the first stream");
    let _second = open_stream(&app, "/agents/events")
        .await
        .expect("the second stream");

    // Every kind of stream counts against the same cap.
    for path in ["/agents/events", "/api/events?topics=agents:updates"] {
        let (status, body) = open_stream(&app, path)
            .await
            .err()
            .unwrap_or_else(|| panic!("{path} past the cap was served"));
        assert_eq!(status, 503, "{path}: {body}");
        assert!(message(&body).contains("event streams"), "{body}");
    }
    // Counted by the client's own address (the accept loop hands handlers the peer).
    let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(app.state.stream_slots.open_from(loopback), 2);
    // Other requests from that address are not affected.
    app.get("/api/health").await.expect(200);

    // Closing a stream gives its slot back.
    drop(first);
    eventually("a stream served after one closed", || async {
        open_stream(&app, "/agents/events").await.ok()
    })
    .await;
}

#[tokio::test]
async fn a_stream_cap_of_zero_lets_one_address_open_any_number() {
    let app = spawn_app_with(|c| c.max_streams_per_address = 0).await;
    let mut open = Vec::new();
    for i in 0..20 {
        let stream = open_stream(&app, "/agents/events")
            .await
            .unwrap_or_else(|refused| panic!("stream {i} refused: {refused:?}"));
        open.push(stream);
    }
}

#[cfg(target_os = "linux")]
fn file_limit() -> (libc::rlim_t, libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct we pass.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    (limit.rlim_cur, limit.rlim_max)
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_server_raises_its_soft_file_limit_to_the_hard_limit() {
    let (_, hard) = file_limit();
    // One below the hard limit, so the test shows the raise even where the soft limit starts
    // at the hard one. The tests share this process; one file less for a moment harms none.
    let lowered = libc::rlimit {
        rlim_cur: hard - 1,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads only the struct we pass.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
    let _app = spawn_app().await;
    assert_eq!(file_limit(), (hard, hard));
}

/// A console line of 1 KiB, a thousand of them: 1 MiB, the most one append may carry.
fn mebibyte_of_console() -> Vec<u8> {
    let line = format!("{}\n", "x".repeat(1023));
    line.repeat(1024).into_bytes()
}

/// Sends the head of a JSON `POST` of `length` bytes with `Expect: 100-continue`, and waits
/// for the `100 Continue` that hyper sends once the handler reads the body: from then on,
/// a handler is in flight, waiting for the body.
async fn start_post(stream: &mut TcpStream, path: &str, length: usize) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(DEADLINE, async {
        while !interim.ends_with(b"\r\n\r\n") {
            assert_eq!(
                stream.read(&mut byte).await.unwrap(),
                1,
                "closed before 100"
            );
            interim.push(byte[0]);
        }
    })
    .await
    .expect("a 100 Continue within the deadline");
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
}

/// Waits until the server's socket to our client (from `server_port` to `client_port`) has
/// bytes queued that stop moving: the client reads none, so the server's send buffer is
/// full and its writes wait. (Linux shows every socket's send queue in /proc/net/tcp.)
#[cfg(target_os = "linux")]
async fn server_send_queue_full(server_port: u16, client_port: u16) {
    let local = format!(":{server_port:04X}");
    let remote = format!(":{client_port:04X}");
    let send_queue = || {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (queues, socket) = (fields.get(4)?, (fields.get(1)?, fields.get(2)?));
            (socket.0.ends_with(&local) && socket.1.ends_with(&remote)).then(|| {
                let tx = queues.split(':').next().unwrap_or("0");
                u64::from_str_radix(tx, 16).unwrap_or(0)
            })
        })
    };
    let mut last = None;
    let mut unchanged = 0;
    eventually(
        "the server's send queue to a client that never reads fills",
        || {
            let now = send_queue().filter(|queued| *queued > 0);
            unchanged = if now.is_some() && now == last {
                unchanged + 1
            } else {
                0
            };
            last = now;
            std::future::ready((unchanged >= 4).then_some(()))
        },
    )
    .await;
}

/// A server run by the test itself, so it can time `run_until_stopped`.
async fn start_timed(
    configure: impl FnOnce(&mut Config),
) -> (
    Api,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
    tempfile::TempDir,
) {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    configure(&mut config);
    let app = build_app(config).await;
    let api = Api::new(format!("http://{}", app.local_addr()));
    let stop = app.shutdown_token();
    let running = tokio::spawn(app.run_until_stopped());
    (api, stop, running, data)
}

#[tokio::test]
async fn shutdown_drops_what_does_not_finish_within_its_deadline() {
    let deadline = Duration::from_secs(1);
    let (api, stop, running, _data) = start_timed(|c| {
        c.shutdown_deadline = deadline;
        // Only the shutdown deadline may end the stalled clients here.
        c.header_read_timeout = Duration::from_secs(60);
    })
    .await;

    // A log far larger than any socket buffers, for a reader that reads none of it.
    let (agent, build_id) = api.running_build("talker").await;
    let chunk = mebibyte_of_console();
    let mut offset = 0;
    for _ in 0..8 {
        offset = api
            .as_agent(&agent)
            .append_ok(build_id, offset, &chunk)
            .await as usize;
    }
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut never_reads = socket.connect(address(&api)).await.unwrap();
    never_reads
        .write_all(
            format!(
                "GET /builds/{build_id}/console/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Accept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();

    // A request head that never ends, and a body that never ends (its handler is waiting).
    let mut half_head = connect(&api).await;
    half_head
        .write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Never: ")
        .await
        .unwrap();
    let mut half_body = connect(&api).await;
    start_post(&mut half_body, "/api/jobs/schedule", 1000).await;
    half_body.write_all(b"{\"pipeline_name\": ").await.unwrap();
    eventually("the stream has sent to the reader", || async {
        let mut peek = [0u8; 1];
        matches!(never_reads.peek(&mut peek).await, Ok(1)).then_some(())
    })
    .await;
    // Only a server blocked writing tests what this is for: a stream ends at shutdown, but a
    // connection whose last bytes cannot be written does not (it held shutdown forever).
    #[cfg(target_os = "linux")]
    server_send_queue_full(
        address(&api).port(),
        never_reads.local_addr().unwrap().port(),
    )
    .await;

    let stopping = Instant::now();
    stop.cancel();
    let stopped = tokio::time::timeout(DEADLINE, running).await;
    let took = stopping.elapsed();
    assert!(
        stopped.is_ok(),
        "still running {DEADLINE:?} after shutdown began"
    );
    stopped
        .unwrap()
        .expect("the server task")
        .expect("a clean stop");
    assert!(
        took >= deadline,
        "in-flight requests were not given the deadline: {took:?}"
    );
    assert!(
        took < deadline + Duration::from_secs(5),
        "shutdown took {took:?} with a deadline of {deadline:?}"
    );
    for (stream, what) in [
        (&mut half_head, "the half-sent head"),
        (&mut half_body, "the half-sent body"),
    ] {
        wait_closed(stream, what).await;
    }
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish() {
    let (api, stop, running, _data) = start_timed(|c| {
        c.shutdown_deadline = Duration::from_secs(15);
    })
    .await;
    let body = json!({"pipeline_name": "late", "stage_name": "s", "job_name": "j",
                      "tasks": [{"command": "true"}], "resources": []})
    .to_string();
    let (first, rest) = body.split_at(10);
    let mut stream = connect(&api).await;
    start_post(&mut stream, "/api/jobs/schedule", body.len()).await;
    stream.write_all(first.as_bytes()).await.unwrap();

    stop.cancel();
    stream.write_all(rest.as_bytes()).await.unwrap();
    let reply = read_reply(&mut stream).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert!(reply.head.contains("connection: close"), "{}", reply.head);
    let stopped = tokio::time::timeout(DEADLINE, running).await;
    assert!(
        stopped.is_ok(),
        "still running once the request was answered"
    );
}
