//! `/pipelines`: the dashboard. Pipeline groups, a card per pipeline with its latest instance
//! and a block per stage in GoCD's colours, trigger, pause and approve buttons, config errors
//! above; and the one stream (`/pipelines/events`) that keeps every open copy current. The
//! buttons post forms to the routes here, which redirect back (a person's browser follows).

pub mod fragments;
pub mod live;
mod options;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, PreEscaped};
use serde::Deserialize;

use super::layout::{Section, page};
use super::{PageForm, PageResult};
use crate::AppState;
use crate::web::auth::{Credential, CurrentUser};
use crate::web::routes::Routes;
use crate::web::sse;

pub use live::DashboardView;

pub fn router() -> Routes {
    Routes::new()
        .get("/pipelines", Credential::User, dashboard_page)
        .get("/pipelines/events", Credential::User, events)
        .get(
            "/pipelines/{name}/trigger",
            Credential::User,
            options::options_page,
        )
        .post("/pipelines/{name}/schedule", Credential::User, trigger)
        .post("/pipelines/{name}/pause", Credential::User, pause)
        .post("/pipelines/{name}/unpause", Credential::User, unpause)
        .post("/pipelines/{name}/unlock", Credential::User, unlock)
        .post(
            "/pipelines/{name}/{pc}/{stage}/run",
            Credential::User,
            run_stage,
        )
}

async fn dashboard_page(
    State(state): State<AppState>,
    CurrentUser(viewer): CurrentUser,
) -> PageResult<Markup> {
    let views = state.pipelines.dashboard().await?;
    let snapshot = state.pipelines.configs().snapshot();
    let body = fragments::page(
        PreEscaped(live::body_of(&views)),
        fragments::config_errors(&snapshot),
    );
    Ok(page(
        Some(&viewer),
        "Pipelines",
        Section::Pipelines,
        &["dashboard.js"],
        body,
    ))
}

async fn events(State(state): State<AppState>, slot: sse::StreamSlot) -> Response {
    sse::response(state.dashboard_view.stream(), slot, state.shutdown.clone())
}

fn back() -> Response {
    Redirect::to("/pipelines").into_response()
}

/// The card's ▶ (no fields) and "trigger with options" (its form's fields).
async fn trigger(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> PageResult<Response> {
    let configured = state
        .pipelines
        .view(&name)
        .await?
        .config
        .environment_variables;
    let picked = options::picked(&body, &configured)?;
    state
        .materials
        .trigger_with_options(
            &name,
            &actor.name,
            picked.variables,
            &picked.revisions,
            picked.update_first,
        )
        .await?;
    Ok(back())
}

#[derive(Deserialize)]
struct PauseForm {
    #[serde(default)]
    pause_cause: String,
}

async fn pause(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path(name): Path<String>,
    PageForm(form): PageForm<PauseForm>,
) -> PageResult<Response> {
    state
        .pipelines
        .pause(&name, form.pause_cause.trim(), &actor.name)
        .await?;
    Ok(back())
}

async fn unpause(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path(name): Path<String>,
) -> PageResult<Response> {
    state.pipelines.unpause(&name, &actor.name).await?;
    Ok(back())
}

async fn unlock(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path(name): Path<String>,
) -> PageResult<Response> {
    state.pipelines.unlock(&name, &actor.name).await?;
    Ok(back())
}

async fn run_stage(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path((name, pc, stage)): Path<(String, String, String)>,
) -> PageResult<Response> {
    let counter = crate::web::api::pipeline_counter(&pc)?;
    state
        .pipelines
        .run_stage(&name, counter, &stage, &actor)
        .await?;
    Ok(back())
}
