//! Two nodes on one PostgreSQL database behind a proxy, as a load balancer would have them:
//! node A is killed (SIGKILL) in the middle of a build while a real agent and a real Chromium
//! reach the nodes through the proxy, which then routes to node B. The build completes, its
//! console holds every line once, and the page shows the fresh state once its EventSource has
//! reconnected. Needs PostgreSQL (the Postgres pass of `.ci/run` runs it); skipped otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::*;
use crate::support::browser_test;

const KEY: &str = "nodes-test-key";
const LINES: usize = 80;

/// A job printing `LINES` numbered lines, 50 ms apart: about 4 s of build.
fn slow_pipeline() -> String {
    format!(
        r#"
format_version: 10
pipelines:
  slow:
    group: nodes
    stages:
      - build:
          jobs:
            count:
              tasks:
                - exec:
                    command: sh
                    arguments: ["-c", "for i in $(seq 1 {LINES}); do echo \"line $i\"; sleep 0.05; done"]
"#
    )
}

/// Forwards each connection to the first node that accepts it, in order: to A while A lives,
/// then to B.
struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(nodes: Vec<SocketAddr>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        tokio::spawn(async move {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let nodes = nodes.clone();
                tokio::spawn(async move {
                    for node in nodes {
                        if let Ok(mut upstream) = TcpStream::connect(node).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                            return;
                        }
                    }
                });
            }
        });
        Proxy { addr, stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The build id and state of the slow pipeline's one job, once it has one.
async fn the_job(api: &Api) -> Option<(i64, String)> {
    let reply = api.get("/go/api/stages/slow/1/build/1").await;
    if reply.status != 200 {
        return None;
    }
    let job = &reply.body["jobs"][0];
    Some((job["id"].as_i64()?, job["state"].as_str()?.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_build_leaves_the_build_the_console_and_the_page_whole() {
    if std::env::var(TEST_DATABASE_URL).is_err() {
        eprintln!("skipped: several nodes need PostgreSQL ({TEST_DATABASE_URL})");
        return;
    }
    browser_test("a_node_killed_mid_build", |rig| async move {
        let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let shared = dirs[3].path();
        std::fs::write(shared.join("slow.gocd.yaml"), slow_pipeline()).unwrap();
        let database_url = test_config(dirs[0].path()).database_url;
        let node = |dir: &tempfile::TempDir| {
            let mut command = serve_command(dir.path());
            command
                .env("DATABASE_URL", &database_url)
                .arg("--config")
                .arg(shared.join("slow.gocd.yaml"))
                .arg("--artifacts-dir")
                .arg(shared.join("artifacts"))
                .arg("--agent-registration-key")
                .arg(KEY);
            NodeProcess::start(command)
        };
        let mut a = node(&dirs[0]);
        let b = node(&dirs[1]);
        let addr = |node: &NodeProcess| -> SocketAddr {
            node.base.trim_start_matches("http://").parse().unwrap()
        };
        let proxy = Proxy::start(vec![addr(&a), addr(&b)]).await;
        let api = Api::new(proxy.url(""));
        let api_b = b.api();

        let work = dirs[2].path().join("agent");
        let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_ferrocd"))
            .arg("agent")
            .arg("--server")
            .arg(proxy.url(""))
            .arg("--work-dir")
            .arg(&work)
            .arg("--registration-key")
            .arg(KEY)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the agent starts");
        struct Kill<'a>(&'a mut std::process::Child);
        impl Drop for Kill<'_> {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _agent = Kill(&mut agent);

        eventually("the agent is enabled", || async {
            let agents = api.get("/go/api/agents").await;
            (agents.body["_embedded"]["agents"][0]["agent_config_state"] == "Enabled").then_some(())
        })
        .await;
        api.call(
            reqwest::Method::POST,
            "/go/api/pipelines/slow/schedule",
            json!({}),
        )
        .await
        .expect(202);
        let build_id = eventually("the job builds", || async {
            let (id, state) = the_job(&api).await?;
            (state == "Building").then_some(id)
        })
        .await;

        let page = rig
            .open("run page", &proxy.url(&format!("/builds/{build_id}")))
            .await;
        page.wait_js(
            "a few lines on the page",
            "const e = document.getElementById('console'); \
             return e !== null && e.textContent.includes('line 5\\n');",
            vec![],
        )
        .await;

        // A dies mid-build: the agent's calls and the page's stream now reach B.
        a.kill();
        let (_, state) = the_job(&api_b).await.expect("B knows the job");
        assert_eq!(state, "Building", "A died in the middle of the build");
        assert!(
            TcpStream::connect(addr(&a)).await.is_err(),
            "node A is gone"
        );

        page.wait_attrs(
            "#run-status",
            &[("data-state", "Completed"), ("data-result", "Passed")],
        )
        .await;
        let expected: String = (1..=LINES).map(|n| format!("line {n}\n")).collect();
        let (log, _) = api_b.console(build_id, None).await;
        let stored = String::from_utf8_lossy(&log);
        let counted: Vec<&str> = stored.lines().filter(|l| l.starts_with("line ")).collect();
        let wanted: Vec<String> = (1..=LINES).map(|n| format!("line {n}")).collect();
        assert_eq!(counted, wanted, "every line once, in order: {stored}");
        let shown = page.console_text().await;
        assert!(
            shown.contains(&expected),
            "the page shows the whole log once: {shown}"
        );
        assert_eq!(shown.matches("line 1\n").count(), 1, "{shown}");
        drop(proxy);
    })
    .await;
}
