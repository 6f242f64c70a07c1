//! `/agents`: the agents table, its counts and queued-jobs count, bulk actions, and the one
//! stream (`/agents/events`) that keeps every open copy of the page current.

mod fragments;
pub mod live;

use crate::web::pages::PageResult;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use maud::Markup;
use uuid::Uuid;

use super::layout::{Section, page};
use crate::AppState;
use crate::agents::{AgentUpdate, BulkUpdate};
use crate::domain::agent::{ConfigState, ListChange};
use crate::error::{Error, Result};
use crate::web::auth::{Credential, CurrentUser};
use crate::web::routes::Routes;
use crate::web::sse;

pub use live::AgentsView;

pub fn router() -> Routes {
    Routes::new()
        .get("/agents", Credential::User, agents_page)
        .get("/agents/events", Credential::User, events)
        .post("/agents/actions", Credential::Admin, action)
}

async fn agents_page(
    State(state): State<AppState>,
    CurrentUser(viewer): CurrentUser,
) -> PageResult<Markup> {
    let agents = state.agents.list().await?;
    let body = fragments::agents_page(&agents, state.agents_view.queued());
    Ok(page(
        Some(&viewer),
        "Agents",
        Section::Agents,
        &["agents.js"],
        body,
    ))
}

async fn events(State(state): State<AppState>, slot: sse::StreamSlot) -> Response {
    sse::response(state.agents_view.stream(), slot, state.shutdown.clone())
}

/// A page button's request: `action`, the selected `uuid`s, and the names typed for the
/// resource and environment actions.
#[derive(Default)]
struct ActionForm {
    action: String,
    uuids: Vec<String>,
    resources: String,
    environments: String,
}

impl ActionForm {
    /// Repeated `uuid` fields, which `axum::Form` cannot read into a list.
    fn parse(body: &[u8]) -> ActionForm {
        let mut form = ActionForm::default();
        for (key, value) in form_urlencoded::parse(body) {
            match &*key {
                "action" => form.action = value.into_owned(),
                "uuid" => form.uuids.push(value.into_owned()),
                "resources" => form.resources = value.into_owned(),
                "environments" => form.environments = value.into_owned(),
                _ => {}
            }
        }
        form
    }
}

fn split_names(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

/// Applies a page action to each selected agent on its own, through the same context
/// functions as the API, and says which agents were refused and why.
async fn action(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    body: Bytes,
) -> Markup {
    let form = ActionForm::parse(&body);
    if form.uuids.is_empty() {
        return fragments::action_result(
            "",
            &[("No agents".into(), "select at least one agent first".into())],
        );
    }
    let names = |raw: &str| split_names(raw);
    let verb = match form.action.as_str() {
        "enable" => "Enabled",
        "disable" => "Disabled",
        "delete" => "Deleted",
        "add_resources" | "remove_resources" | "add_environments" | "remove_environments" => {
            "Updated"
        }
        other => {
            return fragments::action_result(
                "",
                &[("Request".into(), format!("unknown action {other:?}"))],
            );
        }
    };
    let typed = if form.action.ends_with("resources") {
        &form.resources
    } else {
        &form.environments
    };
    if verb == "Updated" && names(typed).is_empty() {
        return fragments::action_result(
            "",
            &[(
                "No names".into(),
                "type one or more names, separated by commas".into(),
            )],
        );
    }

    let mut done = 0;
    let mut refused = Vec::new();
    for raw in &form.uuids {
        let Ok(uuid) = raw.parse::<Uuid>() else {
            refused.push((raw.clone(), "not an agent uuid".to_string()));
            continue;
        };
        let outcome = apply(&state, &actor.name, &form, uuid, &names(typed)).await;
        match outcome {
            Ok(()) => done += 1,
            Err(error) => {
                let who = match state.agents.get(uuid).await {
                    Ok(agent) => format!("{} ({})", agent.hostname, short(uuid)),
                    Err(_) => short(uuid),
                };
                refused.push((who, error.public_message()));
            }
        }
    }
    let message = if done > 0 {
        format!("{verb} {done} agent(s).")
    } else {
        String::new()
    };
    fragments::action_result(&message, &refused)
}

async fn apply(
    state: &AppState,
    actor: &str,
    form: &ActionForm,
    uuid: Uuid,
    names: &[String],
) -> Result<()> {
    let agents = &state.agents;
    let list_change = |add: bool| {
        let names = names.to_vec();
        if add {
            ListChange {
                add: names,
                remove: vec![],
            }
        } else {
            ListChange {
                add: vec![],
                remove: names,
            }
        }
    };
    match form.action.as_str() {
        "enable" | "disable" => {
            let to = if form.action == "enable" {
                ConfigState::Enabled
            } else {
                ConfigState::Disabled
            };
            agents
                .update(
                    uuid,
                    AgentUpdate {
                        config_state: Some(to),
                        ..Default::default()
                    },
                    actor,
                )
                .await?;
        }
        "delete" => {
            agents.get(uuid).await?;
            agents.delete(&[uuid], actor).await?;
        }
        "add_resources" | "remove_resources" => {
            let resources = list_change(form.action.starts_with("add"));
            agents
                .bulk_update(
                    BulkUpdate {
                        uuids: vec![uuid],
                        resources,
                        ..Default::default()
                    },
                    actor,
                )
                .await?;
        }
        "add_environments" | "remove_environments" => {
            let environments = list_change(form.action.starts_with("add"));
            agents
                .bulk_update(
                    BulkUpdate {
                        uuids: vec![uuid],
                        environments,
                        ..Default::default()
                    },
                    actor,
                )
                .await?;
        }
        other => return Err(Error::Unprocessable(format!("unknown action {other:?}"))),
    }
    Ok(())
}

/// The first block of a uuid, enough to tell agents apart in a message.
fn short(uuid: Uuid) -> String {
    uuid.to_string()[..8].to_string()
}
