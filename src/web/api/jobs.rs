//! Jobs and builds: scheduling ad-hoc jobs, reading a run and its console, cancelling, the
//! queue.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, name_list};
use crate::AppState;
use crate::error::{Error, Result};
use crate::job_runs::{JobRun, Task};
use crate::scheduler::NewJob;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs/schedule", post(schedule))
        .route("/scheduler", get(scheduler))
        .route("/builds/{build_id}", get(show))
        .route("/builds/{build_id}/cancel", post(cancel))
        .route("/builds/{build_id}/console", get(console))
}

/// A build id from a path; one that does not parse names no build.
pub fn build_id(raw: &str) -> Result<i64> {
    raw.parse()
        .map_err(|_| Error::NotFound(format!("no build with id {raw}")))
}

#[derive(Deserialize)]
struct ScheduleBody {
    pipeline_name: String,
    stage_name: String,
    job_name: String,
    tasks: Vec<Task>,
    #[serde(default, deserialize_with = "name_list")]
    resources: Option<Vec<String>>,
    environment: Option<String>,
    #[serde(default)]
    environment_variables: BTreeMap<String, String>,
}

async fn schedule(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ScheduleBody>,
) -> Result<(StatusCode, Json<JobRun>)> {
    let job = NewJob {
        pipeline_name: body.pipeline_name,
        stage_name: body.stage_name,
        job_name: body.job_name,
        tasks: body.tasks,
        resources: body.resources.unwrap_or_default(),
        environment: body.environment,
        environment_variables: body.environment_variables,
    };
    Ok((
        StatusCode::CREATED,
        Json(state.scheduler.schedule(job).await?),
    ))
}

async fn scheduler(State(state): State<AppState>) -> Result<Json<Value>> {
    let jobs = state.scheduler.queue().await?;
    Ok(Json(json!({ "pending_count": jobs.len(), "jobs": jobs })))
}

async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobRun>> {
    Ok(Json(state.job_runs.get(build_id(&id)?).await?))
}

async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<JobRun>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(state.scheduler.cancel(build_id(&id)?).await?),
    ))
}

#[derive(Deserialize)]
struct ConsoleQuery {
    from: Option<i64>,
}

/// The raw log from `from` on, exactly as stored.
async fn console(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<ConsoleQuery>,
) -> Result<Response> {
    let (bytes, length) = state
        .job_runs
        .read_console(build_id(&id)?, query.from.unwrap_or(0))
        .await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                header::HeaderName::from_static("x-console-length"),
                length.to_string(),
            ),
        ],
        bytes,
    )
        .into_response())
}
