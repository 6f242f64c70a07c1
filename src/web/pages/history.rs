//! `/pipelines/{name}/history`: a pipeline's instances newest first, paged, each with its
//! stage blocks (rows `<tr id="instance-{pc}">`), kept current by the `history` event of
//! `/pipelines/{name}/history/events`: the card rendered once per change of that pipeline
//! for everyone watching that page of it.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::dashboard::fragments::stage_block;
use super::layout::{Section, page};
use super::{PageResult, fragment};
use crate::AppState;
use crate::error::Result;
use crate::events::{DomainEvent, Topic};
use crate::pipelines::{InstanceView, Pipelines};
use crate::web::auth::{Credential, CurrentUser};
use crate::web::live::{KeyedViews, Part, PartView};
use crate::web::pages::runs::timestamp;
use crate::web::routes::Routes;
use crate::web::sse;

/// Which history page: the pipeline (as configured, lower-cased) and the offset.
pub type HistoryKey = (String, i64);

/// One live history card per (pipeline, offset) that someone watches.
pub type HistoryViews = KeyedViews<HistoryKey, PartView>;

const PAGE_SIZE: i64 = 20;

pub fn router() -> Routes {
    Routes::new()
        .get("/pipelines/{name}/history", Credential::User, history_page)
        .get("/pipelines/{name}/history/events", Credential::User, events)
}

#[derive(Deserialize)]
struct PageQuery {
    offset: Option<i64>,
}

/// The page's data: the instances of one page of the history and how many there are.
struct History {
    name: String,
    offset: i64,
    instances: Vec<InstanceView>,
    total: i64,
}

async fn read(pipelines: &Pipelines, name: &str, offset: i64) -> Result<History> {
    let (instances, total) = pipelines.history(name, offset, PAGE_SIZE).await?;
    let name = pipelines
        .configs()
        .snapshot()
        .pipeline(name)
        .map_or_else(|| name.to_string(), |p| p.name.clone());
    Ok(History {
        name,
        offset,
        instances,
        total,
    })
}

async fn history_page(
    State(state): State<AppState>,
    CurrentUser(viewer): CurrentUser,
    Path(name): Path<String>,
    Query(query): Query<PageQuery>,
) -> PageResult<Markup> {
    let offset = query.offset.unwrap_or(0).max(0);
    let history = read(&state.pipelines, &name, offset).await?;
    let events = format!("/pipelines/{}/history/events?offset={offset}", history.name);
    let body = html! {
        div sse-connect=(events) {
            div.page-title {
                p.breadcrumb { a href="/pipelines" { "Pipelines" } " / " (history.name) }
                h1 { "History of " (history.name) }
            }
            section.card #history sse-swap="history" { (card(&history)) }
        }
    };
    Ok(page(
        Some(&viewer),
        &format!("{} history", history.name),
        Section::Pipelines,
        &[],
        body,
    ))
}

async fn events(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<PageQuery>,
    slot: sse::StreamSlot,
) -> Result<Response> {
    let offset = query.offset.unwrap_or(0).max(0);
    let history = read(&state.pipelines, &name, offset).await?; // unknown pipeline: 404 now
    let key = (history.name.to_lowercase(), offset);
    let part = || HistoryCard {
        pipelines: state.pipelines.clone(),
        name: history.name.clone(),
        offset,
    };
    let stream = PartView::connect(
        &state.history_views,
        key,
        &state.hub,
        &[Topic::PipelinesUpdates],
        &state.renders,
        &state.shutdown,
        part,
    );
    Ok(sse::response(stream, slot, state.shutdown.clone()))
}

/// One page of one pipeline's history, rendered whole on any change to that pipeline.
struct HistoryCard {
    pipelines: Pipelines,
    name: String,
    offset: i64,
}

impl Part for HistoryCard {
    const EVENT: &'static str = "history";
    const COUNTED_AS: &'static str = "history.card";

    fn hears(&self, event: &DomainEvent) -> bool {
        match event {
            DomainEvent::PipelineUpdated { pipeline, .. } => {
                pipeline.eq_ignore_ascii_case(&self.name)
            }
            _ => false,
        }
    }

    async fn render(&mut self) -> Result<String> {
        let history = read(&self.pipelines, &self.name, self.offset).await?;
        Ok(fragment(card(&history)))
    }
}

/// The history card (event `history`): the instances and the pager.
fn card(history: &History) -> Markup {
    let name = &history.name;
    let offset = history.offset;
    let last = offset + history.instances.len() as i64;
    html! {
        table #history-table.data-table {
            thead { tr { th { "Instance" } th { "Triggered" } th { "Stages" } } }
            tbody {
                @for view in &history.instances { (instance_row(name, view)) }
            }
        }
        @if history.total == 0 {
            p.empty-hint { "This pipeline has not run yet." }
        }
        nav.pager {
            span { "Instances " (if history.total == 0 { 0 } else { offset + 1 }) "–" (last) " of " (history.total) }
            @if offset > 0 {
                a.btn.small href=(format!("?offset={}", (offset - PAGE_SIZE).max(0))) { "Newer" }
            }
            @if last < history.total {
                a.btn.small href=(format!("?offset={last}")) { "Older" }
            }
        }
    }
}

fn instance_row(name: &str, view: &InstanceView) -> Markup {
    let counter = view.instance.counter;
    html! {
        tr id=(format!("instance-{counter}")) {
            td.instance-label {
                a href=(format!("/pipelines/{name}/{counter}/build_cause")) title="Build cause" { (view.instance.label) }
            }
            td { "by " (view.instance.triggered_by) " at " (timestamp(view.instance.created_at)) }
            td {
                div.stages {
                    @for stage in &view.stages { (stage_block(name, counter, stage)) }
                }
            }
        }
    }
}
