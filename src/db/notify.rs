//! Events between nodes on PostgreSQL. A write's events travel as `NOTIFY` payloads sent
//! inside its transaction, so another node hears of a change only once it has committed, and
//! in commit order. Each node publishes what it hears from the others into its own hub, as if
//! the write had been its own (views re-read what an event names, from the shared database);
//! its own notices it skips, having published those at its commit.
//!
//! A node that lost its listening connection cannot know what it missed meanwhile: once it
//! listens again, every view and stream on it re-reads ([`Publisher::resync`]).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::dedicated_pool;
use crate::events::{DomainEvent, Publisher, Topic};

/// The one channel every node sends on and listens to.
pub const CHANNEL: &str = "ferrocd_events";

/// PostgreSQL refuses a payload of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7_900;

/// One notification: some of a write's events, in order, from the node that wrote; or, for
/// an event too large for any payload, the word that everything must be re-read.
#[derive(Serialize, Deserialize)]
struct Notice<E> {
    node: Uuid,
    #[serde(default = "Vec::new")]
    events: Vec<E>,
    #[serde(default)]
    resync: bool,
}

/// The payloads carrying `events`, written by `node`: as few as fit, in order.
pub fn payloads(node: Uuid, events: &[(Topic, DomainEvent)]) -> Vec<String> {
    let empty = |resync| {
        serde_json::to_string(&Notice::<()> {
            node,
            events: Vec::new(),
            resync,
        })
        .expect("a notice serialises")
    };
    // `{"node":"…","events":[` + items + `],"resync":false}`
    let overhead = empty(false).len();
    let mut payloads = Vec::new();
    let mut items: Vec<String> = Vec::new();
    let mut size = overhead;
    let flush = |items: &mut Vec<String>, payloads: &mut Vec<String>| {
        if !items.is_empty() {
            payloads.push(format!(
                r#"{{"node":"{node}","events":[{}],"resync":false}}"#,
                items.join(",")
            ));
            items.clear();
        }
    };
    for event in events {
        let item = serde_json::to_string(event).expect("an event serialises");
        if overhead + item.len() > MAX_PAYLOAD {
            flush(&mut items, &mut payloads);
            size = overhead;
            payloads.push(empty(true));
            continue;
        }
        if size + item.len() + 1 > MAX_PAYLOAD {
            flush(&mut items, &mut payloads);
            size = overhead;
        }
        size += item.len() + 1;
        items.push(item);
    }
    flush(&mut items, &mut payloads);
    payloads
}

/// What the listener heard next.
enum Heard {
    Notice(sqlx::Result<Option<PgNotification>>),
    /// The heartbeat's answer: `Err` if the connection did not answer within the beat.
    Beat(std::result::Result<(), String>),
}

/// Listens to the other nodes from now on (the first `LISTEN` has been answered when this
/// returns, so nothing committed afterwards is missed), publishing what they write here,
/// until `shutdown`.
///
/// Every `heartbeat` it asks its connection `SELECT 1` and waits as long for the answer: a
/// connection a NAT or firewall dropped without a word would otherwise leave this node deaf
/// for good. A check unanswered counts as a lost connection. (`try_recv` may be interrupted
/// by the beat: it takes a notification off the socket only once it has all of it.)
pub async fn listen(
    options: PgConnectOptions,
    node: Uuid,
    publisher: Arc<Publisher>,
    heartbeat: Duration,
    shutdown: CancellationToken,
) -> sqlx::Result<()> {
    let mut listener = Some(connect(&options, heartbeat).await?);
    tokio::spawn(async move {
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while let Some(current) = listener.as_mut() {
            let heard = tokio::select! {
                _ = shutdown.cancelled() => return,
                heard = current.try_recv() => Heard::Notice(heard),
                _ = beat.tick() => Heard::Beat(answer(current, heartbeat).await),
            };
            let lost = match heard {
                Heard::Notice(Ok(Some(notification))) => {
                    deliver(&publisher, node, notification.payload()).await;
                    continue;
                }
                Heard::Beat(Ok(())) => continue,
                // The connection closed (the listener does not connect again by itself).
                Heard::Notice(Ok(None)) => "the connection closed".to_string(),
                Heard::Notice(Err(error)) => error.to_string(),
                Heard::Beat(Err(error)) => error,
            };
            tracing::warn!(error = %lost, "lost the database connection for other nodes' events; connecting again");
            // Let the broken connection go: its pool goes with it, and a new one is made, as
            // letting it go may hang for minutes on a silent socket (it sends `UNLISTEN`).
            drop(listener.take());
            listener = reconnect(&options, heartbeat, &shutdown).await;
            if listener.is_none() {
                return;
            }
            tracing::info!("hearing other nodes' events again: every view re-reads");
            publisher.resync();
            beat.reset();
        }
    });
    Ok(())
}

/// Whether the listener's connection answers a query within `within`.
async fn answer(listener: &mut PgListener, within: Duration) -> std::result::Result<(), String> {
    match tokio::time::timeout(within, sqlx::query("SELECT 1").execute(&mut *listener)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer to a heartbeat within {within:?}")),
    }
}

/// Listens on a connection of its own. It never connects again by itself (sqlx's listener
/// would, inside `try_recv`, and a heartbeat interrupting that would hide that it happened):
/// every reconnect goes through [`reconnect`], so every one is followed by a resync.
async fn connect(options: &PgConnectOptions, heartbeat: Duration) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(&dedicated_pool(options, heartbeat)).await?;
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Tries again until it listens (`None`: shut down first), at most every 2 s.
async fn reconnect(
    options: &PgConnectOptions,
    heartbeat: Duration,
    shutdown: &CancellationToken,
) -> Option<PgListener> {
    let mut pause = Duration::from_millis(100);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(pause) => {}
        }
        match connect(options, heartbeat).await {
            Ok(listener) => return Some(listener),
            Err(error) => tracing::debug!(%error, "not listening yet"),
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

async fn deliver(publisher: &Publisher, node: Uuid, payload: &str) {
    match serde_json::from_str::<Notice<(Topic, DomainEvent)>>(payload) {
        Ok(notice) if notice.node == node => {}
        Ok(notice) if notice.resync => publisher.resync(),
        Ok(notice) => {
            let _turn = publisher.turn().await;
            for (topic, event) in notice.events {
                publisher.send(&topic, event);
            }
        }
        Err(error) => {
            // Another version of ferrocd, or a stray NOTIFY: we cannot tell what changed.
            tracing::warn!(%error, "a notice on {CHANNEL} did not parse: every view re-reads");
            publisher.resync();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(payload: &str) -> Notice<(Topic, DomainEvent)> {
        assert!(payload.len() < 8000, "{} bytes", payload.len());
        serde_json::from_str(payload).unwrap()
    }

    #[test]
    fn a_write_s_events_travel_in_order_in_as_few_payloads_as_fit() {
        let node = Uuid::new_v4();
        let events: Vec<(Topic, DomainEvent)> = (0..500)
            .map(|n| {
                (
                    Topic::JobRunsUpdates,
                    DomainEvent::RunUpdated { build_id: n },
                )
            })
            .collect();
        let sent = payloads(node, &events);
        assert!(sent.len() > 1 && sent.len() < 10, "{}", sent.len());
        let heard: Vec<_> = sent
            .iter()
            .flat_map(|p| {
                let notice = parse(p);
                assert_eq!(notice.node, node);
                assert!(!notice.resync);
                notice.events
            })
            .collect();
        assert_eq!(heard, events);
        assert!(payloads(node, &[]).is_empty(), "no events, no notice");
    }

    #[test]
    fn an_event_too_large_for_a_payload_becomes_a_resync_between_the_others() {
        let node = Uuid::new_v4();
        let huge = DomainEvent::PipelineUpdated {
            pipeline: "p".repeat(9000),
            counter: Some(1),
            stages: Vec::new(),
        };
        let small = |n| {
            (
                Topic::JobRunsUpdates,
                DomainEvent::RunUpdated { build_id: n },
            )
        };
        let sent = payloads(node, &[small(1), (Topic::PipelinesUpdates, huge), small(2)]);
        let notices: Vec<_> = sent.iter().map(|p| parse(p)).collect();
        assert_eq!(notices.len(), 3);
        assert_eq!(notices[0].events, vec![small(1)]);
        assert!(notices[1].resync && notices[1].events.is_empty());
        assert_eq!(notices[2].events, vec![small(2)]);
    }
}
