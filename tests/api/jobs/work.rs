//! Handing out work: which agents may ask, and what the WORK they get holds.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn pending_and_disabled_agents_never_get_work() {
    let app = spawn_app().await;
    let id = app.schedule_job("queued", "waits").await;

    let pending = app.register("pending-one").await;
    app.as_agent(&pending).work().await.expect(204);

    let disabled = app.register_enabled("disabled-one").await;
    let (status, _) = app
        .put(&format!("/api/agents/{}/disable", disabled.uuid))
        .await;
    assert_eq!(status, 200);
    app.as_agent(&disabled).work().await.expect(204);

    let run = app.build(id).await;
    assert_eq!(run["state"], "Scheduled", "{run}");
    assert_eq!(app.pending_count().await, 1);
}

#[tokio::test]
async fn an_enabled_agent_gets_the_work_and_shows_it_is_building() {
    let app = spawn_app().await;
    let id = app
        .schedule_ok(json!({
            "pipeline_name": "deliver",
            "stage_name": "package",
            "job_name": "tarball",
            "tasks": [
                {"command": "make", "args": ["dist"]},
                {"command": "sh", "args": ["-c", "ls dist"], "working_dir": "out"}
            ],
            "resources": [],
            "environment_variables": {"GREETING": "hello", "LEVEL": "3"}
        }))
        .await;
    assert_eq!(app.pending_count().await, 1);

    let agent = app.register_enabled("worker").await;
    let work = app.as_agent(&agent).take_work().await;
    assert_eq!(work["build_id"], id, "{work}");
    assert_eq!(work["pipeline_name"], "deliver");
    assert_eq!(work["pipeline_counter"], 1);
    assert_eq!(work["stage_name"], "package");
    assert_eq!(work["stage_counter"], 1);
    assert_eq!(work["job_name"], "tarball");
    let tasks = work["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 2, "{work}");
    assert_eq!(tasks[0]["command"], "make");
    assert_eq!(tasks[0]["args"], json!(["dist"]));
    assert_eq!(tasks[1]["command"], "sh");
    assert_eq!(tasks[1]["args"], json!(["-c", "ls dist"]));
    assert_eq!(tasks[1]["working_dir"], "out");
    assert_eq!(
        work["environment_variables"],
        json!({"GREETING": "hello", "LEVEL": "3"})
    );

    let run = app.build(id).await;
    assert_eq!(run["state"], "Assigned", "{run}");
    assert_eq!(run["agent_uuid"], agent.uuid.as_str(), "{run}");
    assert_eq!(app.pending_count().await, 0);

    let shown = app.agent(&agent.uuid).await;
    assert_eq!(shown["agent_state"], "Building", "{shown}");
    assert_eq!(
        shown["build_details"],
        json!({"pipeline_name": "deliver", "stage_name": "package", "job_name": "tarball", "build_id": id}),
        "{shown}"
    );
}

#[tokio::test]
async fn work_needs_the_agents_own_token() {
    let app = spawn_app().await;
    app.schedule_job("guarded", "job").await;
    let agent = app.register_enabled("owner").await;
    let other = app.register_enabled("intruder").await;

    app.as_agent(&agent)
        .without_token()
        .work()
        .await
        .expect(401);
    app.as_agent(&agent)
        .with_token(&other.token)
        .work()
        .await
        .expect(403);
    app.as_agent(&agent)
        .with_token("not-a-token")
        .work()
        .await
        .expect(401);

    // None of that took the job.
    assert_eq!(app.pending_count().await, 1);
    assert_eq!(app.agent(&agent.uuid).await["agent_state"], "Idle");
    app.as_agent(&agent).take_work().await;
}
