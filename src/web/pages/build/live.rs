//! A build's live console: one view per watched build renders each batch of new complete
//! lines once and shares it; each connection resumes from its own byte offset and re-reads
//! the stored log whenever the shared frames don't line up with what it has sent (a resume
//! point, a lag), so no byte goes twice and none is skipped.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::console_html::{complete_lines_end, render, safe_cut};
use super::fragments::summary;
use crate::AppState;
use crate::events::{DomainEvent, Topic};
use crate::job_runs::JobRun;
use crate::web::pages::fragment;
use crate::web::sse::{self, Coalescer, KeyedViews};

pub type ConsoleViews = KeyedViews<i64, ConsoleView>;

const COALESCE: Duration = Duration::from_millis(50);
const RETIRE_CHECK: Duration = Duration::from_secs(5);
/// A line this long without a newline is sent anyway.
const LONGEST_PENDING_LINE: usize = 64 * 1024;
/// Catch-up from storage goes out in events of about this size.
const CATCH_UP_EVENT: usize = 256 * 1024;
const CAPACITY: usize = 256;

#[derive(Clone)]
pub enum Change {
    /// Rendered lines covering log bytes `start..end`.
    Lines { start: i64, end: i64, html: Bytes },
    /// The status fragment changed.
    Status,
}

pub struct ConsoleView {
    changes: broadcast::Sender<Change>,
    /// The latest status fragment (HTML), framed per connection with its own offset as id.
    status: RwLock<Bytes>,
}

impl ConsoleView {
    fn status(&self) -> Bytes {
        self.status.read().expect("status lock poisoned").clone()
    }
}

/// The hostname of the run's agent, if it has one that still exists.
pub(super) async fn hostname_for(state: &AppState, run: &JobRun) -> Option<String> {
    state
        .agents
        .get(run.agent_uuid?)
        .await
        .ok()
        .map(|a| a.hostname)
}

pub async fn status_html(state: &AppState, run: &JobRun) -> Bytes {
    let hostname = hostname_for(state, run).await;
    Bytes::from(fragment(summary(run, hostname.as_deref())))
}

/// The view's own state: the log up to `line_start` has gone out as lines; `pending` holds
/// the bytes after it (an unfinished line).
struct Tail {
    line_start: i64,
    pending: BytesMut,
    completed: bool,
}

impl Tail {
    fn known_end(&self) -> i64 {
        self.line_start + self.pending.len() as i64
    }

    /// Takes the bytes ready to go out: complete lines, or everything once the run is over
    /// or a line grows too long.
    fn take_ready(&mut self) -> Option<(i64, Bytes)> {
        let lines_end = complete_lines_end(&self.pending, self.line_start);
        let end = if self.completed {
            self.known_end()
        } else if lines_end == self.line_start && self.pending.len() >= LONGEST_PENDING_LINE {
            // A very long line without a newline yet goes out in pieces.
            self.line_start + safe_cut(&self.pending, self.pending.len()) as i64
        } else {
            lines_end
        };
        if end == self.line_start {
            return None;
        }
        let bytes = self
            .pending
            .split_to((end - self.line_start) as usize)
            .freeze();
        let start = self.line_start;
        self.line_start = end;
        Some((start, bytes))
    }
}

/// Starts the view of `build_id` with the state as stored now.
pub fn spawn_view(
    state: AppState,
    build_id: i64,
    mut events: broadcast::Receiver<crate::events::Published>,
    run: JobRun,
    status: Bytes,
    stored_tail: (i64, Bytes),
) -> Arc<ConsoleView> {
    let view = Arc::new(ConsoleView {
        changes: broadcast::channel(CAPACITY).0,
        status: RwLock::new(status),
    });
    let (tail_start, tail_bytes) = stored_tail;
    let line_start = complete_lines_end(&tail_bytes, tail_start).max(tail_start);
    let mut tail = Tail {
        line_start,
        pending: BytesMut::from(&tail_bytes[(line_start - tail_start) as usize..]),
        completed: run.is_completed(),
    };
    let task_view = Arc::clone(&view);
    tokio::spawn(async move {
        let view = task_view;
        let mut run = run;
        let mut lines = Coalescer::default();
        let mut status_dirty = false;
        let mut retire = tokio::time::interval(RETIRE_CHECK);
        loop {
            let due = if status_dirty {
                Some(tokio::time::Instant::now())
            } else {
                lines.due(COALESCE)
            };
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Ok(event) => match &*event {
                        DomainEvent::ConsoleAppend { start, bytes, .. } => {
                            let known = tail.known_end();
                            let end = start + bytes.len() as i64;
                            if *start > known {
                                // We missed an append: the log knows what it was.
                                if let Ok((missed, _)) = state.job_runs.read_console(build_id, known).await {
                                    let upto = ((start - known) as usize).min(missed.len());
                                    tail.pending.extend_from_slice(&missed[..upto]);
                                }
                            }
                            let known = tail.known_end();
                            if end > known && *start <= known {
                                tail.pending.extend_from_slice(&bytes[(known - start) as usize..]);
                                lines.mark();
                            }
                        }
                        // Re-read rather than trust the payload: two writes may publish in
                        // another order than they committed.
                        DomainEvent::RunUpdated(_) => {
                            refresh(&state, build_id, &mut run, &mut tail).await;
                            lines.mark();
                            status_dirty = true;
                        }
                        _ => {}
                    },
                    Err(RecvError::Lagged(_)) => {
                        refresh(&state, build_id, &mut run, &mut tail).await;
                        lines.mark();
                        status_dirty = true;
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    // Lines first: a run's final status follows its last lines.
                    if let Some((start, bytes)) = tail.take_ready() {
                        let html = Bytes::from(fragment_lines(&bytes, start));
                        let end = start + bytes.len() as i64;
                        let _ = view.changes.send(Change::Lines { start, end, html });
                    }
                    lines.rendered();
                    if status_dirty {
                        let html = status_html(&state, &run).await;
                        *view.status.write().expect("status lock poisoned") = html;
                        let _ = view.changes.send(Change::Status);
                        status_dirty = false;
                    }
                }
                _ = retire.tick() => {
                    if state.console_views.retire_if(&build_id, |v| v.changes.receiver_count() == 0) {
                        break;
                    }
                }
            }
        }
    });
    view
}

/// Catches the view up with storage: the run as it is now, and any bytes past what the view
/// has (events it missed, or appends that raced its start).
async fn refresh(state: &AppState, build_id: i64, run: &mut JobRun, tail: &mut Tail) {
    if let Ok(fresh) = state.job_runs.get(build_id).await {
        *run = fresh;
    }
    if let Ok((missed, _)) = state
        .job_runs
        .read_console(build_id, tail.known_end())
        .await
    {
        tail.pending.extend_from_slice(&missed);
    }
    // Only now: the bytes read above include everything stored before completion.
    tail.completed = run.is_completed();
}

fn fragment_lines(bytes: &[u8], start: i64) -> String {
    // Console HTML is already escaped; only raw CRs need the frame-safe spelling.
    render(bytes, start).replace('\r', "&#13;")
}

/// One connection: the status, the stored log from `from`, then live lines.
pub fn connection_stream(
    state: AppState,
    build_id: i64,
    view: Arc<ConsoleView>,
    mut changes: broadcast::Receiver<Change>,
    from: i64,
) -> impl Stream<Item = Bytes> + Send + 'static {
    async_stream::stream! {
        let mut pos = from.max(0);
        yield sse::frame("status", &pos.to_string(), &String::from_utf8_lossy(&view.status()));
        while let Some(frame) = catch_up_frame(&state, build_id, &mut pos, None).await {
            yield frame;
        }
        loop {
            match changes.recv().await {
                Ok(Change::Lines { start, end, html }) => {
                    if end <= pos {
                        continue;
                    }
                    if start == pos {
                        pos = end;
                        yield sse::frame("console", &pos.to_string(), &String::from_utf8_lossy(&html));
                    } else {
                        // Our position is not where this batch starts: read exactly what we lack.
                        while let Some(frame) = catch_up_frame(&state, build_id, &mut pos, Some(end)).await {
                            yield frame;
                        }
                    }
                }
                Ok(Change::Status) => {
                    yield sse::frame("status", &pos.to_string(), &String::from_utf8_lossy(&view.status()));
                }
                Err(RecvError::Lagged(_)) => {
                    while let Some(frame) = catch_up_frame(&state, build_id, &mut pos, None).await {
                        yield frame;
                    }
                    yield sse::frame("status", &pos.to_string(), &String::from_utf8_lossy(&view.status()));
                }
                Err(RecvError::Closed) => break,
            }
        }
    }
}

/// The next `console` frame of the stored log from `pos`: at most `CATCH_UP_EVENT` bytes,
/// ending on a line boundary, never past `until`, and (while the run goes on) never with an
/// unfinished last line. Advances `pos`; `None` when there is nothing more to send. Reads one
/// window at a time, so a connection to a huge log holds one window, not the log.
async fn catch_up_frame(
    state: &AppState,
    build_id: i64,
    pos: &mut i64,
    until: Option<i64>,
) -> Option<Bytes> {
    let limit = until.map_or(CATCH_UP_EVENT as i64, |u| {
        (u - *pos).min(CATCH_UP_EVENT as i64)
    });
    if limit <= 0 {
        return None;
    }
    let (bytes, run) = match state
        .job_runs
        .read_console_window(build_id, *pos, limit)
        .await
    {
        Ok(read) => read,
        Err(error) => {
            tracing::warn!(%error, build_id, "console catch-up could not read the log");
            return None;
        }
    };
    *pos = (*pos).min(run.console_length);
    let reaches_end = *pos + bytes.len() as i64 >= run.console_length;
    let cut = if reaches_end && (run.is_completed() || until.is_some()) {
        bytes.len()
    } else {
        match bytes.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            // A full window without a newline: a very long line goes out in pieces.
            None if bytes.len() >= CATCH_UP_EVENT => safe_cut(&bytes, bytes.len()),
            None => 0,
        }
    };
    if cut == 0 {
        return None;
    }
    let html = fragment_lines(&bytes[..cut], *pos);
    *pos += cut as i64;
    Some(sse::frame("console", &pos.to_string(), &html))
}

/// Attaches a connection to the build's view, starting the view if nobody watches yet.
pub async fn attach(
    state: &AppState,
    build_id: i64,
) -> crate::error::Result<(Arc<ConsoleView>, broadcast::Receiver<Change>)> {
    // Subscribe before reading, so a change between the read and the view's start is heard
    // (the view re-reads on it). Unused if the view already runs.
    let events = state.hub.subscribe(&Topic::AgentJobRunConsole(build_id));
    let run = state.job_runs.get(build_id).await?;
    let status = status_html(state, &run).await;
    // The view starts from the stored tail (its unfinished last line matters).
    let tail_from = (run.console_length - LONGEST_PENDING_LINE as i64).max(0);
    let (tail, _) = state.job_runs.read_console(build_id, tail_from).await?;
    let views = Arc::clone(&state.console_views);
    Ok(views.attach(
        build_id,
        || {
            spawn_view(
                state.clone(),
                build_id,
                events,
                run,
                status,
                (tail_from, tail),
            )
        },
        |view| (Arc::clone(view), view.changes.subscribe()),
    ))
}
