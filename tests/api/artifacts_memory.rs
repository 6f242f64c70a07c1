//! A 200 MB artifact goes up and comes back down without either side holding it: a real
//! `ferrocd serve` process and a real `ferrocd agent` publish it from one stage and fetch it
//! in the next (checked by its SHA-256), and the peak resident memory of each process grows by
//! less than [`GROWTH_BOUND`] while they do (read from `/proc/PID/status`, `VmHWM`).

use std::time::Duration;

use serde_json::Value;

use crate::agent_runtime::{AgentProcess, KEY};

const SIZE: u64 = 200 * 1024 * 1024;
/// Far below the artifact's size: a side that held it whole would pass it.
const GROWTH_BOUND: u64 = 64 * 1024 * 1024;
/// Writing, hashing and moving 600 MB in a debug build on a shared machine.
const WITHIN: Duration = Duration::from_secs(300);

const PIPELINE: &str = r#"format_version: 10
pipelines:
  big:
    group: g
    stages:
      - build:
          jobs:
            make:
              artifacts:
                - build: {source: out/big.bin, destination: dist}
              tasks:
                - exec: {command: /bin/sh, arguments: [-c, "mkdir -p out && head -c SIZE /dev/urandom > out/big.bin && sha256sum out/big.bin"]}
      - use:
          jobs:
            fetch:
              tasks:
                - fetch: {stage: build, job: make, source: dist/big.bin, is_file: true, destination: got}
                - exec: {command: /bin/sh, arguments: [-c, "sha256sum got/big.bin && rm got/big.bin ../big/out/big.bin"]}
"#;

/// `VmHWM` (the peak resident set) of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

async fn get(client: &reqwest::Client, url: &str) -> Value {
    match client.get(url).send().await {
        Ok(reply) => reply.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Polls `check` every 100 ms until it answers, for at most [`WITHIN`].
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_200_mb_artifact_goes_up_and_down_in_bounded_memory_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("big.gocd.yaml");
    std::fs::write(&config, PIPELINE.replace("SIZE", &SIZE.to_string())).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let server_logs = tempfile::tempdir().unwrap();
    let mut serve = crate::helpers::serve_command(&dir.path().join("data"));
    serve
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--config")
        .arg(&config)
        .arg("--agent-registration-key")
        .arg(KEY);
    let server = AgentProcess::spawn(serve, &dir.path().join("data"), &server_logs);
    let client = crate::helpers::http_client();
    until("the server answers", || async {
        get(&client, &format!("{base}/go/api/agents"))
            .await
            .get("_embedded")
            .map(|_| ())
    })
    .await;
    crate::helpers::expect_backend(&crate::helpers::Api::new(base.clone())).await;
    let agent_dir = dir.path().join("agent");
    let agent_logs = tempfile::tempdir().unwrap();
    let mut command = AgentProcess::command(&base, &agent_dir);
    command.arg("--registration-key").arg(KEY);
    let agent = AgentProcess::spawn(command, &agent_dir, &agent_logs);
    until("the agent is enabled", || async {
        let agents = get(&client, &format!("{base}/go/api/agents")).await;
        (agents["_embedded"]["agents"][0]["agent_config_state"] == "Enabled").then_some(())
    })
    .await;
    let (server_pid, agent_pid) = (server.pid().unwrap(), agent.pid().unwrap());
    let before = (peak_rss(server_pid), peak_rss(agent_pid));

    let scheduled = client
        .post(format!("{base}/go/api/pipelines/big/schedule"))
        .header("Confirm", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(scheduled.status(), 202);
    let stage = until("the use stage ends", || async {
        let stage = get(&client, &format!("{base}/go/api/stages/big/1/use/1")).await;
        (stage["result"].is_string() && stage["result"] != "Unknown").then_some(stage)
    })
    .await;
    let after = (peak_rss(server_pid), peak_rss(agent_pid));
    let console = |id: &Value| {
        let client = &client;
        let url = format!("{base}/api/builds/{id}/console");
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let build = get(&client, &format!("{base}/go/api/stages/big/1/build/1")).await;
    let made = console(&build["jobs"][0]["id"]).await;
    let fetched = console(&stage["jobs"][0]["id"]).await;
    assert_eq!(stage["result"], "Passed", "{fetched}");
    let sum = made
        .lines()
        .find_map(|l| l.strip_suffix("  out/big.bin"))
        .unwrap_or_else(|| panic!("the build printed its checksum: {made}"))
        .to_string();
    assert!(
        fetched.contains(&format!("{sum}  got/big.bin")),
        "{fetched}"
    );

    let growth = (after.0 - before.0, after.1 - before.1);
    eprintln!(
        "200 MB artifact: server peak RSS {} → {} MB, agent {} → {} MB",
        before.0 >> 20,
        after.0 >> 20,
        before.1 >> 20,
        after.1 >> 20
    );
    assert!(
        growth.0 < GROWTH_BOUND && growth.1 < GROWTH_BOUND,
        "peak RSS grew by {} MB (server) and {} MB (agent) for a 200 MB artifact",
        growth.0 >> 20,
        growth.1 >> 20
    );
}
