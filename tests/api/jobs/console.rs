//! The console an agent uploads: stored exactly once at its offset, read back raw, bounded, and
//! only from the agent that holds the run.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn console_bytes_are_stored_exactly_once_and_read_back_raw() {
    let app = spawn_app().await;
    let (agent, id) = app.running_build("bytes").await;

    let first: Vec<u8> = b"progress 10%\rprogress 100%\r\n\x1b[31mred\x1b[0m\n".to_vec();
    let body = app
        .as_agent(&agent)
        .append(id, Some(0), &first)
        .await
        .expect(200);
    assert_eq!(body, json!({"offset": first.len()}));

    // A retry of the same chunk is not stored twice.
    let body = app
        .as_agent(&agent)
        .append(id, Some(0), &first)
        .await
        .expect(200);
    assert_eq!(body["offset"], first.len());
    let (bytes, length) = app.console(id, None).await;
    assert_eq!(bytes, first);
    assert_eq!(length, first.len().to_string());

    // Invalid UTF-8 is kept as sent.
    let second: Vec<u8> = vec![b'b', b'i', b'n', b' ', 0xff, 0xfe, b'\n'];
    let body = app
        .as_agent(&agent)
        .append(id, Some(first.len() as u64), &second)
        .await
        .expect(200);
    let total = first.len() + second.len();
    assert_eq!(body["offset"], total);

    let mut all = first.clone();
    all.extend_from_slice(&second);
    let (bytes, length) = app.console(id, None).await;
    assert_eq!(bytes, all);
    assert_eq!(length, total.to_string());

    // `from` gives the suffix; the length header is still the whole log.
    let (bytes, length) = app.console(id, Some(first.len() as u64)).await;
    assert_eq!(bytes, second);
    assert_eq!(length, total.to_string());
    let (bytes, _) = app.console(id, Some(5)).await;
    assert_eq!(bytes, all[5..].to_vec());
    let (bytes, _) = app.console(id, Some(total as u64)).await;
    assert!(bytes.is_empty());

    let run = app.build(id).await;
    assert_eq!(run["console_length"], total, "{run}");
}

#[tokio::test]
async fn a_console_gap_is_409_with_the_stored_length_and_an_overlap_stores_only_the_tail() {
    let app = spawn_app().await;
    let (agent, id) = app.running_build("gaps").await;

    let (status, body) = app
        .as_agent(&agent)
        .append(id, Some(0), b"hello\n")
        .await
        .parts();
    assert_eq!((status, body), (200, json!({"offset": 6})));

    // A gap: the agent believes more is stored than is.
    let body = app
        .as_agent(&agent)
        .append(id, Some(10), b"lost?\n")
        .await
        .expect(409);
    assert_eq!(body["offset"], 6, "the 409 tells the stored length: {body}");
    let (bytes, _) = app.console(id, None).await;
    assert_eq!(bytes, b"hello\n".to_vec());

    // An overlap: "lo\n" is already stored, only "world\n" is new.
    let (status, body) = app
        .as_agent(&agent)
        .append(id, Some(3), b"lo\nworld\n")
        .await
        .parts();
    assert_eq!((status, body), (200, json!({"offset": 12})));
    let (bytes, length) = app.console(id, None).await;
    assert_eq!(String::from_utf8_lossy(&bytes), "hello\nworld\n");
    assert_eq!(length, "12");
    assert_eq!(app.build(id).await["console_length"], 12);
}

#[tokio::test]
async fn a_console_append_is_limited_checked_and_only_for_the_assigned_agent() {
    let app = spawn_app().await;
    let (agent, id) = app.running_build("limits").await;
    let stranger = app.register_enabled("stranger").await;

    let body = app
        .as_agent(&agent)
        .append(id, None, b"no offset\n")
        .await
        .expect(422);
    assert!(
        message(&body).to_lowercase().contains("x-console-offset"),
        "{body}"
    );

    app.as_agent(&stranger)
        .append(id, Some(0), b"not mine\n")
        .await
        .expect(403);

    let too_big = vec![b'x'; 1024 * 1024 + 1];
    app.as_agent(&agent)
        .append(id, Some(0), &too_big)
        .await
        .expect(413);

    // Nothing of that was stored.
    assert_eq!(app.build(id).await["console_length"], 0);
    let (bytes, length) = app.console(id, None).await;
    assert!(bytes.is_empty());
    assert_eq!(length, "0");

    // Exactly 1 MiB is allowed.
    let mib = vec![b'y'; 1024 * 1024];
    let body = app
        .as_agent(&agent)
        .append(id, Some(0), &mib)
        .await
        .expect(200);
    assert_eq!(body["offset"], 1024 * 1024);
}

#[tokio::test]
async fn at_the_console_cap_one_line_says_so_and_later_appends_store_nothing() {
    let app = spawn_app_with(|c| c.max_console_bytes = 100).await;
    let (agent, build_id) = app.running_build("chatty").await;
    let agent = app.as_agent(&agent);
    assert_eq!(agent.append_ok(build_id, 0, &[b'a'; 80]).await, 80);
    let cut = agent
        .append(build_id, Some(80), &[b'b'; 50])
        .await
        .expect(200);
    assert_eq!(cut, serde_json::json!({"offset": 100, "truncated": true}));
    let later = agent
        .append(build_id, Some(130), b"more\n")
        .await
        .expect(200);
    assert_eq!(later, serde_json::json!({"offset": 100, "truncated": true}));
    let mut expected = vec![b'a'; 80];
    expected.extend_from_slice(&[b'b'; 20]);
    expected.extend_from_slice(b"\n[ferrocd] console truncated at 100 bytes\n");
    assert_eq!(app.console(build_id, Some(0)).await.0, expected);
    agent.report_ok(build_id, "Completed", Some("Passed")).await;
    assert_eq!(app.build(build_id).await["result"], "Passed");
}

#[tokio::test]
async fn a_console_chunk_must_say_it_is_text_or_bytes() {
    let app = spawn_app().await;
    let (agent, build_id) = app.running_build("typed").await;
    let url = app.url(&format!("/api/builds/{build_id}/console"));
    for (content_type, expected) in [
        (Some("text/plain; charset=utf-8"), 200),
        (Some("application/octet-stream"), 200),
        (Some("application/x-www-form-urlencoded"), 415),
        (None, 415),
    ] {
        let mut request = app
            .client
            .post(&url)
            .bearer_auth(&agent.token)
            .header("X-Console-Offset", "0")
            .body("line\n");
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        let reply = app.send(request).await;
        assert_eq!(reply.status, expected, "{content_type:?}: {}", reply.text());
    }
}
