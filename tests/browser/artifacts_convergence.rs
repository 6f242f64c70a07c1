//! The run and stage pages' Tests and Artifacts never stay wrong: pages on six jobs' runs and
//! on their stage watch a seeded, random run of three agents taking jobs, uploading files and
//! JUnit reports (some passing, some failing, some refused as a repeat with other bytes),
//! writing console lines and finishing; the last uploads land on jobs still running (so only
//! the artifacts' own events can bring them). Then every page must equal a fresh load of its
//! own address. Seeds as in `convergence.rs`.

use std::time::Duration;

use serde_json::json;

use crate::convergence::{Rng, seed};
use crate::helpers::{Registered, TestApp, spawn_app_with};
use crate::pipeline_pages_convergence::converge;
use crate::support::{Page, browser_test};

const CHANGES: usize = 90;
const JOBS: &[&str] = &["a", "b", "c", "d", "e", "f"];

fn config() -> String {
    let jobs: Vec<String> = JOBS
        .iter()
        .map(|j| format!("{j}: {{tasks: [{{exec: {{command: make}}}}]}}"))
        .collect();
    format!(
        "format_version: 10\npipelines:\n  suite:\n    group: g\n    stages:\n      - test: {{jobs: {{{}}}}}\n",
        jobs.join(", ")
    )
}

/// A JUnit report of `tests` cases, the first `failing` of them failed.
fn junit(tests: usize, failing: usize, tag: u64) -> String {
    let mut xml = String::from("<testsuites><testsuite name=\"s\">");
    for i in 0..tests {
        if i < failing {
            xml.push_str(&format!(
                "<testcase classname=\"suite_{tag}\" name=\"t{i}\"><failure message=\"boom {i} &lt;{tag}&gt;\"/></testcase>"
            ));
        } else {
            xml.push_str(&format!(
                "<testcase classname=\"suite_{tag}\" name=\"t{i}\"/>"
            ));
        }
    }
    xml.push_str("</testsuite></testsuites>");
    xml
}

struct Agents<'a> {
    app: &'a TestApp,
    agents: Vec<Registered>,
    /// The job each agent runs now (asking for work while running one would lose it).
    held: Vec<Option<i64>>,
    rng: Rng,
    completed: usize,
}

impl Agents<'_> {
    /// Uploads one file to `build_id` as `agent`: a JUnit report or a plain file, under a
    /// few names (so some repeat, the same or with other bytes).
    async fn upload(&mut self, agent: usize, build_id: i64) {
        let name = self.rng.below(4).to_string();
        self.upload_as(agent, build_id, &name).await;
    }

    async fn upload_as(&mut self, agent: usize, build_id: i64, name: &str) -> u16 {
        let (path, kind, body) = if self.rng.below(2) == 0 {
            let tests = 1 + self.rng.below(6);
            let failing = self.rng.below(tests + 1).min(2);
            (
                format!("reports/TEST-{name}.xml"),
                "test",
                junit(tests, failing, self.rng.next() % 3),
            )
        } else {
            (
                format!("dist/part-{name}/file.bin"),
                "build",
                format!("bytes {}", self.rng.next() % 3),
            )
        };
        let sum = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
        let reply = self
            .app
            .client
            .put(
                self.app
                    .url(&format!("/api/builds/{build_id}/artifacts/{path}")),
            )
            .bearer_auth(&self.agents[agent].token)
            .header("X-Checksum-SHA256", sum)
            .header("X-Artifact-Kind", kind)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(reply.status().as_u16() < 500, "{path}: {}", reply.status());
        reply.status().as_u16()
    }

    /// One agent takes a job, or does one thing with the one it runs.
    async fn random_change(&mut self) {
        let agent = self.rng.below(self.agents.len());
        let Some(build_id) = self.held[agent] else {
            let reply = self.app.as_agent(&self.agents[agent]).work().await;
            if reply.status == 200 {
                self.held[agent] = reply.body["build_id"].as_i64();
            }
            return;
        };
        match self.rng.below(100) {
            0..50 => self.upload(agent, build_id).await,
            50..70 => {
                self.app
                    .as_agent(&self.agents[agent])
                    .report(build_id, "Building", None)
                    .await;
            }
            70..85 => {
                // Colours, markup and a progress line: what the console's renderer escapes,
                // styles and hides, live and in a fresh load alike.
                let n = self.rng.next() % 1000;
                let line = match self.rng.below(4) {
                    0 => format!("line {n}\n"),
                    1 => format!("\x1b[3{}mline {n}\x1b[0m <b>&amp;</b> 'q' \"dq\"\n", n % 8),
                    2 => format!("\x1b]0;title\x07\x1b[1;4{}mline {n}\x1b[K\x1b[0m\n", n % 8),
                    _ => format!("{n}%\r100% line {n}\n"),
                };
                let length = self.app.build(build_id).await["console_length"]
                    .as_u64()
                    .unwrap_or(0);
                self.app
                    .as_agent(&self.agents[agent])
                    .append(build_id, Some(length), line.as_bytes())
                    .await;
            }
            // The last jobs each agent takes stay running.
            _ if self.completed + self.agents.len() < JOBS.len() => {
                self.completed += 1;
                self.held[agent] = None;
                let result = if self.rng.below(2) == 0 {
                    "Passed"
                } else {
                    "Failed"
                };
                self.app
                    .as_agent(&self.agents[agent])
                    .report(build_id, "Completed", Some(result))
                    .await;
            }
            _ => self.upload(agent, build_id).await,
        }
    }
}

#[tokio::test]
async fn run_and_stage_pages_show_what_was_uploaded_after_random_uploads() {
    browser_test(
        "run_and_stage_pages_show_what_was_uploaded_after_random_uploads",
        |rig| async move {
            let seed = seed();
            eprintln!("artifacts convergence: seed {seed} (FERROCD_TEST_SEED={seed})");
            // The agents never ping: no liveness sweep may take their jobs away meanwhile.
            let app = spawn_app_with(|c| c.lost_contact_after = Duration::from_secs(3600)).await;
            app.put_config("suite", &config()).await.expect(201);
            let mut agents = Agents {
                app: &app,
                agents: vec![
                    app.register_enabled("one").await,
                    app.register_enabled("two").await,
                    app.register_enabled("three").await,
                ],
                held: vec![None; 3],
                rng: Rng(seed),
                completed: 0,
            };
            app.call(
                reqwest::Method::POST,
                "/go/api/pipelines/suite/schedule",
                json!({}),
            )
            .await;
            let stage = crate::helpers::eventually("the six jobs are scheduled", || async {
                let stage = app.get("/go/api/stages/suite/1/test/1").await;
                (stage.body["jobs"].as_array().map(Vec::len) == Some(JOBS.len()))
                    .then_some(stage.body)
            })
            .await;
            let mut paths: Vec<String> = stage["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| format!("/builds/{}", j["id"]))
                .collect();
            paths.push("/pipelines/suite/1/test/1".into());
            // Two browsers: one holds six connections to a host at most.
            let mut pages: Vec<(Page, String)> = Vec::new();
            for (i, path) in paths.iter().enumerate() {
                let url = app.url(path);
                let page = match i {
                    0 | 4 => rig.open(path, &url).await,
                    _ => {
                        rig.open_window(&pages[if i < 4 { 0 } else { 4 }].0, path, &url)
                            .await
                    }
                };
                page.wait_live().await;
                pages.push((page, path.clone()));
            }
            for _ in 0..CHANGES {
                agents.random_change().await;
                if agents.rng.below(5) == 0 {
                    tokio::time::sleep(Duration::from_millis(agents.rng.below(20) as u64)).await;
                }
            }
            // Every agent still holding a job, once the pages have caught up with everything
            // else, uploads a new file to it: only the artifacts' own events bring these.
            let held: Vec<(usize, i64)> = agents
                .held
                .iter()
                .enumerate()
                .filter_map(|(agent, build)| build.map(|b| (agent, b)))
                .collect();
            assert!(!held.is_empty(), "seed {seed}: some jobs stay running");
            converge(&app, &pages, seed, "artifacts", "the random changes").await;
            for (agent, build_id) in held {
                let status = agents.upload_as(agent, build_id, "last").await;
                assert_eq!(
                    status, 201,
                    "seed {seed}: build {build_id} takes a new file"
                );
            }
            converge(&app, &pages, seed, "artifacts", "the last uploads").await;
        },
    )
    .await;
}
