//! A two-stage pipeline with a real `ferrocd agent`, end to end: it passes through a manual
//! approval, fails with the later stage not run, is re-run, and is cancelled mid-job; the
//! example config parses as the README says.

use reqwest::Method;
use serde_json::json;

use crate::agent_runtime::{KEY, enabled_agent};
use crate::helpers::{TestApp, eventually, spawn_app_with};
use crate::pipelines::{stages, trigger};

const TWO_STAGES: &str = r#"
format_version: 10
pipelines:
  app:
    group: demo
    label_template: "v${COUNT}"
    stages:
      - build:
          jobs:
            compile:
              tasks:
                - script: |
                    echo "building $GO_PIPELINE_NAME $GO_PIPELINE_LABEL in stage $GO_STAGE_NAME"
                    test -z "$FAIL" || { echo "failing as asked"; exit 1; }
                    if [ -n "$SLOW" ]; then sleep 60; fi
      - release:
          approval: manual
          jobs:
            ship:
              tasks:
                - exec: {command: /bin/sh, arguments: [-c, "echo shipped $GO_PIPELINE_LABEL by $GO_TRIGGER_USER"]}
"#;

async fn wait_stages(app: &TestApp, counter: i64, expected: &[&str]) {
    eventually(&format!("app/{counter} to be {expected:?}"), || async {
        (stages(app, "app", counter).await == expected).then_some(())
    })
    .await;
}

async fn console_of(app: &TestApp, stage: &str, counter: i64) -> String {
    let stage = app
        .get(&format!("/go/api/stages/app/{counter}/{stage}/1"))
        .await
        .expect(200);
    let build_id = stage["jobs"][0]["id"].as_i64().unwrap();
    String::from_utf8_lossy(&app.console(build_id, None).await.0).into_owned()
}

async fn trigger_with(app: &TestApp, variables: serde_json::Value) -> i64 {
    app.call(
        Method::POST,
        "/go/api/pipelines/app/schedule",
        json!({ "environment_variables": variables }),
    )
    .await
    .expect(202)["pipeline_counter"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_stage_pipeline_passes_fails_reruns_and_cancels_with_a_real_agent() {
    let app = spawn_app_with(|c| c.agent_registration_key = Some(KEY.into())).await;
    app.put_config("app", TWO_STAGES).await.expect(201);
    let agent = enabled_agent(&app).await;

    // Pass, wait for approval, approve, pass.
    assert_eq!(trigger(&app, "app").await, 1);
    wait_stages(&app, 1, &["build:Passed", "release:Awaiting"]).await;
    assert!(
        console_of(&app, "build", 1)
            .await
            .contains("building app v1 in stage build"),
    );
    app.post_json_ok("/go/api/stages/app/1/release/run").await;
    wait_stages(&app, 1, &["build:Passed", "release:Passed"]).await;
    assert!(
        console_of(&app, "release", 1)
            .await
            .contains("shipped v1 by anonymous")
    );

    // Fail: the manual stage after it is not run (but may still be approved by hand).
    let failing = trigger_with(&app, json!([{"name": "FAIL", "value": "yes"}])).await;
    wait_stages(&app, failing, &["build:Failed", "release:NotRun"]).await;
    assert!(
        console_of(&app, "build", failing)
            .await
            .contains("failing as asked")
    );

    // Re-run the failed stage: counter 2 of it, which (with the variables of its instance)
    // fails again, as the instance's plan says.
    let rerun = app
        .post_json_ok(&format!("/go/api/stages/app/{failing}/build/run"))
        .await;
    assert_eq!(rerun["stage_counter"], 2);
    eventually("the re-run to fail too", || async {
        let stage = app
            .get(&format!("/go/api/stages/app/{failing}/build/2"))
            .await
            .body;
        (stage["result"] == "Failed").then_some(())
    })
    .await;

    // Cancel mid-job: the agent stops it, the stage ends Cancelled, the later stage NotRun.
    let slow = trigger_with(&app, json!([{"name": "SLOW", "value": "yes"}])).await;
    eventually("the slow job to be building", || async {
        let stage = app
            .get(&format!("/go/api/stages/app/{slow}/build/1"))
            .await
            .body;
        (stage["jobs"][0]["state"] == "Building").then_some(())
    })
    .await;
    app.post_json_ok(&format!("/go/api/stages/app/{slow}/build/1/cancel"))
        .await;
    wait_stages(&app, slow, &["build:Cancelled", "release:NotRun"]).await;
    let stage = app
        .get(&format!("/go/api/stages/app/{slow}/build/1"))
        .await
        .body;
    assert_eq!(stage["cancelled_by"], "anonymous");
    drop(agent);
}

#[tokio::test]
async fn the_example_config_reads_without_errors() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let app = spawn_app_with(|c| c.config_paths = vec![examples]).await;
    let sources = app.get("/api/config").await.expect(200);
    let source = &sources["sources"][0];
    assert_eq!(source["errors"], json!([]), "{sources}");
    assert_eq!(source["warnings"], json!([]), "{sources}");
    assert_eq!(
        source["pipelines"],
        json!(["shop-api", "shop-smoke", "shop-flaky"])
    );
    let api = app.get("/api/pipelines/shop-api/config").await.expect(200);
    assert_eq!(api["stages"][2]["approval"]["manual"], true);
    assert_eq!(
        api["stages"][1]["jobs"][0]["run_instances"],
        json!({"count": 3})
    );
}
