//! What a review of the first version found: each test pins one fix.

use std::time::Duration;

use ferrocd::config::Config;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn a_run_held_by_an_agent_missing_since_a_restart_is_rescheduled() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(data.path());
    config.lost_contact_after = Duration::from_secs(1);
    let first = Server::start(config.clone()).await;
    let base = first.base.clone();
    let app = TestAppRef { base: &base };
    let (agent, build_id) = app.running_build().await;
    first.stop().await;

    // The agent never comes back: its run must not wait forever.
    let second = Server::start(config).await;
    let base = second.base.clone();
    let client = reqwest::Client::new();
    let old: Value = eventually("the old run ends", || async {
        let run: Value = client
            .get(format!("{base}/api/builds/{build_id}"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (run["state"] == "Completed").then_some(run)
    })
    .await;
    assert_eq!(old["result"], "Cancelled");
    let queue: Value = client
        .get(format!("{base}/api/scheduler"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(queue["pending_count"], 1, "{queue}");
    assert_eq!(queue["jobs"][0]["rescheduled_from"], build_id);
    let agent: Value = client
        .get(format!("{base}/api/agents/{}", agent.uuid))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(agent.get("build_details").is_none(), "{agent}");
    second.stop().await;
}

/// The few protocol steps the restart test needs, against a base URL.
struct TestAppRef<'a> {
    base: &'a str,
}

impl TestAppRef<'_> {
    async fn running_build(&self) -> (Registered, i64) {
        let client = reqwest::Client::new();
        let registered: Value = client
            .post(format!("{}/api/agents/register", self.base))
            .body(r#"{"hostname": "goes-away"}"#)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let agent = Registered {
            uuid: registered["uuid"].as_str().unwrap().to_string(),
            token: registered["token"].as_str().unwrap().to_string(),
        };
        client
            .put(format!("{}/api/agents/{}/enable", self.base, agent.uuid))
            .send()
            .await
            .unwrap();
        let run: Value = client
            .post(format!("{}/api/jobs/schedule", self.base))
            .body(r#"{"pipeline_name": "p", "stage_name": "s", "job_name": "j", "tasks": [{"command": "true"}]}"#)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let work = client
            .post(format!("{}/api/agents/{}/work", self.base, agent.uuid))
            .bearer_auth(&agent.token)
            .send()
            .await
            .unwrap();
        assert_eq!(work.status(), 200);
        (agent, run["build_id"].as_i64().unwrap())
    }
}

#[tokio::test]
async fn an_agent_whose_run_was_taken_away_hears_cancel() {
    let app = spawn_app_with(|c| c.lost_contact_after = Duration::from_secs(1)).await;
    let (agent, build_id) = app.running_build("taken-away").await;
    eventually("the run is taken away", || async {
        let (_, run) = app.get_json(&format!("/api/builds/{build_id}")).await;
        (run["state"] == "Completed").then_some(())
    })
    .await;
    // The agent comes back, still running that build: it must stop.
    let (status, body) = app
        .ping(
            &agent,
            &agent.token,
            json!({"agent_state": "Building", "build_id": build_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["instruction"], "CANCEL");
    let (_, body) = app
        .ping(&agent, &agent.token, json!({"agent_state": "Idle"}))
        .await;
    assert_eq!(body["instruction"], "NONE");
}

#[tokio::test]
async fn a_disabled_agent_holding_a_run_cannot_be_deleted() {
    let app = spawn_app().await;
    let (agent, _build_id) = app.running_build("holder").await;
    app.ping(&agent, &agent.token, json!({"agent_state": "Idle"}))
        .await; // a ping that lies
    app.put(&format!("/api/agents/{}/disable", agent.uuid))
        .await;
    let (status, body) = app
        .send_json(
            Method::DELETE,
            &format!("/api/agents/{}", agent.uuid),
            json!({}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        app.agent(&agent.uuid).await["build_details"]["job_name"],
        "job"
    );
}

#[tokio::test]
async fn bad_query_strings_are_json_422s_naming_the_parameter() {
    let app = spawn_app().await;
    let agent = app.register("q").await;
    for path in [
        "/api/builds/1/console?from=abc".to_string(),
        format!("/api/agents/{}/job_run_history?offset=x", agent.uuid),
        format!("/api/agents/{}/job_run_history?page_size=1.5", agent.uuid),
    ] {
        let (status, body) = app.get_json(&path).await;
        assert_eq!(status, 422, "{path}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("from") || message.contains("offset") || message.contains("page_size"),
            "{message}"
        );
    }
    let (status, _) = app
        .get_json(&format!(
            "/api/agents/{}/job_run_history?offset=9223372036854775807",
            agent.uuid
        ))
        .await;
    assert_eq!(status, 422);
    let page = app
        .client
        .get(app.url(&format!(
            "/agents/{}/job_run_history?offset=9223372036854775807",
            agent.uuid
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.status(),
        422,
        "the page refuses a huge offset instead of overflowing"
    );
}

#[tokio::test]
async fn registration_fields_are_bounded() {
    let app = spawn_app().await;
    let long = "x".repeat(300);
    for field in ["ip_address", "operating_system", "agent_version"] {
        let mut body = json!({"hostname": "bounded"});
        body[field] = json!(long);
        let (status, answer) = app.register_with(body, None).await;
        assert_eq!(status, 422, "{field}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().starts_with(field),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn api_events_subscribes_to_a_repeated_topic_once_and_caps_the_count() {
    let app = spawn_app().await;
    let mut stream = app
        .subscribe("/api/events?topics=agents:updates,agents:updates")
        .await;
    let ready = stream.next().await.unwrap();
    assert_eq!(ready.data, r#"{"topics":["agents:updates"]}"#);
    app.register("once").await;
    let registered = stream.next().await.unwrap();
    assert_eq!(registered.event, "agent_registered");
    // The same event does not come twice: the next one is the next change.
    app.register("twice").await;
    let next = stream.next().await.unwrap();
    assert!(next.data.contains("\"twice\""), "{next:?}");

    let many: Vec<String> = (0..40)
        .map(|i| format!("agent_job_run_console:{i}"))
        .collect();
    let (status, body) = app
        .get_json(&format!("/api/events?topics={}", many.join(",")))
        .await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn a_re_registration_whose_answer_was_lost_can_be_retried_with_the_old_token() {
    let app = spawn_app().await;
    let agent = app.register("retrier").await;
    let reregister = |token: String| {
        let app = &app;
        let uuid = agent.uuid.clone();
        async move {
            let response = app
                .client
                .post(app.url("/api/agents/register"))
                .bearer_auth(token)
                .json(&json!({"uuid": uuid, "hostname": "retrier"}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, first) = reregister(agent.token.clone()).await;
    assert_eq!(status, 200, "{first}");
    // That answer was lost: the agent tries again with the only token it has.
    let (status, second) = reregister(agent.token.clone()).await;
    assert_eq!(status, 200, "{second}");
    let newest = Registered {
        uuid: agent.uuid.clone(),
        token: second["token"].as_str().unwrap().into(),
    };
    let (status, _) = app
        .ping(&newest, &newest.token, json!({"agent_state": "Idle"}))
        .await;
    assert_eq!(status, 200);
    // Once the new token is used, the old one is retired for good, and the lost one never worked.
    let (status, _) = reregister(agent.token.clone()).await;
    assert_eq!(status, 409);
    let lost = first["token"].as_str().unwrap().to_string();
    let (status, _) = app
        .ping(&newest, &lost, json!({"agent_state": "Idle"}))
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_building_ping_for_a_run_already_completed_leaves_the_agent_idle_for_work() {
    let app = spawn_app().await;
    let (agent, build_id) = app.running_build("racer").await;
    app.report(&agent, build_id, "Completed", Some("Passed"))
        .await;
    // The pinger read "building build N" just before the runner reported the end.
    let (status, body) = app
        .ping(
            &agent,
            &agent.token,
            json!({"agent_state": "Building", "build_id": build_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.agent(&agent.uuid).await["agent_state"], "Idle");
    let next = app.schedule_job("next", "job").await;
    assert_eq!(
        app.take_work(&agent).await["build_id"],
        next,
        "no wait for another ping"
    );
}

#[tokio::test]
async fn after_a_long_restart_agents_get_a_full_period_before_their_runs_are_taken() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(data.path());
    config.lost_contact_after = Duration::from_secs(1);
    let first = Server::start(config.clone()).await;
    let base = first.base.clone();
    let (agent, build_id) = TestAppRef { base: &base }.running_build().await;
    first.stop().await;
    // The server stays down longer than --lost-contact-after.
    let down = std::time::Instant::now();
    eventually("the downtime passes", || async {
        (down.elapsed() > Duration::from_millis(1500)).then_some(())
    })
    .await;

    let second = Server::start(config).await;
    let base = second.base.clone();
    let client = reqwest::Client::new();
    // The agent pings as it does every few seconds; for two periods its run stays its own.
    let restarted = std::time::Instant::now();
    while restarted.elapsed() < Duration::from_secs(2) {
        let ping: Value = client
            .post(format!("{base}/api/agents/{}/ping", agent.uuid))
            .bearer_auth(&agent.token)
            .json(&json!({"agent_state": "Building", "build_id": build_id}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            ping["instruction"], "NONE",
            "the run was taken from a live agent"
        );
        tokio::time::sleep(Duration::from_millis(200)).await; // the agent's own ping interval
    }
    let run: Value = client
        .get(format!("{base}/api/builds/{build_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["state"], "Assigned", "{run}");
    second.stop().await;
}
