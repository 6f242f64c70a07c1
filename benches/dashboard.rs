//! The dashboard's two scaling claims, measured against the real server over real HTTP
//! (issue 9): `GET /pipelines` with 500 pipelines in 20 groups is served from a fixed number
//! of queries, so its time grows with the bytes it renders, not with round trips; and one
//! pipeline's change costs every `/pipelines/events` viewer that one pipeline's fragment,
//! not the dashboard again.
//!
//! For 50 and 500 pipelines it starts a server on a fresh data dir (as the API tests'
//! `spawn_app_with` does), stores the pipelines as GoCD YAML through `PUT /api/config/{name}`
//! (one document per group), triggers half of them, then:
//!
//! 1. times `GET /pipelines` (warm-ups, then many repetitions; min, median, p90): on the
//!    server (tower-http's `request` span, open to close: the handler and writing the body),
//!    at the client (to the last byte), and the data read alone (`Pipelines::dashboard`);
//!    and counts the SQL statements one page load runs (sqlx's own statement events,
//!    attributed to the request by that span);
//! 2. opens viewers on `/pipelines/events`, waits for each one's `dashboard` frame, then
//!    pauses and unpauses pipelines one change at a time and counts, per viewer, the SSE bytes
//!    that arrive until that pipeline's `pipeline-{name}` frame, and how long after the
//!    `POST`'s answer it arrived.
//!
//! Run with `cargo bench --bench dashboard` (see BENCHMARKS.md);
//! `FERROCD_BENCH_SIZES=50,500,2000` measures other sizes (ratios are to the first). Every
//! wait is bounded, so a server that never answers fails the run instead of hanging it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrocd::Application;
use ferrocd::config::Config;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// Pipeline counts measured unless `FERROCD_BENCH_SIZES` names others.
const SIZES: [usize; 2] = [50, 500];
const GROUPS: usize = 20;
const WARMUPS: usize = 5;
const REPETITIONS: usize = 50;
/// Page loads whose statements are counted (with statement logging on, so not timed).
const COUNTED_LOADS: usize = 5;
const VIEWERS: usize = 10;
/// Pause and unpause alternately: half as many pipelines as changes, each paused then unpaused.
const CHANGES: usize = 20;
/// More than the live view's coalescing window (50 ms in src/web/live.rs), so each change is
/// "the first after a quiet spell" and renders at once, alone.
const QUIET: Duration = Duration::from_millis(150);
/// The bound on every wait: a request, a frame, a settling view.
const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Counting statements and timing requests on the server: tower-http's TraceLayer opens a
// `request` span per request (kept open until the body has been written), and sqlx emits
// one `sqlx::query` event per statement, on its worker thread but inside the caller's span.
// Statement events are enabled only while `COUNTING` is set (the callsites' interest is
// rebuilt when it flips), so the timed loads pay for one span per request and nothing more.

static COUNTING: AtomicBool = AtomicBool::new(false);
static PAGE_STATEMENTS: AtomicU64 = AtomicU64::new(0);
static STATEMENT_KINDS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
/// How long each `GET /pipelines` request span was open, in ms.
static PAGE_SERVER_MS: Mutex<Vec<f64>> = Mutex::new(Vec::new());

/// The `uri` a `request` span was opened with, and when.
struct RequestSpan {
    uri: String,
    opened: Instant,
}

#[derive(Default)]
struct Fields {
    uri: Option<String>,
    summary: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl Fields {
    fn record(&mut self, field: &Field, value: String) {
        match field.name() {
            "uri" => self.uri = Some(value),
            "summary" => self.summary = Some(value),
            _ => {}
        }
    }
}

struct PageProbe;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for PageProbe {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "request" {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(uri), Some(span)) = (fields.uri, ctx.span(id)) {
            span.extensions_mut().insert(RequestSpan {
                uri,
                opened: Instant::now(),
            });
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        if let Some(request) = span.extensions().get::<RequestSpan>()
            && request.uri == "/pipelines"
        {
            PAGE_SERVER_MS
                .lock()
                .expect("server times lock")
                .push(ms(request.opened.elapsed()));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let in_page_load = scope.into_iter().any(|span| {
            span.extensions()
                .get::<RequestSpan>()
                .is_some_and(|request| request.uri == "/pipelines")
        });
        if !in_page_load {
            return;
        }
        PAGE_STATEMENTS.fetch_add(1, Ordering::SeqCst);
        let mut fields = Fields::default();
        event.record(&mut fields);
        let summary = fields.summary.unwrap_or_else(|| "?".into());
        *STATEMENT_KINDS
            .lock()
            .expect("statement kinds lock")
            .entry(summary)
            .or_default() += 1;
    }
}

fn install_page_probe() {
    let filter = tracing_subscriber::filter::filter_fn(|meta| {
        (meta.is_span() && meta.name() == "request")
            || (meta.target() == "sqlx::query" && COUNTING.load(Ordering::SeqCst))
    });
    let subscriber = tracing_subscriber::registry().with(PageProbe.with_filter(filter));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
}

// ---------------------------------------------------------------------------------------
// The server and its pipelines.

struct Server {
    base: String,
    state: ferrocd::AppState,
    stop: CancellationToken,
    running: tokio::task::JoinHandle<std::io::Result<()>>,
    _data: tempfile::TempDir,
}

async fn start_server() -> Server {
    let data = tempfile::tempdir().expect("a temp dir");
    let mut config = Config::for_data_dir(data.path());
    config.registrations_per_second = 0;
    let app = Application::build(config).await.expect("the server builds");
    let base = format!("http://{}", app.local_addr());
    let state = app.state();
    let stop = app.shutdown_token();
    let running = tokio::spawn(app.run_until_stopped());
    Server {
        base,
        state,
        stop,
        running,
        _data: data,
    }
}

impl Server {
    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(DEADLINE, self.running).await;
    }
}

fn pipeline_name(i: usize) -> String {
    format!("svc-{i:03}")
}

fn group_name(g: usize) -> String {
    format!("team-{g:02}")
}

/// One group's document: pipelines `i` with `i % GROUPS == group`, each with 2–3 stages of
/// 1–2 exec jobs and a git material.
fn group_document(group: usize, pipelines: usize) -> String {
    use std::fmt::Write;
    let mut yaml = String::from("format_version: 10\npipelines:\n");
    for i in (group..pipelines).step_by(GROUPS) {
        let name = pipeline_name(i);
        let _ = writeln!(yaml, "  {name}:");
        let _ = writeln!(yaml, "    group: {}", group_name(group));
        let _ = writeln!(yaml, "    label_template: \"1.{i}.${{COUNT}}\"");
        let _ = writeln!(yaml, "    materials:");
        let _ = writeln!(
            yaml,
            "      src: {{git: \"https://git.example.com/{name}.git\", branch: main}}"
        );
        let _ = writeln!(yaml, "    stages:");
        let stages = ["build", "test", "deploy"];
        for (s, stage) in stages.iter().enumerate().take(2 + i % 2) {
            let _ = writeln!(yaml, "      - {stage}:");
            let _ = writeln!(yaml, "          jobs:");
            for j in 0..1 + (i + s) % 2 {
                let _ = writeln!(yaml, "            {stage}-{j}:");
                let _ = writeln!(yaml, "              tasks:");
                let _ = writeln!(
                    yaml,
                    "                - exec: {{command: make, arguments: [{stage}, part-{j}]}}"
                );
            }
        }
    }
    yaml
}

fn client() -> reqwest::Client {
    // reqwest is built without a crypto provider of its own (Cargo.toml): name ring first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .expect("a client")
}

/// Stores the pipelines, triggers every other one, and waits until the dashboard's live view
/// has rendered everything that followed.
async fn load_pipelines(http: &reqwest::Client, server: &Server, pipelines: usize) {
    for group in 0..GROUPS {
        let reply = http
            .put(format!("{}/api/config/{}", server.base, group_name(group)))
            .header("Content-Type", "application/x-yaml")
            .body(group_document(group, pipelines))
            .send()
            .await
            .expect("PUT /api/config");
        let status = reply.status();
        let body = reply.text().await.unwrap_or_default();
        assert!(status.is_success(), "PUT config {group}: {status} {body}");
    }
    let configured = server
        .state
        .pipelines
        .configs()
        .snapshot()
        .pipelines()
        .count();
    assert_eq!(configured, pipelines, "every pipeline is configured");
    for i in (0..pipelines).step_by(2) {
        let reply = http
            .post(format!(
                "{}/go/api/pipelines/{}/schedule",
                server.base,
                pipeline_name(i)
            ))
            .header("Content-Type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("POST schedule");
        let status = reply.status();
        let body = reply.text().await.unwrap_or_default();
        assert_eq!(status, 202, "schedule {}: {body}", pipeline_name(i));
    }
    settle(server).await;
}

/// Waits until the dashboard view's render count stops moving for a while (bounded).
async fn settle(server: &Server) {
    let renders = || server.state.renders.get("dashboard.block");
    let deadline = Instant::now() + DEADLINE;
    let mut last = renders();
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = renders();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(500) {
            return;
        }
    }
    eprintln!("warning: the dashboard view was still rendering after {DEADLINE:?}");
}

// ---------------------------------------------------------------------------------------
// Figures.

#[derive(Clone, Copy)]
struct Spread {
    min: f64,
    median: f64,
    p90: f64,
    max: f64,
}

fn spread(mut values: Vec<f64>) -> Spread {
    assert!(!values.is_empty(), "no samples");
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    // Nearest rank.
    let p90 = values[(0.9 * n as f64).ceil() as usize - 1];
    Spread {
        min: values[0],
        median,
        p90,
        max: values[n - 1],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct PageFigures {
    page_bytes: usize,
    server_ms: Spread,
    load_ms: Spread,
    read_ms: Spread,
    statements_per_load: Vec<u64>,
    statement_kinds: BTreeMap<String, u64>,
}

async fn get_page(http: &reqwest::Client, base: &str) -> usize {
    let reply = http
        .get(format!("{base}/pipelines"))
        .send()
        .await
        .expect("GET /pipelines");
    assert_eq!(reply.status(), 200, "GET /pipelines");
    reply.bytes().await.expect("the page's body").len()
}

async fn measure_page(http: &reqwest::Client, server: &Server, pipelines: usize) -> PageFigures {
    let mut page_bytes = 0;
    for _ in 0..WARMUPS {
        page_bytes = get_page(http, &server.base).await;
    }
    // Every pipeline has its card.
    let html = http
        .get(format!("{}/pipelines", server.base))
        .send()
        .await
        .expect("GET /pipelines")
        .text()
        .await
        .expect("the page");
    for i in [0, pipelines / 2, pipelines - 1] {
        assert!(
            html.contains(&format!("id=\"pipeline-{}\"", pipeline_name(i))),
            "the page shows {}",
            pipeline_name(i)
        );
    }

    PAGE_SERVER_MS.lock().expect("lock").clear();
    let mut load = Vec::with_capacity(REPETITIONS);
    for _ in 0..REPETITIONS {
        let started = Instant::now();
        let bytes = get_page(http, &server.base).await;
        load.push(ms(started.elapsed()));
        assert_eq!(bytes, page_bytes, "the page did not change between loads");
    }
    // The last span may close a moment after its last byte was read.
    let until = Instant::now() + DEADLINE;
    while PAGE_SERVER_MS.lock().expect("lock").len() < REPETITIONS && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let server_ms = std::mem::take(&mut *PAGE_SERVER_MS.lock().expect("lock"));
    assert_eq!(
        server_ms.len(),
        REPETITIONS,
        "one request span per timed load"
    );

    let mut read = Vec::with_capacity(REPETITIONS);
    for _ in 0..REPETITIONS {
        let started = Instant::now();
        let views = server.state.pipelines.dashboard().await.expect("dashboard");
        read.push(ms(started.elapsed()));
        assert_eq!(views.len(), pipelines);
    }

    STATEMENT_KINDS.lock().expect("lock").clear();
    COUNTING.store(true, Ordering::SeqCst);
    tracing::callsite::rebuild_interest_cache();
    let mut statements_per_load = Vec::new();
    for _ in 0..COUNTED_LOADS {
        let before = PAGE_STATEMENTS.load(Ordering::SeqCst);
        get_page(http, &server.base).await;
        statements_per_load.push(PAGE_STATEMENTS.load(Ordering::SeqCst) - before);
    }
    COUNTING.store(false, Ordering::SeqCst);
    tracing::callsite::rebuild_interest_cache();
    let statement_kinds = std::mem::take(&mut *STATEMENT_KINDS.lock().expect("lock"));

    PageFigures {
        page_bytes,
        server_ms: spread(server_ms),
        load_ms: spread(load),
        read_ms: spread(read),
        statements_per_load,
        statement_kinds,
    }
}

// ---------------------------------------------------------------------------------------
// Viewers.

/// One SSE frame (or comment) as a viewer received it: its event name, its whole size in
/// bytes (`event:`, `id:`, `data:` lines and the blank line), and when its last byte came.
struct Frame {
    event: String,
    bytes: usize,
    at: Instant,
}

/// Opens `/pipelines/events` and forwards every frame; the task ends with the stream.
async fn open_viewer(http: &reqwest::Client, base: &str) -> mpsc::UnboundedReceiver<Frame> {
    let response = http
        .get(format!("{base}/pipelines/events"))
        .header("Accept", "text/event-stream")
        // The client's overall timeout would cut the stream: none for this one.
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .expect("GET /pipelines/events");
    assert_eq!(response.status(), 200, "GET /pipelines/events");
    let (tx, rx) = mpsc::unbounded_channel();
    let mut body = response.bytes_stream();
    tokio::spawn(async move {
        let mut buffer: Vec<u8> = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            let at = Instant::now();
            buffer.extend_from_slice(&chunk);
            // Frames end with a blank line; no data line is empty (src/web/sse.rs).
            while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&frame);
                let event = text
                    .lines()
                    .find_map(|line| line.strip_prefix("event: "))
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        if text.starts_with(':') {
                            ":comment".into()
                        } else {
                            "message".into()
                        }
                    });
                let sent = tx.send(Frame {
                    event,
                    bytes: frame.len(),
                    at,
                });
                if sent.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The next frame, or `None` at the deadline or the stream's end.
async fn next_frame(viewer: &mut mpsc::UnboundedReceiver<Frame>, until: Instant) -> Option<Frame> {
    let left = until.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, viewer.recv())
        .await
        .ok()
        .flatten()
}

struct ChangeFigures {
    dashboard_bytes: usize,
    /// Per change and viewer: the bytes from the change's `POST` to its `pipeline-{name}`.
    bytes: Vec<f64>,
    /// Per change and viewer: from the `POST`'s answer to the frame (0 if it came first).
    latency_ms: Vec<f64>,
    /// Per change: the last viewer's latency.
    last_viewer_ms: Vec<f64>,
    /// Frames other than the expected one that arrived with a change, by event name.
    others: BTreeMap<String, usize>,
    /// Bytes that arrived between changes (keepalives, anything unasked for).
    between_bytes: usize,
    /// Frames that came before the `POST` was answered.
    early: usize,
    missed: usize,
    block_renders: u64,
    body_renders: u64,
}

async fn measure_changes(
    http: &reqwest::Client,
    server: &Server,
    pipelines: usize,
) -> ChangeFigures {
    let body_renders_before = server.state.renders.get("dashboard.body");
    let mut viewers = Vec::with_capacity(VIEWERS);
    for _ in 0..VIEWERS {
        viewers.push(open_viewer(http, &server.base).await);
    }
    let mut dashboard_bytes = 0;
    for (v, viewer) in viewers.iter_mut().enumerate() {
        let until = Instant::now() + DEADLINE;
        let (mut got_body, mut got_errors) = (false, false);
        while !(got_body && got_errors) {
            let frame = next_frame(viewer, until)
                .await
                .unwrap_or_else(|| panic!("viewer {v}: no dashboard within {DEADLINE:?}"));
            match frame.event.as_str() {
                "dashboard" => {
                    assert!(
                        dashboard_bytes == 0 || dashboard_bytes == frame.bytes,
                        "every viewer gets the same dashboard"
                    );
                    dashboard_bytes = frame.bytes;
                    got_body = true;
                }
                "config-errors" => got_errors = true,
                _ => {}
            }
        }
    }

    let mut figures = ChangeFigures {
        dashboard_bytes,
        bytes: Vec::new(),
        latency_ms: Vec::new(),
        last_viewer_ms: Vec::new(),
        others: BTreeMap::new(),
        between_bytes: 0,
        early: 0,
        missed: 0,
        block_renders: 0,
        body_renders: 0,
    };
    let block_renders_before = server.state.renders.get("dashboard.block");
    // Pipelines spread over the groups, triggered (even) and not (odd) in turn.
    let targets: Vec<String> = (0..CHANGES / 2)
        .map(|k| {
            let i = k * (pipelines / (CHANGES / 2) + 1) % pipelines;
            let i = if i % 2 == k % 2 {
                i
            } else {
                (i + 1) % pipelines
            };
            pipeline_name(i)
        })
        .collect();
    for change in 0..CHANGES {
        let name = &targets[change / 2];
        let pausing = change % 2 == 0;
        tokio::time::sleep(QUIET).await;
        for viewer in &mut viewers {
            while let Ok(frame) = viewer.try_recv() {
                figures.between_bytes += frame.bytes;
            }
        }
        let action = if pausing { "pause" } else { "unpause" };
        let request = http
            .post(format!("{}/go/api/pipelines/{name}/{action}", server.base))
            .header("Content-Type", "application/json");
        let request = if pausing {
            request.body(json!({"pause_cause": "bench"}).to_string())
        } else {
            request.body("{}")
        };
        let reply = request.send().await.expect("POST pause");
        let answered = Instant::now();
        let status = reply.status();
        let body = reply.text().await.unwrap_or_default();
        assert_eq!(status, 200, "{action} {name}: {body}");

        let expected = format!("pipeline-{name}");
        let until = Instant::now() + DEADLINE;
        let mut last_viewer: f64 = 0.0;
        for viewer in &mut viewers {
            let mut bytes = 0;
            loop {
                let Some(frame) = next_frame(viewer, until).await else {
                    figures.missed += 1;
                    break;
                };
                bytes += frame.bytes;
                if frame.event == expected {
                    let latency = match frame.at.checked_duration_since(answered) {
                        Some(after) => ms(after),
                        None => {
                            figures.early += 1;
                            0.0
                        }
                    };
                    figures.bytes.push(bytes as f64);
                    figures.latency_ms.push(latency);
                    last_viewer = last_viewer.max(latency);
                    break;
                }
                *figures.others.entry(frame.event).or_default() += 1;
            }
        }
        figures.last_viewer_ms.push(last_viewer);
    }
    figures.block_renders = server.state.renders.get("dashboard.block") - block_renders_before;
    figures.body_renders = server.state.renders.get("dashboard.body") - body_renders_before;
    figures
}

// ---------------------------------------------------------------------------------------

struct Run {
    pipelines: usize,
    page: PageFigures,
    changes: ChangeFigures,
}

fn sizes() -> Vec<usize> {
    let Ok(raw) = std::env::var("FERROCD_BENCH_SIZES") else {
        return SIZES.to_vec();
    };
    let sizes: Vec<usize> = raw
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("FERROCD_BENCH_SIZES: comma-separated counts")
        })
        .collect();
    assert!(
        sizes.iter().all(|n| *n >= CHANGES / 2),
        "FERROCD_BENCH_SIZES: at least {} pipelines each",
        CHANGES / 2
    );
    sizes
}

fn main() {
    // `cargo bench` passes `--bench`; other flags (a filter) are not ours to read.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    install_page_probe();
    let runs = runtime.block_on(async {
        let http = client();
        let mut runs = Vec::new();
        for pipelines in sizes() {
            eprintln!("dashboard bench: {pipelines} pipelines in {GROUPS} groups…");
            let server = start_server().await;
            load_pipelines(&http, &server, pipelines).await;
            let page = measure_page(&http, &server, pipelines).await;
            let changes = measure_changes(&http, &server, pipelines).await;
            server.stop().await;
            runs.push(Run {
                pipelines,
                page,
                changes,
            });
        }
        runs
    });
    report(&runs);
    let failed: usize = runs.iter().map(|r| r.changes.missed).sum();
    assert_eq!(failed, 0, "{failed} viewer(s) never got a change's frame");
}

fn triple(s: Spread) -> String {
    format!("{:.2}/{:.2}/{:.2}", s.min, s.median, s.p90)
}

fn report(runs: &[Run]) {
    println!();
    println!(
        "GET /pipelines: {WARMUPS} warm-ups, then {REPETITIONS} timed loads, ms min/median/p90. \
         server = the request's span (handler and body written); client = to the last byte, \
         loopback; read = Pipelines::dashboard() alone, {REPETITIONS} calls"
    );
    println!(
        "{:>9} | {:>10} | {:>10} | {:>20} | {:>20} | {:>20} | statements per load",
        "pipelines", "page bytes", "B/pipeline", "server ms", "client ms", "read ms"
    );
    for run in runs {
        let p = &run.page;
        println!(
            "{:>9} | {:>10} | {:>10} | {:>20} | {:>20} | {:>20} | {:?}",
            run.pipelines,
            p.page_bytes,
            p.page_bytes / run.pipelines,
            triple(p.server_ms),
            triple(p.load_ms),
            triple(p.read_ms),
            p.statements_per_load,
        );
    }
    for run in runs {
        println!(
            "  statements of {} loads at {} pipelines:",
            COUNTED_LOADS, run.pipelines
        );
        for (kind, count) in &run.page.statement_kinds {
            println!("    {count:>3} × {kind}");
        }
    }
    if let Some((first, rest)) = runs.split_first() {
        for run in rest {
            let ratio = |f: fn(&PageFigures) -> f64| f(&run.page) / f(&first.page);
            println!(
                "  ratios {}/{}: pipelines {:.1}, page bytes {:.2}, server median {:.2}, \
                 client median {:.2}, read median {:.2}",
                run.pipelines,
                first.pipelines,
                run.pipelines as f64 / first.pipelines as f64,
                ratio(|p| p.page_bytes as f64),
                ratio(|p| p.server_ms.median),
                ratio(|p| p.load_ms.median),
                ratio(|p| p.read_ms.median),
            );
        }
    }

    println!();
    println!(
        "/pipelines/events: {VIEWERS} viewers, {CHANGES} changes (pause, unpause, on {} \
         pipelines); bytes per change per viewer = the SSE bytes from the POST to that \
         pipeline's frame; latency from the POST's answer to the frame",
        CHANGES / 2
    );
    println!(
        "{:>9} | {:>15} | {:>20} | {:>9} | {:>18} | {:>15} | {:>13}",
        "pipelines",
        "dashboard bytes",
        "change B min/med/max",
        "med/dash",
        "latency ms med/p90",
        "last viewer med",
        "card renders"
    );
    for run in runs {
        let c = &run.changes;
        if c.bytes.is_empty() {
            println!("{:>9} | no change arrived", run.pipelines);
            continue;
        }
        let bytes = spread(c.bytes.clone());
        let latency = spread(c.latency_ms.clone());
        let last = spread(c.last_viewer_ms.clone());
        println!(
            "{:>9} | {:>15} | {:>20} | {:>9} | {:>18} | {:>15} | {:>13}",
            run.pipelines,
            c.dashboard_bytes,
            format!("{:.0}/{:.0}/{:.0}", bytes.min, bytes.median, bytes.max),
            format!("{:.4}", bytes.median / c.dashboard_bytes as f64),
            format!("{:.2}/{:.2}", latency.median, latency.p90),
            format!("{:.2}", last.median),
            format!("{} for {CHANGES}", c.block_renders),
        );
        println!(
            "  {} of {} frames arrived; other frames with a change: {:?}; bytes between \
             changes: {}; frames before the POST's answer: {}; dashboard bodies rendered for \
             {VIEWERS} viewers: {}",
            c.bytes.len(),
            CHANGES * VIEWERS,
            c.others,
            c.between_bytes,
            c.early,
            c.body_renders,
        );
    }
    if let Some((first, rest)) = runs.split_first() {
        let median = |c: &ChangeFigures| spread(c.bytes.clone()).median;
        for run in rest {
            if run.changes.bytes.is_empty() || first.changes.bytes.is_empty() {
                continue;
            }
            println!(
                "  ratios {}/{}: dashboard bytes {:.2}, change bytes median {:.2}",
                run.pipelines,
                first.pipelines,
                run.changes.dashboard_bytes as f64 / first.changes.dashboard_bytes as f64,
                median(&run.changes) / median(&first.changes),
            );
        }
    }
}
