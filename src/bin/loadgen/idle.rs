//! `idle`: N open `/agents/events` streams that nothing changes, and what each costs the
//! server in resident memory (its RSS before opening them and once all have their first
//! state, then again a moment after they closed).

use std::sync::Arc;
use std::time::Duration;

use crate::report::mb;
use crate::sse::{self, Heard, Matcher};
use crate::target::Target;
use crate::{Fanout, PHASE_LIMIT};

/// After the streams are open, and after they close, the server's RSS is read this long
/// later too, and the larger reading kept: allocators hand memory back lazily.
const SETTLE: Duration = Duration::from_secs(2);

pub async fn idle(target: &Target, args: &Fanout) -> Result<(), String> {
    let before = target.rss_bytes();
    // Any first event means the stream is open and has its state.
    let matcher: Matcher = Arc::new(|| Box::new(|_, _| Heard::Ready));
    let tasks = sse::followers(
        args.subscribers,
        target.addr,
        "/agents/events",
        matcher,
        Arc::new(|_: &[_]| false),
        PHASE_LIMIT * 2,
        sse::Settle::NONE,
    )
    .await?;
    let open_now = target.rss_bytes();
    tokio::time::sleep(SETTLE).await;
    let open = open_now.max(target.rss_bytes());
    for task in &tasks {
        task.abort();
    }
    let _ = sse::collect(tasks).await;
    tokio::time::sleep(SETTLE).await;
    let closed = target.rss_bytes();
    println!(
        "idle: {} open streams, server {}",
        args.subscribers, target.addr
    );
    if let (Some(before), Some(open), Some(closed)) = (before, open, closed) {
        println!(
            "  server RSS: {} before, {} open, {} after they closed",
            mb(before),
            mb(open),
            mb(closed)
        );
        println!(
            "  per stream: {:.1} KiB",
            open.saturating_sub(before) as f64 / 1024.0 / args.subscribers.max(1) as f64
        );
    } else {
        println!("  server RSS: unknown (a server the loadgen did not start)");
    }
    Ok(())
}
