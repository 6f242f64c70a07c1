//! Artifact uploads (the artifacts issue's first part): the agent running a job streams each
//! file with its SHA-256; a file is listed only once whole and checked; the same file again
//! is 200, another of that name 409; bad paths, bad checksums, other agents, and uploads past
//! the cap are refused, and none of them leaves a file behind.

use sha2::{Digest, Sha256};

use crate::helpers::{Api, Registered, TestApp, eventually, spawn_app, spawn_app_with};

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `PUT /api/builds/{id}/artifacts/{path}` as `agent`, with `checksum`.
async fn put(
    api: &Api,
    agent: &Registered,
    build_id: i64,
    path: &str,
    body: Vec<u8>,
    checksum: &str,
) -> (u16, String) {
    let reply = api
        .send(
            api.client
                .put(api.url(&format!("/api/builds/{build_id}/artifacts/{path}")))
                .bearer_auth(&agent.token)
                .header("X-Checksum-SHA256", checksum)
                .body(body),
        )
        .await;
    (reply.status, reply.body.to_string())
}

async fn listed(app: &TestApp, build_id: i64) -> Vec<String> {
    app.get(&format!("/api/builds/{build_id}/artifacts"))
        .await
        .expect(200)["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{} {} {}",
                f["path"].as_str().unwrap(),
                f["size"],
                f["sha256"].as_str().unwrap()
            )
        })
        .collect()
}

/// No temporary file is left of the uploads that failed.
fn incoming_is_empty(app: &TestApp, build_id: i64) -> bool {
    let incoming = app
        .data_dir()
        .join("artifacts")
        .join(build_id.to_string())
        .join(".incoming");
    std::fs::read_dir(&incoming).map_or(true, |mut entries| entries.next().is_none())
}

#[tokio::test]
async fn an_agent_uploads_its_jobs_files_each_checked_against_its_checksum() {
    let app = spawn_app().await;
    let (agent, build_id) = app.running_build("builder").await;
    let binary: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let sum = sha256(&binary);

    let (status, body) = put(&app, &agent, build_id, "dist/app.bin", binary.clone(), &sum).await;
    assert_eq!(status, 201, "{body}");
    let on_disk = std::fs::read(
        app.data_dir()
            .join("artifacts")
            .join(build_id.to_string())
            .join("files/dist/app.bin"),
    )
    .unwrap();
    assert!(on_disk == binary, "the stored file is the upload");
    assert_eq!(
        listed(&app, build_id).await,
        [format!("dist/app.bin 3000000 {sum}")]
    );

    // Again, the same: 200. Another body under that name, or that name in another case: 409.
    let (status, _) = put(&app, &agent, build_id, "dist/app.bin", binary.clone(), &sum).await;
    assert_eq!(status, 200);
    let other = b"other".to_vec();
    let (status, body) = put(
        &app,
        &agent,
        build_id,
        "dist/app.bin",
        other.clone(),
        &sha256(&other),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = put(
        &app,
        &agent,
        build_id,
        "Dist/App.bin",
        other.clone(),
        &sha256(&other),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("only in case"), "{body}");

    // A body that is not what its checksum says: 422, and nothing is listed or left.
    let (status, body) = put(
        &app,
        &agent,
        build_id,
        "report.xml",
        b"<testsuite/>".to_vec(),
        &sum,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("report.xml arrived with SHA-256"), "{body}");
    // Escapes spelled so the client's URL parser leaves them for the server to refuse.
    for (path, says) in [
        ("..%2Fescape", "`..`"),
        ("a%2F.%2Fb", "`.`"),
        ("%2Fetc/passwd", "absolute"),
    ] {
        let (status, body) =
            put(&app, &agent, build_id, path, other.clone(), &sha256(&other)).await;
        assert_eq!(status, 422, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }
    let (status, body) = put(&app, &agent, build_id, "x", other.clone(), "not-a-sum").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(listed(&app, build_id).await.len(), 1);
    assert!(incoming_is_empty(&app, build_id));
    assert!(
        !app.data_dir()
            .join("artifacts")
            .join(build_id.to_string())
            .join("escape")
            .exists()
            && !app.data_dir().join("artifacts").join("escape").exists()
    );

    // Only the agent running the job may upload to it; after the job ends, nobody.
    let stranger = app.register_enabled("stranger").await;
    let (status, body) = put(
        &app,
        &stranger,
        build_id,
        "mine.txt",
        other.clone(),
        &sha256(&other),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    app.as_agent(&agent)
        .report_ok(build_id, "Completed", Some("Passed"))
        .await;
    let (status, body) = put(
        &app,
        &agent,
        build_id,
        "late.txt",
        other.clone(),
        &sha256(&other),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(app.get("/api/builds/999999/artifacts").await.status, 404);
}

#[tokio::test]
async fn uploads_past_the_cap_or_broken_off_leave_nothing_behind() {
    let app = spawn_app_with(|c| c.max_artifact_bytes = 1_000_000).await;
    let (agent, build_id) = app.running_build("builder").await;
    let small = vec![7u8; 600_000];
    let (status, _) = put(
        &app,
        &agent,
        build_id,
        "a.bin",
        small.clone(),
        &sha256(&small),
    )
    .await;
    assert_eq!(status, 201);
    // 600 kB more would pass the job's 1 MB: 413, and nothing of it stays.
    let (status, body) = put(
        &app,
        &agent,
        build_id,
        "b.bin",
        small.clone(),
        &sha256(&small),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("--max-artifact-bytes"), "{body}");
    assert_eq!(listed(&app, build_id).await.len(), 1);
    assert!(incoming_is_empty(&app, build_id));

    // An upload whose body breaks off midway: not listed, its temporary file removed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(vec![1u8; 100_000]),
        Err(std::io::Error::other("the agent's disk went away")),
    ];
    let sent = app
        .client
        .put(app.url(&format!("/api/builds/{build_id}/artifacts/broken.bin")))
        .bearer_auth(&agent.token)
        .header("X-Checksum-SHA256", sha256(&[1u8; 200_000]))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    assert!(sent.is_err() || sent.unwrap().status() != 201);
    eventually("the broken upload's temporary file removed", || async {
        incoming_is_empty(&app, build_id).then_some(())
    })
    .await;
    assert_eq!(listed(&app, build_id).await.len(), 1);
}

/// A real `ferrocd agent` publishes after the tasks, whatever their result: a file into a
/// destination, a folder, a glob; a rule that matches nothing, or a symlink out of the
/// working folder, fails the job and the console says which.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_publishes_files_folders_and_globs_after_the_tasks() {
    use crate::agent_runtime::{KEY, enabled_agent};
    let app = spawn_app_with(|c| c.agent_registration_key = Some(KEY.into())).await;
    let yaml = r#"format_version: 10
pipelines:
  pub:
    group: g
    stages:
      - build:
          jobs:
            make:
              artifacts:
                - build: {source: dist/app.bin, destination: pkg}
                - build: {source: site}
                - test: {source: "reports/**/*.xml", destination: tests}
              tasks:
                - exec:
                    command: /bin/sh
                    arguments: [-c, "mkdir -p dist site/css reports/unit && head -c 200000 /dev/urandom > dist/app.bin && echo hi > site/index.html && echo x > site/css/a.css && echo '<testsuite/>' > reports/unit/TEST-a.xml && sha256sum dist/app.bin && exit 1"]
            leaky:
              artifacts:
                - build: {source: secret.txt}
              tasks:
                - exec: {command: /bin/sh, arguments: [-c, "ln -sf /etc/hostname secret.txt"]}
            empty:
              artifacts:
                - build: {source: "out/*.zip"}
              tasks:
                - exec: {command: /bin/true}
"#;
    app.put_config("pub", yaml).await.expect(201);
    let _agent = enabled_agent(&app).await;
    app.post_json_ok("/go/api/pipelines/pub/schedule").await;
    let jobs = eventually("the three jobs ended", || async {
        let stage = app.get("/go/api/stages/pub/1/build/1").await;
        (stage.status == 200
            && stage.body["result"].is_string()
            && stage.body["result"] != "Unknown")
            .then(|| stage.body["jobs"].as_array().unwrap().clone())
    })
    .await;
    let job = |name: &str| jobs.iter().find(|j| j["name"] == name).unwrap().clone();
    let make = job("make");
    let build_id = make["id"].as_i64().unwrap();
    let files: Vec<String> = app
        .get(&format!("/api/builds/{build_id}/artifacts"))
        .await
        .expect(200)["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        files,
        [
            "pkg/app.bin",
            "site/css/a.css",
            "site/index.html",
            "tests/unit/TEST-a.xml"
        ],
        "published though the task failed"
    );
    let log = String::from_utf8_lossy(&app.console(build_id, None).await.0).into_owned();
    let listed = app
        .get(&format!("/api/builds/{build_id}/artifacts"))
        .await
        .expect(200);
    let sum = listed["files"][0]["sha256"].as_str().unwrap().to_string();
    assert!(
        log.contains(&format!("{sum}  dist/app.bin")),
        "the checksum the task printed: {log}"
    );
    assert_eq!(make["result"], "Failed");

    // Downloads at GoCD's path and ours: the same bytes, as an attachment, never active.
    for prefix in ["/go/files", "/files"] {
        let reply = app
            .client
            .get(app.url(&format!("{prefix}/pub/1/build/1/make/pkg/app.bin")))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200, "{prefix}");
        let headers = reply.headers().clone();
        assert_eq!(
            headers["content-disposition"],
            "attachment; filename=\"app.bin\""
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .starts_with("sandbox")
        );
        let bytes = reply.bytes().await.unwrap();
        assert_eq!(bytes.len(), 200_000);
        assert_eq!(sha256(&bytes), sum, "{prefix}: the file the agent made");
    }
    let html = app
        .client
        .get(app.url("/files/pub/1/build/1/make/site/index.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        html.headers()["content-type"],
        "application/octet-stream",
        "never text/html"
    );
    // The job's listing, as GoCD's `{job}.json`: a tree, folders first, each with its URL.
    let listing = app
        .get("/go/files/pub/1/build/1/make.json")
        .await
        .expect(200);
    let names = |entries: &serde_json::Value| -> Vec<String> {
        entries
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["type"].as_str().unwrap(),
                    e["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        names(&listing),
        ["folder pkg", "folder site", "folder tests"],
        "{listing}"
    );
    assert_eq!(
        names(&listing[1]["files"]),
        ["folder css", "file index.html"]
    );
    assert_eq!(
        listing[0]["files"][0]["url"],
        "/files/pub/1/build/1/make/pkg/app.bin"
    );
    assert_eq!(app.get("/files/pub/1/build/1/make.txt").await.status, 404);
    for missing in [
        "/files/pub/1/build/1/make/nope.bin",
        "/files/pub/1/build/1/make/..%2F..%2Fetc%2Fpasswd",
        "/files/pub/1/build/1/ghost/pkg/app.bin",
        "/files/pub/9/build/1/make/pkg/app.bin",
    ] {
        assert_eq!(app.get(missing).await.status, 404, "{missing}");
    }

    for (name, says) in [
        ("leaky", "leading out of the working folder"),
        ("empty", "matched no file"),
    ] {
        let id = job(name)["id"].as_i64().unwrap();
        assert_eq!(job(name)["result"], "Failed", "{name}");
        let log = String::from_utf8_lossy(&app.console(id, None).await.0).into_owned();
        assert!(log.contains(says), "{name}: {log}");
        let none = app
            .get(&format!("/api/builds/{id}/artifacts"))
            .await
            .expect(200);
        assert_eq!(none["files"], serde_json::json!([]), "{name}");
    }
}

/// `--artifacts-keep 2`: once instances pile up, the oldest instance's artifacts go, except
/// those of the latest passed instance and of a `keep_artifacts` stage; the run page says they
/// were purged, and the files are gone from the disk.
#[tokio::test(flavor = "multi_thread")]
async fn artifacts_keep_purges_the_oldest_but_spares_what_it_must() {
    let app = spawn_app_with(|c| c.artifacts_keep = Some(2)).await;
    let yaml = "format_version: 10\npipelines:\n  kept:\n    group: g\n    stages:\n      - build: {tasks: [{exec: {command: make}}]}\n      - release:\n          keep_artifacts: true\n          tasks: [{exec: {command: make}}]\n";
    app.put_config("kept", yaml).await.expect(201);
    let agent = app.register_enabled("builder").await;
    let as_agent = app.as_agent(&agent);
    // Takes the next job, stores one file, ends it with `result`.
    let run_job = |result: &'static str| {
        let as_agent = &as_agent;
        let agent = &agent;
        let app = &app;
        async move {
            let work = eventually("a job to take", || async {
                let reply = as_agent.work().await;
                (reply.status == 200).then_some(reply.body)
            })
            .await;
            let build_id = work["build_id"].as_i64().unwrap();
            let body = format!("{} of build {build_id}", work["stage_name"]).into_bytes();
            let sum = sha256(&body);
            let (status, _) = put(app, agent, build_id, "out/app.bin", body, &sum).await;
            assert_eq!(status, 201);
            as_agent
                .report_ok(build_id, "Completed", Some(result))
                .await;
            build_id
        }
    };
    let mut builds = Vec::new();
    for (instance, result) in [(1, "Passed"), (2, "Passed"), (3, "Failed"), (4, "Failed")] {
        app.post_json_ok("/go/api/pipelines/kept/schedule").await;
        let build = run_job(result).await;
        let release = if result == "Passed" {
            Some(run_job("Passed").await)
        } else {
            None
        };
        builds.push((instance, build, release));
        eventually(&format!("kept/{instance} ended"), || async {
            let history = app.get("/go/api/pipelines/kept/history").await;
            let stages = history.body["pipelines"][0]["stages"].clone();
            (history.body["pipelines"][0]["counter"] == instance
                && stages.as_array().is_some_and(|s| {
                    s.iter()
                        .all(|s| s["result"] != "Unknown" || s["status"] == "NotRun")
                }))
            .then_some(())
        })
        .await;
    }
    let (_, oldest_build, oldest_release) = builds[0];
    let oldest_release = oldest_release.unwrap();
    eventually(
        "the oldest instance's build artifacts are purged",
        || async { listed(&app, oldest_build).await.is_empty().then_some(()) },
    )
    .await;
    assert!(
        !app.data_dir()
            .join("artifacts")
            .join(oldest_build.to_string())
            .exists(),
        "the files are gone from the disk"
    );
    let page = app.get(&format!("/builds/{oldest_build}")).await.text();
    assert!(page.contains("were purged"), "{page}");
    // Spared: the keep_artifacts stage of the oldest, the latest passed instance (2, beyond
    // the newest two) and the newest two.
    assert_eq!(listed(&app, oldest_release).await.len(), 1);
    for (instance, build, release) in &builds[1..] {
        assert_eq!(listed(&app, *build).await.len(), 1, "kept/{instance}");
        if let Some(release) = release {
            assert_eq!(listed(&app, *release).await.len(), 1, "kept/{instance}");
        }
    }
    let stage_page = app.get("/pipelines/kept/1/build/1").await.text();
    assert!(
        stage_page.contains("This stage run's artifacts were purged"),
        "{stage_page}"
    );
    for (instance, stage, deleted) in [
        (1, "build", true),
        (1, "release", false),
        (2, "build", false),
    ] {
        let stage = app
            .get(&format!("/go/api/stages/kept/{instance}/{stage}/1"))
            .await
            .expect(200);
        assert_eq!(stage["artifacts_deleted"], deleted, "kept/{instance}");
    }
    for (instance, status) in [(1, 404), (2, 200)] {
        let reply = app
            .client
            .get(app.url(&format!("/files/kept/{instance}/build/1/build/out/app.bin")))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), status, "kept/{instance}");
    }
}
