//! What scheduling, assignment, reports and console appends publish on `/api/events` and the
//! agents page: the streams a UI follows instead of polling.

use serde_json::{Value, json};

use crate::helpers::*;

/// The next domain event named `name` on an `/api/events` stream, with its JSON data.
async fn wait_event(stream: &mut SseClient, name: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let event = stream
        .wait_for(name, |e| {
            e.event == name
                && serde_json::from_str::<Value>(&e.data)
                    .map(|data| matches(&data))
                    .unwrap_or(false)
        })
        .await;
    serde_json::from_str(&event.data).expect("JSON data")
}

/// An `/api/events` stream past its `ready` event, so what follows is what the test caused.
async fn subscribe_api(app: &TestApp, topics: &str) -> SseClient {
    let mut stream = app.subscribe(&format!("/api/events?topics={topics}")).await;
    let ready = stream.next().await.expect("the ready event");
    assert_eq!(ready.event, "ready", "{ready:?}");
    stream
}

#[tokio::test]
async fn the_scheduler_topic_carries_the_pending_count() {
    let app = spawn_app().await;
    let mut stream = subscribe_api(&app, "scheduler:updates").await;

    app.schedule_job("events", "one").await;
    wait_event(&mut stream, "pending_count", |d| d == &json!({"count": 1})).await;
    app.schedule_job("events", "two").await;
    wait_event(&mut stream, "pending_count", |d| d == &json!({"count": 2})).await;

    let agent = app.register_enabled("taker").await;
    app.as_agent(&agent).take_work().await;
    wait_event(&mut stream, "pending_count", |d| d == &json!({"count": 1})).await;
}

#[tokio::test]
async fn an_agents_run_topic_carries_run_created_on_assignment_and_run_updated_on_status() {
    let app = spawn_app().await;
    let agent = app.register_enabled("watched").await;
    let mut stream = subscribe_api(&app, &format!("agent_job_runs:{}", agent.uuid)).await;
    let id = app.schedule_job("events", "assigned").await;

    app.as_agent(&agent).take_work().await;
    let created = wait_event(&mut stream, "run_created", |d| d["build_id"] == id).await;
    assert_eq!(created["state"], "Assigned", "{created}");
    assert_eq!(created["agent_uuid"], agent.uuid.as_str(), "{created}");
    assert_eq!(created["job_name"], "assigned");

    app.as_agent(&agent).report_ok(id, "Preparing", None).await;
    let updated = wait_event(&mut stream, "run_updated", |d| {
        d["build_id"] == id && d["state"] == "Preparing"
    })
    .await;
    assert_eq!(updated["result"], "Unknown");

    app.as_agent(&agent)
        .report_ok(id, "Completed", Some("Passed"))
        .await;
    wait_event(&mut stream, "run_updated", |d| {
        d["build_id"] == id && d["state"] == "Completed" && d["result"] == "Passed"
    })
    .await;
}

#[tokio::test]
async fn a_runs_console_topic_carries_appends_and_status_changes() {
    let app = spawn_app().await;
    let id = app.schedule_job("events", "console").await;
    let agent = app.register_enabled("talker").await;
    let mut stream = subscribe_api(&app, &format!("agent_job_run_console:{id}")).await;

    app.as_agent(&agent).take_work().await;
    app.as_agent(&agent).report_ok(id, "Building", None).await;
    wait_event(&mut stream, "run_updated", |d| {
        d["build_id"] == id && d["state"] == "Building"
    })
    .await;

    app.as_agent(&agent).append(id, Some(0), b"hello\n").await;
    let data = wait_event(&mut stream, "console_append", |_| true).await;
    assert_eq!(data, json!({"offset": 6, "chunk": "hello\n"}));

    // Raw bytes are shown as UTF-8 with invalid sequences replaced.
    app.as_agent(&agent)
        .append(id, Some(6), &[b'a', 0xff, b'\n'])
        .await;
    let data = wait_event(&mut stream, "console_append", |_| true).await;
    assert_eq!(data, json!({"offset": 9, "chunk": "a\u{fffd}\n"}));

    // A retried chunk stores nothing and announces nothing; the next real one follows.
    app.as_agent(&agent)
        .append(id, Some(6), &[b'a', 0xff, b'\n'])
        .await;
    app.as_agent(&agent).append(id, Some(9), b"bye\n").await;
    let data = wait_event(&mut stream, "console_append", |_| true).await;
    assert_eq!(data, json!({"offset": 13, "chunk": "bye\n"}));

    app.as_agent(&agent)
        .report_ok(id, "Completed", Some("Passed"))
        .await;
    let run = wait_event(&mut stream, "run_updated", |d| d["state"] == "Completed").await;
    assert_eq!(run["result"], "Passed");
    assert_eq!(run["console_length"], 13);
}

#[tokio::test]
async fn the_agents_page_shows_the_queued_count_as_jobs_are_scheduled_and_assigned() {
    let app = spawn_app().await;
    let agent = app.register_enabled("page-taker").await;
    let mut stream = app.subscribe("/agents/events").await;
    stream
        .wait_for("queued 0", |e| e.event == "queued" && e.data == "0")
        .await;

    app.schedule_job("page", "one").await;
    stream
        .wait_for("queued 1", |e| e.event == "queued" && e.data == "1")
        .await;
    app.schedule_job("page", "two").await;
    stream
        .wait_for("queued 2", |e| e.event == "queued" && e.data == "2")
        .await;

    app.as_agent(&agent).take_work().await;
    stream
        .wait_for("queued 1 after the assignment", |e| {
            e.event == "queued" && e.data == "1"
        })
        .await;
}
