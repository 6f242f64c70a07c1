//! `console`: one build's agent uploads a log in fixed-size chunks, back to back, while F
//! subscribers follow `/builds/{id}/console/events`; then R subscribers read another build's
//! whole log from offset 0. Every line of the log is numbered and of one length, so each
//! subscriber checks that it got every byte, in order, once: it counts only lines that
//! continue exactly where the last one ended.
//!
//! The agent uploads to `target`; followers and readers connect to `subscribers`: the same
//! server, or with `--subscribe-to` another node on its database, whose console view re-reads
//! the shared log when NOTIFY tells it of an append.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::fanout::{client, register_agents_with_tokens, servers};
use crate::report::{self, Meter};
use crate::sse::{self, Heard, Matcher};
use crate::target::Target;
use crate::{Console, PHASE_LIMIT};

/// Each line's bytes, its newline included.
const LINE: usize = 64;

/// Line `n` of the log: its number, then padding, then a newline.
fn line(n: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(format!("{n:012} ").as_bytes());
    out.resize(start + LINE - 1, b'x');
    out.push(b'\n');
}

/// Reads one connection's console events: the offset up to which it has every line in
/// order. A line out of place stops the count, so the follower never reaches the end.
fn matcher() -> Matcher {
    Arc::new(|| {
        let mut next: u64 = 0;
        let mut broken = false;
        Box::new(move |event, data| match event {
            "status" => Heard::Ready,
            "console" if !broken => {
                for piece in data.split("data-end=\"").skip(1) {
                    let Some((end, rest)) = piece.split_once("\">") else {
                        broken = true;
                        break;
                    };
                    let expected_end = (next + 1) * LINE as u64;
                    // Parsed, not formatted: a follower reads about 1.6 million lines, and
                    // an allocation for each was a share of the loadgen's CPU that the server,
                    // on the same two cores, then lacked.
                    let text_ok = rest.as_bytes().get(12) == Some(&b' ')
                        && rest.get(..12).and_then(|n| n.parse::<u64>().ok()) == Some(next);
                    if end.parse::<u64>() != Ok(expected_end) || !text_ok {
                        broken = true;
                        break;
                    }
                    next += 1;
                }
                Heard::Change(next * LINE as u64)
            }
            _ => Heard::Other,
        })
    })
}

/// A build assigned to a fresh agent and Building: its id and the agent's token. Nothing
/// else is queued, so the new agent's work is the job just scheduled.
async fn building(
    client: &reqwest::Client,
    target: &Target,
    name: &str,
) -> Result<(i64, String), String> {
    let (uuid, token) = register_agents_with_tokens(client, target, 1)
        .await?
        .pop()
        .ok_or("no agent")?;
    let reply = client
        .post(target.url("/api/jobs/schedule"))
        .json(&json!({
            "pipeline_name": "loadgen", "stage_name": "console", "job_name": name,
            "tasks": [{"command": "true"}]
        }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !reply.status().is_success() {
        return Err(format!("schedule answered {}", reply.status()));
    }
    let work = client
        .post(target.url(&format!("/api/agents/{uuid}/work")))
        .bearer_auth(&token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if work.status().as_u16() != 200 {
        return Err(format!("work answered {}", work.status()));
    }
    let work: serde_json::Value = work.json().await.map_err(|e| e.to_string())?;
    let build = work["build_id"].as_i64().ok_or("WORK without build_id")?;
    let reply = client
        .post(target.url(&format!("/api/builds/{build}/status")))
        .bearer_auth(&token)
        .json(&json!({"job_state": "Building"}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !reply.status().is_success() {
        return Err(format!("status answered {}", reply.status()));
    }
    Ok((build, token))
}

/// Uploads `total` bytes of numbered lines in `chunk`-byte appends, one after another;
/// answers when the first was sent and when the last was answered.
async fn upload(
    client: &reqwest::Client,
    target: &Target,
    build: i64,
    token: &str,
    total: u64,
    chunk: usize,
) -> Result<(Instant, Instant), String> {
    let lines_per_chunk = (chunk / LINE).max(1) as u64;
    let total_lines = total / LINE as u64;
    let url = target.url(&format!("/api/builds/{build}/console"));
    let started = Instant::now();
    let mut answered = started;
    let mut n = 0;
    while n < total_lines {
        let mut body = Vec::with_capacity(chunk);
        let end = (n + lines_per_chunk).min(total_lines);
        let offset = n * LINE as u64;
        while n < end {
            line(n, &mut body);
            n += 1;
        }
        let reply = client
            .post(&url)
            .bearer_auth(token)
            .header("X-Console-Offset", offset.to_string())
            .header("Content-Type", "text/plain")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("console: {e}"))?;
        answered = Instant::now();
        if !reply.status().is_success() {
            return Err(format!("console append answered {}", reply.status()));
        }
    }
    Ok((started, answered))
}

pub async fn console(target: &Target, subscribers: &Target, args: &Console) -> Result<(), String> {
    let client = client()?;
    let total = args.bytes / LINE as u64 * LINE as u64;

    // Live: F followers while the log is written.
    let (build, token) = building(&client, target, "live").await?;
    let tasks = sse::followers(
        args.followers,
        subscribers.addr,
        &format!("/builds/{build}/console/events"),
        matcher(),
        Arc::new(move |seen| seen.last().is_some_and(|(reached, _)| *reached >= total)),
        PHASE_LIMIT * 2,
        sse::Settle::AFTER_LAST,
    )
    .await?;
    let meter = Meter::start(target);
    let (started, last_answer) = upload(&client, target, build, &token, total, args.chunk).await?;
    let seen = sse::collect(tasks).await;
    let usage = meter.end();
    let seconds = (last_answer - started).as_secs_f64();
    let mut last_line = Vec::new();
    let mut incomplete = 0;
    for one in &seen {
        match one.changes.iter().find(|(reached, _)| *reached >= total) {
            Some((_, at)) => last_line.push(report::ms_between(*at, last_answer)),
            None => incomplete += 1,
        }
    }
    println!(
        "console: {} in {} B chunks, {} followers, {}",
        report::mb(total),
        args.chunk,
        args.followers,
        servers(target, subscribers)
    );
    println!(
        "  ingest: {:.1} MB/s ({seconds:.2} s)",
        total as f64 / 1_048_576.0 / seconds
    );
    println!(
        "  last line after the last append's answer: {}",
        report::ms(&last_line)
    );
    println!(
        "  followers missing bytes or out of order: {incomplete} of {}",
        args.followers
    );
    usage.print("while uploading");

    // Replay: R readers of a whole stored log from offset 0.
    if args.replay_followers == 0 {
        return Ok(());
    }
    let replay_total = args.replay_bytes / LINE as u64 * LINE as u64;
    let (build, token) = building(&client, target, "replay").await?;
    upload(&client, target, build, &token, replay_total, args.chunk).await?;
    let meter = Meter::start(target);
    let opened = Instant::now();
    let tasks = sse::followers(
        args.replay_followers,
        subscribers.addr,
        &format!("/builds/{build}/console/events"),
        matcher(),
        Arc::new(move |seen| {
            seen.last()
                .is_some_and(|(reached, _)| *reached >= replay_total)
        }),
        PHASE_LIMIT * 2,
        sse::Settle::AFTER_LAST,
    )
    .await?;
    let seen = sse::collect(tasks).await;
    let usage = meter.end();
    let mut whole = Vec::new();
    let mut incomplete = 0;
    for one in &seen {
        match one
            .changes
            .iter()
            .find(|(reached, _)| *reached >= replay_total)
        {
            Some((_, at)) => whole.push(report::ms_between(*at, opened)),
            None => incomplete += 1,
        }
    }
    let slowest = whole.iter().copied().fold(0.0, f64::max) / 1000.0;
    println!(
        "  replay: {} readers of a {} log from offset 0: each had it all after {}",
        args.replay_followers,
        report::mb(replay_total),
        report::ms(&whole)
    );
    println!(
        "  replay: {:.1} MB/s delivered in all; readers missing bytes or out of order: {incomplete}",
        replay_total as f64 * (args.replay_followers - incomplete) as f64
            / 1_048_576.0
            / slowest.max(1e-9)
    );
    usage.print("while replaying");
    Ok(())
}
