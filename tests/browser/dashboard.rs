//! `/pipelines` in a real browser: two sessions see a trigger and the stage blocks change
//! without a reload, and a button on one shows on the other.

use fantoccini::Locator;

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
