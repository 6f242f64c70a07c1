//! The dashboard never stays wrong: several `/pipelines` pages watch a seeded, random run of
//! triggers, passing and failing jobs, approvals, pauses, cancels and config changes (a
//! pipeline added and removed, a group renamed), ending in a tight burst, and then every page
//! must equal a fresh load. Seeds and page counts as in `convergence.rs`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::convergence::{Rng, env_number, seed};
use crate::helpers::{Registered, TestApp, spawn_app};
use crate::support::{Page, browser_test};

const CHANGES: usize = 150;
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);
const PIPELINES: &[&str] = &["build-api", "build-web", "deploy", "nightly"];

/// The base config; `extra` adds a pipeline, `group` renames one pipeline's group.
pub fn config(extra: bool, group: &str) -> String {
    let mut yaml = format!(
        r#"
format_version: 10
pipelines:
  build-api:
    group: build
    stages:
      - compile: {{tasks: [{{exec: {{command: make}}}}]}}
      - test: {{tasks: [{{exec: {{command: make}}}}]}}
  build-web:
    group: {group}
    display_order: 1
    stages:
      - compile: {{jobs: {{a: {{tasks: [{{exec: {{command: make}}}}]}}, b: {{tasks: [{{exec: {{command: make}}}}]}}}}}}
  deploy:
    group: release
    lock_behavior: unlockWhenFinished
    materials:
      api: {{pipeline: build-api, stage: test}}
    stages:
      - staging: {{tasks: [{{exec: {{command: make}}}}]}}
      - production:
          approval: manual
          tasks: [{{exec: {{command: make}}}}]
  nightly:
    group: release
    stages:
      - all: {{tasks: [{{exec: {{command: make}}}}]}}
"#
    );
    if extra {
        yaml.push_str(
            "  extra:\n    group: aaa-first\n    stages:\n      - only: {tasks: [{exec: {command: make}}]}\n",
        );
    }
    yaml
}

pub struct Changer<'a> {
    pub app: &'a TestApp,
    pub agent: Registered,
    pub rng: Rng,
    pub extra: bool,
}

impl Changer<'_> {
    fn pipeline(&mut self) -> String {
        let mut names: Vec<&str> = PIPELINES.to_vec();
        if self.extra {
            names.push("extra");
        }
        self.rng.pick(&names).unwrap().to_string()
    }

    pub async fn post(&self, path: &str, body: Value) {
        let reply = self.app.call(Method::POST, path, body).await;
        assert!(
            reply.status < 500,
            "{path}: {} {}",
            reply.status,
            reply.body
        );
    }

    /// The test's agent takes a job if there is one (or the one it holds) and starts or
    /// finishes it.
    async fn finish_job(&mut self) {
        let reply = self.app.as_agent(&self.agent).work().await;
        if reply.status != 200 {
            return;
        }
        let build_id = reply.body["build_id"].as_i64().unwrap();
        if self.rng.below(3) == 0 {
            // Left running for now: the next call gets the same run back and may finish it.
            self.app
                .as_agent(&self.agent)
                .report(build_id, "Building", None)
                .await;
            return;
        }
        let result = if self.rng.below(4) == 0 {
            "Failed"
        } else {
            "Passed"
        };
        self.app
            .as_agent(&self.agent)
            .report_ok(build_id, "Completed", Some(result))
            .await;
    }

    pub async fn random_change(&mut self) {
        let pipeline = self.pipeline();
        match self.rng.below(100) {
            0..25 => {
                self.post(&format!("/go/api/pipelines/{pipeline}/schedule"), json!({}))
                    .await
            }
            25..60 => self.finish_job().await,
            60..68 => {
                let stage = ["production", "test", "compile"][self.rng.below(3)];
                let counter = 1 + self.rng.below(3);
                self.post(
                    &format!("/go/api/stages/{pipeline}/{counter}/{stage}/run"),
                    json!({}),
                )
                .await
            }
            68..76 => {
                let cause = format!("cause {}", self.rng.below(5));
                self.post(
                    &format!("/go/api/pipelines/{pipeline}/pause"),
                    json!({"pause_cause": cause}),
                )
                .await
            }
            76..86 => {
                self.post(&format!("/go/api/pipelines/{pipeline}/unpause"), json!({}))
                    .await
            }
            86..90 => {
                let stage = ["compile", "staging", "all"][self.rng.below(3)];
                let counter = 1 + self.rng.below(3);
                self.post(
                    &format!("/go/api/stages/{pipeline}/{counter}/{stage}/1/cancel"),
                    json!({}),
                )
                .await
            }
            90..94 => {
                // Re-run failed jobs, or selected ones, of some run of a stage.
                let stage = ["compile", "test", "staging"][self.rng.below(3)];
                let (counter, sc) = (1 + self.rng.below(3), 1 + self.rng.below(2));
                let path = format!("/go/api/stages/{pipeline}/{counter}/{stage}/{sc}");
                if self.rng.below(2) == 0 {
                    self.post(&format!("{path}/run-failed-jobs"), json!({}))
                        .await
                } else {
                    let jobs = [vec!["a"], vec!["b"], vec!["a", "b"], vec![stage]]
                        [self.rng.below(4)]
                    .clone();
                    self.post(
                        &format!("{path}/run-selected-jobs"),
                        json!({ "jobs": jobs }),
                    )
                    .await
                }
            }
            _ => {
                self.extra = self.rng.below(2) == 0;
                let group = ["web", "frontend"][self.rng.below(2)];
                self.app
                    .put_config("all", &config(self.extra, group))
                    .await
                    .expect_success();
            }
        }
    }
}

/// What a dashboard shows, the same summary for the live page and for a fresh load (parsed
/// by the browser): each block in order with what it says.
const SUMMARY: &str = r#"
const summarize = (root) => {
  const board = root.querySelector('#dashboard');
  const blocks = Array.from(board.children).map((b) => {
    const stages = Array.from(b.querySelectorAll('.stage'))
      .map((s) => s.dataset.stage + ':' + s.dataset.status + (s.querySelector('form') ? '+' : ''));
    const label = b.querySelector('.instance-label');
    return [b.id, b.dataset.paused || '', label ? label.textContent : '', stages.join(' '),
            b.querySelectorAll('form').length].join(' | ');
  });
  const errors = root.querySelector('#config-errors').textContent.trim();
  return blocks.concat(['errors: ' + errors]);
};
"#;

async fn page_view(page: &Page) -> Vec<String> {
    let value = page
        .js(&format!("{SUMMARY} return summarize(document);"), vec![])
        .await;
    strings(&value)
}

async fn fresh_view(page: &Page, html: &str) -> Vec<String> {
    let value = page
        .js(
            &format!(
                "{SUMMARY} return summarize(new DOMParser().parseFromString(arguments[0], 'text/html'));"
            ),
            vec![json!(html)],
        )
        .await;
    strings(&value)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("a summary")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn every_dashboard_ends_equal_to_a_fresh_load_after_random_changes() {
    browser_test(
        "every_dashboard_ends_equal_to_a_fresh_load_after_random_changes",
        |rig| async move {
            let seed = seed();
            let page_count = env_number("FERROCD_CONVERGENCE_PAGES", 3).max(1);
            eprintln!("dashboard convergence: seed {seed} (FERROCD_TEST_SEED={seed}), {page_count} pages");
            let app = spawn_app().await;
            app.put_config("all", &config(false, "web")).await.expect(201);
            let agent = app.register_enabled("builder").await;
            let mut changer = Changer {
                app: &app,
                agent,
                rng: Rng(seed),
                extra: false,
            };
            let url = app.url("/pipelines");
            let mut pages = Vec::new();
            for i in 0..page_count {
                let page = rig.open(&format!("page {}", i + 1), &url).await;
                page.wait_live().await;
                pages.push(page);
            }
            for _ in 0..CHANGES {
                changer.random_change().await;
                if changer.rng.below(5) == 0 {
                    tokio::time::sleep(Duration::from_millis(changer.rng.below(20) as u64)).await;
                }
            }
            // The burst: pause, unpause, trigger, pause of one pipeline as fast as it answers.
            for path in ["pause", "unpause", "schedule", "pause"] {
                changer
                    .post(&format!("/go/api/pipelines/nightly/{path}"), json!({}))
                    .await;
            }
            let last_change = Instant::now();
            let deadline = last_change + CONVERGE_WITHIN;
            loop {
                let fresh_html = app.get("/pipelines").await.text();
                let mut report = Vec::new();
                for page in &pages {
                    let fresh = fresh_view(page, &fresh_html).await;
                    let shown = page_view(page).await;
                    if shown != fresh {
                        report.push(format!(
                            "{}:\n  page:  {shown:#?}\n  fresh: {fresh:#?}",
                            page.describe().await
                        ));
                    }
                }
                if report.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    panic!(
                        "seed {seed}: {} of {} dashboards differ from a fresh load {CONVERGE_WITHIN:?} \
                         after the last change:\n{}",
                        report.len(),
                        pages.len(),
                        report.join("\n")
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            eprintln!(
                "dashboard convergence: seed {seed}: every page equal to a fresh load {} ms after \
                 the last change",
                last_change.elapsed().as_millis()
            );
        },
    )
    .await;
}
