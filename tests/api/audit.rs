//! Who did what (the admin-access issue, "Audit"): runs remember who scheduled and cancelled
//! them, agents who last changed them, and admins read the whole trail.

use reqwest::Method;

use crate::helpers::*;

#[tokio::test]
async fn changes_name_their_actor_on_the_thing_and_in_the_trail() {
    let app = spawn_team_app().await;
    let alice = app.as_basic(ALICE.0, ALICE.1);
    let bob = app.as_basic(BOB.0, BOB.1);

    let agent = app.register("worker").await;
    let enabled = alice
        .send(
            alice
                .client
                .put(alice.url(&format!("/api/agents/{}/enable", agent.uuid))),
        )
        .await
        .expect(200);
    assert_eq!(enabled["last_changed_by"], "alice", "{enabled}");
    let run = alice
        .call(Method::POST, "/api/jobs/schedule", job_body("audited", "j"))
        .await
        .expect(201);
    assert_eq!(run["scheduled_by"], "alice", "{run}");
    let build = run["build_id"].as_i64().unwrap();
    let cancelled = bob
        .send(
            bob.client
                .post(bob.url(&format!("/api/builds/{build}/cancel"))),
        )
        .await
        .expect(202);
    assert_eq!(cancelled["cancelled_by"], "bob", "{cancelled}");

    let trail = alice.get("/api/admin/audit?page_size=10").await.expect(200);
    let entries = trail["entries"].as_array().unwrap();
    let said: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        said,
        vec![
            ("bob".to_string(), "cancel".to_string()),
            ("alice".into(), "schedule".into()),
            ("alice".into(), "enable".into()),
        ],
        "newest first: {trail}"
    );
    assert!(
        entries[0]["target"]
            .as_str()
            .unwrap()
            .starts_with(&format!("build {build} "))
    );
    assert!(entries[2]["target"].as_str().unwrap().contains(&agent.uuid));
    assert!(entries[0]["at"].as_str().unwrap().ends_with('Z'));
    let second = alice
        .get("/api/admin/audit?offset=1&page_size=1")
        .await
        .expect(200);
    assert_eq!(second["entries"][0]["action"], "schedule");

    assert_eq!(bob.get("/api/admin/audit").await.status, 403, "admins only");
    let bad = alice.get("/api/admin/audit?page_size=0").await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    let page = bob.get(&format!("/builds/{build}")).await;
    assert!(
        page.text().contains("by alice"),
        "the run page says who scheduled it"
    );
    assert!(
        page.text().contains("id=\"cancelled-by\">by bob"),
        "and who cancelled it"
    );
    let agents = bob.get("/agents").await;
    assert!(
        agents.text().contains("by alice"),
        "the agents page says who changed it"
    );
}
