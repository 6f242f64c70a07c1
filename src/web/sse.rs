//! Server-Sent Events: framing, and the one response helper every stream goes through
//! (keepalive, shutdown, headers). The live views that produce the frames are in `live.rs`.
//!
//! Frames are built once as `Bytes` and shared by every connection. We frame by hand rather
//! than with axum's `Event` because `Event::data` panics on a carriage return, and a hostname
//! or a console line may hold one.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

/// A comment line at least this often keeps proxies and browsers from timing the stream out.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

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

    #[test]
    fn names_and_ids_cannot_break_the_frame() {
        let f = frame("a\nb", "1\r2", "");
        assert_eq!(
            std::str::from_utf8(&f).unwrap(),
            "event: ab\nid: 12\ndata: \n\n"
        );
    }
}
