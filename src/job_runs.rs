//! The job runs context: a run's states (forward only, from its agent), its history per
//! agent, and its console (stored by `console.rs`).
//!
//! The SQL that reads and writes `job_runs` lives here; the scheduler creates and assigns runs
//! through the crate-internal functions at the bottom.

use std::collections::BTreeMap;

use bytes::Bytes;
use sqlx::SqliteConnection;
use sqlx::types::Json;
use uuid::Uuid;

use crate::agents::{self, Agents};
use crate::console;
use crate::db::{Db, WriteTx, now_millis};
use crate::domain::job_run::{Append, JobResult, JobRun, JobState, Requirements, Task, Transition};
use crate::error::{Error, Result};
use crate::events::{DomainEvent, Topic};

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
    rescheduled_from: Option<i64>,
    scheduled_at: i64,
    completed_at: Option<i64>,
}

const RUN_COLUMNS: &str = "build_id, pipeline_name, pipeline_counter, stage_name, stage_counter, \
     job_name, tasks, resources, environment, environment_variables, state, result, agent_uuid, \
     cancel_requested, console_length, rescheduled_from, scheduled_at, completed_at";

fn corrupt(what: String) -> Error {
    Error::Database(sqlx::Error::Decode(what.into()))
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
            agent_uuid: self
                .agent_uuid
                .map(|u| u.parse())
                .transpose()
                .map_err(|e: uuid::Error| corrupt(e.to_string()))?,
            state: self.state.parse().map_err(corrupt)?,
            result: self.result.parse().map_err(corrupt)?,
            console_length: self.console_length,
            resources: self.resources.0,
            environment: self.environment,
            tasks: self.tasks.0,
            cancel_requested: self.cancel_requested,
            rescheduled_from: self.rescheduled_from,
            scheduled_at: self.scheduled_at,
            completed_at: self.completed_at,
            job_state_transitions: transitions,
            environment_variables: self.environment_variables.0,
        })
    }
}

/// Loads runs by a `WHERE …` clause, with their transitions, in the clause's order.
async fn load_runs(
    conn: &mut SqliteConnection,
    clause: &str,
    binds: &[i64],
    text: Option<&str>,
) -> Result<Vec<JobRun>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM job_runs {clause}");
    let mut query = sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(sql));
    if let Some(text) = text {
        query = query.bind(text.to_string());
    }
    for bind in binds {
        query = query.bind(*bind);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.build_id).collect();
    let transitions: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT build_id, state, at FROM job_state_transitions \
         WHERE build_id IN (SELECT value FROM json_each(?)) ORDER BY at, rowid",
    )
    .bind(Json(&ids))
    .fetch_all(&mut *conn)
    .await?;
    let mut by_run: BTreeMap<i64, Vec<Transition>> = BTreeMap::new();
    for (id, state, at) in transitions {
        by_run.entry(id).or_default().push(Transition {
            state: state.parse().map_err(corrupt)?,
            state_change_time: at,
        });
    }
    rows.into_iter()
        .map(|row| {
            let transitions = by_run.remove(&row.build_id).unwrap_or_default();
            row.into_run(transitions)
        })
        .collect()
}

pub(crate) async fn fetch_run(
    conn: &mut SqliteConnection,
    build_id: i64,
) -> Result<Option<JobRun>> {
    Ok(load_runs(conn, "WHERE build_id = ?", &[build_id], None)
        .await?
        .pop())
}

pub(crate) async fn fetch_run_or_404(conn: &mut SqliteConnection, build_id: i64) -> Result<JobRun> {
    fetch_run(conn, build_id)
        .await?
        .ok_or_else(|| not_found(build_id))
}

/// The queue as matching sees it, oldest first: a poll for work reads only what matching
/// needs of each Scheduled run, not whole runs.
pub(crate) async fn fetch_queued_jobs(
    conn: &mut SqliteConnection,
) -> Result<Vec<(i64, Requirements)>> {
    let rows: Vec<(i64, Json<Vec<String>>, Option<String>)> = sqlx::query_as(
        "SELECT build_id, resources, environment FROM job_runs WHERE state = 'Scheduled' \
         ORDER BY build_id",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(build_id, resources, environment)| {
            let needs = Requirements {
                resources: resources.0,
                environment,
            };
            (build_id, needs)
        })
        .collect())
}

/// Runs in `state` Scheduled, oldest first: the queue.
pub(crate) async fn fetch_queue(conn: &mut SqliteConnection) -> Result<Vec<JobRun>> {
    load_runs(
        conn,
        "WHERE state = 'Scheduled' ORDER BY build_id",
        &[],
        None,
    )
    .await
}

/// The runs an agent holds that are not Completed.
pub(crate) async fn fetch_active_runs_of(
    conn: &mut SqliteConnection,
    agent: Uuid,
) -> Result<Vec<JobRun>> {
    let text = agent.to_string();
    load_runs(
        conn,
        "WHERE agent_uuid = ? AND state != 'Completed' ORDER BY build_id",
        &[],
        Some(&text),
    )
    .await
}

pub(crate) async fn pending_count(conn: &mut SqliteConnection) -> Result<u64> {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM job_runs WHERE state = 'Scheduled'")
        .fetch_one(conn)
        .await?;
    Ok(count as u64)
}

/// What a new run needs; the scheduler fills it in.
pub(crate) struct NewRun<'a> {
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
}

pub(crate) async fn insert_run(conn: &mut SqliteConnection, run: NewRun<'_>) -> Result<i64> {
    let now = now_millis();
    let build_id: i64 = sqlx::query_scalar(
        "INSERT INTO job_runs (pipeline_name, pipeline_counter, stage_name, stage_counter, job_name, \
         tasks, resources, environment, environment_variables, state, rescheduled_from, scheduled_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'Scheduled', ?, ?) RETURNING build_id",
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
    .fetch_one(&mut *conn)
    .await?;
    record_transition(conn, build_id, JobState::Scheduled, now).await?;
    Ok(build_id)
}

async fn record_transition(
    conn: &mut SqliteConnection,
    build_id: i64,
    state: JobState,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT OR IGNORE INTO job_state_transitions (build_id, state, at) VALUES (?, ?, ?)",
    )
    .bind(build_id)
    .bind(state.as_str())
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves `run` on to `state` (and `result`), recording the transition; `agent` is set when
/// given. A compare-and-set on the state `run` was read in: if another write moved it
/// meanwhile, nothing changes and the answer is a conflict.
pub(crate) async fn move_run(
    conn: &mut SqliteConnection,
    run: &JobRun,
    state: JobState,
    result: JobResult,
    agent: Option<Uuid>,
) -> Result<()> {
    let now = now_millis();
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
        return Err(Error::Conflict(format!(
            "build {} changed meanwhile; it is no longer {}",
            run.build_id, run.state
        )));
    }
    record_transition(conn, run.build_id, state, now).await
}

/// Hands the Scheduled run `build_id` to `agent`: a compare-and-set, false if it is no longer
/// Scheduled (another writer took or cancelled it).
pub(crate) async fn assign_run(
    conn: &mut SqliteConnection,
    build_id: i64,
    agent: Uuid,
) -> Result<bool> {
    let now = now_millis();
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

pub(crate) async fn request_cancel(conn: &mut SqliteConnection, build_id: i64) -> Result<()> {
    sqlx::query("UPDATE job_runs SET cancel_requested = 1 WHERE build_id = ?")
        .bind(build_id)
        .execute(conn)
        .await?;
    Ok(())
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
}

impl JobRuns {
    pub fn new(db: Db, agents: Agents) -> Self {
        JobRuns { db, agents }
    }

    pub async fn get(&self, build_id: i64) -> Result<JobRun> {
        let mut conn = self.db.read.acquire().await?;
        fetch_run_or_404(&mut conn, build_id).await
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
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(build_id) FROM job_runs WHERE pipeline_name = ? AND pipeline_counter = ? \
             AND stage_name = ? AND stage_counter = ? AND job_name = ?",
        )
        .bind(pipeline)
        .bind(pipeline_counter)
        .bind(stage)
        .bind(stage_counter)
        .bind(job)
        .fetch_one(&self.db.read)
        .await?;
        Ok(id)
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
        let mut conn = self.db.read.acquire().await?;
        let text = agent.to_string();
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM job_runs WHERE agent_uuid = ?")
            .bind(&text)
            .fetch_one(&mut *conn)
            .await?;
        let runs = load_runs(
            &mut conn,
            "WHERE agent_uuid = ? ORDER BY build_id DESC LIMIT ? OFFSET ?",
            &[page_size, offset],
            Some(&text),
        )
        .await?;
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
    ) -> Result<i64> {
        let mut tx = self.db.begin().await?;
        let run = fetch_run_or_404(&mut tx, build_id).await?;
        let end = offset + bytes.len() as i64;
        let new = match run.append(agent, offset, bytes.len())? {
            Append::Stored => return Ok(run.console_length),
            Append::Gap { stored } => return Err(Error::ConsoleGap { stored }),
            Append::From(skip) => bytes.slice(skip..),
        };
        let stored = run.console_length;
        console::append(&mut tx, build_id, stored, &new).await?;
        agents::touch(&mut tx, agent).await?;
        let event = DomainEvent::ConsoleAppend {
            build_id,
            start: stored,
            end: stored + new.len() as i64,
        };
        tx.publish(Topic::AgentJobRunConsole(build_id), event);
        tx.commit().await?;
        Ok(end)
    }

    /// The stored log from `from` on, and the log's whole length.
    /// At most `max` bytes of the stored log from `from`, the run (for its state), and the
    /// log's length: bounded reads for streams that walk a large log window by window.
    pub async fn read_console_window(
        &self,
        build_id: i64,
        from: i64,
        max: i64,
    ) -> Result<(Bytes, JobRun)> {
        let mut conn = self.db.read.acquire().await?;
        let run = fetch_run_or_404(&mut conn, build_id).await?;
        let from = from.clamp(0, run.console_length);
        let to = from.saturating_add(max.max(0)).min(run.console_length);
        let bytes = console::read(&mut conn, build_id, from, to).await?;
        Ok((bytes, run))
    }

    pub async fn read_console(&self, build_id: i64, from: i64) -> Result<(Bytes, i64)> {
        let mut conn = self.db.read.acquire().await?;
        let run = fetch_run_or_404(&mut conn, build_id).await?;
        let bytes = console::read(
            &mut conn,
            build_id,
            from.clamp(0, run.console_length),
            run.console_length,
        )
        .await?;
        Ok((bytes, run.console_length))
    }
}

/// A run just handed to its agent: `run_created` on the agent's run list, `run_updated` on
/// its console.
pub(crate) fn publish_assigned(tx: &mut WriteTx, run: &JobRun) {
    let build_id = run.build_id;
    if let Some(agent) = run.agent_uuid {
        tx.publish(
            Topic::AgentJobRuns(agent),
            DomainEvent::RunCreated { build_id },
        );
    }
    tx.publish(
        Topic::AgentJobRunConsole(build_id),
        DomainEvent::RunUpdated { build_id },
    );
}

/// `run_updated` where the run's watchers listen: its agent's run list and its console.
pub(crate) fn publish_run(tx: &mut WriteTx, run: &JobRun) {
    let build_id = run.build_id;
    if let Some(agent) = run.agent_uuid {
        tx.publish(
            Topic::AgentJobRuns(agent),
            DomainEvent::RunUpdated { build_id },
        );
    }
    tx.publish(
        Topic::AgentJobRunConsole(build_id),
        DomainEvent::RunUpdated { build_id },
    );
}
