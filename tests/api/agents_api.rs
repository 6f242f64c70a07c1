//! The Agents API and registration, as GoCD clients and agents use them.

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_registered_agent_is_listed_pending_in_gocd_v7_shape() {
    let app = spawn_app().await;
    let agent = app.register("build-01").await;

    let (status, body) = app.get_json("/go/api/agents").await;
    assert_eq!(status, 200);
    let agents = body["_embedded"]["agents"]
        .as_array()
        .expect("_embedded.agents");
    assert_eq!(agents.len(), 1);
    let listed = &agents[0];
    assert_eq!(listed["uuid"], agent.uuid.as_str());
    assert_eq!(listed["hostname"], "build-01");
    assert_eq!(listed["agent_config_state"], "Pending");
    assert_eq!(listed["agent_state"], "Idle");
    assert_eq!(listed["build_state"], "Idle");
    assert_eq!(listed["free_space"], 1_000_000_000u64);
    assert_eq!(listed["resources"], json!(["linux"]));
    assert_eq!(listed["environments"], json!([]));
    assert!(listed.get("token").is_none(), "the token is never listed");
}

#[tokio::test]
async fn enabling_a_pending_agent_approves_it() {
    let app = spawn_app().await;
    let agent = app.register("build-02").await;
    let (status, body) = app
        .send_json(
            Method::PATCH,
            &format!("/api/agents/{}", agent.uuid),
            json!({"agent_config_state": "enabled"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["agent_config_state"], "Enabled");
    assert_eq!(
        app.agent(&agent.uuid).await["agent_config_state"],
        "Enabled"
    );
}
