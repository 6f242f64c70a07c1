//! Pipeline timers against a real repository: a timer fires on its Quartz spec, and with
//! `only_on_changes` it triggers only when a git material has a revision the pipeline has
//! not run; a spec using a Quartz feature ferrocd refuses is a 422 at config time.

use crate::helpers::{Api, eventually, spawn_app};
use crate::materials::{commit, instances, new_repo};

async fn history(api: &Api, pipeline: &str) -> serde_json::Value {
    api.get(&format!("/go/api/pipelines/{pipeline}/history"))
        .await
        .expect(200)
}

#[tokio::test]
async fn timers_fire_and_only_on_changes_waits_for_a_commit() {
    let work = tempfile::tempdir().unwrap();
    let repo = new_repo(work.path());
    commit(&repo, "a.txt", "first");
    // Polling off: only the timers' own polls see the repository.
    let app = spawn_app().await;
    let yaml = format!(
        r#"format_version: 10
pipelines:
  nightly:
    group: g
    timer: {{spec: "*/2 * * * * ?", only_on_changes: true}}
    materials:
      code: {{git: "file://{repo}", branch: main, auto_update: false}}
    stages:
      - build: {{tasks: [{{exec: {{command: make}}}}]}}
  hourly:
    group: g
    timer: {{spec: "*/2 * * * * ?"}}
    materials:
      code: {{git: "file://{repo}", branch: main, auto_update: false}}
    stages:
      - build: {{tasks: [{{exec: {{command: make}}}}]}}
"#,
        repo = repo.display()
    );
    app.put_config("timers", &yaml).await.expect(201);

    // The first firing: nightly never ran, so it counts as changed.
    eventually("nightly's first firing", || async {
        (instances(&app, "nightly").await == 1).then_some(())
    })
    .await;
    let first = history(&app, "nightly").await;
    assert_eq!(
        first["pipelines"][0]["build_cause"]["approver"], "timer",
        "{first}"
    );
    // Two more firings of the same spec (hourly fires whatever changed) leave nightly alone.
    let seen = instances(&app, "hourly").await;
    eventually("two more firings", || async {
        (instances(&app, "hourly").await >= seen + 2).then_some(())
    })
    .await;
    assert_eq!(instances(&app, "nightly").await, 1, "nothing changed");

    // A commit: the next firing polls, sees it and triggers nightly at the new revision.
    let second = commit(&repo, "a.txt", "second");
    eventually("nightly's firing after the commit", || async {
        (instances(&app, "nightly").await == 2).then_some(())
    })
    .await;
    let latest = history(&app, "nightly").await;
    let revision =
        &latest["pipelines"][0]["build_cause"]["material_revisions"][0]["modifications"][0];
    assert_eq!(revision["revision"], second.as_str(), "{latest}");

    // The dashboard says when each fires next.
    let page = app.get("/pipelines").await.text();
    assert!(page.contains("*/2 * * * * ?"), "{page}");
    assert!(page.contains(" · next "), "{page}");
}

#[tokio::test]
async fn unsupported_quartz_features_are_refused_with_the_reason() {
    let app = spawn_app().await;
    for (spec, says) in [
        ("0 0 12 ? * 6L", "`L`"),
        ("0 0 12 15W * ?", "`W`"),
        ("0 0 12 ? * 6#3", "`#`"),
        ("0 0 12 * * MON", "exactly one"),
    ] {
        let yaml = format!(
            "format_version: 10\npipelines:\n  p:\n    group: g\n    timer: {{spec: \"{spec}\"}}\n    materials: {{code: {{git: \"https://example.com/r.git\"}}}}\n    stages: [{{s: {{tasks: [{{exec: {{command: make}}}}]}}}}]\n"
        );
        let reply = app.put_config("bad", &yaml).await;
        let body = reply.expect(422);
        let text = body.to_string();
        assert!(
            text.contains(says) && text.contains("timer.spec"),
            "{spec}: {text}"
        );
    }
}
