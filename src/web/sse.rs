//! Server-Sent Events: framing, and the one response helper every stream goes through
//! (keepalive, shutdown, headers, and the slot that counts it against its client address's
//! `--max-streams-per-address`). The live views that produce the frames are in `live.rs`.
//!
//! Frames are built once as `Bytes` and shared by every connection. We frame by hand rather
//! than with axum's `Event` because `Event::data` panics on a carriage return, and a hostname
//! or a console line may hold one.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::error::Error;

/// A comment line at least this often keeps proxies and browsers from timing the stream out.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// One named event, framed. Every line of `data` becomes a `data:` line; a `\r`, `\r\n` or
/// `\n` in it ends a line, exactly as the SSE parser will split it, so no input can break the
/// framing.
pub fn frame(event: &str, id: &str, data: &str) -> Bytes {
    // Sized for every line's `data: ` at once: a console frame is many short lines, and growing
    // the buffer as it went copied it several times.
    let lines = memchr::memchr_iter(b'\n', data.as_bytes()).count() + 1;
    let mut out = String::with_capacity(data.len() + 7 * lines + event.len() + id.len() + 16);
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
        match memchr::memchr2(b'\r', b'\n', s.as_bytes()) {
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

/// The event streams open per client IP address, and the cap on them. A stream costs a
/// socket and a live-view subscriber for as long as the client keeps it, so without a cap
/// one client could hold all the server's files by opening streams it never reads.
pub struct StreamSlots {
    /// 0: no cap (and no counting).
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl StreamSlots {
    pub fn new(cap: usize) -> Arc<StreamSlots> {
        Arc::new(StreamSlots {
            cap,
            open: Mutex::default(),
        })
    }

    /// A slot for one more stream from `peer`, or 503 at the cap.
    pub fn take(self: &Arc<Self>, peer: IpAddr) -> Result<StreamSlot, Error> {
        if self.cap == 0 {
            return Ok(StreamSlot { held: None });
        }
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(peer).or_default();
        if *count >= self.cap {
            return Err(Error::Unavailable(format!(
                "{peer} has {} event streams open, the most one address may; close one and retry",
                self.cap
            )));
        }
        *count += 1;
        Ok(StreamSlot {
            held: Some((Arc::clone(self), peer)),
        })
    }

    /// How many streams `peer` has open (0 when uncapped: nothing is counted).
    pub fn open_from(&self, peer: IpAddr) -> usize {
        let open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        open.get(&peer).copied().unwrap_or(0)
    }
}

/// One open stream's place in its address's count; given back when the stream's body is
/// dropped (the stream ended, or its connection closed). Every handler of a stream takes one
/// as an extractor, so a stream over the cap is refused before any work is done for it.
pub struct StreamSlot {
    held: Option<(Arc<StreamSlots>, IpAddr)>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some((slots, peer)) = self.held.take() {
            let mut open = slots
                .open
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(count) = open.get_mut(&peer) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    open.remove(&peer);
                }
            }
        }
    }
}

impl FromRequestParts<AppState> for StreamSlot {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        // Behind the trusted proxy, each browser is the address the proxy vouches for.
        let peer = crate::web::auth::client_address(state, &parts.extensions, &parts.headers);
        state.stream_slots.take(peer)
    }
}

/// Turns a stream of frames into a `text/event-stream` response: uncompressed, uncached,
/// unbuffered, with a keepalive comment every 15 s, ending when the server shuts down. The
/// body holds `slot` for as long as it lives.
pub fn response(
    frames: impl Stream<Item = Bytes> + Send + 'static,
    slot: StreamSlot,
    shutdown: CancellationToken,
) -> Response {
    let body = async_stream::stream! {
        let _slot = slot;
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
    fn a_slot_is_refused_at_the_cap_and_given_back_when_dropped() {
        let slots = StreamSlots::new(2);
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let first = slots.take(peer).unwrap();
        let _second = slots.take(peer).unwrap();
        assert!(matches!(slots.take(peer), Err(Error::Unavailable(_))));
        assert!(slots.take(other).is_ok(), "the cap is per address");
        drop(first);
        assert_eq!(slots.open_from(peer), 1);
        assert!(slots.take(peer).is_ok());
    }

    #[test]
    fn a_cap_of_zero_counts_nothing() {
        let slots = StreamSlots::new(0);
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        let held: Vec<_> = (0..10).map(|_| slots.take(peer).unwrap()).collect();
        assert_eq!(held.len(), 10);
        assert_eq!(slots.open_from(peer), 0);
    }

    #[test]
    fn frames_split_every_line_ending_into_data_lines() {
        let f = frame("agent-1", "7", "<tr>a\rb\r\nc\nd</tr>");
        assert_eq!(
            std::str::from_utf8(&f).unwrap(),
            "event: agent-1\nid: 7\ndata: <tr>a\ndata: b\ndata: c\ndata: d</tr>\n\n"
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

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::frame;

    /// One event as an EventSource dispatches it.
    #[derive(Debug, PartialEq)]
    struct Dispatched {
        event: String,
        id: String,
        data: String,
    }

    /// The WHATWG "interpreting an event stream" algorithm, on a whole stream: one leading
    /// BOM dropped; lines end at CRLF, LF or CR; a blank line dispatches; `:` starts a
    /// comment; the field name is up to the first `:`, and one space after it is dropped;
    /// `data` lines join with LF, less the last LF; an `id` with a NUL is ignored; an
    /// event with no data is not dispatched; an unfinished last line is discarded.
    fn parse(stream: &str) -> Vec<Dispatched> {
        let mut events = Vec::new();
        let (mut event, mut data, mut last_id) = (String::new(), String::new(), String::new());
        let mut rest = stream.strip_prefix('\u{feff}').unwrap_or(stream);
        while let Some(i) = rest.find(['\r', '\n']) {
            let line = &rest[..i];
            rest = &rest[i + if rest[i..].starts_with("\r\n") { 2 } else { 1 }..];
            if line.is_empty() {
                if data.is_empty() {
                    event.clear();
                    continue;
                }
                if data.ends_with('\n') {
                    data.pop();
                }
                events.push(Dispatched {
                    event: if event.is_empty() {
                        "message".to_string()
                    } else {
                        std::mem::take(&mut event)
                    },
                    id: last_id.clone(),
                    data: std::mem::take(&mut data),
                });
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line, ""),
            };
            match field {
                "event" => event = value.to_string(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "id" if !value.contains('\0') => last_id = value.to_string(),
                _ => {}
            }
        }
        events
    }

    /// Text rich in what could break a frame: line breaks of every kind, NUL, colons,
    /// spaces, a BOM, and any other character.
    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                3 => any::<char>().prop_map(String::from),
                2 => prop::sample::select(vec![
                    "\r", "\n", "\r\n", "\0", ":", " ", "\u{feff}", "é",
                ])
                .prop_map(String::from),
            ],
            0..24,
        )
        .prop_map(|pieces| pieces.concat())
    }

    fn single_line(s: &str) -> String {
        s.chars()
            .filter(|c| !matches!(c, '\r' | '\n' | '\0'))
            .collect()
    }

    fn expected(event: &str, id: &str, data: &str) -> Dispatched {
        let event = single_line(event);
        Dispatched {
            // The spec's name for an event whose type is empty.
            event: if event.is_empty() {
                "message".into()
            } else {
                event
            },
            id: single_line(id),
            data: data.replace("\r\n", "\n").replace('\r', "\n"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_frame_is_one_event_with_its_data_lines_normalised(
            event in text(), id in text(), data in text(),
        ) {
            let framed = frame(&event, &id, &data);
            let stream = std::str::from_utf8(&framed).unwrap();
            prop_assert_eq!(parse(stream), vec![expected(&event, &id, &data)]);
        }

        /// Frames back to back, as a stream sends them after its `retry:` line: each is its
        /// own event, whatever the one before it held.
        #[test]
        fn frames_in_a_row_are_the_same_events_in_order(
            frames in prop::collection::vec((text(), text(), text()), 1..5),
        ) {
            let mut stream = String::from("retry: 1000\n\n");
            for (event, id, data) in &frames {
                stream.push_str(std::str::from_utf8(&frame(event, id, data)).unwrap());
                stream.push_str(": keepalive\n\n");
            }
            let want: Vec<_> = frames.iter().map(|(e, i, d)| expected(e, i, d)).collect();
            prop_assert_eq!(parse(&stream), want);
        }
    }
}
