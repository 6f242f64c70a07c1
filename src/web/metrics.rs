//! `GET /metrics` (the performance issue's observability part): Prometheus text, every name
//! starting with `ferrocd_`. Requests are counted as they end, by the route template they
//! matched (never the raw path, so ids do not make new series), method and status class;
//! event streams are followed for as long as they stay open. What other parts of the server
//! count already (the hub's published events, the views' renders, the queue, the agents) is
//! read when the metrics are scraped. One registry per server (not the process-global one),
//! so servers in one process, as in the tests, never mix their figures.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use metrics::{Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::AppState;
use crate::error::Result;
use crate::web::auth::Credential;
use crate::web::routes::Routes;

static METADATA: Metadata<'static> = Metadata::new("ferrocd", Level::INFO, Some("ferrocd"));

/// Request durations' buckets, in seconds: 0.5 ms to 10 s.
const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every metric and what it counts (its `# HELP` line; docs/API.md, "Metrics").
pub const DESCRIBED: [(&str, &str); 14] = [
    (
        "ferrocd_lagged_connections_total",
        "Times a connection fell behind its view and was sent the whole state again, by stream kind",
    ),
    (
        "ferrocd_http_requests_total",
        "Requests answered, by matched route template, method and status class",
    ),
    (
        "ferrocd_http_request_duration_seconds",
        "Time from a request to its answer's head, by route template, method and status class",
    ),
    (
        "ferrocd_open_streams",
        "Event streams open now, by route template",
    ),
    (
        "ferrocd_stream_bytes_sent_total",
        "Bytes sent on event streams, by route template",
    ),
    (
        "ferrocd_events_published_total",
        "Domain events published, by topic kind and event name",
    ),
    (
        "ferrocd_console_bytes_stored_total",
        "Console bytes stored (appends published) since start",
    ),
    (
        "ferrocd_renders_total",
        "Fragments rendered by the live views, by view",
    ),
    (
        "ferrocd_queue_length",
        "Jobs scheduled and waiting for an agent",
    ),
    ("ferrocd_agents", "Agents, by agent state and config state"),
    (
        "ferrocd_pipeline_instances",
        "Pipeline instances, by result (Building, Passed, Failed, Cancelled, Waiting)",
    ),
    ("ferrocd_scrapes_total", "Scrapes of /metrics"),
    (
        "ferrocd_material_polls_total",
        "Polls of git materials since start, by outcome (stored, failed, superseded, gave_up)",
    ),
    (
        "ferrocd_on_duty",
        "1 while this node polls materials, fires timers and purges artifacts (one node at a time does)",
    ),
];

pub fn router() -> Routes {
    Routes::new().get("/metrics", Credential::User, scrape)
}

/// The server's metrics registry.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The (state, config state) pairs agents have been counted in: one no agent is in any
    /// more reads 0, not its last count.
    agent_states: std::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("ferrocd_http_request_duration_seconds".into()),
                &DURATION_BUCKETS,
            )
            .expect("the buckets are not empty")
            .build_recorder();
        for (name, help) in DESCRIBED {
            recorder.describe_counter(name.into(), None, help.into());
        }
        let handle = recorder.handle();
        Arc::new(Metrics {
            recorder,
            handle,
            agent_states: Default::default(),
        })
    }

    fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.to_string()))
            .collect();
        Key::from_parts(name, labels)
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> metrics::Counter {
        self.recorder
            .register_counter(&Self::key(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> metrics::Gauge {
        self.recorder
            .register_gauge(&Self::key(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> metrics::Histogram {
        self.recorder
            .register_histogram(&Self::key(name, labels), &METADATA)
    }
}

/// Counts each request by its route template, method and status class, and times it to its
/// answer's head. An event stream's open count and the bytes it sent follow its body.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = format!("{}xx", response.status().as_u16() / 100);
    let metrics = &state.metrics;
    let labels = [
        ("route", route.as_str()),
        ("method", method.as_str()),
        ("status", status.as_str()),
    ];
    metrics
        .counter("ferrocd_http_requests_total", &labels)
        .increment(1);
    metrics
        .histogram("ferrocd_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    let streaming = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streaming {
        return response;
    }
    let open = metrics.gauge("ferrocd_open_streams", &[("route", route.as_str())]);
    let sent = metrics.counter(
        "ferrocd_stream_bytes_sent_total",
        &[("route", route.as_str())],
    );
    let (parts, body) = response.into_parts();
    open.increment(1.0);
    let still_open = OpenStream(open);
    let counted = body.into_data_stream().map(move |chunk| {
        let _held = &still_open;
        if let Ok(bytes) = &chunk {
            sent.increment(bytes.len() as u64);
        }
        chunk
    });
    Response::from_parts(parts, Body::from_stream(counted))
}

/// One open stream in its route's gauge, until the body is dropped.
struct OpenStream(metrics::Gauge);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// `GET /metrics`: the counts kept elsewhere, read now, beside the registry's own.
async fn scrape(State(state): State<AppState>) -> Result<Response> {
    let metrics = &state.metrics;
    metrics.counter("ferrocd_scrapes_total", &[]).increment(1);
    let (published, console_bytes) = state.hub.published();
    for ((topic, event), count) in published {
        metrics
            .counter(
                "ferrocd_events_published_total",
                &[("topic", topic), ("event", event)],
            )
            .absolute(count);
    }
    metrics
        .counter("ferrocd_console_bytes_stored_total", &[])
        .absolute(console_bytes);
    for (view, count) in state.renders.all() {
        metrics
            .counter("ferrocd_renders_total", &[("view", view)])
            .absolute(count);
    }
    for (stream, count) in state.renders.lags() {
        metrics
            .counter("ferrocd_lagged_connections_total", &[("stream", stream)])
            .absolute(count);
    }
    for (outcome, count) in state.materials.poll_counts() {
        metrics
            .counter("ferrocd_material_polls_total", &[("outcome", outcome)])
            .absolute(count);
    }
    metrics
        .gauge("ferrocd_on_duty", &[])
        .set(if state.duty.is_mine() { 1.0 } else { 0.0 });
    metrics
        .gauge("ferrocd_queue_length", &[])
        .set(state.scheduler.pending_count().await? as f64);
    for (result, count) in state.pipelines.instance_results().await? {
        metrics
            .gauge("ferrocd_pipeline_instances", &[("result", result)])
            .set(count as f64);
    }
    let mut by_state: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for agent in state.agents.list().await? {
        *by_state
            .entry((
                agent.agent_state.to_string(),
                agent.agent_config_state.to_string(),
            ))
            .or_default() += 1;
    }
    let mut seen = metrics
        .agent_states
        .lock()
        .expect("agent states lock poisoned");
    seen.extend(by_state.keys().cloned());
    for pair in seen.iter() {
        let (agent_state, config_state) = pair;
        metrics
            .gauge(
                "ferrocd_agents",
                &[("state", agent_state), ("config_state", config_state)],
            )
            .set(by_state.get(pair).copied().unwrap_or(0) as f64);
    }
    drop(seen);
    let mut response = metrics.handle.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}
