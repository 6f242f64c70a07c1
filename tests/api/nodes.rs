//! Several `ferrocd serve` nodes on one PostgreSQL database act as one server: a change made
//! through one node reaches the streams of the other, and work is handed out once. These need
//! PostgreSQL: in the SQLite pass each says it is skipped (the Postgres pass of `.ci/run` runs
//! them, and fails if it ran nothing on PostgreSQL).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tempfile::TempDir;

use crate::console_stream::read_console_until;
use crate::helpers::*;
use crate::materials::{commit, instances, new_repo};
use crate::pipelines::trigger;

/// Two nodes on one database, sharing their `--config` folder and `--artifacts-dir` as a
/// deployment must (docs/deploy.md), each with a data dir of its own.
struct TwoNodes {
    a: Server,
    b: Server,
    _dirs: [TempDir; 3],
}

const RELAY: &str = r#"
format_version: 10
pipelines:
  relay:
    group: nodes
    stages:
      - build:
          jobs:
            compile:
              tasks:
                - exec: {command: make}
"#;

/// Two nodes, or `None` (having said so) when this pass is not on PostgreSQL.
async fn two_nodes() -> Option<TwoNodes> {
    two_nodes_with(|_, _| {}).await
}

/// Two nodes, each one's config changed by `change(name, config)` first ("a", then "b").
async fn two_nodes_with(
    mut change: impl FnMut(&str, &mut ferrocd::config::Config),
) -> Option<TwoNodes> {
    if std::env::var(TEST_DATABASE_URL).is_err() {
        eprintln!("skipped: several nodes need PostgreSQL ({TEST_DATABASE_URL})");
        return None;
    }
    let shared = tempfile::tempdir().unwrap();
    let config_dir = shared.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("relay.gocd.yaml"), RELAY).unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = |dir: &TempDir, database_url: Option<String>| {
        let mut config = test_config(dir.path());
        if let Some(url) = database_url {
            config.database_url = url;
        }
        config.config_paths = vec![config_dir.clone()];
        config.artifacts_dir = shared.path().join("artifacts");
        config.registrations_per_second = 0;
        config
    };
    let mut config_a = node(&dir_a, None);
    let mut config_b = node(&dir_b, Some(config_a.database_url.clone()));
    change("a", &mut config_a);
    change("b", &mut config_b);
    let a = Server::start(config_a).await;
    let b = Server::start(config_b).await;
    Some(TwoNodes {
        a,
        b,
        _dirs: [shared, dir_a, dir_b],
    })
}

#[tokio::test]
async fn a_change_through_one_node_reaches_the_other_node_s_streams() {
    let Some(nodes) = two_nodes().await else {
        return;
    };
    let (a, b) = (nodes.a.api(), nodes.b.api());

    // The agents page on B hears of an agent that registered with A.
    let mut agents_on_b = b.subscribe("/agents/events").await;
    agents_on_b
        .wait_for("the agents table", |e| e.event == "agents")
        .await;
    let agent = a.register("registered-on-a").await;
    let row = agents_on_b
        .wait_for("the new agent's row", |e| e.event == "agent-added")
        .await;
    assert!(row.data.contains("registered-on-a"), "{}", row.data);
    assert!(row.data.contains(&agent.uuid), "{}", row.data);

    // A console followed on B gets every byte its agent uploads to A, in order, once.
    let (builder, build_id) = a.running_build("builds-on-a").await;
    let mut console_on_b = b
        .subscribe(&format!("/builds/{build_id}/console/events"))
        .await;
    let mut offset = 0;
    let mut expected = String::new();
    for n in 0..20 {
        let line = format!("line {n} from node A\n");
        expected.push_str(&line);
        offset = a
            .as_agent(&builder)
            .append_ok(build_id, offset, line.as_bytes())
            .await as usize;
    }
    let (shown, offsets) = read_console_until(&mut console_on_b, offset as i64).await;
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets only grow: {offsets:?}"
    );
    assert_eq!(shown, expected);

    // The dashboard on B shows a run triggered through A.
    let mut dashboard_on_b = b.subscribe("/pipelines/events").await;
    dashboard_on_b
        .wait_for("the dashboard", |e| e.event == "dashboard")
        .await;
    let counter = trigger(&a, "relay").await;
    let card = dashboard_on_b
        .wait_for("relay's card", |e| e.event == "pipeline-relay")
        .await;
    assert!(
        card.data.contains(&format!("/pipelines/relay/{counter}/")),
        "{}",
        card.data
    );
}

#[tokio::test]
async fn two_nodes_with_ten_pollers_each_never_hand_out_a_job_twice() {
    let Some(nodes) = two_nodes().await else {
        return;
    };
    let (a, b) = (nodes.a.api(), nodes.b.api());
    const JOBS: usize = 200;
    for n in 0..JOBS {
        let node = if n % 2 == 0 { &a } else { &b };
        node.schedule_job("many", &format!("job-{n}")).await;
    }
    // build id → the agents it was handed to
    let handed: Arc<Mutex<BTreeMap<i64, Vec<String>>>> = Arc::default();
    let mut pollers = Vec::new();
    for n in 0..20 {
        let api = if n % 2 == 0 { a.clone() } else { b.clone() };
        let handed = Arc::clone(&handed);
        pollers.push(tokio::spawn(async move {
            let agent = api.register_enabled(&format!("poller-{n}")).await;
            let deadline = std::time::Instant::now() + DEADLINE * 3;
            while handed.lock().unwrap().len() < JOBS {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the queue never emptied"
                );
                let work = api.as_agent(&agent).work().await;
                if work.status != 200 {
                    tokio::task::yield_now().await;
                    continue;
                }
                let build_id = work.body["build_id"].as_i64().expect("a build id");
                handed
                    .lock()
                    .unwrap()
                    .entry(build_id)
                    .or_default()
                    .push(agent.uuid.clone());
                let me = api.as_agent(&agent);
                me.report_ok(build_id, "Building", None).await;
                me.report_ok(build_id, "Completed", Some("Passed")).await;
            }
        }));
    }
    for poller in pollers {
        poller.await.expect("a poller");
    }
    let handed = handed.lock().unwrap().clone();
    assert_eq!(handed.len(), JOBS, "every job handed out");
    let twice: Vec<_> = handed.iter().filter(|(_, to)| to.len() > 1).collect();
    assert!(twice.is_empty(), "handed out more than once: {twice:?}");
    assert_eq!(a.pending_count().await, 0);
    assert_eq!(b.pending_count().await, 0);
}

#[tokio::test]
async fn triggers_through_both_nodes_at_once_number_each_instance_once() {
    let Some(nodes) = two_nodes().await else {
        return;
    };
    let (a, b) = (nodes.a.api(), nodes.b.api());
    let triggers = (0..20).map(|n| {
        let api = if n % 2 == 0 { a.clone() } else { b.clone() };
        async move { trigger(&api, "relay").await }
    });
    let mut counters = futures::future::join_all(triggers).await;
    counters.sort();
    assert_eq!(counters, (1..=20).collect::<Vec<i64>>(), "one counter each");
    let history = b.get("/go/api/pipelines/relay/history").await.expect(200);
    assert_eq!(history["pagination"]["total"], 20, "{history}");
}

/// One series of this node's `/metrics`, by its whole name and labels as exposed (0 if absent).
async fn metric(api: &Api, series: &str) -> f64 {
    let metrics = api.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

/// This node's `ferrocd_on_duty` gauge.
async fn on_duty(api: &Api) -> u8 {
    metric(api, "ferrocd_on_duty").await as u8
}

/// Polls that ended (stored, failed or gave up) on this node since it started.
async fn polls_ended(api: &Api) -> f64 {
    let mut ended = 0.0;
    for outcome in ["stored", "failed", "gave_up"] {
        ended += metric(
            api,
            &format!("ferrocd_material_polls_total{{outcome=\"{outcome}\"}}"),
        )
        .await;
    }
    ended
}

#[tokio::test]
async fn a_commit_notified_through_both_nodes_at_once_triggers_its_pipeline_once() {
    let Some(nodes) = two_nodes().await else {
        return;
    };
    let (a, b) = (nodes.a.api(), nodes.b.api());
    let work = tempfile::tempdir().unwrap();
    let repo = new_repo(work.path());
    commit(&repo, "a.txt", "first");
    // auto_update: false, so no round polls it: only the notifications below do.
    let yaml = format!(
        "format_version: 10\npipelines:\n  notified:\n    group: nodes\n    materials:\n      code: {{git: {repo}, branch: main, auto_update: false}}\n    stages:\n      - build: {{tasks: [{{exec: {{command: make}}}}]}}\n",
        repo = repo.display()
    );
    a.put_config("notified", &yaml).await.expect(201);
    eventually("B has the pipeline", || async {
        let reply = b.get("/api/pipelines/notified/config").await;
        (reply.status == 200).then_some(())
    })
    .await;
    let notify = serde_json::json!({"repository_url": repo.display().to_string()});
    let mut notified = 0.0;
    // Round 0 is the first poll (which triggers a pipeline that never ran), then a commit each.
    for round in 0..5i64 {
        if round > 0 {
            commit(&repo, &format!("{round}.txt"), &format!("change {round}"));
        }
        let sends = (0..10).map(|i| {
            let (api, notify) = (if i % 2 == 0 { &a } else { &b }, notify.clone());
            async move {
                api.call(reqwest::Method::POST, "/go/api/material/notify/git", notify)
                    .await
                    .expect(202);
            }
        });
        futures::future::join_all(sends).await;
        notified += 10.0;
        eventually("every notified poll has ended", || async {
            (polls_ended(&a).await + polls_ended(&b).await >= notified).then_some(())
        })
        .await;
        assert_eq!(
            instances(&a, "notified").await,
            round + 1,
            "round {round}: one instance per commit, however many polls saw it"
        );
    }
}

#[tokio::test]
async fn one_node_at_a_time_is_on_duty_and_another_takes_it_when_that_one_stops() {
    let Some(TwoNodes { a, b, _dirs }) = two_nodes().await else {
        return;
    };
    let (api_a, api_b) = (a.api(), b.api());
    // A started first and took it; B waits.
    assert_eq!((on_duty(&api_a).await, on_duty(&api_b).await), (1, 0));
    a.stop().await;
    eventually("B takes the duty A left", || async {
        (on_duty(&api_b).await == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_node_on_duty_that_dies_hands_the_duty_on() {
    if std::env::var(TEST_DATABASE_URL).is_err() {
        eprintln!("skipped: several nodes need PostgreSQL ({TEST_DATABASE_URL})");
        return;
    }
    let dirs: Vec<TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let database_url = test_config(dirs[0].path()).database_url;
    let node = |dir: &TempDir| {
        let mut command = serve_command(dir.path());
        command.env("DATABASE_URL", &database_url);
        NodeProcess::start(command)
    };
    let mut a = node(&dirs[0]);
    expect_backend(&a.api()).await;
    eventually("A is on duty", || async {
        (on_duty(&a.api()).await == 1).then_some(())
    })
    .await;
    let b = node(&dirs[1]);
    assert_eq!(on_duty(&b.api()).await, 0, "B waits while A holds it");
    // A crash: no goodbye, its sockets closed by the kernel.
    a.kill();
    eventually("B takes the duty of A, which died", || async {
        (on_duty(&b.api()).await == 1).then_some(())
    })
    .await;
}

/// A PostgreSQL cluster of the test's own (`.ci/postgres`), for a test that stops it: the
/// pass's shared cluster serves every other test meanwhile. Deleted when dropped.
struct PrivateCluster {
    dir: std::path::PathBuf,
    url: String,
}

impl PrivateCluster {
    fn start() -> PrivateCluster {
        // Under /tmp itself: the postgres user must reach it, and a TempDir is its owner's only.
        let dir = std::env::temp_dir().join(format!("ferrocd-test-pg-{}", uuid::Uuid::new_v4()));
        let out = Self::script("start", &dir);
        let url = String::from_utf8(out).unwrap().trim().to_string();
        PrivateCluster { dir, url }
    }

    fn script(action: &str, dir: &std::path::Path) -> Vec<u8> {
        let out = std::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres"))
            .arg(action)
            .arg(dir)
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            ".ci/postgres {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn pause(&self) {
        Self::script("pause", &self.dir);
    }

    fn resume(&self) {
        Self::script("resume", &self.dir);
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        Self::script("stop", &self.dir);
    }
}

#[tokio::test]
async fn after_postgres_restarts_under_load_every_node_recovers_and_its_streams_converge() {
    if std::env::var(TEST_DATABASE_URL).is_err() {
        eprintln!("skipped: needs PostgreSQL ({TEST_DATABASE_URL})");
        return;
    }
    let cluster = PrivateCluster::start();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let node = |dir: &TempDir| {
        let mut config = test_config(dir.path());
        let (server, _) = cluster.url.rsplit_once('/').expect("a database in the URL");
        config.database_url = format!("{server}/restarted");
        config.registrations_per_second = 0;
        config.max_pending_agents = 100_000;
        config
    };
    {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&cluster.url).await.unwrap();
        sqlx::query("CREATE DATABASE restarted")
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let a = Server::start(node(&dirs[0])).await;
    let b = Server::start(node(&dirs[1])).await;
    let (api_a, api_b) = (a.api(), b.api());
    let mut agents_on_b = api_b.subscribe("/agents/events").await;
    agents_on_b
        .wait_for("the agents table", |e| e.event == "agents")
        .await;

    // Registrations through A, one after another, while the database goes away and comes back.
    let stop_load = tokio_util::sync::CancellationToken::new();
    let load = {
        let api = api_a.clone();
        let stop = stop_load.clone();
        tokio::spawn(async move {
            let (mut acknowledged, mut refused) = (Vec::new(), Vec::new());
            let mut n = 0;
            while !stop.is_cancelled() {
                n += 1;
                let (status, body) = api
                    .register_with(serde_json::json!({"hostname": format!("load-{n}")}), None)
                    .await;
                match status {
                    201 => acknowledged.push(Registered::from_body(&body).uuid),
                    _ => refused.push((status, body)),
                }
            }
            (acknowledged, refused)
        })
    };
    eventually("some registrations before the restart", || async {
        (api_a.agent_uuids().await.len() >= 3).then_some(())
    })
    .await;
    cluster.pause();
    eventually(
        "a call while the database is away is answered 503",
        || async {
            let reply = api_b.get("/go/api/agents").await;
            (reply.status == 503).then_some(reply)
        },
    )
    .await;
    cluster.resume();
    eventually("A registers again", || async {
        let (status, body) = api_a
            .register_with(serde_json::json!({"hostname": "after"}), None)
            .await;
        (status == 201).then_some(body)
    })
    .await;
    stop_load.cancel();
    let (acknowledged, refused) = load.await.unwrap();
    for (status, body) in &refused {
        assert_eq!(
            *status, 503,
            "a refusal while the database was away: {body}"
        );
    }

    // Every acknowledged registration is stored, and B's stream shows it: the rows it missed
    // while it could not hear A arrive once it hears again.
    eventually("B reads from the database again", || async {
        (api_b.get("/go/api/agents").await.status == 200).then_some(())
    })
    .await;
    let stored: BTreeSet<String> = api_b.agent_uuids().await.into_iter().collect();
    for uuid in &acknowledged {
        assert!(stored.contains(uuid), "acknowledged {uuid} was lost");
    }
    let after = api_a.register("after-recovery").await;
    let mut shown = String::new();
    while let Some(lacking) = stored
        .iter()
        .chain([&after.uuid])
        .find(|uuid| !shown.contains(uuid.as_str()))
    {
        let event = agents_on_b
            .wait_for(&format!("a row with {lacking}"), |e| {
                e.event.starts_with("agent")
            })
            .await;
        shown.push_str(&event.data);
    }
    drop((a, b));
}

#[tokio::test]
async fn a_config_document_stored_through_one_node_is_in_effect_on_the_other() {
    let Some(nodes) = two_nodes().await else {
        return;
    };
    let (a, b) = (nodes.a.api(), nodes.b.api());
    let mut dashboard_on_b = b.subscribe("/pipelines/events").await;
    dashboard_on_b
        .wait_for("the dashboard", |e| e.event == "dashboard")
        .await;
    let yaml = RELAY.replace("relay:", "stored-on-a:");
    a.put_config("from-a", &yaml).await.expect(201);
    dashboard_on_b
        .wait_for("the new pipeline's card on B", |e| {
            e.data.contains("pipeline-stored-on-a")
        })
        .await;
    // B runs it as its own.
    let counter = trigger(&b, "stored-on-a").await;
    assert_eq!(counter, 1);
    // And a deletion through B takes it away on A.
    let deleted = b
        .call(
            reqwest::Method::DELETE,
            "/api/config/from-a",
            serde_json::json!({}),
        )
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    eventually("A no longer has it", || async {
        let reply = a.get("/api/pipelines/stored-on-a/config").await;
        (reply.status == 404).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_node_started_with_other_config_files_than_a_running_one_says_so() {
    if std::env::var(TEST_DATABASE_URL).is_err() {
        eprintln!("skipped: several nodes need PostgreSQL ({TEST_DATABASE_URL})");
        return;
    }
    let dirs: Vec<TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let database_url = test_config(dirs[0].path()).database_url;
    // Three folders, each with a file of the same name: two alike, one with other text.
    let folder = |name: &str, text: &str| {
        let folder = dirs[3].path().join(name);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("relay.gocd.yaml"), text).unwrap();
        folder
    };
    let same = folder("same", RELAY);
    let copy = folder("copy", RELAY);
    let other = folder("other", &RELAY.replace("make", "make -j4"));
    let node = |dir: &TempDir, config: &std::path::Path| {
        let mut command = serve_command(dir.path());
        command
            .env("DATABASE_URL", &database_url)
            .arg("--config")
            .arg(config);
        NodeProcess::start(command)
    };
    let a = node(&dirs[0], &same);
    expect_backend(&a.api()).await;
    assert!(!a.log.contains("differ"), "{}", a.log);
    let b = node(&dirs[1], &copy);
    assert!(
        !b.log.contains("differ"),
        "the same files elsewhere: {}",
        b.log
    );
    let c = node(&dirs[2], &other);
    assert!(
        c.log.contains("--config files differ from those node"),
        "other files: {}",
        c.log
    );
}

/// A TCP proxy in front of PostgreSQL that can go silent, as a NAT that forgot a connection
/// does, on the connections whose client sent `marker` (`LISTEN`: the listener's;
/// `pg_try_advisory_lock`: the duty's): [`Self::silence`] stops every byte both ways on each
/// such connection by then, while keeping its sockets open; connections made afterwards pass.
struct SilencingProxy {
    port: u16,
    /// Bumped by each silence; a connection listening since an older value is silent.
    epoch: Arc<std::sync::atomic::AtomicU64>,
    /// Every connection silent, those made afterwards too: the node cut off.
    cut: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl SilencingProxy {
    async fn start(database_port: u16, marker: &'static [u8]) -> SilencingProxy {
        use std::sync::atomic::{AtomicU64, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let epoch = Arc::new(AtomicU64::new(0));
        let epochs = Arc::clone(&epoch);
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cuts = Arc::clone(&cut);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", database_port)).await
                else {
                    continue;
                };
                // The epoch it sent the marker in, or MAX while it has sent none.
                let listening_since = Arc::new(AtomicU64::new(u64::MAX));
                let silent = {
                    let (epoch, since) = (Arc::clone(&epochs), Arc::clone(&listening_since));
                    let cut = Arc::clone(&cuts);
                    move || {
                        cut.load(Ordering::SeqCst)
                            || since.load(Ordering::SeqCst) < epoch.load(Ordering::SeqCst)
                    }
                };
                let (mut client_in, mut client_out) = client.into_split();
                let (mut server_in, mut server_out) = server.into_split();
                let (to_server, to_client) = (silent.clone(), silent);
                let epoch = Arc::clone(&epochs);
                tokio::spawn(async move {
                    let mut buffer = vec![0; 16 * 1024];
                    while let Ok(n @ 1..) = client_in.read(&mut buffer).await {
                        if buffer[..n].windows(marker.len()).any(|w| w == marker) {
                            listening_since.store(epoch.load(Ordering::SeqCst), Ordering::SeqCst);
                        }
                        if to_server() {
                            std::future::pending::<()>().await;
                        }
                        if server_out.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buffer = vec![0; 16 * 1024];
                    while let Ok(n @ 1..) = server_in.read(&mut buffer).await {
                        if to_client() {
                            std::future::pending::<()>().await;
                        }
                        if client_out.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        SilencingProxy {
            port,
            epoch,
            cut,
            task,
        }
    }

    /// Silences every connection that has sent the marker by now.
    fn silence(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Silences every connection, and every one made from now on.
    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for SilencingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Two nodes, node `behind` ("a" or "b") reaching its database through a [`SilencingProxy`]
/// that tells its connections apart by `marker` and checking them every second; or `None`
/// (having said so) when this pass is not on PostgreSQL.
async fn two_nodes_one_behind_a_proxy(
    behind: &str,
    marker: &'static [u8],
) -> Option<(TwoNodes, SilencingProxy)> {
    let Ok(admin_url) = std::env::var(TEST_DATABASE_URL) else {
        eprintln!("skipped: several nodes need PostgreSQL ({TEST_DATABASE_URL})");
        return None;
    };
    let admin_url = reqwest::Url::parse(&admin_url).expect("a database URL");
    let proxy = SilencingProxy::start(admin_url.port().unwrap_or(5432), marker).await;
    let nodes = two_nodes_with(|name, config| {
        if name == behind {
            let mut url = reqwest::Url::parse(&config.database_url).expect("a database URL");
            url.set_port(Some(proxy.port)).unwrap();
            config.database_url = url.to_string();
            config.database_heartbeat = std::time::Duration::from_secs(1);
        }
    })
    .await?;
    Some((nodes, proxy))
}

#[tokio::test]
async fn a_node_whose_event_connection_went_silent_hears_the_others_again() {
    let Some((nodes, proxy)) = two_nodes_one_behind_a_proxy("b", b"LISTEN").await else {
        return;
    };
    let (a, b) = (nodes.a.api(), nodes.b.api());
    let mut agents_on_b = b.subscribe("/agents/events").await;
    agents_on_b
        .wait_for("the agents table", |e| e.event == "agents")
        .await;
    a.register("before-the-silence").await;
    agents_on_b
        .wait_for("the first agent's row", |e| {
            e.event == "agent-added" && e.data.contains("before-the-silence")
        })
        .await;
    proxy.silence();
    // B hears nothing on that connection now; its heartbeat finds out, it listens again on a
    // new one and re-reads, and the row registered meanwhile through A reaches B's page.
    a.register("during-the-silence").await;
    agents_on_b
        .wait_for("the row registered through A while B was deaf", |e| {
            e.data.contains("during-the-silence")
        })
        .await;
}

#[tokio::test]
async fn two_nodes_storing_conflicting_documents_at_once_accept_one() {
    let Some(nodes) = two_nodes().await else {
        return;
    };
    let (a, b) = (nodes.a.api(), nodes.b.api());
    for round in 0..8 {
        // Two documents defining one pipeline, stored at once through each node.
        let pipeline = format!("contested-{round}");
        let yaml = RELAY.replace("relay:", &format!("{pipeline}:"));
        let (name_a, name_b) = (format!("from-a-{round}"), format!("from-b-{round}"));
        let (on_a, on_b) = tokio::join!(a.put_config(&name_a, &yaml), b.put_config(&name_b, &yaml));
        let mut statuses = [on_a.status, on_b.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [201, 422],
            "round {round}: one is accepted, the other names the pipeline defined twice: {} / {}",
            on_a.text(),
            on_b.text()
        );
    }
    let sources = a.get("/api/config").await.expect(200);
    let errors: Vec<_> = sources["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["errors"].as_array().is_none_or(|e| e.is_empty()))
        .collect();
    assert!(errors.is_empty(), "no source is in error: {errors:?}");
}

#[tokio::test]
async fn a_node_on_duty_cut_off_from_the_database_without_a_word_hands_the_duty_on() {
    // The marker matters not: the proxy cuts every connection below, not one.
    let Some((nodes, proxy)) = two_nodes_one_behind_a_proxy("a", b"pg_try_advisory_lock").await
    else {
        return;
    };
    let (a, b) = (nodes.a.api(), nodes.b.api());
    assert_eq!((on_duty(&a).await, on_duty(&b).await), (1, 0));
    // A is cut off from the database without a word, its sockets open (a NAT that forgot
    // them): the server must end A's session, and with it A's lock, so that B takes the duty.
    // (A itself is not asked: its requests wait on the database it cannot reach.)
    proxy.cut();
    eventually("B takes the duty", || async {
        (on_duty(&b).await == 1).then_some(())
    })
    .await;
}
