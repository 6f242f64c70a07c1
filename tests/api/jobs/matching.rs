//! Which job goes to which agent: resources, environments, age, one run per agent, and no job
//! handed out twice however many agents poll at once.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_job_needing_a_resource_goes_only_to_an_agent_offering_it_in_any_case() {
    let app = spawn_app().await;
    let mut body = job_body("res", "needs-linux");
    body["resources"] = json!(["linux"]);
    let id = app.schedule_ok(body).await;

    let windows = app.register_enabled("windows-box").await;
    app.patch_agent(&windows.uuid, json!({"resources": ["windows"]}))
        .await
        .expect(200);
    app.as_agent(&windows).work().await.expect(204);
    assert_eq!(app.build(id).await["state"], "Scheduled");

    let linux = app.register_enabled("linux-box").await;
    app.patch_agent(&linux.uuid, json!({"resources": ["LINUX"]}))
        .await
        .expect(200);
    let work = app.as_agent(&linux).take_work().await;
    assert_eq!(work["build_id"], id);
    assert_eq!(app.build(id).await["agent_uuid"], linux.uuid.as_str());
}

#[tokio::test]
async fn environments_must_be_shared_or_absent_on_both_sides() {
    let app = spawn_app().await;
    let mut prod_job = job_body("envs", "deploy");
    prod_job["environment"] = json!("prod");
    let prod_id = app.schedule_ok(prod_job).await;
    let plain_id = app.schedule_job("envs", "unit-tests").await;

    // An agent in no environment skips the older prod job and takes the plain one.
    let plain = app.register_enabled("plain").await;
    let work = app.as_agent(&plain).take_work().await;
    assert_eq!(work["build_id"], plain_id, "{work}");

    // An agent in prod takes the prod job.
    let prod = app.register_enabled("prod-box").await;
    app.patch_agent(&prod.uuid, json!({"environments": ["prod"]}))
        .await
        .expect(200);
    let work = app.as_agent(&prod).take_work().await;
    assert_eq!(work["build_id"], prod_id, "{work}");

    // A job without an environment is not for an agent that has one.
    let late_id = app.schedule_job("envs", "lint").await;
    let prod_two = app.register_enabled("prod-two").await;
    app.patch_agent(&prod_two.uuid, json!({"environments": ["prod"]}))
        .await
        .expect(200);
    app.as_agent(&prod_two).work().await.expect(204);
    assert_eq!(app.build(late_id).await["state"], "Scheduled");

    // A plain agent does take it.
    let plain_two = app.register_enabled("plain-two").await;
    assert_eq!(
        app.as_agent(&plain_two).take_work().await["build_id"],
        late_id
    );
}

#[tokio::test]
async fn the_oldest_scheduled_job_goes_first() {
    let app = spawn_app().await;
    let ids = [
        app.schedule_job("fifo", "first").await,
        app.schedule_job("fifo", "second").await,
        app.schedule_job("fifo", "third").await,
    ];
    for (i, expected) in ids.iter().enumerate() {
        let agent = app.register_enabled(&format!("fifo-{i}")).await;
        let work = app.as_agent(&agent).take_work().await;
        assert_eq!(work["build_id"], *expected, "agent {i} got {work}");
    }
    assert_eq!(app.pending_count().await, 0);
}

/// A poll reads the queue a page at a time (256 runs); an agent that matches none of the
/// oldest pages still gets the oldest run it does match, however deep in the queue.
#[tokio::test]
async fn a_matching_job_behind_many_that_do_not_match_is_still_found() {
    let app = spawn_app().await;
    for i in 0..600 {
        let mut body = job_body("deep", &format!("gpu-{i}"));
        body["resources"] = json!(["gpu"]);
        app.schedule_ok(body).await;
    }
    let plain = app.schedule_job("deep", "plain").await;
    let later = app.schedule_job("deep", "later").await;
    let agent = app.register_enabled("no-gpu").await;
    let work = app.as_agent(&agent).take_work().await;
    assert_eq!(work["build_id"], plain, "{work}");
    assert_eq!(app.build(later).await["state"], "Scheduled");
    assert_eq!(app.pending_count().await, 601);
}

#[tokio::test]
async fn an_agent_holding_a_run_gets_that_same_run_again_and_no_second_one() {
    let app = spawn_app().await;
    let first = app.schedule_job("once", "a").await;
    let second = app.schedule_job("once", "b").await;
    let agent = app.register_enabled("forgetful").await;

    let work = app.as_agent(&agent).take_work().await;
    assert_eq!(work["build_id"], first);
    // The answer was lost; the agent asks again while the run is still Assigned.
    let again = app.as_agent(&agent).take_work().await;
    assert_eq!(again["build_id"], first, "{again}");
    assert_eq!(again["job_name"], "a");

    assert_eq!(app.build(first).await["state"], "Assigned");
    let other = app.build(second).await;
    assert_eq!(other["state"], "Scheduled", "{other}");
    assert!(other["agent_uuid"].is_null(), "{other}");
    assert_eq!(app.pending_count().await, 1);

    // Once it finishes, it may take the next one.
    app.as_agent(&agent)
        .report_ok(first, "Completed", Some("Passed"))
        .await;
    assert_eq!(app.as_agent(&agent).take_work().await["build_id"], second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_agents_polling_at_once_get_each_of_a_hundred_jobs_exactly_once() {
    let app = spawn_app().await;
    let mut scheduled = HashSet::new();
    for i in 0..100 {
        scheduled.insert(app.schedule_job("race", &format!("job-{i}")).await);
    }
    let mut agents = Vec::new();
    for i in 0..20 {
        agents.push(app.register_enabled(&format!("racer-{i}")).await);
    }

    let mut handles = Vec::new();
    for agent in agents {
        // Each task owns a client of its own: the agents poll side by side, as real ones do.
        let api = Api::clone(&app);
        let uuid = agent.uuid.clone();
        handles.push((
            uuid,
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                let mut got = Vec::new();
                let me = api.as_agent(&agent);
                loop {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "agent {} still polling at the deadline",
                        agent.uuid
                    );
                    let work = me.work().await;
                    match work.status {
                        200 => {
                            let id = work.body["build_id"].as_i64().expect("build_id");
                            got.push(id);
                            me.report(id, "Completed", Some("Passed")).await.expect(200);
                        }
                        204 => {
                            if api.pending_count().await == 0 {
                                return got;
                            }
                            // Polling, as an agent does, a little later.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        other => panic!("work answered {other}: {}", work.text()),
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
    assert_eq!(app.pending_count().await, 0);
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
        let run = app.build(id).await;
        assert_eq!(
            (&run["state"], &run["result"]),
            (&json!("Completed"), &json!("Passed"))
        );
    }
}
