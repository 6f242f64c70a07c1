//! `scheduler`: J jobs queued, then A simulated agents polling for work at once. Each agent
//! asks for work, and reports a run it was given `Completed` before it asks again (an agent
//! holds one run at a time). Reports assignments per second over the whole drain, the work
//! call's latency, and any build handed out twice (must be 0).
//!
//! With `--also-server` (another node on the same database) every other agent polls that node
//! and reports its runs to it; the jobs are scheduled and the agents registered through
//! `target`. A build handed out twice is counted across both, and each node's share and work
//! call latency is reported too.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use crate::PHASE_LIMIT;
use crate::fanout::{client, register_agents_with_tokens};
use crate::report::{self, Meter};
use crate::target::Target;

/// An agent told there is no work for it waits this long before asking again.
const IDLE_POLL: Duration = Duration::from_millis(5);

pub async fn scheduler(
    target: &Target,
    also: Option<&Target>,
    jobs: usize,
    agents: usize,
) -> Result<(), String> {
    let client = client()?;
    let registered = register_agents_with_tokens(&client, target, agents).await?;
    let queued_at = Instant::now();
    let scheduled: Vec<Result<(), String>> = futures::stream::iter(0..jobs)
        .map(|i| {
            let client = client.clone();
            async move {
                let reply = client
                    .post(target.url("/api/jobs/schedule"))
                    .json(&json!({
                        "pipeline_name": "loadgen", "stage_name": "s",
                        "job_name": format!("j{i:05}"), "tasks": [{"command": "true"}]
                    }))
                    .send()
                    .await
                    .map_err(|e| format!("schedule: {e}"))?;
                match reply.status().is_success() {
                    true => Ok(()),
                    false => Err(format!("schedule answered {}", reply.status())),
                }
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    scheduled.into_iter().collect::<Result<Vec<()>, String>>()?;
    let queue_seconds = queued_at.elapsed().as_secs_f64();

    let assigned = Arc::new(AtomicUsize::new(0));
    let meter = Meter::start(target);
    let started = Instant::now();
    let deadline = started + PHASE_LIMIT * 2;
    // Node 0 is `target`, node 1 `also`: agents take turns.
    let nodes: Vec<&Target> = std::iter::once(target).chain(also).collect();
    let turns = registered.into_iter().enumerate();
    let pollers = turns.map(|(i, (uuid, token))| {
        let client = client.clone();
        let assigned = Arc::clone(&assigned);
        let node = i % nodes.len();
        let polled = nodes[node];
        let work_url = polled.url(&format!("/api/agents/{uuid}/work"));
        async move {
            let mut mine = Vec::new();
            let mut work_ms = Vec::new();
            let mut no_work = 0;
            while assigned.load(Ordering::SeqCst) < jobs && Instant::now() < deadline {
                let asked = Instant::now();
                let reply = client
                    .post(&work_url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .map_err(|e| format!("work: {e}"))?;
                work_ms.push(report::ms_between(Instant::now(), asked));
                match reply.status().as_u16() {
                    200 => {
                        let work: serde_json::Value =
                            reply.json().await.map_err(|e| e.to_string())?;
                        let build = work["build_id"].as_i64().ok_or("WORK without build_id")?;
                        mine.push(build);
                        assigned.fetch_add(1, Ordering::SeqCst);
                        let done = client
                            .post(polled.url(&format!("/api/builds/{build}/status")))
                            .bearer_auth(&token)
                            .json(&json!({"job_state": "Completed", "result": "Passed"}))
                            .send()
                            .await
                            .map_err(|e| format!("status: {e}"))?;
                        if !done.status().is_success() {
                            return Err(format!("status answered {}", done.status()));
                        }
                    }
                    204 => {
                        no_work += 1;
                        tokio::time::sleep(IDLE_POLL).await;
                    }
                    other => return Err(format!("work answered {other}")),
                }
            }
            Ok::<_, String>((node, mine, work_ms, no_work))
        }
    });
    let results = futures::future::join_all(pollers).await;
    let seconds = started.elapsed().as_secs_f64();
    let usage = meter.end();
    let (mut builds, mut work_ms, mut no_work) = (Vec::new(), Vec::new(), 0);
    // Per node: its assignments and its work calls' times.
    let mut by_node = vec![(0, Vec::new()); nodes.len()];
    for result in results {
        let (node, mine, times, empty) = result?;
        by_node[node].0 += mine.len();
        by_node[node].1.extend_from_slice(&times);
        builds.extend(mine);
        work_ms.extend(times);
        no_work += empty;
    }
    let distinct: HashSet<i64> = builds.iter().copied().collect();
    match also {
        None => println!(
            "scheduler: {jobs} jobs, {agents} agents polling, server {}",
            target.addr
        ),
        Some(also) => println!(
            "scheduler: {jobs} jobs, {agents} agents polling, server {} and {} (every other \
             agent)",
            target.addr, also.addr
        ),
    }
    println!(
        "  queued in {queue_seconds:.2} s ({:.0} schedule calls/s, 8 at a time)",
        jobs as f64 / queue_seconds
    );
    println!(
        "  assigned {} in {seconds:.2} s: {:.0} assignments/s (each run reported Completed too)",
        builds.len(),
        builds.len() as f64 / seconds
    );
    println!("  work call: {}", report::ms(&work_ms));
    if nodes.len() > 1 {
        for (node, (count, times)) in nodes.iter().zip(&by_node) {
            println!(
                "  through {}: assigned {count}, work call {}",
                node.addr,
                report::ms(times)
            );
        }
    }
    // While jobs are queued, a 204 means the agent lost every candidate it read to others.
    println!("  answered no work (204): {no_work}");
    println!("  assigned twice: {}", builds.len() - distinct.len());
    println!("  left unassigned: {}", jobs.saturating_sub(distinct.len()));
    usage.print("while draining");
    Ok(())
}
