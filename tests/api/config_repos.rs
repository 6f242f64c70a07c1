//! Config repositories against a real repository: every `*.gocd.yaml|yml` in it is config, a
//! commit adding a file adds its pipeline, a `type: configrepo` material builds the
//! repository itself, and a commit that breaks the config keeps the last good revision with
//! the error and the revision that broke it shown — across a restart too.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Api, Server, eventually, test_config};
use crate::materials::{commit, new_repo};

fn write(repo: &Path, file: &str, text: &str) {
    let path = repo.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn pipeline_yaml(name: &str) -> String {
    format!(
        "format_version: 10\npipelines:\n  {name}:\n    group: from-repo\n    materials:\n      self: {{type: configrepo}}\n    stages:\n      - build: {{tasks: [{{exec: {{command: make}}}}]}}\n"
    )
}

/// The config repository's source in `GET /api/config`.
async fn repo_source(api: &Api) -> Value {
    let sources = api.get("/api/config").await.expect(200);
    sources["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "repo")
        .cloned()
        .unwrap_or_else(|| panic!("no repo source: {sources}"))
}

fn pipelines_of(source: &Value) -> Vec<String> {
    source["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_config_repository_adds_pipelines_and_keeps_its_last_good_revision() {
    let work = tempfile::tempdir().unwrap();
    let repo = new_repo(work.path());
    write(&repo, "ci/alpha.gocd.yaml", &pipeline_yaml("alpha"));
    write(&repo, "README.md", "not config\n");
    let first = commit(&repo, "notes.txt", "alpha");
    let data = tempfile::tempdir().unwrap();
    let settings = |interval: Duration| {
        let mut config = test_config(data.path());
        config.config_repos = vec![format!("file://{}#main", repo.display()).parse().unwrap()];
        config.material_poll_interval = interval;
        config
    };
    let server = Server::start(settings(Duration::from_millis(300))).await;
    let api = server.api();

    // Its first poll: alpha is configured, and its configrepo material (the repository
    // itself) triggers its first instance at that revision.
    let source = eventually("the repository read", || async {
        let source = repo_source(&api).await;
        (source["revision"] == first.as_str()).then_some(source)
    })
    .await;
    assert_eq!(pipelines_of(&source), ["alpha"]);
    assert_eq!(source["branch"], "main");
    assert!(source["last_parsed_at"].is_string(), "{source}");
    assert_eq!(source["errors"], serde_json::json!([]));
    let history = eventually("alpha's first instance", || async {
        let history = api.get("/go/api/pipelines/alpha/history").await.expect(200);
        (history["pagination"]["total"] == 1).then_some(history)
    })
    .await;
    let cause = &history["pipelines"][0]["build_cause"]["material_revisions"][0];
    assert_eq!(
        cause["modifications"][0]["revision"],
        first.as_str(),
        "{history}"
    );

    // A commit adding a file in a folder: its pipeline appears.
    write(&repo, "more/beta.gocd.yml", &pipeline_yaml("beta"));
    let second = commit(&repo, "notes.txt", "beta");
    eventually("beta configured", || async {
        let source = repo_source(&api).await;
        (source["revision"] == second.as_str() && pipelines_of(&source) == ["alpha", "beta"])
            .then_some(())
    })
    .await;

    // A broken commit: both pipelines stay, at the last good revision, with the error.
    write(
        &repo,
        "more/beta.gocd.yml",
        "format_version: 10\npipelines:\n  beta: [\n",
    );
    let broken = commit(&repo, "notes.txt", "broken");
    let source = eventually("the broken revision refused", || async {
        let source = repo_source(&api).await;
        (source["broken_revision"] == broken.as_str()).then_some(source)
    })
    .await;
    assert_eq!(source["revision"], second.as_str(), "{source}");
    assert_eq!(pipelines_of(&source), ["alpha", "beta"]);
    let errors = source["errors"].to_string();
    assert!(
        errors.contains(&format!("more/beta.gocd.yml at {}", &broken[..8])),
        "{errors}"
    );
    let dashboard = api.get("/pipelines").await.text();
    assert!(
        dashboard.contains(&broken[..8]),
        "the dashboard shows the error"
    );
    api.get("/api/pipelines/beta/config").await.expect(200);

    // Restarted without polling: the last good revision is what it starts from.
    server.stop().await;
    let server = Server::start(settings(Duration::ZERO)).await;
    let api = server.api();
    let source = repo_source(&api).await;
    assert_eq!(source["revision"], second.as_str(), "{source}");
    assert_eq!(pipelines_of(&source), ["alpha", "beta"]);
    server.stop().await;

    // Polling again, a fix: in effect, the error gone.
    let server = Server::start(settings(Duration::from_millis(300))).await;
    let api = server.api();
    write(&repo, "more/beta.gocd.yml", &pipeline_yaml("beta"));
    let fixed = commit(&repo, "notes.txt", "fixed");
    let source = eventually("the fix in effect", || async {
        let source = repo_source(&api).await;
        (source["revision"] == fixed.as_str()).then_some(source)
    })
    .await;
    assert_eq!(source["errors"], serde_json::json!([]));
    assert!(source["broken_revision"].is_null(), "{source}");
    server.stop().await;
}

/// Outside a config repository a `type: configrepo` material names no repository: the
/// document is taken, with a warning saying it is not polled.
#[tokio::test]
async fn a_configrepo_material_outside_a_config_repository_is_warned_of() {
    let app = crate::helpers::spawn_app().await;
    let stored = app
        .put_config("plain", &pipeline_yaml("alone"))
        .await
        .expect(201);
    let warnings = stored["warnings"].to_string();
    assert!(
        warnings.contains("pipelines.alone.materials.self") && warnings.contains("not polled"),
        "{stored}"
    );
}
