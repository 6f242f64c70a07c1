//! What a change costs the live views: bytes on every open stream, and renders on the server.
//! A change sends the rows it touched, never the whole table; the whole table is rendered
//! only when a connection needs it, once however many connect.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

/// A stream read as raw bytes, kept whole, so a test can count what each change cost.
struct RawStream {
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl RawStream {
    async fn open(app: &TestApp, path: &str) -> RawStream {
        let response = http_client()
            .get(app.url(path))
            .header("Accept", "text/event-stream")
            .send()
            .await
            .expect("stream request");
        assert_eq!(response.status(), 200);
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&bytes);
        let mut body = response.bytes_stream();
        tokio::spawn(async move {
            while let Some(Ok(chunk)) = body.next().await {
                sink.lock().unwrap().extend_from_slice(&chunk);
            }
        });
        RawStream { bytes }
    }

    fn len(&self) -> usize {
        self.bytes.lock().unwrap().len()
    }

    fn text_from(&self, start: usize) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()[start..]).into_owned()
    }

    /// Waits until what arrived after `start` contains `needle`.
    async fn wait_for(&self, what: &str, start: usize, needle: &str) {
        eventually(what, || async {
            self.text_from(start).contains(needle).then_some(())
        })
        .await;
    }
}

/// Queues a marker job; returns what a stream shows for the pending count that follows. Once
/// a stream has it, it has everything the view rendered before.
async fn marker(app: &TestApp) -> String {
    let count = app.queue_marker().await;
    format!("\ndata: {count}\n\n")
}

/// Registers `n` Pending agents, a few at a time.
async fn register_many(app: &TestApp, n: usize) -> Vec<Registered> {
    let mut all = Vec::with_capacity(n);
    for batch in (0..n).collect::<Vec<_>>().chunks(25) {
        let registered = futures::future::join_all(
            batch
                .iter()
                .map(|i| async move { app.register(&format!("host-{i:04}")).await }),
        )
        .await;
        all.extend(registered);
    }
    all
}

/// After a change: every stream shows `expect`, and what each received for the change (up
/// to a marker sent after it) is under 5 KB and holds no whole table.
async fn assert_small(
    app: &TestApp,
    streams: &[RawStream],
    starts: &[usize],
    what: &str,
    expect: &str,
) {
    for (stream, start) in streams.iter().zip(starts) {
        stream.wait_for(what, *start, expect).await;
    }
    let end = marker(app).await;
    for (i, (stream, start)) in streams.iter().zip(starts).enumerate() {
        stream.wait_for("the marker", *start, &end).await;
        let sent = stream.text_from(*start);
        assert!(
            sent.len() < 5 * 1024,
            "{what}: connection {i} received {} bytes:\n{sent}",
            sent.len()
        );
        assert!(
            !sent.contains("event: agents\n"),
            "{what}: connection {i} received the whole table"
        );
    }
}

fn lengths(streams: &[RawStream]) -> Vec<usize> {
    streams.iter().map(RawStream::len).collect()
}

#[tokio::test]
async fn with_500_agents_a_register_a_disable_and_a_delete_each_send_under_5_kb() {
    // 500 Pending agents: more than the default cap on the Pending list.
    let app = spawn_app_with(|c| c.max_pending_agents = 1000).await;
    let agents = register_many(&app, 500).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let stream = RawStream::open(&app, "/agents/events").await;
        stream.wait_for("the first state", 0, "event: queued").await;
        streams.push(stream);
    }
    let first_state = streams[0].len();
    assert!(
        first_state > 500 * 500,
        "the first state holds every row ({first_state} bytes)"
    );

    let starts = lengths(&streams);
    app.register("newcomer").await;
    assert_small(
        &app,
        &streams,
        &starts,
        "a registration",
        "event: agent-added\n",
    )
    .await;

    let victim = &agents[250].uuid;
    let starts = lengths(&streams);
    let (status, _) = app.put(&format!("/api/agents/{victim}/disable")).await;
    assert_eq!(status, 200);
    let row = format!("event: agent-{victim}\n");
    assert_small(&app, &streams, &starts, "a disable", &row).await;

    let starts = lengths(&streams);
    let (status, body) = app
        .send_json(Method::DELETE, &format!("/api/agents/{victim}"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_small(&app, &streams, &starts, "a delete", &row).await;
    let removal = format!("event: agent-{victim}\nid: ");
    for (stream, start) in streams.iter().zip(&starts) {
        let sent = stream.text_from(*start);
        let at = sent.find(&removal).expect("the removal");
        let data = sent[at..].split("\n").nth(2).unwrap_or_default();
        assert_eq!(
            data, "data: ",
            "the removal is the row's event with empty data"
        );
    }
}

#[tokio::test]
async fn one_change_renders_one_row_and_the_table_waits_for_the_next_connection() {
    let app = spawn_app().await;
    let agents = register_many(&app, 20).await;
    let renders = &app.state.renders;
    let table_renders = || renders.get("agents.table");
    let row_renders = || renders.get("agents.row");

    // Once the view has sent every registration and one more change, it is quiet and its
    // cached table is out of date.
    let watcher = AgentsMirror::follow(&app).await;
    let (status, _) = app
        .put(&format!("/api/agents/{}/enable", agents[3].uuid))
        .await;
    assert_eq!(status, 200);
    eventually(
        "the watcher to have every row, the change included",
        || async {
            let (rows, _, _) = watcher.page();
            (rows.len() == 20 && rows.iter().any(|r| r.config_state == "Enabled")).then_some(())
        },
    )
    .await;

    // A hundred connections at once: each starts with the table, rendered once for all.
    let before = table_renders();
    let mut streams =
        futures::future::join_all((0..100).map(|_| app.subscribe("/agents/events"))).await;
    for stream in &mut streams {
        stream
            .wait_for("the first state", |e| e.event == "queued")
            .await;
    }
    assert_eq!(
        table_renders(),
        before + 1,
        "the table rendered once for 100 connections"
    );

    let (tables, rows) = (table_renders(), row_renders());
    let uuid = &agents[7].uuid;
    let (status, _) = app.put(&format!("/api/agents/{uuid}/enable")).await;
    assert_eq!(status, 200);
    let row_event = format!("agent-{uuid}");
    for stream in &mut streams {
        stream
            .wait_for("the enabled row", |e| e.event == row_event)
            .await;
    }
    assert_eq!(row_renders() - rows, 1, "one row render for one change");
    assert_eq!(table_renders(), tables, "no table render for a change");

    // The next connection needs the table: rendered once, then kept for the one after.
    let mut late = app.subscribe("/agents/events").await;
    let table = late
        .wait_for("the first state", |e| e.event == "agents")
        .await;
    assert!(
        table.data.contains("data-config-state=\"Enabled\""),
        "the table is current"
    );
    assert_eq!(table_renders(), tables + 1);
    let mut later = app.subscribe("/agents/events").await;
    later
        .wait_for("the first state", |e| e.event == "agents")
        .await;
    assert_eq!(
        table_renders(),
        tables + 1,
        "the table was kept, not rendered again"
    );
}

/// A seeded run of changes through the API, and then readers that apply the stream to a
/// map of rows (as a script would) hold exactly what a fresh load shows, row by row.
#[tokio::test]
async fn raw_readers_end_equal_to_a_fresh_load_after_random_changes() {
    let app = spawn_app().await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(AgentsMirror::follow(&app).await);
    }
    let mut agents: Vec<Registered> = Vec::new();
    let mut rng = 0x5eed_u64;
    let mut next = |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    for _ in 0..150 {
        match next(6) {
            _ if agents.len() < 3 => agents.push(app.register(&format!("h{}", next(30))).await),
            0 => agents.push(app.register(&format!("h{}", next(30))).await),
            1 => {
                let uuid = &agents[next(agents.len())].uuid;
                app.put(&format!("/api/agents/{uuid}/enable")).await;
            }
            2 => {
                let uuid = &agents[next(agents.len())].uuid;
                app.put(&format!("/api/agents/{uuid}/disable")).await;
            }
            3 => {
                let uuid = agents[next(agents.len())].uuid.clone();
                let body = json!({"hostname": format!("h{}", next(30))});
                app.send_json(Method::PATCH, &format!("/api/agents/{uuid}"), body)
                    .await;
            }
            4 => {
                let i = next(agents.len());
                let uuid = agents[i].uuid.clone();
                app.put(&format!("/api/agents/{uuid}/disable")).await;
                let path = format!("/api/agents/{uuid}");
                let (status, _) = app.send_json(Method::DELETE, &path, json!({})).await;
                if status == 200 {
                    agents.remove(i);
                }
            }
            _ => {
                app.schedule_job("waiting", "job").await;
            }
        }
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let fresh = loop {
        let fresh = app.fresh_agents_page().await;
        let report: Vec<String> = readers
            .iter()
            .map(|r| r.differences(&fresh).join("\n  "))
            .filter(|d| !d.is_empty())
            .collect();
        if report.is_empty() {
            break fresh;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readers differ from a fresh load:\n  {}",
            report.join("\n  ")
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    assert!(fresh.rows.len() >= 3);
    for reader in &readers {
        let tables = reader
            .events()
            .iter()
            .filter(|(name, _)| name == "agents")
            .count();
        assert_eq!(tables, 1, "only the first state is a whole table");
        let (rows, _, _) = reader.page();
        let mut ids: Vec<String> = rows.iter().map(|r| r.summary().0).collect();
        let mut expected: Vec<String> = fresh.summary().into_iter().map(|r| r.0).collect();
        ids.sort();
        expected.sort();
        assert_eq!(ids, expected);
    }
}
