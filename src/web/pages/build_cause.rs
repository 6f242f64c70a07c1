//! `/pipelines/{name}/{pc}/build_cause`: what an instance was built from. Who or what
//! triggered it, its stages, and per git material the revision it runs, whether it changed,
//! and the modifications since the previous instance (`<section id="material-{name}">`, each
//! commit a row `<tr class="modification" data-revision>` with author, time, message and
//! files). The materials part never changes once the instance exists; the stages do, so the
//! card is kept current by the `build_cause` event of `…/build_cause/events`, rendered once
//! per change of that instance for everyone watching it.

use axum::extract::{Path, State};
use axum::response::Response;
use maud::{Markup, html};

use super::dashboard::fragments::stage_block;
use super::layout::{Section, page};
use super::{PageResult, fragment};
use crate::AppState;
use crate::domain::material::{MaterialRevision, Modification, short_revision};
use crate::error::Result;
use crate::events::{DomainEvent, Topic};
use crate::materials::Materials;
use crate::pipelines::{InstanceView, Pipelines};
use crate::web::api::pipeline_counter;
use crate::web::auth::{Credential, CurrentUser};
use crate::web::live::{KeyedViews, Part, PartView};
use crate::web::pages::runs::timestamp;
use crate::web::routes::Routes;
use crate::web::sse;

/// Which instance: the pipeline (as configured, lower-cased) and its counter.
pub type BuildCauseKey = (String, i64);

/// One live build cause card per instance that someone watches.
pub type BuildCauseViews = KeyedViews<BuildCauseKey, PartView>;

pub fn router() -> Routes {
    Routes::new()
        .get(
            "/pipelines/{name}/{pc}/build_cause",
            Credential::User,
            build_cause_page,
        )
        .get(
            "/pipelines/{name}/{pc}/build_cause/events",
            Credential::User,
            events,
        )
}

/// The page's data: the instance, and per material revision its modifications.
struct Cause {
    view: InstanceView,
    modifications: Vec<Vec<Modification>>,
}

async fn read(pipelines: &Pipelines, materials: &Materials, name: &str, pc: i64) -> Result<Cause> {
    let view = pipelines.instance(name, pc).await?;
    let modifications = materials
        .modifications(&view.instance.material_revisions)
        .await?;
    Ok(Cause {
        view,
        modifications,
    })
}

async fn build_cause_page(
    State(state): State<AppState>,
    CurrentUser(viewer): CurrentUser,
    Path((name, pc)): Path<(String, String)>,
) -> PageResult<Markup> {
    let pc = pipeline_counter(&pc)?;
    let cause = read(&state.pipelines, &state.materials, &name, pc).await?;
    let instance = &cause.view.instance;
    let pipeline = &instance.pipeline_name;
    let events = format!("/pipelines/{pipeline}/{pc}/build_cause/events");
    let body = html! {
        div sse-connect=(events) {
            div.page-title {
                p.breadcrumb {
                    a href="/pipelines" { "Pipelines" } " / "
                    a href=(format!("/pipelines/{pipeline}/history")) { (pipeline) }
                    " / " (instance.label)
                }
                h1 { "Build cause of " (pipeline) " " (instance.label) }
            }
            section.card #build-cause sse-swap="build_cause" { (card(&cause)) }
        }
    };
    Ok(page(
        Some(&viewer),
        &format!("{pipeline}/{pc} build cause"),
        Section::Pipelines,
        &[],
        body,
    ))
}

async fn events(
    State(state): State<AppState>,
    Path((name, pc)): Path<(String, String)>,
    slot: sse::StreamSlot,
) -> Result<Response> {
    let pc = pipeline_counter(&pc)?;
    // An unknown instance is a 404 now; its name as stored makes the key.
    let cause = read(&state.pipelines, &state.materials, &name, pc).await?;
    let pipeline = cause.view.instance.pipeline_name.clone();
    let key = (pipeline.to_lowercase(), pc);
    let part = || BuildCauseCard {
        pipelines: state.pipelines.clone(),
        materials: state.materials.clone(),
        name: pipeline.clone(),
        counter: pc,
    };
    let stream = PartView::connect(
        &state.build_cause_views,
        key,
        &state.hub,
        &[Topic::PipelinesUpdates],
        &state.renders,
        &state.shutdown,
        part,
    );
    Ok(sse::response(stream, slot, state.shutdown.clone()))
}

/// One instance's build cause, rendered whole on any change to it.
struct BuildCauseCard {
    pipelines: Pipelines,
    materials: Materials,
    name: String,
    counter: i64,
}

impl Part for BuildCauseCard {
    const EVENT: &'static str = "build_cause";
    const COUNTED_AS: &'static str = "build_cause.card";

    /// Its instance's changes (and the pipeline's own, which name no instance).
    fn hears(&self, event: &DomainEvent) -> bool {
        match event {
            DomainEvent::PipelineUpdated {
                pipeline, counter, ..
            } => {
                pipeline.eq_ignore_ascii_case(&self.name)
                    && counter.is_none_or(|c| c == self.counter)
            }
            _ => false,
        }
    }

    async fn render(&mut self) -> Result<String> {
        let cause = read(&self.pipelines, &self.materials, &self.name, self.counter).await?;
        Ok(fragment(card(&cause)))
    }
}

/// The card (event `build_cause`): trigger, stages, materials.
fn card(cause: &Cause) -> Markup {
    let instance = &cause.view.instance;
    let pipeline = &instance.pipeline_name;
    html! {
        p.triggered {
            "Triggered by " strong { (instance.triggered_by) } " at " (timestamp(instance.created_at))
        }
        div.stages {
            @for stage in &cause.view.stages { (stage_block(pipeline, instance.counter, stage)) }
        }
        @if instance.material_revisions.is_empty() {
            p.empty-hint { "No git material: nothing was checked out for this instance." }
        }
        @for (revision, modifications) in instance.material_revisions.iter().zip(&cause.modifications) {
            (material(revision, modifications))
        }
    }
}

fn material(r: &MaterialRevision, modifications: &[Modification]) -> Markup {
    html! {
        section.material id=(format!("material-{}", r.material)) data-changed=(r.changed) {
            h2 {
                (r.material) " "
                @if r.changed { span.badge.changed { "changed" } } @else { span.badge.unchanged { "unchanged" } }
            }
            p.material-source { code { (r.url) } " on " code { (r.branch) } " at " code title=(r.revision) { (short_revision(&r.revision)) } }
            @if modifications.is_empty() {
                p.empty-hint { "The server has no record of this revision's commit." }
            } @else {
                table.data-table.modifications {
                    thead { tr { th { "Revision" } th { "Author" } th { "Committed" } th { "Message" } th { "Files" } } }
                    tbody {
                        @for m in modifications {
                            tr.modification data-revision=(m.revision) {
                                td { code title=(m.revision) { (short_revision(&m.revision)) } }
                                td { (m.author) }
                                td { (timestamp(m.time)) }
                                td.message { pre { (m.message) } }
                                td.files {
                                    @if m.files.is_empty() { "—" } @else {
                                        details {
                                            summary { (m.files.len()) @if m.files.len() == 1 { " file" } @else { " files" } }
                                            ul { @for f in &m.files { li { code { (f) } } } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
