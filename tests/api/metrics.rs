//! `GET /metrics`: Prometheus text that a Prometheus parser reads whole, with counters that
//! rise by exactly what happened: one registration, one scheduled job, one console append of
//! N bytes, each request under its route template (never its raw path); and pipeline
//! instances counted by result as their stages run, pass, fail, wait and are cancelled.

use std::collections::HashMap;

use openmetrics_parser::PrometheusValue;
use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, spawn_app};

/// The samples of a scrape, by `name{label="value",…}` with the labels in name order.
async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let reply = app.get("/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = reply.text();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        assert!(line.starts_with("ferrocd_"), "{line}");
    }
    let parsed = openmetrics_parser::prometheus::parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("not Prometheus text: {e:?}\n{text}"));
    let mut samples = HashMap::new();
    for (name, family) in &parsed.families {
        let label_names = family.get_label_names().to_vec();
        for sample in family.iter_samples() {
            let set = sample.get_labelset().expect("labels");
            let mut labels: Vec<String> = label_names
                .iter()
                .map(|k| format!("{k}=\"{}\"", set.get_label_value(k).unwrap_or("")))
                .collect();
            labels.sort();
            let value = match &sample.value {
                PrometheusValue::Counter(c) => c.value.as_f64(),
                PrometheusValue::Gauge(v) | PrometheusValue::Unknown(v) => v.as_f64(),
                PrometheusValue::Histogram(h) => h.count.unwrap_or(0) as f64,
                PrometheusValue::Summary(_) => continue,
            };
            samples.insert(format!("{name}{{{}}}", labels.join(",")), value);
        }
    }
    samples
}

fn rise(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_exactly_what_happened() {
    let app = spawn_app().await;
    let before = scrape(&app).await;
    let (agent, build_id) = app.running_build("counted").await;
    let after_run = scrape(&app).await;
    assert_eq!(
        rise(
            &before,
            &after_run,
            r#"ferrocd_events_published_total{event="agent_registered",topic="agents:updates"}"#
        ),
        1.0
    );
    assert_eq!(
        rise(
            &before,
            &after_run,
            r#"ferrocd_http_requests_total{method="POST",route="/api/agents/register",status="2xx"}"#
        ),
        1.0
    );
    assert_eq!(
        rise(
            &before,
            &after_run,
            r#"ferrocd_http_requests_total{method="POST",route="/api/jobs/schedule",status="2xx"}"#
        ),
        1.0,
        "one schedule"
    );
    assert_eq!(
        rise(
            &before,
            &after_run,
            r#"ferrocd_events_published_total{event="run_created",topic="agent_job_runs"}"#
        ),
        1.0,
        "one run handed out"
    );
    // The duration histogram counts the same requests.
    assert_eq!(
        rise(
            &before,
            &after_run,
            r#"ferrocd_http_request_duration_seconds{method="POST",route="/api/agents/register",status="2xx"}"#
        ),
        1.0
    );

    let chunk = b"twelve bytes";
    app.as_agent(&agent).append_ok(build_id, 0, chunk).await;
    let after_append = scrape(&app).await;
    assert_eq!(
        rise(
            &after_run,
            &after_append,
            "ferrocd_console_bytes_stored_total{}"
        ),
        chunk.len() as f64
    );
    assert_eq!(
        rise(
            &after_run,
            &after_append,
            r#"ferrocd_http_requests_total{method="POST",route="/api/builds/{build_id}/console",status="2xx"}"#
        ),
        1.0
    );
    assert_eq!(
        after_append[r#"ferrocd_agents{config_state="Enabled",state="Building"}"#], 1.0,
        "{after_append:#?}"
    );
    // A path with an id is counted under its template, never as itself.
    assert!(
        !after_append
            .keys()
            .any(|k| k.contains(&format!("/{build_id}/"))),
        "{after_append:#?}"
    );
    assert_eq!(rise(&before, &after_append, "ferrocd_scrapes_total{}"), 2.0);
}

const BUILD_THEN_MANUAL: &str = r#"
format_version: 10
pipelines:
  counted:
    group: metrics
    stages:
      - build:
          jobs:
            compile:
              tasks:
                - exec: {command: make}
      - deploy:
          approval: manual
          jobs:
            prod:
              tasks:
                - exec: {command: ./deploy.sh}
"#;

/// The gauge of pipeline instances by result, as a scrape reads it: every result named.
async fn instances_by_result(app: &TestApp) -> [f64; 5] {
    let now = scrape(app).await;
    ["Building", "Passed", "Failed", "Cancelled", "Waiting"].map(|result| {
        now.get(&format!(
            r#"ferrocd_pipeline_instances{{result="{result}"}}"#
        ))
        .copied()
        .unwrap_or_else(|| panic!("no {result} in {now:#?}"))
    })
}

#[tokio::test]
async fn pipeline_instances_are_counted_by_result() {
    use crate::pipelines::{finish_next, trigger};
    let app = spawn_app().await;
    app.put_config("metrics", BUILD_THEN_MANUAL)
        .await
        .expect(201);
    assert_eq!(instances_by_result(&app).await, [0.0; 5]);
    let agent = app.register_enabled("counting").await;

    // Building while its first stage runs; waiting once that passed and the next is manual.
    trigger(&app, "counted").await;
    assert_eq!(instances_by_result(&app).await, [1.0, 0.0, 0.0, 0.0, 0.0]);
    finish_next(&app, &agent, "Passed").await;
    assert_eq!(instances_by_result(&app).await, [0.0, 0.0, 0.0, 0.0, 1.0]);
    // Approved and passed: every planned stage passed.
    app.call(
        Method::POST,
        "/go/api/stages/counted/1/deploy/run",
        json!({}),
    )
    .await
    .expect(202);
    finish_next(&app, &agent, "Passed").await;
    assert_eq!(instances_by_result(&app).await, [0.0, 1.0, 0.0, 0.0, 0.0]);

    trigger(&app, "counted").await;
    finish_next(&app, &agent, "Failed").await;
    trigger(&app, "counted").await;
    app.call(
        Method::POST,
        "/go/api/stages/counted/3/build/1/cancel",
        json!({}),
    )
    .await
    .expect(200);
    assert_eq!(instances_by_result(&app).await, [0.0, 1.0, 1.0, 1.0, 0.0]);
    // A failed stage run again: the newest run of each stage decides.
    app.call(
        Method::POST,
        "/go/api/stages/counted/2/build/run",
        json!({}),
    )
    .await
    .expect(202);
    assert_eq!(instances_by_result(&app).await, [1.0, 1.0, 0.0, 1.0, 0.0]);
}
