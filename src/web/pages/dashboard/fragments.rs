//! The dashboard's HTML: the page, a group heading, one pipeline's card (its latest instance
//! and a block per stage in GoCD's colours), and the config errors. Every fragment is the
//! same for every viewer; buttons only admins may use do not exist here (anyone signed in may
//! run pipelines), so nothing is per viewer.

use maud::{Markup, html};

use crate::config_sources::Snapshot;
use crate::domain::material::short_revision;
use crate::domain::pipeline::{StageStatus, StageSummary};
use crate::pipelines::PipelineView;
use crate::web::format_time;

/// Where a block sorts among the dashboard's children: groups by name, each heading first,
/// then its pipelines by `display_order`, then name (text, compared as the browser compares).
pub fn order_key(group: &str, heading: bool, display_order: i64, name: &str) -> String {
    if heading {
        format!("{}\t0", group.to_lowercase())
    } else {
        // -1 (the default) and up, as text that sorts like the number.
        let shifted = (display_order as i128 + (1i128 << 62)).max(0);
        format!(
            "{}\t1{shifted:020}\t{}",
            group.to_lowercase(),
            name.to_lowercase()
        )
    }
}

pub fn pipeline_key(view: &PipelineView) -> String {
    order_key(
        &view.config.group,
        false,
        view.config.display_order,
        &view.config.name,
    )
}

pub fn group_id(group: &str) -> String {
    format!("group-{group}")
}

pub fn page(children: Markup, errors: Markup) -> Markup {
    html! {
        div sse-connect="/pipelines/events" {
            div.page-title {
                h1 { "Pipelines" }
                input #pipeline-search type="search" placeholder="Search pipelines"
                    aria-label="Search pipelines" autocomplete="off";
            }
            div #config-errors sse-swap="config-errors" { (errors) }
            div #dashboard.dashboard data-live-rows="dashboard" data-live-added="pipeline-added" {
                (children)
            }
        }
        // Outside the live region: a card's change never closes an open form.
        dialog #trigger-dialog aria-label="Trigger with options" {}
    }
}

pub fn group_heading(group: &str) -> Markup {
    html! {
        h2.group-heading id=(group_id(group)) data-order=(order_key(group, true, 0, "")) {
            (group)
        }
    }
}

/// Every child of the dashboard, in order: each group's heading, then its pipelines.
pub fn children(views: &[PipelineView]) -> Markup {
    let mut sorted: Vec<&PipelineView> = views.iter().collect();
    sorted.sort_by_key(|v| pipeline_key(v));
    let mut last_group: Option<String> = None;
    html! {
        @for view in sorted {
            @if last_group.as_deref() != Some(&view.config.group.to_lowercase()) {
                (group_heading(&view.config.group))
                ({ last_group = Some(view.config.group.to_lowercase()); "" })
            }
            (card(view))
        }
        @if views.is_empty() {
            p.empty #no-pipelines data-order="\u{10ffff}" {
                "No pipelines yet. Start the server with "
                code { "--config FILE_OR_DIR" }
                " or store a GoCD YAML document with "
                code { "PUT /api/config/NAME" }
                "."
            }
        }
    }
}

/// The CSS name of a stage status (GoCD's colours).
pub fn status_class(status: StageStatus) -> &'static str {
    match status {
        StageStatus::Building => "building",
        StageStatus::Failing => "failing",
        StageStatus::Passed => "passed",
        StageStatus::Failed => "failed",
        StageStatus::Cancelled => "cancelled",
        StageStatus::Awaiting => "awaiting",
        StageStatus::NotRun => "not-run",
    }
}

/// One pipeline: name and buttons, its latest instance, its stages.
pub fn card(view: &PipelineView) -> Markup {
    let name = &view.config.name;
    let paused = view.state.paused;
    // Unlocking is for a lock left behind (a failure under lockOnFailure), not a running one.
    let locked = view
        .state
        .locked_by
        .filter(|_| !view.latest.as_ref().is_some_and(|l| l.is_running()));
    html! {
        div.pipeline-card id=(format!("pipeline-{name}")) data-order=(pipeline_key(view))
            data-name=(name.to_lowercase()) data-paused=(paused) {
            header {
                h3 { (name) }
                a.history href=(format!("/pipelines/{name}/history")) { "History" }
            }
            div.pipeline-actions {
                form method="post" action=(format!("/pipelines/{name}/schedule")) {
                    button.icon-button type="submit" title="Trigger" disabled[paused] { "▶" }
                }
                a.icon-button.trigger-options href=(format!("/pipelines/{name}/trigger"))
                    title="Trigger with options" { "▶…" }
                @if paused {
                    form method="post" action=(format!("/pipelines/{name}/unpause")) {
                        button.icon-button type="submit" title="Unpause" { "▶▮" }
                    }
                } @else {
                    form.pause-form method="post" action=(format!("/pipelines/{name}/pause")) {
                        input type="hidden" name="pause_cause" value="";
                        button.icon-button type="submit" title="Pause" { "❚❚" }
                    }
                }
                @if let Some(counter) = locked {
                    form method="post" action=(format!("/pipelines/{name}/unlock")) {
                        button.icon-button type="submit" title=(format!("Locked by instance {counter}: unlock")) { "Unlock" }
                    }
                }
            }
            @if paused {
                p.paused-note {
                    "Paused"
                    @if let Some(by) = &view.state.paused_by { " by " (by) }
                    @if let Some(cause) = view.state.pause_cause.as_deref().filter(|c| !c.is_empty()) {
                        ": " (cause)
                    }
                }
            }
            @for (material, error) in &view.material_errors {
                p.material-error { "Material " (material) " cannot be polled: " (error) }
            }
            @if let Some(timer) = &view.config.timer {
                p.timer {
                    "Timer: " code { (timer.spec) }
                    @if timer.only_on_changes { " (only on changes)" }
                    @match view.next_timer_firing {
                        Some(at) => small { " · next " time datetime=(format_time(at)) { (readable_time(at)) } },
                        None => small { " · no firing left" },
                    }
                }
            }
            @match &view.latest {
                None => p.no-instance { "Never run" },
                Some(latest) => {
                    div.instance {
                        p.label {
                            "Instance: "
                            a.instance-label href=(format!("/pipelines/{name}/{}/build_cause", latest.instance.counter)) title="Build cause" {
                                (latest.instance.label)
                            }
                        }
                        p.triggered {
                            "Triggered by " (latest.instance.triggered_by)
                            br;
                            "on " time datetime=(format_time(latest.instance.created_at)) {
                                (readable_time(latest.instance.created_at))
                            }
                        }
                        @for r in &latest.instance.material_revisions {
                            p.revision title=(r.summary) {
                                (r.material) ": " code { (short_revision(&r.revision)) }
                                @if !r.author.is_empty() { " by " (r.author) }
                            }
                        }
                        div.stages {
                            @for stage in &latest.stages {
                                (stage_block(name, latest.instance.counter, stage))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A time as people read it on the card: `6 Dec 2026 at 19:08:22 UTC`.
fn readable_time(millis: i64) -> String {
    let format = time::macros::format_description!(
        "[day padding:none] [month repr:short] [year] at [hour]:[minute]:[second] UTC"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// A stage's block: its name in its status's colour, linking to its latest run, with an
/// approve button when it may be started by hand.
pub fn stage_block(pipeline: &str, counter: i64, stage: &StageSummary) -> Markup {
    let title = format!("{}: {}", stage.name, stage.status);
    html! {
        div class={ "stage stage-" (status_class(stage.status)) } data-stage=(stage.name)
            data-status=(stage.status.as_str()) {
            @match stage.counter {
                Some(sc) => a href=(format!("/pipelines/{pipeline}/{counter}/{}/{sc}", stage.name)) title=(title) {
                    span.stage-name { (stage.name) }
                },
                None => span title=(title) { span.stage-name { (stage.name) } },
            }
            @if stage.can_run && (stage.status == StageStatus::Awaiting || stage.status == StageStatus::NotRun) {
                form.approve method="post" action=(format!("/pipelines/{pipeline}/{counter}/{}/run", stage.name)) {
                    button.approve-button type="submit" title=(format!("Approve {}", stage.name)) { "Approve" }
                }
            }
        }
    }
}

/// The config errors above the dashboard (nothing when there are none).
pub fn config_errors(snapshot: &Snapshot) -> Markup {
    let errors: Vec<_> = snapshot.errors().collect();
    html! {
        @if !errors.is_empty() {
            section.card.config-errors {
                h2 { "Config errors" }
                p { "These sources keep their last good config until they are fixed." }
                ul {
                    @for (source, issue) in errors {
                        li {
                            code { (source.name()) }
                            @if let Some(line) = issue.line { " line " (line) }
                            @if !issue.path.is_empty() { " " code { (issue.path) } }
                            ": " (issue.message)
                        }
                    }
                }
            }
        }
    }
}
