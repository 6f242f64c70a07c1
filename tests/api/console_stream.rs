//! The run page's stream (`/builds/{id}/console/events`): lines as they come, exact resume,
//! the status badge; and the run list's stream.

use crate::helpers::*;

/// Reads `console` events until `until` bytes of the log have been shown; returns their
/// concatenated text and every event id seen.
pub(crate) async fn read_console_until(stream: &mut SseClient, until: i64) -> (String, Vec<i64>) {
    let mut text = String::new();
    let mut ids = Vec::new();
    while ids.last().copied().unwrap_or(-1) < until {
        let event = stream
            .wait_for("console lines", |e| e.event == "console")
            .await;
        let id: i64 = event
            .id
            .parse()
            .expect("a console event's id is its offset");
        text.push_str(&text_content(&event.data));
        ids.push(id);
    }
    (text, ids)
}

#[tokio::test]
async fn console_lines_arrive_as_they_are_appended_with_offsets_as_ids() {
    let app = spawn_app().await;
    let (agent, build_id) = app.running_build("liner").await;
    let mut stream = app
        .subscribe(&format!("/builds/{build_id}/console/events"))
        .await;
    let status = stream.wait_for("the status", |e| e.event == "status").await;
    assert!(
        status
            .data
            .contains("id=\"run-status\" data-state=\"Building\""),
        "{}",
        status.data
    );

    let end = app
        .as_agent(&agent)
        .append_ok(build_id, 0, b"first line\nsecond ")
        .await;
    let event = stream
        .wait_for("the first line", |e| e.event == "console")
        .await;
    assert_eq!(
        event.id, "11",
        "the id is the offset after the complete line"
    );
    assert_eq!(text_content(&event.data), "first line\n");

    // The unfinished line goes out once it is complete.
    let end = app
        .as_agent(&agent)
        .append_ok(build_id, end as usize, b"half\n\x1b[32mok\x1b[0m\n")
        .await;
    let event = stream
        .wait_for("the next lines", |e| e.event == "console")
        .await;
    assert_eq!(event.id, end.to_string());
    assert_eq!(text_content(&event.data), "second half\nok\n");
    assert!(
        event.data.contains("<span class=\"ansi-fg-2\">ok</span>"),
        "{}",
        event.data
    );
}

#[tokio::test]
async fn a_last_line_without_newline_is_sent_when_the_build_completes() {
    let app = spawn_app().await;
    let (agent, build_id) = app.running_build("tail").await;
    let mut stream = app
        .subscribe(&format!("/builds/{build_id}/console/events"))
        .await;
    stream.wait_for("the status", |e| e.event == "status").await;
    app.as_agent(&agent)
        .append_ok(build_id, 0, b"done\nno newline")
        .await;
    let (text, _) = read_console_until(&mut stream, 5).await;
    assert_eq!(text, "done\n");

    app.as_agent(&agent)
        .report_ok(build_id, "Completed", Some("Passed"))
        .await;
    let (text, _) = read_console_until(&mut stream, 15).await;
    assert_eq!(text, "no newline");
    let status = stream
        .wait_for("Completed", |e| {
            e.event == "status" && e.data.contains("data-state=\"Completed\"")
        })
        .await;
    assert!(
        status.data.contains("data-result=\"Passed\""),
        "{}",
        status.data
    );
}

#[tokio::test]
async fn a_stream_cut_mid_build_resumes_from_last_event_id_with_no_byte_twice_or_missing() {
    let app = spawn_app().await;
    let (agent, build_id) = app.running_build("resumer").await;
    let url = app.url(&format!("/builds/{build_id}/console/events"));
    let mut offset = 0usize;
    let mut expected = Vec::new();
    let mut append = |bytes: &[u8]| {
        expected.extend_from_slice(bytes);
        let at = offset;
        offset += bytes.len();
        (at, bytes.to_vec())
    };

    let mut first = SseClient::connect(&url, None).await;
    let mut seen = String::new();
    let mut last_id = 0;
    for i in 0..5 {
        let (at, bytes) =
            append(format!("before cut {i} \x1b[1mbold\x1b[0m 50%\r100%\n").as_bytes());
        app.as_agent(&agent).append_ok(build_id, at, &bytes).await;
        let (text, ids) = read_console_until(&mut first, (at + bytes.len()) as i64).await;
        seen.push_str(&text);
        last_id = *ids.last().unwrap();
    }
    drop(first); // the connection is cut

    // Appends while nobody is connected, including invalid UTF-8 and a CRLF line.
    for i in 0..3 {
        let (at, bytes) = append(format!("while away {i} \u{2603}\r\n").as_bytes());
        app.as_agent(&agent).append_ok(build_id, at, &bytes).await;
    }
    let (at, bytes) = append(b"bad bytes \xff\xfe end\n");
    app.as_agent(&agent).append_ok(build_id, at, &bytes).await;

    // `?from=0` is overridden by Last-Event-ID, as a browser's reconnect sends it.
    let mut second = SseClient::connect(&format!("{url}?from=0"), Some(&last_id.to_string())).await;
    for i in 0..3 {
        let (at, bytes) = append(format!("after reconnect {i}\n").as_bytes());
        app.as_agent(&agent).append_ok(build_id, at, &bytes).await;
    }
    let (text, ids) = read_console_until(&mut second, offset as i64).await;
    seen.push_str(&text);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "offsets only grow: {ids:?}"
    );

    let stored = app.console(build_id, None).await.0;
    assert_eq!(stored, expected, "the server stored every byte as sent");
    let without_ansi = String::from_utf8_lossy(&stored)
        .replace("\x1b[1m", "")
        .replace("\x1b[0m", "");
    assert_eq!(
        seen, without_ansi,
        "what the two connections showed is the log, once"
    );
}

#[tokio::test]
async fn from_resumes_where_asked_and_a_new_stream_starts_at_zero() {
    let app = spawn_app().await;
    let (agent, build_id) = app.running_build("from").await;
    app.as_agent(&agent)
        .append_ok(build_id, 0, b"one\ntwo\nthree\n")
        .await;

    let mut from_four = app
        .subscribe(&format!("/builds/{build_id}/console/events?from=4"))
        .await;
    let (text, _) = read_console_until(&mut from_four, 14).await;
    assert_eq!(text, "two\nthree\n");

    let mut from_start = app
        .subscribe(&format!("/builds/{build_id}/console/events"))
        .await;
    let (text, _) = read_console_until(&mut from_start, 14).await;
    assert_eq!(text, "one\ntwo\nthree\n");
}

#[tokio::test]
async fn the_run_page_shows_the_console_escaped_and_its_status() {
    let app = spawn_app().await;
    let (agent, build_id) = app.running_build("page").await;
    app.as_agent(&agent)
        .append_ok(
            build_id,
            0,
            b"<script>alert(1)</script>\n\x1b[31mred\x1b[0m\n",
        )
        .await;
    for path in [
        format!("/builds/{build_id}"),
        format!("/agents/{}/job_run_history/{build_id}", agent.uuid),
    ] {
        let html = app.get(&path).await.text();
        assert!(
            html.contains("id=\"run-status\" data-state=\"Building\""),
            "{html}"
        );
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("<span class=\"ansi-fg-1\">red</span>"));
        assert!(
            html.contains(&format!(
                "sse-connect=\"/builds/{build_id}/console/events?from=39\""
            )),
            "{html}"
        );
    }
    // GoCD's address for the same run.
    let html = app
        .get("/tab/build/detail/console/1/build/1/job")
        .await
        .text();
    assert!(html.contains("id=\"console\""), "{html}");
}

#[tokio::test]
async fn a_large_log_shows_its_last_thousand_lines_and_a_way_to_all() {
    let app = spawn_app().await;
    let (agent, build_id) = app.running_build("big").await;
    let log: String = (1..=1500).map(|i| format!("line {i}\n")).collect();
    app.as_agent(&agent)
        .append_ok(build_id, 0, log.as_bytes())
        .await;
    let html = app.get(&format!("/builds/{build_id}")).await.text();
    assert_eq!(html.matches("class=\"ln\"").count(), 1000);
    assert!(
        html.contains(">line 1500\n<")
            && html.contains(">line 501\n<")
            && !html.contains(">line 500\n<")
    );
    assert!(html.contains("href=\"?all=1\""));
    assert!(
        html.contains(&format!("href=\"/api/builds/{build_id}/console\"")),
        "a raw download link"
    );
    let all = app.get(&format!("/builds/{build_id}?all=1")).await.text();
    assert_eq!(all.matches("class=\"ln\"").count(), 1500);
}

#[tokio::test]
async fn the_run_list_follows_the_agents_runs() {
    let app = spawn_app().await;
    let agent = app.register_enabled("lister").await;
    let mut stream = app
        .subscribe(&format!("/agents/{}/job_run_history/events", agent.uuid))
        .await;
    let first = stream.wait_for("the run list", |e| e.event == "runs").await;
    assert!(!first.data.contains("<tr"), "no runs yet: {}", first.data);

    let build_id = app.schedule_job("listed", "job").await;
    app.as_agent(&agent).take_work().await;
    let row = format!("id=\"run-{build_id}\" data-state=\"Assigned\"");
    stream
        .wait_for("the assigned run", |e| {
            e.event == "runs" && e.data.contains(&row)
        })
        .await;

    app.as_agent(&agent)
        .report_ok(build_id, "Completed", Some("Failed"))
        .await;
    let done = format!("id=\"run-{build_id}\" data-state=\"Completed\" data-result=\"Failed\"");
    stream
        .wait_for("the failed run", |e| {
            e.event == "runs" && e.data.contains(&done)
        })
        .await;

    let html = app
        .get(&format!("/agents/{}/job_run_history", agent.uuid))
        .await
        .text();
    assert!(
        html.contains("<table id=\"runs-table\">") && html.contains(&done),
        "{html}"
    );
}

#[tokio::test]
async fn an_unknown_run_is_a_404_page_a_person_can_read() {
    let app = spawn_app().await;
    let page = app.get("/builds/999").await;
    assert_eq!(page.status, 404);
    let content_type = page.header("content-type");
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = page.text();
    assert!(
        html.contains("no build with id 999") && html.contains("href=\"/agents\""),
        "{html}"
    );
}
