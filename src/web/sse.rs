//! Server-Sent Events: framing, shared live views, and the one response helper every stream
//! goes through (keepalive, shutdown, headers).
//!
//! Frames are built once as `Bytes` and shared by every connection. We frame by hand rather
//! than with axum's `Event` because `Event::data` panics on a carriage return, and a hostname
//! or a console line may hold one.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// A comment line at least this often keeps proxies and browsers from timing the stream out.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// How far a connection may fall behind a live view before it gets fresh state instead.
const LIVE_CAPACITY: usize = 256;

/// One named event, framed. Every line of `data` becomes a `data:` line; a `\r`, `\r\n` or
/// `\n` in it ends a line, exactly as the SSE parser will split it, so no input can break the
/// framing.
pub fn frame(event: &str, id: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + event.len() + 32);
    out.push_str("event: ");
    out.push_str(&single_line(event));
    out.push_str("\nid: ");
    out.push_str(&single_line(id));
    out.push('\n');
    for line in data_lines(data) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

fn single_line(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '\r' | '\n' | '\0'))
        .collect()
}

fn data_lines(data: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

/// The shared output of one live view: the frames that make up the current state (sent
/// first to every new connection) and a broadcast of changes.
pub struct LiveView {
    changes: broadcast::Sender<Bytes>,
    state: RwLock<Vec<Bytes>>,
    ids: AtomicU64,
}

impl LiveView {
    pub fn new() -> Arc<LiveView> {
        Arc::new(LiveView {
            changes: broadcast::channel(LIVE_CAPACITY).0,
            state: RwLock::new(Vec::new()),
            ids: AtomicU64::new(0),
        })
    }

    /// The id of the next event (ids only grow, so a reconnect can be told apart).
    pub fn next_id(&self) -> String {
        (self.ids.fetch_add(1, Ordering::Relaxed) + 1).to_string()
    }

    /// Replace the state new connections start from. Call before `send`ing the change that
    /// led to it, so a connection that subscribes in between misses nothing.
    pub fn set_state(&self, frames: Vec<Bytes>) {
        *self.state.write().expect("live view lock poisoned") = frames;
    }

    pub fn state(&self) -> Vec<Bytes> {
        self.state.read().expect("live view lock poisoned").clone()
    }

    pub fn send(&self, frame: Bytes) {
        // No connection open is fine: the state is kept for the next one.
        let _ = self.changes.send(frame);
    }

    /// State first, then changes; a connection that falls behind gets the state again.
    pub fn stream(self: &Arc<Self>) -> impl Stream<Item = Bytes> + Send + use<> {
        let view = Arc::clone(self);
        let mut changes = view.changes.subscribe();
        async_stream::stream! {
            for frame in view.state() {
                yield frame;
            }
            loop {
                match changes.recv().await {
                    Ok(frame) => yield frame,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for frame in view.state() {
                            yield frame;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    }
}

/// Turns a stream of frames into a `text/event-stream` response: uncompressed, uncached,
/// unbuffered, with a keepalive comment every 15 s, ending when the server shuts down.
pub fn response(
    frames: impl Stream<Item = Bytes> + Send + 'static,
    shutdown: CancellationToken,
) -> Response {
    let body = async_stream::stream! {
        let mut frames = std::pin::pin!(frames);
        // Reconnect quickly after a dropped connection (the browser's default is ~3 s).
        yield Ok::<_, Infallible>(Bytes::from_static(b"retry: 1000\n\n"));
        let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                frame = frames.next() => match frame {
                    Some(frame) => yield Ok(frame),
                    None => break,
                },
                _ = keepalive.tick() => yield Ok(Bytes::from_static(b": keepalive\n\n")),
            }
        }
    };
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_every_line_ending_into_data_lines() {
        let f = frame("agent-1", "7", "<tr>a\rb\r\nc\nd</tr>");
        assert_eq!(
            std::str::from_utf8(&f).unwrap(),
            "event: agent-1\nid: 7\ndata: <tr>a\ndata: b\ndata: c\ndata: d</tr>\n\n"
        );
    }

    #[tokio::test]
    async fn a_connection_that_falls_behind_gets_the_state_again_not_a_gap() {
        use futures::StreamExt;
        let view = LiveView::new();
        view.set_state(vec![frame("agents", "1", "state v1")]);
        let mut stream = Box::pin(view.stream());
        assert_eq!(
            stream.next().await.unwrap(),
            frame("agents", "1", "state v1")
        );
        // More changes than the connection may fall behind by, none of them read yet.
        for i in 0..(LIVE_CAPACITY + 10) {
            view.set_state(vec![frame("agents", "2", &format!("state after {i}"))]);
            view.send(frame("agent-x", &i.to_string(), "row"));
        }
        let next = stream.next().await.unwrap();
        let last = LIVE_CAPACITY + 9;
        assert_eq!(
            next,
            frame("agents", "2", &format!("state after {last}")),
            "fresh state first"
        );
        // Then the changes still buffered follow.
        assert!(
            std::str::from_utf8(&stream.next().await.unwrap())
                .unwrap()
                .starts_with("event: agent-x")
        );
    }

    #[test]
    fn names_and_ids_cannot_break_the_frame() {
        let f = frame("a\nb", "1\r2", "");
        assert_eq!(
            std::str::from_utf8(&f).unwrap(),
            "event: ab\nid: 12\ndata: \n\n"
        );
    }
}

/// Live views that exist only while someone watches: one per key (an agent's run list, a
/// build's console), started by the first connection and dropped by the view's task once the
/// last connection has gone.
pub struct KeyedViews<K, V> {
    views: std::sync::Mutex<std::collections::HashMap<K, Arc<V>>>,
}

impl<K: std::hash::Hash + Eq + Clone, V> Default for KeyedViews<K, V> {
    fn default() -> Self {
        KeyedViews {
            views: Default::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone, V> KeyedViews<K, V> {
    /// The view for `key`, started with `start` if there is none. `attach` runs under the
    /// registry's lock, so a subscription it makes cannot race the view's retirement.
    pub fn attach<T>(
        &self,
        key: K,
        start: impl FnOnce() -> Arc<V>,
        attach: impl FnOnce(&Arc<V>) -> T,
    ) -> T {
        let mut views = self.views.lock().expect("views lock poisoned");
        let view = views.entry(key).or_insert_with(start);
        attach(view)
    }

    /// Removes `key`'s view if `idle` says nobody watches it; true if it was removed.
    pub fn retire_if(&self, key: &K, idle: impl FnOnce(&Arc<V>) -> bool) -> bool {
        let mut views = self.views.lock().expect("views lock poisoned");
        match views.get(key) {
            Some(view) if idle(view) => {
                views.remove(key);
                true
            }
            _ => false,
        }
    }
}

impl LiveView {
    /// How many connections follow this view now.
    pub fn watchers(&self) -> usize {
        self.changes.receiver_count()
    }
}

/// When a coalescing view should render next: at once after a quiet spell, else no sooner
/// than `every` after its last render, so a burst folds into one trailing render.
#[derive(Debug, Default)]
pub struct Coalescer {
    last_render: Option<tokio::time::Instant>,
    dirty: bool,
}

impl Coalescer {
    pub fn mark(&mut self) {
        self.dirty = true;
    }

    /// When to render, if something changed.
    pub fn due(&self, every: Duration) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        self.dirty
            .then(|| self.last_render.map_or(now, |at| (at + every).max(now)))
    }

    pub fn rendered(&mut self) {
        self.dirty = false;
        self.last_render = Some(tokio::time::Instant::now());
    }
}
