//! Agents act only as themselves (the admin-access issue, finding 3): a deleted agent's uuid
//! cannot be taken over, and nobody can flood the Pending list.

use serde_json::{Value, json};

use crate::helpers::*;

fn facts(hostname: &str, uuid: Option<&str>) -> Value {
    let mut body = json!({"hostname": hostname, "resources": ["linux"]});
    if let Some(uuid) = uuid {
        body["uuid"] = json!(uuid);
    }
    body
}

#[tokio::test]
async fn a_deleted_agents_uuid_comes_back_pending_whatever_key_it_presents() {
    let app = spawn_app_with(|c| c.agent_registration_key = Some("the-key".into())).await;
    let (status, body) = app
        .register_with(facts("real", None), Some("the-key"))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["agent_config_state"], "Enabled");
    let uuid = body["uuid"].as_str().unwrap().to_string();
    app.put(&format!("/api/agents/{uuid}/disable")).await;
    app.delete_agent(&uuid).await;

    // Someone else, with the key, claims the uuid.
    let (status, claimed) = app
        .register_with(facts("impostor", Some(&uuid)), Some("the-key"))
        .await;
    assert_eq!(status, 201, "{claimed}");
    assert_eq!(claimed["agent_config_state"], "Pending", "{claimed}");
    // Re-registering with its own token and the key does not approve it either.
    let again = Registered::from_body(&claimed);
    let reply = app
        .send(
            app.client
                .post(app.url("/api/agents/register"))
                .header("Content-Type", "application/json")
                .header("X-Agent-Registration-Key", "the-key")
                .bearer_auth(&again.token)
                .body(facts("impostor", Some(&uuid)).to_string()),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.body["agent_config_state"], "Pending",
        "{}",
        reply.body
    );
    assert_eq!(app.agent(&uuid).await["agent_config_state"], "Pending");
    // Only an admin brings it back.
    assert_eq!(app.put(&format!("/api/agents/{uuid}/enable")).await.0, 200);
    assert_eq!(app.agent(&uuid).await["agent_config_state"], "Enabled");
}

#[tokio::test]
async fn registrations_without_the_key_are_limited_per_address() {
    let app = spawn_app_with(|c| {
        c.registrations_per_second = 10;
        c.agent_registration_key = Some("the-key".into());
    })
    .await;
    let started = std::time::Instant::now();
    for n in 0..50 {
        let (status, body) = app.register_with(facts(&format!("a{n}"), None), None).await;
        assert_eq!(status, 201, "registration {n} of the burst: {body}");
    }
    // The bucket refills at 10 a second while the burst runs (slowly, on a busy machine), so
    // more may pass; but never more than the burst plus what the time refilled.
    let mut passed = 50;
    let reply = loop {
        let reply = app
            .send(
                app.client
                    .post(app.url("/api/agents/register"))
                    .header("Content-Type", "application/json")
                    .body(facts(&format!("more-{passed}"), None).to_string()),
            )
            .await;
        if reply.status != 201 {
            break reply;
        }
        passed += 1;
        let allowed = 50 + (started.elapsed().as_secs_f64() * 10.0).ceil() as usize + 1;
        assert!(
            passed <= allowed,
            "{passed} registrations passed, at most {allowed} may"
        );
    };
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert!(reply.header("retry-after").parse::<u64>().unwrap() >= 1);
    assert!(
        reply.message().contains("too many registrations"),
        "{}",
        reply.body
    );
    let (status, body) = app
        .register_with(facts("keyed", None), Some("the-key"))
        .await;
    assert_eq!(status, 201, "the key is exempt: {body}");
}

#[tokio::test]
async fn the_pending_list_has_a_cap_but_the_key_still_registers() {
    let app = spawn_app_with(|c| {
        c.max_pending_agents = 3;
        c.agent_registration_key = Some("the-key".into());
    })
    .await;
    for n in 0..3 {
        app.register(&format!("pending-{n}")).await;
    }
    let (status, body) = app.register_with(facts("fourth", None), None).await;
    assert_eq!(status, 429, "{body}");
    assert!(message(&body).contains("wait for approval"), "{body}");
    let (status, body) = app
        .register_with(facts("keyed", None), Some("the-key"))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["agent_config_state"], "Enabled");
    let listed = app.get("/api/agents").await.expect(200);
    assert_eq!(listed["_embedded"]["agents"].as_array().unwrap().len(), 4);
}
