//! `lines` (line latency): a real `ferrocd agent` (the binary beside the loadgen) runs a job
//! whose task is `loadgen ticker`, which prints a numbered line stamped with the monotonic
//! clock every few milliseconds; F subscribers follow the build's console and stamp each
//! line as they parse it on the same clock (Linux's `CLOCK_MONOTONIC` is one clock for every
//! process of the machine). The report gives the delay from print to parse over every line
//! printed after a subscriber was following, and any line missing or out of order.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::fanout::client;
use crate::report::{self, Meter};
use crate::sse::{self, Heard, Matcher, Settle};
use crate::target::{REGISTRATION_KEY, Target};
use crate::{Lines, PHASE_LIMIT};

/// The monotonic clock, in nanoseconds: what `Instant` reads on Linux, as a number other
/// processes can compare.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: reading a clock into a valid struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The task: `count` lines `tick N NANOS`, one every `every`, on a fixed cadence (a late
/// line does not push the later ones back).
pub fn ticker(count: u64, every: Duration) {
    let start = Instant::now();
    let mut out = std::io::stdout().lock();
    for n in 0..count {
        let due = start + every * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let _ = writeln!(out, "tick {n} {}", monotonic_ns());
        let _ = out.flush();
    }
}

/// `ferrocd agent` in its own temp work dir, killed when dropped.
struct Agent {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_agent(target: &Target) -> Result<Agent, String> {
    let dir = std::env::temp_dir().join(format!(
        "ferrocd-loadgen-agent-{}-{}",
        std::process::id(),
        crate::target::free_port()
    ));
    let binary = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .with_file_name("ferrocd");
    let child = Command::new(&binary)
        .arg("agent")
        .args(["--server", &target.url("")])
        .args(["--registration-key", REGISTRATION_KEY])
        .arg("--work-dir")
        .arg(&dir)
        .args(["--hostname", "loadgen-lines"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    Ok(Agent { child, dir })
}

pub async fn lines(target: &Target, args: &Lines) -> Result<(), String> {
    let client = client()?;
    let agent = start_agent(target)?;
    let ticker = std::env::current_exe().map_err(|e| e.to_string())?;
    let reply = client
        .post(target.url("/api/jobs/schedule"))
        .json(&json!({
            "pipeline_name": "loadgen", "stage_name": "lines", "job_name": "ticker",
            "tasks": [{
                "command": ticker.to_string_lossy(),
                "args": ["ticker", "--lines", args.lines.to_string(),
                         "--every-ms", args.every_ms.to_string()]
            }]
        }))
        .send()
        .await
        .map_err(|e| format!("schedule: {e}"))?;
    if !reply.status().is_success() {
        return Err(format!("schedule answered {}", reply.status()));
    }
    let run: serde_json::Value = reply.json().await.map_err(|e| e.to_string())?;
    let build = run["build_id"]
        .as_i64()
        .ok_or("schedule answered no build_id")?;

    // Per follower: the delay of each line printed after it was following, in ms.
    let delays: Arc<Mutex<Vec<Vec<f64>>>> = Arc::default();
    let last = args.lines - 1;
    // A follower counts lines only while each continues the last: one missing or out of
    // order, and it never reaches the last line.
    let matcher: Matcher = {
        let delays = Arc::clone(&delays);
        Arc::new(move || {
            let delays = Arc::clone(&delays);
            let mut slot = None;
            let mut following_since = 0;
            let mut next = 0u64;
            let mut in_order = true;
            Box::new(move |event, data| match event {
                "status" if slot.is_none() => {
                    following_since = monotonic_ns();
                    let mut all = delays.lock().expect("delays");
                    all.push(Vec::new());
                    slot = Some(all.len() - 1);
                    Heard::Ready
                }
                "console" if in_order => {
                    let parsed = monotonic_ns();
                    let mut mine = Vec::new();
                    for text in data.split("tick ").skip(1) {
                        let mut words = text.split(|c: char| !c.is_ascii_digit());
                        let (Some(Ok(n)), Some(Ok(printed))) = (
                            words.next().map(str::parse::<u64>),
                            words.next().map(str::parse::<u64>),
                        ) else {
                            continue;
                        };
                        if n != next {
                            in_order = false;
                            break;
                        }
                        next = n + 1;
                        if printed >= following_since {
                            mine.push(parsed.saturating_sub(printed) as f64 / 1e6);
                        }
                    }
                    if let Some(slot) = slot {
                        delays.lock().expect("delays")[slot].extend(mine);
                    }
                    match (in_order, next) {
                        (true, n) if n > 0 => Heard::Change(n - 1),
                        _ => Heard::Other,
                    }
                }
                _ => Heard::Other,
            })
        })
    };
    let run_limit = Duration::from_millis(args.lines * args.every_ms) + PHASE_LIMIT;
    let tasks = sse::followers(
        args.followers,
        target.addr,
        &format!("/builds/{build}/console/events"),
        matcher,
        Arc::new(move |seen| seen.last().is_some_and(|(n, _)| *n >= last)),
        run_limit,
        Settle::AFTER_LAST,
    )
    .await?;
    let meter = Meter::start(target);
    let seen = sse::collect(tasks).await;
    let usage = meter.end();
    drop(agent);
    let all: Vec<f64> = delays.lock().expect("delays").concat();
    let complete = seen
        .iter()
        .filter(|s| s.changes.last().is_some_and(|(n, _)| *n >= last))
        .count();
    println!(
        "lines: a real agent prints {} lines {} ms apart, {} followers, server {}",
        args.lines, args.every_ms, args.followers, target.addr
    );
    println!("  print to parse: {}", report::ms(&all));
    println!("  lines timed: {}", all.len());
    println!(
        "  followers with every line in order: {} of {}",
        complete, args.followers
    );
    usage.print("while the job ran");
    Ok(())
}
