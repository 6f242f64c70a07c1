//! "Trigger with options" (GoCD's ▶ with options): a form that picks a revision per git
//! material (the newest polled, or one of the last commits the server polled), overrides the
//! pipeline's environment variables and may poll the materials first. The card's button
//! opens it in the dashboard's `<dialog id="trigger-dialog">` (dashboard.js asks for the
//! form alone, with htmx's `HX-Request` header); without script the same link is a page of
//! its own. It posts to `/pipelines/{name}/schedule` like the card's ▶, with fields
//! `material:{fingerprint}`, `env:{NAME}` and `update_materials_before_scheduling`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::super::layout::{Section, page};
use super::super::{PageResult, fragment};
use crate::AppState;
use crate::domain::material::short_revision;
use crate::error::Error;
use crate::materials::MaterialChoice;
use crate::web::auth::CurrentUser;

/// How many of a material's newest commits the form offers.
const OFFERED_COMMITS: i64 = 25;

/// What the form shows of a pipeline.
struct Options {
    name: String,
    materials: Vec<MaterialChoice>,
    variables: BTreeMap<String, String>,
    paused: bool,
}

pub async fn options_page(
    State(state): State<AppState>,
    CurrentUser(viewer): CurrentUser,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> PageResult<Response> {
    let view = state.pipelines.view(&name).await?;
    let options = Options {
        materials: state
            .materials
            .choices(&view.config.name, OFFERED_COMMITS)
            .await?,
        variables: view.config.environment_variables.clone(),
        paused: view.state.paused,
        name: view.config.name,
    };
    if headers.contains_key("hx-request") {
        return Ok(fragment(form(&options)).into_response());
    }
    let body = html! {
        div.page-title {
            p.breadcrumb { a href="/pipelines" { "Pipelines" } " / " (options.name) }
        }
        section.card.trigger-page { (form(&options)) }
    };
    Ok(page(
        Some(&viewer),
        &format!("Trigger {} with options", options.name),
        Section::Pipelines,
        &[],
        body,
    )
    .into_response())
}

/// The form's fields, read from a posted body: variables, picked revisions, poll first.
pub struct Picked {
    pub variables: BTreeMap<String, String>,
    pub revisions: BTreeMap<String, String>,
    pub update_first: bool,
}

/// Reads the posted fields; a variable left at its configured value is not an override.
pub fn picked(body: &[u8], configured: &BTreeMap<String, String>) -> Result<Picked, Error> {
    let mut picked = Picked {
        variables: BTreeMap::new(),
        revisions: BTreeMap::new(),
        update_first: false,
    };
    for (key, value) in form_urlencoded::parse(body) {
        if let Some(variable) = key.strip_prefix("env:") {
            if configured.get(variable) != Some(&value.to_string()) {
                picked
                    .variables
                    .insert(variable.to_string(), value.into_owned());
            }
        } else if let Some(fingerprint) = key.strip_prefix("material:") {
            if !value.is_empty() {
                picked
                    .revisions
                    .insert(fingerprint.to_string(), value.into_owned());
            }
        } else if key == "update_materials_before_scheduling" {
            picked.update_first = value == "true";
        } else {
            return Err(Error::Unprocessable(format!(
                "the form: {key:?} is not a trigger option"
            )));
        }
    }
    Ok(picked)
}

fn form(options: &Options) -> Markup {
    let name = &options.name;
    html! {
        form #trigger-options method="post" action=(format!("/pipelines/{name}/schedule")) {
            h2 { "Trigger " (name) " with options" }
            @if options.paused {
                p.paused-note { "The pipeline is paused: unpause it to trigger it." }
            }
            fieldset {
                legend { "Materials" }
                @if options.materials.is_empty() {
                    p.empty-hint { "No git material: nothing to pick." }
                }
                @for m in &options.materials {
                    label.option-row {
                        span { strong { (m.name) } " " small { (m.url) " on " (m.branch) } }
                        select name=(format!("material:{}", m.fingerprint)) data-material=(m.name) {
                            option value="" { "The newest revision polled" }
                            @for c in &m.commits {
                                option value=(c.revision) {
                                    (short_revision(&c.revision)) " · "
                                    (c.message.lines().next().unwrap_or_default()) " · " (c.author)
                                }
                            }
                        }
                    }
                }
                label.option-check {
                    input type="checkbox" name="update_materials_before_scheduling" value="true";
                    " Poll the materials before triggering"
                }
            }
            fieldset {
                legend { "Environment variables" }
                @if options.variables.is_empty() {
                    p.empty-hint { "The pipeline defines no environment variables." }
                }
                @for (variable, value) in &options.variables {
                    label.option-row {
                        code { (variable) }
                        input type="text" name=(format!("env:{variable}")) value=(value);
                    }
                }
            }
            div.dialog-actions {
                button.btn.primary type="submit" disabled[options.paused] { "Trigger" }
                a.btn.dialog-close href="/pipelines" { "Cancel" }
            }
        }
    }
}
