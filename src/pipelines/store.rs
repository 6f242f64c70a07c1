//! The pipelines store: what the pipelines context asks of the database, whichever backend it
//! is. Each function hands its connection to the same-named function of the backend's module
//! (`sqlite.rs`).

use std::collections::BTreeMap;

use super::{postgres, sqlite};
use crate::db::{Conn, backend};
use crate::domain::job_run::JobResult;
use crate::domain::material::{MaterialRevision, UpstreamRevision};
use crate::domain::pipeline::{JobFact, PipelineInstance, StageRun};
use crate::domain::pipeline_config::PipelineConfig;
use crate::error::Result;

pub struct NewInstance<'a> {
    pub pipeline_name: &'a str,
    pub counter: i64,
    pub label: &'a str,
    pub plan: &'a PipelineConfig,
    pub triggered_by: &'a str,
    pub environment: Option<&'a str>,
    pub environment_variables: &'a BTreeMap<String, String>,
    pub trigger_variables: &'a BTreeMap<String, String>,
    pub now: i64,
    pub material_revisions: &'a [MaterialRevision],
    pub upstream_revisions: &'a [UpstreamRevision],
}

/// A stage run's address.
#[derive(Debug, Clone, Copy)]
pub struct StageKey<'a> {
    pub pipeline: &'a str,
    pub pipeline_counter: i64,
    pub stage: &'a str,
    pub stage_counter: i64,
}

/// What a pipeline is apart from its instances.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineState {
    pub paused: bool,
    pub pause_cause: Option<String>,
    pub paused_by: Option<String>,
    pub paused_at: Option<i64>,
    /// The instance holding the pipeline's lock.
    pub locked_by: Option<i64>,
}

pub async fn next_counter(conn: Conn<'_>, pipeline: &str) -> Result<i64> {
    backend!(conn, next_counter(pipeline))
}

pub async fn insert_instance(conn: Conn<'_>, new: NewInstance<'_>) -> Result<()> {
    backend!(conn, insert_instance(new))
}

pub async fn instance(
    conn: Conn<'_>,
    pipeline: &str,
    counter: i64,
) -> Result<Option<PipelineInstance>> {
    backend!(conn, instance(pipeline, counter))
}

/// Every pipeline's newest instance.
pub async fn latest_instances(conn: Conn<'_>) -> Result<Vec<PipelineInstance>> {
    backend!(conn, latest_instances())
}

/// A page of a pipeline's instances, newest first, and how many it has.
pub async fn history(
    conn: Conn<'_>,
    pipeline: &str,
    offset: i64,
    page_size: i64,
) -> Result<(Vec<PipelineInstance>, i64)> {
    backend!(conn, history(pipeline, offset, page_size))
}

pub async fn stage_runs_of(
    conn: Conn<'_>,
    instances: &[(String, i64)],
) -> Result<Vec<((String, i64), StageRun)>> {
    backend!(conn, stage_runs_of(instances))
}

pub async fn job_facts_of(
    conn: Conn<'_>,
    instances: &[(String, i64)],
) -> Result<Vec<((String, i64), JobFact)>> {
    backend!(conn, job_facts_of(instances))
}

pub async fn insert_stage_run(
    conn: Conn<'_>,
    key: &StageKey<'_>,
    triggered_by: &str,
    now: i64,
) -> Result<()> {
    backend!(conn, insert_stage_run(key, triggered_by, now))
}

pub async fn stage_run(conn: Conn<'_>, key: &StageKey<'_>) -> Result<Option<StageRun>> {
    backend!(conn, stage_run(key))
}

pub async fn finish_stage_run(
    conn: Conn<'_>,
    key: &StageKey<'_>,
    result: JobResult,
    now: i64,
) -> Result<bool> {
    backend!(conn, finish_stage_run(key, result, now))
}

pub async fn set_stage_cancelled_by(conn: Conn<'_>, key: &StageKey<'_>, actor: &str) -> Result<()> {
    backend!(conn, set_stage_cancelled_by(key, actor))
}

pub async fn state(conn: Conn<'_>, pipeline: &str) -> Result<PipelineState> {
    backend!(conn, state(pipeline))
}

pub async fn states(conn: Conn<'_>) -> Result<Vec<(String, PipelineState)>> {
    backend!(conn, states())
}

/// Pauses (`Some((cause, by, at))`) or unpauses a pipeline.
pub async fn set_paused(
    conn: Conn<'_>,
    pipeline: &str,
    pause: Option<(&str, &str, i64)>,
) -> Result<()> {
    backend!(conn, set_paused(pipeline, pause))
}

pub async fn set_locked_by(conn: Conn<'_>, pipeline: &str, counter: Option<i64>) -> Result<()> {
    backend!(conn, set_locked_by(pipeline, counter))
}

/// Every stage's newest finished run, keyed by (pipeline, counter), with its instance's label.
pub async fn last_finished_stage_runs(
    conn: Conn<'_>,
) -> Result<Vec<((String, i64), String, StageRun)>> {
    backend!(conn, last_finished_stage_runs())
}

/// How many instances there are by result (`Building`, `Passed`, `Failed`, `Cancelled`,
/// `Waiting`); results no instance has are left out.
pub async fn instance_results(conn: Conn<'_>) -> Result<Vec<(String, i64)>> {
    backend!(conn, instance_results())
}
