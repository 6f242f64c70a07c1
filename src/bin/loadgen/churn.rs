//! `churn`: agents registering and being deleted (disabled, then deleted, as GoCD allows) at
//! a steady rate while N subscribers follow
//! `/agents/events`; then every subscriber's table must equal a fresh load of `/agents`.
//!
//! Each subscriber keeps the table as a browser would: the rows of `agents`, each
//! `agent-added` and `agent-{uuid}` replacing its row (empty data removing it), the last
//! `counts` strip. After the churn a marker agent registers; once a subscriber has its row
//! and its stream has been quiet for a moment, its table is compared with the rows and the
//! counts of `GET /agents`. The report gives how many ended equal (must be all), each
//! registration's delay to every subscriber, and the bytes per change per subscriber.
//!
//! With `--slow-readers S`, S more connections subscribe and never read a byte (each with a
//! small receive buffer, so the server's side fills at once): the server's RSS is sampled
//! during the churn and the others' figures show whether they were held back.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::fanout::{Change, client, print_delays};
use crate::report::{Meter, mb};
use crate::sse::{self, Heard, Matcher, Settle};
use crate::target::Target;
use crate::{Churn, PHASE_LIMIT};

/// How long a subscriber's stream must be quiet, once it has the marker, before its table
/// counts as final.
const QUIET: Duration = Duration::from_millis(750);

/// The marker agent's hostname, registered after the churn.
const MARKER: &str = "loadgen-churn-marker";

/// A table as a digest: each row's id with its text's hash, and the counts strip's hash.
#[derive(Default, Clone, PartialEq, Eq)]
struct Table {
    rows: HashMap<String, u64>,
    counts: u64,
}

impl Table {
    fn digest(&self) -> u64 {
        let mut rows: Vec<_> = self.rows.iter().collect();
        rows.sort();
        let mut hasher = DefaultHasher::new();
        rows.hash(&mut hasher);
        self.counts.hash(&mut hasher);
        hasher.finish()
    }

    /// Replaces every row with those of `html` (the inner HTML of `tbody#agents-body`).
    fn load(&mut self, html: &str) {
        self.rows.clear();
        for row in rows_of(html) {
            self.put(row);
        }
    }

    /// Replaces or inserts one row (`<tr … id="agent-…" …>…</tr>`).
    fn put(&mut self, row: &str) {
        if let Some(id) = row_id(row) {
            self.rows.insert(id.to_string(), hash(row));
        }
    }
}

fn hash(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Each `<tr …>…</tr>` of a table body (rows hold no nested table).
fn rows_of(html: &str) -> Vec<&str> {
    let mut rows = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<tr ") {
        let Some(len) = rest[start..].find("</tr>") else {
            break;
        };
        rows.push(&rest[start..start + len + "</tr>".len()]);
        rest = &rest[start + len..];
    }
    rows
}

/// A row's `id`, from its opening tag.
fn row_id(row: &str) -> Option<&str> {
    let tag = &row[..row.find('>')?];
    let at = tag.find(" id=\"")? + " id=\"".len();
    tag[at..].split('"').next()
}

/// The table a fresh load of `/agents` shows.
async fn fresh_table(client: &reqwest::Client, target: &Target) -> Result<Table, String> {
    let page = client
        .get(target.url("/agents"))
        .send()
        .await
        .map_err(|e| format!("/agents: {e}"))?
        .text()
        .await
        .map_err(|e| format!("/agents: {e}"))?;
    let body = page
        .split_once("id=\"agents-body\"")
        .and_then(|(_, after)| after.split_once('>'))
        .and_then(|(_, inner)| inner.split_once("</tbody>"))
        .map(|(rows, _)| rows)
        .ok_or("/agents has no tbody#agents-body")?;
    // The strip is the inner HTML of div#agent-counts; its own end is the first `</div>`
    // that closes as many as it opened.
    let counts = page
        .split_once("id=\"agent-counts\"")
        .and_then(|(_, after)| after.split_once('>'))
        .map(|(_, inner)| balanced_div(inner))
        .ok_or("/agents has no div#agent-counts")?;
    let mut table = Table::default();
    table.load(body);
    table.counts = hash(counts);
    Ok(table)
}

/// The text before the `</div>` that closes the div whose inner HTML starts `inner`.
fn balanced_div(inner: &str) -> &str {
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(next) = inner[at..].find("<").map(|i| at + i) {
        if inner[next..].starts_with("</div>") {
            if depth == 0 {
                return &inner[..next];
            }
            depth -= 1;
        } else if inner[next..].starts_with("<div") {
            depth += 1;
        }
        at = next + 1;
    }
    inner
}

pub async fn churn(target: &Target, args: &Churn) -> Result<(), String> {
    let client = client()?;
    let registrations = (args.rate * args.seconds) as usize;
    let marker_key = registrations as u64 + 1;
    // Each connection's final table digest, by the order its reading was made.
    let finals: Arc<Mutex<Vec<Option<u64>>>> = Arc::new(Mutex::new(vec![None; args.subscribers]));
    let next_slot = Arc::new(AtomicUsize::new(0));
    let matcher: Matcher = {
        let finals = Arc::clone(&finals);
        Arc::new(move || {
            let finals = Arc::clone(&finals);
            let slot = next_slot.fetch_add(1, Ordering::SeqCst);
            let mut table = Table::default();
            let mut marked = false;
            Box::new(move |event, data| {
                let heard = match event {
                    "agents" => {
                        table.load(data);
                        Heard::Ready
                    }
                    "counts" => {
                        table.counts = hash(data);
                        Heard::Other
                    }
                    _ if event.starts_with("agent-") => {
                        let added = event == "agent-added";
                        let key = match data {
                            "" => {
                                table.rows.remove(event);
                                None
                            }
                            row => {
                                table.put(row);
                                registration_key(row, marker_key).filter(|_| added)
                            }
                        };
                        if key == Some(marker_key) {
                            marked = true;
                        }
                        key.map_or(Heard::Other, Heard::Change)
                    }
                    _ => Heard::Other,
                };
                if marked && let Some(slot) = finals.lock().expect("finals").get_mut(slot) {
                    *slot = Some(table.digest());
                }
                heard
            })
        })
    };
    let tasks = sse::followers(
        args.subscribers,
        target.addr,
        "/agents/events",
        matcher,
        Arc::new(move |seen| seen.iter().any(|(key, _)| *key == marker_key)),
        PHASE_LIMIT * 2,
        Settle(QUIET),
    )
    .await?;
    let slow = open_slow_readers(target, args.slow_readers).await?;
    let meter = Meter::start(target);
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn(sample_rss(target.pid(), Arc::clone(&peak)));

    // The churn: one registration per tick; each agent is disabled and deleted `rate` ticks
    // (one second) after it registered.
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut alive = std::collections::VecDeque::new();
    let mut changes = Vec::with_capacity(registrations + 1);
    let mut deletions = 0;
    let started = Instant::now();
    for i in 0..registrations {
        tick.tick().await;
        let sent = Instant::now();
        let uuid = register(&client, target, &hostname(i)).await?;
        changes.push(Change {
            key: i as u64 + 1,
            sent,
            answered: Instant::now(),
        });
        alive.push_back(uuid);
        if alive.len() > args.rate as usize
            && let Some(oldest) = alive.pop_front()
        {
            delete(&client, target, &oldest).await?;
            deletions += 1;
        }
    }
    let churn_seconds = started.elapsed().as_secs_f64();
    let sent = Instant::now();
    register(&client, target, MARKER).await?;
    changes.push(Change {
        key: marker_key,
        sent,
        answered: Instant::now(),
    });
    let seen = sse::collect(tasks).await;
    sampler.abort();
    let usage = meter.end();
    let fresh = fresh_table(&client, target).await?;
    let fresh_rows = fresh.rows.len();
    let fresh = fresh.digest();
    let finals = finals.lock().expect("finals").clone();
    let equal = finals.iter().filter(|d| **d == Some(fresh)).count();

    println!(
        "churn: {registrations} registrations and {deletions} deletions in {churn_seconds:.1} s \
         ({} a second asked), {} subscribers, {} slow readers, server {}",
        args.rate, args.subscribers, args.slow_readers, target.addr
    );
    println!(
        "  ended equal to a fresh load ({fresh_rows} rows and the counts): {equal} of {}",
        args.subscribers
    );
    print_delays(&changes, &seen, false);
    let bytes: u64 = seen.iter().map(|s| s.bytes).sum();
    // A deletion is two changes: the disable and the delete.
    let made = registrations + 2 * deletions + 1;
    println!(
        "  bytes per change per subscriber: {:.0}",
        bytes as f64 / (made * args.subscribers).max(1) as f64
    );
    let peak = peak.load(Ordering::SeqCst);
    if peak > 0 {
        println!("  server RSS peak during the churn: {}", mb(peak));
    }
    usage.print("during the churn");
    drop(slow);
    Ok(())
}

/// The registration a row shows by its hostname: `loadgen-churn-00012` is 13; the marker
/// is `marker_key`.
fn registration_key(row: &str, marker_key: u64) -> Option<u64> {
    if row.contains(&format!(">{MARKER}<")) {
        return Some(marker_key);
    }
    let at = row.find(">loadgen-churn-")? + ">loadgen-churn-".len();
    let digits: String = row[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<u64>().ok().map(|i| i + 1)
}

fn hostname(i: usize) -> String {
    format!("loadgen-churn-{i:05}")
}

async fn register(
    client: &reqwest::Client,
    target: &Target,
    hostname: &str,
) -> Result<String, String> {
    crate::fanout::register_agent(client, target, hostname)
        .await
        .map(|(uuid, _)| uuid)
}

/// Disables the agent (only Disabled agents may be deleted, as in GoCD), then deletes it.
async fn delete(client: &reqwest::Client, target: &Target, uuid: &str) -> Result<(), String> {
    let reply = client
        .patch(target.url(&format!("/api/agents/{uuid}")))
        .json(&json!({"agent_config_state": "Disabled"}))
        .send()
        .await
        .map_err(|e| format!("disable: {e}"))?;
    if !reply.status().is_success() {
        return Err(format!("disable answered {}", reply.status()));
    }
    let reply = client
        .delete(target.url(&format!("/api/agents/{uuid}")))
        .send()
        .await
        .map_err(|e| format!("delete: {e}"))?;
    match reply.status().is_success() {
        true => Ok(()),
        false => Err(format!("delete answered {}", reply.status())),
    }
}

/// `count` subscribers that send their request and never read: each socket's receive
/// buffer is made small first, so what the server sends piles up on its side.
async fn open_slow_readers(
    target: &Target,
    count: usize,
) -> Result<Vec<tokio::net::TcpStream>, String> {
    use tokio::io::AsyncWriteExt;
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .set_recv_buffer_size(4096)
            .map_err(|e| e.to_string())?;
        let mut stream = socket
            .connect(target.addr)
            .await
            .map_err(|e| format!("slow reader: {e}"))?;
        stream
            .write_all(
                format!(
                    "GET /agents/events HTTP/1.0\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
                    target.addr
                )
                .as_bytes(),
            )
            .await
            .map_err(|e| format!("slow reader: {e}"))?;
        streams.push(stream);
    }
    Ok(streams)
}

/// Keeps the largest RSS of `pid` seen, every 200 ms, until aborted.
async fn sample_rss(pid: Option<u32>, peak: Arc<AtomicU64>) {
    let Some(pid) = pid else { return };
    loop {
        if let Some(rss) = crate::target::rss_of(pid) {
            peak.fetch_max(rss, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
