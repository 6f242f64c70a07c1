//! Jobs and builds: scheduling ad-hoc jobs, reading a run and its console, cancelling, the
//! queue.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ApiJson, ApiQuery, name_list};
use crate::AppState;
use crate::domain::agent::why_waiting;
use crate::domain::job_run::{JobResult, JobRun, JobState, NewJob, Task, Transition};
use crate::error::{Error, Result};
use crate::web::auth::Credential::{Admin, User};
use crate::web::auth::CurrentUser;
use crate::web::format_time;
use crate::web::routes::Routes;

/// A run as the API shows it (and `/api/events` sends it): times in RFC 3339, and without the
/// variables meant for its agent only.
pub struct RunJson(pub JobRun);

impl Serialize for RunJson {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let r = &self.0;
        RunShape {
            build_id: r.build_id,
            pipeline_name: &r.pipeline_name,
            pipeline_counter: r.pipeline_counter,
            stage_name: &r.stage_name,
            stage_counter: r.stage_counter,
            job_name: &r.job_name,
            agent_uuid: r.agent_uuid,
            state: r.state,
            result: r.result,
            console_length: r.console_length,
            resources: &r.resources,
            environment: r.environment.as_deref(),
            tasks: &r.tasks,
            cancel_requested: r.cancel_requested,
            rescheduled_from: r.rescheduled_from,
            scheduled_by: r.scheduled_by.as_deref(),
            cancelled_by: r.cancelled_by.as_deref(),
            clean_workspace: r.clean_workspace,
            pipeline_label: r.pipeline_label.as_deref(),
            timeout_seconds: r.timeout_seconds,
            copied_from: r.copied_from,
            pinned_agent: r.pinned_agent,
            scheduled_at: format_time(r.scheduled_at),
            completed_at: r.completed_at.map(format_time),
            job_state_transitions: TransitionsJson(&r.job_state_transitions),
        }
        .serialize(s)
    }
}

#[derive(Serialize)]
struct RunShape<'a> {
    build_id: i64,
    pipeline_name: &'a str,
    pipeline_counter: i64,
    stage_name: &'a str,
    stage_counter: i64,
    job_name: &'a str,
    agent_uuid: Option<Uuid>,
    state: JobState,
    result: JobResult,
    console_length: i64,
    resources: &'a [String],
    environment: Option<&'a str>,
    tasks: &'a [Task],
    cancel_requested: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    rescheduled_from: Option<i64>,
    scheduled_by: Option<&'a str>,
    cancelled_by: Option<&'a str>,
    clean_workspace: bool,
    pipeline_label: Option<&'a str>,
    timeout_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    copied_from: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pinned_agent: Option<Uuid>,
    scheduled_at: String,
    completed_at: Option<String>,
    job_state_transitions: TransitionsJson<'a>,
}

/// A run's transitions as GoCD lists them: `{state, state_change_time}`, times in RFC 3339.
pub struct TransitionsJson<'a>(pub &'a [Transition]);

impl Serialize for TransitionsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Entry {
            state: JobState,
            state_change_time: String,
        }
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for t in self.0 {
            seq.serialize_element(&Entry {
                state: t.state,
                state_change_time: format_time(t.state_change_time),
            })?;
        }
        seq.end()
    }
}

pub fn router() -> Routes {
    Routes::new()
        // An ad-hoc job runs any command on an agent: admins only.
        .post("/jobs/schedule", Admin, schedule)
        .get("/scheduler", User, scheduler)
        .get("/builds/{build_id}", User, show)
        .post("/builds/{build_id}/cancel", User, cancel)
        .get("/builds/{build_id}/console", User, console)
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
    /// The agent empties the sandbox first.
    #[serde(default)]
    clean_workspace: bool,
    /// `GO_PIPELINE_LABEL` (the counter when absent).
    pipeline_label: Option<String>,
    /// Minutes of console silence before the job is cancelled (GoCD's unit); 0: never.
    timeout: Option<u64>,
    /// The same in seconds, for tests and scripts; give one or the other.
    timeout_seconds: Option<u64>,
}

async fn schedule(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    ApiJson(body): ApiJson<ScheduleBody>,
) -> Result<(StatusCode, Json<RunJson>)> {
    let timeout_seconds = match (body.timeout, body.timeout_seconds) {
        (Some(_), Some(_)) => {
            return Err(Error::Unprocessable(
                "timeout: give timeout (minutes) or timeout_seconds, not both".into(),
            ));
        }
        (Some(minutes), None) => Some(minutes.saturating_mul(60)),
        (None, seconds) => seconds,
    }
    .map(|s| i64::try_from(s).unwrap_or(i64::MAX));
    let job = NewJob {
        pipeline_name: body.pipeline_name,
        stage_name: body.stage_name,
        job_name: body.job_name,
        tasks: body.tasks,
        resources: body.resources.unwrap_or_default(),
        environment: body.environment,
        environment_variables: body.environment_variables,
        clean_workspace: body.clean_workspace,
        pipeline_label: body.pipeline_label,
        timeout_seconds,
    };
    Ok((
        StatusCode::CREATED,
        Json(RunJson(state.scheduler.schedule(job, &actor.name).await?)),
    ))
}

async fn scheduler(State(state): State<AppState>) -> Result<Json<Value>> {
    let jobs = state.scheduler.queue().await?;
    let count = jobs.len();
    let jobs: Vec<RunJson> = jobs.into_iter().map(RunJson).collect();
    Ok(Json(json!({ "pending_count": count, "jobs": jobs })))
}

/// The run; a Scheduled one also says why it waits (`waiting`: per agent, the first reason
/// it does not run it, the matching ones first).
async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>> {
    let run = state.job_runs.get(build_id(&id)?).await?;
    let waiting = if run.state == JobState::Scheduled {
        let agents = state.agents.list().await?;
        Some(why_waiting(&run.requirements(), &agents))
    } else {
        None
    };
    let mut body = serde_json::to_value(RunJson(run)).unwrap_or(Value::Null);
    if let (Some(waiting), Value::Object(fields)) = (waiting, &mut body) {
        fields.insert("waiting".into(), json!(waiting));
    }
    Ok(Json(body))
}

async fn cancel(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RunJson>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(RunJson(
            state.scheduler.cancel(build_id(&id)?, &actor.name).await?,
        )),
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
