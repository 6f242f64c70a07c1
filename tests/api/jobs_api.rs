//! Jobs, builds and the scheduler, as a user's script and an agent see them: scheduling ad-hoc
//! jobs, handing out work, status reports, the console, cancelling, rescheduling the runs of
//! agents that went silent, and the events all of that publishes.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

// ---------------------------------------------------------------------------------------
// Private helpers
// ---------------------------------------------------------------------------------------

/// A schedule request body for an ad-hoc job.
fn job_body(pipeline: &str, job: &str) -> Value {
    json!({
        "pipeline_name": pipeline,
        "stage_name": "build",
        "job_name": job,
        "tasks": [{"command": "echo", "args": ["hello", job]}],
        "resources": [],
    })
}

async fn schedule(app: &TestApp, body: Value) -> (u16, Value) {
    app.send_json(Method::POST, "/api/jobs/schedule", body)
        .await
}

/// Schedules `body` and returns the new build id.
async fn schedule_body_ok(app: &TestApp, body: Value) -> i64 {
    let (status, run) = schedule(app, body).await;
    assert_eq!(status, 201, "schedule failed: {run}");
    assert_eq!(run["state"], "Scheduled", "{run}");
    run["build_id"].as_i64().expect("a numeric build_id")
}

async fn schedule_ok(app: &TestApp, pipeline: &str, job: &str) -> i64 {
    schedule_body_ok(app, job_body(pipeline, job)).await
}

/// A POST as an agent: `token` in `Authorization: Bearer`, or no header at all.
async fn agent_post(app: &TestApp, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = app
        .client
        .post(app.url(path))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `POST /api/agents/{uuid}/work` with the agent's own token.
async fn request_work(app: &TestApp, agent: &Registered) -> (u16, Value) {
    agent_post(
        app,
        &format!("/api/agents/{}/work", agent.uuid),
        Some(&agent.token),
        json!({}),
    )
    .await
}

/// Asks for work and expects some; returns the WORK.
async fn work_ok(app: &TestApp, agent: &Registered) -> Value {
    let (status, work) = request_work(app, agent).await;
    assert_eq!(status, 200, "expected work: {work}");
    work
}

async fn report(
    app: &TestApp,
    token: &str,
    build_id: i64,
    job_state: &str,
    result: Option<&str>,
) -> (u16, Value) {
    let mut body = json!({ "job_state": job_state });
    if let Some(result) = result {
        body["result"] = json!(result);
    }
    agent_post(
        app,
        &format!("/api/builds/{build_id}/status"),
        Some(token),
        body,
    )
    .await
}

async fn report_ok(
    app: &TestApp,
    agent: &Registered,
    build_id: i64,
    state: &str,
    result: Option<&str>,
) -> Value {
    let (status, run) = report(app, &agent.token, build_id, state, result).await;
    assert_eq!(status, 200, "reporting {state}: {run}");
    run
}

/// Raw console bytes at `X-Console-Offset: offset` (no header when `None`).
async fn append(
    app: &TestApp,
    token: &str,
    build_id: i64,
    offset: Option<u64>,
    bytes: Vec<u8>,
) -> (u16, Value) {
    let mut request = app
        .client
        .post(app.url(&format!("/api/builds/{build_id}/console")))
        .bearer_auth(token)
        .header("Content-Type", "text/plain")
        .body(bytes);
    if let Some(offset) = offset {
        request = request.header("X-Console-Offset", offset.to_string());
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `GET /api/builds/{id}/console[?from=N]`: the raw bytes and `X-Console-Length`.
async fn read_console(app: &TestApp, build_id: i64, from: Option<u64>) -> (Vec<u8>, String) {
    let path = match from {
        Some(from) => format!("/api/builds/{build_id}/console?from={from}"),
        None => format!("/api/builds/{build_id}/console"),
    };
    let response = app
        .client
        .get(app.url(&path))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "console of {build_id}");
    let length = response
        .headers()
        .get("x-console-length")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<missing>")
        .to_string();
    (response.bytes().await.expect("body").to_vec(), length)
}

async fn build(app: &TestApp, build_id: i64) -> Value {
    let (status, run) = app.get_json(&format!("/api/builds/{build_id}")).await;
    assert_eq!(status, 200, "GET build {build_id}: {run}");
    run
}

async fn pending_count(app: &TestApp) -> u64 {
    let (status, body) = app.get_json("/api/scheduler").await;
    assert_eq!(status, 200, "{body}");
    body["pending_count"].as_u64().expect("pending_count")
}

async fn cancel(app: &TestApp, build_id: i64) -> (u16, Value) {
    app.send_json(
        Method::POST,
        &format!("/api/builds/{build_id}/cancel"),
        json!({}),
    )
    .await
}

async fn set_agent(app: &TestApp, agent: &Registered, body: Value) {
    let (status, answer) = app
        .send_json(Method::PATCH, &format!("/api/agents/{}", agent.uuid), body)
        .await;
    assert_eq!(status, 200, "PATCH agent: {answer}");
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or("")
}

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

async fn subscribe_api(app: &TestApp, topics: &str) -> SseClient {
    let mut stream = app.subscribe(&format!("/api/events?topics={topics}")).await;
    let ready = stream.next().await.expect("the ready event");
    assert_eq!(ready.event, "ready", "{ready:?}");
    stream
}

// ---------------------------------------------------------------------------------------
// Scheduling
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn scheduling_an_ad_hoc_job_creates_a_scheduled_run_with_the_next_counter() {
    let app = spawn_app().await;

    let (status, first) = schedule(&app, job_body("adhoc", "compile")).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["state"], "Scheduled");
    let first_id = first["build_id"].as_i64().expect("build_id");

    let (status, second) = schedule(&app, job_body("adhoc", "test")).await;
    assert_eq!(status, 201, "{second}");
    let second_id = second["build_id"].as_i64().expect("build_id");
    assert_ne!(first_id, second_id);

    let one = build(&app, first_id).await;
    let two = build(&app, second_id).await;
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
    let other = schedule_ok(&app, "other", "compile").await;
    assert_eq!(build(&app, other).await["pipeline_counter"], 1);

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
    let (status, body) = schedule(&app, missing_job).await;
    assert_eq!(status, 422, "{body}");
    assert!(message(&body).contains("job_name"), "{body}");

    let mut no_tasks = job_body("bad", "x");
    no_tasks["tasks"] = json!([]);
    let (status, body) = schedule(&app, no_tasks).await;
    assert_eq!(status, 422, "{body}");
    assert!(message(&body).contains("tasks"), "{body}");

    let mut tasks_not_array = job_body("bad", "x");
    tasks_not_array["tasks"] = json!("echo hello");
    let (status, body) = schedule(&app, tasks_not_array).await;
    assert_eq!(status, 422, "{body}");
    assert!(message(&body).contains("tasks"), "{body}");

    let response = app
        .client
        .post(app.url("/api/jobs/schedule"))
        .header("Content-Type", "application/json")
        .body("{\"pipeline_name\": \"bad\", ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(!message(&body).is_empty(), "{body}");

    assert_eq!(pending_count(&app).await, 0);
}

#[tokio::test]
async fn an_unknown_build_is_404() {
    let app = spawn_app().await;
    for path in [
        "/api/builds/424242",
        "/api/builds/424242/console",
        "/api/builds/not-a-number",
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    let (status, body) = cancel(&app, 424242).await;
    assert_eq!(status, 404, "{body}");

    let agent = app.register_enabled("asks-about-nothing").await;
    let (status, body) = report(&app, &agent.token, 424242, "Building", None).await;
    assert_eq!(status, 404, "{body}");
}

// ---------------------------------------------------------------------------------------
// Work
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn pending_and_disabled_agents_never_get_work() {
    let app = spawn_app().await;
    let id = schedule_ok(&app, "queued", "waits").await;

    let pending = app.register("pending-one").await;
    let (status, body) = request_work(&app, &pending).await;
    assert_eq!(status, 204, "{body}");

    let disabled = app.register_enabled("disabled-one").await;
    let (status, _) = app
        .put(&format!("/api/agents/{}/disable", disabled.uuid))
        .await;
    assert_eq!(status, 200);
    let (status, body) = request_work(&app, &disabled).await;
    assert_eq!(status, 204, "{body}");

    let run = build(&app, id).await;
    assert_eq!(run["state"], "Scheduled", "{run}");
    assert_eq!(pending_count(&app).await, 1);
}

#[tokio::test]
async fn an_enabled_agent_gets_the_work_and_shows_it_is_building() {
    let app = spawn_app().await;
    let id = schedule_body_ok(
        &app,
        json!({
            "pipeline_name": "deliver",
            "stage_name": "package",
            "job_name": "tarball",
            "tasks": [
                {"command": "make", "args": ["dist"]},
                {"command": "sh", "args": ["-c", "ls dist"], "working_dir": "out"}
            ],
            "resources": [],
            "environment_variables": {"GREETING": "hello", "LEVEL": "3"}
        }),
    )
    .await;
    assert_eq!(pending_count(&app).await, 1);

    let agent = app.register_enabled("worker").await;
    let work = work_ok(&app, &agent).await;
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

    let run = build(&app, id).await;
    assert_eq!(run["state"], "Assigned", "{run}");
    assert_eq!(run["agent_uuid"], agent.uuid.as_str(), "{run}");
    assert_eq!(pending_count(&app).await, 0);

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
    schedule_ok(&app, "guarded", "job").await;
    let agent = app.register_enabled("owner").await;
    let other = app.register_enabled("intruder").await;
    let path = format!("/api/agents/{}/work", agent.uuid);

    let (status, body) = agent_post(&app, &path, None, json!({})).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = agent_post(&app, &path, Some(&other.token), json!({})).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = agent_post(&app, &path, Some("not-a-token"), json!({})).await;
    assert_eq!(status, 401, "{body}");

    // None of that took the job.
    assert_eq!(pending_count(&app).await, 1);
    assert_eq!(app.agent(&agent.uuid).await["agent_state"], "Idle");
    work_ok(&app, &agent).await;
}

// ---------------------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_job_needing_a_resource_goes_only_to_an_agent_offering_it_in_any_case() {
    let app = spawn_app().await;
    let mut body = job_body("res", "needs-linux");
    body["resources"] = json!(["linux"]);
    let id = schedule_body_ok(&app, body).await;

    let windows = app.register_enabled("windows-box").await;
    set_agent(&app, &windows, json!({"resources": ["windows"]})).await;
    let (status, body) = request_work(&app, &windows).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(build(&app, id).await["state"], "Scheduled");

    let linux = app.register_enabled("linux-box").await;
    set_agent(&app, &linux, json!({"resources": ["LINUX"]})).await;
    let work = work_ok(&app, &linux).await;
    assert_eq!(work["build_id"], id);
    assert_eq!(build(&app, id).await["agent_uuid"], linux.uuid.as_str());
}

#[tokio::test]
async fn environments_must_be_shared_or_absent_on_both_sides() {
    let app = spawn_app().await;
    let mut prod_job = job_body("envs", "deploy");
    prod_job["environment"] = json!("prod");
    let prod_id = schedule_body_ok(&app, prod_job).await;
    let plain_id = schedule_ok(&app, "envs", "unit-tests").await;

    // An agent in no environment skips the older prod job and takes the plain one.
    let plain = app.register_enabled("plain").await;
    let work = work_ok(&app, &plain).await;
    assert_eq!(work["build_id"], plain_id, "{work}");

    // An agent in prod takes the prod job.
    let prod = app.register_enabled("prod-box").await;
    set_agent(&app, &prod, json!({"environments": ["prod"]})).await;
    let work = work_ok(&app, &prod).await;
    assert_eq!(work["build_id"], prod_id, "{work}");

    // A job without an environment is not for an agent that has one.
    let late_id = schedule_ok(&app, "envs", "lint").await;
    let prod_two = app.register_enabled("prod-two").await;
    set_agent(&app, &prod_two, json!({"environments": ["prod"]})).await;
    let (status, body) = request_work(&app, &prod_two).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(build(&app, late_id).await["state"], "Scheduled");

    // A plain agent does take it.
    let plain_two = app.register_enabled("plain-two").await;
    assert_eq!(work_ok(&app, &plain_two).await["build_id"], late_id);
}

#[tokio::test]
async fn the_oldest_scheduled_job_goes_first() {
    let app = spawn_app().await;
    let ids = [
        schedule_ok(&app, "fifo", "first").await,
        schedule_ok(&app, "fifo", "second").await,
        schedule_ok(&app, "fifo", "third").await,
    ];
    for (i, expected) in ids.iter().enumerate() {
        let agent = app.register_enabled(&format!("fifo-{i}")).await;
        let work = work_ok(&app, &agent).await;
        assert_eq!(work["build_id"], *expected, "agent {i} got {work}");
    }
    assert_eq!(pending_count(&app).await, 0);
}

#[tokio::test]
async fn an_agent_holding_a_run_gets_that_same_run_again_and_no_second_one() {
    let app = spawn_app().await;
    let first = schedule_ok(&app, "once", "a").await;
    let second = schedule_ok(&app, "once", "b").await;
    let agent = app.register_enabled("forgetful").await;

    let work = work_ok(&app, &agent).await;
    assert_eq!(work["build_id"], first);
    // The answer was lost; the agent asks again while the run is still Assigned.
    let again = work_ok(&app, &agent).await;
    assert_eq!(again["build_id"], first, "{again}");
    assert_eq!(again["job_name"], "a");

    assert_eq!(build(&app, first).await["state"], "Assigned");
    let other = build(&app, second).await;
    assert_eq!(other["state"], "Scheduled", "{other}");
    assert!(other["agent_uuid"].is_null(), "{other}");
    assert_eq!(pending_count(&app).await, 1);

    // Once it finishes, it may take the next one.
    report_ok(&app, &agent, first, "Completed", Some("Passed")).await;
    assert_eq!(work_ok(&app, &agent).await["build_id"], second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_agents_polling_at_once_get_each_of_a_hundred_jobs_exactly_once() {
    let app = spawn_app().await;
    let mut scheduled = HashSet::new();
    for i in 0..100 {
        scheduled.insert(schedule_ok(&app, "race", &format!("job-{i}")).await);
    }
    let mut agents = Vec::new();
    for i in 0..20 {
        agents.push(app.register_enabled(&format!("racer-{i}")).await);
    }

    let mut handles = Vec::new();
    for agent in agents {
        let client = app.client.clone();
        let base = app.base.clone();
        let uuid = agent.uuid.clone();
        handles.push((
            uuid,
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                let mut got = Vec::new();
                loop {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "agent {} still polling at the deadline",
                        agent.uuid
                    );
                    let response = client
                        .post(format!("{base}/api/agents/{}/work", agent.uuid))
                        .bearer_auth(&agent.token)
                        .send()
                        .await
                        .expect("work request");
                    match response.status().as_u16() {
                        200 => {
                            let work: Value = response.json().await.expect("WORK");
                            let id = work["build_id"].as_i64().expect("build_id");
                            got.push(id);
                            let done = client
                                .post(format!("{base}/api/builds/{id}/status"))
                                .bearer_auth(&agent.token)
                                .json(&json!({"job_state": "Completed", "result": "Passed"}))
                                .send()
                                .await
                                .expect("status request");
                            let status = done.status();
                            assert_eq!(
                                status,
                                200,
                                "completing {id}: {}",
                                done.text().await.unwrap_or_default()
                            );
                        }
                        204 => {
                            let queue: Value = client
                                .get(format!("{base}/api/scheduler"))
                                .send()
                                .await
                                .expect("scheduler request")
                                .json()
                                .await
                                .expect("scheduler JSON");
                            if queue["pending_count"] == 0 {
                                return got;
                            }
                            // Polling, as an agent does, a little later.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        other => panic!(
                            "work answered {other}: {}",
                            response.text().await.unwrap_or_default()
                        ),
                    }
                }
            }),
        ));
    }

    let mut received = Vec::new();
    let mut per_agent = Vec::new();
    for (uuid, handle) in handles {
        let got = handle.await.expect("an agent task");
        per_agent.push((uuid, got.len()));
        received.extend(got);
    }
    let unique: HashSet<i64> = received.iter().copied().collect();
    assert_eq!(
        unique.len(),
        received.len(),
        "some build was handed out twice: {} assignments, {} distinct",
        received.len(),
        unique.len()
    );
    assert_eq!(unique, scheduled, "every scheduled build is received");
    assert_eq!(pending_count(&app).await, 0);
    // Each agent's history holds exactly the runs it received.
    for (uuid, count) in per_agent {
        let (status, history) = app
            .get_json(&format!(
                "/api/agents/{uuid}/job_run_history?page_size=1000"
            ))
            .await;
        assert_eq!(status, 200, "{history}");
        assert_eq!(history["pagination"]["total"], count, "{history}");
    }
    for id in [received[0], received[received.len() - 1]] {
        let run = build(&app, id).await;
        assert_eq!(
            (&run["state"], &run["result"]),
            (&json!("Completed"), &json!("Passed"))
        );
    }
}

// ---------------------------------------------------------------------------------------
// Status reports
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_agent_reports_its_run_forward_to_completed() {
    let app = spawn_app().await;
    let id = schedule_ok(&app, "states", "walk").await;
    let agent = app.register_enabled("walker").await;
    work_ok(&app, &agent).await;

    for state in ["Preparing", "Building", "Completing"] {
        let run = report_ok(&app, &agent, id, state, None).await;
        assert_eq!(run["state"], state, "{run}");
        assert_eq!(build(&app, id).await["state"], state);
    }
    // A retry of the current state is harmless.
    let run = report_ok(&app, &agent, id, "Completing", None).await;
    assert_eq!(run["state"], "Completing");
    // Going back is not.
    let (status, body) = report(&app, &agent.token, id, "Building", None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(build(&app, id).await["state"], "Completing");

    let run = report_ok(&app, &agent, id, "Completed", Some("Passed")).await;
    assert_eq!(
        (&run["state"], &run["result"]),
        (&json!("Completed"), &json!("Passed"))
    );
    // Retrying the completion too.
    report_ok(&app, &agent, id, "Completed", Some("Passed")).await;

    let run = build(&app, id).await;
    assert_eq!(run["state"], "Completed", "{run}");
    assert_eq!(run["result"], "Passed", "{run}");

    let shown = app.agent(&agent.uuid).await;
    assert_eq!(shown["agent_state"], "Idle", "{shown}");
    assert!(shown.get("build_details").is_none(), "{shown}");
}

#[tokio::test]
async fn a_report_may_skip_states_but_must_be_valid_and_from_the_assigned_agent() {
    let app = spawn_app().await;
    let id = schedule_ok(&app, "states", "skip").await;
    let agent = app.register_enabled("skipper").await;
    let stranger = app.register_enabled("stranger").await;
    work_ok(&app, &agent).await;

    let (status, body) = report(&app, &stranger.token, id, "Building", None).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = agent_post(
        &app,
        &format!("/api/builds/{id}/status"),
        None,
        json!({"job_state": "Building"}),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = report(&app, &agent.token, id, "Bogus", None).await;
    assert_eq!(status, 422, "{body}");
    assert!(message(&body).contains("job_state"), "{body}");
    assert_eq!(build(&app, id).await["state"], "Assigned");

    // Assigned → Building directly.
    let run = report_ok(&app, &agent, id, "Building", None).await;
    assert_eq!(run["state"], "Building");

    let (status, body) = report(&app, &agent.token, id, "Completed", None).await;
    assert_eq!(status, 422, "{body}");
    assert!(message(&body).contains("result"), "{body}");
    let (status, body) = report(&app, &stranger.token, id, "Completed", Some("Passed")).await;
    assert_eq!(status, 403, "{body}");

    let run = build(&app, id).await;
    assert_eq!(
        (&run["state"], &run["result"]),
        (&json!("Building"), &json!("Unknown"))
    );
    report_ok(&app, &agent, id, "Completed", Some("Failed")).await;
    assert_eq!(build(&app, id).await["result"], "Failed");
}

#[tokio::test]
async fn the_job_run_history_lists_each_run_with_its_transitions_newest_first() {
    let app = spawn_app().await;
    let agent = app.register_enabled("historian").await;
    let mut ids = Vec::new();
    for name in ["one", "two", "three"] {
        let id = schedule_ok(&app, "history", name).await;
        assert_eq!(work_ok(&app, &agent).await["build_id"], id);
        for state in ["Preparing", "Building", "Completing"] {
            report_ok(&app, &agent, id, state, None).await;
        }
        report_ok(&app, &agent, id, "Completed", Some("Passed")).await;
        ids.push(id);
    }

    let path = format!("/api/agents/{}/job_run_history", agent.uuid);
    let (status, all) = app.get_json(&path).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["uuid"], agent.uuid.as_str());
    let jobs = all["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 3, "{all}");
    let newest = &jobs[0];
    assert_eq!(newest["build_id"], ids[2]);
    assert_eq!(newest["pipeline_name"], "history");
    assert_eq!(newest["pipeline_counter"], 3);
    assert_eq!(newest["stage_name"], "build");
    assert_eq!(newest["stage_counter"], 1);
    assert_eq!(newest["job_name"], "three");
    assert_eq!(newest["state"], "Completed");
    assert_eq!(newest["result"], "Passed");
    let transitions = newest["job_state_transitions"]
        .as_array()
        .expect("transitions");
    let states: Vec<&str> = transitions
        .iter()
        .map(|t| t["state"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        states,
        [
            "Scheduled",
            "Assigned",
            "Preparing",
            "Building",
            "Completing",
            "Completed"
        ]
    );
    for transition in transitions {
        let time = transition["state_change_time"].as_str().unwrap_or("");
        assert!(time.len() >= 20 && time.contains('T'), "{transition}");
    }

    let (status, page) = app.get_json(&format!("{path}?offset=0&page_size=2")).await;
    assert_eq!(status, 200, "{page}");
    let got: Vec<i64> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["build_id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, [ids[2], ids[1]], "{page}");
    assert_eq!(page["pagination"]["total"], 3, "{page}");
    assert_eq!(page["pagination"]["offset"], 0, "{page}");
    assert_eq!(page["pagination"]["page_size"], 2, "{page}");

    let (status, page) = app.get_json(&format!("{path}?offset=2&page_size=2")).await;
    assert_eq!(status, 200, "{page}");
    let got: Vec<i64> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["build_id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, [ids[0]], "{page}");
    assert_eq!(page["pagination"]["total"], 3, "{page}");
    assert_eq!(page["pagination"]["offset"], 2, "{page}");
}

// ---------------------------------------------------------------------------------------
// Console
// ---------------------------------------------------------------------------------------

/// An agent holding a Building run, for console tests.
async fn building_run(app: &TestApp, name: &str) -> (Registered, i64) {
    let id = schedule_ok(app, "console", name).await;
    let agent = app.register_enabled(name).await;
    assert_eq!(work_ok(app, &agent).await["build_id"], id);
    report_ok(app, &agent, id, "Building", None).await;
    (agent, id)
}

#[tokio::test]
async fn console_bytes_are_stored_exactly_once_and_read_back_raw() {
    let app = spawn_app().await;
    let (agent, id) = building_run(&app, "bytes").await;

    let first: Vec<u8> = b"progress 10%\rprogress 100%\r\n\x1b[31mred\x1b[0m\n".to_vec();
    let (status, body) = append(&app, &agent.token, id, Some(0), first.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"offset": first.len()}));

    // A retry of the same chunk is not stored twice.
    let (status, body) = append(&app, &agent.token, id, Some(0), first.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["offset"], first.len());
    let (bytes, length) = read_console(&app, id, None).await;
    assert_eq!(bytes, first);
    assert_eq!(length, first.len().to_string());

    // Invalid UTF-8 is kept as sent.
    let second: Vec<u8> = vec![b'b', b'i', b'n', b' ', 0xff, 0xfe, b'\n'];
    let (status, body) = append(
        &app,
        &agent.token,
        id,
        Some(first.len() as u64),
        second.clone(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let total = first.len() + second.len();
    assert_eq!(body["offset"], total);

    let mut all = first.clone();
    all.extend_from_slice(&second);
    let (bytes, length) = read_console(&app, id, None).await;
    assert_eq!(bytes, all);
    assert_eq!(length, total.to_string());

    // `from` gives the suffix; the length header is still the whole log.
    let (bytes, length) = read_console(&app, id, Some(first.len() as u64)).await;
    assert_eq!(bytes, second);
    assert_eq!(length, total.to_string());
    let (bytes, _) = read_console(&app, id, Some(5)).await;
    assert_eq!(bytes, all[5..].to_vec());
    let (bytes, _) = read_console(&app, id, Some(total as u64)).await;
    assert!(bytes.is_empty());

    let run = build(&app, id).await;
    assert_eq!(run["console_length"], total, "{run}");
}

#[tokio::test]
async fn a_console_gap_is_409_with_the_stored_length_and_an_overlap_stores_only_the_tail() {
    let app = spawn_app().await;
    let (agent, id) = building_run(&app, "gaps").await;

    let (status, body) = append(&app, &agent.token, id, Some(0), b"hello\n".to_vec()).await;
    assert_eq!((status, body), (200, json!({"offset": 6})));

    // A gap: the agent believes more is stored than is.
    let (status, body) = append(&app, &agent.token, id, Some(10), b"lost?\n".to_vec()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["offset"], 6, "the 409 tells the stored length: {body}");
    let (bytes, _) = read_console(&app, id, None).await;
    assert_eq!(bytes, b"hello\n".to_vec());

    // An overlap: "lo\n" is already stored, only "world\n" is new.
    let (status, body) = append(&app, &agent.token, id, Some(3), b"lo\nworld\n".to_vec()).await;
    assert_eq!((status, body), (200, json!({"offset": 12})));
    let (bytes, length) = read_console(&app, id, None).await;
    assert_eq!(String::from_utf8_lossy(&bytes), "hello\nworld\n");
    assert_eq!(length, "12");
    assert_eq!(build(&app, id).await["console_length"], 12);
}

#[tokio::test]
async fn a_console_append_is_limited_checked_and_only_for_the_assigned_agent() {
    let app = spawn_app().await;
    let (agent, id) = building_run(&app, "limits").await;
    let stranger = app.register_enabled("stranger").await;

    let (status, body) = append(&app, &agent.token, id, None, b"no offset\n".to_vec()).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        message(&body).to_lowercase().contains("x-console-offset"),
        "{body}"
    );

    let (status, body) = append(&app, &stranger.token, id, Some(0), b"not mine\n".to_vec()).await;
    assert_eq!(status, 403, "{body}");

    let too_big = vec![b'x'; 1024 * 1024 + 1];
    let (status, body) = append(&app, &agent.token, id, Some(0), too_big).await;
    assert_eq!(status, 413, "{body}");

    // Nothing of that was stored.
    assert_eq!(build(&app, id).await["console_length"], 0);
    let (bytes, length) = read_console(&app, id, None).await;
    assert!(bytes.is_empty());
    assert_eq!(length, "0");

    // Exactly 1 MiB is allowed.
    let mib = vec![b'y'; 1024 * 1024];
    let (status, body) = append(&app, &agent.token, id, Some(0), mib).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["offset"], 1024 * 1024);
}

// ---------------------------------------------------------------------------------------
// Cancelling
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn cancelling_a_scheduled_job_ends_it_at_once() {
    let app = spawn_app().await;
    let id = schedule_ok(&app, "cancel", "queued").await;
    assert_eq!(pending_count(&app).await, 1);

    let (status, run) = cancel(&app, id).await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(run["build_id"], id);
    assert_eq!(
        (&run["state"], &run["result"]),
        (&json!("Completed"), &json!("Cancelled"))
    );

    let run = build(&app, id).await;
    assert_eq!(
        (&run["state"], &run["result"]),
        (&json!("Completed"), &json!("Cancelled"))
    );
    assert_eq!(pending_count(&app).await, 0);

    // No agent gets it.
    let agent = app.register_enabled("too-late").await;
    let (status, body) = request_work(&app, &agent).await;
    assert_eq!(status, 204, "{body}");
}

#[tokio::test]
async fn cancelling_a_running_job_tells_its_agent_and_ends_when_the_agent_stops() {
    let app = spawn_app().await;
    let id = schedule_ok(&app, "cancel", "running").await;
    let agent = app.register_enabled("runner").await;
    work_ok(&app, &agent).await;
    report_ok(&app, &agent, id, "Building", None).await;

    let (status, body) = app
        .ping(
            &agent,
            &agent.token,
            json!({"agent_state": "Building", "build_id": id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["instruction"], "NONE");

    let (status, run) = cancel(&app, id).await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(run["build_id"], id);
    assert_ne!(
        run["state"], "Completed",
        "the agent has not stopped yet: {run}"
    );

    let (status, body) = app
        .ping(
            &agent,
            &agent.token,
            json!({"agent_state": "Building", "build_id": id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["instruction"], "CANCEL", "{body}");

    // The agent killed its task, which made it fail; the run still ends Cancelled.
    report_ok(&app, &agent, id, "Completed", Some("Failed")).await;
    let run = build(&app, id).await;
    assert_eq!(
        (&run["state"], &run["result"]),
        (&json!("Completed"), &json!("Cancelled")),
        "{run}"
    );

    let (status, body) = app
        .ping(&agent, &agent.token, json!({"agent_state": "Idle"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["instruction"], "NONE", "{body}");
    assert_eq!(app.agent(&agent.uuid).await["agent_state"], "Idle");
}

// ---------------------------------------------------------------------------------------
// Lost contact
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_run_of_an_agent_that_goes_silent_is_rescheduled_for_another_agent() {
    let app = spawn_app_with(|config| config.lost_contact_after = Duration::from_secs(1)).await;
    let id = schedule_ok(&app, "fragile", "long-job").await;
    let silent = app.register_enabled("goes-silent").await;
    let work = work_ok(&app, &silent).await;
    assert_eq!(work["build_id"], id);
    report_ok(&app, &silent, id, "Building", None).await;

    // No request from the agent from here on.
    let app_ref = &app;
    let old = eventually("the silent agent's run to end", || async move {
        let run = build(app_ref, id).await;
        (run["state"] == "Completed").then_some(run)
    })
    .await;
    assert_eq!(old["result"], "Cancelled", "{old}");

    let (status, queue) = app.get_json("/api/scheduler").await;
    assert_eq!(status, 200, "{queue}");
    let jobs = queue["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1, "{queue}");
    assert_eq!(queue["pending_count"], 1, "{queue}");
    let new = &jobs[0];
    let new_id = new["build_id"].as_i64().expect("build_id");
    assert_ne!(new_id, id);
    assert_eq!(new["state"], "Scheduled");
    assert_eq!(new["pipeline_name"], "fragile");
    assert_eq!(new["pipeline_counter"], old["pipeline_counter"]);
    assert_eq!(new["stage_name"], old["stage_name"]);
    assert_eq!(new["stage_counter"], old["stage_counter"]);
    assert_eq!(new["job_name"], "long-job");
    assert_eq!(build(&app, new_id).await["state"], "Scheduled");

    let lost = app.agent(&silent.uuid).await;
    assert_eq!(lost["agent_state"], "LostContact", "{lost}");
    assert!(
        lost.get("build_details").is_none(),
        "it holds no run now: {lost}"
    );

    let rescuer = app.register_enabled("rescuer").await;
    let work = work_ok(&app, &rescuer).await;
    assert_eq!(work["build_id"], new_id, "{work}");
    assert_eq!(work["pipeline_counter"], old["pipeline_counter"]);
    assert_eq!(work["job_name"], "long-job");
    let run = build(&app, new_id).await;
    assert_eq!(run["state"], "Assigned");
    assert_eq!(run["agent_uuid"], rescuer.uuid.as_str());
}

// ---------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_scheduler_topic_carries_the_pending_count() {
    let app = spawn_app().await;
    let mut stream = subscribe_api(&app, "scheduler:updates").await;

    schedule_ok(&app, "events", "one").await;
    wait_event(&mut stream, "pending_count", |d| d == &json!({"count": 1})).await;
    schedule_ok(&app, "events", "two").await;
    wait_event(&mut stream, "pending_count", |d| d == &json!({"count": 2})).await;

    let agent = app.register_enabled("taker").await;
    work_ok(&app, &agent).await;
    wait_event(&mut stream, "pending_count", |d| d == &json!({"count": 1})).await;
}

#[tokio::test]
async fn an_agents_run_topic_carries_run_created_on_assignment_and_run_updated_on_status() {
    let app = spawn_app().await;
    let agent = app.register_enabled("watched").await;
    let mut stream = subscribe_api(&app, &format!("agent_job_runs:{}", agent.uuid)).await;
    let id = schedule_ok(&app, "events", "assigned").await;

    work_ok(&app, &agent).await;
    let created = wait_event(&mut stream, "run_created", |d| d["build_id"] == id).await;
    assert_eq!(created["state"], "Assigned", "{created}");
    assert_eq!(created["agent_uuid"], agent.uuid.as_str(), "{created}");
    assert_eq!(created["job_name"], "assigned");

    report_ok(&app, &agent, id, "Preparing", None).await;
    let updated = wait_event(&mut stream, "run_updated", |d| {
        d["build_id"] == id && d["state"] == "Preparing"
    })
    .await;
    assert_eq!(updated["result"], "Unknown");

    report_ok(&app, &agent, id, "Completed", Some("Passed")).await;
    wait_event(&mut stream, "run_updated", |d| {
        d["build_id"] == id && d["state"] == "Completed" && d["result"] == "Passed"
    })
    .await;
}

#[tokio::test]
async fn a_runs_console_topic_carries_appends_and_status_changes() {
    let app = spawn_app().await;
    let id = schedule_ok(&app, "events", "console").await;
    let agent = app.register_enabled("talker").await;
    let mut stream = subscribe_api(&app, &format!("agent_job_run_console:{id}")).await;

    work_ok(&app, &agent).await;
    report_ok(&app, &agent, id, "Building", None).await;
    wait_event(&mut stream, "run_updated", |d| {
        d["build_id"] == id && d["state"] == "Building"
    })
    .await;

    append(&app, &agent.token, id, Some(0), b"hello\n".to_vec()).await;
    let data = wait_event(&mut stream, "console_append", |_| true).await;
    assert_eq!(data, json!({"offset": 6, "chunk": "hello\n"}));

    // Raw bytes are shown as UTF-8 with invalid sequences replaced.
    append(&app, &agent.token, id, Some(6), vec![b'a', 0xff, b'\n']).await;
    let data = wait_event(&mut stream, "console_append", |_| true).await;
    assert_eq!(data, json!({"offset": 9, "chunk": "a\u{fffd}\n"}));

    // A retried chunk stores nothing and announces nothing; the next real one follows.
    append(&app, &agent.token, id, Some(6), vec![b'a', 0xff, b'\n']).await;
    append(&app, &agent.token, id, Some(9), b"bye\n".to_vec()).await;
    let data = wait_event(&mut stream, "console_append", |_| true).await;
    assert_eq!(data, json!({"offset": 13, "chunk": "bye\n"}));

    report_ok(&app, &agent, id, "Completed", Some("Passed")).await;
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

    schedule_ok(&app, "page", "one").await;
    stream
        .wait_for("queued 1", |e| e.event == "queued" && e.data == "1")
        .await;
    schedule_ok(&app, "page", "two").await;
    stream
        .wait_for("queued 2", |e| e.event == "queued" && e.data == "2")
        .await;

    work_ok(&app, &agent).await;
    stream
        .wait_for("queued 1 after the assignment", |e| {
            e.event == "queued" && e.data == "1"
        })
        .await;
}
