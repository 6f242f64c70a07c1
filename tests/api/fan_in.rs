//! Fan-in, the simple case: a downstream pipeline with two upstreams building the same git
//! repository (and that repository itself) runs once per commit, after both upstreams have
//! passed at that commit, with the revisions they ran.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Api, eventually, spawn_app_with};
use crate::materials::{commit, instances, new_repo};
use crate::pipelines::finish_next;

async fn history(api: &Api, pipeline: &str) -> Value {
    api.get(&format!("/go/api/pipelines/{pipeline}/history"))
        .await
        .expect(200)
}

#[tokio::test]
async fn a_downstream_of_two_upstreams_runs_once_per_commit_with_their_revision() {
    let work = tempfile::tempdir().unwrap();
    let repo = new_repo(work.path());
    let first = commit(&repo, "a.txt", "first");
    let app = spawn_app_with(|c| c.material_poll_interval = Duration::from_millis(300)).await;
    // `release` comes first, so a poll has passed it over before it triggers the upstreams.
    let yaml = format!(
        r#"format_version: 10
pipelines:
  release:
    group: g
    label_template: "${{COUNT}}-${{api}}-${{web}}"
    materials:
      code: {{git: "{repo}", branch: main}}
      api: {{pipeline: api, stage: build}}
      web: {{pipeline: web, stage: build}}
    stages:
      - ship: {{tasks: [{{exec: {{command: make}}}}]}}
  api:
    group: g
    materials:
      code: {{git: "{repo}", branch: main}}
    stages:
      - build: {{tasks: [{{exec: {{command: make}}}}]}}
  web:
    group: g
    materials:
      code: {{git: "{repo}", branch: main}}
    stages:
      - build: {{tasks: [{{exec: {{command: make}}}}]}}
"#,
        repo = repo.display()
    );
    app.put_config("fan-in", &yaml).await.expect(201);
    let agent = app.register_enabled("builder").await;

    for (round, revision) in [(1, first.clone()), (2, String::new())] {
        let revision = if round == 1 {
            revision
        } else {
            commit(&repo, "a.txt", "second")
        };
        eventually("both upstreams triggered", || async {
            (instances(&app, "api").await == round && instances(&app, "web").await == round)
                .then_some(())
        })
        .await;
        assert_eq!(
            instances(&app, "release").await,
            round - 1,
            "not triggered by the commit itself"
        );
        finish_next(&app, &agent, "Passed").await;
        assert_eq!(
            instances(&app, "release").await,
            round - 1,
            "one upstream passed at {revision}: the other has not yet"
        );
        finish_next(&app, &agent, "Passed").await;
        assert_eq!(
            instances(&app, "release").await,
            round,
            "both passed: it runs once"
        );
        let release = history(&app, "release").await;
        let latest = &release["pipelines"][0];
        assert_eq!(
            latest["build_cause"]["material_revisions"][0]["modifications"][0]["revision"],
            revision.as_str(),
            "{latest}"
        );
        assert_eq!(latest["label"], format!("{round}-{round}-{round}"));
        finish_next(&app, &agent, "Passed").await; // release's own job
    }
    assert_eq!(instances(&app, "release").await, 2, "once per commit");
}
