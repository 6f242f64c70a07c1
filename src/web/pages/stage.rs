//! `/pipelines/{name}/{pc}/{stage}/{sc}`: one stage run. Its jobs with state, result, agent
//! and duration, each linking to its run page (`<table id="jobs-table">`, rows
//! `<tr id="job-{name}" data-state data-result>`); why each Scheduled job waits; cancel,
//! re-run the stage, re-run its failed or selected jobs. Kept current by the `stage` event of
//! `…/{sc}/events`: the card rendered once per change for everyone watching that run. It
//! hears its instance's changes, its jobs' moves and artifacts, and (while a job waits) every
//! agent's. What the jobs' JUnit reports say shows per job and added up.

use std::collections::{HashMap, HashSet};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::build::fragments::waiting_list;
use super::build::tabs::test_summary;
use super::dashboard::fragments::status_class;
use super::layout::{Section, page};
use super::{PageForm, PageResult, fragment};
use crate::AppState;
use crate::agents::Agents;
use crate::artifacts::Artifacts;
use crate::domain::agent::{WaitReason, why_waiting};
use crate::domain::job_run::{JobResult, JobState};
use crate::domain::test_report::TestSummary;
use crate::error::{Error, Result};
use crate::events::{DomainEvent, Topic};
use crate::pipelines::{JobSelection, Pipelines, StageView};
use crate::web::api::pipeline_counter;
use crate::web::auth::{Credential, CurrentUser};
use crate::web::live::{KeyedViews, Part, PartView};
use crate::web::pages::runs::{duration, result_class, timestamp};
use crate::web::routes::Routes;
use crate::web::sse;

/// Which stage run: pipeline and stage (as configured, lower-cased) and their counters.
pub type StageKey = (String, i64, String, i64);

/// One live stage card per stage run that someone watches.
pub type StageViews = KeyedViews<StageKey, PartView>;

pub fn router() -> Routes {
    Routes::new()
        .get(
            "/pipelines/{name}/{pc}/{stage}/{sc}",
            Credential::User,
            stage_page,
        )
        .get(
            "/pipelines/{name}/{pc}/{stage}/{sc}/events",
            Credential::User,
            events,
        )
        .post(
            "/pipelines/{name}/{pc}/{stage}/{sc}/cancel",
            Credential::User,
            cancel,
        )
        .post(
            "/pipelines/{name}/{pc}/{stage}/{sc}/run-failed-jobs",
            Credential::User,
            run_failed_jobs,
        )
        .post(
            "/pipelines/{name}/{pc}/{stage}/{sc}/run-selected-jobs",
            Credential::User,
            run_selected_jobs,
        )
}

type StagePath = Path<(String, String, String, String)>;

/// A stage run as the page shows it: the run, per Scheduled job why it waits, and per job
/// what its test reports say.
struct Shown {
    view: StageView,
    waiting: Vec<(String, Vec<WaitReason>)>,
    tests: HashMap<String, TestSummary>,
    /// When its jobs' artifacts were purged, if they were.
    purged_at: Option<i64>,
}

async fn read(
    (pipelines, agents, artifacts): (&Pipelines, &Agents, &Artifacts),
    (name, pc, stage, sc): &(String, i64, String, i64),
) -> Result<Shown> {
    let view = pipelines.stage(name, *pc, stage, *sc).await?;
    // A job not re-run shows its original's reports.
    let builds: HashMap<i64, &str> = view
        .jobs
        .iter()
        .map(|j| (j.copied_from.unwrap_or(j.build_id), j.job_name.as_str()))
        .collect();
    let ids: Vec<i64> = builds.keys().copied().collect();
    let mut tests: HashMap<String, TestSummary> = HashMap::new();
    for (build_id, _, report) in artifacts.test_reports(&ids).await? {
        if let Some(job) = builds.get(&build_id) {
            tests.entry(job.to_string()).or_default().add(&report);
        }
    }
    let scheduled: Vec<_> = view
        .jobs
        .iter()
        .filter(|j| j.state == JobState::Scheduled)
        .collect();
    let waiting = if scheduled.is_empty() {
        Vec::new()
    } else {
        let all = agents.list().await?;
        scheduled
            .iter()
            .map(|j| (j.job_name.clone(), why_waiting(&j.requirements(), &all)))
            .collect()
    };
    let purged_at = artifacts.last_purge_among(&ids).await?;
    Ok(Shown {
        view,
        waiting,
        tests,
        purged_at,
    })
}

fn counters(pc: &str, sc: &str) -> Result<(i64, i64)> {
    Ok((pipeline_counter(pc)?, pipeline_counter(sc)?))
}

async fn stage_page(
    State(state): State<AppState>,
    CurrentUser(viewer): CurrentUser,
    Path((name, pc, stage, sc)): StagePath,
) -> PageResult<Markup> {
    let (pc, sc) = counters(&pc, &sc)?;
    let shown = read(
        (&state.pipelines, &state.agents, &state.artifacts),
        &(name, pc, stage, sc),
    )
    .await?;
    let view = &shown.view;
    let pipeline = &view.instance.pipeline_name;
    let stage_name = &view.summary.name;
    let events = format!("/pipelines/{pipeline}/{pc}/{stage_name}/{sc}/events");
    let body = html! {
        div sse-connect=(events) {
            div.page-title {
                p.breadcrumb {
                    a href="/pipelines" { "Pipelines" } " / "
                    a href=(format!("/pipelines/{pipeline}/history")) { (pipeline) }
                }
                h1 { (pipeline) " / " (view.instance.label) " / " (stage_name) " / " (sc) }
            }
            section.card #stage sse-swap="stage" { (card(&shown)) }
        }
    };
    Ok(page(
        Some(&viewer),
        &format!("{pipeline}/{pc}/{stage_name}/{sc}"),
        Section::Pipelines,
        &["durations.js"],
        body,
    ))
}

async fn events(
    State(state): State<AppState>,
    Path((name, pc, stage, sc)): StagePath,
    slot: sse::StreamSlot,
) -> Result<Response> {
    let (pc, sc) = counters(&pc, &sc)?;
    // An unknown stage run is a 404 now, and its names as configured make the key.
    let view = state.pipelines.stage(&name, pc, &stage, sc).await?;
    let names = (
        view.instance.pipeline_name.clone(),
        pc,
        view.summary.name.clone(),
        sc,
    );
    let key = (names.0.to_lowercase(), pc, names.2.to_lowercase(), sc);
    let part = || StageCard {
        pipelines: state.pipelines.clone(),
        agents: state.agents.clone(),
        artifacts: state.artifacts.clone(),
        names,
        build_ids: HashSet::new(),
        waits: false,
    };
    let topics = [
        Topic::PipelinesUpdates,
        Topic::JobRunsUpdates,
        Topic::AgentsUpdates,
    ];
    let stream = PartView::connect(
        &state.stage_views,
        key,
        &state.hub,
        &topics,
        &state.renders,
        &state.shutdown,
        part,
    );
    Ok(sse::response(stream, slot, state.shutdown.clone()))
}

/// One stage run's card. What it heard last render decides what it listens to: its jobs'
/// build ids, and whether any job waits (then every agent's change matters).
struct StageCard {
    pipelines: Pipelines,
    agents: Agents,
    artifacts: Artifacts,
    names: (String, i64, String, i64),
    build_ids: HashSet<i64>,
    waits: bool,
}

impl Part for StageCard {
    const EVENT: &'static str = "stage";
    const COUNTED_AS: &'static str = "stage.card";

    fn hears(&self, event: &DomainEvent) -> bool {
        match event {
            DomainEvent::PipelineUpdated {
                pipeline, counter, ..
            } => pipeline.eq_ignore_ascii_case(&self.names.0) && *counter == Some(self.names.1),
            DomainEvent::RunUpdated { build_id }
            | DomainEvent::RunCreated { build_id }
            | DomainEvent::ArtifactsChanged { build_id } => self.build_ids.contains(build_id),
            DomainEvent::AgentRegistered { .. }
            | DomainEvent::AgentUpdated { .. }
            | DomainEvent::AgentEnabled { .. }
            | DomainEvent::AgentDisabled { .. }
            | DomainEvent::AgentDeleted { .. } => self.waits,
            _ => false,
        }
    }

    async fn render(&mut self) -> Result<String> {
        let shown = read(
            (&self.pipelines, &self.agents, &self.artifacts),
            &self.names,
        )
        .await?;
        // A copy's artifacts are its original's: their changes matter too.
        self.build_ids = shown
            .view
            .jobs
            .iter()
            .flat_map(|j| [Some(j.build_id), j.copied_from])
            .flatten()
            .collect();
        self.waits = !shown.waiting.is_empty();
        Ok(fragment(card(&shown)))
    }
}

/// The stage card (event `stage`): status, actions, jobs, and why the waiting ones wait.
fn card(shown: &Shown) -> Markup {
    let view = &shown.view;
    let pipeline = &view.instance.pipeline_name;
    let counter = view.instance.counter;
    let stage = &view.summary.name;
    let sc = view.run.stage_counter;
    let base = format!("/pipelines/{pipeline}/{counter}/{stage}/{sc}");
    let finished = view.summary.status.is_finished();
    let latest = view.latest_counter == sc;
    let may_rerun = finished && latest && !view.instance_running;
    let any_failed = view.jobs.iter().any(|j| j.result == JobResult::Failed);
    html! {
        p {
            span #stage-status class={ "badge badge-" (status_class(view.summary.status)) }
                data-status=(view.summary.status.as_str()) { (view.summary.status) }
            " triggered by " (view.run.triggered_by) " at " (timestamp(view.run.scheduled_at))
            @if let Some(by) = &view.run.cancelled_by { " · cancelled by " (by) }
        }
        @if !latest {
            p.newer-run {
                "This stage has run again since: "
                a href=(format!("/pipelines/{pipeline}/{counter}/{stage}/{}", view.latest_counter)) {
                    "run " (view.latest_counter)
                }
            }
        }
        div.stage-actions {
            @if !finished {
                form method="post" action=(format!("{base}/cancel")) {
                    button.btn.danger.small type="submit" { "Cancel stage" }
                }
            }
            @if may_rerun {
                form method="post" action=(format!("/pipelines/{pipeline}/{counter}/{stage}/run")) {
                    button.btn.small type="submit" { "Re-run stage" }
                }
                @if any_failed {
                    form method="post" action=(format!("{base}/run-failed-jobs")) {
                        button.btn.small type="submit" { "Re-run failed jobs" }
                    }
                }
                form #rerun-selected method="post" action=(format!("{base}/run-selected-jobs")) {
                    button.btn.small type="submit" { "Re-run selected jobs" }
                }
            }
        }
        table #jobs-table.data-table {
            thead {
                tr {
                    @if may_rerun { th { span.sr-only { "Select" } } }
                    th { "Job" } th { "State" } th { "Result" } th { "Tests" } th { "Agent" } th { "Duration" }
                }
            }
            tbody {
                @for run in &view.jobs {
                    tr id=(format!("job-{}", run.job_name)) data-state=(run.state) data-result=(run.result) {
                        @if may_rerun {
                            td {
                                input type="checkbox" name="jobs" value=(run.job_name) form="rerun-selected"
                                    id=(format!("select-{}", run.job_name)) hx-preserve
                                    aria-label=(format!("Select {}", run.job_name));
                            }
                        }
                        td {
                            a href=(format!("/builds/{}", run.build_id)) { (run.job_name) }
                            @if run.copied_from.is_some() { " " small.copied { "(not re-run)" } }
                        }
                        td { (run.state) }
                        td { span class={ "result result-" (result_class(run)) } { (run.result) } }
                        td.job-tests {
                            @match shown.tests.get(&run.job_name) {
                                Some(t) => {
                                    (t.passed()) " passed"
                                    @if t.failed() > 0 { ", " span.failed-count { (t.failed()) " failed" } }
                                }
                                None => "—",
                            }
                        }
                        td {
                            @match run.agent_uuid {
                                Some(uuid) => a href=(format!("/agents/{uuid}/job_run_history")) { (uuid) },
                                None => "—",
                            }
                        }
                        td { (duration(run)) }
                    }
                }
            }
        }
        @if let Some(at) = shown.purged_at {
            p.empty-hint.purged #stage-purged {
                "This stage run's artifacts were purged " (timestamp(at))
                " to keep the disk in check (" code { "--artifacts-keep" } ")."
            }
        }
        @if !shown.tests.is_empty() {
            section #stage-tests {
                h3 { "Tests" }
                (test_summary(&stage_total(&shown.tests)))
            }
        }
        @for (job, reasons) in &shown.waiting {
            section.waiting id=(format!("waiting-{job}")) {
                h3 { "Why is " (job) " waiting?" }
                (waiting_list(reasons))
            }
        }
    }
}

/// Every job's test reports added up, in job order.
fn stage_total(tests: &HashMap<String, TestSummary>) -> TestSummary {
    let mut jobs: Vec<_> = tests.iter().collect();
    jobs.sort_by(|a, b| a.0.cmp(b.0));
    let mut total = TestSummary::default();
    for (_, summary) in jobs {
        total.add(summary);
    }
    total
}

async fn cancel(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path((name, pc, stage, sc)): StagePath,
) -> PageResult<Response> {
    let (pc, sc) = counters(&pc, &sc)?;
    state
        .pipelines
        .cancel_stage(&name, pc, &stage, sc, &actor.name)
        .await?;
    Ok(Redirect::to(&format!("/pipelines/{name}/{pc}/{stage}/{sc}")).into_response())
}

async fn run_failed_jobs(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path((name, pc, stage, sc)): StagePath,
) -> PageResult<Response> {
    let (pc, sc) = counters(&pc, &sc)?;
    let next = state
        .pipelines
        .rerun_jobs(&name, pc, &stage, sc, JobSelection::Failed, &actor)
        .await?;
    Ok(Redirect::to(&format!("/pipelines/{name}/{pc}/{stage}/{next}")).into_response())
}

/// The form's checked `jobs` (each a field of its own, as a browser sends checkboxes).
async fn run_selected_jobs(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path((name, pc, stage, sc)): StagePath,
    PageForm(fields): PageForm<Vec<(String, String)>>,
) -> PageResult<Response> {
    let (pc, sc) = counters(&pc, &sc)?;
    let jobs: Vec<String> = fields
        .into_iter()
        .filter(|(field, _)| field == "jobs")
        .map(|(_, job)| job)
        .collect();
    if jobs.is_empty() {
        return Err(Error::Unprocessable("select at least one job to re-run".into()).into());
    }
    let next = state
        .pipelines
        .rerun_jobs(&name, pc, &stage, sc, JobSelection::Named(jobs), &actor)
        .await?;
    Ok(Redirect::to(&format!("/pipelines/{name}/{pc}/{stage}/{next}")).into_response())
}
