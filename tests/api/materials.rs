//! Git materials polled by the server, against real repositories made in temp dirs: the
//! first poll triggers the pipelines that never ran, a commit triggers those whose filter
//! lets its files through, pipelines sharing a repository share one poll, and a repository
//! that cannot be read shows its error without holding the others up.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Api, eventually, spawn_app_with, test_config};

/// `git` in `dir`, with a fixed identity.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .args(["-c", "user.name=Ann", "-c", "user.email=ann@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Commits `file` (made or changed) and answers the new revision.
pub fn commit(repo: &Path, file: &str, message: &str) -> String {
    let path = repo.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, format!("{message}\n")).unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "--quiet", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

pub fn new_repo(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    repo
}

/// How many instances `pipeline` has.
pub async fn instances(api: &Api, pipeline: &str) -> i64 {
    let history = api
        .get(&format!("/go/api/pipelines/{pipeline}/history"))
        .await
        .expect(200);
    history["pagination"]["total"].as_i64().unwrap()
}

async fn materials(api: &Api) -> Vec<Value> {
    api.get("/api/materials").await.expect(200)["materials"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn commits_trigger_the_pipelines_whose_materials_they_change() {
    let work = tempfile::tempdir().unwrap();
    let repo = new_repo(work.path());
    let first = commit(&repo, "src/a.rs", "first");
    let app = spawn_app_with(|c| c.material_poll_interval = Duration::from_millis(300)).await;
    let yaml = format!(
        r#"format_version: 10
pipelines:
  app:
    group: shop
    materials:
      code:
        git: file://{repo}
        branch: main
        ignore: ["docs/**"]
    stages:
      - build: {{tasks: [{{exec: {{command: make}}}}]}}
  site:
    group: shop
    materials:
      code:
        git: {repo}/
        branch: main
        includes: ["docs/**"]
    stages:
      - publish: {{tasks: [{{exec: {{command: make}}}}]}}
  lost:
    group: shop
    materials:
      code:
        git: file://{missing}
        branch: main
    stages:
      - build: {{tasks: [{{exec: {{command: make}}}}]}}
"#,
        repo = repo.display(),
        missing = work.path().join("no-such-repo").display(),
    );
    let mut dashboard = app.subscribe("/pipelines/events").await;
    app.put_config("shop", &yaml).await.expect(201);

    // The first poll: pipelines that never ran start from the head.
    eventually("the first poll triggers app and site", || async {
        (instances(&app, "app").await == 1 && instances(&app, "site").await == 1).then_some(())
    })
    .await;
    let listed = eventually("both repositories polled", || async {
        let listed = materials(&app).await;
        listed
            .iter()
            .all(|m| m["last_polled_at"].is_string())
            .then_some(listed)
    })
    .await;
    assert_eq!(listed.len(), 2, "one material per repository: {listed:?}");
    let shared = listed
        .iter()
        .find(|m| m["pipelines"].as_array().unwrap().len() == 2)
        .expect("app and site share one poll");
    assert_eq!(shared["last_revision"], first.as_str());
    assert_eq!(shared["branch"], "main");
    assert!(shared.get("error").is_none(), "{shared}");
    let lost = listed.iter().find(|m| m["pipelines"][0] == "lost").unwrap();
    assert!(lost["error"].is_string(), "{lost}");
    assert!(lost["last_revision"].is_null());
    assert_eq!(instances(&app, "lost").await, 0);
    // The dashboard says so beside the pipeline, live, and shows who committed what runs.
    dashboard
        .wait_for("the poll error beside lost", |e| {
            e.event == "pipeline-lost" && e.data.contains("cannot be polled")
        })
        .await;
    let page = app.get("/pipelines").await.text();
    assert!(
        page.contains(&first[..8]) && page.contains("by Ann"),
        "{page}"
    );

    // A change to docs only: site (includes docs) runs, app (ignores docs) does not.
    commit(&repo, "docs/guide.md", "docs");
    eventually("site runs for the docs", || async {
        (instances(&app, "site").await == 2).then_some(())
    })
    .await;
    assert_eq!(instances(&app, "app").await, 1, "app ignores docs/**");
    // A change to the code: app runs, site does not.
    let code = commit(&repo, "src/b.rs", "code");
    eventually("app runs for the code", || async {
        (instances(&app, "app").await == 2).then_some(())
    })
    .await;
    let shared = eventually("the new head recorded", || async {
        materials(&app)
            .await
            .into_iter()
            .find(|m| m["last_revision"] == code.as_str())
    })
    .await;
    assert_eq!(shared["pipelines"].as_array().unwrap().len(), 2);
    assert_eq!(
        instances(&app, "site").await,
        2,
        "site includes docs/** only"
    );
    assert_eq!(instances(&app, "lost").await, 0);
}

/// An instance records the revision of each git material it runs and whether it changed, its
/// jobs get GoCD's revision variables, and `${material}` labels are the revision.
#[tokio::test]
async fn an_instance_runs_the_revisions_it_was_triggered_with() {
    let work = tempfile::tempdir().unwrap();
    let repo = new_repo(work.path());
    let first = commit(&repo, "src/a.rs", "first");
    let app = spawn_app_with(|c| c.material_poll_interval = Duration::from_millis(300)).await;
    let yaml = format!(
        r#"format_version: 10
pipelines:
  app:
    group: shop
    label_template: "${{COUNT}}-${{my-code[:7]}}"
    materials:
      my-code:
        git: {repo}
        branch: main
    stages:
      - build: {{tasks: [{{exec: {{command: make}}}}]}}
"#,
        repo = repo.display(),
    );
    app.put_config("shop", &yaml).await.expect(201);
    let agent = app.register_enabled("builder").await;
    eventually("the first poll triggers app", || async {
        (instances(&app, "app").await == 1).then_some(())
    })
    .await;
    let instance = app
        .get("/go/api/pipelines/app/instance/1")
        .await
        .expect(200);
    assert_eq!(instance["label"], format!("1-{}", &first[..7]));
    let cause = &instance["build_cause"]["material_revisions"][0];
    assert_eq!(cause["material"]["name"], "my-code");
    assert_eq!(cause["changed"], true);
    assert_eq!(cause["modifications"][0]["revision"], first.as_str());
    let work1 = crate::pipelines::finish_next(&app, &agent, "Passed").await;
    let vars = &work1["environment_variables"];
    assert_eq!(vars["GO_REVISION"], first.as_str());
    assert_eq!(vars["GO_REVISION_MY_CODE"], first.as_str());
    assert_eq!(vars["GO_MATERIAL_MY_CODE_HAS_CHANGED"], "true");

    let second = commit(&repo, "src/b.rs", "second");
    let third = commit(&repo, "src/c.rs", "third");
    eventually("the commits trigger instance 2", || async {
        (instances(&app, "app").await == 2).then_some(())
    })
    .await;
    let instance = app
        .get("/go/api/pipelines/app/instance/2")
        .await
        .expect(200);
    let commits: Vec<(String, String)> =
        instance["build_cause"]["material_revisions"][0]["modifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["revision"].as_str().unwrap().to_string(),
                    m["comment"].as_str().unwrap().to_string(),
                )
            })
            .collect();
    assert_eq!(
        commits,
        [
            (third.clone(), "third".to_string()),
            (second.clone(), "second".to_string())
        ],
        "the commits since instance 1, newest first"
    );
    let history = app.get("/go/api/pipelines/app/history").await.expect(200);
    assert_eq!(
        history["pipelines"][0]["build_cause"]["material_revisions"][0]["modifications"][0]["user_name"],
        "Ann <ann@example.com>"
    );
    let work2 = crate::pipelines::finish_next(&app, &agent, "Passed").await;
    let vars = &work2["environment_variables"];
    assert_eq!(vars["GO_TO_REVISION_MY_CODE"], third.as_str());
    assert_eq!(
        vars["GO_FROM_REVISION_MY_CODE"],
        second.as_str(),
        "the oldest new commit"
    );
    // A trigger by hand with nothing new runs the same revision, unchanged.
    crate::pipelines::trigger(&app, "app").await;
    let work3 = crate::pipelines::finish_next(&app, &agent, "Passed").await;
    let vars = &work3["environment_variables"];
    assert_eq!(vars["GO_REVISION"], third.as_str());
    assert_eq!(vars["GO_MATERIAL_MY_CODE_HAS_CHANGED"], "false");

    // Trigger with options: an older revision picked; one never polled, or a material the
    // pipeline lacks, is a 422.
    let fingerprint = materials(&app).await[0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let schedule = |revision: &str, fingerprint: &str| {
        app.call(
            reqwest::Method::POST,
            "/go/api/pipelines/app/schedule",
            serde_json::json!({"materials": [{"fingerprint": fingerprint, "revision": revision}]}),
        )
    };
    let reply = schedule("0000000000000000000000000000000000000000", &fingerprint).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    let reply = schedule(&first, "nope").await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    schedule(&second, &fingerprint).await.expect(202);
    let work4 = crate::pipelines::finish_next(&app, &agent, "Passed").await;
    assert_eq!(
        work4["environment_variables"]["GO_REVISION"],
        second.as_str()
    );
}

/// `update_materials_before_scheduling`: a trigger polls the pipeline's materials first.
#[tokio::test]
async fn a_trigger_may_poll_its_materials_first() {
    let work = tempfile::tempdir().unwrap();
    let repo = new_repo(work.path());
    commit(&repo, "a.txt", "first");
    let app = spawn_app_with(|_| {}).await; // no poll rounds
    let yaml = format!(
        "format_version: 10\npipelines:\n  app:\n    group: g\n    materials:\n      code: {{git: {repo}, branch: main}}\n    stages:\n      - build: {{tasks: [{{exec: {{command: make}}}}]}}\n",
        repo = repo.display()
    );
    app.put_config("app", &yaml).await.expect(201);
    let agent = app.register_enabled("builder").await;
    let head = commit(&repo, "b.txt", "second");
    app.call(
        reqwest::Method::POST,
        "/go/api/pipelines/app/schedule",
        serde_json::json!({"update_materials_before_scheduling": true}),
    )
    .await
    .expect(202);
    let work1 = crate::pipelines::finish_next(&app, &agent, "Passed").await;
    assert_eq!(work1["environment_variables"]["GO_REVISION"], head.as_str());
    assert_eq!(
        instances(&app, "app").await,
        1,
        "the poll it asked for triggers no other"
    );
}

/// A real `ferrocd agent` checks each instance out at its own revision before the tasks,
/// reusing the clone the previous job left (a fetch and a checkout, not a fresh clone).
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_checks_out_the_instances_revision() {
    use crate::agent_runtime::{KEY, enabled_agent};
    let work = tempfile::tempdir().unwrap();
    let repo = new_repo(work.path());
    let first = commit(&repo, "src/a.rs", "first");
    let app = spawn_app_with(|c| {
        c.material_poll_interval = Duration::from_millis(300);
        c.agent_registration_key = Some(KEY.into());
    })
    .await;
    let yaml = format!(
        r#"format_version: 10
pipelines:
  app:
    group: shop
    materials:
      code:
        git: {repo}
        branch: main
        destination: checkout
    stages:
      - build:
          tasks:
            - exec:
                command: /bin/sh
                arguments: [-c, "cd checkout && echo at $(git rev-parse HEAD) for $GO_REVISION_CODE && ls src && touch untracked-$GO_PIPELINE_COUNTER"]
"#,
        repo = repo.display(),
    );
    app.put_config("shop", &yaml).await.expect(201);
    let agent = enabled_agent(&app).await;

    let console = |counter: i64| {
        let app = &app;
        async move {
            let stage = app
                .get(&format!("/go/api/stages/app/{counter}/build/1"))
                .await;
            if stage.status != 200
                || !["Passed", "Failed"].contains(&stage.body["result"].as_str().unwrap_or(""))
            {
                return None;
            }
            let build_id = stage.body["jobs"][0]["id"].as_i64().unwrap();
            Some(String::from_utf8_lossy(&app.console(build_id, None).await.0).into_owned())
        }
    };
    let log = eventually("instance 1 ran", || console(1)).await;
    assert!(log.contains(&format!("at {first} for {first}")), "{log}");
    assert!(log.contains("Checking out material code"), "{log}");
    let second = commit(&repo, "src/b.rs", "second");
    let log = eventually("instance 2 ran", || console(2)).await;
    assert!(log.contains(&format!("at {second} for {second}")), "{log}");
    assert!(log.contains("b.rs"), "{log}");
    let clone = agent.path().join("pipelines/app/checkout");
    assert!(
        clone.join("untracked-1").exists() && clone.join("untracked-2").exists(),
        "the clone is reused (fetch and checkout), not made afresh"
    );
    // Re-running instance 1 checks its own revision out again.
    app.post_json_ok("/go/api/stages/app/1/build/run").await;
    let log = eventually("instance 1's re-run ran", || async {
        let stage = app.get("/go/api/stages/app/1/build/2").await;
        if stage.status != 200 || stage.body["result"] != "Passed" {
            return None;
        }
        let build_id = stage.body["jobs"][0]["id"].as_i64().unwrap();
        Some(String::from_utf8_lossy(&app.console(build_id, None).await.0).into_owned())
    })
    .await;
    assert!(log.contains(&format!("at {first} for {first}")), "{log}");
    assert!(!log.contains("b.rs"), "the old revision has no b.rs: {log}");
}

fn sign(secret: &str, body: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Webhooks make the materials on the pushed repository and branch poll at once: signed
/// ones only (GitHub's and Bitbucket's HMAC, GitLab's token), JSON or form-encoded.
#[tokio::test]
async fn signed_webhooks_poll_the_pushed_materials_at_once() {
    let work = tempfile::tempdir().unwrap();
    let repo = new_repo(work.path());
    commit(&repo, "a.txt", "first");
    let secret_file = work.path().join("webhook-secret");
    std::fs::write(&secret_file, "s3cret\n").unwrap();
    let app = spawn_app_with(|c| c.webhook_secret_file = Some(secret_file.clone())).await;
    // auto_update: false — no poll round; only a webhook tells the server of a push.
    let yaml = format!(
        "format_version: 10\npipelines:\n  app:\n    group: g\n    materials:\n      code: {{git: {repo}, branch: main, auto_update: false}}\n    stages:\n      - build: {{tasks: [{{exec: {{command: make}}}}]}}\n",
        repo = repo.display()
    );
    app.put_config("app", &yaml).await.expect(201);
    let client = reqwest::Client::new();
    let post = |path: &str, headers: Vec<(&'static str, String)>, body: String| {
        let mut request = client.post(app.url(path)).body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move {
            let reply = request.send().await.unwrap();
            let status = reply.status().as_u16();
            (status, reply.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let push = |branch: &str| {
        serde_json::json!({
            "ref": format!("refs/heads/{branch}"),
            "repository": {"clone_url": format!("file://{}/.git", repo.display()), "html_url": "https://example.com/x"},
        })
        .to_string()
    };
    let github = |signature: String| {
        vec![
            ("Content-Type", "application/json".to_string()),
            ("X-GitHub-Event", "push".to_string()),
            ("X-Hub-Signature-256", signature),
        ]
    };
    let body = push("main");
    for bad in [sign("wrong", &body), String::new(), "sha256=zz".to_string()] {
        let (status, answer) =
            post("/go/api/webhooks/github/notify", github(bad), body.clone()).await;
        assert_eq!(status, 401, "{answer}");
    }
    let ping = r#"{"zen": "hi"}"#.to_string();
    let (status, _) = post(
        "/go/api/webhooks/github/notify",
        vec![
            ("X-GitHub-Event", "ping".into()),
            ("X-Hub-Signature-256", sign("s3cret", &ping)),
        ],
        ping,
    )
    .await;
    assert_eq!(status, 200);
    let other = push("dev");
    let (status, answer) = post(
        "/go/api/webhooks/github/notify",
        github(sign("s3cret", &other)),
        other.clone(),
    )
    .await;
    assert_eq!(status, 202);
    assert!(
        answer["message"].as_str().unwrap().contains("no material"),
        "{answer}"
    );
    assert_eq!(
        instances(&app, "app").await,
        0,
        "nothing polled without a webhook"
    );

    let (status, answer) = post(
        "/go/api/webhooks/github/notify",
        github(sign("s3cret", &body)),
        body.clone(),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("polling 1"),
        "{answer}"
    );
    eventually("the webhook's poll triggers app", || async {
        (instances(&app, "app").await == 1).then_some(())
    })
    .await;

    // GitLab: its token; a form-encoded payload.
    commit(&repo, "b.txt", "second");
    let gitlab = serde_json::json!({"ref": "refs/heads/main", "project": {"git_http_url": repo.display().to_string()}}).to_string();
    let (status, _) = post(
        "/go/api/webhooks/gitlab/notify",
        vec![("X-Gitlab-Token", "nope".into())],
        gitlab.clone(),
    )
    .await;
    assert_eq!(status, 401);
    let form = format!(
        "payload={}",
        form_urlencoded::byte_serialize(gitlab.as_bytes()).collect::<String>()
    );
    let (status, answer) = post(
        "/go/api/webhooks/gitlab/notify",
        vec![
            ("X-Gitlab-Token", "s3cret".into()),
            ("Content-Type", "application/x-www-form-urlencoded".into()),
        ],
        form,
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    eventually("GitLab's push triggers instance 2", || async {
        (instances(&app, "app").await == 2).then_some(())
    })
    .await;

    // Bitbucket Server's push, signed; and GoCD's generic notify.
    commit(&repo, "c.txt", "third");
    let bitbucket = serde_json::json!({"changes": [{"ref": {"id": "refs/heads/main"}}], "repository": {"links": {"clone": [{"href": format!("file://{}", repo.display())}]}}}).to_string();
    let (status, answer) = post(
        "/go/api/webhooks/bitbucket/notify",
        vec![("X-Hub-Signature", sign("s3cret", &bitbucket))],
        bitbucket.clone(),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    eventually("Bitbucket's push triggers instance 3", || async {
        (instances(&app, "app").await == 3).then_some(())
    })
    .await;
    let reply = app
        .call(
            reqwest::Method::POST,
            "/go/api/material/notify/git",
            serde_json::json!({"repository_url": "https://example.com/nope"}),
        )
        .await;
    assert_eq!(reply.status, 404);
    commit(&repo, "d.txt", "fourth");
    app.call(
        reqwest::Method::POST,
        "/go/api/material/notify/git",
        serde_json::json!({"repository_url": format!("{}/", repo.display())}),
    )
    .await
    .expect(202);
    eventually("notify triggers instance 4", || async {
        (instances(&app, "app").await == 4).then_some(())
    })
    .await;

    // Without a secret, no webhook is believed.
    let open = spawn_app_with(|_| {}).await;
    let (status, answer) = {
        let reply = client
            .post(open.url("/go/api/webhooks/github/notify"))
            .header("X-Hub-Signature-256", sign("s3cret", &body))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        (reply.status().as_u16(), reply.text().await.unwrap())
    };
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("webhook-secret-file"), "{answer}");
}

/// A restart in the middle keeps every recorded modification: the instances built before it
/// still list their commits, and the first poll after it reads only the commits since the
/// revision it knew (one pushed while the server was down included).
#[tokio::test]
async fn a_restart_keeps_the_recorded_modifications() {
    use crate::helpers::Server;
    let work = tempfile::tempdir().unwrap();
    let repo = new_repo(work.path());
    commit(&repo, "a.txt", "first");
    let data = tempfile::tempdir().unwrap();
    let settings = || {
        let mut config = test_config(data.path());
        config.material_poll_interval = Duration::from_millis(300);
        config
    };
    let yaml = format!(
        "format_version: 10\npipelines:\n  app:\n    group: g\n    materials:\n      code: {{git: \"{}\", branch: main}}\n    stages:\n      - build: {{tasks: [{{exec: {{command: make}}}}]}}\n",
        repo.display()
    );
    let comments = |instance: &Value| -> Vec<String> {
        instance["build_cause"]["material_revisions"][0]["modifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["comment"].as_str().unwrap().to_string())
            .collect()
    };
    let server = Server::start(settings()).await;
    let api = server.api();
    api.put_config("app", &yaml).await.expect(201);
    eventually("instance 1", || async {
        (instances(&api, "app").await == 1).then_some(())
    })
    .await;
    commit(&repo, "a.txt", "second");
    commit(&repo, "a.txt", "third");
    eventually("instance 2", || async {
        (instances(&api, "app").await == 2).then_some(())
    })
    .await;
    server.stop().await;

    commit(&repo, "a.txt", "fourth, while it was down");
    let server = Server::start(settings()).await;
    let api = server.api();
    eventually("instance 3", || async {
        (instances(&api, "app").await == 3).then_some(())
    })
    .await;
    let two = api
        .get("/go/api/pipelines/app/instance/2")
        .await
        .expect(200);
    assert_eq!(comments(&two), ["third", "second"]);
    let three = api
        .get("/go/api/pipelines/app/instance/3")
        .await
        .expect(200);
    assert_eq!(comments(&three), ["fourth, while it was down"]);
    let page = api.get("/pipelines/app/2/build_cause").await.text();
    assert!(page.contains("second") && page.contains("third"), "{page}");
    server.stop().await;
}
