//! One build's console: the byte stream of its tasks (stdout and stderr merged) and the agent's
//! own marker lines, uploaded in order by ONE uploader task.
//!
//! The uploader batches: it sends what arrived within [`FLUSH_EVERY`] of the first unsent byte
//! (or sooner, once [`MAX_CHUNK`] is waiting), in chunks of at most 1 MiB, each at the offset
//! the agent believes is stored. A failed request is retried with the same bytes at the same
//! offset (the server does not store a retried chunk twice), within the job's `Patience`
//! (a deadline of continuous failure; shorter once the job is stopped), after which the rest
//! of the output is dropped and the job cannot pass. A `409` names the stored length:
//! the uploader resyncs to it and sends the chunk from there. Bytes are sent exactly as the
//! tasks wrote them.
//!
//! Marker lines (plain ASCII, always on a line of their own; if a task's output did not end
//! with a newline, the marker is preceded by one):
//!
//! ```text
//! [ferrocd] Cleaning the sandbox (clean_workspace)   first, when the job cleans its sandbox
//! [ferrocd] Task: sh -c 'make test'            before each task that runs (` (in DIR)` when
//!                                              it has a working_dir; `script: TEXT` for a
//!                                              script, its newlines as `\n`; the type's name
//!                                              for one the agent cannot run)
//! [ferrocd] Task failed: exited with code 3    a task that failed (or "killed by signal 9",
//!                                              or "could not start 'cmd': ...", or
//!                                              `ferrocd cannot run "rake" tasks yet`)
//! [ferrocd] On cancel: echo stopped            before the stopped task's on_cancel task
//! [ferrocd] Job cancelled                      the server cancelled the job
//! [ferrocd] Agent stopping: job cancelled      the agent was stopped during the job
//! [ferrocd] Job completed: Passed              last line (Passed, Failed or Cancelled)
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::client::Client;
use super::retry::{ApiError, Backoff, Patience};
use super::wire::{BuildId, ConsoleAck};

/// Output is sent at the latest this long after it was produced.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// After a quiet spell, how long the first output waits for the rest of its burst.
const QUIET_GATHER: Duration = Duration::from_millis(5);
/// The server's limit per request.
pub const MAX_CHUNK: usize = 1024 * 1024;
/// Pieces of output waiting for the uploader; a full queue slows the task's writes down.
const QUEUE: usize = 64;

/// Where the uploader sends chunks (the server; a fake in tests).
pub trait ConsoleApi: Send + Sync + 'static {
    fn append(
        &self,
        offset: u64,
        chunk: Bytes,
    ) -> impl Future<Output = Result<ConsoleAck, ApiError>> + Send;
}

/// The server's console of one build.
pub struct BuildConsole {
    pub client: Arc<Client>,
    pub build: BuildId,
}

impl ConsoleApi for BuildConsole {
    fn append(
        &self,
        offset: u64,
        chunk: Bytes,
    ) -> impl Future<Output = Result<ConsoleAck, ApiError>> + Send {
        self.client.console(&self.build, offset, chunk)
    }
}

/// How an upload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReport {
    /// The stored length after the last acknowledged chunk.
    pub offset: u64,
    /// Why some output was not stored, if any was lost.
    pub error: Option<String>,
}

/// One piece of the console stream.
#[derive(Debug)]
pub enum Piece {
    /// Raw task output, exactly as written.
    Output(Bytes),
    /// A marker line's text: the uploader, which sees every byte in order, knows whether
    /// it must start a new line first (output of background processes may arrive any time).
    Marker(String),
}

impl From<Bytes> for Piece {
    fn from(bytes: Bytes) -> Self {
        Piece::Output(bytes)
    }
}

/// Writes into the console stream.
pub struct ConsoleWriter {
    tx: mpsc::Sender<Piece>,
}

impl ConsoleWriter {
    /// A sender for raw output (a task's pipe reader).
    pub fn sender(&self) -> mpsc::Sender<Piece> {
        self.tx.clone()
    }

    /// Writes `[ferrocd] TEXT` on a line of its own.
    pub async fn marker(&mut self, text: &str) {
        let _ = self.tx.send(Piece::Marker(text.to_string())).await;
    }
}

/// The bytes of a marker line; `at_line_start` false puts a newline first.
pub fn marker_line(text: &str, at_line_start: bool) -> String {
    let mut line = String::with_capacity(text.len() + 12);
    if !at_line_start {
        line.push('\n');
    }
    line.push_str("[ferrocd] ");
    line.push_str(&ascii(text));
    line.push('\n');
    line
}

/// Printable ASCII as is; anything else escaped (`\n`, `\x1b`, `\u{e9}`).
pub fn ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            ' '..='~' => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    out
}

/// A command line as a shell would take it back: words quoted only when needed.
pub fn command_line(command: &str, args: &[String]) -> String {
    std::iter::once(command)
        .chain(args.iter().map(String::as_str))
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Starts the uploader for one build. Drop the writer (and every sender) to finish: the
/// uploader then flushes everything and returns its report. A chunk that keeps failing is
/// retried within `patience`; after that the rest of the output is dropped.
pub fn start<A: ConsoleApi>(
    api: A,
    patience: Patience,
) -> (ConsoleWriter, JoinHandle<UploadReport>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let handle = tokio::spawn(upload(api, rx, patience));
    (ConsoleWriter { tx }, handle)
}

/// Adds `piece` to `pending`; `at_line_start` tracks whether the stream ends a line.
fn append(pending: &mut BytesMut, at_line_start: &mut bool, piece: Piece) {
    match piece {
        Piece::Output(bytes) => {
            if let Some(&last) = bytes.last() {
                *at_line_start = last == b'\n';
            }
            pending.extend_from_slice(&bytes);
        }
        Piece::Marker(text) => {
            pending.extend_from_slice(marker_line(&text, *at_line_start).as_bytes());
            *at_line_start = true;
        }
    }
}

async fn upload<A: ConsoleApi>(
    api: A,
    mut rx: mpsc::Receiver<Piece>,
    patience: Patience,
) -> UploadReport {
    let mut offset = 0u64;
    let mut pending = BytesMut::new();
    let mut at_line_start = true;
    let mut closed = false;
    let mut last_send: Option<tokio::time::Instant> = None;
    while !closed {
        // Wait for output. After a quiet spell it goes out almost at once (a watcher sees a
        // lone line without waiting); during a stream of output, at most one request per
        // FLUSH_EVERY carries everything gathered since the last.
        match rx.recv().await {
            Some(piece) => append(&mut pending, &mut at_line_start, piece),
            None => break,
        }
        let now = tokio::time::Instant::now();
        let flush_at = match last_send {
            Some(sent) if now < sent + FLUSH_EVERY => sent + FLUSH_EVERY,
            _ => now + QUIET_GATHER,
        };
        while pending.len() < MAX_CHUNK {
            tokio::select! {
                more = rx.recv() => match more {
                    Some(piece) => append(&mut pending, &mut at_line_start, piece),
                    None => {
                        closed = true;
                        break;
                    }
                },
                _ = tokio::time::sleep_until(flush_at) => break,
            }
        }
        last_send = Some(tokio::time::Instant::now());
        while !pending.is_empty() {
            let chunk = pending.split_to(pending.len().min(MAX_CHUNK)).freeze();
            match send_chunk(&api, offset, chunk, &patience).await {
                Ok(ConsoleAck::Truncated(at)) => {
                    tracing::warn!(
                        at,
                        "the server cut this build's console at its size limit; the job runs on, its further output is not uploaded"
                    );
                    while rx.recv().await.is_some() {}
                    return UploadReport {
                        offset: at,
                        error: None,
                    };
                }
                Ok(ConsoleAck::Stored(stored) | ConsoleAck::Gap(stored)) => offset = stored,
                Err(error) => {
                    tracing::error!(%error, "console upload failed; the rest of this build's output is dropped");
                    // Keep draining so the task is never blocked on a full queue.
                    while rx.recv().await.is_some() {}
                    return UploadReport {
                        offset,
                        error: Some(error),
                    };
                }
            }
        }
    }
    UploadReport {
        offset,
        error: None,
    }
}

/// Sends one chunk until it is stored; answers the new stored length (`Stored`), or where the
/// server cut the console (`Truncated`).
async fn send_chunk<A: ConsoleApi>(
    api: &A,
    mut offset: u64,
    chunk: Bytes,
    patience: &Patience,
) -> Result<ConsoleAck, String> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut failures = 0u32;
    let mut failing_since = None;
    let mut resyncs = 0u32;
    loop {
        let outcome = tokio::select! {
            outcome = api.append(offset, chunk.clone()) => outcome,
            _ = patience.give_up.cancelled() => return Err("the agent stopped before the console was stored".into()),
        };
        match outcome {
            Ok(ack @ (ConsoleAck::Stored(_) | ConsoleAck::Truncated(_))) => return Ok(ack),
            Ok(ConsoleAck::Gap(stored)) => {
                resyncs += 1;
                if resyncs > 5 {
                    return Err(format!(
                        "the server keeps refusing offset {offset} (stored {stored})"
                    ));
                }
                tracing::warn!(
                    believed = offset,
                    stored,
                    "the server's console is shorter than the agent believed; resyncing"
                );
                offset = stored;
            }
            Err(error) if error.is_transient() => {
                failures += 1;
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if patience.exhausted(since) {
                    return Err(format!("gave up after {failures} attempt(s): {error}"));
                }
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(%error, offset, attempts = failures, "console upload: will retry");
                }
                if !patience.wait(backoff.next_delay()).await {
                    return Err(format!("gave up after {failures} attempt(s): {error}"));
                }
            }
            Err(error) => return Err(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use tokio_util::sync::CancellationToken;

    use crate::agent_runtime::retry::FAIL_AFTER;

    fn patient() -> Patience {
        Patience {
            give_up: CancellationToken::new(),
            stop_retrying: CancellationToken::new(),
            fail_after: FAIL_AFTER,
        }
    }

    /// A console server in memory: stores appends as the contract says, and fails on demand.
    #[derive(Default)]
    struct FakeServer {
        log: Mutex<Vec<u8>>,
        requests: Mutex<Vec<(u64, usize)>>,
        /// Per request, in order: Some(true) = fail before storing, Some(false) = store but
        /// lose the answer, None = behave.
        script: Mutex<Vec<Option<bool>>>,
    }

    impl ConsoleApi for Arc<FakeServer> {
        fn append(
            &self,
            offset: u64,
            chunk: Bytes,
        ) -> impl Future<Output = Result<ConsoleAck, ApiError>> + Send {
            let server = Arc::clone(self);
            async move {
                server.requests.lock().unwrap().push((offset, chunk.len()));
                let step = {
                    let mut script = server.script.lock().unwrap();
                    if script.is_empty() {
                        None
                    } else {
                        script.remove(0)
                    }
                };
                if step == Some(true) {
                    return Err(ApiError::Transport("connection reset".into()));
                }
                if chunk.len() > MAX_CHUNK {
                    return Err(ApiError::Status {
                        status: 413,
                        message: "too large".into(),
                        body: serde_json::Value::Null,
                        headers: Default::default(),
                    });
                }
                let mut log = server.log.lock().unwrap();
                let stored = log.len() as u64;
                if offset > stored {
                    return Ok(ConsoleAck::Gap(stored));
                }
                // Only the part beyond what is stored is new.
                let already = (stored - offset) as usize;
                if already < chunk.len() {
                    log.extend_from_slice(&chunk[already..]);
                }
                let new_length = log.len() as u64;
                drop(log);
                if step == Some(false) {
                    return Err(ApiError::Status {
                        status: 502,
                        message: "bad gateway".into(),
                        body: serde_json::Value::Null,
                        headers: Default::default(),
                    });
                }
                Ok(ConsoleAck::Stored(new_length))
            }
        }
    }

    async fn run_upload(server: &Arc<FakeServer>, pieces: Vec<Vec<u8>>) -> UploadReport {
        let (writer, handle) = start(Arc::clone(server), patient());
        let tx = writer.sender();
        for piece in pieces {
            tx.send(Bytes::from(piece).into()).await.unwrap();
        }
        drop(tx);
        drop(writer);
        handle.await.unwrap()
    }

    #[tokio::test]
    async fn bytes_arrive_exactly_and_are_batched() {
        let server = Arc::new(FakeServer::default());
        let mut pieces = Vec::new();
        let mut expected = Vec::new();
        for i in 0..200 {
            let mut piece = format!("line {i}\r\x1b[31m").into_bytes();
            piece.extend_from_slice(&[0xff, 0xc3, b'\n']);
            expected.extend_from_slice(&piece);
            pieces.push(piece);
        }
        pieces.push(vec![0xff, 0xfe, b'\r']);
        expected.extend_from_slice(&[0xff, 0xfe, b'\r']);
        let report = run_upload(&server, pieces).await;
        assert_eq!(report.error, None);
        assert_eq!(*server.log.lock().unwrap(), expected);
        assert_eq!(report.offset, expected.len() as u64);
        let requests = server.requests.lock().unwrap().len();
        assert!(requests < 10, "{requests} requests for 201 pieces");
    }

    #[tokio::test]
    async fn large_output_is_split_at_one_mebibyte() {
        let server = Arc::new(FakeServer::default());
        let big: Vec<u8> = (0..(MAX_CHUNK * 2 + 10)).map(|i| (i % 251) as u8).collect();
        let pieces: Vec<Vec<u8>> = big.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
        let report = run_upload(&server, pieces).await;
        assert_eq!(report.error, None);
        assert_eq!(*server.log.lock().unwrap(), big);
        assert!(
            server
                .requests
                .lock()
                .unwrap()
                .iter()
                .all(|(_, len)| *len <= MAX_CHUNK)
        );
    }

    #[tokio::test]
    async fn failures_are_retried_at_the_same_offset_without_duplicates() {
        let server = Arc::new(FakeServer::default());
        // Fail, then store-but-lose-the-answer, then behave.
        *server.script.lock().unwrap() = vec![Some(true), Some(false), None];
        let report = run_upload(&server, vec![b"hello\n".to_vec()]).await;
        assert_eq!(report.error, None);
        assert_eq!(*server.log.lock().unwrap(), b"hello\n");
        let requests = server.requests.lock().unwrap().clone();
        assert_eq!(requests, vec![(0, 6), (0, 6), (0, 6)]);
    }

    #[tokio::test]
    async fn a_gap_resyncs_to_the_stored_length() {
        let server = Arc::new(FakeServer::default());
        let api = Arc::clone(&server);
        // The agent believes 10 bytes are stored; none are.
        let stored = send_chunk(&api, 10, Bytes::from_static(b"abc"), &patient())
            .await
            .unwrap();
        assert_eq!(stored, ConsoleAck::Stored(3));
        assert_eq!(*server.log.lock().unwrap(), b"abc");
        assert_eq!(*server.requests.lock().unwrap(), vec![(10, 3), (0, 3)]);
    }

    #[tokio::test]
    async fn giving_up_ends_the_retries_and_drains() {
        let server = Arc::new(FakeServer::default());
        *server.script.lock().unwrap() = vec![Some(true); 1000];
        let patience = patient();
        let give_up = patience.give_up.clone();
        let (writer, handle) = start(Arc::clone(&server), patience);
        let tx = writer.sender();
        tx.send(Bytes::from_static(b"lost\n").into()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        give_up.cancel();
        // The queue keeps draining: sending never blocks for good.
        for _ in 0..(QUEUE * 2) {
            let _ = tx.send(Bytes::from_static(b"more\n").into()).await;
        }
        drop(tx);
        drop(writer);
        let report = handle.await.unwrap();
        assert!(report.error.is_some());
        assert_eq!(report.offset, 0);
    }

    /// Feeds output until the uploader has given up (the queue then drains for good).
    async fn until_given_up(server: &Arc<FakeServer>, patience: Patience) -> UploadReport {
        let (writer, handle) = start(Arc::clone(server), patience);
        let tx = writer.sender();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        for _ in 0..(QUEUE * 4) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the retries never ended"
            );
            let _ = tx.send(Bytes::from_static(b"more\n").into()).await;
        }
        drop(tx);
        drop(writer);
        tokio::time::timeout(Duration::from_secs(20), handle)
            .await
            .expect("the uploader ends")
            .unwrap()
    }

    #[tokio::test]
    async fn a_console_failing_past_the_deadline_is_given_up() {
        let server = Arc::new(FakeServer::default());
        *server.script.lock().unwrap() = vec![Some(true); 100_000];
        let patience = Patience {
            fail_after: Duration::from_millis(300),
            ..patient()
        };
        let report = until_given_up(&server, patience).await;
        assert!(report.error.is_some());
        assert_eq!(report.offset, 0);
    }

    #[tokio::test]
    async fn stopping_the_job_ends_the_console_retries() {
        let server = Arc::new(FakeServer::default());
        *server.script.lock().unwrap() = vec![Some(true); 100_000];
        let patience = patient();
        let stop = patience.stop_retrying.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop.cancel();
        });
        let report = until_given_up(&server, patience).await;
        assert!(report.error.is_some());
    }

    #[tokio::test]
    async fn markers_start_a_line_after_output_that_did_not_end_one() {
        let server = Arc::new(FakeServer::default());
        let (mut writer, handle) = start(Arc::clone(&server), patient());
        writer.marker("Task: a").await;
        writer
            .sender()
            .send(Bytes::from_static(b"partial").into())
            .await
            .unwrap();
        writer.marker("Task: b").await;
        writer
            .sender()
            .send(Bytes::from_static(b"whole\n").into())
            .await
            .unwrap();
        writer.marker("Job completed: Passed").await;
        drop(writer);
        assert_eq!(handle.await.unwrap().error, None);
        assert_eq!(
            *server.log.lock().unwrap(),
            b"[ferrocd] Task: a\npartial\n[ferrocd] Task: b\nwhole\n[ferrocd] Job completed: Passed\n"
        );
    }

    #[test]
    fn marker_lines_are_ascii_and_start_a_line() {
        assert_eq!(
            marker_line("Job completed: Passed", true),
            "[ferrocd] Job completed: Passed\n"
        );
        assert_eq!(marker_line("Task: x", false), "\n[ferrocd] Task: x\n");
        assert_eq!(ascii("caf\u{e9}\x1b[0m\n"), "caf\\u{e9}\\x1b[0m\\n");
    }

    #[test]
    fn command_lines_quote_only_what_needs_it() {
        let args = vec![
            "-c".to_string(),
            "echo hello; exit 3".to_string(),
            "it's".to_string(),
            String::new(),
            "a/b.c=d".to_string(),
        ];
        assert_eq!(
            command_line("sh", &args),
            r"sh -c 'echo hello; exit 3' 'it'\''s' '' a/b.c=d"
        );
    }
}
