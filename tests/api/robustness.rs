//! What a review of the first version found: each test pins one fix.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn a_run_held_by_an_agent_missing_since_a_restart_is_rescheduled() {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.lost_contact_after = Duration::from_secs(1);
    let first = Server::start(config.clone()).await;
    let (agent, build_id) = first.api().assigned_build("goes-away").await;
    first.stop().await;

    // The agent never comes back: its run must not wait forever.
    let second = Server::start(config).await;
    let api = second.api();
    let old: Value = eventually("the old run ends", || async {
        let run = api.build(build_id).await;
        (run["state"] == "Completed").then_some(run)
    })
    .await;
    assert_eq!(old["result"], "Cancelled");
    let (_, queue) = api.get_json("/api/scheduler").await;
    assert_eq!(queue["pending_count"], 1, "{queue}");
    assert_eq!(queue["jobs"][0]["rescheduled_from"], build_id);
    let agent = api.agent(&agent.uuid).await;
    assert!(agent.get("build_details").is_none(), "{agent}");
    second.stop().await;
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
    let body = app
        .as_agent(&agent)
        .ping(json!({"agent_state": "Building", "build_id": build_id}))
        .await
        .expect(200);
    assert_eq!(body["instruction"], "CANCEL");
    let (_, body) = app
        .as_agent(&agent)
        .ping(json!({"agent_state": "Idle"}))
        .await
        .parts();
    assert_eq!(body["instruction"], "NONE");
}

#[tokio::test]
async fn a_disabled_agent_holding_a_run_cannot_be_deleted() {
    let app = spawn_app().await;
    let (agent, _build_id) = app.running_build("holder").await;
    app.as_agent(&agent)
        .ping(json!({"agent_state": "Idle"}))
        .await; // a ping that lies
    app.put(&format!("/api/agents/{}/disable", agent.uuid))
        .await;
    app.delete_agent(&agent.uuid).await.expect(422);
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
        let message = message(&body);
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
        .get(&format!(
            "/agents/{}/job_run_history?offset=9223372036854775807",
            agent.uuid
        ))
        .await;
    assert_eq!(
        page.status, 422,
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
        assert!(message(&answer).starts_with(field), "{answer}");
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
        let agent = &agent;
        async move {
            app.as_agent(agent)
                .with_token(&token)
                .register(json!({"uuid": agent.uuid, "hostname": "retrier"}))
                .await
                .parts()
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
        .as_agent(&newest)
        .ping(json!({"agent_state": "Idle"}))
        .await
        .parts();
    assert_eq!(status, 200);
    // Once the new token is used, the old one is retired for good, and the lost one never worked.
    let (status, _) = reregister(agent.token.clone()).await;
    assert_eq!(status, 409);
    let lost = first["token"].as_str().unwrap().to_string();
    let (status, _) = app
        .as_agent(&newest)
        .with_token(&lost)
        .ping(json!({"agent_state": "Idle"}))
        .await
        .parts();
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_building_ping_for_a_run_already_completed_leaves_the_agent_idle_for_work() {
    let app = spawn_app().await;
    let (agent, build_id) = app.running_build("racer").await;
    app.as_agent(&agent)
        .report_ok(build_id, "Completed", Some("Passed"))
        .await;
    // The pinger read "building build N" just before the runner reported the end.
    app.as_agent(&agent)
        .ping(json!({"agent_state": "Building", "build_id": build_id}))
        .await
        .expect(200);
    assert_eq!(app.agent(&agent.uuid).await["agent_state"], "Idle");
    let next = app.schedule_job("next", "job").await;
    assert_eq!(
        app.as_agent(&agent).take_work().await["build_id"],
        next,
        "no wait for another ping"
    );
}

#[tokio::test]
async fn after_a_long_restart_agents_get_a_full_period_before_their_runs_are_taken() {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.lost_contact_after = Duration::from_secs(1);
    let first = Server::start(config.clone()).await;
    let (agent, build_id) = first.api().assigned_build("goes-away").await;
    first.stop().await;
    // The server stays down longer than --lost-contact-after.
    let down = std::time::Instant::now();
    eventually("the downtime passes", || async {
        (down.elapsed() > Duration::from_millis(1500)).then_some(())
    })
    .await;

    let second = Server::start(config).await;
    let api = second.api();
    // The agent pings as it does every few seconds; for two periods its run stays its own.
    let restarted = std::time::Instant::now();
    while restarted.elapsed() < Duration::from_secs(2) {
        let (_, ping) = api
            .as_agent(&agent)
            .ping(json!({"agent_state": "Building", "build_id": build_id}))
            .await
            .parts();
        assert_eq!(
            ping["instruction"], "NONE",
            "the run was taken from a live agent"
        );
        tokio::time::sleep(Duration::from_millis(200)).await; // the agent's own ping interval
    }
    let run = api.build(build_id).await;
    assert_eq!(run["state"], "Assigned", "{run}");
    second.stop().await;
}

#[tokio::test]
async fn every_error_comes_as_json_from_the_api_and_as_a_page_from_the_site() {
    let app = spawn_app().await;
    let json_error = |reply: &Reply| {
        assert!(
            reply.header("content-type").starts_with("application/json"),
            "{}: {} {}",
            reply.what,
            reply.header("content-type"),
            reply.text()
        );
        assert!(!reply.message().is_empty());
    };
    let bad_utf8 = app.get("/api/agents/%FF%FE").await;
    assert!(
        bad_utf8.status >= 400 && bad_utf8.status < 500,
        "{}",
        bad_utf8.status
    );
    json_error(&bad_utf8);
    let wrong_method = app.send(app.client.delete(app.url("/api/version"))).await;
    assert_eq!(wrong_method.status, 405);
    json_error(&wrong_method);
    assert!(
        wrong_method.header("allow").contains("GET"),
        "the Allow header stays"
    );

    let agent = app.register("paged").await;
    let bad_query = app
        .get(&format!(
            "/agents/{}/job_run_history?offset=abc",
            agent.uuid
        ))
        .await;
    assert_eq!(bad_query.status, 400, "{}", bad_query.text());
    assert!(bad_query.header("content-type").starts_with("text/html"));
    assert!(
        bad_query.text().contains("class=\"card error-page\""),
        "{}",
        bad_query.text()
    );
    let missing = app.get("/no/such/page").await;
    assert_eq!(missing.status, 404);
    assert!(
        missing.text().contains("Not Found"),
        "a page: {}",
        missing.text()
    );

    let build = app.schedule_job("p", "j").await;
    let resume = app
        .send(
            app.client
                .get(app.url(&format!("/builds/{build}/console/events")))
                .header("Last-Event-ID", "not-an-offset"),
        )
        .await;
    assert_eq!(resume.status, 422, "{}", resume.text());
    assert!(
        resume.message().contains("Last-Event-ID"),
        "{}",
        resume.body
    );
}
