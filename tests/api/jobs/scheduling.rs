//! Scheduling ad-hoc jobs as a user's script does: the runs it creates, their counters, the
//! queue, and the requests it refuses.

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn scheduling_an_ad_hoc_job_creates_a_scheduled_run_with_the_next_counter() {
    let app = spawn_app().await;

    let first = app.schedule(job_body("adhoc", "compile")).await.expect(201);
    assert_eq!(first["state"], "Scheduled");
    let first_id = first["build_id"].as_i64().expect("build_id");

    let second = app.schedule(job_body("adhoc", "test")).await.expect(201);
    let second_id = second["build_id"].as_i64().expect("build_id");
    assert_ne!(first_id, second_id);

    let one = app.build(first_id).await;
    let two = app.build(second_id).await;
    assert_eq!(one["pipeline_counter"], 1, "{one}");
    assert_eq!(two["pipeline_counter"], 2, "{two}");
    assert_eq!(one["stage_counter"], 1, "{one}");
    assert_eq!(two["stage_counter"], 1, "{two}");
    assert_eq!(one["pipeline_name"], "adhoc");
    assert_eq!(one["stage_name"], "build");
    assert_eq!(one["job_name"], "compile");
    assert_eq!(one["state"], "Scheduled");
    assert_eq!(one["result"], "Unknown");
    assert_eq!(one["console_length"], 0);
    assert!(one["agent_uuid"].is_null(), "{one}");

    // Another pipeline name counts on its own.
    let other = app.schedule_job("other", "compile").await;
    assert_eq!(app.build(other).await["pipeline_counter"], 1);

    // The queue lists them, oldest first.
    let (status, queue) = app.get_json("/api/scheduler").await;
    assert_eq!(status, 200, "{queue}");
    assert_eq!(queue["pending_count"], 3, "{queue}");
    let ids: Vec<i64> = queue["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["build_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [first_id, second_id, other]);

    // GoCD clients use /go/api.
    let (status, run) = app.get_json(&format!("/go/api/builds/{first_id}")).await;
    assert_eq!((status, &run["build_id"]), (200, &json!(first_id)));
}

#[tokio::test]
async fn a_malformed_schedule_request_is_rejected_and_nothing_is_queued() {
    let app = spawn_app().await;

    let mut missing_job = job_body("bad", "x");
    missing_job.as_object_mut().unwrap().remove("job_name");
    let body = app.schedule(missing_job).await.expect(422);
    assert!(message(&body).contains("job_name"), "{body}");

    let mut no_tasks = job_body("bad", "x");
    no_tasks["tasks"] = json!([]);
    let body = app.schedule(no_tasks).await.expect(422);
    assert!(message(&body).contains("tasks"), "{body}");

    let mut tasks_not_array = job_body("bad", "x");
    tasks_not_array["tasks"] = json!("echo hello");
    let body = app.schedule(tasks_not_array).await.expect(422);
    assert!(message(&body).contains("tasks"), "{body}");

    let reply = app
        .call_raw(
            Method::POST,
            "/api/jobs/schedule",
            "{\"pipeline_name\": \"bad\", ",
        )
        .await;
    assert_eq!(reply.status, 400);
    assert!(!reply.message().is_empty(), "{}", reply.body);

    assert_eq!(app.pending_count().await, 0);
}

#[tokio::test]
async fn an_unknown_build_is_404() {
    let app = spawn_app().await;
    for path in [
        "/api/builds/424242",
        "/api/builds/424242/console",
        "/api/builds/not-a-number",
    ] {
        assert_eq!(app.get(path).await.status, 404, "{path}");
    }
    app.cancel(424242).await.expect(404);

    let agent = app.register_enabled("asks-about-nothing").await;
    app.as_agent(&agent)
        .report(424242, "Building", None)
        .await
        .expect(404);
}
