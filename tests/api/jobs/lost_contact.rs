//! An agent that goes silent loses its run to a new one another agent can take.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn the_run_of_an_agent_that_goes_silent_is_rescheduled_for_another_agent() {
    let app = spawn_app_with(|config| config.lost_contact_after = Duration::from_secs(1)).await;
    let id = app.schedule_job("fragile", "long-job").await;
    let silent = app.register_enabled("goes-silent").await;
    let work = app.as_agent(&silent).take_work().await;
    assert_eq!(work["build_id"], id);
    app.as_agent(&silent).report_ok(id, "Building", None).await;

    // No request from the agent from here on.
    let app_ref = &app;
    let old = eventually("the silent agent's run to end", || async move {
        let run = app_ref.build(id).await;
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
    assert_eq!(app.build(new_id).await["state"], "Scheduled");

    let lost = app.agent(&silent.uuid).await;
    assert_eq!(lost["agent_state"], "LostContact", "{lost}");
    assert!(
        lost.get("build_details").is_none(),
        "it holds no run now: {lost}"
    );

    let rescuer = app.register_enabled("rescuer").await;
    let work = app.as_agent(&rescuer).take_work().await;
    assert_eq!(work["build_id"], new_id, "{work}");
    assert_eq!(work["pipeline_counter"], old["pipeline_counter"]);
    assert_eq!(work["job_name"], "long-job");
    let run = app.build(new_id).await;
    assert_eq!(run["state"], "Assigned");
    assert_eq!(run["agent_uuid"], rescuer.uuid.as_str());
}
