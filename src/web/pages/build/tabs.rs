//! The run page's tabs beside the console: Tests (what the JUnit reports among the job's test
//! artifacts say), Artifacts (the file tree, each file a download, each folder a zip) and the
//! job's own `tabs` (an artifact file shown in a sandboxed frame). The Tests and Artifacts
//! panels are live: the run's console view renders them once per change (events `tests` and
//! `artifacts`). The test summary is shared with the stage page.

use std::collections::BTreeMap;

use maud::{Markup, html};

use crate::domain::artifact::ArtifactFile;
use crate::domain::job_run::JobRun;
use crate::domain::test_report::TestSummary;

/// What the two live panels show: the run's files and its test reports (by path).
#[derive(Debug, Clone, Default)]
pub struct RunArtifacts {
    pub files: Vec<ArtifactFile>,
    pub reports: Vec<(String, TestSummary)>,
    /// When the run's artifacts were purged (`--artifacts-keep`), if they were.
    pub purged_at: Option<i64>,
}

impl RunArtifacts {
    /// Every report added up.
    pub fn total(&self) -> Option<TestSummary> {
        if self.reports.is_empty() {
            return None;
        }
        let mut total = TestSummary::default();
        for (_, report) in &self.reports {
            total.add(report);
        }
        Some(total)
    }
}

/// `/files/{pipeline}/{pc}/{stage}/{sc}/{job}`, each name percent-encoded.
pub fn files_base(run: &JobRun) -> String {
    format!(
        "/files/{}/{}/{}/{}/{}",
        encode(&run.pipeline_name),
        run.pipeline_counter,
        encode(&run.stage_name),
        run.stage_counter,
        encode(&run.job_name)
    )
}

/// One path segment (or a `/` path, segment by segment) percent-encoded.
pub fn encode(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            form_urlencoded::byte_serialize(segment.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The tab strip: Console, Tests, Artifacts, then the job's own tabs. Each links to its
/// panel; the stylesheet shows the targeted panel (the console when none is).
pub fn tab_strip(custom: &BTreeMap<String, String>) -> Markup {
    html! {
        nav.run-tabs {
            a href="#tab-console" { "Console" }
            a href="#tab-tests" { "Tests" }
            a href="#tab-artifacts" { "Artifacts" }
            @for (i, name) in custom.keys().enumerate() {
                a href={ "#tab-custom-" (i) } { (name) }
            }
        }
    }
}

/// The job's own tabs: each an artifact file in a frame that may run nothing and reach
/// nothing of ours (`sandbox`; the file is served with a sandboxing CSP too).
pub fn custom_panels(run: &JobRun, custom: &BTreeMap<String, String>) -> Markup {
    let base = format!("/tab/artifact{}", &files_base(run)["/files".len()..]);
    html! {
        @for (i, (name, path)) in custom.iter().enumerate() {
            section.tab-panel.card id={ "tab-custom-" (i) } {
                h2.panel-title { (name) " " small.subtitle { (path) } }
                iframe.artifact-tab sandbox="" title=(name)
                    src={ (base) "/" (encode(path.trim_matches('/'))) } {}
            }
        }
    }
}

/// The Tests panel's content (event `tests`).
pub fn tests_panel(artifacts: &RunArtifacts) -> Markup {
    html! {
        @match artifacts.total() {
            None => p.empty-hint {
                "No test reports. JUnit XML files published as " code { "test" }
                " artifacts are summarised here."
            },
            Some(total) => {
                (test_summary(&total))
                @if artifacts.reports.len() > 1 {
                    table.data-table.test-reports {
                        thead { tr { th { "Report" } th { "Tests" } th { "Failed" } th { "Skipped" } } }
                        tbody {
                            @for (path, report) in &artifacts.reports {
                                tr {
                                    td { code { (path) } }
                                    td { (report.tests) }
                                    td { (report.failed()) }
                                    td { (report.skipped) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Tests run, failed and skipped, and the failing tests by name with their messages.
pub fn test_summary(total: &TestSummary) -> Markup {
    let class = if total.failed() > 0 {
        "tests-failed"
    } else {
        "tests-passed"
    };
    html! {
        div class={ "test-summary " (class) } {
            p.test-counts {
                b { (total.tests) } " tests: "
                span.passed-count { (total.passed()) " passed" } ", "
                span.failed-count { (total.failed()) " failed" }
                @if total.skipped > 0 { ", " (total.skipped) " skipped" }
            }
            @if !total.failing.is_empty() {
                ul.failing-tests {
                    @for test in &total.failing {
                        li {
                            code.test-name { (test.name) }
                            @if !test.message.is_empty() { " " span.test-message { (test.message) } }
                        }
                    }
                }
                @if (total.failing.len() as u64) < total.failed() {
                    p.empty-hint { "and " (total.failed() - total.failing.len() as u64) " more" }
                }
            }
        }
    }
}

/// The Artifacts panel's content (event `artifacts`): the tree, folders first, with sizes.
pub fn artifacts_panel(run: &JobRun, artifacts: &RunArtifacts) -> Markup {
    let base = files_base(run);
    let paths: Vec<(&str, &ArtifactFile)> = artifacts
        .files
        .iter()
        .map(|f| (f.path.as_str(), f))
        .collect();
    let total: i64 = artifacts.files.iter().map(|f| f.size).sum();
    html! {
        @if let Some(at) = artifacts.purged_at {
            p.empty-hint.purged {
                "This run's artifacts were purged " (crate::web::pages::runs::timestamp(at))
                " to keep the disk in check (" code { "--artifacts-keep" } ")."
            }
        } @else if artifacts.files.is_empty() {
            p.empty-hint {
                @if run.is_completed() { "This run published no artifacts." }
                @else { "Artifacts are published once the job's tasks end." }
            }
        } @else {
            p.artifact-total {
                (artifacts.files.len()) " files, " (human_size(total)) " · "
                a href={ (base) ".json" } { "as JSON" }
            }
            (tree(&base, "", &paths))
        }
    }
}

/// The entries directly under `prefix` (`""` or `a/b/`).
fn tree(base: &str, prefix: &str, paths: &[(&str, &ArtifactFile)]) -> Markup {
    let mut folders: Vec<&str> = Vec::new();
    let mut files: Vec<(&str, &ArtifactFile)> = Vec::new();
    for (path, file) in paths {
        let Some(rest) = path.strip_prefix(prefix) else {
            continue;
        };
        match rest.split_once('/') {
            Some((folder, _)) if !folders.contains(&folder) => folders.push(folder),
            Some(_) => {}
            None => files.push((rest, file)),
        }
    }
    html! {
        ul.artifact-tree {
            @for folder in folders {
                @let inner = format!("{prefix}{folder}/");
                @let size: i64 = paths.iter().filter(|(p, _)| p.starts_with(&inner)).map(|(_, f)| f.size).sum();
                li.artifact-folder {
                    span.folder-name { (folder) "/" }
                    " " span.size { (human_size(size)) }
                    " " a.zip href={ (base) "/" (encode(&format!("{prefix}{folder}"))) ".zip" } { "zip" }
                    (tree(base, &inner, paths))
                }
            }
            @for (name, file) in files {
                li.artifact-file {
                    a href={ (base) "/" (encode(&file.path)) } download { (name) }
                    " " span.size { (human_size(file.size)) }
                }
            }
        }
    }
}

/// `512 B`, `1.5 KB`, `12.0 MB` (powers of 1024).
pub fn human_size(bytes: i64) -> String {
    let mut size = bytes.max(0) as f64;
    for unit in ["B", "KB", "MB", "GB"] {
        if size < 1024.0 || unit == "GB" {
            return if unit == "B" {
                format!("{bytes} B")
            } else {
                format!("{size:.1} {unit}")
            };
        }
        size /= 1024.0;
    }
    unreachable!("the loop returns at GB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KB");
        assert_eq!(human_size(200 * 1024 * 1024), "200.0 MB");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024 * 1024), "3072.0 GB");
    }

    #[test]
    fn names_are_encoded_segment_by_segment() {
        assert_eq!(encode("a b/c#d?e/f"), "a%20b/c%23d%3Fe/f");
    }
}
