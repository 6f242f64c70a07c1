//! The agent protocol, the server's side: registration, pings, work, status reports and
//! console uploads. The server writes its messages strictly (`WorkJson`); the agent's reading
//! of them is `agent_runtime/wire.rs`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::jobs::RunJson;
use super::{ApiJson, name_list, parse_uuid};
use crate::AppState;
use crate::agents::{Ping, Registration};
use crate::domain::agent::AgentState;
use crate::domain::artifact::{FetchFile, fetch_files};
use crate::domain::job_run::{JobResult, JobRun, JobState, RunIf, Task, TaskKind};
use crate::domain::material::Checkout;
use crate::error::{Error, Result};
use crate::job_runs::Appended;
use crate::web::api::{agent_uuid, build_id};
use crate::web::auth::Credential;
use crate::web::auth::{AuthenticatedAgent, bearer_token, client_address};
use crate::web::routes::Routes;

pub fn router() -> Routes {
    Routes::new()
        .post("/agents/register", Credential::Registration, register)
        .post("/agents/{uuid}/ping", Credential::Agent, ping)
        .post("/agents/{uuid}/work", Credential::Agent, work)
        .post("/builds/{build_id}/status", Credential::Agent, status)
        .post(
            "/builds/{build_id}/console",
            Credential::Agent,
            append_console,
        )
}

/// Bytes free in the sandbox: a number, a numeric string, or "unknown".
fn free_space(value: Option<&Value>) -> Result<Option<i64>> {
    let invalid =
        || Error::Unprocessable("free_space: expected a number of bytes or \"unknown\"".into());
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().filter(|n| *n >= 0).map(Some).ok_or_else(invalid),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("unknown") => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(invalid),
        Some(_) => Err(invalid()),
    }
}

#[derive(Deserialize)]
struct RegisterBody {
    uuid: Option<String>,
    hostname: String,
    #[serde(default)]
    ip_address: String,
    #[serde(default)]
    operating_system: String,
    #[serde(default)]
    sandbox: String,
    free_space: Option<Value>,
    #[serde(default, deserialize_with = "name_list")]
    resources: Option<Vec<String>>,
    #[serde(default, deserialize_with = "name_list")]
    environments: Option<Vec<String>>,
    #[serde(default)]
    agent_version: String,
}

async fn register(
    State(state): State<AppState>,
    parts: Parts,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<(StatusCode, Json<Value>)> {
    let headers = &parts.headers;
    let key = headers
        .get("x-agent-registration-key")
        .and_then(|v| v.to_str().ok());
    // The right key is exempt; everyone else is held to a rate per address.
    if let Some(limit) = &state.registrations
        && !state.agents.is_registration_key(key)
    {
        let from = client_address(&state, &parts.extensions, headers);
        if let Err(retry_after) = limit.take(from) {
            return Err(Error::TooManyRequests {
                message: format!(
                    "too many registrations from {from}; try again in {retry_after} s"
                ),
                retry_after,
            });
        }
    }
    let token = bearer_token(headers);
    let registration = Registration {
        uuid: body
            .uuid
            .as_deref()
            .map(|u| parse_uuid("uuid", u))
            .transpose()?,
        hostname: body.hostname,
        ip_address: body.ip_address,
        operating_system: body.operating_system,
        sandbox: body.sandbox,
        free_space: free_space(body.free_space.as_ref())?,
        resources: body.resources.unwrap_or_default(),
        environments: body.environments.unwrap_or_default(),
        agent_version: body.agent_version,
    };
    let registered = state.agents.register(registration, key, token).await?;
    let status = if registered.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "uuid": registered.agent.uuid,
            "token": registered.token,
            "agent_config_state": registered.agent.agent_config_state,
        })),
    ))
}

#[derive(Deserialize)]
struct PingBody {
    agent_state: String,
    /// The build the agent says it is running, if any.
    build_id: Option<i64>,
    free_space: Option<Value>,
}

async fn ping(
    State(state): State<AppState>,
    Path(uuid): Path<String>,
    caller: AuthenticatedAgent,
    ApiJson(body): ApiJson<PingBody>,
) -> Result<Json<Value>> {
    let uuid = agent_uuid(&uuid)?;
    caller.require(uuid)?;
    let agent_state: AgentState = body
        .agent_state
        .parse()
        .map_err(|e| Error::Unprocessable(format!("agent_state: {e}")))?;
    let ping = Ping {
        agent_state,
        build_id: body.build_id,
        free_space: free_space(body.free_space.as_ref())?,
    };
    let agent = state.agents.ping(&caller.0, ping).await?;
    let instruction = state
        .scheduler
        .instruction_for(&agent, body.build_id)
        .await?;
    Ok(Json(json!({
        "agent_config_state": agent.agent_config_state,
        "instruction": instruction,
    })))
}

/// `200 WORK`, or `204` when there is nothing for this agent (always for Pending or Disabled).
async fn work(
    State(state): State<AppState>,
    Path(uuid): Path<String>,
    caller: AuthenticatedAgent,
) -> Result<Response> {
    let uuid = agent_uuid(&uuid)?;
    caller.require(uuid)?;
    Ok(match state.scheduler.try_assign_work(&caller.0).await? {
        Some(run) => {
            let mut work = WorkJson::from(&run);
            work.materials = state.pipelines.checkouts(&run).await?;
            work.artifacts = state
                .pipelines
                .job_config(&run)
                .await?
                .map(|job| job.artifacts)
                .unwrap_or_default();
            resolve_fetches(&state, &run, &mut work).await?;
            Json(work).into_response()
        }
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// Gives each fetch task of `work` (an `on_cancel` one too) the files it downloads and where
/// from, or why there are none (the agent fails the job at it, saying so).
async fn resolve_fetches(state: &AppState, run: &JobRun, work: &mut WorkJson) -> Result<()> {
    for (task, json) in run.tasks.iter().zip(work.tasks.iter_mut()) {
        let (mut task, mut json) = (Some(task), Some(json));
        while let (Some(t), Some(j)) = (task, json) {
            if let TaskKind::Fetch(fetch) = &t.kind {
                match state.pipelines.fetch_origin(run, fetch).await? {
                    Err(why) => j.error = Some(why),
                    Ok(origin) => {
                        let stored = state.artifacts.files(origin.build_id).await?;
                        match fetch_files(
                            &fetch.source,
                            fetch.is_file,
                            fetch.destination.as_deref(),
                            &stored,
                        ) {
                            Ok(files) => j.files = Some(files),
                            Err(why) => j.error = Some(format!("{}: {why}", origin.locator)),
                        }
                        j.from = Some(origin.locator);
                        j.from_build_id = Some(origin.build_id);
                    }
                }
            }
            (task, json) = (t.on_cancel.as_deref(), j.on_cancel.as_deref_mut());
        }
    }
    Ok(())
}

/// `WORK`: what an agent receives to run (`POST /api/agents/{uuid}/work`).
#[derive(Debug, Clone, Serialize)]
struct WorkJson {
    build_id: i64,
    pipeline_name: String,
    pipeline_counter: i64,
    /// GoCD's label: the run's, else the counter.
    pipeline_label: String,
    stage_name: String,
    stage_counter: i64,
    job_name: String,
    /// Empty the job's sandbox before the tasks.
    clean_workspace: bool,
    tasks: Vec<WorkTaskJson>,
    environment_variables: BTreeMap<String, String>,
    /// Git materials to check out before the tasks, at the instance's revisions.
    materials: Vec<Checkout>,
    /// What to upload after the tasks: `{kind: build|test, source, destination?}`.
    artifacts: Vec<crate::domain::pipeline_config::ArtifactConfig>,
}

/// One task of `WORK`: every field its type has, `type` and `run_if` always.
#[derive(Debug, Clone, Serialize)]
struct WorkTaskJson {
    #[serde(rename = "type")]
    task_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    working_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    script: Option<String>,
    /// A fetch task's fields as configured…
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_file: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<String>,
    /// …and as the server found them: the job `p/pc/s/sc/job` and build it fetches from, the
    /// files, or why it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_build_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<Vec<FetchFile>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    run_if: RunIf,
    #[serde(skip_serializing_if = "Option::is_none")]
    on_cancel: Option<Box<WorkTaskJson>>,
}

impl From<&Task> for WorkTaskJson {
    fn from(task: &Task) -> Self {
        let mut json = WorkTaskJson {
            task_type: task.type_name().to_string(),
            command: None,
            args: None,
            working_dir: None,
            script: None,
            pipeline: None,
            stage: None,
            job: None,
            source: None,
            is_file: None,
            destination: None,
            from: None,
            from_build_id: None,
            files: None,
            error: None,
            run_if: task.run_if,
            on_cancel: task
                .on_cancel
                .as_deref()
                .map(|t| Box::new(WorkTaskJson::from(t))),
        };
        match &task.kind {
            TaskKind::Exec {
                command,
                args,
                working_dir,
            } => {
                json.command = Some(command.clone());
                json.args = Some(args.clone());
                json.working_dir = working_dir.clone();
            }
            TaskKind::Script { script } => json.script = Some(script.clone()),
            TaskKind::Fetch(fetch) => {
                json.pipeline = fetch.pipeline.clone();
                json.stage = Some(fetch.stage.clone());
                json.job = Some(fetch.job.clone());
                json.source = Some(fetch.source.clone());
                json.is_file = Some(fetch.is_file);
                json.destination = fetch.destination.clone();
            }
            TaskKind::Unsupported { .. } => {}
        }
        json
    }
}

impl From<&JobRun> for WorkJson {
    fn from(run: &JobRun) -> Self {
        WorkJson {
            build_id: run.build_id,
            pipeline_name: run.pipeline_name.clone(),
            pipeline_counter: run.pipeline_counter,
            pipeline_label: run
                .pipeline_label
                .clone()
                .unwrap_or_else(|| run.pipeline_counter.to_string()),
            stage_name: run.stage_name.clone(),
            stage_counter: run.stage_counter,
            job_name: run.job_name.clone(),
            clean_workspace: run.clean_workspace,
            tasks: run.tasks.iter().map(WorkTaskJson::from).collect(),
            environment_variables: run.environment_variables.clone(),
            materials: Vec::new(),
            artifacts: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
struct StatusBody {
    job_state: String,
    result: Option<String>,
}

async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: AuthenticatedAgent,
    ApiJson(body): ApiJson<StatusBody>,
) -> Result<Json<RunJson>> {
    let job_state: JobState = body
        .job_state
        .parse()
        .map_err(|e| Error::Unprocessable(format!("job_state: {e}")))?;
    let result = body
        .result
        .as_deref()
        .map(|r| {
            r.parse::<JobResult>()
                .map_err(|e| Error::Unprocessable(format!("result: {e}")))
        })
        .transpose()?;
    let run = state
        .scheduler
        .report_status(build_id(&id)?, caller.uuid(), job_state, result)
        .await?;
    Ok(Json(RunJson(run)))
}

/// Raw console bytes at `X-Console-Offset` → `{"offset": NEW_LENGTH}`.
async fn append_console(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: AuthenticatedAgent,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>> {
    let build_id = build_id(&id)?;
    // Console bytes are text or raw bytes; any other declared type is a mistake (or a page
    // elsewhere posting a form), and a chunk must say what it is.
    let typed = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase());
    if !matches!(
        typed.as_deref(),
        Some("text/plain" | "application/octet-stream")
    ) {
        return Err(Error::UnsupportedMediaType(
            "Content-Type: a console chunk is sent as text/plain or application/octet-stream"
                .into(),
        ));
    }
    let offset = headers
        .get("x-console-offset")
        .ok_or_else(|| Error::Unprocessable("X-Console-Offset: the header is required".into()))?
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|v| *v >= 0)
        .ok_or_else(|| {
            Error::Unprocessable("X-Console-Offset: expected a byte offset (0 or more)".into())
        })?;
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge(format!(
                "a console chunk is at most {} bytes",
                crate::web::MAX_BODY
            ))
        } else {
            Error::BadRequest(rejection.body_text())
        }
    })?;
    Ok(Json(
        match state
            .job_runs
            .append_console(build_id, caller.uuid(), offset, bytes)
            .await?
        {
            Appended::Stored(offset) => json!({ "offset": offset }),
            Appended::Truncated(at) => json!({ "offset": at, "truncated": true }),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_runtime::wire;

    #[test]
    fn the_agent_reads_the_work_the_server_writes() {
        let make = Task {
            kind: TaskKind::Exec {
                command: "make".into(),
                args: vec!["test".into()],
                working_dir: Some("src".into()),
            },
            run_if: RunIf::Passed,
            on_cancel: Some(Box::new(Task {
                kind: TaskKind::Script {
                    script: "echo stopped | tee log".into(),
                },
                run_if: RunIf::Passed,
                on_cancel: None,
            })),
        };
        let report = Task {
            kind: TaskKind::Unsupported {
                task_type: "rake".into(),
            },
            run_if: RunIf::Any,
            on_cancel: None,
        };
        let mut run = JobRun {
            build_id: 12,
            pipeline_name: "web".into(),
            pipeline_counter: 3,
            stage_name: "test".into(),
            stage_counter: 1,
            job_name: "unit".into(),
            agent_uuid: None,
            state: JobState::Assigned,
            result: JobResult::Unknown,
            console_length: 0,
            console_truncated_at: None,
            scheduled_by: None,
            cancelled_by: None,
            resources: vec![],
            environment: None,
            tasks: vec![make, report],
            cancel_requested: false,
            rescheduled_from: None,
            scheduled_at: 0,
            completed_at: None,
            job_state_transitions: vec![],
            environment_variables: BTreeMap::from([("A".into(), "1".into())]),
            clean_workspace: true,
            pipeline_label: Some("3-abc".into()),
            timeout_seconds: Some(60),
            cancel_reason: None,
            copied_from: None,
            pinned_agent: None,
        };
        let sent = serde_json::to_value(WorkJson::from(&run)).unwrap();
        let read: wire::Work = serde_json::from_value(sent).unwrap();
        assert_eq!(read.build_id, wire::BuildId::Number(12));
        assert_eq!(
            (read.pipeline_name.as_str(), read.job_name.as_str()),
            ("web", "unit")
        );
        assert_eq!(
            read.tasks[0].kind,
            wire::TaskKind::Exec {
                command: "make".into(),
                args: vec!["test".into()],
                working_dir: Some("src".into()),
            }
        );
        assert_eq!(read.tasks[0].run_if, wire::RunIf::Passed);
        assert_eq!(
            read.tasks[0].on_cancel.as_ref().map(|t| &t.kind),
            Some(&wire::TaskKind::Script {
                script: "echo stopped | tee log".into()
            })
        );
        assert_eq!(
            read.tasks[1].kind,
            wire::TaskKind::Unsupported("rake".into())
        );
        assert_eq!(read.tasks[1].run_if, wire::RunIf::Any);
        assert!(read.clean_workspace);
        assert_eq!(read.pipeline_label, Some(json!("3-abc")));
        assert_eq!(read.environment_variables["A"], "1");

        // Without a label of its own, the label is the counter.
        run.pipeline_label = None;
        let sent = serde_json::to_value(WorkJson::from(&run)).unwrap();
        assert_eq!(sent["pipeline_label"], "3");
    }
}
