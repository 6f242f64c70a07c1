//! The event streams, read as `curl -N` shows them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

fn row_event(uuid: &str) -> String {
    format!("agent-{uuid}")
}

/// The agent's row, sent alone (as a change or an addition) or within the whole table a
/// connection starts with, contains `needle`.
fn shows<'a>(uuid: &'a str, needle: &'a str) -> impl Fn(&SseEvent) -> bool + 'a {
    move |e: &SseEvent| {
        (e.event == row_event(uuid) || e.event == "agents" || e.event == "agent-added")
            && e.data.contains(&format!("id=\"agent-{uuid}\""))
            && e.data.contains(needle)
    }
}

#[tokio::test]
async fn agents_stream_starts_with_the_current_state() {
    let app = spawn_app().await;
    let agent = app.register("state-first").await;
    let mut stream = app.subscribe("/agents/events").await;
    assert_eq!(stream.content_type, "text/event-stream");
    assert_eq!(stream.cache_control, "no-cache");

    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(stream.next().await.expect("an event"));
    }
    let names: Vec<&str> = first.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["agents", "counts", "queued"]);
    assert_eq!(first[2].data, "0");
    assert!(
        first.iter().all(|e| !e.id.is_empty()),
        "every event has an id"
    );
    // The registration made just before connecting is in that state, or follows it: never lost.
    let row = format!("id=\"agent-{}\"", agent.uuid);
    if !first[0].data.contains(&row) {
        stream
            .wait_for("the registered agent", |e| {
                e.event == "agent-added" && e.data.contains(&row)
            })
            .await;
    }
}

#[tokio::test]
async fn two_subscribers_both_see_a_change_made_through_the_api() {
    let app = spawn_app().await;
    let agent = app.register_enabled("two-viewers").await;
    let mut one = app.subscribe("/agents/events").await;
    let mut two = app.subscribe("/agents/events").await;
    // The agent shown Enabled (in the state, or in a change right after it).
    let shown = shows(&agent.uuid, "data-config-state=\"Enabled\"");
    one.wait_for("the agent enabled", &shown).await;
    two.wait_for("the agent enabled", &shown).await;

    let (status, _) = app
        .put(&format!("/api/agents/{}/disable", agent.uuid))
        .await;
    assert_eq!(status, 200);

    for stream in [&mut one, &mut two] {
        let row = stream
            .wait_for("the disabled row", |e| e.event == row_event(&agent.uuid))
            .await;
        assert!(
            row.data.starts_with(&format!(
                "<tr class=\"agent-row\" id=\"agent-{}\"",
                agent.uuid
            )),
            "{}",
            row.data
        );
        assert!(
            row.data.contains("data-config-state=\"Disabled\""),
            "{}",
            row.data
        );
        let counts = stream.wait_for("the counts", |e| e.event == "counts").await;
        assert!(
            counts.data.contains("Disabled: <b>1</b>"),
            "{}",
            counts.data
        );
    }
}

#[tokio::test]
async fn an_added_or_removed_agent_is_one_row_not_the_whole_table() {
    let app = spawn_app().await;
    let keeper = app.register("keeper").await;
    let mut stream = app.subscribe("/agents/events").await;
    stream
        .wait_for("initial table", |e| e.event == "agents")
        .await;

    let agent = app.register("newcomer").await;
    // (The keeper may come as `agent-added` too, if the view had not sent it yet when the
    // stream started: the first state is what the view has sent, not what was just written.)
    let newcomer = format!("id=\"agent-{}\"", agent.uuid);
    let added = stream
        .wait_for("the newcomer's row", |e| {
            e.event == "agent-added" && e.data.contains(&newcomer)
        })
        .await;
    let rows = agent_rows(&added.data);
    assert_eq!(rows.len(), 1, "one row: {}", added.data);
    assert_eq!(rows[0].id, format!("agent-{}", agent.uuid));
    assert_eq!(
        rows[0].html, added.data,
        "the data is the row and nothing else"
    );
    assert!(!added.data.contains(&keeper.uuid), "{}", added.data);

    app.put(&format!("/api/agents/{}/disable", agent.uuid))
        .await;
    let (status, body) = app
        .send_json(
            Method::DELETE,
            &format!("/api/agents/{}", agent.uuid),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    stream
        .wait_for("the newcomer's row removed", |e| {
            e.event == row_event(&agent.uuid) && e.data.is_empty()
        })
        .await;
    let counts = stream.wait_for("the counts", |e| e.event == "counts").await;
    assert!(counts.data.contains("Total: <b>1</b>"), "{}", counts.data);
    // A marker: everything the changes caused has arrived before it.
    let marker = app.queue_marker().await.to_string();
    stream
        .wait_for("the marker", |e| e.event == "queued" && e.data == marker)
        .await;
    let tables: Vec<String> = stream
        .drain()
        .into_iter()
        .map(|e| e.event)
        .filter(|name| name == "agents")
        .collect();
    assert!(
        tables.is_empty(),
        "whole tables sent after connect: {tables:?}"
    );
}

#[tokio::test]
async fn lost_contact_is_published_without_any_request() {
    let app = spawn_app_with(|config| config.lost_contact_after = Duration::from_secs(1)).await;
    let agent = app.register_enabled("goes-quiet").await;
    let mut stream = app.subscribe("/agents/events").await;
    // No further request from here on: the server notices the silence by itself.
    let row = stream
        .wait_for(
            "LostContact",
            shows(&agent.uuid, "data-agent-state=\"LostContact\""),
        )
        .await;
    assert!(row.data.contains("Lost Contact"), "{}", row.data);
    assert_eq!(app.agent(&agent.uuid).await["agent_state"], "LostContact");

    // A ping is contact regained.
    let (status, _) = app
        .as_agent(&agent)
        .ping(json!({"agent_state": "Idle"}))
        .await
        .parts();
    assert_eq!(status, 200);
    stream
        .wait_for("contact regained", |e| {
            e.event == row_event(&agent.uuid) && e.data.contains("data-agent-state=\"Idle\"")
        })
        .await;
}

/// Contact from a busy fleet is written at most once per lag (see `agents::Contacts`): an
/// agent that keeps pinging and asking for work must never be shown silent, through many
/// sweeps, while one that stopped is lost on time.
#[tokio::test]
async fn an_agent_that_keeps_calling_is_never_shown_lost_while_a_silent_one_is() {
    let app = spawn_app_with(|config| config.lost_contact_after = Duration::from_secs(1)).await;
    let live = app.register_enabled("keeps-calling").await;
    let silent = app.register_enabled("goes-silent").await;
    let mut stream = app.subscribe("/agents/events").await;
    let started = tokio::time::Instant::now();
    let stop = AtomicBool::new(false);
    let live_shown_lost = AtomicBool::new(false);
    let live_row = row_event(&live.uuid);
    // Any change of the calling agent's row that shows it lost is the failure.
    let note = |e: &SseEvent| {
        if e.event == live_row && e.data.contains("data-agent-state=\"LostContact\"") {
            live_shown_lost.store(true, Ordering::SeqCst);
        }
    };
    let calls = async {
        while !stop.load(Ordering::SeqCst) {
            app.as_agent(&live)
                .ping(json!({"agent_state": "Idle"}))
                .await
                .expect(200);
            let (status, _) = app.as_agent(&live).work().await.parts();
            assert!(status == 200 || status == 204, "work request: {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let watch = async {
        let lost = shows(&silent.uuid, "data-agent-state=\"LostContact\"");
        stream
            .wait_for("the silent agent lost", |e| {
                note(e);
                lost(e)
            })
            .await;
        // Three lost-contact periods of calls in all: many sweeps, many calls that write
        // nothing. Then a change of the silent agent marks the end of what is watched.
        tokio::time::sleep_until(started + Duration::from_secs(3)).await;
        let (status, body) = app
            .put(&format!("/api/agents/{}/disable", silent.uuid))
            .await;
        assert_eq!(status, 200, "disable: {body}");
        let disabled = shows(&silent.uuid, "data-config-state=\"Disabled\"");
        stream
            .wait_for("the silent agent disabled", |e| {
                note(e);
                disabled(e)
            })
            .await;
        stop.store(true, Ordering::SeqCst);
    };
    tokio::join!(calls, watch);
    assert!(
        !live_shown_lost.load(Ordering::SeqCst),
        "the agent that kept calling was shown LostContact"
    );
    assert_eq!(app.agent(&live.uuid).await["agent_state"], "Idle");
}

/// A call the server refuses is not contact: an agent that only sends pings it cannot accept
/// (a state an agent may not report) is lost like a silent one.
#[tokio::test]
async fn an_agent_whose_pings_are_all_refused_is_lost_like_a_silent_one() {
    let app = spawn_app_with(|config| config.lost_contact_after = Duration::from_secs(1)).await;
    let agent = app.register_enabled("refused").await;
    app.as_agent(&agent)
        .ping(json!({"agent_state": "Idle"}))
        .await
        .expect(200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = app
            .as_agent(&agent)
            .ping(json!({"agent_state": "LostContact"}))
            .await
            .parts();
        assert_eq!(status, 422, "{body}");
        if app.agent(&agent.uuid).await["agent_state"] == "LostContact" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "refused pings kept the agent from being lost"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_burst_of_changes_ends_with_the_final_state_on_every_subscriber() {
    let app = spawn_app().await;
    let agent = app.register_enabled("burst").await;
    let mut one = app.subscribe("/agents/events").await;
    let mut two = app.subscribe("/agents/events").await;
    // The agent shown Enabled (in the state, or in a change right after it).
    let shown = shows(&agent.uuid, "data-config-state=\"Enabled\"");
    one.wait_for("the agent enabled", &shown).await;
    two.wait_for("the agent enabled", &shown).await;

    let path = format!("/api/agents/{}", agent.uuid);
    let writes = (0..40).map(|i| {
        let app = &app;
        let path = path.clone();
        async move {
            let (status, body) = app
                .send_json(
                    Method::PATCH,
                    &path,
                    json!({"resources": format!("burst-{i}")}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    });
    // Sequential, as fast as the server takes them: the last write is burst-39.
    for write in writes {
        write.await;
    }
    for stream in [&mut one, &mut two] {
        let last = stream
            .wait_for("the final state", shows(&agent.uuid, ">burst-39<"))
            .await;
        assert!(last.data.contains(">burst-39<"), "{}", last.data);
        // Nothing older may arrive after the final state.
        let later: Vec<_> = stream
            .drain()
            .into_iter()
            .filter(|e| {
                e.event == row_event(&agent.uuid) || e.event == "agents" || e.event == "agent-added"
            })
            .collect();
        assert!(
            later.iter().all(|e| e.data.contains("burst-39")),
            "stale rows after the final one: {later:?}"
        );
    }
}

#[tokio::test]
async fn a_hostname_with_markup_and_a_carriage_return_is_escaped_and_the_stream_survives() {
    let app = spawn_app().await;
    let mut stream = app.subscribe("/agents/events").await;
    stream
        .wait_for("initial table", |e| e.event == "agents")
        .await;

    let (status, body) = app
        .register_with(
            json!({"hostname": "evil<script>alert(1)</script>\rline"}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let uuid = body["uuid"].as_str().unwrap().to_string();
    let table = stream
        .wait_for("the new row", |e| {
            e.event == "agent-added" && e.data.contains(&uuid)
        })
        .await;
    assert!(
        table
            .data
            .contains("evil&lt;script&gt;alert(1)&lt;/script&gt;\u{FFFD}line"),
        "{}",
        table.data
    );
    assert!(!table.data.contains("<script>"));

    // The stream goes on: a later change still arrives.
    app.put(&format!("/api/agents/{uuid}/enable")).await;
    stream
        .wait_for("a later row", |e| {
            e.event == row_event(&uuid) && e.data.contains("data-config-state=\"Enabled\"")
        })
        .await;
}

#[tokio::test]
async fn the_queued_count_follows_the_scheduler() {
    let app = spawn_app().await;
    let mut stream = app.subscribe("/agents/events").await;
    stream
        .wait_for("initial queued count", |e| {
            e.event == "queued" && e.data == "0"
        })
        .await;
    for _ in 0..5 {
        app.queue_marker().await;
    }
    stream
        .wait_for("queued 5", |e| e.event == "queued" && e.data == "5")
        .await;

    // The page rendered after that shows it too.
    let html = app.get("/agents").await.text();
    assert!(
        html.contains(r#"<span id="queued-count" sse-swap="queued">5</span>"#),
        "{html}"
    );
}

async fn next_domain_event(stream: &mut SseClient) -> (String, Value) {
    let event = stream.next().await.expect("an event");
    let data = serde_json::from_str(&event.data).expect("JSON data");
    (event.event, data)
}

#[tokio::test]
async fn api_events_carries_the_five_agent_events_one_per_write() {
    let app = spawn_app().await;
    let mut stream = app.subscribe("/go/api/events?topics=agents:updates").await;
    let (name, data) = next_domain_event(&mut stream).await;
    assert_eq!(
        (name.as_str(), data),
        ("ready", json!({"topics": ["agents:updates"]}))
    );

    let agent = app.register("events").await;
    let (name, data) = next_domain_event(&mut stream).await;
    assert_eq!(name, "agent_registered");
    assert_eq!(data["uuid"], agent.uuid.as_str());
    assert_eq!(data["agent_config_state"], "Pending");

    let path = format!("/api/agents/{}", agent.uuid);
    // A write that changes nothing publishes nothing: the next event is the real change.
    app.send_json(Method::PATCH, &path, json!({"hostname": "events"}))
        .await;
    app.send_json(Method::PATCH, &path, json!({"hostname": "renamed"}))
        .await;
    let (name, data) = next_domain_event(&mut stream).await;
    assert_eq!(
        (name.as_str(), data["hostname"].as_str()),
        ("agent_updated", Some("renamed"))
    );

    app.put(&format!("{path}/enable")).await;
    let (name, data) = next_domain_event(&mut stream).await;
    assert_eq!(
        (name.as_str(), data["agent_config_state"].as_str()),
        ("agent_enabled", Some("Enabled"))
    );

    app.put(&format!("{path}/disable")).await;
    let (name, _) = next_domain_event(&mut stream).await;
    assert_eq!(name, "agent_disabled");

    let (status, _) = app.send_json(Method::DELETE, &path, json!({})).await;
    assert_eq!(status, 200);
    let (name, data) = next_domain_event(&mut stream).await;
    assert_eq!(
        (name.as_str(), data["uuid"].as_str()),
        ("agent_deleted", Some(agent.uuid.as_str()))
    );
}

#[tokio::test]
async fn api_events_serializes_each_event_once_for_every_stream_and_ends_on_the_stored_state() {
    let app = spawn_app().await;
    let agent = app.register_enabled("flipper").await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut stream = app.subscribe("/api/events?topics=agents:updates").await;
        let (name, _) = next_domain_event(&mut stream).await;
        assert_eq!(name, "ready");
        streams.push(stream);
    }
    let serialized_before = app.state.renders.get("api.event");

    // Racing writes: whatever order they commit in, the last event any stream hears carries
    // the state the API shows afterwards.
    let flips = (0..10).map(|i| {
        let path = format!(
            "/api/agents/{}/{}",
            agent.uuid,
            if i % 2 == 0 { "disable" } else { "enable" }
        );
        let app = &app;
        async move { app.put(&path).await }
    });
    futures::future::join_all(flips).await;
    let stored = app.agent(&agent.uuid).await["agent_config_state"].clone();
    let marker = app.register("marker").await;

    let mut heard = Vec::new();
    for stream in &mut streams {
        let mut events = Vec::new();
        loop {
            let (name, data) = next_domain_event(stream).await;
            if data["uuid"] == marker.uuid.as_str() {
                break;
            }
            events.push((name, data));
        }
        let (name, last) = events.last().expect("the flips were heard").clone();
        assert_eq!(last["agent_config_state"], stored, "{name}: {last}");
        heard.push(events.len());
    }
    assert!(
        heard.iter().all(|n| *n == heard[0]),
        "every stream hears the same: {heard:?}"
    );
    // One serialization per event (the flips and the marker), however many streams follow.
    let serialized = app.state.renders.get("api.event") - serialized_before;
    assert_eq!(serialized, heard[0] as u64 + 1, "{heard:?}");
}

#[tokio::test]
async fn api_events_carries_the_pending_count() {
    let app = spawn_app().await;
    let mut stream = app
        .subscribe("/api/events?topics=scheduler:updates,agents:updates")
        .await;
    let (name, _) = next_domain_event(&mut stream).await;
    assert_eq!(name, "ready");
    app.queue_marker().await;
    let (name, data) = next_domain_event(&mut stream).await;
    assert_eq!(
        (name.as_str(), data),
        ("pending_count", json!({"count": 1}))
    );
}

#[tokio::test]
async fn api_events_rejects_unknown_or_missing_topics() {
    let app = spawn_app().await;
    let (status, body) = app.get_json("/api/events?topics=agents:updates,nope").await;
    assert_eq!(status, 422);
    assert!(body["message"].as_str().unwrap().contains("nope"), "{body}");
    let (status, body) = app.get_json("/api/events").await;
    assert_eq!(status, 422);
    assert!(
        body["message"].as_str().unwrap().contains("topics"),
        "{body}"
    );
}

#[tokio::test]
async fn a_ping_that_changes_nothing_shown_publishes_nothing() {
    let app = spawn_app().await;
    let agent = app.register_enabled("quiet-pinger").await;
    let mut stream = app.subscribe("/api/events?topics=agents:updates").await;
    next_domain_event(&mut stream).await; // ready
    // Same state, new free space: stored silently.
    app.as_agent(&agent)
        .ping(json!({"agent_state": "Idle", "free_space": 42}))
        .await
        .expect(200);
    assert_eq!(app.agent(&agent.uuid).await["free_space"], 42);
    // A state change is published, and it is the first event after the silent ping.
    app.as_agent(&agent)
        .ping(json!({"agent_state": "Building"}))
        .await;
    let (name, data) = next_domain_event(&mut stream).await;
    assert_eq!(
        (name.as_str(), data["agent_state"].as_str()),
        ("agent_updated", Some("Building"))
    );
}

#[tokio::test]
async fn a_quiet_stream_sends_a_keepalive_comment_within_fifteen_seconds() {
    let app = spawn_app().await;
    let mut stream = app.subscribe("/agents/events").await;
    let started = std::time::Instant::now();
    // Nothing changes: the only thing left to arrive is the keepalive (DEADLINE is 20 s).
    let comment = tokio::time::timeout(DEADLINE, stream.comments.recv())
        .await
        .expect("a keepalive within the deadline")
        .expect("the stream is open");
    assert_eq!(comment, "keepalive");
    // 15 s by the server's clock; a little more on a busy machine.
    assert!(
        started.elapsed() <= std::time::Duration::from_secs(18),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn api_events_follows_only_agents_and_builds_that_exist() {
    let app = spawn_app().await;
    let nobody = "6f1d3c1e-0000-4000-8000-000000000000";
    let (status, body) = app
        .get_json(&format!(
            "/api/events?topics=agents:updates,agent_job_runs:{nobody}"
        ))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(message(&body).contains(nobody), "{body}");
    let (status, body) = app
        .get_json("/api/events?topics=agent_job_run_console:424242")
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        message(&body).contains("agent_job_run_console:424242"),
        "{body}"
    );

    let agent = app.register("real").await;
    let build = app.schedule_job("p", "j").await;
    let mut stream = app
        .subscribe(&format!(
            "/api/events?topics=agent_job_runs:{},agent_job_run_console:{build}",
            agent.uuid
        ))
        .await;
    assert_eq!(stream.next().await.unwrap().event, "ready");
}
