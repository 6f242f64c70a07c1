//! Jobs and builds: scheduling ad-hoc jobs, reading a run and its console, cancelling, the
//! queue.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, ApiQuery, name_list};
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

/// How much of a log one read holds while streaming it out.
const DOWNLOAD_WINDOW: i64 = 1024 * 1024;

/// The raw log from `from` on, exactly as stored, streamed window by window (a large log is
/// never held whole). `X-Console-Length` is the length when the request came.
async fn console(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ConsoleQuery>,
) -> Result<Response> {
    let build_id = build_id(&id)?;
    let run = state.job_runs.get(build_id).await?;
    let length = run.console_length;
    let mut pos = query.from.unwrap_or(0).clamp(0, length);
    let job_runs = state.job_runs.clone();
    let body = async_stream::stream! {
        while pos < length {
            match job_runs.read_console_window(build_id, pos, (length - pos).min(DOWNLOAD_WINDOW)).await {
                Ok((bytes, _)) if !bytes.is_empty() => {
                    pos += bytes.len() as i64;
                    yield Ok::<_, std::io::Error>(bytes);
                }
                Ok(_) => break,
                Err(error) => {
                    yield Err(std::io::Error::other(error.to_string()));
                    break;
                }
            }
        }
    };
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
        axum::body::Body::from_stream(body),
    )
        .into_response())
}
