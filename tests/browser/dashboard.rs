//! `/pipelines` in a real browser: two sessions see a trigger and the stage blocks change
//! without a reload, and a button on one shows on the other.

use fantoccini::Locator;
use serde_json::json;

use crate::helpers::{eventually, spawn_app};
use crate::support::browser_test;

const PIPELINE: &str = r#"
format_version: 10
pipelines:
  shop:
    group: web
    stages:
      - build:
          tasks:
            - exec: {command: make}
      - deploy:
          approval: manual
          tasks:
            - exec: {command: ./deploy.sh}
"#;

#[tokio::test]
async fn two_sessions_see_a_trigger_and_the_stages_change_without_a_reload() {
    browser_test(
        "two_sessions_see_a_trigger_and_the_stages_change_without_a_reload",
        |rig| async move {
            let app = spawn_app().await;
            app.put_config("shop", PIPELINE).await.expect(201);
            let agent = app.register_enabled("builder").await;
            let a = rig.open("session A", &app.url("/pipelines")).await;
            let b = rig.open("session B", &app.url("/pipelines")).await;
            for page in [&a, &b] {
                page.wait_live().await;
                page.mark_document().await;
                page.wait_text_contains("#pipeline-shop", "Never run").await;
            }
            let build = "#pipeline-shop .stage[data-stage='build']";
            let deploy = "#pipeline-shop .stage[data-stage='deploy']";

            // A trigger through the API shows on both pages.
            app.post_json_ok("/go/api/pipelines/shop/schedule").await;
            for page in [&a, &b] {
                page.wait_attrs(build, &[("data-status", "Building")]).await;
                page.wait_attrs(deploy, &[("data-status", "NotRun")]).await;
            }
            // The job passes: build Passed, deploy waits for approval, on both.
            let work = eventually("work", || async {
                let reply = app.as_agent(&agent).work().await;
                (reply.status == 200).then_some(reply.body)
            })
            .await;
            let build_id = work["build_id"].as_i64().unwrap();
            app.as_agent(&agent)
                .report_ok(build_id, "Completed", Some("Passed"))
                .await;
            for page in [&a, &b] {
                page.wait_attrs(build, &[("data-status", "Passed")]).await;
                page.wait_attrs(deploy, &[("data-status", "Awaiting")])
                    .await;
                page.assert_not_reloaded().await;
            }
            // Session A approves with the button; B sees deploy start without a reload.
            a.click(Locator::Css("#pipeline-shop .approve-button"))
                .await;
            b.wait_attrs(deploy, &[("data-status", "Building")]).await;
            b.assert_not_reloaded().await;
            a.wait_attrs(deploy, &[("data-status", "Building")]).await;
            // A pause from B shows on A.
            b.click(Locator::Css("#pipeline-shop button[title='Pause']"))
                .await;
            a.wait_attrs("#pipeline-shop", &[("data-paused", "true")])
                .await;
        },
    )
    .await;
}

/// `git` in `dir`, with a fixed identity; answers its output.
fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .args(["-c", "user.name=Ann", "-c", "user.email=ann@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn commit(repo: &std::path::Path, message: &str) -> String {
    std::fs::write(repo.join("file.txt"), message).unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "--quiet", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

/// "Trigger with options": the card's ▶… opens a dialog that a live change of the card
/// leaves open; picking an older revision and a variable triggers exactly that.
#[tokio::test]
async fn trigger_with_options_runs_the_picked_revision_and_variable() {
    browser_test(
        "trigger_with_options_runs_the_picked_revision_and_variable",
        |rig| async move {
            let work = tempfile::tempdir().unwrap();
            let repo = work.path().join("repo");
            std::fs::create_dir_all(&repo).unwrap();
            git(&repo, &["init", "--quiet", "--initial-branch=main"]);
            let first = commit(&repo, "first");
            let app = crate::helpers::spawn_app_with(|c| {
                c.material_poll_interval = std::time::Duration::from_millis(300)
            })
            .await;
            let yaml = format!(
                "format_version: 10\npipelines:\n  app:\n    group: g\n    environment_variables: {{GREETING: hello}}\n    materials:\n      code: {{git: \"{}\", branch: main}}\n    stages:\n      - build: {{tasks: [{{exec: {{command: make}}}}]}}\n",
                repo.display()
            );
            app.put_config("app", &yaml).await.expect(201);
            let total = || async {
                app.get("/go/api/pipelines/app/history").await.expect(200)["pagination"]["total"]
                    .as_i64()
                    .unwrap()
            };
            eventually("the first poll's instance", || async { (total().await == 1).then_some(()) }).await;
            let second = commit(&repo, "second");
            eventually("the second commit's instance", || async { (total().await == 2).then_some(()) }).await;

            let page = rig.open("dashboard", &app.url("/pipelines")).await;
            page.wait_live().await;
            page.mark_document().await;
            page.click(Locator::Css("#pipeline-app a.trigger-options")).await;
            page.wait_js(
                "the dialog open with the commits to pick",
                "const d = document.getElementById('trigger-dialog'); \
                 return d.open && d.querySelectorAll('select[data-material=code] option').length === 3;",
                vec![],
            )
            .await;
            // A live change of the card (another trigger) leaves the dialog open.
            app.post_json_ok("/go/api/pipelines/app/schedule").await;
            page.wait_text_contains("#pipeline-app .instance-label", "3").await;
            let open = page
                .js("return document.getElementById('trigger-dialog').open;", vec![])
                .await;
            assert_eq!(open, json!(true), "the dialog stays open");
            page.assert_not_reloaded().await;

            page.js(
                "const s = document.querySelector('#trigger-dialog select[data-material=code]'); \
                 s.value = arguments[0]; return null;",
                vec![json!(first)],
            )
            .await;
            page.js(
                "document.querySelector('#trigger-dialog input[name=\"env:GREETING\"]').value = ''; return null;",
                vec![],
            )
            .await;
            page.type_into("#trigger-dialog input[name=\"env:GREETING\"]", "hi <there>").await;
            page.click(Locator::Css("#trigger-dialog button[type=submit]")).await;
            eventually("instance 4", || async { (total().await == 4).then_some(()) }).await;
            page.wait_text_contains("#pipeline-app .instance-label", "4").await;

            // The agent gets instance 4 at the picked revision, with the variable.
            let agent = app.register_enabled("builder").await;
            let mut seen = Vec::new();
            for _ in 0..4 {
                let work = eventually("work", || async {
                    let reply = app.as_agent(&agent).work().await;
                    (reply.status == 200).then_some(reply.body)
                })
                .await;
                let vars = work["environment_variables"].clone();
                seen.push((vars["GO_REVISION"].clone(), vars["GREETING"].clone()));
                app.as_agent(&agent)
                    .report_ok(work["build_id"].as_i64().unwrap(), "Completed", Some("Passed"))
                    .await;
            }
            assert_eq!(
                seen,
                [
                    (json!(first), json!("hello")),
                    (json!(second), json!("hello")),
                    (json!(second), json!("hello")),
                    (json!(first), json!("hi <there>")),
                ],
            );
        },
    )
    .await;
}
