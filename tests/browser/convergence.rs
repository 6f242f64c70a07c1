//! Live views never stay wrong: several `/agents` pages and raw stream readers watch a
//! seeded, random run of changes (with random pauses, ending in a tight burst on one agent),
//! and then every one of them must equal a fresh load of the page.
//!
//! The seed is printed and named in every failure; rerun one with `FERROCD_TEST_SEED=N`.
//! `FERROCD_CONVERGENCE_PAGES=N` opens N pages (default 3), and
//! `FERROCD_CONVERGENCE_ONE_BROWSER=1` opens them as windows of one Chromium (as a person
//! with several tabs has them) instead of one browser each. The time from the last change to
//! the moment every page and reader matched a fresh load is printed.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::helpers::{AgentsMirror, AgentsPage, TestApp, spawn_app_with};
use crate::support::{Page, browser_test, sync_streams};

const KEY: &str = "convergence-key";
/// Changes in one run (at least 200), before the final burst.
const CHANGES: usize = 300;
const RAW_READERS: usize = 2;
/// How long every page may take to match a fresh load after the last change.
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);

/// splitmix64: small, seedable and the same everywhere.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
}

pub fn seed() -> u64 {
    std::env::var("FERROCD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// An agent the run made, as far as the run knows (the server is the truth; a refused
/// change just leaves this a little off, which only makes the next choice less apt).
struct Known {
    uuid: String,
    config: &'static str,
}

/// The random run's side of the API.
struct Changer<'a> {
    app: &'a TestApp,
    rng: Rng,
    agents: Vec<Known>,
    made: usize,
}

const HOSTS: &[&str] = &[
    "alpha",
    "Bravo",
    "charlie",
    "delta",
    "echo-01",
    "zulu",
    "élan",
    "agent.local",
    "Zeta",
    "a",
];

impl Changer<'_> {
    async fn register(&mut self, with_key: bool) {
        self.made += 1;
        let host = format!("{}-{}", self.rng.pick(HOSTS).unwrap(), self.rng.below(50));
        let body = json!({"hostname": host, "ip_address": "10.1.0.9", "operating_system": "Linux",
                          "sandbox": "/var/lib/agent", "free_space": 5_000_000_000u64,
                          "resources": ["linux"], "agent_version": "convergence"});
        let (status, answer) = self.app.register_with(body, with_key.then_some(KEY)).await;
        assert_eq!(status, 201, "register: {answer}");
        self.agents.push(Known {
            uuid: answer["uuid"].as_str().unwrap().to_string(),
            config: if with_key { "Enabled" } else { "Pending" },
        });
    }

    async fn set_config(&mut self, to: &'static str) {
        let Some(i) = (!self.agents.is_empty()).then(|| self.rng.below(self.agents.len())) else {
            return;
        };
        let verb = if to == "Enabled" { "enable" } else { "disable" };
        let path = format!("/api/agents/{}/{verb}", self.agents[i].uuid);
        let (status, body) = self.app.put(&path).await;
        assert!(status < 500, "{path}: {status} {body}");
        if status == 200 {
            self.agents[i].config = to;
        }
    }

    async fn patch(&mut self) {
        let Some(agent) = self.rng.pick(&self.agents) else {
            return;
        };
        let path = format!("/api/agents/{}", agent.uuid);
        let body = if self.rng.below(2) == 0 {
            json!({"resources": format!("linux, r{}", self.rng.below(9))})
        } else {
            // A new name moves the row: the order is by hostname.
            json!({"hostname": format!("{}-{}", self.rng.pick(HOSTS).unwrap(), self.rng.below(50))})
        };
        let (status, answer) = self.app.send_json(Method::PATCH, &path, body).await;
        assert!(status < 500, "PATCH {path}: {status} {answer}");
    }

    async fn delete(&mut self) {
        let disabled: Vec<usize> = (0..self.agents.len())
            .filter(|i| self.agents[*i].config == "Disabled")
            .collect();
        let Some(&i) = self.rng.pick(&disabled) else {
            return self.set_config("Disabled").await;
        };
        let path = format!("/api/agents/{}", self.agents[i].uuid);
        let (status, body) = self.app.send_json(Method::DELETE, &path, Value::Null).await;
        assert!(status < 500, "DELETE {path}: {status} {body}");
        if status == 200 {
            self.agents.remove(i);
        }
    }

    /// A job no agent has the resource for: it stays queued.
    async fn schedule(&mut self) {
        let body = json!({"pipeline_name": "waiting", "stage_name": "build", "job_name": "job",
                          "resources": ["nobody-has-this"],
                          "tasks": [{"command": "true"}]});
        let (status, run) = self
            .app
            .send_json(Method::POST, "/api/jobs/schedule", body)
            .await;
        assert_eq!(status, 201, "schedule: {run}");
    }

    async fn random_change(&mut self) {
        let (roll, coin) = (self.rng.below(100), self.rng.below(2) == 0);
        match roll {
            // Keep some agents around, and not too many.
            _ if self.agents.len() < 4 => self.register(coin).await,
            0..12 => self.register(false).await,
            12..24 if self.agents.len() < 40 => self.register(true).await,
            12..24 => self.delete().await,
            24..42 => self.set_config("Enabled").await,
            42..60 => self.set_config("Disabled").await,
            60..75 => self.patch().await,
            75..90 => self.delete().await,
            _ => self.schedule().await,
        }
    }

    /// A short random pause: often none, sometimes a few milliseconds.
    async fn pause(&mut self) {
        let ms = match self.rng.below(10) {
            0..4 => 0,
            4..8 => self.rng.below(10),
            _ => 10 + self.rng.below(30),
        };
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms as u64)).await;
        }
    }

    /// disable/enable/disable/enable of one agent as fast as the server answers.
    async fn final_burst(&mut self) -> String {
        if self.agents.is_empty() {
            self.register(true).await;
        }
        let uuid = self.agents[0].uuid.clone();
        for verb in ["disable", "enable", "disable", "enable"] {
            let (status, body) = self.app.put(&format!("/api/agents/{uuid}/{verb}")).await;
            assert_eq!(status, 200, "{verb} {uuid}: {body}");
        }
        uuid
    }
}

/// What a page shows: its rows (id and states, in order), the counts strip and the queued count.
async fn page_view(page: &Page) -> (Vec<(String, String, String)>, String, String) {
    let value = page
        .js(
            "const rows = Array.from(document.querySelectorAll('#agents-body > tr')) \
               .map((r) => [r.id, r.dataset.configState || '', r.dataset.agentState || '']); \
             const text = (id) => { const e = document.getElementById(id); \
               return e === null ? '(absent)' : e.textContent.trim(); }; \
             return { rows, counts: text('agent-counts'), queued: text('queued-count') };",
            vec![],
        )
        .await;
    let rows = value["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let cell = |i: usize| r[i].as_str().unwrap_or_default().to_string();
            (cell(0), cell(1), cell(2))
        })
        .collect();
    let text = |key: &str| value[key].as_str().unwrap_or_default().to_string();
    (rows, text("counts"), text("queued"))
}

/// How `shown` differs from `fresh`, row by row; empty when equal.
fn page_differences(
    shown: &(Vec<(String, String, String)>, String, String),
    fresh: &AgentsPage,
) -> Vec<String> {
    let mut out = Vec::new();
    let expected = fresh.summary();
    if shown.0 != expected {
        let width = shown.0.len().max(expected.len());
        for i in 0..width {
            let (have, want) = (shown.0.get(i), expected.get(i));
            if have != want {
                out.push(format!("row {i}: page {have:?}, fresh load {want:?}"));
            }
        }
    }
    if shown.1 != fresh.counts.trim() {
        out.push(format!(
            "counts: page {:?}, fresh load {:?}",
            shown.1,
            fresh.counts.trim()
        ));
    }
    if shown.2 != fresh.queued.trim() {
        out.push(format!(
            "queued: page {:?}, fresh load {:?}",
            shown.2,
            fresh.queued.trim()
        ));
    }
    out
}

#[tokio::test]
async fn every_agents_page_ends_equal_to_a_fresh_load_after_random_changes() {
    browser_test(
        "every_agents_page_ends_equal_to_a_fresh_load_after_random_changes",
        |rig| async move {
            let seed = seed();
            let page_count = env_number("FERROCD_CONVERGENCE_PAGES", 3).max(1);
            let one_browser = std::env::var("FERROCD_CONVERGENCE_ONE_BROWSER").as_deref() == Ok("1");
            eprintln!(
                "convergence: seed {seed} (rerun with FERROCD_TEST_SEED={seed}), {page_count} pages{}",
                if one_browser { " in one browser" } else { ", one browser each" }
            );
            let app = spawn_app_with(|config| {
                config.agent_registration_key = Some(KEY.into());
                // Nothing may change by itself while the pages are compared.
                config.lost_contact_after = Duration::from_secs(3600);
            })
            .await;
            let mut changer = Changer {
                app: &app,
                rng: Rng(seed),
                agents: Vec::new(),
                made: 0,
            };
            for i in 0..8 {
                changer.register(i % 2 == 0).await;
            }

            let url = app.url("/agents");
            let mut pages: Vec<Page> = Vec::new();
            for i in 0..page_count {
                let name = format!("page {}", i + 1);
                let page = match pages.first() {
                    Some(first) if one_browser => rig.open_window(first, &name, &url).await,
                    _ => rig.open(&name, &url).await,
                };
                pages.push(page);
            }
            let page_refs: Vec<&Page> = pages.iter().collect();
            sync_streams(&app, &page_refs).await;
            let mut readers = Vec::new();
            for _ in 0..RAW_READERS {
                readers.push(AgentsMirror::follow(&app).await);
            }

            for _ in 0..CHANGES {
                changer.random_change().await;
                changer.pause().await;
            }
            let burst_agent = changer.final_burst().await;
            let last_change = Instant::now();

            let deadline = last_change + CONVERGE_WITHIN;
            let mut report;
            loop {
                let fresh = app.fresh_agents_page().await;
                report = Vec::new();
                for page in &pages {
                    let differences = page_differences(&page_view(page).await, &fresh);
                    if !differences.is_empty() {
                        report.push(format!("{}:\n    {}", page.describe().await, differences.join("\n    ")));
                    }
                }
                for (i, reader) in readers.iter().enumerate() {
                    let differences = reader.differences(&fresh);
                    if !differences.is_empty() {
                        report.push(format!("raw reader {}:\n    {}", i + 1, differences.join("\n    ")));
                    }
                }
                if report.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    panic!(
                        "seed {seed}: {} of {} pages/readers still differ from a fresh load {:?} after \
                         the last change (the burst was on agent-{burst_agent}):\n{}",
                        report.len(),
                        pages.len() + readers.len(),
                        CONVERGE_WITHIN,
                        report.join("\n")
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let converged = last_change.elapsed();
            let events = readers[0].events();
            let bytes: usize = events.iter().map(|(_, len)| len).sum();
            let tables = events.iter().filter(|(name, _)| name == "agents").count();
            eprintln!(
                "convergence: seed {seed}: every page and reader equal to a fresh load {} ms after \
                 the last change; {} agents made; a reader received {} events ({tables} whole \
                 tables), {bytes} bytes of data",
                converged.as_millis(),
                changer.made,
                events.len(),
            );
        },
    )
    .await;
}
