//! An agent's status reports: the states a run may move through, who may report them, and the
//! history they leave.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn an_agent_reports_its_run_forward_to_completed() {
    let app = spawn_app().await;
    let id = app.schedule_job("states", "walk").await;
    let agent = app.register_enabled("walker").await;
    app.as_agent(&agent).take_work().await;

    for state in ["Preparing", "Building", "Completing"] {
        let run = app.as_agent(&agent).report_ok(id, state, None).await;
        assert_eq!(run["state"], state, "{run}");
        assert_eq!(app.build(id).await["state"], state);
    }
    // A retry of the current state is harmless.
    let run = app.as_agent(&agent).report_ok(id, "Completing", None).await;
    assert_eq!(run["state"], "Completing");
    // Going back is not.
    app.as_agent(&agent)
        .report(id, "Building", None)
        .await
        .expect(409);
    assert_eq!(app.build(id).await["state"], "Completing");

    let run = app
        .as_agent(&agent)
        .report_ok(id, "Completed", Some("Passed"))
        .await;
    assert_eq!(
        (&run["state"], &run["result"]),
        (&json!("Completed"), &json!("Passed"))
    );
    // Retrying the completion too.
    app.as_agent(&agent)
        .report_ok(id, "Completed", Some("Passed"))
        .await;

    let run = app.build(id).await;
    assert_eq!(run["state"], "Completed", "{run}");
    assert_eq!(run["result"], "Passed", "{run}");

    let shown = app.agent(&agent.uuid).await;
    assert_eq!(shown["agent_state"], "Idle", "{shown}");
    assert!(shown.get("build_details").is_none(), "{shown}");
}

#[tokio::test]
async fn a_report_may_skip_states_but_must_be_valid_and_from_the_assigned_agent() {
    let app = spawn_app().await;
    let id = app.schedule_job("states", "skip").await;
    let agent = app.register_enabled("skipper").await;
    let stranger = app.register_enabled("stranger").await;
    app.as_agent(&agent).take_work().await;

    app.as_agent(&stranger)
        .report(id, "Building", None)
        .await
        .expect(403);
    app.as_agent(&agent)
        .without_token()
        .report(id, "Building", None)
        .await
        .expect(401);
    let body = app
        .as_agent(&agent)
        .report(id, "Bogus", None)
        .await
        .expect(422);
    assert!(message(&body).contains("job_state"), "{body}");
    assert_eq!(app.build(id).await["state"], "Assigned");

    // Assigned → Building directly.
    let run = app.as_agent(&agent).report_ok(id, "Building", None).await;
    assert_eq!(run["state"], "Building");

    let body = app
        .as_agent(&agent)
        .report(id, "Completed", None)
        .await
        .expect(422);
    assert!(message(&body).contains("result"), "{body}");
    app.as_agent(&stranger)
        .report(id, "Completed", Some("Passed"))
        .await
        .expect(403);

    let run = app.build(id).await;
    assert_eq!(
        (&run["state"], &run["result"]),
        (&json!("Building"), &json!("Unknown"))
    );
    app.as_agent(&agent)
        .report_ok(id, "Completed", Some("Failed"))
        .await;
    assert_eq!(app.build(id).await["result"], "Failed");
}

#[tokio::test]
async fn the_job_run_history_lists_each_run_with_its_transitions_newest_first() {
    let app = spawn_app().await;
    let agent = app.register_enabled("historian").await;
    let mut ids = Vec::new();
    for name in ["one", "two", "three"] {
        let id = app.schedule_job("history", name).await;
        assert_eq!(app.as_agent(&agent).take_work().await["build_id"], id);
        for state in ["Preparing", "Building", "Completing"] {
            app.as_agent(&agent).report_ok(id, state, None).await;
        }
        app.as_agent(&agent)
            .report_ok(id, "Completed", Some("Passed"))
            .await;
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
