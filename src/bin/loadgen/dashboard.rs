//! `dashboard`: P pipelines in one config document, N subscribers of `/pipelines/events`,
//! and pipelines triggered at a steady rate: each trigger starts an instance whose first
//! stage goes Building (its job needs a resource no agent has, so nothing else changes).
//! Each subscriber parses that pipeline's `pipeline-{name}` card showing the new instance;
//! the report gives each change's delay to every subscriber, the bytes per change per
//! subscriber, and then the time `GET /pipelines` takes with every card on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fanout::{Change, client, print_delays};
use crate::report::{self, Meter};
use crate::sse::{self, Heard, Matcher, Settle};
use crate::target::Target;
use crate::{Dashboard, PHASE_LIMIT};

/// How many times the page is loaded, one after another, after the changes.
const PAGE_LOADS: usize = 20;

fn pipeline(i: usize) -> String {
    format!("loadgen-{i:04}")
}

/// One GoCD YAML document with `count` pipelines of one stage and one job each, in 10
/// groups.
fn document(count: usize) -> String {
    let mut yaml = String::from("format_version: 10\npipelines:\n");
    for i in 0..count {
        yaml.push_str(&format!(
            "  {}:\n    group: loadgen-{}\n    stages:\n      - build:\n          jobs:\n            \
             compile:\n              resources: [no-agent-has-this]\n              tasks:\n                \
             - exec: {{command: \"true\"}}\n",
            pipeline(i),
            i % 10
        ));
    }
    yaml
}

pub async fn dashboard(target: &Target, args: &Dashboard) -> Result<(), String> {
    let client = client()?;
    let reply = client
        .put(target.url("/api/config/loadgen"))
        .header("Content-Type", "application/x-yaml")
        .body(document(args.pipelines))
        .send()
        .await
        .map_err(|e| format!("config: {e}"))?;
    if !reply.status().is_success() {
        let status = reply.status();
        let body = reply.text().await.unwrap_or_default();
        return Err(format!("config answered {status}: {body}"));
    }
    let changes = args.changes;
    // Change i (1-based) triggers pipeline (i-1) mod P; its card then shows instance
    // ⌈i/P⌉ with the stage Building.
    let pipelines = args.pipelines;
    let matcher: Matcher = Arc::new(move || {
        Box::new(move |event, data| {
            if event == "dashboard" {
                return Heard::Ready;
            }
            let Some(i) = event
                .strip_prefix("pipeline-loadgen-")
                .and_then(|n| n.parse::<usize>().ok())
            else {
                return Heard::Other;
            };
            if !data.contains("data-status=\"Building\"") {
                return Heard::Other;
            }
            match instance_shown(data) {
                Some(counter) if counter >= 1 => {
                    Heard::Change(((counter - 1) * pipelines + i + 1) as u64)
                }
                _ => Heard::Other,
            }
        })
    });
    let tasks = sse::followers(
        args.subscribers,
        target.addr,
        "/pipelines/events",
        matcher,
        Arc::new(move |seen| seen.len() >= changes),
        PHASE_LIMIT * 2,
        Settle::AFTER_LAST,
    )
    .await?;
    let meter = Meter::start(target);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut made = Vec::with_capacity(changes);
    for i in 0..changes {
        tick.tick().await;
        let sent = Instant::now();
        let name = pipeline(i % pipelines);
        let reply = client
            .post(target.url(&format!("/go/api/pipelines/{name}/schedule")))
            .header("Accept", "application/vnd.go.cd.v1+json")
            .header("X-GoCD-Confirm", "true")
            .send()
            .await
            .map_err(|e| format!("schedule: {e}"))?;
        let answered = Instant::now();
        if !reply.status().is_success() {
            return Err(format!("schedule {name} answered {}", reply.status()));
        }
        made.push(Change {
            key: i as u64 + 1,
            sent,
            answered,
        });
    }
    let seen = sse::collect(tasks).await;
    let usage = meter.end();

    let mut page_ms = Vec::with_capacity(PAGE_LOADS);
    let mut page_bytes = 0;
    for _ in 0..PAGE_LOADS {
        let asked = Instant::now();
        let page = client
            .get(target.url("/pipelines"))
            .send()
            .await
            .map_err(|e| format!("/pipelines: {e}"))?
            .bytes()
            .await
            .map_err(|e| format!("/pipelines: {e}"))?;
        page_ms.push(report::ms_between(Instant::now(), asked));
        page_bytes = page.len();
    }
    println!(
        "dashboard: {} pipelines, {} subscribers, {changes} triggers at {}/s, server {}",
        args.pipelines, args.subscribers, args.rate, target.addr
    );
    print_delays(&made, &seen, false);
    let bytes: u64 = seen.iter().map(|s| s.bytes).sum();
    println!(
        "  bytes per change per subscriber: {:.0}",
        bytes as f64 / (changes * args.subscribers).max(1) as f64
    );
    usage.print("during the changes");
    println!(
        "  GET /pipelines ({} KiB): {}",
        page_bytes / 1024,
        report::ms(&page_ms)
    );
    Ok(())
}

/// The instance counter a card shows, from its label's link `/pipelines/{name}/{pc}/build_cause`.
fn instance_shown(card: &str) -> Option<usize> {
    let (before, _) = card.split_once("/build_cause\"")?;
    before.rsplit('/').next()?.parse().ok()
}
