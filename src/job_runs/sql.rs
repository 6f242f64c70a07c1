//! The job runs store's statements, the same on SQLite and PostgreSQL (`sqlite.rs`, `postgres.rs`
//! compile this file once each): every statement that touches `job_runs`, `job_state_transitions`
//! and `console_chunks`.
//!
//! Binds are `$1, $2, …` in the order they first appear (SQLite numbers named parameters by first
//! appearance), so the statements read the same on PostgreSQL.
//!
//! Console logs are append-only chunks addressed by byte offset. An append writes the chunk and
//! the run's new length, never the log; a read from offset N touches only the chunks that end past
//! N. Bytes are kept exactly as the agent sent them.

use std::collections::BTreeMap;

use super::{Connection, dialect};
use bytes::{Bytes, BytesMut};
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::job_run::{JobResult, JobRun, JobState, Requirements, Task, Transition};
use crate::error::{Error, Result};
use crate::job_runs::store::NewRun;

#[derive(sqlx::FromRow)]
struct RunRow {
    build_id: i64,
    pipeline_name: String,
    pipeline_counter: i64,
    stage_name: String,
    stage_counter: i64,
    job_name: String,
    tasks: Json<Vec<Task>>,
    resources: Json<Vec<String>>,
    environment: Option<String>,
    environment_variables: Json<BTreeMap<String, String>>,
    state: String,
    result: String,
    agent_uuid: Option<String>,
    cancel_requested: bool,
    console_length: i64,
    console_truncated_at: Option<i64>,
    rescheduled_from: Option<i64>,
    scheduled_by: Option<String>,
    cancelled_by: Option<String>,
    scheduled_at: i64,
    completed_at: Option<i64>,
    clean_workspace: bool,
    pipeline_label: Option<String>,
    timeout_seconds: Option<i64>,
    cancel_reason: Option<String>,
    copied_from: Option<i64>,
    pinned_agent: Option<String>,
    /// `[[state, at], …]`, oldest first ([`transitions_column`]).
    transitions: Json<Vec<(String, i64)>>,
}

const RUN_COLUMNS: &str = "build_id, pipeline_name, pipeline_counter, stage_name, stage_counter, \
     job_name, tasks, resources, environment, environment_variables, state, result, agent_uuid, \
     cancel_requested, console_length, console_truncated_at, rescheduled_from, scheduled_by, \
     cancelled_by, scheduled_at, completed_at, clean_workspace, pipeline_label, timeout_seconds, \
     cancel_reason, copied_from, pinned_agent";

fn corrupt(what: String) -> Error {
    Error::Database(sqlx::Error::Decode(what.into()))
}

fn parse_uuid(text: Option<String>) -> Result<Option<Uuid>> {
    text.map(|u| u.parse())
        .transpose()
        .map_err(|e: uuid::Error| corrupt(e.to_string()))
}

impl RunRow {
    fn into_run(self, transitions: Vec<Transition>) -> Result<JobRun> {
        Ok(JobRun {
            build_id: self.build_id,
            pipeline_name: self.pipeline_name,
            pipeline_counter: self.pipeline_counter,
            stage_name: self.stage_name,
            stage_counter: self.stage_counter,
            job_name: self.job_name,
            agent_uuid: parse_uuid(self.agent_uuid)?,
            state: self.state.parse().map_err(corrupt)?,
            result: self.result.parse().map_err(corrupt)?,
            console_length: self.console_length,
            console_truncated_at: self.console_truncated_at,
            resources: self.resources.0,
            environment: self.environment,
            tasks: self.tasks.0,
            cancel_requested: self.cancel_requested,
            rescheduled_from: self.rescheduled_from,
            scheduled_by: self.scheduled_by,
            cancelled_by: self.cancelled_by,
            scheduled_at: self.scheduled_at,
            completed_at: self.completed_at,
            job_state_transitions: transitions,
            environment_variables: self.environment_variables.0,
            clean_workspace: self.clean_workspace,
            pipeline_label: self.pipeline_label,
            timeout_seconds: self.timeout_seconds,
            cancel_reason: self.cancel_reason,
            copied_from: self.copied_from,
            pinned_agent: parse_uuid(self.pinned_agent)?,
        })
    }
}

/// A bound value of a `WHERE …` clause.
enum Bind<'a> {
    Int(i64),
    Text(&'a str),
}

/// A run's transitions as one JSON column of its row, so a run is read in one statement (each
/// statement is a round trip, to SQLite's worker thread or over the network): reading them
/// apart made every read of a run two.
fn transitions_column() -> String {
    dialect::json_agg_ordered(
        "t.state, t.at",
        "job_state_transitions t WHERE t.build_id = job_runs.build_id",
        "t.at, t.rowid",
    )
}

/// Loads runs by a `WHERE …` clause and its binds, with their transitions, in the clause's
/// order.
async fn load_runs(conn: &mut Connection, clause: &str, binds: &[Bind<'_>]) -> Result<Vec<JobRun>> {
    let sql = format!(
        "SELECT {RUN_COLUMNS}, {} AS transitions FROM job_runs {clause}",
        transitions_column()
    );
    let mut query = sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(sql));
    for bind in binds {
        query = match bind {
            Bind::Int(value) => query.bind(*value),
            Bind::Text(value) => query.bind(value.to_string()),
        };
    }
    let rows = query.fetch_all(&mut *conn).await?;
    rows.into_iter()
        .map(|mut row| {
            let transitions = std::mem::take(&mut row.transitions.0)
                .into_iter()
                .map(|(state, at)| {
                    Ok(Transition {
                        state: state.parse().map_err(corrupt)?,
                        state_change_time: at,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            row.into_run(transitions)
        })
        .collect()
}

pub async fn fetch(conn: &mut Connection, build_id: i64) -> Result<Option<JobRun>> {
    Ok(
        load_runs(conn, "WHERE build_id = $1", &[Bind::Int(build_id)])
            .await?
            .pop(),
    )
}

pub async fn queue(conn: &mut Connection) -> Result<Vec<JobRun>> {
    load_runs(conn, "WHERE state = 'Scheduled' ORDER BY build_id", &[]).await
}

/// A queued run's build id, resources, environment and pinned agent, as stored.
type RequirementsRow = (i64, Json<Vec<String>>, Option<String>, Option<String>);

pub async fn queued_requirements(
    conn: &mut Connection,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, Requirements)>> {
    let rows: Vec<RequirementsRow> = sqlx::query_as(
        "SELECT build_id, resources, environment, pinned_agent FROM job_runs \
         WHERE state = 'Scheduled' AND build_id > $1 ORDER BY build_id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(build_id, resources, environment, pinned)| {
            let needs = Requirements {
                resources: resources.0,
                environment,
                agent: parse_uuid(pinned)?,
            };
            Ok((build_id, needs))
        })
        .collect()
}

pub async fn active_runs_of(conn: &mut Connection, agent: Uuid) -> Result<Vec<JobRun>> {
    let agent = agent.to_string();
    load_runs(
        conn,
        "WHERE agent_uuid = $1 AND state != 'Completed' ORDER BY build_id",
        &[Bind::Text(&agent)],
    )
    .await
}

pub async fn history(
    conn: &mut Connection,
    agent: Uuid,
    offset: i64,
    page_size: i64,
) -> Result<(Vec<JobRun>, i64)> {
    let agent = agent.to_string();
    // A copy (a job not re-run with its stage) ran once, as its original: listed once.
    let total: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM job_runs WHERE agent_uuid = $1 AND copied_from IS NULL",
    )
    .bind(&agent)
    .fetch_one(&mut *conn)
    .await?;
    let runs = load_runs(
        conn,
        "WHERE agent_uuid = $1 AND copied_from IS NULL ORDER BY build_id DESC LIMIT $2 OFFSET $3",
        &[Bind::Text(&agent), Bind::Int(page_size), Bind::Int(offset)],
    )
    .await?;
    Ok((runs, total))
}

pub async fn find(
    conn: &mut Connection,
    pipeline: &str,
    pipeline_counter: i64,
    stage: &str,
    stage_counter: i64,
    job: &str,
) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT MAX(build_id) FROM job_runs WHERE pipeline_name = $1 AND pipeline_counter = $2 \
         AND stage_name = $3 AND stage_counter = $4 AND job_name = $5",
    )
    .bind(pipeline)
    .bind(pipeline_counter)
    .bind(stage)
    .bind(stage_counter)
    .bind(job)
    .fetch_one(conn)
    .await?)
}

pub async fn pending_count(conn: &mut Connection) -> Result<u64> {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM job_runs WHERE state = 'Scheduled'")
        .fetch_one(conn)
        .await?;
    Ok(count as u64)
}

pub async fn next_counter(conn: &mut Connection, pipeline: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(MAX(pipeline_counter), 0) + 1 FROM job_runs WHERE pipeline_name = $1",
    )
    .bind(pipeline)
    .fetch_one(conn)
    .await?)
}

pub async fn insert(conn: &mut Connection, run: NewRun<'_>, now: i64) -> Result<i64> {
    let build_id: i64 = sqlx::query_scalar(
        "INSERT INTO job_runs (pipeline_name, pipeline_counter, stage_name, stage_counter, job_name, \
         tasks, resources, environment, environment_variables, state, rescheduled_from, scheduled_at, \
         scheduled_by, clean_workspace, pipeline_label, timeout_seconds, pinned_agent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'Scheduled', $10, $11, $12, $13, $14, $15, \
         $16) RETURNING build_id",
    )
    .bind(run.pipeline_name)
    .bind(run.pipeline_counter)
    .bind(run.stage_name)
    .bind(run.stage_counter)
    .bind(run.job_name)
    .bind(Json(run.tasks))
    .bind(Json(run.resources))
    .bind(run.environment)
    .bind(Json(run.environment_variables))
    .bind(run.rescheduled_from)
    .bind(now)
    .bind(run.scheduled_by)
    .bind(run.clean_workspace)
    .bind(run.pipeline_label)
    .bind(run.timeout_seconds)
    .bind(run.pinned_agent.map(|a| a.to_string()))
    .fetch_one(&mut *conn)
    .await?;
    record_transition(conn, build_id, JobState::Scheduled, now).await?;
    Ok(build_id)
}

/// Copies finished run `original` into stage run `stage_counter` of its stage, result, agent
/// and state changes included; the copy names the first run it copies.
pub async fn insert_copy(conn: &mut Connection, original: i64, stage_counter: i64) -> Result<i64> {
    let build_id: i64 = sqlx::query_scalar(
        "INSERT INTO job_runs (pipeline_name, pipeline_counter, stage_name, stage_counter, job_name, \
         tasks, resources, environment, environment_variables, state, result, agent_uuid, \
         rescheduled_from, scheduled_at, completed_at, scheduled_by, cancelled_by, clean_workspace, \
         pipeline_label, timeout_seconds, copied_from, pinned_agent) \
         SELECT pipeline_name, pipeline_counter, stage_name, $1, job_name, tasks, resources, \
         environment, environment_variables, state, result, agent_uuid, rescheduled_from, \
         scheduled_at, completed_at, scheduled_by, cancelled_by, clean_workspace, pipeline_label, \
         timeout_seconds, COALESCE(copied_from, build_id), pinned_agent \
         FROM job_runs WHERE build_id = $2 AND state = 'Completed' RETURNING build_id",
    )
    .bind(stage_counter)
    .bind(original)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| Error::Conflict(format!("build {original} has not finished")))?;
    sqlx::query(
        "INSERT INTO job_state_transitions (build_id, state, at) \
         SELECT $1, state, at FROM job_state_transitions WHERE build_id = $2",
    )
    .bind(build_id)
    .bind(original)
    .execute(conn)
    .await?;
    Ok(build_id)
}

async fn record_transition(
    conn: &mut Connection,
    build_id: i64,
    state: JobState,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO job_state_transitions (build_id, state, at) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(build_id)
    .bind(state.as_str())
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn move_run(
    conn: &mut Connection,
    run: &JobRun,
    state: JobState,
    result: JobResult,
    agent: Option<Uuid>,
    now: i64,
) -> Result<bool> {
    let moved = sqlx::query(
        "UPDATE job_runs SET state = $1, result = $2, agent_uuid = COALESCE($3, agent_uuid), \
         completed_at = CASE WHEN $1 = 'Completed' THEN $4 ELSE completed_at END \
         WHERE build_id = $5 AND state = $6",
    )
    .bind(state.as_str())
    .bind(result.as_str())
    .bind(agent.map(|a| a.to_string()))
    .bind(now)
    .bind(run.build_id)
    .bind(run.state.as_str())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if moved == 0 {
        return Ok(false);
    }
    record_transition(conn, run.build_id, state, now).await?;
    Ok(true)
}

pub async fn assign(conn: &mut Connection, build_id: i64, agent: Uuid, now: i64) -> Result<bool> {
    let assigned = sqlx::query(
        "UPDATE job_runs SET state = 'Assigned', agent_uuid = $1 \
         WHERE build_id = $2 AND state = 'Scheduled'",
    )
    .bind(agent.to_string())
    .bind(build_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if assigned == 0 {
        return Ok(false);
    }
    record_transition(conn, build_id, JobState::Assigned, now).await?;
    Ok(true)
}

pub async fn request_cancel(conn: &mut Connection, build_id: i64) -> Result<()> {
    sqlx::query("UPDATE job_runs SET cancel_requested = TRUE WHERE build_id = $1")
        .bind(build_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_cancelled_by(conn: &mut Connection, build_id: i64, actor: &str) -> Result<()> {
    sqlx::query("UPDATE job_runs SET cancelled_by = $1 WHERE build_id = $2")
        .bind(actor)
        .bind(build_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn silent_holders(conn: &mut Connection, silent_since: i64) -> Result<Vec<Uuid>> {
    let holders: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT r.agent_uuid FROM job_runs r LEFT JOIN agents a ON a.uuid = r.agent_uuid \
         WHERE r.state NOT IN ('Scheduled', 'Completed') AND r.agent_uuid IS NOT NULL \
         AND (a.uuid IS NULL OR a.last_contact_at IS NULL OR a.last_contact_at < $1)",
    )
    .bind(silent_since)
    .fetch_all(conn)
    .await?;
    Ok(holders.iter().filter_map(|u| u.parse().ok()).collect())
}

pub async fn append_console(
    conn: &mut Connection,
    build_id: i64,
    start: i64,
    bytes: &[u8],
    now: i64,
) -> Result<()> {
    const STORE: &str =
        "INSERT INTO console_chunks (build_id, start_offset, bytes) VALUES ($1, $2, $3)";
    const LENGTHEN: &str =
        "UPDATE job_runs SET console_length = $4, console_updated_at = $5 WHERE build_id = $1";
    let end = start + bytes.len() as i64;
    // An append is a handful of statements, each a round trip; where the engine allows, these
    // two go as one.
    if dialect::STATEMENTS_IN_ONE_QUERY {
        sqlx::query(sqlx::AssertSqlSafe(format!("{STORE}; {LENGTHEN}")))
            .bind(build_id)
            .bind(start)
            .bind(bytes)
            .bind(end)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        return Ok(());
    }
    sqlx::query(STORE)
        .bind(build_id)
        .bind(start)
        .bind(bytes)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE job_runs SET console_length = $1, console_updated_at = $2 WHERE build_id = $3",
    )
    .bind(end)
    .bind(now)
    .bind(build_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn silent_runs(
    conn: &mut Connection,
    default_seconds: i64,
    not_before: i64,
    now: i64,
) -> Result<Vec<(i64, i64)>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT build_id, timeout FROM ( \
           SELECT r.build_id, COALESCE(r.timeout_seconds, $1) AS timeout, \
             {}(COALESCE(r.console_updated_at, 0), COALESCE(t.at, 0), $2) AS quiet_since \
           FROM job_runs r LEFT JOIN job_state_transitions t \
             ON t.build_id = r.build_id AND t.state = 'Building' \
           WHERE r.state = 'Building' AND NOT r.cancel_requested) AS building \
         WHERE timeout > 0 AND quiet_since <= $3 - timeout * 1000 ORDER BY build_id",
        dialect::GREATEST
    )))
    .bind(default_seconds)
    .bind(not_before)
    .bind(now)
    .fetch_all(conn)
    .await?)
}

pub async fn set_cancel_reason(conn: &mut Connection, build_id: i64, reason: &str) -> Result<()> {
    sqlx::query("UPDATE job_runs SET cancel_reason = $1 WHERE build_id = $2")
        .bind(reason)
        .bind(build_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn mark_console_truncated(conn: &mut Connection, build_id: i64, at: i64) -> Result<()> {
    sqlx::query("UPDATE job_runs SET console_truncated_at = $1 WHERE build_id = $2")
        .bind(at)
        .bind(build_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn read_console(
    conn: &mut Connection,
    build_id: i64,
    from: i64,
    to: i64,
) -> Result<Bytes> {
    if from >= to {
        return Ok(Bytes::new());
    }
    // The chunk holding `from` starts at the largest start at or before it: seek there through
    // the primary key instead of scanning every earlier chunk.
    let chunks: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT start_offset, bytes FROM console_chunks \
         WHERE build_id = $1 AND start_offset < $2 AND start_offset >= COALESCE( \
           (SELECT MAX(start_offset) FROM console_chunks WHERE build_id = $1 AND start_offset <= $3), 0) \
         ORDER BY start_offset",
    )
    .bind(build_id)
    .bind(to)
    .bind(from)
    .fetch_all(conn)
    .await?;
    let mut out = BytesMut::with_capacity((to - from) as usize);
    for (start, bytes) in chunks {
        let skip = (from - start).max(0) as usize;
        let keep = ((to - start) as usize).min(bytes.len());
        if skip < keep {
            out.extend_from_slice(&bytes[skip..keep]);
        }
    }
    Ok(out.freeze())
}

pub async fn latest_of_stage(
    conn: &mut Connection,
    pipeline: &str,
    pipeline_counter: i64,
    stage: &str,
    stage_counter: i64,
) -> Result<Vec<JobRun>> {
    load_runs(
        conn,
        "WHERE build_id IN (SELECT MAX(build_id) FROM job_runs WHERE pipeline_name = $1 \
         AND pipeline_counter = $2 AND stage_name = $3 AND stage_counter = $4 GROUP BY job_name) \
         ORDER BY build_id",
        &[
            Bind::Text(pipeline),
            Bind::Int(pipeline_counter),
            Bind::Text(stage),
            Bind::Int(stage_counter),
        ],
    )
    .await
}
