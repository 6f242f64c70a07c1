//! The pipelines store's statements, the same on SQLite and PostgreSQL (`sqlite.rs`, `postgres.rs`
//! compile this file once each): every statement that touches `pipeline_instances`, `stage_runs`
//! and `pipeline_states`, and the reads of `job_runs` that stage statuses need. Binds are `$1, $2,
//! …` in order of first appearance, as in the other stores.

use std::collections::BTreeMap;

use super::{Connection, dialect};
use sqlx::types::Json;

use crate::domain::job_run::JobResult;
use crate::domain::material::{MaterialRevision, UpstreamRevision};
use crate::domain::pipeline::{JobFact, PipelineInstance, StageRun};
use crate::domain::pipeline_config::PipelineConfig;
use crate::error::{Error, Result};
use crate::pipelines::store::{NewInstance, PipelineState, StageKey};

fn corrupt(what: String) -> Error {
    Error::Database(sqlx::Error::Decode(what.into()))
}

#[derive(sqlx::FromRow)]
struct InstanceRow {
    pipeline_name: String,
    counter: i64,
    label: String,
    plan: Json<PipelineConfig>,
    triggered_by: String,
    environment: Option<String>,
    environment_variables: Json<BTreeMap<String, String>>,
    trigger_variables: Json<BTreeMap<String, String>>,
    created_at: i64,
    material_revisions: Json<Vec<MaterialRevision>>,
    upstream_revisions: Json<Vec<UpstreamRevision>>,
}

impl From<InstanceRow> for PipelineInstance {
    fn from(row: InstanceRow) -> Self {
        PipelineInstance {
            pipeline_name: row.pipeline_name,
            counter: row.counter,
            label: row.label,
            plan: row.plan.0,
            triggered_by: row.triggered_by,
            environment: row.environment,
            environment_variables: row.environment_variables.0,
            trigger_variables: row.trigger_variables.0,
            created_at: row.created_at,
            material_revisions: row.material_revisions.0,
            upstream_revisions: row.upstream_revisions.0,
        }
    }
}

const INSTANCE_COLUMNS: &str = "pipeline_name, counter, label, plan, triggered_by, environment, \
     environment_variables, trigger_variables, created_at, material_revisions, \
     upstream_revisions";

#[derive(sqlx::FromRow)]
struct StageRow {
    pipeline_name: String,
    pipeline_counter: i64,
    stage_name: String,
    stage_counter: i64,
    triggered_by: String,
    result: Option<String>,
    cancelled_by: Option<String>,
    scheduled_at: i64,
    completed_at: Option<i64>,
}

impl StageRow {
    fn into_run(self) -> Result<((String, i64), StageRun)> {
        let result = self
            .result
            .map(|r| r.parse::<JobResult>())
            .transpose()
            .map_err(corrupt)?;
        Ok((
            (self.pipeline_name, self.pipeline_counter),
            StageRun {
                stage_name: self.stage_name,
                stage_counter: self.stage_counter,
                triggered_by: self.triggered_by,
                result,
                cancelled_by: self.cancelled_by,
                scheduled_at: self.scheduled_at,
                completed_at: self.completed_at,
            },
        ))
    }
}

const STAGE_COLUMNS: &str = "s.pipeline_name, s.pipeline_counter, s.stage_name, s.stage_counter, \
     s.triggered_by, s.result, s.cancelled_by, s.scheduled_at, s.completed_at";

pub async fn next_counter(conn: &mut Connection, pipeline: &str) -> Result<i64> {
    // Ad-hoc jobs named like the pipeline before it was configured took counters too.
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT {}(COALESCE((SELECT MAX(counter) FROM pipeline_instances WHERE pipeline_name = $1), 0), \
         COALESCE((SELECT MAX(pipeline_counter) FROM job_runs WHERE pipeline_name = $1), 0)) + 1",
        dialect::GREATEST
    )))
    .bind(pipeline)
    .fetch_one(conn)
    .await?)
}

pub async fn insert_instance(conn: &mut Connection, new: NewInstance<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO pipeline_instances (pipeline_name, counter, label, plan, triggered_by, \
         environment, environment_variables, trigger_variables, created_at, material_revisions, \
         upstream_revisions) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(new.pipeline_name)
    .bind(new.counter)
    .bind(new.label)
    .bind(Json(new.plan))
    .bind(new.triggered_by)
    .bind(new.environment)
    .bind(Json(new.environment_variables))
    .bind(Json(new.trigger_variables))
    .bind(new.now)
    .bind(Json(new.material_revisions))
    .bind(Json(new.upstream_revisions))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn instance(
    conn: &mut Connection,
    pipeline: &str,
    counter: i64,
) -> Result<Option<PipelineInstance>> {
    let sql = format!(
        "SELECT {INSTANCE_COLUMNS} FROM pipeline_instances WHERE pipeline_name = $1 AND counter = $2"
    );
    Ok(sqlx::query_as::<_, InstanceRow>(sqlx::AssertSqlSafe(sql))
        .bind(pipeline)
        .bind(counter)
        .fetch_optional(conn)
        .await?
        .map(PipelineInstance::from))
}

pub async fn latest_instances(conn: &mut Connection) -> Result<Vec<PipelineInstance>> {
    let sql = format!(
        "SELECT {INSTANCE_COLUMNS} FROM pipeline_instances i WHERE counter = \
         (SELECT MAX(counter) FROM pipeline_instances WHERE pipeline_name = i.pipeline_name)"
    );
    Ok(sqlx::query_as::<_, InstanceRow>(sqlx::AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(PipelineInstance::from)
        .collect())
}

pub async fn history(
    conn: &mut Connection,
    pipeline: &str,
    offset: i64,
    page_size: i64,
) -> Result<(Vec<PipelineInstance>, i64)> {
    let total: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM pipeline_instances WHERE pipeline_name = $1")
            .bind(pipeline)
            .fetch_one(&mut *conn)
            .await?;
    let sql = format!(
        "SELECT {INSTANCE_COLUMNS} FROM pipeline_instances WHERE pipeline_name = $1 \
         ORDER BY counter DESC LIMIT $2 OFFSET $3"
    );
    let instances = sqlx::query_as::<_, InstanceRow>(sqlx::AssertSqlSafe(sql))
        .bind(pipeline)
        .bind(page_size)
        .bind(offset)
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(PipelineInstance::from)
        .collect();
    Ok((instances, total))
}

/// The stage runs of the given instances, keyed by (pipeline, counter).
pub async fn stage_runs_of(
    conn: &mut Connection,
    instances: &[(String, i64)],
) -> Result<Vec<((String, i64), StageRun)>> {
    if instances.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {STAGE_COLUMNS} FROM stage_runs s JOIN {} w \
         ON s.pipeline_name = w.name AND s.pipeline_counter = w.counter \
         ORDER BY s.pipeline_name, s.pipeline_counter, s.scheduled_at, s.stage_counter",
        dialect::json_pairs("$1")
    );
    sqlx::query_as::<_, StageRow>(sqlx::AssertSqlSafe(sql))
        .bind(Json(instances))
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(StageRow::into_run)
        .collect()
}

/// The latest run of each job of the given instances' stage runs, keyed by (pipeline,
/// counter).
pub async fn job_facts_of(
    conn: &mut Connection,
    instances: &[(String, i64)],
) -> Result<Vec<((String, i64), JobFact)>> {
    if instances.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, i64, String, i64, String, String, String)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT j.pipeline_name, j.pipeline_counter, j.stage_name, j.stage_counter, \
             j.job_name, j.state, j.result FROM job_runs j WHERE j.build_id IN ( \
               SELECT MAX(r.build_id) FROM job_runs r JOIN {} w \
               ON r.pipeline_name = w.name AND r.pipeline_counter = w.counter \
               GROUP BY r.pipeline_name, r.pipeline_counter, r.stage_name, r.stage_counter, \
               r.job_name)",
            dialect::json_pairs("$1")
        )))
        .bind(Json(instances))
        .fetch_all(conn)
        .await?;
    rows.into_iter()
        .map(|(p, pc, stage, sc, job, state, result)| {
            Ok((
                (p, pc),
                JobFact {
                    stage_name: stage,
                    stage_counter: sc,
                    job_name: job,
                    state: state.parse().map_err(corrupt)?,
                    result: result.parse().map_err(corrupt)?,
                },
            ))
        })
        .collect()
}

pub async fn insert_stage_run(
    conn: &mut Connection,
    key: &StageKey<'_>,
    triggered_by: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO stage_runs (pipeline_name, pipeline_counter, stage_name, stage_counter, \
         triggered_by, scheduled_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(key.pipeline)
    .bind(key.pipeline_counter)
    .bind(key.stage)
    .bind(key.stage_counter)
    .bind(triggered_by)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn stage_run(conn: &mut Connection, key: &StageKey<'_>) -> Result<Option<StageRun>> {
    let sql = format!(
        "SELECT {STAGE_COLUMNS} FROM stage_runs s WHERE s.pipeline_name = $1 \
         AND s.pipeline_counter = $2 AND s.stage_name = $3 AND s.stage_counter = $4"
    );
    sqlx::query_as::<_, StageRow>(sqlx::AssertSqlSafe(sql))
        .bind(key.pipeline)
        .bind(key.pipeline_counter)
        .bind(key.stage)
        .bind(key.stage_counter)
        .fetch_optional(conn)
        .await?
        .map(|row| row.into_run().map(|(_, run)| run))
        .transpose()
}

/// Closes a stage run with its result: a compare-and-set on it being open.
pub async fn finish_stage_run(
    conn: &mut Connection,
    key: &StageKey<'_>,
    result: JobResult,
    now: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE stage_runs SET result = $1, completed_at = $2 WHERE pipeline_name = $3 \
         AND pipeline_counter = $4 AND stage_name = $5 AND stage_counter = $6 AND result IS NULL",
    )
    .bind(result.as_str())
    .bind(now)
    .bind(key.pipeline)
    .bind(key.pipeline_counter)
    .bind(key.stage)
    .bind(key.stage_counter)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn set_stage_cancelled_by(
    conn: &mut Connection,
    key: &StageKey<'_>,
    actor: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE stage_runs SET cancelled_by = $1 WHERE pipeline_name = $2 \
         AND pipeline_counter = $3 AND stage_name = $4 AND stage_counter = $5",
    )
    .bind(actor)
    .bind(key.pipeline)
    .bind(key.pipeline_counter)
    .bind(key.stage)
    .bind(key.stage_counter)
    .execute(conn)
    .await?;
    Ok(())
}

type StateRow = (
    String,
    bool,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

fn into_state(row: StateRow) -> (String, PipelineState) {
    let (name, paused, pause_cause, paused_by, paused_at, locked_by) = row;
    (
        name,
        PipelineState {
            paused,
            pause_cause,
            paused_by,
            paused_at,
            locked_by,
        },
    )
}

pub async fn state(conn: &mut Connection, pipeline: &str) -> Result<PipelineState> {
    let row: Option<StateRow> = sqlx::query_as(
        "SELECT pipeline_name, paused, pause_cause, paused_by, paused_at, locked_by \
         FROM pipeline_states WHERE pipeline_name = $1",
    )
    .bind(pipeline)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| into_state(r).1).unwrap_or_default())
}

pub async fn states(conn: &mut Connection) -> Result<Vec<(String, PipelineState)>> {
    let rows: Vec<StateRow> = sqlx::query_as(
        "SELECT pipeline_name, paused, pause_cause, paused_by, paused_at, locked_by \
         FROM pipeline_states",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(into_state).collect())
}

pub async fn set_paused(
    conn: &mut Connection,
    pipeline: &str,
    pause: Option<(&str, &str, i64)>,
) -> Result<()> {
    let (paused, cause, by, at) = match pause {
        Some((cause, by, at)) => (true, Some(cause), Some(by), Some(at)),
        None => (false, None, None, None),
    };
    sqlx::query(
        "INSERT INTO pipeline_states (pipeline_name, paused, pause_cause, paused_by, paused_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (pipeline_name) DO UPDATE SET \
         paused = excluded.paused, pause_cause = excluded.pause_cause, \
         paused_by = excluded.paused_by, paused_at = excluded.paused_at",
    )
    .bind(pipeline)
    .bind(paused)
    .bind(cause)
    .bind(by)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_locked_by(
    conn: &mut Connection,
    pipeline: &str,
    counter: Option<i64>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO pipeline_states (pipeline_name, locked_by) VALUES ($1, $2) \
         ON CONFLICT (pipeline_name) DO UPDATE SET locked_by = excluded.locked_by",
    )
    .bind(pipeline)
    .bind(counter)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every stage's newest finished run, with its instance's label.
pub async fn last_finished_stage_runs(
    conn: &mut Connection,
) -> Result<Vec<((String, i64), String, StageRun)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        stage: StageRow,
        label: String,
    }
    let sql = format!(
        "SELECT {STAGE_COLUMNS}, i.label FROM stage_runs s JOIN pipeline_instances i \
         ON i.pipeline_name = s.pipeline_name AND i.counter = s.pipeline_counter \
         WHERE s.result IS NOT NULL AND s.rowid = (SELECT t.rowid FROM stage_runs t \
           WHERE t.pipeline_name = s.pipeline_name AND t.stage_name = s.stage_name \
           AND t.result IS NOT NULL ORDER BY t.completed_at DESC, t.pipeline_counter DESC, \
           t.stage_counter DESC LIMIT 1)"
    );
    sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(|row| {
            let (key, run) = row.stage.into_run()?;
            Ok((key, row.label, run))
        })
        .collect()
}

pub async fn instance_results(conn: &mut Connection) -> Result<Vec<(String, i64)>> {
    // Per instance, the newest run of each stage that ran: one still running makes it
    // Building; else a failed one Failed, a cancelled one Cancelled; every planned stage
    // passed makes it Passed; else it waits (a manual stage not approved yet).
    let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH latest AS ( \
           SELECT s.pipeline_name, s.pipeline_counter, s.result FROM stage_runs s \
           WHERE s.stage_counter = (SELECT MAX(t.stage_counter) FROM stage_runs t \
             WHERE t.pipeline_name = s.pipeline_name AND t.pipeline_counter = s.pipeline_counter \
             AND t.stage_name = s.stage_name)), \
         per_instance AS ( \
           SELECT COUNT(l.pipeline_name) AS ran, \
             COALESCE(SUM(CASE WHEN l.pipeline_name IS NOT NULL AND l.result IS NULL \
               THEN 1 ELSE 0 END), 0) AS running, \
             COALESCE(SUM(CASE WHEN l.result = 'Failed' THEN 1 ELSE 0 END), 0) AS failed, \
             COALESCE(SUM(CASE WHEN l.result = 'Cancelled' THEN 1 ELSE 0 END), 0) AS cancelled, \
             {} AS planned \
           FROM pipeline_instances i LEFT JOIN latest l \
             ON l.pipeline_name = i.pipeline_name AND l.pipeline_counter = i.counter \
           GROUP BY i.pipeline_name, i.counter) \
         SELECT CASE WHEN running > 0 THEN 'Building' WHEN failed > 0 THEN 'Failed' \
           WHEN cancelled > 0 THEN 'Cancelled' WHEN ran >= planned THEN 'Passed' \
           ELSE 'Waiting' END AS result, COUNT(*) FROM per_instance GROUP BY result",
        dialect::json_array_length("i.plan", "stages")
    )))
    .fetch_all(conn)
    .await?;
    Ok(rows)
}
