//! The agent protocol's first two steps: registration (keys, tokens, re-registration) and
//! pings, and what a hostile hostname does to the agents page.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const KEY: &str = "the-registration-key";

/// What a real agent sends when it registers.
fn agent_body(hostname: &str) -> Value {
    json!({
        "hostname": hostname,
        "ip_address": "10.1.2.3",
        "operating_system": "Linux",
        "sandbox": "/var/lib/go-agent",
        "free_space": 5_000_000_000u64,
        "resources": ["linux", "java"],
        "environments": [],
        "agent_version": "25.1.0",
    })
}

// ---------------------------------------------------------------------------------------
// Registration and the key.

#[tokio::test]
async fn a_new_agent_without_a_key_is_pending_and_idle() {
    let app = spawn_app().await;
    let (status, body) = app.register_with(agent_body("fresh"), None).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["agent_config_state"], "Pending");
    assert!(
        body["uuid"].is_string() && body["token"].is_string(),
        "{body}"
    );
    let agent = Registered::from_body(&body);

    let shown = app.agent(&agent.uuid).await;
    assert_eq!(shown["hostname"], "fresh");
    assert_eq!(shown["agent_config_state"], "Pending");
    assert_eq!(shown["agent_state"], "Idle");
    assert_eq!(shown["ip_address"], "10.1.2.3");
    assert_eq!(shown["sandbox"], "/var/lib/go-agent");
    assert_eq!(shown["operating_system"], "Linux");
    assert_eq!(shown["free_space"], 5_000_000_000u64);
    assert_eq!(shown["resources"], json!(["linux", "java"]));
    assert_eq!(shown["agent_version"], "25.1.0");
}

#[tokio::test]
async fn the_right_key_registers_the_agent_enabled() {
    let app = spawn_app_with(|config| config.agent_registration_key = Some(KEY.into())).await;
    let (status, body) = app.register_with(agent_body("trusted"), Some(KEY)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["agent_config_state"], "Enabled");
    let agent = Registered::from_body(&body);
    let shown = app.agent(&agent.uuid).await;
    assert_eq!(shown["agent_config_state"], "Enabled");
    assert_eq!(shown["agent_state"], "Idle");
}

#[tokio::test]
async fn a_wrong_key_is_403_and_registers_nothing() {
    let app = spawn_app_with(|config| config.agent_registration_key = Some(KEY.into())).await;
    let (status, body) = app
        .register_with(agent_body("intruder"), Some("not-the-key"))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(!message(&body).is_empty());
    assert!(body.get("token").is_none(), "{body}");
    assert_eq!(app.agent_uuids().await.len(), 0);
}

#[tokio::test]
async fn no_key_on_a_keyed_server_registers_the_agent_pending() {
    let app = spawn_app_with(|config| config.agent_registration_key = Some(KEY.into())).await;
    let (status, body) = app.register_with(agent_body("keyless"), None).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["agent_config_state"], "Pending");
    let agent = Registered::from_body(&body);
    assert_eq!(
        app.agent(&agent.uuid).await["agent_config_state"],
        "Pending"
    );
}

#[tokio::test]
async fn a_key_sent_to_a_server_without_one_registers_the_agent_pending() {
    let app = spawn_app().await;
    let (status, body) = app
        .register_with(agent_body("eager"), Some("some-key"))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["agent_config_state"], "Pending");
    let agent = Registered::from_body(&body);
    assert_eq!(
        app.agent(&agent.uuid).await["agent_config_state"],
        "Pending"
    );
}

#[tokio::test]
async fn tokens_are_at_least_128_random_bits_and_differ_per_registration() {
    let app = spawn_app().await;
    let mut tokens = Vec::new();
    for i in 0..5 {
        let (status, body) = app
            .register_with(agent_body(&format!("tok-{i}")), None)
            .await;
        assert_eq!(status, 201, "{body}");
        let token = body["token"].as_str().expect("token").to_string();
        assert!(token.len() >= 32, "at least 128 bits as hex: {token:?}");
        assert!(
            token.chars().all(|c| c.is_ascii_hexdigit()),
            "a hex token: {token:?}"
        );
        tokens.push(token);
    }
    let mut unique = tokens.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        tokens.len(),
        "every token differs: {tokens:?}"
    );

    let (_, listed) = app.get_json("/api/agents").await;
    let text = listed.to_string();
    for token in &tokens {
        assert!(!text.contains(token.as_str()), "tokens are never listed");
    }
}

#[tokio::test]
async fn registering_with_a_given_uuid_creates_that_uuid() {
    let app = spawn_app().await;
    let uuid = "6f1c1a7e-2b54-4c3b-9a3e-0d8f5b9e4c21";
    let mut body = agent_body("chosen");
    body["uuid"] = json!(uuid);
    let (status, answer) = app.register_with(body, None).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["uuid"], uuid);
    assert_eq!(app.agent(uuid).await["hostname"], "chosen");

    let mut body = agent_body("malformed");
    body["uuid"] = json!("not-a-uuid");
    let (status, answer) = app.register_with(body, None).await;
    assert_eq!(status, 422, "a malformed uuid: {answer}");
    assert!(message(&answer).contains("uuid"), "{answer}");
    assert_eq!(app.agent_uuids().await.len(), 1);
}

// ---------------------------------------------------------------------------------------
// Re-registration.

#[tokio::test]
async fn re_registering_a_known_uuid_without_its_token_is_409() {
    let app = spawn_app().await;
    let first = app.register("first").await;
    let other = app.register("other").await;

    let mut body = agent_body("impostor");
    body["uuid"] = json!(first.uuid);
    let (status, answer) = app.register_with(body.clone(), None).await;
    assert_eq!(status, 409, "no token: {answer}");
    assert!(!message(&answer).is_empty());

    let (status, answer) = app
        .as_agent(&first)
        .with_token(&other.token)
        .register(body.clone())
        .await
        .parts();
    assert_eq!(status, 409, "another agent's token: {answer}");
    let (status, answer) = app
        .as_agent(&first)
        .with_token("deadbeef")
        .register(body)
        .await
        .parts();
    assert_eq!(status, 409, "a made-up token: {answer}");

    assert_eq!(app.agent(&first.uuid).await["hostname"], "first");
    let (status, _) = app
        .as_agent(&first)
        .ping(json!({"agent_state": "Idle"}))
        .await
        .parts();
    assert_eq!(status, 200, "the real agent's token still works");
}

#[tokio::test]
async fn re_registering_with_its_token_answers_200_with_a_new_token_and_retires_the_old() {
    let app = spawn_app().await;
    let agent = app.register("again").await;

    let mut body = agent_body("again-renamed");
    body["uuid"] = json!(agent.uuid);
    let answer = app.as_agent(&agent).register(body).await.expect(200);
    assert_eq!(answer["uuid"], agent.uuid.as_str());
    assert_eq!(answer["agent_config_state"], "Pending");
    let new_token = answer["token"].as_str().expect("token").to_string();
    assert_ne!(new_token, agent.token, "a new token");
    assert_eq!(
        app.agent_uuids().await.len(),
        1,
        "the same agent, not a second one"
    );

    let (status, body) = app
        .as_agent(&agent)
        .ping(json!({"agent_state": "Idle"}))
        .await
        .parts();
    assert_eq!(status, 401, "the old token stopped working: {body}");
    let (status, body) = app
        .as_agent(&agent)
        .with_token(&new_token)
        .ping(json!({"agent_state": "Idle"}))
        .await
        .parts();
    assert_eq!(status, 200, "the new token works: {body}");
    assert_eq!(app.agent(&agent.uuid).await["hostname"], "again-renamed");
}

#[tokio::test]
async fn re_registration_keeps_the_resources_and_environments_an_admin_set() {
    let app = spawn_app().await;
    let agent = app.register("kept").await;
    let (status, body) = app
        .send_json(
            Method::PATCH,
            &format!("/api/agents/{}", agent.uuid),
            json!({"resources": ["gpu", "big-disk"], "environments": ["prod"],
                   "agent_config_state": "Enabled"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let mut body = agent_body("kept");
    body["uuid"] = json!(agent.uuid);
    body["resources"] = json!(["something-else"]);
    body["environments"] = json!(["dev"]);
    let answer = app.as_agent(&agent).register(body).await.expect(200);
    assert_eq!(answer["agent_config_state"], "Enabled");

    let shown = app.agent(&agent.uuid).await;
    assert_eq!(shown["resources"], json!(["gpu", "big-disk"]), "{shown}");
    assert_eq!(
        shown["environments"],
        json!([{"name": "prod", "origin": {"type": "gocd"}}]),
        "{shown}"
    );
    assert_eq!(shown["agent_config_state"], "Enabled");
}

// ---------------------------------------------------------------------------------------
// Malformed registrations.

#[tokio::test]
async fn registration_without_a_hostname_is_422_naming_it() {
    let app = spawn_app().await;
    let mut body = agent_body("x");
    body.as_object_mut().unwrap().remove("hostname");
    let (status, answer) = app.register_with(body, None).await;
    assert_eq!(status, 422, "{answer}");
    assert!(message(&answer).contains("hostname"), "{answer}");

    let (status, answer) = app.register_with(agent_body("   "), None).await;
    assert_eq!(status, 422, "a blank hostname: {answer}");
    assert!(message(&answer).contains("hostname"), "{answer}");
    assert_eq!(app.agent_uuids().await.len(), 0);
}

#[tokio::test]
async fn registration_with_a_body_that_is_not_json_is_400() {
    let app = spawn_app().await;
    let reply = app
        .call_raw(Method::POST, "/api/agents/register", "hostname=oops")
        .await;
    assert_eq!(reply.status, 400);
    assert!(!reply.message().is_empty(), "{}", reply.body);
    assert_eq!(app.agent_uuids().await.len(), 0);
}

#[tokio::test]
async fn free_space_unknown_is_listed_as_unknown() {
    let app = spawn_app().await;
    let mut body = agent_body("no-df");
    body["free_space"] = json!("unknown");
    let (status, answer) = app.register_with(body, None).await;
    assert_eq!(status, 201, "{answer}");
    let agent = Registered::from_body(&answer);
    assert_eq!(app.agent(&agent.uuid).await["free_space"], "unknown");
    let (_, listed) = app.get_json("/api/agents").await;
    assert_eq!(listed["_embedded"]["agents"][0]["free_space"], "unknown");
}

// ---------------------------------------------------------------------------------------
// Pings.

#[tokio::test]
async fn a_ping_with_the_agents_own_token_answers_its_config_state() {
    let app = spawn_app().await;
    let agent = app.register("pinger").await;
    let body = app
        .as_agent(&agent)
        .ping(json!({"agent_state": "Idle"}))
        .await
        .expect(200);
    assert_eq!(
        body,
        json!({"agent_config_state": "Pending", "instruction": "NONE"})
    );

    app.put(&format!("/api/agents/{}/enable", agent.uuid)).await;
    let body = app
        .as_agent(&agent)
        .ping(json!({"agent_state": "Idle", "free_space": 42}))
        .await
        .expect(200);
    assert_eq!(
        body,
        json!({"agent_config_state": "Enabled", "instruction": "NONE"})
    );
    assert_eq!(app.agent(&agent.uuid).await["free_space"], 42);
}

#[tokio::test]
async fn a_ping_with_another_agents_token_is_403() {
    let app = spawn_app().await;
    let mine = app.register("mine").await;
    let theirs = app.register("theirs").await;
    let body = app
        .as_agent(&mine)
        .with_token(&theirs.token)
        .ping(json!({"agent_state": "Building"}))
        .await
        .expect(403);
    assert!(!message(&body).is_empty());
    assert_eq!(app.agent(&mine.uuid).await["agent_state"], "Idle");
}

#[tokio::test]
async fn a_ping_without_a_token_or_with_a_bad_one_is_401() {
    let app = spawn_app().await;
    let agent = app.register("unauth").await;

    let (status, body) = app
        .as_agent(&agent)
        .without_token()
        .ping(json!({"agent_state": "Idle"}))
        .await
        .parts();
    assert_eq!(status, 401, "no token: {body}");
    assert!(!message(&body).is_empty());

    let (status, body) = app
        .as_agent(&agent)
        .with_token("0123456789abcdef0123456789abcdef")
        .ping(json!({"agent_state": "Idle"}))
        .await
        .parts();
    assert_eq!(status, 401, "a bad token: {body}");
    assert!(!message(&body).is_empty());
}

#[tokio::test]
async fn a_building_ping_shows_the_agent_building() {
    let app = spawn_app().await;
    let agent = app.register_enabled("worker").await;
    app.as_agent(&agent)
        .ping(json!({"agent_state": "Building"}))
        .await
        .expect(200);
    let shown = app.agent(&agent.uuid).await;
    assert_eq!(shown["agent_state"], "Building", "{shown}");
    assert_eq!(shown["build_state"], "Building", "{shown}");

    let (status, _) = app
        .as_agent(&agent)
        .ping(json!({"agent_state": "Idle"}))
        .await
        .parts();
    assert_eq!(status, 200);
    let shown = app.agent(&agent.uuid).await;
    assert_eq!(shown["agent_state"], "Idle", "{shown}");
    assert_eq!(shown["build_state"], "Idle", "{shown}");
}

#[tokio::test]
async fn a_ping_with_an_invalid_agent_state_is_422() {
    let app = spawn_app().await;
    let agent = app.register("confused").await;
    for state in [json!("Sleeping"), json!(3)] {
        let (status, body) = app
            .as_agent(&agent)
            .ping(json!({"agent_state": state}))
            .await
            .parts();
        assert_eq!(status, 422, "{state}: {body}");
        assert!(message(&body).contains("agent_state"), "{state}: {body}");
    }
    let (status, body) = app.as_agent(&agent).ping(json!({})).await.parts();
    assert_eq!(status, 422, "a missing agent_state: {body}");
    assert!(message(&body).contains("agent_state"), "{body}");
    assert_eq!(app.agent(&agent.uuid).await["agent_state"], "Idle");
}

// ---------------------------------------------------------------------------------------
// Hostile input.

#[tokio::test]
async fn a_hostile_hostname_registers_and_is_escaped_on_the_agents_page() {
    let app = spawn_app().await;
    let hostname = "evil<script>alert(1)</script>\rhost";
    let (status, body) = app.register_with(agent_body(hostname), None).await;
    assert_eq!(status, 201, "{body}");
    let agent = Registered::from_body(&body);
    // A control character is stored as U+FFFD: the API, the pages and the streams agree.
    assert_eq!(
        app.agent(&agent.uuid).await["hostname"],
        "evil<script>alert(1)</script>\u{FFFD}host"
    );

    let page = app.get("/agents").await;
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(
        html.contains(&format!("id=\"agent-{}\"", agent.uuid)),
        "the agent has its row"
    );
    assert!(html.contains("&lt;script&gt;"), "escaped: {html}");
    assert!(!html.contains("<script>alert"), "never raw: {html}");
}

#[tokio::test]
async fn control_characters_in_agent_fields_become_replacement_characters_but_tabs_stay() {
    let app = spawn_app().await;
    let mut body = agent_body("nul\u{0}esc\u{1b}[31mtab\there");
    body["operating_system"] = json!("Linux\u{7}");
    let (status, body) = app.register_with(body, None).await;
    assert_eq!(status, 201, "{body}");
    let shown = app.agent(body["uuid"].as_str().unwrap()).await;
    assert_eq!(shown["hostname"], "nul\u{FFFD}esc\u{FFFD}[31mtab\there");
    assert_eq!(shown["operating_system"], "Linux\u{FFFD}");
    let page = app.get("/agents").await.text();
    assert!(!page.contains('\u{0}'), "no NUL reaches the page");
    assert!(
        page.contains("nul\u{FFFD}esc"),
        "the page says what the API says"
    );
}
