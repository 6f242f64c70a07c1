//! The history, stage and build cause pages never stay wrong: pages on two pipelines'
//! histories, on several stage runs and on three instances' build causes watch the dashboard
//! test's seeded, random run of triggers, passing and failing jobs, approvals, pauses,
//! cancels, re-runs of failed or selected jobs and config changes, and then every page must
//! equal a fresh load of its own address. Seeds as in `convergence.rs`.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::convergence::{Rng, seed};
use crate::dashboard_convergence::{Changer, config};
use crate::helpers::spawn_app;
use crate::support::{Page, browser_test};

const CHANGES: usize = 120;
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);
const PAGES: &[&str] = &[
    "/pipelines/build-api/history",
    "/pipelines/deploy/history",
    "/pipelines/build-api/1/compile/1",
    "/pipelines/build-web/1/compile/1",
    "/pipelines/build-web/1/compile/2",
    "/pipelines/nightly/1/all/1",
];

/// What a page's live parts show, the same for the live page and a fresh load: per swapped
/// element its text (ticking durations blanked) and the state its rows and blocks carry.
const SUMMARY: &str = r#"
const summarize = (root) => Array.from(root.querySelectorAll('[sse-swap]')).map((el) => {
  const copy = el.cloneNode(true);
  copy.querySelectorAll('.ticking').forEach((t) => { t.textContent = ''; });
  const states = Array.from(copy.querySelectorAll('[data-status],[data-state],[data-reason]'))
    .map((e) => (e.id || e.dataset.stage || e.dataset.agent || '') + '=' +
      [e.dataset.status, e.dataset.state, e.dataset.result, e.dataset.reason].filter(Boolean).join('/'));
  const forms = Array.from(copy.querySelectorAll('form')).map((f) => f.getAttribute('action'));
  return [el.id, copy.textContent.replace(/\s+/g, ' ').trim(), states.join(' '), forms.join(' ')].join(' | ');
});
"#;

pub async fn summary(page: &Page, html: Option<&str>) -> Vec<String> {
    let value = match html {
        None => page.js(&format!("{SUMMARY} return summarize(document);"), vec![]).await,
        Some(html) => {
            page.js(
                &format!(
                    "{SUMMARY} return summarize(new DOMParser().parseFromString(arguments[0], 'text/html'));"
                ),
                vec![json!(html)],
            )
            .await
        }
    };
    value
        .as_array()
        .expect("a summary")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

/// The stage runs of the newest instances that have not finished, as page paths.
async fn running_stages(app: &crate::helpers::TestApp) -> Vec<String> {
    let mut paths = Vec::new();
    for pipeline in ["build-api", "build-web", "deploy", "nightly"] {
        let history = app
            .get(&format!("/go/api/pipelines/{pipeline}/history"))
            .await;
        let Some(instances) = history.body["pipelines"].as_array() else {
            continue;
        };
        for instance in instances.iter().take(3) {
            let counter = &instance["counter"];
            for stage in instance["stages"].as_array().into_iter().flatten() {
                if ["Building", "Failing"].contains(&stage["status"].as_str().unwrap_or("")) {
                    paths.push(format!(
                        "/pipelines/{pipeline}/{counter}/{}/{}",
                        stage["name"].as_str().unwrap_or(""),
                        stage["counter"].as_str().unwrap_or("1")
                    ));
                }
            }
        }
    }
    paths
}

#[tokio::test]
async fn history_and_stage_pages_end_equal_to_a_fresh_load_after_random_changes() {
    browser_test(
        "history_and_stage_pages_end_equal_to_a_fresh_load_after_random_changes",
        |rig| async move {
            let seed = seed();
            eprintln!("pipeline pages convergence: seed {seed} (FERROCD_TEST_SEED={seed})");
            let app = spawn_app().await;
            app.put_config("all", &config(false, "web"))
                .await
                .expect(201);
            let agent = app.register_enabled("builder").await;
            let mut changer = Changer {
                app: &app,
                agent,
                rng: Rng(seed),
                extra: false,
            };
            // The runs the pages show exist first: build-web/1/compile ran twice.
            for pipeline in ["build-api", "build-web", "nightly"] {
                changer
                    .post(&format!("/go/api/pipelines/{pipeline}/schedule"), json!({}))
                    .await;
            }
            changer
                .post("/go/api/stages/build-web/1/compile/1/cancel", json!({}))
                .await;
            crate::helpers::eventually("build-web/1/compile/1 ends", || async {
                let stage = app.get("/go/api/stages/build-web/1/compile/1").await;
                (stage.body["result"] == "Cancelled").then_some(())
            })
            .await;
            changer
                .post("/go/api/stages/build-web/1/compile/run", json!({}))
                .await;
            let mut pages: Vec<(Page, String)> = Vec::new();
            for path in PAGES {
                let url = app.url(path);
                let page = match pages.first() {
                    None => rig.open(path, &url).await,
                    Some((first, _)) => rig.open_window(first, path, &url).await,
                };
                page.wait_live().await;
                pages.push((page, path.to_string()));
            }
            // Build cause pages of the instances running now, in a browser of their own: their
            // stage blocks move from here.
            let first_cause = pages.len();
            for path in [
                "/pipelines/build-api/1/build_cause",
                "/pipelines/build-web/1/build_cause",
                "/pipelines/nightly/1/build_cause",
            ] {
                let url = app.url(path);
                let page = match pages.get(first_cause) {
                    None => rig.open(path, &url).await,
                    Some((first, _)) => rig.open_window(first, path, &url).await,
                };
                page.wait_live().await;
                pages.push((page, path.to_string()));
            }
            for round in 0..CHANGES {
                if round == CHANGES / 2 {
                    // Halfway, pages on the stage runs going on now: their jobs move from here.
                    // A browser of their own: one holds six connections to a host at most.
                    let first_new = pages.len();
                    for path in running_stages(&app).await.into_iter().take(4) {
                        let url = app.url(&path);
                        let page = match pages.get(first_new) {
                            None => rig.open(&path, &url).await,
                            Some((first, _)) => rig.open_window(first, &path, &url).await,
                        };
                        page.wait_live().await;
                        pages.push((page, path));
                    }
                }
                changer.random_change().await;
                if changer.rng.below(5) == 0 {
                    tokio::time::sleep(Duration::from_millis(changer.rng.below(20) as u64)).await;
                }
            }
            converge(&app, &pages, seed, "pipeline pages", "the last change").await;
        },
    )
    .await;
}

/// Waits until every page equals a fresh load of its address, within [`CONVERGE_WITHIN`]
/// (else panics, showing each page that differs beside its fresh load).
pub async fn converge(
    app: &crate::helpers::TestApp,
    pages: &[(Page, String)],
    seed: u64,
    test: &str,
    after: &str,
) {
    let last_change = Instant::now();
    let deadline = last_change + CONVERGE_WITHIN;
    loop {
        let mut report = Vec::new();
        for (page, path) in pages {
            let fresh_html = app.get(path).await.text();
            let fresh = summary(page, Some(&fresh_html)).await;
            let shown = summary(page, None).await;
            if shown != fresh {
                report.push(format!("{path}:\n  page:  {shown:#?}\n  fresh: {fresh:#?}"));
            }
        }
        if report.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "seed {seed}: {} of {} pages differ from a fresh load {CONVERGE_WITHIN:?} \
                 after {after}:\n{}",
                report.len(),
                pages.len(),
                report.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{test} convergence: seed {seed}: every page equal to a fresh load {} ms after {after}",
        last_change.elapsed().as_millis()
    );
}
