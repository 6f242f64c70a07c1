//! Starting, stopping and restarting the server.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

/// Runs the real binary on a free port, returns it and the address it printed.
fn start_binary(data_dir: &std::path::Path) -> (std::process::Child, String) {
    let mut child = serve_command(data_dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the ferrocd binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(at) = line.find("http://127.0.0.1:") {
                let addr: String = line[at..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(DEADLINE)
        .expect("the server prints its address");
    (child, addr)
}

#[tokio::test]
async fn sigterm_with_streams_open_exits_promptly() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, base) = start_binary(data.path());
    expect_backend(&Api::new(base.clone())).await;
    let mut page_stream = SseClient::connect(&format!("{base}/agents/events"), None).await;
    let mut api_stream =
        SseClient::connect(&format!("{base}/api/events?topics=agents:updates"), None).await;
    page_stream
        .wait_for("the initial state", |e| e.event == "agents")
        .await;
    api_stream.wait_for("ready", |e| e.event == "ready").await;

    // SAFETY: signalling our own child process.
    let sent = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(sent, 0, "SIGTERM delivered");
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("open event streams held the server up for {DEADLINE:?} after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit}");
    // Both streams were ended by the server, not left hanging (events already sent may come
    // first; `next` panics if the stream neither ends nor sends within the deadline).
    while page_stream.next().await.is_some() {}
    while api_stream.next().await.is_some() {}
}

#[tokio::test]
async fn an_agent_not_heard_from_since_a_restart_is_missing() {
    let data = tempfile::tempdir().unwrap();
    let first = Server::start(test_config(data.path())).await;
    let (status, registered) = first
        .api()
        .register_with(json!({"hostname": "survivor"}), None)
        .await;
    assert_eq!(status, 201, "{registered}");
    let agent = Registered::from_body(&registered);
    first.stop().await;

    // Same data directory, new process: the agent is remembered, but Missing.
    let second = Server::start(test_config(data.path())).await;
    let api = second.api();
    let shown = api.agent(&agent.uuid).await;
    assert_eq!(shown["hostname"], "survivor");
    assert_eq!(shown["agent_state"], "Missing");

    // Its old token still works, and contact ends Missing.
    let (status, _) = api
        .as_agent(&agent)
        .ping(json!({"agent_state": "Idle"}))
        .await
        .parts();
    assert_eq!(status, 200);
    assert_eq!(api.agent(&agent.uuid).await["agent_state"], "Idle");
    second.stop().await;
}

#[tokio::test]
async fn the_data_dir_and_the_database_are_the_owners_alone() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    app.register("secretive").await;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(app.data_dir()), 0o700, "the data dir");
    let db = app.data_dir().join("ferrocd.db");
    if std::env::var(TEST_DATABASE_URL).is_ok() {
        // The database is the PostgreSQL server's to guard.
        assert!(!db.exists(), "no SQLite file beside a PostgreSQL database");
        return;
    }
    assert_eq!(mode(&db), 0o600, "the database");
    let wal = app.data_dir().join("ferrocd.db-wal");
    if wal.exists() {
        assert_eq!(mode(&wal), 0o600, "its write-ahead log");
    }
}
