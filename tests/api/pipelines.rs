//! Pipelines from GoCD YAML, run end to end over HTTP: configs stored through the API, a
//! trigger, stages that follow each other, manual approval, failure, re-runs, cancel, pause,
//! locks, dependency triggers, GoCD's variables, and a restart in the middle. The jobs are
//! finished through the agent protocol by the test (the real agent has its own test).

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Api, Registered, Server, eventually, spawn_app, test_config};

pub async fn trigger(api: &Api, pipeline: &str) -> i64 {
    let body = api
        .call(
            Method::POST,
            &format!("/go/api/pipelines/{pipeline}/schedule"),
            json!({}),
        )
        .await
        .expect(202);
    assert_eq!(
        body["message"],
        format!("Request to schedule pipeline {pipeline} accepted")
    );
    body["pipeline_counter"].as_i64().expect("a counter")
}

/// Each stage of an instance as `name:status`.
pub async fn stages(api: &Api, pipeline: &str, counter: i64) -> Vec<String> {
    let body = api
        .get(&format!("/go/api/pipelines/{pipeline}/instance/{counter}"))
        .await
        .expect(200);
    body["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            format!(
                "{}:{}",
                s["name"].as_str().unwrap(),
                s["status"].as_str().unwrap()
            )
        })
        .collect()
}

/// The agent takes its next job and finishes it with `result`; returns the WORK.
pub async fn finish_next(api: &Api, agent: &Registered, result: &str) -> Value {
    let work = eventually("work for the agent", || async {
        let reply = api.as_agent(agent).work().await;
        (reply.status == 200).then_some(reply.body)
    })
    .await;
    let build_id = work["build_id"].as_i64().unwrap();
    api.as_agent(agent)
        .report_ok(build_id, "Building", None)
        .await;
    api.as_agent(agent)
        .report_ok(build_id, "Completed", Some(result))
        .await;
    work
}

const THREE_STAGES: &str = r#"
format_version: 10
pipelines:
  shop:
    group: web
    label_template: "1.0.${COUNT}"
    environment_variables:
      SCOPE: pipeline
      FROM_PIPELINE: "yes"
    stages:
      - build:
          environment_variables:
            SCOPE: stage
          jobs:
            compile:
              environment_variables:
                SCOPE: job
              tasks:
                - exec: {command: make, arguments: [all]}
      - test:
          jobs:
            unit:
              tasks:
                - exec: {command: make, arguments: [test]}
      - deploy:
          approval: manual
          jobs:
            prod:
              tasks:
                - script: ./deploy.sh
"#;

#[tokio::test]
async fn a_triggered_pipeline_runs_its_stages_in_order_and_waits_for_a_manual_one() {
    let app = spawn_app().await;
    app.put_config("shop", THREE_STAGES).await.expect(201);
    let agent = app.register_enabled("builder").await;
    let counter = trigger(&app, "shop").await;
    assert_eq!(counter, 1);
    assert_eq!(
        stages(&app, "shop", 1).await,
        ["build:Building", "test:NotRun", "deploy:NotRun"]
    );

    let work = finish_next(&app, &agent, "Passed").await;
    assert_eq!(work["job_name"], "compile");
    assert_eq!(work["stage_name"], "build");
    let vars = &work["environment_variables"];
    assert_eq!(vars["SCOPE"], "job", "job > stage > pipeline");
    assert_eq!(vars["FROM_PIPELINE"], "yes");
    assert_eq!(vars["GO_PIPELINE_LABEL"], "1.0.1");
    assert_eq!(vars["GO_TRIGGER_USER"], "anonymous");

    assert_eq!(
        stages(&app, "shop", 1).await,
        ["build:Passed", "test:Building", "deploy:NotRun"]
    );
    let work = finish_next(&app, &agent, "Passed").await;
    assert_eq!(work["job_name"], "unit");
    assert_eq!(
        stages(&app, "shop", 1).await,
        ["build:Passed", "test:Passed", "deploy:Awaiting"]
    );
    assert_eq!(
        app.as_agent(&agent).work().await.status,
        204,
        "deploy waits"
    );

    let approved = app
        .call(Method::POST, "/go/api/stages/shop/1/deploy/run", json!({}))
        .await
        .expect(202);
    assert_eq!(approved["stage_counter"], 1);
    let work = finish_next(&app, &agent, "Passed").await;
    assert_eq!(work["job_name"], "prod");
    assert_eq!(
        stages(&app, "shop", 1).await,
        ["build:Passed", "test:Passed", "deploy:Passed"]
    );
    let history = app.get("/go/api/pipelines/shop/history").await.expect(200);
    assert_eq!(history["pipelines"][0]["label"], "1.0.1");
    assert_eq!(history["pagination"]["total"], 1);
    let stage = app.get("/go/api/stages/shop/1/deploy/1").await.expect(200);
    assert_eq!(stage["result"], "Passed");
    assert_eq!(stage["approved_by"], "anonymous");
    assert_eq!(stage["jobs"][0]["name"], "prod");

    // The pages a person opens say the same.
    let board = app.get("/pipelines").await.text();
    assert!(board.contains(r#"id="pipeline-shop""#), "{board}");
    assert!(
        board.contains(r#"data-stage="deploy" data-status="Passed""#),
        "{board}"
    );
    let history = app.get("/pipelines/shop/history").await.text();
    assert!(history.contains(r#"id="instance-1""#), "{history}");
    let stage_page = app.get("/pipelines/shop/1/build/1").await.text();
    assert!(stage_page.contains(r#"id="jobs-table""#), "{stage_page}");
    assert!(
        stage_page.contains(r#"id="job-compile" data-state="Completed" data-result="Passed""#),
        "{stage_page}"
    );
    assert_eq!(app.get("/").await.status, 200, "/ leads to the dashboard");

    let dashboard = app.get("/go/api/dashboard").await.expect(200);
    assert_eq!(dashboard["_embedded"]["pipeline_groups"][0]["name"], "web");
    assert_eq!(
        dashboard["_embedded"]["pipeline_groups"][0]["pipelines"],
        json!(["shop"])
    );
    let shop = &dashboard["_embedded"]["pipelines"][0];
    assert_eq!(shop["name"], "shop");
    let instance = &shop["_embedded"]["instances"][0];
    assert_eq!(instance["label"], "1.0.1");
    assert_eq!(instance["_embedded"]["stages"][2]["status"], "Passed");

    // Build monitors read the same in CCTray's shape: a project per stage and per job.
    let feed = app.get("/go/cctray.xml").await;
    assert_eq!(feed.status, 200);
    assert!(feed.header("content-type").starts_with("application/xml"));
    let xml = feed.text();
    assert!(
        !xml.contains("name=\"shop\""),
        "no project for the pipeline itself"
    );
    for project in [
        "shop :: build",
        "shop :: build :: compile",
        "shop :: deploy :: prod",
    ] {
        let line = xml
            .lines()
            .find(|l| l.contains(&format!("name=\"{project}\"")))
            .unwrap_or_else(|| panic!("{project} in {xml}"));
        assert!(line.contains("activity=\"Sleeping\""), "{line}");
        assert!(line.contains("lastBuildStatus=\"Success\""), "{line}");
        assert!(line.contains("lastBuildLabel=\"1.0.1\""), "{line}");
        assert!(line.contains(&format!("webUrl=\"{}/", app.base)), "{line}");
    }
}

#[tokio::test]
async fn a_failed_stage_stops_the_instance_and_can_be_run_again() {
    let app = spawn_app().await;
    app.put_config("shop", THREE_STAGES).await.expect(201);
    let agent = app.register_enabled("builder").await;
    trigger(&app, "shop").await;
    finish_next(&app, &agent, "Failed").await;
    assert_eq!(
        stages(&app, "shop", 1).await,
        ["build:Failed", "test:NotRun", "deploy:NotRun"]
    );
    assert_eq!(app.as_agent(&agent).work().await.status, 204);
    // An automatic stage after a failure may not be started by hand.
    let refused = app
        .call(Method::POST, "/go/api/stages/shop/1/test/run", json!({}))
        .await;
    assert_eq!(refused.status, 409, "{}", refused.message());
    // The failed stage runs again as counter 2, and the instance goes on from there.
    let rerun = app
        .call(Method::POST, "/go/api/stages/shop/1/build/run", json!({}))
        .await
        .expect(202);
    assert_eq!(rerun["stage_counter"], 2);
    let work = finish_next(&app, &agent, "Passed").await;
    assert_eq!(work["stage_counter"], 2);
    assert_eq!(
        stages(&app, "shop", 1).await,
        ["build:Passed", "test:Building", "deploy:NotRun"]
    );
    let first = app.get("/go/api/stages/shop/1/build/1").await.expect(200);
    assert_eq!(
        first["result"], "Failed",
        "the first run of the stage keeps its result"
    );
}

#[tokio::test]
async fn cancelling_a_stage_cancels_its_jobs_and_stops_the_instance() {
    let app = spawn_app().await;
    app.put_config("shop", THREE_STAGES).await.expect(201);
    trigger(&app, "shop").await;
    let cancelled = app
        .call(
            Method::POST,
            "/go/api/stages/shop/1/build/1/cancel",
            json!({}),
        )
        .await
        .expect(200);
    assert!(cancelled["message"].as_str().unwrap().contains("cancelled"));
    assert_eq!(
        stages(&app, "shop", 1).await,
        ["build:Cancelled", "test:NotRun", "deploy:NotRun"]
    );
    assert_eq!(app.pending_count().await, 0);
}

#[tokio::test]
async fn a_paused_pipeline_refuses_a_trigger_with_its_cause() {
    let app = spawn_app().await;
    app.put_config("shop", THREE_STAGES).await.expect(201);
    let paused = app
        .call(
            Method::POST,
            "/go/api/pipelines/shop/pause",
            json!({"pause_cause": "release freeze"}),
        )
        .await
        .expect(200);
    assert!(paused["message"].as_str().unwrap().contains("paused"));
    let status = app.get("/go/api/pipelines/shop/status").await.expect(200);
    assert_eq!(status["paused"], true);
    assert_eq!(status["paused_cause"], "release freeze");
    let refused = app
        .call(Method::POST, "/go/api/pipelines/shop/schedule", json!({}))
        .await;
    assert_eq!(refused.status, 409);
    assert!(
        refused.message().contains("release freeze"),
        "{}",
        refused.message()
    );
    app.post_json_ok("/go/api/pipelines/shop/unpause").await;
    assert_eq!(trigger(&app, "shop").await, 1);
}

#[tokio::test]
async fn a_locked_pipeline_runs_one_instance_at_a_time() {
    let app = spawn_app().await;
    let yaml = r#"
pipelines:
  deploy:
    group: ops
    lock_behavior: unlockWhenFinished
    stages:
      - only:
          tasks:
            - exec: {command: "true"}
"#;
    app.put_config("deploy", yaml).await.expect(201);
    let agent = app.register_enabled("builder").await;
    trigger(&app, "deploy").await;
    let refused = app
        .call(Method::POST, "/api/pipelines/deploy/schedule", json!({}))
        .await;
    assert_eq!(refused.status, 409);
    assert!(
        refused.message().contains("deploy/1"),
        "{}",
        refused.message()
    );
    finish_next(&app, &agent, "Failed").await;
    assert_eq!(
        trigger(&app, "deploy").await,
        2,
        "unlocked once the instance ended"
    );
}

#[tokio::test]
async fn a_passed_upstream_stage_triggers_the_pipelines_that_depend_on_it() {
    let app = spawn_app().await;
    let yaml = r#"
format_version: 10
pipelines:
  upstream:
    group: chain
    label_template: "u-${COUNT}"
    stages:
      - build:
          tasks:
            - exec: {command: "true"}
  downstream:
    group: chain
    label_template: "${up}-d${COUNT}"
    materials:
      up:
        pipeline: upstream
        stage: build
    stages:
      - deploy:
          tasks:
            - exec: {command: "true"}
  ignoring:
    group: chain
    materials:
      up:
        pipeline: upstream
        stage: build
        ignore_for_scheduling: true
    stages:
      - nothing:
          tasks:
            - exec: {command: "true"}
"#;
    app.put_config("chain", yaml).await.expect(201);
    let agent = app.register_enabled("builder").await;
    trigger(&app, "upstream").await;
    finish_next(&app, &agent, "Passed").await;
    let work = finish_next(&app, &agent, "Passed").await;
    assert_eq!(work["pipeline_name"], "downstream");
    assert_eq!(work["environment_variables"]["GO_TRIGGER_USER"], "changes");
    assert_eq!(work["environment_variables"]["GO_PIPELINE_LABEL"], "u-1-d1");
    assert_eq!(stages(&app, "downstream", 1).await, ["deploy:Passed"]);
    let ignoring = app
        .get("/go/api/pipelines/ignoring/history")
        .await
        .expect(200);
    assert_eq!(ignoring["pagination"]["total"], 0, "ignore_for_scheduling");
}

#[tokio::test]
async fn an_invalid_document_changes_nothing_and_names_its_errors() {
    let app = spawn_app().await;
    app.put_config("shop", THREE_STAGES).await.expect(201);
    let broken = app.put_config(
        "shop",
        "pipelines:\n  shop:\n    group: web\n    stages:\n      - build:\n          tasks:\n            - exec: {command: make, args: [all]}\n",
    )
    .await;
    assert_eq!(broken.status, 422);
    let errors = broken.body["errors"].as_array().expect("errors");
    assert!(
        errors
            .iter()
            .any(|e| e["path"].as_str().unwrap_or("").contains("args")),
        "{errors:?}"
    );
    assert_eq!(errors[0]["file"], "api:shop");
    // The good version is still the one in effect.
    let config = app.get("/api/pipelines/shop/config").await.expect(200);
    assert_eq!(config["stages"].as_array().unwrap().len(), 3);
    assert_eq!(config["stages"][2]["approval"]["manual"], true);
    // A document another depends on cannot go.
    let downstream = "pipelines:\n  after:\n    group: web\n    materials:\n      shop:\n        pipeline: shop\n        stage: test\n    stages:\n      - go:\n          tasks:\n            - exec: {command: \"true\"}\n";
    app.put_config("after", downstream).await.expect(201);
    let refused = app
        .call(Method::DELETE, "/api/config/shop", json!({}))
        .await;
    assert_eq!(refused.status, 409);
    assert!(refused.message().contains("after"), "{}", refused.message());
    app.call(Method::DELETE, "/api/config/after", json!({}))
        .await
        .expect(200);
    let sources = app.get("/api/config").await.expect(200);
    assert_eq!(sources["sources"].as_array().unwrap().len(), 1);
    // An ad-hoc job may not borrow a configured pipeline's name.
    let ad_hoc = app
        .schedule(json!({
            "pipeline_name": "SHOP", "stage_name": "s", "job_name": "j",
            "tasks": [{"command": "true"}]
        }))
        .await;
    assert_eq!(ad_hoc.status, 409, "{}", ad_hoc.message());
    assert!(
        ad_hoc.message().contains("trigger it"),
        "{}",
        ad_hoc.message()
    );
}

#[tokio::test]
async fn an_instance_carries_on_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let config_dir = data.path().join("pipelines");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("shop.gocd.yaml"), THREE_STAGES).unwrap();
    let settings = || {
        let mut config = test_config(data.path());
        config.config_paths = vec![config_dir.clone()];
        config.registrations_per_second = 0;
        config
    };
    let server = Server::start(settings()).await;
    let api = server.api();
    let agent = api.register_enabled("builder").await;
    trigger(&api, "shop").await;
    let work = eventually("work", || async {
        let reply = api.as_agent(&agent).work().await;
        (reply.status == 200).then_some(reply.body)
    })
    .await;
    let build_id = work["build_id"].as_i64().unwrap();
    api.as_agent(&agent)
        .report_ok(build_id, "Building", None)
        .await;
    server.stop().await;

    let server = Server::start(settings()).await;
    let api = server.api();
    api.as_agent(&agent)
        .report_ok(build_id, "Completed", Some("Passed"))
        .await;
    assert_eq!(
        stages(&api, "shop", 1).await,
        ["build:Passed", "test:Building", "deploy:NotRun"]
    );
    server.stop().await;
}

/// Our answers have the keys and JSON types of GoCD's documented examples (except where
/// docs/API.md says we depart).
#[tokio::test]
async fn the_gocd_apis_answer_in_gocds_shapes() {
    use crate::gocd_shape::assert_same_shape;
    let app = spawn_app().await;
    app.put_config("shop", THREE_STAGES).await.expect(201);
    let agent = app.register_enabled("builder").await;
    trigger(&app, "shop").await;
    finish_next(&app, &agent, "Passed").await;
    let pause = app
        .call(
            Method::POST,
            "/go/api/pipelines/shop/pause",
            json!({"pause_cause": "x"}),
        )
        .await
        .expect(200);
    assert_same_shape("pause.v1.json", &pause);
    let unpause = app.post_json_ok("/go/api/pipelines/shop/unpause").await;
    assert_same_shape("unpause.v1.json", &unpause);
    assert_same_shape(
        "pipeline_status.v1.json",
        &app.get("/go/api/pipelines/shop/status").await.expect(200),
    );
    assert_same_shape(
        "pipeline_instance.v1.json",
        &app.get("/go/api/pipelines/shop/instance/1")
            .await
            .expect(200),
    );
    // One page of history: GoCD's example has both paging links, ours only what applies.
    crate::gocd_shape::assert_same_shape_except(
        "pipeline_history.v1.json",
        &app.get("/go/api/pipelines/shop/history").await.expect(200),
        &["_links.next", "_links.previous"],
    );
    assert_same_shape(
        "stage_instance.v3.json",
        &app.get("/go/api/stages/shop/1/build/1").await.expect(200),
    );
    assert_same_shape(
        "dashboard.v4.json",
        &app.get("/go/api/dashboard").await.expect(200),
    );
    let cancel = app
        .call(
            Method::POST,
            "/go/api/stages/shop/1/test/1/cancel",
            json!({}),
        )
        .await
        .expect(200);
    assert_same_shape("stage_cancel.v3.json", &cancel);
}

/// A Scheduled job says why it waits: per agent, the first reason it does not run it.
#[tokio::test]
async fn a_waiting_job_says_why_for_each_agent() {
    let app = spawn_app().await;
    let yaml = "pipelines:\n  gpu:\n    group: ml\n    stages:\n      - train:\n          resources: [gpu, linux]\n          tasks:\n            - exec: {command: train}\n";
    app.put_config("gpu", yaml).await.expect(201);
    let pending = app.register("pending-box").await;
    let plain = app.register_enabled("plain-box").await;
    let gpu = app.register_enabled("gpu-box").await;
    app.patch_agent(&gpu.uuid, json!({"resources": "gpu,linux"}))
        .await
        .expect(200);
    let busy = app.register_enabled("busy-box").await;
    app.patch_agent(&busy.uuid, json!({"resources": "gpu,linux"}))
        .await
        .expect(200);
    trigger(&app, "gpu").await;
    app.as_agent(&busy).take_work().await; // it takes the first instance's job
    trigger(&app, "gpu").await;
    let stage = app.get("/go/api/stages/gpu/2/train/1").await.expect(200);
    let build_id = stage["jobs"][0]["id"].as_i64().unwrap();
    let run = app
        .get(&format!("/api/builds/{build_id}"))
        .await
        .expect(200);
    let waiting = run["waiting"].as_array().expect("waiting");
    let reason = |uuid: &str| {
        waiting
            .iter()
            .find(|w| w["uuid"] == uuid)
            .map(|w| {
                (
                    w["reason"].as_str().unwrap().to_string(),
                    w["message"].as_str().unwrap().to_string(),
                )
            })
            .unwrap()
    };
    assert_eq!(reason(&pending.uuid).0, "pending");
    let (why, message) = reason(&plain.uuid);
    assert_eq!(why, "resources");
    assert!(message.contains("gpu"), "{message}");
    assert_eq!(reason(&gpu.uuid).0, "idle");
    let (why, message) = reason(&busy.uuid);
    assert_eq!(why, "busy");
    assert!(message.contains("gpu/train"), "{message}");
    assert!(
        ["busy", "idle"].contains(&waiting[0]["reason"].as_str().unwrap()),
        "matching agents come first: {waiting:?}"
    );
}

const THREE_JOBS: &str = r#"
format_version: 10
pipelines:
  suite:
    group: qa
    stages:
      - test:
          jobs:
            a: {tasks: [{exec: {command: make, arguments: [a]}}]}
            b: {tasks: [{exec: {command: make, arguments: [b]}}]}
            c: {tasks: [{exec: {command: make, arguments: [c]}}]}
      - package:
          tasks: [{exec: {command: make, arguments: [package]}}]
"#;

/// The jobs of a stage run as `name:state:result`, and their build ids by name.
async fn stage_jobs(api: &Api, path: &str) -> (Vec<String>, Vec<(String, i64)>) {
    let stage = api.get(&format!("/go/api/stages/{path}")).await.expect(200);
    let jobs = stage["jobs"].as_array().expect("jobs");
    let mut shown: Vec<String> = jobs
        .iter()
        .map(|j| {
            format!(
                "{}:{}:{}",
                j["name"].as_str().unwrap(),
                j["state"].as_str().unwrap(),
                j["result"].as_str().unwrap()
            )
        })
        .collect();
    shown.sort();
    let ids = jobs
        .iter()
        .map(|j| {
            (
                j["name"].as_str().unwrap().to_string(),
                j["id"].as_i64().unwrap(),
            )
        })
        .collect();
    (shown, ids)
}

/// GoCD's "rerun failed jobs": the stage's next run schedules the failed jobs only and keeps
/// the others' results; "rerun selected jobs" likewise; the instance goes on once it passes.
#[tokio::test]
async fn rerunning_failed_or_selected_jobs_keeps_the_others_results() {
    let app = spawn_app().await;
    app.put_config("suite", THREE_JOBS).await.expect(201);
    let agent = app.register_enabled("builder").await;
    trigger(&app, "suite").await;
    let mut first_ids = Vec::new();
    for result in ["Passed", "Failed", "Passed"] {
        let work = finish_next(&app, &agent, result).await;
        first_ids.push(work["build_id"].as_i64().unwrap());
    }
    assert_eq!(
        stages(&app, "suite", 1).await,
        ["test:Failed", "package:NotRun"]
    );
    let post = |path: &str, body: Value| {
        let path = format!("/go/api/stages/suite/1/test/{path}");
        let app = &app;
        async move { app.call(Method::POST, &path, body).await }
    };
    for bad in [
        json!({"jobs": []}),
        json!({"jobs": ["a", "nope"]}),
        json!({"jobs": "a"}),
    ] {
        let reply = post("1/run-selected-jobs", bad.clone()).await;
        assert!(
            [404, 422].contains(&reply.status),
            "{bad}: {} {}",
            reply.status,
            reply.body
        );
        assert!(reply.body["message"].is_string(), "{}", reply.body);
    }

    let body = post("1/run-failed-jobs", json!({})).await.expect(202);
    assert_eq!(body["message"], "Request to rerun jobs accepted");
    assert_eq!(body["stage_counter"], 2);
    let (shown, _) = stage_jobs(&app, "suite/1/test/2").await;
    assert_eq!(
        shown,
        [
            "a:Completed:Passed",
            "b:Scheduled:Unknown",
            "c:Completed:Passed"
        ]
    );
    assert_eq!(
        stages(&app, "suite", 1).await,
        ["test:Building", "package:NotRun"]
    );
    let reply = post("2/run-failed-jobs", json!({})).await;
    assert_eq!(reply.status, 409, "a running stage: {}", reply.body);
    let work = finish_next(&app, &agent, "Failed").await;
    assert_eq!(
        (work["job_name"].as_str(), work["stage_counter"].as_i64()),
        (Some("b"), Some(2))
    );
    assert_eq!(
        stages(&app, "suite", 1).await,
        ["test:Failed", "package:NotRun"]
    );
    let reply = post("1/run-failed-jobs", json!({})).await;
    assert_eq!(reply.status, 409, "not the latest run: {}", reply.body);

    let body = post("2/run-selected-jobs", json!({"jobs": ["B", "c"]}))
        .await
        .expect(202);
    assert_eq!(body["stage_counter"], 3);
    let (shown, ids) = stage_jobs(&app, "suite/1/test/3").await;
    assert_eq!(
        shown,
        [
            "a:Completed:Passed",
            "b:Scheduled:Unknown",
            "c:Scheduled:Unknown"
        ]
    );
    finish_next(&app, &agent, "Passed").await;
    finish_next(&app, &agent, "Passed").await;
    assert_eq!(
        stages(&app, "suite", 1).await,
        ["test:Passed", "package:Building"]
    );
    finish_next(&app, &agent, "Passed").await;
    let reply = post("3/run-failed-jobs", json!({})).await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap()
            .contains("no failed jobs"),
        "{}",
        reply.body
    );

    // A copy is the run it copies: its page is the original's, and the agent ran it once.
    let a_copy = ids.iter().find(|(n, _)| n == "a").unwrap().1;
    let run = app.get(&format!("/api/builds/{a_copy}")).await.expect(200);
    assert_eq!(
        run["copied_from"], first_ids[0],
        "the first run, through the copy of a copy"
    );
    let page = app
        .without_redirects()
        .get(&format!("/builds/{a_copy}"))
        .await;
    assert_eq!(page.status, 303);
    assert_eq!(page.header("location"), format!("/builds/{}", first_ids[0]));
    let history = app
        .get(&format!(
            "/api/agents/{}/job_run_history?page_size=50",
            agent.uuid
        ))
        .await
        .expect(200);
    let count = |job: &str| {
        history["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["job_name"] == job)
            .count()
    };
    assert_eq!((count("a"), count("b"), count("c")), (1, 3, 2), "{history}");
}

/// `run_instances: all`: one copy per enabled agent that matches, each run by its own agent.
#[tokio::test]
async fn run_on_all_agents_runs_one_copy_on_each_matching_agent() {
    let app = spawn_app().await;
    let yaml = "pipelines:\n  fleet:\n    group: ops\n    stages:\n      - install:\n          jobs:\n            agent-setup:\n              run_instances: all\n              resources: [web]\n              tasks:\n                - exec: {command: setup}\n";
    app.put_config("fleet", yaml).await.expect(201);
    let one = app.register_enabled("web-1").await;
    let two = app.register_enabled("web-2").await;
    let db = app.register_enabled("db").await;
    for agent in [&one, &two] {
        app.patch_agent(&agent.uuid, json!({"resources": "web"}))
            .await
            .expect(200);
    }
    trigger(&app, "fleet").await;
    let (shown, _) = stage_jobs(&app, "fleet/1/install/1").await;
    assert_eq!(
        shown,
        [
            "agent-setup-runOnAll-1:Scheduled:Unknown",
            "agent-setup-runOnAll-2:Scheduled:Unknown"
        ]
    );
    assert_eq!(app.as_agent(&db).work().await.status, 204);
    let first = app.as_agent(&one).take_work().await;
    assert_eq!(first["environment_variables"]["GO_JOB_RUN_COUNT"], "2");
    let build_id = first["build_id"].as_i64().unwrap();
    app.as_agent(&one)
        .report_ok(build_id, "Completed", Some("Passed"))
        .await;
    // The other copy is web-2's: web-1, idle again, gets nothing.
    assert_eq!(app.as_agent(&one).work().await.status, 204);
    let waiting = eventually("the other copy says whose it is", || async {
        let (_, ids) = stage_jobs(&app, "fleet/1/install/1").await;
        let other = ids.iter().find(|(_, id)| *id != build_id)?.1;
        let run = app.get(&format!("/api/builds/{other}")).await.expect(200);
        (run["state"] == "Scheduled").then(|| run["waiting"].clone())
    })
    .await;
    let pinned = waiting
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["uuid"] == one.uuid.as_str())
        .unwrap()
        .clone();
    assert_eq!(pinned["reason"], "pinned", "{waiting}");
    let second = app.as_agent(&two).take_work().await;
    assert_ne!(second["job_name"], first["job_name"]);
    let build_id = second["build_id"].as_i64().unwrap();
    app.as_agent(&two)
        .report_ok(build_id, "Completed", Some("Passed"))
        .await;
    assert_eq!(stages(&app, "fleet", 1).await, ["install:Passed"]);
}

/// The run page of a Scheduled job says why it waits, and keeps saying it as agents change:
/// its stream's `status` event carries the reasons.
#[tokio::test]
async fn the_run_page_says_live_why_its_job_waits() {
    let app = spawn_app().await;
    let yaml = "pipelines:\n  gpu:\n    group: ml\n    stages:\n      - train:\n          resources: [gpu]\n          tasks:\n            - exec: {command: train}\n";
    app.put_config("gpu", yaml).await.expect(201);
    let pending = app.register("gpu-box").await;
    trigger(&app, "gpu").await;
    let stage = app.get("/go/api/stages/gpu/1/train/1").await.expect(200);
    let build_id = stage["jobs"][0]["id"].as_i64().unwrap();
    let page = app.get(&format!("/builds/{build_id}")).await.text();
    assert!(page.contains("Why is it waiting?"), "{page}");
    assert!(
        page.contains(&format!(
            r#"data-agent="{}" data-reason="pending""#,
            pending.uuid
        )),
        "{page}"
    );
    let mut events = app
        .subscribe(&format!("/builds/{build_id}/console/events"))
        .await;
    events
        .wait_for("the first status", |e| e.event == "status")
        .await;
    app.put(&format!("/api/agents/{}/enable", pending.uuid))
        .await;
    let resources = format!(r#"data-agent="{}" data-reason="resources""#, pending.uuid);
    events
        .wait_for("the enabled agent lacks gpu", |e| {
            e.event == "status" && e.data.contains(&resources) && e.data.contains("gpu")
        })
        .await;
    app.patch_agent(&pending.uuid, json!({"resources": "gpu"}))
        .await
        .expect(200);
    let idle = format!(r#"data-agent="{}" data-reason="idle""#, pending.uuid);
    events
        .wait_for("the agent now matches", |e| {
            e.event == "status" && e.data.contains(&idle)
        })
        .await;
}

/// The history and stage pages are live: each stream sends its card on connect and again
/// when the pipeline, a job of the stage, or (while a job waits) an agent changes.
#[tokio::test]
async fn history_and_stage_pages_follow_their_runs() {
    let app = spawn_app().await;
    app.put_config("suite", THREE_JOBS).await.expect(201);
    trigger(&app, "suite").await;
    let mut history = app.subscribe("/pipelines/suite/history/events").await;
    let first = history
        .wait_for("the history card", |e| e.event == "history")
        .await;
    assert!(first.data.contains(r#"id="instance-1""#), "{}", first.data);
    let mut stage = app.subscribe("/pipelines/SUITE/1/test/1/events").await;
    let card = stage
        .wait_for("the stage card", |e| e.event == "stage")
        .await;
    assert!(
        card.data.contains(r#"id="job-a" data-state="Scheduled""#),
        "{}",
        card.data
    );
    assert!(
        card.data.contains("No agent is registered yet"),
        "{}",
        card.data
    );

    let agent = app.register("builder").await;
    stage
        .wait_for("a registered agent shows why it waits", |e| {
            e.event == "stage" && e.data.contains(r#"data-reason="pending""#)
        })
        .await;
    app.put(&format!("/api/agents/{}/enable", agent.uuid)).await;
    let work = app.as_agent(&agent).take_work().await;
    let build_id = work["build_id"].as_i64().unwrap();
    stage
        .wait_for("a's move", |e| {
            e.event == "stage" && e.data.contains(r#"id="job-a" data-state="Assigned""#)
        })
        .await;
    app.as_agent(&agent)
        .report_ok(build_id, "Building", None)
        .await;
    stage
        .wait_for("a builds", |e| {
            e.event == "stage" && e.data.contains(r#"id="job-a" data-state="Building""#)
        })
        .await;
    app.as_agent(&agent)
        .report_ok(build_id, "Completed", Some("Failed"))
        .await;
    stage
        .wait_for("a failed", |e| {
            e.event == "stage"
                && e.data
                    .contains(r#"id="job-a" data-state="Completed" data-result="Failed""#)
        })
        .await;
    for _ in 0..2 {
        finish_next(&app, &agent, "Passed").await;
    }
    let done = stage
        .wait_for("the stage failed, with its re-run buttons", |e| {
            e.event == "stage" && e.data.contains(r#"data-status="Failed""#)
        })
        .await;
    assert!(done.data.contains("Re-run failed jobs"), "{}", done.data);
    history
        .wait_for("the history shows the failure", |e| {
            e.event == "history" && e.data.contains(r#"data-stage="test" data-status="Failed""#)
        })
        .await;
    trigger(&app, "suite").await;
    history
        .wait_for("the new instance", |e| {
            e.event == "history" && e.data.contains(r#"id="instance-2""#)
        })
        .await;
    app.call(
        Method::POST,
        "/go/api/stages/suite/1/test/1/run-failed-jobs",
        json!({}),
    )
    .await;
    let older = stage
        .wait_for("the run is not the latest any more", |e| {
            e.event == "stage" && e.data.contains("has run again since")
        })
        .await;
    assert!(!older.data.contains("Re-run failed jobs"), "{}", older.data);
    let reply = app.get("/pipelines/suite/1/test/9/events").await;
    assert_eq!(reply.status, 404);
}

/// GoCD's calls answer in GoCD's media type of the version served, whatever the client
/// accepts (the version it was written against, plain JSON, or nothing).
#[tokio::test]
async fn gocd_calls_answer_in_gocds_media_types() {
    let app = spawn_app().await;
    app.put_config("suite", THREE_JOBS).await.expect(201);
    let client = reqwest::Client::new();
    let get = |path: &str, accept: Option<&str>| {
        let mut request = client.get(app.url(path));
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        async move {
            let reply = request.send().await.expect("an answer");
            let status = reply.status().as_u16();
            let media = reply.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_string();
            let body: Value = reply.json().await.unwrap_or(Value::Null);
            (status, media, body)
        }
    };
    for accept in [
        Some("application/vnd.go.cd.v4+json"),
        Some("application/vnd.go.cd.v3+json"),
        Some("application/json"),
        None,
    ] {
        let (status, media, body) = get("/go/api/dashboard", accept).await;
        assert_eq!(status, 200, "{accept:?}: {body}");
        assert_eq!(
            media, "application/vnd.go.cd.v4+json; charset=utf-8",
            "{accept:?}"
        );
    }
    let (status, media, _) = get("/go/api/pipelines/nope/status", None).await;
    assert_eq!(status, 404);
    assert!(
        media.starts_with("application/vnd.go.cd.v1+json"),
        "errors too: {media}"
    );
    let (_, media, _) = get("/go/api/pipelines/suite/history", None).await;
    assert_eq!(media, "application/vnd.go.cd.v1+json; charset=utf-8");
    let (_, media, _) = get("/api/dashboard", None).await;
    assert_eq!(media, "application/json", "ferrocd's own API stays JSON");

    let reply = client
        .post(app.url("/go/api/pipelines/suite/schedule"))
        .header("Accept", "application/vnd.go.cd.v1+json")
        .header("Content-Type", "application/json")
        .header("X-GoCD-Confirm", "true")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);
    assert_eq!(
        reply.headers()["content-type"],
        "application/vnd.go.cd.v1+json; charset=utf-8"
    );
}

/// A data folder, and the `config` folder in it where an older server kept the API document
/// `shop` as a file.
fn a_data_dir_an_older_server_kept_documents_in() -> (tempfile::TempDir, std::path::PathBuf) {
    let data = tempfile::tempdir().unwrap();
    let old = data.path().join("config");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("shop.gocd.yaml"), THREE_STAGES).unwrap();
    (data, old)
}

#[tokio::test]
async fn documents_an_older_server_kept_as_files_are_moved_into_the_database() {
    let (data, old) = a_data_dir_an_older_server_kept_documents_in();
    let first = Server::start(test_config(data.path())).await;
    let api = first.api();
    assert_eq!(trigger(&api, "shop").await, 1);
    let sources = api.get("/api/config").await.expect(200);
    assert_eq!(sources["sources"][0]["kind"], "api", "{sources}");
    assert_eq!(sources["sources"][0]["name"], "shop", "{sources}");
    assert!(!old.exists(), "the folder is moved aside");
    let moved = data.path().join("config.moved-to-database/shop.gocd.yaml");
    assert_eq!(std::fs::read_to_string(moved).unwrap(), THREE_STAGES);
    first.stop().await;
    // The document is a row now: a restart has it without the files.
    let second = Server::start(test_config(data.path())).await;
    let config = second
        .api()
        .get("/api/pipelines/shop/config")
        .await
        .expect(200);
    assert_eq!(config["stages"].as_array().unwrap().len(), 3);
    second.stop().await;
}

#[tokio::test]
async fn a_server_whose_old_documents_folder_cannot_be_moved_aside_still_starts_with_them() {
    let (data, old) = a_data_dir_an_older_server_kept_documents_in();
    // A folder of that name is there already, and not empty: the rename fails.
    let aside = data.path().join("config.moved-to-database");
    std::fs::create_dir_all(&aside).unwrap();
    std::fs::write(aside.join("earlier.gocd.yaml"), THREE_STAGES).unwrap();
    let server = Server::start(test_config(data.path())).await;
    let api = server.api();
    assert_eq!(trigger(&api, "shop").await, 1);
    assert!(old.exists(), "the folder stays where it was");
    // Deleted through the API, the document stays deleted: the folder left where it was is
    // not moved in again at the next start.
    api.call(Method::DELETE, "/api/config/shop", json!({}))
        .await
        .expect(200);
    server.stop().await;
    let again = Server::start(test_config(data.path())).await;
    let sources = again.api().get("/api/config").await.expect(200);
    assert_eq!(sources["sources"], json!([]), "{sources}");
    let config = again.api().get("/api/pipelines/shop/config").await;
    assert_eq!(config.status, 404, "{}", config.message());
    again.stop().await;
}
