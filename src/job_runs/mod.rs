//! The job runs context: one run of one job (GoCD's build), its history per agent, and its
//! console. The scheduler creates, assigns and ends runs through the crate-internal functions
//! here, inside its own writes; every statement is in the store (`store.rs`, `sqlite.rs`).

mod postgres;
mod sqlite;
pub(crate) mod store;

use bytes::Bytes;
use uuid::Uuid;

use self::store::NewRun;
use crate::agents::{self, Agents};
use crate::db::{Conn, Db, WriteTx, now_millis};
use crate::domain::job_run::{Append, JobResult, JobRun, JobState, within_cap};
use crate::error::{Error, Result};
use crate::events::{DomainEvent, Topic};

pub(crate) async fn fetch_run_or_404(conn: Conn<'_>, build_id: i64) -> Result<JobRun> {
    store::fetch(conn, build_id)
        .await?
        .ok_or_else(|| not_found(build_id))
}

/// A new Scheduled run, scheduled now; returns its build id.
pub(crate) async fn insert_run(tx: &mut WriteTx, run: NewRun<'_>) -> Result<i64> {
    store::insert(tx.conn(), run, now_millis()).await
}

/// Moves `run` on to `state` (and `result`), recording the transition; `agent` is set when
/// given. A compare-and-set on the state `run` was read in: if another write moved it
/// meanwhile, nothing changes and the answer is a conflict.
pub(crate) async fn move_run(
    tx: &mut WriteTx,
    run: &JobRun,
    state: JobState,
    result: JobResult,
    agent: Option<Uuid>,
) -> Result<()> {
    if !store::move_run(tx.conn(), run, state, result, agent, now_millis()).await? {
        return Err(Error::Conflict(format!(
            "build {} changed meanwhile; it is no longer {}",
            run.build_id, run.state
        )));
    }
    if state == JobState::Completed
        && let Some(reason) = &run.cancel_reason
    {
        // Only now: while the agent uploads, bytes of the server's own would shift its
        // offsets, and a chunk overlapping them would lose its first bytes.
        append_server_line(tx, run, reason).await?;
    }
    Ok(())
}

/// `[ferrocd] LINE` at the end of the console (on a line of its own), unless it was cut.
async fn append_server_line(tx: &mut WriteTx, run: &JobRun, line: &str) -> Result<()> {
    let build_id = run.build_id;
    let Some(stored) = store::fetch(tx.conn(), build_id).await? else {
        return Ok(());
    };
    if stored.console_truncated_at.is_some() {
        return Ok(());
    }
    let start = stored.console_length;
    let mut text = String::new();
    if start > 0 {
        let last = store::read_console(tx.conn(), build_id, start - 1, start).await?;
        if last.as_ref() != b"\n" {
            text.push('\n');
        }
    }
    text.push_str(&format!("[ferrocd] {line}\n"));
    store::append_console(tx.conn(), build_id, start, text.as_bytes(), now_millis()).await?;
    let end = start + text.len() as i64;
    tx.publish(
        Topic::AgentJobRunConsole(build_id),
        DomainEvent::ConsoleAppend {
            build_id,
            start,
            end,
        },
    );
    Ok(())
}

/// Records that the server cancels `build_id` itself, and why (its console says so at its end).
pub(crate) async fn set_cancel_reason(tx: &mut WriteTx, build_id: i64, reason: &str) -> Result<()> {
    store::set_cancel_reason(tx.conn(), build_id, reason).await
}

/// Hands the Scheduled run `build_id` to `agent`: a compare-and-set, false if it is no longer
/// Scheduled (another writer took or cancelled it).
pub(crate) async fn assign_run(tx: &mut WriteTx, build_id: i64, agent: Uuid) -> Result<bool> {
    store::assign(tx.conn(), build_id, agent, now_millis()).await
}

fn not_found(build_id: i64) -> Error {
    Error::NotFound(format!("no build with id {build_id}"))
}

/// A page of an agent's runs, newest first.
#[derive(Debug, Clone)]
pub struct RunPage {
    pub runs: Vec<JobRun>,
    pub offset: i64,
    pub page_size: i64,
    pub total: i64,
}

#[derive(Clone)]
pub struct JobRuns {
    db: Db,
    agents: Agents,
    /// A build's console stops growing here (`--max-console-bytes`).
    max_console_bytes: i64,
}

/// What became of a console append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The console is now this long.
    Stored(i64),
    /// The console was cut at this many bytes; the agent should stop sending.
    Truncated(i64),
}

impl JobRuns {
    pub fn new(db: Db, agents: Agents, max_console_bytes: u64) -> Self {
        JobRuns {
            db,
            agents,
            max_console_bytes: i64::try_from(max_console_bytes).unwrap_or(i64::MAX),
        }
    }

    pub async fn get(&self, build_id: i64) -> Result<JobRun> {
        let mut conn = self.db.reader().await?;
        fetch_run_or_404(conn.conn(), build_id).await
    }

    /// The newest run of a job addressed by names and counters (GoCD's URLs).
    pub async fn find(
        &self,
        pipeline: &str,
        pipeline_counter: i64,
        stage: &str,
        stage_counter: i64,
        job: &str,
    ) -> Result<Option<i64>> {
        let mut conn = self.db.reader().await?;
        store::find(
            conn.conn(),
            pipeline,
            pipeline_counter,
            stage,
            stage_counter,
            job,
        )
        .await
    }

    /// An agent's runs, newest first (`GET /api/agents/{uuid}/job_run_history`).
    pub async fn history(&self, agent: Uuid, offset: i64, page_size: i64) -> Result<RunPage> {
        if !(0..=i64::from(u32::MAX)).contains(&offset) {
            return Err(Error::Unprocessable(
                "offset: must be between 0 and 4294967295".into(),
            ));
        }
        if !(1..=1000).contains(&page_size) {
            return Err(Error::Unprocessable(
                "page_size: must be between 1 and 1000".into(),
            ));
        }
        self.agents.get(agent).await?;
        let mut conn = self.db.reader().await?;
        let (runs, total) = store::history(conn.conn(), agent, offset, page_size).await?;
        Ok(RunPage {
            runs,
            offset,
            page_size,
            total,
        })
    }

    /// Appends an agent's console bytes at `offset` (the length it believes stored).
    /// Returns the new length. A retried chunk is not stored twice; a gap is a conflict
    /// carrying the stored length.
    pub async fn append_console(
        &self,
        build_id: i64,
        agent: Uuid,
        offset: i64,
        bytes: Bytes,
    ) -> Result<Appended> {
        let mut tx = self.db.begin().await?;
        let run = fetch_run_or_404(tx.conn(), build_id).await?;
        let end = offset + bytes.len() as i64;
        let new = match run.append(agent, offset, bytes.len())? {
            Append::Stored => return Ok(Appended::Stored(run.console_length)),
            Append::Gap { stored } => return Err(Error::ConsoleGap { stored }),
            Append::Truncated { at } => return Ok(Appended::Truncated(at)),
            Append::From(skip) => bytes.slice(skip..),
        };
        let stored = run.console_length;
        let (new, truncated) = within_cap(stored, &new, self.max_console_bytes);
        store::append_console(tx.conn(), build_id, stored, &new, now_millis()).await?;
        if truncated {
            store::mark_console_truncated(tx.conn(), build_id, self.max_console_bytes).await?;
        }
        let contact = agents::touch(&mut tx, self.agents.contacts(), agent).await?;
        let event = DomainEvent::ConsoleAppend {
            build_id,
            start: stored,
            end: stored + new.len() as i64,
        };
        tx.publish(Topic::AgentJobRunConsole(build_id), event);
        tx.commit().await?;
        if let Some(at) = contact {
            self.agents.contacts().wrote(agent, at);
        }
        Ok(if truncated {
            Appended::Truncated(self.max_console_bytes)
        } else {
            Appended::Stored(end)
        })
    }

    /// At most `max` bytes of the stored log from `from`, the run (for its state), and the
    /// log's length: bounded reads for streams that walk a large log window by window.
    pub async fn read_console_window(
        &self,
        build_id: i64,
        from: i64,
        max: i64,
    ) -> Result<(Bytes, JobRun)> {
        let mut conn = self.db.reader().await?;
        let run = fetch_run_or_404(conn.conn(), build_id).await?;
        let from = from.clamp(0, run.console_length);
        let to = from.saturating_add(max.max(0)).min(run.console_length);
        let bytes = store::read_console(conn.conn(), build_id, from, to).await?;
        Ok((bytes, run))
    }

    /// At most the last `max` bytes of the stored log, and where they start.
    pub async fn read_console_tail(&self, build_id: i64, max: i64) -> Result<(Bytes, i64)> {
        let mut conn = self.db.reader().await?;
        let run = fetch_run_or_404(conn.conn(), build_id).await?;
        let from = (run.console_length - max.max(0)).max(0);
        let bytes = store::read_console(conn.conn(), build_id, from, run.console_length).await?;
        Ok((bytes, from))
    }

    /// The stored log from `from` on, and the log's whole length.
    pub async fn read_console(&self, build_id: i64, from: i64) -> Result<(Bytes, i64)> {
        let (bytes, run) = self.read_console_window(build_id, from, i64::MAX).await?;
        Ok((bytes, run.console_length))
    }
}

/// A run just handed to its agent: `run_created` on the agent's run list, `run_updated` on
/// its console.
pub(crate) fn publish_assigned(tx: &mut WriteTx, run: &JobRun) {
    publish_to_watchers(
        tx,
        run,
        DomainEvent::RunCreated {
            build_id: run.build_id,
        },
    );
}

/// `run_updated` where the run's watchers listen: its agent's run list and its console.
pub(crate) fn publish_run(tx: &mut WriteTx, run: &JobRun) {
    publish_to_watchers(
        tx,
        run,
        DomainEvent::RunUpdated {
            build_id: run.build_id,
        },
    );
}

/// `on_run_list` on the run's agent's list (if it has an agent); `run_updated` on its console
/// and on every run's topic.
fn publish_to_watchers(tx: &mut WriteTx, run: &JobRun, on_run_list: DomainEvent) {
    let build_id = run.build_id;
    if let Some(agent) = run.agent_uuid {
        tx.publish(Topic::AgentJobRuns(agent), on_run_list);
    }
    tx.publish(
        Topic::AgentJobRunConsole(build_id),
        DomainEvent::RunUpdated { build_id },
    );
    tx.publish(Topic::JobRunsUpdates, DomainEvent::RunUpdated { build_id });
}
