//! GoCD's read APIs of pipelines and stages, in GoCD's shapes, for the clients and scripts
//! written against them: a pipeline's status, history and instances, and a stage instance.
//! Times are epoch milliseconds, as GoCD sends them here.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiQuery, pipeline_counter};
use crate::AppState;
use crate::domain::job_run::JobRun;
use crate::domain::material::MaterialRevision;
use crate::domain::pipeline::StageSummary;
use crate::domain::pipeline_config::PipelineConfig;
use crate::error::Result;
use crate::pipelines::{InstanceView, StageView};
use crate::web::auth::Credential::User;
use crate::web::auth::CurrentUser;
use crate::web::format_time;
use crate::web::routes::Routes;

pub fn router() -> Routes {
    Routes::new()
        .get("/pipelines/{name}/status", User, status)
        .get("/pipelines/{name}/history", User, history)
        .get("/pipelines/{name}/instance/{counter}", User, instance)
        .get("/stages/{pipeline}/{pc}/{stage}/{sc}", User, stage)
        .get("/dashboard", User, dashboard)
}

/// GoCD's dashboard (v4): the groups with their pipelines' names, and each pipeline with its
/// pause and lock state and its latest instance's stages.
async fn dashboard(
    State(state): State<AppState>,
    CurrentUser(viewer): CurrentUser,
) -> Result<Json<Value>> {
    let views = state.pipelines.dashboard().await?;
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for view in &views {
        match groups.iter_mut().find(|(g, _)| *g == view.config.group) {
            Some((_, names)) => names.push(view.config.name.clone()),
            None => groups.push((view.config.group.clone(), vec![view.config.name.clone()])),
        }
    }
    let link = |href: String| json!({ "href": href });
    let pipelines: Vec<Value> = views
        .iter()
        .map(|view| {
            let name = &view.config.name;
            let instances: Vec<Value> = view
                .latest
                .iter()
                .map(|latest| {
                    let counter = latest.instance.counter;
                    json!({
                        "_links": {
                            "self": link(format!("/go/api/pipelines/{name}/instance/{counter}")),
                        },
                        "label": latest.instance.label,
                        "counter": counter,
                        "triggered_by": trigger_message(&latest.instance.triggered_by),
                        "scheduled_at": format_time(latest.instance.created_at),
                        "_embedded": {
                            "stages": latest.stages.iter().filter(|s| s.counter.is_some()).map(|s| json!({
                                "_links": {
                                    "self": link(format!("/go/api/stages/{name}/{counter}/{}/{}", s.name, s.counter.unwrap_or(1))),
                                },
                                "name": s.name,
                                "counter": s.counter.unwrap_or(1).to_string(),
                                "status": s.status.as_str(),
                                "approved_by": s.triggered_by.clone().unwrap_or_default(),
                                "scheduled_at": s.scheduled_at.map(format_time),
                            })).collect::<Vec<_>>(),
                        },
                    })
                })
                .collect();
            json!({
                "_links": {
                    "self": link(format!("/go/api/pipelines/{name}/history")),
                    "doc": link("https://api.gocd.org/current/#pipelines".into()),
                },
                "name": name,
                "last_updated_timestamp": view.latest.as_ref().map_or(0, |l| l.instance.created_at),
                "locked": view.state.locked_by.is_some(),
                "can_pause": true,
                "pause_info": {
                    "paused": view.state.paused,
                    "paused_by": view.state.paused_by,
                    "pause_reason": view.state.pause_cause,
                    "paused_at": view.state.paused_at.map(format_time),
                },
                "can_administer": viewer.admin,
                "can_unlock": true,
                "can_operate": true,
                "can_schedule": !view.state.paused,
                "tracking_tool": view.config.tracking_tool.as_ref().map(|t| json!({"link": t.link, "regex": t.regex})),
                "from_config_repo": true,
                "_embedded": { "instances": instances },
            })
        })
        .collect();
    Ok(Json(json!({
        "_links": {
            "self": link("/go/api/dashboard".into()),
            "doc": link("https://api.gocd.org/current/#dashboard".into()),
        },
        // GoCD's etag of the viewer's dashboard filters; ferrocd has no saved filters.
        "_personalization": "none",
        "_embedded": {
            "pipeline_groups": groups.iter().map(|(group, names)| json!({
                "_links": {
                    "self": link(format!("/go/api/config/pipeline_groups/{group}")),
                    "doc": link("https://api.gocd.org/current/#pipeline-groups".into()),
                },
                "name": group,
                "pipelines": names,
                "can_administer": viewer.admin,
            })).collect::<Vec<_>>(),
            "environments": [],
            "pipelines": pipelines,
        },
    })))
}

async fn status(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>> {
    let view = state.pipelines.view(&name).await?;
    let running = view.latest.as_ref().is_some_and(InstanceView::is_running);
    Ok(Json(json!({
        "paused": view.state.paused,
        "paused_cause": view.state.pause_cause.clone().unwrap_or_default(),
        "paused_by": view.state.paused_by.clone().unwrap_or_default(),
        "locked": view.state.locked_by.is_some(),
        "schedulable": !view.state.paused && view.state.locked_by.is_none()
            && !(running && view.config.lock_behavior != crate::domain::pipeline_config::LockBehavior::None),
    })))
}

#[derive(Deserialize)]
struct HistoryQuery {
    #[serde(default)]
    page_size: Option<i64>,
    #[serde(default)]
    offset: Option<i64>,
}

async fn history(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<Value>> {
    let page_size = query.page_size.unwrap_or(10);
    let offset = query.offset.unwrap_or(0);
    let (instances, total) = state.pipelines.history(&name, offset, page_size).await?;
    // GoCD pages by `after`/`before`; these links page by offset, which we also accept.
    let mut links = serde_json::Map::new();
    if offset + page_size < total {
        links.insert(
            "next".into(),
            json!({ "href": format!("/go/api/pipelines/{name}/history?offset={}&page_size={page_size}", offset + page_size) }),
        );
    }
    if offset > 0 {
        links.insert(
            "previous".into(),
            json!({ "href": format!("/go/api/pipelines/{name}/history?offset={}&page_size={page_size}", (offset - page_size).max(0)) }),
        );
    }
    Ok(Json(json!({
        "_links": links,
        "pipelines": with_modifications(&state, &instances).await?,
        "pagination": { "offset": offset, "page_size": page_size, "total": total },
    })))
}

async fn instance(
    State(state): State<AppState>,
    Path((name, counter)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let view = state
        .pipelines
        .instance(&name, pipeline_counter(&counter)?)
        .await?;
    let mut shown = with_modifications(&state, std::slice::from_ref(&view)).await?;
    Ok(Json(shown.pop().unwrap_or(Value::Null)))
}

/// The instances as GoCD shows them, each material revision with its modifications.
async fn with_modifications(state: &AppState, views: &[InstanceView]) -> Result<Vec<Value>> {
    let mut shown = Vec::with_capacity(views.len());
    for view in views {
        let modifications = state
            .materials
            .modifications(&view.instance.material_revisions)
            .await?;
        let mut json = instance_json(view);
        if let Some(revisions) = json
            .pointer_mut("/build_cause/material_revisions")
            .and_then(Value::as_array_mut)
        {
            for (revision, commits) in revisions.iter_mut().zip(modifications) {
                if !commits.is_empty() {
                    revision["modifications"] = commits
                        .iter()
                        .map(|m| {
                            json!({
                                "revision": m.revision,
                                "modified_time": m.time,
                                "user_name": m.author,
                                "comment": m.message,
                                "email_address": Value::Null,
                            })
                        })
                        .collect();
                }
            }
        }
        shown.push(json);
    }
    Ok(shown)
}

async fn stage(
    State(state): State<AppState>,
    Path((pipeline, pc, stage, sc)): Path<(String, String, String, String)>,
) -> Result<Json<Value>> {
    let view = state
        .pipelines
        .stage(
            &pipeline,
            pipeline_counter(&pc)?,
            &stage,
            pipeline_counter(&sc)?,
        )
        .await?;
    let builds: Vec<i64> = view
        .jobs
        .iter()
        .map(|j| j.copied_from.unwrap_or(j.build_id))
        .collect();
    let mut json = stage_json(&view);
    json["artifacts_deleted"] = state
        .artifacts
        .last_purge_among(&builds)
        .await?
        .is_some()
        .into();
    Ok(Json(json))
}

/// A pipeline instance as GoCD's instance and history APIs show it.
pub fn instance_json(view: &InstanceView) -> Value {
    let instance = &view.instance;
    json!({
        "name": instance.pipeline_name,
        "counter": instance.counter,
        "label": instance.label,
        "natural_order": instance.counter as f64,
        "can_run": false,
        "preparing_to_schedule": false,
        "comment": Value::Null,
        "scheduled_date": instance.created_at,
        "build_cause": {
            "trigger_message": trigger_message(&instance.triggered_by),
            "trigger_forced": instance.triggered_by != crate::pipelines::CHANGES,
            "approver": if instance.triggered_by == crate::pipelines::CHANGES { "" } else { instance.triggered_by.as_str() },
            "material_revisions": instance.material_revisions.iter().map(material_revision_json).collect::<Vec<_>>(),
        },
        "stages": view.stages.iter().map(|s| stage_summary_json(&instance.plan, s)).collect::<Vec<_>>(),
    })
}

/// One material of a build cause in GoCD's shape; its modifications the revision run until
/// the caller lists the commits (`with_modifications`).
fn material_revision_json(r: &MaterialRevision) -> Value {
    json!({
        "changed": r.changed,
        "material": {
            "name": r.material,
            "fingerprint": r.fingerprint,
            "type": "Git",
            "description": format!("URL: {}, Branch: {}", r.url, r.branch),
        },
        "modifications": [{ "revision": r.revision }],
    })
}

fn trigger_message(triggered_by: &str) -> String {
    if triggered_by == crate::pipelines::CHANGES {
        "modified by changes".to_string()
    } else {
        format!("Forced by {triggered_by}")
    }
}

fn approval_type(plan: &PipelineConfig, stage: &str) -> &'static str {
    match plan.stage(stage).is_some_and(|s| s.approval.manual) {
        true => "manual",
        false => "success",
    }
}

fn stage_summary_json(plan: &PipelineConfig, stage: &StageSummary) -> Value {
    json!({
        "name": stage.name,
        "counter": stage.counter.map(|c| c.to_string()).unwrap_or_default(),
        "status": stage.status.as_str(),
        "result": stage_result(stage),
        "approval_type": approval_type(plan, &stage.name),
        "approved_by": stage.triggered_by.clone().unwrap_or_default(),
        "scheduled": stage.counter.is_some(),
        "can_run": stage.can_run,
        "operate_permission": true,
        "rerun_of_counter": Value::Null,
        "scheduled_date": stage.scheduled_at,
        "jobs": [],
    })
}

fn stage_result(stage: &StageSummary) -> &'static str {
    use crate::domain::pipeline::StageStatus::*;
    match stage.status {
        Passed => "Passed",
        Failed => "Failed",
        Cancelled => "Cancelled",
        _ => "Unknown",
    }
}

fn job_json(run: &JobRun) -> Value {
    json!({
        "name": run.job_name,
        "id": run.build_id,
        "state": run.state.as_str(),
        "result": run.result.as_str(),
        "scheduled_date": run.scheduled_at,
        "agent_uuid": run.agent_uuid,
        "rerun": run.rescheduled_from.is_some(),
        "original_job_id": run.rescheduled_from,
        "pipeline_name": run.pipeline_name,
        "pipeline_counter": run.pipeline_counter,
        "stage_name": run.stage_name,
        "stage_counter": run.stage_counter,
        "job_state_transitions": run.job_state_transitions.iter().map(|t| json!({
            "state": t.state.as_str(),
            "state_change_time": t.state_change_time,
        })).collect::<Vec<_>>(),
    })
}

/// A stage instance as GoCD's stage API shows it.
pub fn stage_json(view: &StageView) -> Value {
    let config = view.instance.plan.stage(&view.run.stage_name);
    json!({
        "name": view.summary.name,
        "counter": view.run.stage_counter,
        "status": view.summary.status.as_str(),
        "result": stage_result(&view.summary),
        "approval_type": approval_type(&view.instance.plan, &view.run.stage_name),
        "approved_by": view.run.triggered_by,
        "cancelled_by": view.run.cancelled_by,
        "rerun_of_counter": Value::Null,
        "fetch_materials": config.is_none_or(|c| c.fetch_materials),
        "clean_working_directory": config.is_some_and(|c| c.clean_workspace),
        "artifacts_deleted": false,
        "pipeline_name": view.instance.pipeline_name,
        "pipeline_counter": view.instance.counter,
        "scheduled_date": view.run.scheduled_at,
        "scheduled_at": view.run.scheduled_at,
        "last_transitioned_time": view.run.completed_at.unwrap_or(view.run.scheduled_at),
        "jobs": view.jobs.iter().map(job_json).collect::<Vec<_>>(),
    })
}
