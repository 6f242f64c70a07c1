//! The job runs store: what the job runs context and the scheduler ask of the database,
//! whichever backend it is. Each function hands its connection to the same-named function of
//! the backend's module (`sqlite.rs`).

use std::collections::BTreeMap;

use bytes::Bytes;
use uuid::Uuid;

use super::{postgres, sqlite};
use crate::db::{Conn, backend};
use crate::domain::job_run::{JobResult, JobRun, JobState, Requirements, Task};
use crate::error::Result;

/// What a new run needs; the scheduler fills it in.
pub struct NewRun<'a> {
    pub pipeline_name: &'a str,
    pub pipeline_counter: i64,
    pub stage_name: &'a str,
    pub stage_counter: i64,
    pub job_name: &'a str,
    pub tasks: &'a [Task],
    pub resources: &'a [String],
    pub environment: Option<&'a str>,
    pub environment_variables: &'a BTreeMap<String, String>,
    pub rescheduled_from: Option<i64>,
    pub scheduled_by: Option<&'a str>,
    /// The agent empties the sandbox first (GoCD's stage `clean_workspace`).
    pub clean_workspace: bool,
    /// `GO_PIPELINE_LABEL`; `None`: the counter.
    pub pipeline_label: Option<&'a str>,
    /// Seconds of console silence before the run is cancelled; `Some(0)` never; `None`: the
    /// server's default.
    pub timeout_seconds: Option<i64>,
    /// The one agent that may run it (a copy of a `run_instances: all` job).
    pub pinned_agent: Option<Uuid>,
}

pub async fn fetch(conn: Conn<'_>, build_id: i64) -> Result<Option<JobRun>> {
    backend!(conn, fetch(build_id))
}

/// The Scheduled runs, oldest first.
pub async fn queue(conn: Conn<'_>) -> Result<Vec<JobRun>> {
    backend!(conn, queue())
}

/// What matching needs of the Scheduled runs after build `after`, oldest first, at most
/// `limit` of them (a poll for work reads only this, a page at a time).
pub async fn queued_requirements(
    conn: Conn<'_>,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, Requirements)>> {
    backend!(conn, queued_requirements(after, limit))
}

/// The runs an agent holds that are not Completed, oldest first.
pub async fn active_runs_of(conn: Conn<'_>, agent: Uuid) -> Result<Vec<JobRun>> {
    backend!(conn, active_runs_of(agent))
}

/// A page of an agent's runs, newest first, and how many it has in all.
pub async fn history(
    conn: Conn<'_>,
    agent: Uuid,
    offset: i64,
    page_size: i64,
) -> Result<(Vec<JobRun>, i64)> {
    backend!(conn, history(agent, offset, page_size))
}

/// The newest run of a job addressed by names and counters.
pub async fn find(
    conn: Conn<'_>,
    pipeline: &str,
    pipeline_counter: i64,
    stage: &str,
    stage_counter: i64,
    job: &str,
) -> Result<Option<i64>> {
    backend!(
        conn,
        find(pipeline, pipeline_counter, stage, stage_counter, job)
    )
}

pub async fn pending_count(conn: Conn<'_>) -> Result<u64> {
    backend!(conn, pending_count())
}

/// The next counter of a pipeline name.
pub async fn next_counter(conn: Conn<'_>, pipeline: &str) -> Result<i64> {
    backend!(conn, next_counter(pipeline))
}

/// A new Scheduled run (and its first transition); returns its build id.
pub async fn insert(conn: Conn<'_>, run: NewRun<'_>, now: i64) -> Result<i64> {
    backend!(conn, insert(run, now))
}

/// A Completed copy of finished run `original` in stage run `stage_counter` of its stage (a
/// job not re-run when its stage's failed or selected jobs run again); returns its build id.
pub async fn insert_copy(conn: Conn<'_>, original: i64, stage_counter: i64) -> Result<i64> {
    backend!(conn, insert_copy(original, stage_counter))
}

/// Moves `run` on to `state` if it is still in the state it was read in (a compare-and-set);
/// false if another write moved it meanwhile.
pub async fn move_run(
    conn: Conn<'_>,
    run: &JobRun,
    state: JobState,
    result: JobResult,
    agent: Option<Uuid>,
    now: i64,
) -> Result<bool> {
    backend!(conn, move_run(run, state, result, agent, now))
}

/// Hands a Scheduled run to `agent` if it is still Scheduled (a compare-and-set).
pub async fn assign(conn: Conn<'_>, build_id: i64, agent: Uuid, now: i64) -> Result<bool> {
    backend!(conn, assign(build_id, agent, now))
}

pub async fn request_cancel(conn: Conn<'_>, build_id: i64) -> Result<()> {
    backend!(conn, request_cancel(build_id))
}

/// Who cancelled the run.
pub async fn set_cancelled_by(conn: Conn<'_>, build_id: i64, actor: &str) -> Result<()> {
    backend!(conn, set_cancelled_by(build_id, actor))
}

/// The agents holding runs that are neither Scheduled nor Completed and have not been heard
/// from since `silent_since` (or are gone).
pub async fn silent_holders(conn: Conn<'_>, silent_since: i64) -> Result<Vec<Uuid>> {
    backend!(conn, silent_holders(silent_since))
}

/// Stores console `bytes` at `start` (the stored length) and moves the run's length past them;
/// `now` is when the console last grew.
pub async fn append_console(
    conn: Conn<'_>,
    build_id: i64,
    start: i64,
    bytes: &[u8],
    now: i64,
) -> Result<()> {
    backend!(conn, append_console(build_id, start, bytes, now))
}

/// The Building runs whose cancel was not asked for and whose console has been silent longer
/// than their timeout (their own, else `default_seconds`; 0 never), silence counted from
/// the last console growth, the start of Building, or `not_before`, whichever is latest:
/// `(build_id, timeout_seconds)`.
pub async fn silent_runs(
    conn: Conn<'_>,
    default_seconds: i64,
    not_before: i64,
    now: i64,
) -> Result<Vec<(i64, i64)>> {
    backend!(conn, silent_runs(default_seconds, not_before, now))
}

/// Why the server cancels the run itself, for its console.
pub async fn set_cancel_reason(conn: Conn<'_>, build_id: i64, reason: &str) -> Result<()> {
    backend!(conn, set_cancel_reason(build_id, reason))
}

/// Records that the console was cut at `at` bytes: later appends store nothing.
pub async fn mark_console_truncated(conn: Conn<'_>, build_id: i64, at: i64) -> Result<()> {
    backend!(conn, mark_console_truncated(build_id, at))
}

/// The console bytes from `from` up to `to` (a length the caller read).
pub async fn read_console(conn: Conn<'_>, build_id: i64, from: i64, to: i64) -> Result<Bytes> {
    backend!(conn, read_console(build_id, from, to))
}

/// The latest run of each job of a stage run (a rescheduled job's newest), oldest first.
pub async fn latest_of_stage(
    conn: Conn<'_>,
    pipeline: &str,
    pipeline_counter: i64,
    stage: &str,
    stage_counter: i64,
) -> Result<Vec<JobRun>> {
    backend!(
        conn,
        latest_of_stage(pipeline, pipeline_counter, stage, stage_counter)
    )
}
