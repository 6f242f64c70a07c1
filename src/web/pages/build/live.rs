//! A build's live console: one view per watched build renders each batch of new complete
//! lines once and shares it; each connection resumes from its own byte offset and re-reads
//! the stored log whenever the shared frames don't line up with what it has sent (a resume
//! point, a lag), so no byte goes twice and none is skipped. The run's Tests and Artifacts
//! panels are rendered here too, once per change, and go out beside the status.

use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::console_html::{complete_lines_end, render, safe_cut};
use super::fragments::{StatusFacts, summary};
use super::tabs::{RunArtifacts, artifacts_panel, tests_panel};
use crate::AppState;
use crate::agents::Agents;
use crate::artifacts::Artifacts;
use crate::domain::agent::why_waiting;
use crate::domain::job_run::{JobRun, JobState};
use crate::error::Result;
use crate::events::{DomainEvent, Topic};
use crate::job_runs::JobRuns;
use crate::web::live::{KeyedViews, Output, Subscription, View, Watched};
use crate::web::pages::fragment;
use crate::web::sse;

pub type ConsoleViews = KeyedViews<i64, ConsoleView>;

/// A line this long without a newline is sent anyway.
const LONGEST_PENDING_LINE: usize = 64 * 1024;
/// Catch-up from storage goes out in events of about this size.
const CATCH_UP_EVENT: usize = 256 * 1024;

#[derive(Clone)]
pub enum Change {
    /// Rendered lines covering log bytes `start..end`, framed once as the `console` event
    /// every connection at `start` sends (its id is `end`, the offset it reaches).
    Lines { start: i64, end: i64, frame: Bytes },
    /// The status fragment changed.
    Status,
    /// The Tests and Artifacts panels changed.
    Artifacts,
}

/// The latest Tests and Artifacts panels (HTML).
#[derive(Clone, Default)]
pub struct Panels {
    pub tests: Bytes,
    pub artifacts: Bytes,
}

/// What the connections to one build's console share.
pub struct ConsoleView {
    out: Arc<Output<Change>>,
    /// The latest status fragment (HTML), framed per connection with its own offset as id.
    status: Arc<RwLock<Bytes>>,
    panels: Arc<RwLock<Panels>>,
}

impl Watched for ConsoleView {
    fn watchers(&self) -> usize {
        self.out.watchers()
    }
}

impl ConsoleView {
    fn status(&self) -> Bytes {
        self.status.read().expect("status lock poisoned").clone()
    }

    fn panels(&self) -> Panels {
        self.panels.read().expect("panels lock poisoned").clone()
    }
}

/// What the run's Tests and Artifacts panels show, read now.
pub async fn run_artifacts(artifacts: &Artifacts, build_id: i64) -> Result<RunArtifacts> {
    Ok(RunArtifacts {
        files: artifacts.files(build_id).await?,
        reports: artifacts
            .test_reports(&[build_id])
            .await?
            .into_iter()
            .map(|(_, path, summary)| (path, summary))
            .collect(),
        purged_at: artifacts.purged_at(build_id).await?,
    })
}

pub fn panels_html(run: &JobRun, artifacts: &RunArtifacts) -> Panels {
    Panels {
        tests: Bytes::from(fragment(tests_panel(artifacts))),
        artifacts: Bytes::from(fragment(artifacts_panel(run, artifacts))),
    }
}

/// The hostname of the run's agent, if it has one that still exists.
pub(super) async fn hostname_for(agents: &Agents, run: &JobRun) -> Option<String> {
    agents.get(run.agent_uuid?).await.ok().map(|a| a.hostname)
}

/// The agent's name and, for a Scheduled run, why it waits. The reasons need every agent;
/// a failed read shows none rather than no page.
pub(super) async fn status_facts(agents: &Agents, run: &JobRun) -> StatusFacts {
    let waiting = if run.state == JobState::Scheduled {
        match agents.list().await {
            Ok(all) => why_waiting(&run.requirements(), &all),
            Err(error) => {
                tracing::warn!(%error, build_id = run.build_id, "could not read the agents");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    StatusFacts {
        hostname: hostname_for(agents, run).await,
        waiting,
    }
}

pub async fn status_html(agents: &Agents, run: &JobRun) -> Bytes {
    let facts = status_facts(agents, run).await;
    Bytes::from(fragment(summary(run, &facts)))
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

/// One build's console as a live view: an append marks the log as having unread bytes, and a
/// render reads them from storage past the tail and sends each batch of complete lines once;
/// a run update (or missed events) re-reads the run too.
struct Console {
    job_runs: JobRuns,
    agents: Agents,
    artifacts: Artifacts,
    build_id: i64,
    run: JobRun,
    tail: Tail,
    status: Arc<RwLock<Bytes>>,
    panels: Arc<RwLock<Panels>>,
    /// Bytes past `tail` are stored.
    unread: bool,
    /// The run, and any bytes past `tail`, must be read from storage.
    refresh: bool,
    status_changed: bool,
    panels_changed: bool,
}

impl View for Console {
    type Change = Change;

    fn note(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::ConsoleAppend { end, .. } if *end > self.tail.known_end() => {
                self.unread = true;
            }
            DomainEvent::RunUpdated { .. } => {
                self.refresh = true;
                self.status_changed = true;
                // "Published once the tasks end" becomes "published none".
                self.panels_changed = true;
            }
            DomainEvent::ArtifactsChanged { .. } => self.panels_changed = true,
            // Why a Scheduled run waits changes with any agent.
            DomainEvent::AgentRegistered { .. }
            | DomainEvent::AgentUpdated { .. }
            | DomainEvent::AgentEnabled { .. }
            | DomainEvent::AgentDisabled { .. }
            | DomainEvent::AgentDeleted { .. }
                if self.run.state == JobState::Scheduled =>
            {
                self.status_changed = true;
            }
            _ => {}
        }
    }

    fn missed(&mut self, _: &Topic, _: u64) {
        self.refresh = true;
        self.status_changed = true;
        self.panels_changed = true;
    }

    fn is_dirty(&self) -> bool {
        self.unread || self.refresh || self.status_changed || self.panels_changed
    }

    async fn render(&mut self, out: &Output<Change>) -> Result<()> {
        if self.refresh {
            self.run = self.job_runs.get(self.build_id).await?;
            self.read_unread().await?;
            // Only now: the bytes read above include everything stored before completion.
            self.tail.completed = self.run.is_completed();
            self.refresh = false;
        } else if self.unread {
            self.read_unread().await?;
        }
        self.unread = false;
        // Lines first: a run's final status follows its last lines.
        if let Some((start, bytes)) = self.tail.take_ready() {
            out.rendered("console.lines");
            let end = start + bytes.len() as i64;
            let frame = sse::frame("console", &end.to_string(), &fragment_lines(&bytes, start));
            out.send(Change::Lines { start, end, frame });
        }
        if self.status_changed {
            out.rendered("console.status");
            let html = status_html(&self.agents, &self.run).await;
            *self.status.write().expect("status lock poisoned") = html;
            out.send(Change::Status);
            self.status_changed = false;
        }
        if self.panels_changed {
            out.rendered("console.panels");
            let read = run_artifacts(&self.artifacts, self.build_id).await?;
            *self.panels.write().expect("panels lock poisoned") = panels_html(&self.run, &read);
            out.send(Change::Artifacts);
            self.panels_changed = false;
        }
        Ok(())
    }
}

impl Console {
    /// Reads the stored bytes past what the view has into its tail.
    async fn read_unread(&mut self) -> Result<()> {
        let (more, _) = self
            .job_runs
            .read_console(self.build_id, self.tail.known_end())
            .await?;
        self.tail.pending.extend_from_slice(&more);
        Ok(())
    }
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
        for frame in panel_frames(&view, pos) {
            yield frame;
        }
        while let Some(frame) = catch_up_frame(&state, build_id, &mut pos, None).await {
            yield frame;
        }
        loop {
            match changes.recv().await {
                Ok(Change::Lines { start, end, frame }) => {
                    if end <= pos {
                        continue;
                    }
                    if start == pos {
                        pos = end;
                        yield frame;
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
                Ok(Change::Artifacts) => {
                    for frame in panel_frames(&view, pos) {
                        yield frame;
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    view.out.lagged("console");
                    while let Some(frame) = catch_up_frame(&state, build_id, &mut pos, None).await {
                        yield frame;
                    }
                    yield sse::frame("status", &pos.to_string(), &String::from_utf8_lossy(&view.status()));
                    for frame in panel_frames(&view, pos) {
                        yield frame;
                    }
                }
                Err(RecvError::Closed) => break,
            }
        }
    }
}

/// The `tests` and `artifacts` frames, with the connection's offset as id.
fn panel_frames(view: &ConsoleView, pos: i64) -> [Bytes; 2] {
    let panels = view.panels();
    let id = pos.to_string();
    [
        sse::frame("tests", &id, &String::from_utf8_lossy(&panels.tests)),
        sse::frame(
            "artifacts",
            &id,
            &String::from_utf8_lossy(&panels.artifacts),
        ),
    ]
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
    let events = Subscription::new(
        &state.hub,
        &[Topic::AgentJobRunConsole(build_id), Topic::AgentsUpdates],
    );
    let run = state.job_runs.get(build_id).await?;
    let status = status_html(&state.agents, &run).await;
    let panels = panels_html(&run, &run_artifacts(&state.artifacts, build_id).await?);
    // The view starts from the stored tail (its unfinished last line matters).
    let tail_from = (run.console_length - LONGEST_PENDING_LINE as i64).max(0);
    let (tail, _) = state.job_runs.read_console(build_id, tail_from).await?;
    let views = Arc::clone(&state.console_views);
    Ok(views.attach(
        build_id,
        || {
            start(
                state,
                build_id,
                events,
                run,
                (status, panels),
                (tail_from, tail),
            )
        },
        |view| (Arc::clone(view), view.out.subscribe()),
    ))
}

/// Starts the view of `build_id` with the state as stored now; it retires when nobody watches.
fn start(
    state: &AppState,
    build_id: i64,
    events: Subscription,
    run: JobRun,
    (status, panels): (Bytes, Panels),
    stored_tail: (i64, Bytes),
) -> Arc<ConsoleView> {
    let (tail_start, tail_bytes) = stored_tail;
    let line_start = complete_lines_end(&tail_bytes, tail_start).max(tail_start);
    let tail = Tail {
        line_start,
        pending: BytesMut::from(&tail_bytes[(line_start - tail_start) as usize..]),
        completed: run.is_completed(),
    };
    let status = Arc::new(RwLock::new(status));
    let panels = Arc::new(RwLock::new(panels));
    let out = Output::new(Arc::clone(&state.renders));
    let view = Console {
        job_runs: state.job_runs.clone(),
        agents: state.agents.clone(),
        artifacts: state.artifacts.clone(),
        build_id,
        run,
        tail,
        status: Arc::clone(&status),
        panels: Arc::clone(&panels),
        unread: false,
        refresh: false,
        status_changed: false,
        panels_changed: false,
    };
    let shutdown = state.shutdown.clone();
    state
        .console_views
        .spawn(build_id, view, events, Arc::clone(&out), shutdown);
    Arc::new(ConsoleView {
        out,
        status,
        panels,
    })
}
