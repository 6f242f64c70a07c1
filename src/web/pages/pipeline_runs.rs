//! A pipeline's history (`/pipelines/{name}/history`: instances newest first, paged, each
//! with its stage blocks) and one stage run (`/pipelines/{name}/{pc}/{stage}/{sc}`: its jobs
//! with state, result, agent and duration, each linking to its run page, with cancel and
//! re-run buttons). Both are read when opened; the dashboard is the live page (these pages
//! becoming live is the next step, noted in docs/API.md).

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::PageResult;
use super::layout::{Section, page};
use crate::AppState;
use crate::domain::job_run::JobState;
use crate::pipelines::InstanceView;
use crate::web::api::pipeline_counter;
use crate::web::auth::{Credential, CurrentUser};
use crate::web::format_time;
use crate::web::pages::runs::result_class;
use crate::web::routes::Routes;

pub fn router() -> Routes {
    Routes::new()
        .get("/pipelines/{name}/history", Credential::User, history_page)
        .get(
            "/pipelines/{name}/{pc}/{stage}/{sc}",
            Credential::User,
            stage_page,
        )
        .post(
            "/pipelines/{name}/{pc}/{stage}/{sc}/cancel",
            Credential::User,
            cancel,
        )
}

#[derive(Deserialize)]
struct PageQuery {
    offset: Option<i64>,
}

const PAGE_SIZE: i64 = 20;

async fn history_page(
    State(state): State<AppState>,
    CurrentUser(viewer): CurrentUser,
    Path(name): Path<String>,
    Query(query): Query<PageQuery>,
) -> PageResult<Markup> {
    let offset = query.offset.unwrap_or(0).max(0);
    let (instances, total) = state.pipelines.history(&name, offset, PAGE_SIZE).await?;
    let body = html! {
        div.page-title { h1 { "History of " (name) } }
        section.card {
            table #history-table.data-table {
                thead { tr { th { "Instance" } th { "Triggered" } th { "Stages" } } }
                tbody {
                    @for view in &instances { (instance_row(&name, view)) }
                }
            }
            p.pager {
                @if offset > 0 {
                    a href=(format!("?offset={}", (offset - PAGE_SIZE).max(0))) { "Newer" } " "
                }
                @if offset + PAGE_SIZE < total {
                    a href=(format!("?offset={}", offset + PAGE_SIZE)) { "Older" }
                }
            }
        }
    };
    Ok(page(
        Some(&viewer),
        &format!("{name} history"),
        Section::Pipelines,
        &[],
        body,
    ))
}

fn instance_row(name: &str, view: &InstanceView) -> Markup {
    let counter = view.instance.counter;
    html! {
        tr id=(format!("instance-{counter}")) {
            td { (view.instance.label) }
            td { "by " (view.instance.triggered_by) " at " (format_time(view.instance.created_at)) }
            td {
                div.stages {
                    @for stage in &view.stages {
                        div class={ "stage stage-" (stage_class(stage.status.as_str())) }
                            data-stage=(stage.name) data-status=(stage.status.as_str()) {
                            @match stage.counter {
                                Some(sc) => a href=(format!("/pipelines/{name}/{counter}/{}/{sc}", stage.name)) { span.stage-name { (stage.name) } },
                                None => span.stage-name { (stage.name) },
                            }
                        }
                    }
                }
            }
        }
    }
}

fn stage_class(status: &str) -> String {
    match status {
        "NotRun" => "not-run".into(),
        other => other.to_lowercase(),
    }
}

async fn stage_page(
    State(state): State<AppState>,
    CurrentUser(viewer): CurrentUser,
    Path((name, pc, stage, sc)): Path<(String, String, String, String)>,
) -> PageResult<Markup> {
    let view = state
        .pipelines
        .stage(
            &name,
            pipeline_counter(&pc)?,
            &stage,
            pipeline_counter(&sc)?,
        )
        .await?;
    let pipeline = &view.instance.pipeline_name;
    let counter = view.instance.counter;
    let stage_name = &view.summary.name;
    let stage_counter = view.run.stage_counter;
    let finished = view.summary.status.is_finished();
    let body = html! {
        div.page-title {
            h1 {
                a href=(format!("/pipelines/{pipeline}/history")) { (pipeline) }
                " / " (view.instance.label) " / " (stage_name) " / " (stage_counter)
            }
        }
        section.card {
            p {
                span #stage-status class={ "badge badge-" (stage_class(view.summary.status.as_str())) } data-status=(view.summary.status.as_str()) { (view.summary.status) }
                " triggered by " (view.run.triggered_by) " at " (format_time(view.run.scheduled_at))
                @if let Some(by) = &view.run.cancelled_by { " · cancelled by " (by) }
            }
            div.stage-actions {
                @if !finished {
                    form method="post" action=(format!("/pipelines/{pipeline}/{counter}/{stage_name}/{stage_counter}/cancel")) {
                        button type="submit" { "Cancel stage" }
                    }
                } @else {
                    form method="post" action=(format!("/pipelines/{pipeline}/{counter}/{stage_name}/run")) {
                        button type="submit" { "Re-run stage" }
                    }
                }
            }
            table #jobs-table.data-table {
                thead { tr { th { "Job" } th { "State" } th { "Result" } th { "Agent" } th { "Duration" } } }
                tbody {
                    @for run in &view.jobs {
                        tr id=(format!("job-{}", run.job_name)) data-state=(run.state) data-result=(run.result) {
                            td { a href=(format!("/builds/{}", run.build_id)) { (run.job_name) } }
                            td { (run.state) }
                            td class=(result_class(run)) { (run.result) }
                            td { @match run.agent_uuid { Some(uuid) => a href=(format!("/agents/{uuid}/job_run_history")) { (uuid) }, None => "—" } }
                            td { (duration(run)) }
                        }
                    }
                }
            }
        }
    };
    Ok(page(
        Some(&viewer),
        &format!("{pipeline}/{counter}/{stage_name}/{stage_counter}"),
        Section::Pipelines,
        &[],
        body,
    ))
}

fn duration(run: &crate::domain::job_run::JobRun) -> String {
    match (run.entered(JobState::Building), run.completed_at) {
        (Some(start), Some(end)) => format!("{}s", (end - start).max(0) / 1000),
        (Some(_), None) => "running".into(),
        _ => "—".into(),
    }
}

async fn cancel(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path((name, pc, stage, sc)): Path<(String, String, String, String)>,
) -> PageResult<Response> {
    let counter = pipeline_counter(&pc)?;
    let stage_counter = pipeline_counter(&sc)?;
    state
        .pipelines
        .cancel_stage(&name, counter, &stage, stage_counter, &actor.name)
        .await?;
    Ok(Redirect::to(&format!(
        "/pipelines/{name}/{counter}/{stage}/{stage_counter}"
    ))
    .into_response())
}
