//! The build cause page: per git material the revision an instance runs and the commits new
//! to it (author, message, files), every text escaped; its stages live on its stream.

use std::time::Duration;

use crate::helpers::{eventually, spawn_app_with};
use crate::materials::{commit, new_repo};

#[tokio::test]
async fn the_build_cause_lists_the_new_commits_and_follows_the_stages() {
    let work = tempfile::tempdir().unwrap();
    let repo = new_repo(work.path());
    commit(&repo, "a.txt", "first");
    let app = spawn_app_with(|c| c.material_poll_interval = Duration::from_millis(300)).await;
    let yaml = format!(
        "format_version: 10\npipelines:\n  app:\n    group: g\n    materials:\n      code: {{git: \"{repo}\", branch: main}}\n    stages:\n      - build: {{tasks: [{{exec: {{command: make}}}}]}}\n",
        repo = repo.display()
    );
    app.put_config("cause", &yaml).await.expect(201);
    let agent = app.register_enabled("builder").await;
    crate::pipelines::finish_next(&app, &agent, "Passed").await; // instance 1, the head

    let second = commit(&repo, "src/b.rs", "second <b>bold</b>\n\nwith a body");
    let third = commit(&repo, "docs/c.md", "third");
    eventually("instance 2", || async {
        let history = app.get("/go/api/pipelines/app/history").await.expect(200);
        (history["pagination"]["total"] == 2).then_some(())
    })
    .await;
    let page = app.get("/pipelines/app/2/build_cause").await.text();
    assert!(page.contains(r#"id="material-code""#), "{page}");
    assert!(page.contains(r#"data-changed="true""#), "{page}");
    for revision in [&second, &third] {
        assert!(
            page.contains(&format!(r#"data-revision="{revision}""#)),
            "{revision} listed: {page}"
        );
    }
    assert!(page.contains("Ann"), "the author");
    assert!(
        page.contains("second &lt;b&gt;bold&lt;/b&gt;") && !page.contains("<b>bold</b>"),
        "the message, escaped"
    );
    assert!(page.contains("with a body") && page.contains("src/b.rs"));
    assert!(page.contains("Triggered by"), "{page}");
    // The history and the dashboard link to it.
    let history = app.get("/pipelines/app/history").await.text();
    assert!(
        history.contains("/pipelines/app/2/build_cause"),
        "{history}"
    );
    assert!(
        app.get("/pipelines")
            .await
            .text()
            .contains("/pipelines/app/2/build_cause")
    );

    // Its stream: the card first, then again when the stage passes.
    let mut stream = app.subscribe("/pipelines/app/2/build_cause/events").await;
    stream
        .wait_for("the first card", |e| {
            e.event == "build_cause" && e.data.contains(&third) && e.data.contains("building")
        })
        .await;
    crate::pipelines::finish_next(&app, &agent, "Passed").await;
    stream
        .wait_for("the card with the stage passed", |e| {
            e.event == "build_cause" && e.data.contains("stage-passed")
        })
        .await;

    assert_eq!(app.get("/pipelines/app/9/build_cause").await.status, 404);
    assert_eq!(app.get("/pipelines/nope/1/build_cause").await.status, 404);
}
