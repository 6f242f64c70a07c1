//! `fleet` (agents at scale): A simulated agents, each pinging and then asking for work once
//! every interval, spread evenly over it, for a bounded time, with nothing queued. Reports the
//! server's CPU as a share of one core over that time, and the ping's and the work call's
//! latency.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::Fleet;
use crate::fanout::{client, register_agents_with_tokens};
use crate::report::{self, Meter};
use crate::target::Target;

pub async fn fleet(target: &Target, args: &Fleet) -> Result<(), String> {
    let client = client()?;
    let registered = register_agents_with_tokens(&client, target, args.agents).await?;
    let interval = Duration::from_millis(args.interval_ms);
    let meter = Meter::start(target);
    let started = Instant::now();
    let end = started + Duration::from_secs(args.seconds);
    let count = registered.len().max(1);
    let agents = registered
        .into_iter()
        .enumerate()
        .map(|(i, (uuid, token))| {
            let client = client.clone();
            let ping_url = target.url(&format!("/api/agents/{uuid}/ping"));
            let work_url = target.url(&format!("/api/agents/{uuid}/work"));
            // Agent i's first turn is i/A of the way into the interval, as if they had started
            // at random moments.
            let first = started + interval.mul_f64(i as f64 / count as f64);
            async move {
                let (mut ping_ms, mut work_ms) = (Vec::new(), Vec::new());
                let mut turn = first;
                while turn < end {
                    tokio::time::sleep_until(turn.into()).await;
                    turn += interval;
                    let asked = Instant::now();
                    let reply = client
                        .post(&ping_url)
                        .bearer_auth(&token)
                        .json(&json!({"agent_state": "Idle"}))
                        .send()
                        .await
                        .map_err(|e| format!("ping: {e}"))?;
                    if !reply.status().is_success() {
                        return Err(format!("ping answered {}", reply.status()));
                    }
                    let _ = reply.bytes().await;
                    ping_ms.push(report::ms_between(Instant::now(), asked));
                    let asked = Instant::now();
                    let reply = client
                        .post(&work_url)
                        .bearer_auth(&token)
                        .send()
                        .await
                        .map_err(|e| format!("work: {e}"))?;
                    if reply.status().as_u16() != 204 {
                        return Err(format!("work answered {}", reply.status()));
                    }
                    work_ms.push(report::ms_between(Instant::now(), asked));
                }
                Ok::<_, String>((ping_ms, work_ms))
            }
        });
    let results = futures::future::join_all(agents).await;
    let seconds = started.elapsed().as_secs_f64();
    let usage = meter.end();
    let (mut ping_ms, mut work_ms) = (Vec::new(), Vec::new());
    for result in results {
        let (pings, works) = result?;
        ping_ms.extend(pings);
        work_ms.extend(works);
    }
    println!(
        "fleet: {} agents pinging and polling every {} ms for {seconds:.1} s, server {}",
        args.agents, args.interval_ms, target.addr
    );
    println!(
        "  calls: {} pings, {} work polls ({:.0} calls/s)",
        ping_ms.len(),
        work_ms.len(),
        (ping_ms.len() + work_ms.len()) as f64 / seconds
    );
    println!("  ping: {}", report::ms(&ping_ms));
    println!("  work: {}", report::ms(&work_ms));
    if let Some(cpu) = usage.cpu_seconds {
        println!("  server CPU: {:.1} % of one core", cpu / seconds * 100.0);
    }
    usage.print("meanwhile");
    Ok(())
}
