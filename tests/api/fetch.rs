//! Fetch tasks with a real `ferrocd agent`: a later stage of the same instance, a downstream
//! pipeline through its dependency material, and one two levels down through GoCD's ancestor
//! path `app/deploy` each get exactly the bytes the build published, checked against the
//! checksum recorded at upload; a missing file, a file changed since it was stored and a
//! destination outside the sandbox each fail the job, and the console says why.

use serde_json::Value;

use crate::agent_runtime::{KEY, enabled_agent};
use crate::helpers::{TestApp, eventually, spawn_app_with};

const PIPELINES: &str = r#"format_version: 10
pipelines:
  app:
    group: g
    stages:
      - build:
          jobs:
            make:
              artifacts:
                - build: {source: bin/app, destination: dist}
                - build: {source: docs}
              tasks:
                - exec:
                    command: /bin/sh
                    arguments: [-c, "mkdir -p bin docs/more && head -c 300000 /dev/urandom > bin/app && echo 'read me' > docs/readme.txt && echo deeper > docs/more/notes.txt"]
      - test:
          jobs:
            check:
              tasks:
                - fetch: {stage: build, job: make, source: dist/app, is_file: true, destination: fetched}
                - fetch: {stage: build, job: make, source: docs, destination: d}
                - exec: {command: /bin/sh, arguments: [-c, "sha256sum fetched/app && cat d/docs/readme.txt d/docs/more/notes.txt"]}
  deploy:
    group: g
    materials:
      upstream: {pipeline: app, stage: test}
    stages:
      - deploy:
          jobs:
            ship:
              tasks:
                - fetch: {pipeline: app, stage: build, job: make, source: dist/app, is_file: true}
                - exec: {command: /bin/sh, arguments: [-c, "sha256sum app"]}
  verify:
    group: g
    materials:
      shipped: {pipeline: deploy, stage: deploy}
    stages:
      - verify:
          approval: manual
          jobs:
            good:
              tasks:
                - fetch: {pipeline: app/deploy, stage: build, job: make, source: dist/app, is_file: true, destination: got}
                - exec: {command: /bin/sh, arguments: [-c, "sha256sum got/app"]}
            missing:
              tasks:
                - fetch: {pipeline: app/deploy, stage: build, job: make, source: dist/nothing, is_file: true}
            tampered:
              tasks:
                - fetch: {pipeline: app/deploy, stage: build, job: make, source: docs, destination: t}
            escape:
              tasks:
                - fetch: {pipeline: app/deploy, stage: build, job: make, source: dist/app, is_file: true, destination: ../../outside}
"#;

/// The jobs of `pipeline/1/stage/1` once the stage has a result.
async fn finished_jobs(app: &TestApp, pipeline: &str, stage: &str) -> Vec<Value> {
    eventually(&format!("{pipeline}'s {stage} finished"), || async {
        let reply = app
            .get(&format!("/go/api/stages/{pipeline}/1/{stage}/1"))
            .await;
        (reply.status == 200
            && reply.body["result"].is_string()
            && reply.body["result"] != "Unknown")
            .then(|| reply.body["jobs"].as_array().unwrap().clone())
    })
    .await
}

/// The console of the job `name` among `jobs`, and its result.
async fn job_console(app: &TestApp, jobs: &[Value], name: &str) -> (String, String) {
    let job = jobs.iter().find(|j| j["name"] == name).unwrap();
    let log = app.console(job["id"].as_i64().unwrap(), None).await.0;
    (
        String::from_utf8_lossy(&log).into_owned(),
        job["result"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_tasks_get_the_published_bytes_from_this_instance_and_upstream_ones() {
    let app = spawn_app_with(|c| c.agent_registration_key = Some(KEY.into())).await;
    app.put_config("fetching", PIPELINES).await.expect(201);
    let agent = enabled_agent(&app).await;
    app.post_json_ok("/go/api/pipelines/app/schedule").await;

    let build = finished_jobs(&app, "app", "build").await;
    let make = build[0]["id"].as_i64().unwrap();
    let stored = app
        .get(&format!("/api/builds/{make}/artifacts"))
        .await
        .expect(200);
    let sum = stored["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "dist/app")
        .expect("dist/app published")["sha256"]
        .as_str()
        .unwrap()
        .to_string();

    // A later stage of the same instance: a file by its name, a folder whole.
    let test = finished_jobs(&app, "app", "test").await;
    let (log, result) = job_console(&app, &test, "check").await;
    assert_eq!(result, "Passed", "{log}");
    assert!(log.contains(&format!("{sum}  fetched/app")), "{log}");
    assert!(log.contains("read me\ndeeper"), "{log}");
    assert!(log.contains("from app/1/build/1/make"), "{log}");

    // A downstream pipeline, through its dependency material.
    let deploy = finished_jobs(&app, "deploy", "deploy").await;
    let (log, result) = job_console(&app, &deploy, "ship").await;
    assert_eq!(result, "Passed", "{log}");
    assert!(log.contains(&format!("{sum}  app")), "{log}");

    // Two levels down, by GoCD's ancestor path, once a stored file has been changed on disk.
    let readme = app
        .data_dir()
        .join("artifacts")
        .join(make.to_string())
        .join("files/docs/readme.txt");
    std::fs::write(&readme, "not what was published\n").unwrap();
    app.post_json_ok("/go/api/pipelines/verify/schedule").await;
    let verify = finished_jobs(&app, "verify", "verify").await;
    let (log, result) = job_console(&app, &verify, "good").await;
    assert_eq!(result, "Passed", "{log}");
    assert!(log.contains(&format!("{sum}  got/app")), "{log}");

    let (log, result) = job_console(&app, &verify, "missing").await;
    assert_eq!(result, "Failed");
    assert!(
        log.contains(
            "cannot fetch dist/nothing: app/1/build/1/make: no artifact file dist/nothing"
        ),
        "{log}"
    );
    let (log, result) = job_console(&app, &verify, "tampered").await;
    assert_eq!(result, "Failed");
    assert!(
        log.contains(
            "cannot fetch docs/readme.txt from app/1/build/1/make: it arrived with SHA-256"
        ),
        "{log}"
    );
    let sandbox = agent.path().join("pipelines/verify");
    assert!(
        !sandbox.join("t/docs/readme.txt").exists(),
        "a file that does not match its checksum is not left in place"
    );
    let leftovers: Vec<_> = walk(&sandbox)
        .into_iter()
        .filter(|p| p.contains(".ferrocd-fetch"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let (log, result) = job_console(&app, &verify, "escape").await;
    assert_eq!(result, "Failed");
    assert!(log.contains("is outside the working folder"), "{log}");
    assert!(!agent.path().join("outside").exists());
}

/// Every path under `dir`.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            out.push(entry.path().display().to_string());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    out
}
