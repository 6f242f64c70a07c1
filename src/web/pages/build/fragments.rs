//! The run page's markup.

use maud::{Markup, PreEscaped, html};

use std::collections::BTreeMap;

use super::console_html;
use super::tabs::{RunArtifacts, artifacts_panel, custom_panels, tab_strip, tests_panel};
use crate::domain::agent::WaitReason;
use crate::domain::job_run::{JobRun, JobState};
use crate::web::pages::runs::{duration, result_class, timestamp};

/// What the console shows at first: the log up to `end`, rendered (its tail only, when
/// `truncated`).
pub struct ConsoleTail {
    pub end: i64,
    pub html: String,
    /// Lines before `start` were left out (a large log shows only its tail).
    pub truncated: bool,
}

/// What the status shows beside the run itself: its agent's name, and while it is Scheduled,
/// why it waits (each agent's first reason).
pub struct StatusFacts {
    pub hostname: Option<String>,
    pub waiting: Vec<WaitReason>,
}

pub fn run_page(
    run: &JobRun,
    facts: &StatusFacts,
    console: &ConsoleTail,
    (artifacts, custom_tabs): (&RunArtifacts, &BTreeMap<String, String>),
) -> Markup {
    let events = format!(
        "/builds/{}/console/events?from={}",
        run.build_id, console.end
    );
    html! {
        div sse-connect=(events) {
            div.page-title.run-title {
                p.breadcrumb {
                    (run.pipeline_name) " / " (run.pipeline_counter) " / "
                    (run.stage_name) " / " (run.stage_counter) " / " b { (run.job_name) }
                }
                div #run-summary sse-swap="status" { (summary(run, facts)) }
            }
            (tab_strip(custom_tabs))
            div.tab-panels {
            section #tab-console .tab-panel.card.console-card {
                div.console-toolbar {
                    span.console-title { "Console log" }
                    label.follow { input #follow type="checkbox" checked; " Follow the tail" }
                    @if console.truncated {
                        span.truncated { "Showing the last lines only. " a href="?all=1" { "Show all" } }
                    }
                    a.btn.small href={ "/api/builds/" (run.build_id) "/console" } download={ "build-" (run.build_id) ".log" } { "Raw log" }
                }
                pre #console data-end=(console.end) sse-swap="console" hx-swap="beforeend" {
                    (PreEscaped(&console.html))
                }
            }
            section #tab-tests .tab-panel.card {
                h2.panel-title { "Tests" }
                div #run-tests sse-swap="tests" { (tests_panel(artifacts)) }
            }
            section #tab-artifacts .tab-panel.card {
                h2.panel-title { "Artifacts" }
                div #run-artifacts sse-swap="artifacts" { (artifacts_panel(run, artifacts)) }
            }
            (custom_panels(run, custom_tabs))
            }
        }
    }
}

/// The status badge with the run's agent, timings and cancel button (event `status`).
pub fn summary(run: &JobRun, facts: &StatusFacts) -> Markup {
    let class = result_class(run);
    let hostname = facts.hostname.as_deref();
    html! {
        div.run-summary {
            h1 { (run.job_name) small.subtitle { " Job run details" } }
            div.status-box {
                span.label { "Job state" }
                span #run-status data-state=(run.state) data-result=(run.result) class={ "badge badge-" (class) } {
                    (run.state)
                    @if run.state == JobState::Completed { " · " (run.result) }
                    @else if run.cancel_requested { " · cancelling" }
                }
                span.label { "Agent" }
                span {
                    @match (run.agent_uuid, hostname) {
                        (Some(uuid), Some(name)) => a href={ "/agents/" (uuid) "/job_run_history" } { (name) },
                        (Some(uuid), None) => (uuid),
                        (None, _) => span.none { "not assigned yet" },
                    }
                }
                span.label { "Scheduled" }
                span {
                    (timestamp(run.scheduled_at))
                    @if let Some(actor) = &run.scheduled_by { " " span.changed-by #scheduled-by { "by " (actor) } }
                }
                @if let Some(started) = run.entered(JobState::Building) {
                    span.label { "Started" }
                    span { (timestamp(started)) }
                }
                @if let Some(completed) = run.completed_at {
                    span.label { "Completed" }
                    span { (timestamp(completed)) }
                }
                @if let Some(actor) = &run.cancelled_by {
                    span.label { "Cancelled" }
                    span #cancelled-by { "by " (actor) }
                }
                span.label { "Duration" }
                span #run-duration { (duration(run)) }
                @if run.state != JobState::Completed && !run.cancel_requested {
                    button.btn.danger.small #cancel-run type="button"
                        hx-post={ "/builds/" (run.build_id) "/cancel" } hx-swap="none" { "Cancel" }
                }
            }
            @if run.state == JobState::Scheduled { (waiting(&facts.waiting)) }
        }
    }
}

/// Why a Scheduled run waits (its run page's section).
pub fn waiting(reasons: &[WaitReason]) -> Markup {
    html! {
        section #waiting.waiting {
            h2 { "Why is it waiting?" }
            (waiting_list(reasons))
        }
    }
}

/// Per agent, what it is doing about the job or the first reason it does not match, the
/// matching agents first.
pub fn waiting_list(reasons: &[WaitReason]) -> Markup {
    html! {
        @if reasons.is_empty() {
            p.empty-hint { "No agent is registered yet: start one with " code { "ferrocd agent" } "." }
        } @else {
            ul.wait-reasons {
                @for r in reasons {
                    li data-agent=(r.uuid) data-reason=(r.reason) class={ "wait-" (r.reason) } {
                        a href={ "/agents/" (r.uuid) "/job_run_history" } { (r.hostname) }
                        " " (r.message)
                    }
                }
            }
        }
    }
}

/// Keeps the last `max_lines` complete lines of `bytes` (which start at `start`); returns
/// where the kept part starts in the log and whether anything was left out.
pub fn tail_lines(bytes: &[u8], start: i64, max_lines: usize) -> (i64, &[u8], bool) {
    let mut seen = 0;
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == max_lines {
                return (start + i as i64 + 1, &bytes[i + 1..], true);
            }
        }
    }
    (start, bytes, start > 0)
}

pub fn render_console(bytes: &[u8], start: i64) -> String {
    console_html::render(bytes, start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let (start, kept, truncated) = tail_lines(b"a\nb\nc\nd\n", 0, 2);
        assert_eq!((start, kept, truncated), (4, &b"c\nd\n"[..], true));
        let (start, kept, truncated) = tail_lines(b"a\nb\n", 0, 5);
        assert_eq!((start, kept, truncated), (0, &b"a\nb\n"[..], false));
        let (start, _, truncated) = tail_lines(b"x\n", 100, 5);
        assert_eq!((start, truncated), (100, true));
    }
}
