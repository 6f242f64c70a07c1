//! The example pipelines (`examples/`, README "Try the example pipelines") run end to end
//! with a real `ferrocd agent`: shop-api builds its binary once and publishes it; its test
//! slices and its deploy fetch that very file, and shop-smoke fetches it from the upstream
//! instance it runs after; every test slice's JUnit report is summarised on the stage page.

use std::time::Duration;

use serde_json::Value;

use crate::agent_runtime::{KEY, enabled_agent};
use crate::helpers::{TestApp, spawn_app_with};

/// The example's build sleeps a few seconds by design (the dashboard has something to show).
const WITHIN: Duration = Duration::from_secs(120);

/// The stage run's jobs once it has a result.
async fn ended(app: &TestApp, stage: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let reply = app.get(&format!("/go/api/stages/{stage}")).await;
        if reply.status == 200
            && reply.body["result"].is_string()
            && reply.body["result"] != "Unknown"
        {
            return reply.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{stage} did not end within {WITHIN:?}: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn console_of(app: &TestApp, job: &Value) -> String {
    String::from_utf8_lossy(&app.console(job["id"].as_i64().unwrap(), None).await.0).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_pipelines_pass_one_build_down_as_artifacts() {
    let app = spawn_app_with(|c| c.agent_registration_key = Some(KEY.into())).await;
    let yaml = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/shop.gocd.yaml"),
    )
    .unwrap();
    app.put_config("shop", &yaml).await.expect(201);
    let _agent = enabled_agent(&app).await;
    app.post_json_ok("/go/api/pipelines/shop-api/schedule")
        .await;

    let build = ended(&app, "shop-api/1/build/1").await;
    assert_eq!(build["result"], "Passed", "{build}");
    let compile = &build["jobs"][0];
    let files = app
        .get(&format!("/api/builds/{}/artifacts", compile["id"]))
        .await
        .expect(200);
    assert_eq!(files["files"][0]["path"], "dist/shop-api");
    let sum = files["files"][0]["sha256"].as_str().unwrap().to_string();
    assert!(console_of(&app, compile).await.contains(&sum));

    let test = ended(&app, "shop-api/1/test/1").await;
    assert_eq!(test["result"], "Passed", "{test}");
    for job in test["jobs"].as_array().unwrap() {
        let log = console_of(&app, job).await;
        assert_eq!(job["result"], "Passed", "{log}");
        if job["name"].as_str().unwrap().starts_with("unit") {
            assert!(
                log.contains("Fetched 1 file(s) from shop-api/1/build/1/compile"),
                "{log}"
            );
        }
    }
    let stage_page = app.get("/pipelines/shop-api/1/test/1").await.text();
    assert!(
        stage_page.contains("<b>6</b> tests: <span class=\"passed-count\">6 passed</span>"),
        "three slices, two tests each: {stage_page}"
    );

    // Downstream, through its dependency material: the same bytes.
    let smoke = ended(&app, "shop-smoke/1/smoke/1").await;
    let log = console_of(&app, &smoke["jobs"][0]).await;
    assert_eq!(smoke["result"], "Passed", "{log}");
    assert!(log.contains(&format!("{sum}  shop-api")), "{log}");
    assert!(log.contains("shop-api 1.4.1"), "{log}");

    // The deploy, once approved, ships that file too.
    app.post_json_ok("/go/api/stages/shop-api/1/deploy/run")
        .await;
    let deploy = ended(&app, "shop-api/1/deploy/1").await;
    let log = console_of(&app, &deploy["jobs"][0]).await;
    assert_eq!(deploy["result"], "Passed", "{log}");
    assert!(log.contains(&format!("{sum}  shop-api")), "{log}");
}
