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

/// A well-formed uuid that names no agent.
const UNKNOWN_UUID: &str = "00000000-0000-4000-8000-000000000000";

// ---------------------------------------------------------------------------------------
// Reading agents.

#[tokio::test]
async fn the_agents_list_is_the_same_under_api_and_go_api() {
    let app = spawn_app().await;
    app.register("list-a").await;
    app.register_enabled("list-b").await;

    let (status_api, api) = app.get_json("/api/agents").await;
    let (status_go, go) = app.get_json("/go/api/agents").await;
    assert_eq!(status_api, 200, "{api}");
    assert_eq!(status_go, 200, "{go}");
    assert_eq!(
        api["_embedded"], go["_embedded"],
        "the two mounts list the same agents"
    );
    let agents = api["_embedded"]["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), 2, "Pending agents are listed too: {api}");
    let states: Vec<&str> = agents
        .iter()
        .map(|a| a["agent_config_state"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"Pending"), "{states:?}");
    assert!(states.contains(&"Enabled"), "{states:?}");
}

#[tokio::test]
async fn one_agent_is_shown_by_uuid_and_unknown_or_malformed_uuids_are_404() {
    let app = spawn_app().await;
    let agent = app.register("show-me").await;

    let (status, body) = app.get_json(&format!("/api/agents/{}", agent.uuid)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["uuid"], agent.uuid.as_str());
    assert_eq!(body["hostname"], "show-me");
    assert_eq!(body["ip_address"], "10.0.0.7");
    assert_eq!(body["sandbox"], "/var/lib/agent");
    assert_eq!(body["operating_system"], "Linux");
    assert_eq!(body["agent_version"], "test");
    assert_eq!(body["agent_config_state"], "Pending");
    assert_eq!(body["agent_state"], "Idle");
    assert_eq!(body["build_state"], "Idle");
    assert!(
        body.get("build_details").is_none() || body["build_details"].is_null(),
        "build_details only while building: {body}"
    );
    let (status, go) = app
        .get_json(&format!("/go/api/agents/{}", agent.uuid))
        .await;
    assert_eq!(status, 200);
    assert_eq!(go, body, "/go/api shows the same agent");

    for path in [
        format!("/api/agents/{UNKNOWN_UUID}"),
        "/api/agents/not-a-uuid".to_string(),
        "/go/api/agents/1234".to_string(),
    ] {
        let (status, body) = app.get_json(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!message(&body).is_empty(), "{path}: {body}");
    }
}

#[tokio::test]
async fn gocd_accept_headers_are_all_accepted() {
    let app = spawn_app().await;
    let agent = app.register("accept-me").await;
    for accept in [
        "application/json",
        "application/vnd.go.cd.v7+json",
        "application/vnd.go.cd.v4+json",
    ] {
        let (status, body) = app.get_accepting("/api/agents", accept).await.parts();
        assert_eq!(status, 200, "Accept: {accept}: {body}");
        assert_eq!(
            body["_embedded"]["agents"][0]["uuid"],
            agent.uuid.as_str(),
            "Accept: {accept}"
        );
        let (status, body) = app
            .get_accepting(&format!("/go/api/agents/{}", agent.uuid), accept)
            .await
            .parts();
        assert_eq!(status, 200, "Accept: {accept}: {body}");
        assert_eq!(body["hostname"], "accept-me", "Accept: {accept}");
    }
}

// ---------------------------------------------------------------------------------------
// Editing one agent.

#[tokio::test]
async fn patch_changes_hostname_and_resources_given_as_array_or_comma_string() {
    let app = spawn_app().await;
    let agent = app.register("old-name").await;

    let body = app
        .patch_agent(
            &agent.uuid,
            json!({"hostname": "new-name", "resources": ["java", "docker"]}),
        )
        .await
        .expect(200);
    assert_eq!(body["uuid"], agent.uuid.as_str(), "PATCH answers the AGENT");
    assert_eq!(body["hostname"], "new-name");
    assert_eq!(body["resources"], json!(["java", "docker"]));
    let shown = app.agent(&agent.uuid).await;
    assert_eq!(shown["hostname"], "new-name");
    assert_eq!(shown["resources"], json!(["java", "docker"]));

    let body = app
        .patch_agent(&agent.uuid, json!({"resources": "a, b"}))
        .await
        .expect(200);
    assert_eq!(body["resources"], json!(["a", "b"]));
    assert_eq!(app.agent(&agent.uuid).await["resources"], json!(["a", "b"]));
    assert_eq!(
        app.agent(&agent.uuid).await["hostname"],
        "new-name",
        "fields not sent stay as they were"
    );
}

#[tokio::test]
async fn patch_sets_environments_shown_with_their_gocd_origin() {
    let app = spawn_app().await;
    let agent = app.register("env-agent").await;

    let body = app
        .patch_agent(&agent.uuid, json!({"environments": ["prod", "qa"]}))
        .await
        .expect(200);
    let expected = json!([
        {"name": "prod", "origin": {"type": "gocd"}},
        {"name": "qa", "origin": {"type": "gocd"}},
    ]);
    assert_eq!(body["environments"], expected);
    assert_eq!(app.agent(&agent.uuid).await["environments"], expected);

    app.patch_agent(&agent.uuid, json!({"environments": "staging, prod"}))
        .await
        .expect(200);
    assert_eq!(
        app.agent(&agent.uuid).await["environments"],
        json!([
            {"name": "staging", "origin": {"type": "gocd"}},
            {"name": "prod", "origin": {"type": "gocd"}},
        ])
    );
}

#[tokio::test]
async fn patch_agent_config_state_is_case_insensitive() {
    let app = spawn_app().await;
    let agent = app.register("toggle").await;
    for (sent, shown) in [
        ("ENABLED", "Enabled"),
        ("disabled", "Disabled"),
        ("Enabled", "Enabled"),
        ("DiSaBlEd", "Disabled"),
    ] {
        let (status, body) = app
            .patch_agent(&agent.uuid, json!({"agent_config_state": sent}))
            .await
            .parts();
        assert_eq!(status, 200, "{sent}: {body}");
        assert_eq!(body["agent_config_state"], shown, "{sent}");
        assert_eq!(
            app.agent(&agent.uuid).await["agent_config_state"],
            shown,
            "{sent}"
        );
    }
}

#[tokio::test]
async fn patch_with_a_body_that_is_not_json_is_400_with_a_message() {
    let app = spawn_app().await;
    let agent = app.register("bad-json").await;
    let reply = app
        .call_raw(
            Method::PATCH,
            &format!("/api/agents/{}", agent.uuid),
            b"{\"hostname\": ".to_vec(),
        )
        .await;
    let (status, text) = (reply.status, reply.text());
    assert_eq!(status, 400, "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).expect("the error is JSON");
    assert!(!message(&body).is_empty(), "{body}");
    assert_eq!(app.agent(&agent.uuid).await["hostname"], "bad-json");
}

#[tokio::test]
async fn patch_with_a_field_of_the_wrong_type_is_422_naming_the_field() {
    let app = spawn_app().await;
    let agent = app.register("typed").await;
    for (body, field) in [
        (json!({"hostname": 5}), "hostname"),
        (json!({"resources": 7}), "resources"),
        (json!({"environments": {"name": "prod"}}), "environments"),
        (json!({"agent_config_state": true}), "agent_config_state"),
    ] {
        let (status, answer) = app.patch_agent(&agent.uuid, body.clone()).await.parts();
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(
            message(&answer).contains(field),
            "the message for {body} names {field}: {answer}"
        );
    }
    let shown = app.agent(&agent.uuid).await;
    assert_eq!(shown["hostname"], "typed", "nothing changed: {shown}");
    assert_eq!(shown["resources"], json!(["linux"]));
}

#[tokio::test]
async fn patch_to_pending_or_an_unknown_config_state_is_422() {
    let app = spawn_app().await;
    let agent = app.register_enabled("stays-enabled").await;
    for state in ["Pending", "pending", "bogus", ""] {
        let (status, body) = app
            .patch_agent(&agent.uuid, json!({"agent_config_state": state}))
            .await
            .parts();
        assert_eq!(status, 422, "{state:?}: {body}");
        assert!(
            message(&body).contains("agent_config_state"),
            "{state:?}: {body}"
        );
    }
    assert_eq!(
        app.agent(&agent.uuid).await["agent_config_state"],
        "Enabled"
    );
}

#[tokio::test]
async fn patch_of_an_unknown_agent_is_404() {
    let app = spawn_app().await;
    let body = app
        .patch_agent(UNKNOWN_UUID, json!({"hostname": "ghost"}))
        .await
        .expect(404);
    assert!(!message(&body).is_empty());
    assert!(app.agent_uuids().await.is_empty(), "no agent was created");
}

#[tokio::test]
async fn enable_and_disable_shortcuts_answer_the_agent() {
    let app = spawn_app().await;
    let agent = app.register("shortcut").await;

    let (status, body) = app.put(&format!("/api/agents/{}/enable", agent.uuid)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["uuid"], agent.uuid.as_str());
    assert_eq!(body["hostname"], "shortcut");
    assert_eq!(body["agent_config_state"], "Enabled");
    assert_eq!(body["resources"], json!(["linux"]));
    assert_eq!(body, app.agent(&agent.uuid).await, "the same AGENT as GET");

    let (status, body) = app
        .put(&format!("/go/api/agents/{}/disable", agent.uuid))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["uuid"], agent.uuid.as_str());
    assert_eq!(body["agent_config_state"], "Disabled");
    assert_eq!(
        app.agent(&agent.uuid).await["agent_config_state"],
        "Disabled"
    );

    let (status, body) = app.put(&format!("/api/agents/{UNKNOWN_UUID}/enable")).await;
    assert_eq!(status, 404, "{body}");
}

// ---------------------------------------------------------------------------------------
// Bulk edits.

#[tokio::test]
async fn bulk_patch_edits_every_named_agent_and_says_which() {
    let app = spawn_app().await;
    let one = app.register("bulk-1").await;
    let two = app.register("bulk-2").await;
    let other = app.register("bulk-untouched").await;
    app.patch_agent(&two.uuid, json!({"environments": ["old-env"]}))
        .await
        .parts();

    let (status, body) = app
        .send_json(
            Method::PATCH,
            "/api/agents",
            json!({
                "uuids": [one.uuid, two.uuid],
                "operations": {
                    "resources": {"add": ["docker", "java"], "remove": ["linux"]},
                    "environments": {"add": ["prod"], "remove": ["old-env"]},
                },
                "agent_config_state": "Disabled",
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["message"],
        format!(
            "Updated agent(s) with uuid(s): [{}, {}].",
            one.uuid, two.uuid
        )
    );

    for uuid in [&one.uuid, &two.uuid] {
        let agent = app.agent(uuid).await;
        assert_eq!(agent["resources"], json!(["docker", "java"]), "{agent}");
        assert_eq!(
            agent["environments"],
            json!([{"name": "prod", "origin": {"type": "gocd"}}]),
            "{agent}"
        );
        assert_eq!(agent["agent_config_state"], "Disabled", "{agent}");
    }
    let untouched = app.agent(&other.uuid).await;
    assert_eq!(untouched["resources"], json!(["linux"]));
    assert_eq!(untouched["environments"], json!([]));
    assert_eq!(untouched["agent_config_state"], "Pending");
}

#[tokio::test]
async fn bulk_patch_with_an_unknown_uuid_is_422_naming_it_and_changes_nothing() {
    let app = spawn_app().await;
    let one = app.register("all-1").await;
    let two = app.register("all-2").await;
    let before = (app.agent(&one.uuid).await, app.agent(&two.uuid).await);

    let (status, body) = app
        .send_json(
            Method::PATCH,
            "/go/api/agents",
            json!({
                "uuids": [one.uuid, UNKNOWN_UUID, two.uuid],
                "operations": {
                    "resources": {"add": ["docker"], "remove": ["linux"]},
                    "environments": {"add": ["prod"]},
                },
                "agent_config_state": "Enabled",
            }),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(message(&body).contains(UNKNOWN_UUID), "{body}");

    let after = (app.agent(&one.uuid).await, app.agent(&two.uuid).await);
    assert_eq!(
        after, before,
        "all or nothing: the known agents are unchanged"
    );

    let (status, body) = app
        .send_json(
            Method::PATCH,
            "/api/agents",
            json!({"uuids": [one.uuid, "not-a-uuid"], "agent_config_state": "Enabled"}),
        )
        .await;
    assert_eq!(status, 422, "a malformed uuid: {body}");
    assert!(message(&body).contains("not-a-uuid"), "{body}");
    let after = (app.agent(&one.uuid).await, app.agent(&two.uuid).await);
    assert_eq!(after, before, "still unchanged");
}

// ---------------------------------------------------------------------------------------
// Deleting.

#[tokio::test]
async fn only_a_disabled_agent_can_be_deleted() {
    let app = spawn_app().await;
    let pending = app.register("del-pending").await;
    let enabled = app.register_enabled("del-enabled").await;
    let disabled = app.register_enabled("del-disabled").await;
    app.put(&format!("/api/agents/{}/disable", disabled.uuid))
        .await;

    for (agent, state) in [(&pending, "Pending"), (&enabled, "Enabled")] {
        let (status, body) = app.delete_agent(&agent.uuid).await.parts();
        assert_eq!(status, 422, "deleting a {state} agent: {body}");
        assert!(!message(&body).is_empty());
        assert_eq!(app.agent(&agent.uuid).await["agent_config_state"], state);
    }

    let body = app.delete_agent(&disabled.uuid).await.expect(200);
    assert_eq!(body, json!({"message": "Deleted 1 agent(s)."}));
    let (status, _) = app
        .get_json(&format!("/api/agents/{}", disabled.uuid))
        .await;
    assert_eq!(status, 404, "a deleted agent is gone");
    let listed = app.agent_uuids().await;
    assert!(!listed.contains(&disabled.uuid), "{listed:?}");
    assert_eq!(listed.len(), 2, "the others stay: {listed:?}");

    app.delete_agent(UNKNOWN_UUID).await.expect(404);
    let (status, body) = app.delete_agent(&disabled.uuid).await.parts();
    assert_eq!(status, 404, "deleting twice: {body}");
}

#[tokio::test]
async fn bulk_delete_is_all_or_nothing() {
    let app = spawn_app().await;
    let one = app.register_enabled("bulk-del-1").await;
    let two = app.register_enabled("bulk-del-2").await;
    let three = app.register_enabled("bulk-del-3").await;
    for agent in [&one, &two] {
        app.put(&format!("/api/agents/{}/disable", agent.uuid))
            .await;
    }

    let (status, body) = app
        .send_json(
            Method::DELETE,
            "/api/agents",
            json!({"uuids": [one.uuid, two.uuid, three.uuid]}),
        )
        .await;
    assert_eq!(status, 422, "one of them is Enabled: {body}");
    assert!(!message(&body).is_empty());
    assert_eq!(app.agent_uuids().await.len(), 3, "none was deleted");

    let (status, body) = app
        .send_json(
            Method::DELETE,
            "/go/api/agents",
            json!({"uuids": [one.uuid, two.uuid]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"message": "Deleted 2 agent(s)."}));
    assert_eq!(app.agent_uuids().await, vec![three.uuid.clone()]);
}

#[tokio::test]
async fn a_building_agent_cannot_be_deleted_even_when_disabled() {
    let app = spawn_app().await;
    let agent = app.register_enabled("busy").await;
    app.as_agent(&agent)
        .ping(json!({"agent_state": "Building"}))
        .await
        .expect(200);
    let (status, body) = app
        .put(&format!("/api/agents/{}/disable", agent.uuid))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["agent_state"], "Building", "{body}");

    let body = app.delete_agent(&agent.uuid).await.expect(422);
    assert!(!message(&body).is_empty());
    let (status, body) = app
        .send_json(
            Method::DELETE,
            "/api/agents",
            json!({"uuids": [agent.uuid]}),
        )
        .await;
    assert_eq!(status, 422, "bulk too: {body}");
    assert_eq!(app.agent(&agent.uuid).await["agent_state"], "Building");
}

// ---------------------------------------------------------------------------------------
// Limits, errors and server details.

#[tokio::test]
async fn a_body_over_one_mebibyte_is_413() {
    let app = spawn_app().await;
    let agent = app.register("big").await;
    let huge = "a".repeat(1024 * 1024 + 1024);
    let body = format!("{{\"hostname\": \"{huge}\"}}").into_bytes();
    let reply = app
        .call_raw(Method::PATCH, &format!("/api/agents/{}", agent.uuid), body)
        .await;
    let (status, text) = (reply.status, reply.text());
    assert_eq!(status, 413, "{}", &text[..text.len().min(200)]);
    assert_eq!(app.agent(&agent.uuid).await["hostname"], "big");

    let body = format!("{{\"hostname\": \"{huge}\"}}").into_bytes();
    let reply = app
        .call_raw(Method::POST, "/api/agents/register", body)
        .await;
    let (status, text) = (reply.status, reply.text());
    assert_eq!(
        status,
        413,
        "registration too: {}",
        &text[..text.len().min(200)]
    );
    assert_eq!(app.agent_uuids().await.len(), 1);
}

#[tokio::test]
async fn an_unknown_api_route_is_a_json_404() {
    let app = spawn_app().await;
    for path in ["/api/no-such-thing", "/go/api/agents/x/y/z"] {
        let reply = app.get(path).await;
        let (status, content_type, text) = (
            reply.status,
            reply.header("content-type").to_string(),
            reply.text(),
        );
        assert_eq!(status, 404, "{path}: {text}");
        assert!(
            content_type.starts_with("application/json"),
            "{path}: {content_type}"
        );
        let body: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert!(!message(&body).is_empty(), "{path}: {body}");
    }
}

#[tokio::test]
async fn version_and_health_answer() {
    let app = spawn_app().await;
    for prefix in ["/api", "/go/api"] {
        let (status, body) = app.get_json(&format!("{prefix}/version")).await;
        assert_eq!(status, 200, "{body}");
        for field in ["version", "full_version", "commit_url"] {
            assert!(
                body[field].is_string(),
                "{prefix}/version has {field}: {body}"
            );
        }
        assert!(!body["version"].as_str().unwrap().is_empty(), "{body}");
        assert!(!body["full_version"].as_str().unwrap().is_empty(), "{body}");

        let (status, body) = app.get_json(&format!("{prefix}/health")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({"status": "ok"}));
    }
}

#[tokio::test]
async fn the_about_page_shows_the_server_and_schema_versions_and_the_database() {
    let app = spawn_app().await;
    let reply = app.get("/go/about").await;
    let (status, content_type, html) = (
        reply.status,
        reply.header("content-type").to_string(),
        reply.text(),
    );
    assert_eq!(status, 200, "{html}");
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(
        html.contains("<tr><td>Server Version</td><td>25.1.0</td></tr>"),
        "{html}"
    );
    let row = "<tr><td>Database schema version</td><td>";
    let start = html
        .find(row)
        .unwrap_or_else(|| panic!("no {row} in {html}"))
        + row.len();
    let cell = &html[start..];
    let end = cell.find("</td></tr>").expect("the row ends");
    let schema: u64 = cell[..end]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the schema version is a number, got {:?}", &cell[..end]));
    // The newest migration, the same number on both backends.
    let newest = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .unwrap()
        .filter_map(|entry| {
            entry
                .ok()?
                .file_name()
                .to_str()?
                .get(..4)?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap();
    assert_eq!(schema, newest, "{html}");
    expect_backend(&app).await;
}

#[tokio::test]
async fn resources_and_environments_are_bounded_and_a_huge_list_is_refused_whole() {
    let app = spawn_app().await;
    let huge: Vec<String> = (0..80_000).map(|n| format!("r{n}")).collect();
    let (status, body) = app
        .register_with(json!({"hostname": "greedy", "resources": huge}), None)
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(message(&body), "resources: at most 256 names");
    assert!(app.agent_uuids().await.is_empty(), "nothing was registered");

    let agent = app.register("modest").await;
    let many: Vec<String> = (0..300).map(|n| format!("e{n}")).collect();
    let (status, body) = app
        .patch_agent(&agent.uuid, json!({"environments": many}))
        .await
        .parts();
    assert_eq!(status, 422, "{body}");
    assert_eq!(message(&body), "environments: at most 256 names");
    let long = "x".repeat(256);
    let (status, body) = app
        .patch_agent(&agent.uuid, json!({"resources": [long]}))
        .await
        .parts();
    assert_eq!(status, 422, "{body}");
    let job = json!({"pipeline_name": "p", "stage_name": "s", "job_name": "j",
                     "tasks": [{"command": "true"}],
                     "resources": (0..257).map(|n| format!("r{n}")).collect::<Vec<_>>()});
    let reply = app.schedule(job).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert_eq!(reply.message(), "resources: at most 256 names");
}
