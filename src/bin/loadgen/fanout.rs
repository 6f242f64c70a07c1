//! Fan-out scenarios: N subscribers of `/agents/events`, one change at a time, and how long
//! each change takes to reach every one of them.
//!
//! - `queue`: a job nobody can take is scheduled; each subscriber parses `queued` with the
//!   new count (a later count shows an earlier change too, since counts coalesce).
//! - `agents`: 500 agents registered; changes disable a different agent each; each
//!   subscriber parses that agent's `agent-{uuid}` row showing Disabled, and the bytes that
//!   reached it are counted.
//!
//! The changes go through `target`; the subscribers connect to `subscribers`: the same
//! server, or with `--subscribe-to` another node on its database, which hears of each change
//! through PostgreSQL's NOTIFY once it has committed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::report::{self, Meter};
use crate::sse::{self, Heard, Matcher};
use crate::target::{REGISTRATION_KEY, Target};
use crate::{Fanout, PHASE_LIMIT};

/// One change made: its key (what subscribers see), when its call was sent and answered.
pub struct Change {
    pub key: u64,
    pub sent: Instant,
    pub answered: Instant,
}

pub async fn queue(target: &Target, subscribers: &Target, args: &Fanout) -> Result<(), String> {
    // A connection's first `queued` is its state (ready); every later one a change.
    let matcher: Matcher = Arc::new(|| {
        let mut ready = false;
        Box::new(
            move |event, data| match (event, data.trim().parse::<u64>()) {
                ("queued", Ok(_)) if !ready => {
                    ready = true;
                    Heard::Ready
                }
                ("queued", Ok(count)) => Heard::Change(count),
                _ => Heard::Other,
            },
        )
    });
    let base = current_queue(target).await?;
    let last = base + args.changes as u64;
    let tasks = sse::followers(
        args.subscribers,
        subscribers.addr,
        "/agents/events",
        matcher,
        Arc::new(move |seen| seen.last().is_some_and(|(count, _)| *count >= last)),
        PHASE_LIMIT * 2,
        sse::Settle::AFTER_LAST,
    )
    .await?;
    let client = client()?;
    let meter = Meter::start(target);
    let changes = make_changes(
        args,
        "schedule",
        |i| {
            client.post(target.url("/api/jobs/schedule")).json(&json!({
                "pipeline_name": "loadgen", "stage_name": "s", "job_name": format!("j{i}"),
                "tasks": [{"command": "true"}], "resources": ["no-agent-has-this"]
            }))
        },
        |i| base + i as u64 + 1,
    )
    .await?;
    let seen = sse::collect(tasks).await;
    let usage = meter.end();
    println!(
        "queue: {} subscribers, {} changes {} ms apart, {}",
        args.subscribers,
        args.changes,
        args.interval_ms,
        servers(target, subscribers)
    );
    print_delays(&changes, &seen, true);
    usage.print("during the changes");
    Ok(())
}

/// Makes `args.changes` changes one at a time, `interval_ms` apart: change `i` is the call
/// `request(i)`, which subscribers see as `key(i)`.
async fn make_changes(
    args: &Fanout,
    what: &str,
    request: impl Fn(usize) -> reqwest::RequestBuilder,
    key: impl Fn(usize) -> u64,
) -> Result<Vec<Change>, String> {
    let mut changes = Vec::with_capacity(args.changes);
    for i in 0..args.changes {
        let sent = Instant::now();
        let reply = request(i)
            .send()
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let answered = Instant::now();
        if !reply.status().is_success() {
            return Err(format!("{what} answered {}", reply.status()));
        }
        changes.push(Change {
            key: key(i),
            sent,
            answered,
        });
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    Ok(changes)
}

/// The pending count now: 0 on a fresh server; the floor's count is read from its stream.
async fn current_queue(target: &Target) -> Result<u64, String> {
    let reply = client()?
        .get(target.url("/api/scheduler"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !reply.status().is_success() {
        // The floor has no scheduler API; its count starts at 0.
        return Ok(0);
    }
    let body: serde_json::Value = reply.json().await.map_err(|e| e.to_string())?;
    Ok(body["pending_count"].as_u64().unwrap_or(0))
}

pub async fn agents(
    target: &Target,
    subscribers: &Target,
    args: &Fanout,
    agents: usize,
) -> Result<(), String> {
    if args.changes > agents {
        return Err(format!("--changes {} > --agents {agents}", args.changes));
    }
    let client = client()?;
    let uuids = register_agents(&client, target, agents).await?;
    // Change i (1-based) disables agent i-1.
    let keys: HashMap<String, u64> = uuids
        .iter()
        .take(args.changes)
        .enumerate()
        .map(|(i, uuid)| (format!("agent-{uuid}"), i as u64 + 1))
        .collect();
    // One render may send several rows in any order: done once every row has come.
    let expected = args.changes;
    let keys = Arc::new(keys);
    // Ready once the connection has every agent's row: registrations that came just before
    // it connected may still be on their way as `agent-added`.
    let matcher: Matcher = Arc::new(move || {
        let keys = Arc::clone(&keys);
        let mut rows = 0;
        Box::new(move |event, data| {
            match event {
                "agents" => rows = data.matches(" id=\"agent-").count(),
                "agent-added" => rows += 1,
                _ => {}
            }
            if rows >= agents && (event == "agents" || event == "agent-added") {
                return Heard::Ready;
            }
            match keys.get(event) {
                Some(key) if data.contains("data-config-state=\"Disabled\"") => Heard::Change(*key),
                _ => Heard::Other,
            }
        })
    });
    let tasks = sse::followers(
        args.subscribers,
        subscribers.addr,
        "/agents/events",
        matcher,
        Arc::new(move |seen| seen.len() >= expected),
        PHASE_LIMIT * 2,
        sse::Settle::AFTER_LAST,
    )
    .await?;
    let meter = Meter::start(target);
    let changes = make_changes(
        args,
        "disable",
        |i| {
            client
                .patch(target.url(&format!("/api/agents/{}", uuids[i])))
                .json(&json!({"agent_config_state": "Disabled"}))
        },
        |i| i as u64 + 1,
    )
    .await?;
    let seen = sse::collect(tasks).await;
    let usage = meter.end();
    println!(
        "agents: {agents} agents, {} subscribers, {} changes {} ms apart, {}",
        args.subscribers,
        args.changes,
        args.interval_ms,
        servers(target, subscribers)
    );
    print_delays(&changes, &seen, false);
    let bytes: u64 = seen.iter().map(|s| s.bytes).sum();
    println!(
        "  bytes per change per subscriber: {:.0}",
        bytes as f64 / (args.changes * args.subscribers).max(1) as f64
    );
    usage.print("during the changes");
    Ok(())
}

/// Registers `count` agents with the key (so they start Enabled), 16 at a time; their uuids.
pub async fn register_agents(
    client: &reqwest::Client,
    target: &Target,
    count: usize,
) -> Result<Vec<String>, String> {
    register_agents_with_tokens(client, target, count)
        .await
        .map(|agents| agents.into_iter().map(|(uuid, _)| uuid).collect())
}

/// As `register_agents`, with each agent's token.
pub async fn register_agents_with_tokens(
    client: &reqwest::Client,
    target: &Target,
    count: usize,
) -> Result<Vec<(String, String)>, String> {
    use futures::StreamExt;
    let registered: Vec<Result<(String, String), String>> = futures::stream::iter(0..count)
        .map(|i| async move { register_agent(client, target, &format!("loadgen-{i:05}")).await })
        .buffered(16)
        .collect()
        .await;
    registered.into_iter().collect()
}

/// Registers one agent with the key (so it starts Enabled): its uuid and token.
pub async fn register_agent(
    client: &reqwest::Client,
    target: &Target,
    hostname: &str,
) -> Result<(String, String), String> {
    let reply = client
        .post(target.url("/api/agents/register"))
        .header("X-Agent-Registration-Key", REGISTRATION_KEY)
        .json(&json!({ "hostname": hostname }))
        .send()
        .await
        .map_err(|e| format!("register: {e}"))?;
    if !reply.status().is_success() {
        return Err(format!("register answered {}", reply.status()));
    }
    let body: serde_json::Value = reply.json().await.map_err(|e| e.to_string())?;
    match (body["uuid"].as_str(), body["token"].as_str()) {
        (Some(uuid), Some(token)) => Ok((uuid.to_string(), token.to_string())),
        _ => Err(format!("register answered no uuid or token: {body}")),
    }
}

/// `server A`, or `server A, subscribers on B` when they connect to another node.
pub fn servers(target: &Target, subscribers: &Target) -> String {
    match target.addr == subscribers.addr {
        true => format!("server {}", target.addr),
        false => format!(
            "server {}, subscribers on {}",
            target.addr, subscribers.addr
        ),
    }
}

pub fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())
}

/// Each change's delay to every subscriber, from the answer and from the send; `cumulative`:
/// a later key also shows an earlier change (counts), else only the change's own key counts.
pub fn print_delays(changes: &[Change], seen: &[sse::Seen], cumulative: bool) {
    let (mut from_answer, mut from_send, mut missed) = (Vec::new(), Vec::new(), 0);
    for change in changes {
        for one in seen {
            let found = one.changes.iter().find(|(key, _)| {
                if cumulative {
                    *key >= change.key
                } else {
                    *key == change.key
                }
            });
            match found {
                Some((_, at)) => {
                    from_answer.push(report::ms_between(*at, change.answered));
                    from_send.push(report::ms_between(*at, change.sent));
                }
                None => missed += 1,
            }
        }
    }
    let answer: Vec<f64> = changes
        .iter()
        .map(|c| report::ms_between(c.answered, c.sent))
        .collect();
    println!("  from the answer: {}", report::ms(&from_answer));
    println!("  from the send:   {}", report::ms(&from_send));
    println!("  answer time:     {}", report::ms(&answer));
    println!("  missed: {missed} of {}", changes.len() * seen.len());
}
