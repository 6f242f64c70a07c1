//! Cancelling a run: at once while it is queued, through its agent while it runs.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn cancelling_a_scheduled_job_ends_it_at_once() {
    let app = spawn_app().await;
    let id = app.schedule_job("cancel", "queued").await;
    assert_eq!(app.pending_count().await, 1);

    let run = app.cancel(id).await.expect(202);
    assert_eq!(run["build_id"], id);
    assert_eq!(
        (&run["state"], &run["result"]),
        (&json!("Completed"), &json!("Cancelled"))
    );

    let run = app.build(id).await;
    assert_eq!(
        (&run["state"], &run["result"]),
        (&json!("Completed"), &json!("Cancelled"))
    );
    assert_eq!(app.pending_count().await, 0);

    // No agent gets it.
    let agent = app.register_enabled("too-late").await;
    app.as_agent(&agent).work().await.expect(204);
}

#[tokio::test]
async fn cancelling_a_running_job_tells_its_agent_and_ends_when_the_agent_stops() {
    let app = spawn_app().await;
    let id = app.schedule_job("cancel", "running").await;
    let agent = app.register_enabled("runner").await;
    app.as_agent(&agent).take_work().await;
    app.as_agent(&agent).report_ok(id, "Building", None).await;

    let body = app
        .as_agent(&agent)
        .ping(json!({"agent_state": "Building", "build_id": id}))
        .await
        .expect(200);
    assert_eq!(body["instruction"], "NONE");

    let run = app.cancel(id).await.expect(202);
    assert_eq!(run["build_id"], id);
    assert_ne!(
        run["state"], "Completed",
        "the agent has not stopped yet: {run}"
    );

    let body = app
        .as_agent(&agent)
        .ping(json!({"agent_state": "Building", "build_id": id}))
        .await
        .expect(200);
    assert_eq!(body["instruction"], "CANCEL", "{body}");

    // The agent killed its task, which made it fail; the run still ends Cancelled.
    app.as_agent(&agent)
        .report_ok(id, "Completed", Some("Failed"))
        .await;
    let run = app.build(id).await;
    assert_eq!(
        (&run["state"], &run["result"]),
        (&json!("Completed"), &json!("Cancelled")),
        "{run}"
    );

    let body = app
        .as_agent(&agent)
        .ping(json!({"agent_state": "Idle"}))
        .await
        .expect(200);
    assert_eq!(body["instruction"], "NONE", "{body}");
    assert_eq!(app.agent(&agent.uuid).await["agent_state"], "Idle");
}
