//! `/agents/{uuid}/job_run_history`: one agent's runs, newest first, paged, kept current by
//! the `runs` event of `/agents/{uuid}/job_run_history/events`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use maud::{Markup, html};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::layout::{Section, page};
use super::{PageResult, fragment};
use crate::AppState;
use crate::agents::Agent;
use crate::error::Result;
use crate::events::Topic;
use crate::job_runs::{JobRun, JobState, RunPage, format_time};
use crate::web::api::agent_uuid;
use crate::web::sse::{self, Coalescer, KeyedViews, LiveView};

/// One live run list per (agent, offset, page size) that someone watches.
pub type RunsViews = KeyedViews<(Uuid, i64, i64), LiveView>;

const COALESCE: Duration = Duration::from_millis(50);
/// How often an idle view checks whether anyone still watches it.
const RETIRE_CHECK: Duration = Duration::from_secs(5);
const DEFAULT_PAGE_SIZE: i64 = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/agents/{uuid}/job_run_history", get(runs_page))
        .route("/agents/{uuid}/job_run_history/events", get(events))
}

#[derive(Deserialize)]
struct PageQuery {
    offset: Option<i64>,
    page_size: Option<i64>,
}

async fn runs_page(
    State(state): State<AppState>,
    Path(uuid): Path<String>,
    Query(query): Query<PageQuery>,
) -> PageResult<Markup> {
    let uuid = agent_uuid(&uuid)?;
    let agent = state.agents.get(uuid).await?;
    let history = state
        .job_runs
        .history(
            uuid,
            query.offset.unwrap_or(0).max(0),
            query.page_size.unwrap_or(DEFAULT_PAGE_SIZE),
        )
        .await?;
    let title = format!("{} job run history", agent.hostname);
    Ok(page(
        &title,
        Section::Agents,
        &["durations.js"],
        runs_body(&agent, &history),
    ))
}

async fn events(
    State(state): State<AppState>,
    Path(uuid): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response> {
    let uuid = agent_uuid(&uuid)?;
    let page_size = query.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
    let key = (uuid, query.offset.unwrap_or(0).max(0), page_size);
    state.job_runs.history(key.0, key.1, key.2).await?; // unknown agent or bad paging: 4xx now
    let views = Arc::clone(&state.runs_views);
    let stream = views.attach(key, || spawn_view(state.clone(), key), |view| view.stream());
    Ok(sse::response(stream, state.shutdown.clone()))
}

/// Renders the run list once per change (coalesced) for everyone watching it; retires itself
/// when nobody does.
fn spawn_view(state: AppState, key: (Uuid, i64, i64)) -> Arc<LiveView> {
    let view = LiveView::new();
    let mut events = state.hub.subscribe(&Topic::AgentJobRuns(key.0));
    let task_view = Arc::clone(&view);
    tokio::spawn(async move {
        let view = task_view;
        let mut coalescer = Coalescer::default();
        coalescer.mark();
        let mut retire = tokio::time::interval(RETIRE_CHECK);
        loop {
            let due = coalescer.due(COALESCE);
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Ok(_) | Err(RecvError::Lagged(_)) => coalescer.mark(),
                    Err(RecvError::Closed) => break,
                },
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    coalescer.rendered();
                    match state.job_runs.history(key.0, key.1, key.2).await {
                        Ok(history) => {
                            let frame = sse::frame("runs", &view.next_id(), &fragment(rows(&history.runs)));
                            view.set_state(vec![frame.clone()]);
                            view.send(frame);
                        }
                        Err(error) => tracing::warn!(%error, "run list view could not render"),
                    }
                }
                _ = retire.tick() => {
                    if state.runs_views.retire_if(&key, |v| v.watchers() == 0) {
                        break;
                    }
                }
            }
        }
    });
    view
}

fn runs_body(agent: &Agent, history: &RunPage) -> Markup {
    let events = format!(
        "/agents/{}/job_run_history/events?offset={}&page_size={}",
        agent.uuid, history.offset, history.page_size
    );
    let last = history.offset + history.runs.len() as i64;
    html! {
        div sse-connect=(events) {
            div.page-title {
                p.breadcrumb { a href="/agents" { "Agents" } " / " (agent.hostname) }
                h1 { "Job run history" small.subtitle { " " (agent.hostname) } }
            }
            section.card.table-card {
                table #runs-table {
                    thead {
                        tr {
                            th { "Pipeline" } th { "Stage" } th { "Job" } th { "Result" }
                            th { "State" } th { "Scheduled" } th { "Duration" }
                        }
                    }
                    tbody #runs-body sse-swap="runs" hx-swap="innerHTML" { (rows(&history.runs)) }
                }
                @if history.runs.is_empty() && history.offset == 0 {
                    p.empty-hint { "This agent has not run any job yet." }
                }
                nav.pager {
                    span { "Runs " (if history.total == 0 { 0 } else { history.offset + 1 }) "–" (last) " of " (history.total) }
                    @if history.offset > 0 {
                        a.btn.small href={ "?offset=" ((history.offset - history.page_size).max(0)) "&page_size=" (history.page_size) } { "Newer" }
                    }
                    @if last < history.total {
                        a.btn.small href={ "?offset=" (last) "&page_size=" (history.page_size) } { "Older" }
                    }
                }
            }
        }
    }
}

/// The result as GoCD colours it; a run still going shows its state.
pub fn result_class(run: &JobRun) -> &'static str {
    match (run.state, run.result.as_str()) {
        (JobState::Completed, "Passed") => "passed",
        (JobState::Completed, "Failed") => "failed",
        (JobState::Completed, "Cancelled") => "cancelled",
        (JobState::Scheduled, _) => "scheduled",
        _ => "building",
    }
}

/// The run list body (event `runs`).
pub fn rows(runs: &[JobRun]) -> Markup {
    html! {
        @for run in runs {
            @let href = format!("/agents/{}/job_run_history/{}", run.agent_uuid.map(|u| u.to_string()).unwrap_or_default(), run.build_id);
            tr id={ "run-" (run.build_id) } data-state=(run.state) data-result=(run.result) {
                td { a href=(href) { (run.pipeline_name) " / " (run.pipeline_counter) } }
                td { (run.stage_name) " / " (run.stage_counter) }
                td { a href=(href) { (run.job_name) } }
                td { span class={ "result result-" (result_class(run)) } { (run.result) } }
                td { (run.state) }
                td { (timestamp(run.scheduled_at)) }
                td { (duration(run)) }
            }
        }
    }
}

/// A moment as people read it ("2026-11-27 19:24:06 UTC"), machine-readable in `datetime`.
pub fn timestamp(millis: i64) -> Markup {
    let iso = format_time(millis);
    let shown = match iso.split_once('T') {
        Some((date, rest)) => format!("{date} {} UTC", &rest[..rest.len().min(8)]),
        None => iso.clone(),
    };
    html! { time datetime=(iso) { (shown) } }
}

/// From Building (or Assigned) to Completed; a running job's duration ticks in the browser.
pub fn duration(run: &JobRun) -> Markup {
    let started = run
        .entered(JobState::Building)
        .or(run.entered(JobState::Assigned));
    match (started, run.completed_at) {
        (Some(from), Some(to)) => html! { (format_duration(to - from)) },
        (Some(from), None) => {
            html! { span.ticking data-since=(from) { (format_duration(crate::db::now_millis() - from)) } }
        }
        _ => html! { "–" },
    }
}

pub fn format_duration(millis: i64) -> String {
    let secs = millis.max(0) / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!(
            "{}h {:02}m {:02}s",
            secs / 3600,
            secs % 3600 / 60,
            secs % 60
        ),
    }
}
