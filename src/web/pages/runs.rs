//! `/agents/{uuid}/job_run_history`: one agent's runs, newest first, paged, kept current by
//! the `runs` event of `/agents/{uuid}/job_run_history/events`.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use super::layout::{Section, page};
use super::{PageResult, fragment};
use crate::AppState;
use crate::domain::agent::Agent;
use crate::domain::job_run::{JobRun, JobState};
use crate::error::Result;
use crate::events::{DomainEvent, Topic};
use crate::job_runs::{JobRuns, RunPage};
use crate::web::api::agent_uuid;
use crate::web::auth::{Credential, CurrentUser};
use crate::web::format_time;
use crate::web::live::{KeyedViews, Part, PartView};
use crate::web::routes::Routes;
use crate::web::sse;

/// Which run list: an agent's, from `offset`, `page_size` runs.
pub type RunsKey = (Uuid, i64, i64);

/// One live run list per (agent, offset, page size) that someone watches.
pub type RunsViews = KeyedViews<RunsKey, PartView>;

const DEFAULT_PAGE_SIZE: i64 = 50;

pub fn router() -> Routes {
    Routes::new()
        .get(
            "/agents/{uuid}/job_run_history",
            Credential::User,
            runs_page,
        )
        .get(
            "/agents/{uuid}/job_run_history/events",
            Credential::User,
            events,
        )
}

#[derive(Deserialize)]
struct PageQuery {
    offset: Option<i64>,
    page_size: Option<i64>,
}

async fn runs_page(
    State(state): State<AppState>,
    CurrentUser(viewer): CurrentUser,
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
        Some(&viewer),
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
    slot: sse::StreamSlot,
) -> Result<Response> {
    let uuid = agent_uuid(&uuid)?;
    let page_size = query.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
    let key = (uuid, query.offset.unwrap_or(0).max(0), page_size);
    state.job_runs.history(key.0, key.1, key.2).await?; // unknown agent or bad paging: 4xx now
    let part = || RunList {
        job_runs: state.job_runs.clone(),
        key,
    };
    let topics = [Topic::AgentJobRuns(key.0)];
    let stream = PartView::connect(
        &state.runs_views,
        key,
        &state.hub,
        &topics,
        &state.renders,
        &state.shutdown,
        part,
    );
    Ok(sse::response(stream, slot, state.shutdown.clone()))
}

/// One run list, rendered whole on any change to its agent's runs.
struct RunList {
    job_runs: JobRuns,
    key: RunsKey,
}

impl Part for RunList {
    const EVENT: &'static str = "runs";
    const COUNTED_AS: &'static str = "runs.list";

    fn hears(&self, _: &DomainEvent) -> bool {
        true
    }

    async fn render(&mut self) -> Result<String> {
        let (agent, offset, page_size) = self.key;
        let history = self.job_runs.history(agent, offset, page_size).await?;
        Ok(fragment(rows(&history.runs)))
    }
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
