//! The Agents API (GoCD v7 shapes): list, show, edit, enable/disable, bulk edit, delete.

use axum::Json;
use axum::extract::{Path, State};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Value, json};
use uuid::Uuid;

use super::jobs::TransitionsJson;
use super::{ApiJson, ApiQuery, name_list, parse_uuid};
use crate::AppState;
use crate::agents::{AgentUpdate, BulkUpdate};
use crate::domain::agent::{Agent, AgentState, BuildDetails, BuildState, ConfigState, ListChange};
use crate::domain::user::User;
use crate::error::{Error, Result};
use crate::web::auth::{Credential, CurrentUser};
use crate::web::routes::Routes;

/// An agent as GoCD's Agents API v7 shows it (and `/api/events` sends it).
pub struct AgentJson(pub Agent);

impl Serialize for AgentJson {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let a = &self.0;
        Shape {
            uuid: a.uuid,
            hostname: &a.hostname,
            ip_address: &a.ip_address,
            sandbox: &a.sandbox,
            operating_system: &a.operating_system,
            free_space: a.free_space,
            agent_config_state: a.agent_config_state,
            agent_state: a.agent_state,
            build_state: a.build_state,
            agent_version: &a.agent_version,
            resources: &a.resources,
            environments: &a.environments,
            build_details: a.build_details.as_ref(),
            last_changed_by: a.last_changed_by.as_deref(),
        }
        .serialize(s)
    }
}

#[derive(Serialize)]
struct Shape<'a> {
    uuid: Uuid,
    hostname: &'a str,
    ip_address: &'a str,
    sandbox: &'a str,
    operating_system: &'a str,
    #[serde(serialize_with = "free_space_json")]
    free_space: Option<i64>,
    agent_config_state: ConfigState,
    agent_state: AgentState,
    build_state: BuildState,
    agent_version: &'a str,
    resources: &'a [String],
    #[serde(serialize_with = "environments_json")]
    environments: &'a [String],
    /// Only while it holds a run.
    #[serde(skip_serializing_if = "Option::is_none")]
    build_details: Option<&'a BuildDetails>,
    /// Who last changed its config (ferrocd's audit; GoCD clients ignore it).
    #[serde(skip_serializing_if = "Option::is_none")]
    last_changed_by: Option<&'a str>,
}

/// GoCD sends `free_space` as a number of bytes, or the string "unknown".
fn free_space_json<S: Serializer>(
    value: &Option<i64>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match value {
        Some(bytes) => s.serialize_i64(*bytes),
        None => s.serialize_str("unknown"),
    }
}

/// GoCD v7 lists environments as objects with their origin; ours all come from the server.
fn environments_json<S: Serializer>(
    names: &&[String],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Origin {
        r#type: &'static str,
    }
    #[derive(Serialize)]
    struct Environment<'a> {
        name: &'a str,
        origin: Origin,
    }
    let mut seq = s.serialize_seq(Some(names.len()))?;
    for name in names.iter() {
        seq.serialize_element(&Environment {
            name,
            origin: Origin { r#type: "gocd" },
        })?;
    }
    seq.end()
}

pub fn router() -> Routes {
    Routes::new()
        .get("/agents", Credential::User, list)
        .patch("/agents", Credential::Admin, bulk_update)
        .delete("/agents", Credential::Admin, bulk_delete)
        .get("/agents/{uuid}", Credential::User, show)
        .patch("/agents/{uuid}", Credential::Admin, update)
        .delete("/agents/{uuid}", Credential::Admin, delete_one)
        .put("/agents/{uuid}/enable", Credential::Admin, enable)
        .put("/agents/{uuid}/disable", Credential::Admin, disable)
        .get(
            "/agents/{uuid}/job_run_history",
            Credential::User,
            job_run_history,
        )
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>> {
    let agents = state.agents.list().await?;
    Ok(Json(json!({
        "_links": { "self": { "href": "/go/api/agents" } },
        "_embedded": { "agents": agents.into_iter().map(AgentJson).collect::<Vec<_>>() },
    })))
}

/// A path uuid that doesn't parse names no agent: 404, like one that isn't registered.
pub fn path_uuid(raw: &str) -> Result<Uuid> {
    raw.parse()
        .map_err(|_| Error::NotFound(format!("no agent with uuid {raw}")))
}

async fn show(State(state): State<AppState>, Path(uuid): Path<String>) -> Result<Json<AgentJson>> {
    Ok(Json(AgentJson(state.agents.get(path_uuid(&uuid)?).await?)))
}

#[derive(Deserialize)]
struct PatchAgent {
    hostname: Option<String>,
    #[serde(default, deserialize_with = "name_list")]
    resources: Option<Vec<String>>,
    #[serde(default, deserialize_with = "name_list")]
    environments: Option<Vec<String>>,
    agent_config_state: Option<String>,
}

fn config_state(raw: Option<&str>) -> Result<Option<ConfigState>> {
    raw.map(|s| {
        s.parse::<ConfigState>()
            .map_err(|e| Error::Unprocessable(format!("agent_config_state: {e}")))
    })
    .transpose()
}

async fn update(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path(uuid): Path<String>,
    ApiJson(body): ApiJson<PatchAgent>,
) -> Result<Json<AgentJson>> {
    let uuid = path_uuid(&uuid)?;
    let update = AgentUpdate {
        hostname: body.hostname,
        resources: body.resources,
        environments: body.environments,
        config_state: config_state(body.agent_config_state.as_deref())?,
    };
    Ok(Json(AgentJson(
        state.agents.update(uuid, update, &actor.name).await?,
    )))
}

async fn set_config_state(
    state: &AppState,
    actor: &User,
    uuid: &str,
    to: ConfigState,
) -> Result<Json<AgentJson>> {
    let update = AgentUpdate {
        config_state: Some(to),
        ..Default::default()
    };
    Ok(Json(AgentJson(
        state
            .agents
            .update(path_uuid(uuid)?, update, &actor.name)
            .await?,
    )))
}

async fn enable(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path(uuid): Path<String>,
) -> Result<Json<AgentJson>> {
    set_config_state(&state, &actor, &uuid, ConfigState::Enabled).await
}

async fn disable(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path(uuid): Path<String>,
) -> Result<Json<AgentJson>> {
    set_config_state(&state, &actor, &uuid, ConfigState::Disabled).await
}

#[derive(Deserialize, Default)]
struct ListOperation {
    #[serde(default, deserialize_with = "name_list")]
    add: Option<Vec<String>>,
    #[serde(default, deserialize_with = "name_list")]
    remove: Option<Vec<String>>,
}

impl From<ListOperation> for ListChange {
    fn from(op: ListOperation) -> Self {
        ListChange {
            add: op.add.unwrap_or_default(),
            remove: op.remove.unwrap_or_default(),
        }
    }
}

#[derive(Deserialize, Default)]
struct Operations {
    #[serde(default)]
    resources: ListOperation,
    #[serde(default)]
    environments: ListOperation,
}

#[derive(Deserialize)]
struct BulkPatch {
    uuids: Vec<String>,
    #[serde(default)]
    operations: Operations,
    agent_config_state: Option<String>,
}

fn uuids(raw: &[String]) -> Result<Vec<Uuid>> {
    raw.iter().map(|u| parse_uuid("uuids", u)).collect()
}

async fn bulk_update(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    ApiJson(body): ApiJson<BulkPatch>,
) -> Result<Json<Value>> {
    let bulk = BulkUpdate {
        uuids: uuids(&body.uuids)?,
        resources: body.operations.resources.into(),
        environments: body.operations.environments.into(),
        config_state: config_state(body.agent_config_state.as_deref())?,
    };
    let updated = state.agents.bulk_update(bulk, &actor.name).await?;
    let list = updated
        .iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Json(
        json!({ "message": format!("Updated agent(s) with uuid(s): [{list}].") }),
    ))
}

async fn delete_one(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path(uuid): Path<String>,
) -> Result<Json<Value>> {
    let uuid = path_uuid(&uuid)?;
    state.agents.get(uuid).await?; // unknown: 404 rather than the bulk call's 422
    let deleted = state.agents.delete(&[uuid], &actor.name).await?;
    Ok(Json(
        json!({ "message": format!("Deleted {deleted} agent(s).") }),
    ))
}

#[derive(Deserialize)]
struct BulkDelete {
    uuids: Vec<String>,
}

async fn bulk_delete(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    ApiJson(body): ApiJson<BulkDelete>,
) -> Result<Json<Value>> {
    let deleted = state
        .agents
        .delete(&uuids(&body.uuids)?, &actor.name)
        .await?;
    Ok(Json(
        json!({ "message": format!("Deleted {deleted} agent(s).") }),
    ))
}

#[derive(Deserialize)]
struct PageQuery {
    offset: Option<i64>,
    page_size: Option<i64>,
}

/// The agent's runs, newest first, paged.
async fn job_run_history(
    State(state): State<AppState>,
    Path(uuid): Path<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> Result<Json<Value>> {
    let uuid = path_uuid(&uuid)?;
    let page = state
        .job_runs
        .history(uuid, page.offset.unwrap_or(0), page.page_size.unwrap_or(50))
        .await?;
    let jobs: Vec<Value> = page
        .runs
        .iter()
        .map(|run| {
            json!({
                "build_id": run.build_id,
                "pipeline_name": run.pipeline_name,
                "pipeline_counter": run.pipeline_counter,
                "stage_name": run.stage_name,
                "stage_counter": run.stage_counter,
                "job_name": run.job_name,
                "result": run.result,
                "state": run.state,
                "job_state_transitions": TransitionsJson(&run.job_state_transitions),
            })
        })
        .collect();
    Ok(Json(json!({
        "uuid": uuid,
        "jobs": jobs,
        "pagination": { "offset": page.offset, "page_size": page.page_size, "total": page.total },
    })))
}
