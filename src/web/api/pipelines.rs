//! Running pipelines: trigger (GoCD's schedule), pause and unpause, unlock, approve or re-run
//! a stage, cancel one; and ferrocd's own reads of instances. Anyone signed in may run
//! pipelines (as GoCD's operate permission); changing the config is for admins.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiJson;
use crate::AppState;
use crate::error::{Error, Result};
use crate::pipelines::JobSelection;
use crate::web::auth::Credential::User;
use crate::web::auth::CurrentUser;
use crate::web::routes::Routes;

pub fn router() -> Routes {
    Routes::new()
        .post("/pipelines/{name}/schedule", User, schedule)
        .post("/pipelines/{name}/pause", User, pause)
        .post("/pipelines/{name}/unpause", User, unpause)
        .post("/pipelines/{name}/unlock", User, unlock)
        .post("/stages/{pipeline}/{pc}/{stage}/run", User, run_stage)
        .post(
            "/stages/{pipeline}/{pc}/{stage}/{sc}/cancel",
            User,
            cancel_stage,
        )
        .post(
            "/stages/{pipeline}/{pc}/{stage}/{sc}/run-failed-jobs",
            User,
            run_failed_jobs,
        )
        .post(
            "/stages/{pipeline}/{pc}/{stage}/{sc}/run-selected-jobs",
            User,
            run_selected_jobs,
        )
}

/// GoCD's schedule body: every field optional; variables as GoCD's list of
/// `{name, value, secure?}`, or a plain object.
#[derive(Deserialize, Default)]
struct ScheduleBody {
    #[serde(default)]
    environment_variables: Option<Variables>,
    /// GoCD's "trigger with options": some git materials at picked revisions.
    #[serde(default)]
    materials: Option<Vec<PickedRevision>>,
    /// Poll the pipeline's materials first, and wait for them.
    #[serde(default)]
    update_materials_before_scheduling: Option<bool>,
}

#[derive(Deserialize)]
struct PickedRevision {
    fingerprint: String,
    revision: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Variables {
    List(Vec<Variable>),
    Map(BTreeMap<String, String>),
}

#[derive(Deserialize)]
struct Variable {
    name: String,
    value: Option<String>,
    #[serde(default)]
    secure: bool,
    encrypted_value: Option<String>,
}

impl Variables {
    fn into_map(self) -> Result<BTreeMap<String, String>> {
        match self {
            Variables::Map(map) => Ok(map),
            Variables::List(list) => list
                .into_iter()
                .map(|v| {
                    if v.encrypted_value.is_some() {
                        return Err(Error::Unprocessable(format!(
                            "environment_variables: {}: encrypted values are ciphertext of a \
                             GoCD server's key, which ferrocd does not have",
                            v.name
                        )));
                    }
                    let _ = v.secure;
                    Ok((v.name, v.value.unwrap_or_default()))
                })
                .collect(),
        }
    }
}

pub fn pipeline_counter(raw: &str) -> Result<i64> {
    raw.parse()
        .ok()
        .filter(|c| *c > 0)
        .ok_or_else(|| Error::NotFound(format!("no pipeline instance {raw}")))
}

async fn schedule(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ScheduleBody>,
) -> Result<(StatusCode, Json<Value>)> {
    let picked: BTreeMap<String, String> = body
        .materials
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.fingerprint, m.revision))
        .collect();
    let variables = match body.environment_variables {
        Some(v) => v.into_map()?,
        None => BTreeMap::new(),
    };
    let counter = state
        .materials
        .trigger_with_options(
            &name,
            &actor.name,
            variables,
            &picked,
            body.update_materials_before_scheduling == Some(true),
        )
        .await?;
    let canonical = state
        .pipelines
        .configs()
        .snapshot()
        .pipeline(&name)
        .map_or(name, |p| p.name.clone());
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "message": format!("Request to schedule pipeline {canonical} accepted"),
            "pipeline_counter": counter,
        })),
    ))
}

#[derive(Deserialize, Default)]
struct PauseBody {
    #[serde(default)]
    pause_cause: Option<String>,
}

async fn pause(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PauseBody>,
) -> Result<Json<Value>> {
    let cause = body.pause_cause.unwrap_or_default();
    if cause.chars().count() > 255 {
        return Err(Error::Unprocessable(
            "pause_cause: at most 255 characters".into(),
        ));
    }
    state.pipelines.pause(&name, &cause, &actor.name).await?;
    Ok(Json(
        json!({ "message": format!("Pipeline '{name}' paused successfully.") }),
    ))
}

async fn unpause(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    state.pipelines.unpause(&name, &actor.name).await?;
    Ok(Json(
        json!({ "message": format!("Pipeline '{name}' unpaused successfully.") }),
    ))
}

async fn unlock(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    state.pipelines.unlock(&name, &actor.name).await?;
    Ok(Json(
        json!({ "message": format!("Pipeline lock released for {name}") }),
    ))
}

async fn run_stage(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path((pipeline, pc, stage)): Path<(String, String, String)>,
) -> Result<(StatusCode, Json<Value>)> {
    let counter = pipeline_counter(&pc)?;
    let stage_counter = state
        .pipelines
        .run_stage(&pipeline, counter, &stage, &actor)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "message": format!("Request to schedule stage {pipeline}/{counter}/{stage} accepted"),
            "stage_counter": stage_counter,
        })),
    ))
}

async fn cancel_stage(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path((pipeline, pc, stage, sc)): Path<(String, String, String, String)>,
) -> Result<Json<Value>> {
    let counter = pipeline_counter(&pc)?;
    let stage_counter = pipeline_counter(&sc)?;
    state
        .pipelines
        .cancel_stage(&pipeline, counter, &stage, stage_counter, &actor.name)
        .await?;
    Ok(Json(json!({
        "message": format!("Stage cancelled successfully.")
    })))
}

async fn run_failed_jobs(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path(path): Path<(String, String, String, String)>,
) -> Result<(StatusCode, Json<Value>)> {
    rerun(state, actor, path, JobSelection::Failed).await
}

/// GoCD's body: the names of the jobs to run again.
#[derive(Deserialize)]
struct SelectedJobs {
    jobs: Vec<String>,
}

async fn run_selected_jobs(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path(path): Path<(String, String, String, String)>,
    ApiJson(body): ApiJson<SelectedJobs>,
) -> Result<(StatusCode, Json<Value>)> {
    rerun(state, actor, path, JobSelection::Named(body.jobs)).await
}

async fn rerun(
    state: AppState,
    actor: crate::domain::user::User,
    (pipeline, pc, stage, sc): (String, String, String, String),
    which: JobSelection,
) -> Result<(StatusCode, Json<Value>)> {
    let counter = pipeline_counter(&pc)?;
    let stage_counter = pipeline_counter(&sc)?;
    let next = state
        .pipelines
        .rerun_jobs(&pipeline, counter, &stage, stage_counter, which, &actor)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "message": "Request to rerun jobs accepted",
            "stage_counter": next,
        })),
    ))
}
