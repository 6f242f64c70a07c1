//! "Show all" on a large log (the admin-access issue, finding 6): the page streams the log
//! window by window, so the server's memory stays flat whatever the log's size. Measured on a
//! real `ferrocd serve` process of its own, whose peak resident size (`VmHWM`) no other test
//! can move.

use std::process::{Child, Stdio};

use futures::StreamExt;

use crate::helpers::*;

struct ServeProcess(Child);

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ServeProcess {
    /// The process's peak resident set so far, in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .expect("the server's /proc status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("a VmHWM line");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("VmHWM in kB");
        kib * 1024
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn show_all_of_a_60_mb_log_streams_it_whole_with_flat_memory() {
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = ServeProcess(
        serve_command(data.path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("the server starts"),
    );
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    eventually("the server answers", || async {
        let health = api.client.get(api.url("/api/health")).send().await.ok()?;
        health.status().is_success().then_some(())
    })
    .await;
    expect_backend(&api).await;

    let (agent, build) = api.running_build("loud").await;
    let agent = api.as_agent(&agent);
    let line = |n: usize| format!("line {n:08} {}\n", "x".repeat(86));
    let per_chunk = 1024 * 1024 / line(0).len();
    let chunks = 60;
    let mut offset = 0;
    for c in 0..chunks {
        let chunk: String = (c * per_chunk..(c + 1) * per_chunk).map(line).collect();
        offset = agent.append_ok(build, offset, chunk.as_bytes()).await as usize;
    }
    agent.report_ok(build, "Completed", Some("Passed")).await;
    assert!(offset > 60_000_000, "{offset}");
    let before = server.peak_rss();

    let response = api
        .client
        .get(api.url(&format!("/builds/{build}?all=1")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let (mut size, mut lines, mut tail) = (0usize, 0usize, Vec::new());
    // A line's span may be split between two reads: count over the seam.
    let pattern = b"class=\"ln\"";
    let mut seam: Vec<u8> = Vec::new();
    let mut first = None;
    while let Some(piece) = body.next().await {
        let piece = piece.expect("the page streams to its end");
        size += piece.len();
        seam.extend_from_slice(&piece);
        lines += seam.windows(pattern.len()).filter(|w| w == pattern).count();
        if first.is_none() {
            first = String::from_utf8_lossy(&seam)
                .find("line 00000000")
                .map(|_| ());
        }
        let keep = seam.len().saturating_sub(pattern.len() - 1);
        seam.drain(..keep);
        tail.extend_from_slice(&piece);
        let keep = tail.len().saturating_sub(4096);
        tail.drain(..keep);
    }
    let after = server.peak_rss();
    let tail = String::from_utf8_lossy(&tail);
    assert!(first.is_some(), "the first line is shown");
    assert_eq!(lines, chunks * per_chunk, "every line, once");
    assert!(
        tail.contains(&format!("line {:08}", chunks * per_chunk - 1)),
        "the last line"
    );
    assert!(
        tail.trim_end().ends_with("</html>"),
        "the page ends: {tail}"
    );
    assert!(size > 60_000_000, "{size}");
    let grew = after.saturating_sub(before);
    eprintln!(
        "show all: a {size}-byte page; the server's peak grew {} KiB",
        grew / 1024
    );
    assert!(
        grew < 48 * 1024 * 1024,
        "a {size}-byte page grew the server's peak memory by {} MiB",
        grew / (1024 * 1024)
    );
}
