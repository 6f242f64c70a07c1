//! `ferrocd db copy`: an installation that ran on the embedded database moves to PostgreSQL
//! and shows everything it had: its agents, a build with its console byte for byte, a
//! pipeline's history; new rows after the copy get new ids. A second copy into the filled
//! database is refused. Needs PostgreSQL: in the SQLite pass it says it is skipped.

use serde_json::{Value, json};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;
use crate::pipelines::{finish_next, trigger};

const MOVING: &str = r#"
format_version: 10
pipelines:
  moving:
    group: moves
    stages:
      - build:
          jobs:
            compile:
              tasks:
                - exec: {command: make, arguments: [all]}
"#;

/// A server on the embedded database even in the Postgres pass (so not `Server::start`, which
/// checks that a server runs on the pass's database).
struct Embedded {
    api: Api,
    stop: CancellationToken,
    running: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Embedded {
    async fn start(config: ferrocd::config::Config) -> Embedded {
        let app = ferrocd::Application::build(config)
            .await
            .expect("the embedded server builds");
        assert_eq!(app.state().db.backend(), ferrocd::db::Backend::Sqlite);
        let api = Api::new(format!("http://{}", app.local_addr()));
        let stop = app.shutdown_token();
        let running = tokio::spawn(app.run_until_stopped());
        Embedded { api, stop, running }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.running
            .await
            .expect("the server task")
            .expect("a clean stop");
    }
}

/// A new, empty database in the cluster at `admin_url`; its URL.
async fn new_database(admin_url: &str) -> String {
    let name = format!("ferrocd_copy_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{TEST_DATABASE_URL}={}: {e}",
                ferrocd::db::redact_password(admin_url)
            )
        });
    // The name is ours (hex), so it needs no quoting.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("the target database is created");
    admin.close().await.ok();
    let (base, _) = admin_url
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("{TEST_DATABASE_URL} is postgres://user@host:port/db"));
    format!("{base}/{name}")
}

/// `ferrocd db copy`, as an operator runs it; its exit code, stdout and stderr.
async fn db_copy(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferrocd"))
        .args(["db", "copy"])
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("ferrocd runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// What a user sees of the installation: every agent, the build and its console, the
/// pipeline's history and its instance.
#[derive(Debug, PartialEq)]
struct Seen {
    agents: Vec<Value>,
    build: Value,
    console: Vec<u8>,
    console_length: String,
    history: Value,
    instance: Value,
}

async fn seen(api: &Api, build_id: i64) -> Seen {
    let mut agents = Vec::new();
    for uuid in api.agent_uuids().await {
        agents.push(api.agent(&uuid).await);
    }
    let (console, console_length) = api.console(build_id, None).await;
    Seen {
        agents,
        build: api.build(build_id).await,
        console,
        console_length,
        history: api
            .get("/go/api/pipelines/moving/history")
            .await
            .expect(200),
        instance: api
            .get("/go/api/pipelines/moving/instance/1")
            .await
            .expect(200),
    }
}

#[tokio::test]
async fn an_embedded_installation_copied_into_postgres_shows_everything_it_had() {
    let Ok(admin_url) = std::env::var(TEST_DATABASE_URL) else {
        eprintln!("skipped: db copy needs PostgreSQL ({TEST_DATABASE_URL})");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = ferrocd::config::Config::for_data_dir(dir.path());
    config.registrations_per_second = 0;
    let sqlite_url = config.database_url.clone();

    // A day on the embedded database: agents, a pipeline run, an ad-hoc build with a console.
    let embedded = Embedded::start(config.clone()).await;
    let api = embedded.api.clone();
    api.put_config("moves", MOVING).await.expect(201);
    let builder = api.register_enabled("builder").await;
    api.patch_agent(&builder.uuid, json!({"resources": ["docker", "linux"]}))
        .await
        .expect(200);
    let waiting = api.register("waiting").await;
    assert_eq!(trigger(&api, "moving").await, 1);
    finish_next(&api, &builder, "Passed").await;

    let build_id = api.schedule_job("adhoc", "console").await;
    let work = api.as_agent(&builder).take_work().await;
    assert_eq!(work["build_id"], build_id);
    api.as_agent(&builder)
        .report_ok(build_id, "Building", None)
        .await;
    // More chunks than one page of the copy reads, some of them not UTF-8 (and a NUL).
    let mut console = Vec::new();
    for n in 0..150u32 {
        let mut chunk = format!("line {n}: ").into_bytes();
        if n % 10 == 3 {
            chunk.extend_from_slice(&[0xff, 0xfe, 0x00, 0xc3, 0x28]);
        }
        chunk.push(b'\n');
        let stored = api
            .as_agent(&builder)
            .append_ok(build_id, console.len(), &chunk)
            .await;
        console.extend_from_slice(&chunk);
        assert_eq!(stored as usize, console.len());
    }
    api.as_agent(&builder)
        .report_ok(build_id, "Completed", Some("Passed"))
        .await;
    assert_eq!(api.console(build_id, None).await.0, console);
    embedded.stop().await;
    // What the installation shows after a restart on the embedded database (agents are
    // Missing until they are heard from again), the yardstick for the copy.
    let embedded = Embedded::start(config.clone()).await;
    let before = seen(&embedded.api, build_id).await;
    assert_eq!(
        before.console, console,
        "the embedded server has the console"
    );
    assert_eq!(before.agents.len(), 2);
    embedded.stop().await;

    // The move.
    let target = new_database(&admin_url).await;
    let (code, stdout, stderr) = db_copy(&["--from", &sqlite_url, "--to", &target], &[]).await;
    assert_eq!(code, Some(0), "db copy: {stdout}{stderr}");
    let line = |table: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().last() == Some(table))
            .unwrap_or_else(|| panic!("a line for {table}: {stdout}"))
            .to_string()
    };
    assert!(line("agents").contains("2 rows"), "{stdout}");
    assert!(line("console_chunks").contains("150 rows"), "{stdout}");
    assert!(line("job_runs").contains("2 rows"), "{stdout}");
    assert!(
        stdout.lines().last().unwrap_or("").starts_with("copied "),
        "a final line: {stdout}"
    );

    // The same installation, now on PostgreSQL.
    config.database_url = target.clone();
    let server = Server::start(config.clone()).await;
    let api = server.api();
    let after = seen(&api, build_id).await;
    assert_eq!(after.agents, before.agents, "the agents");
    assert_eq!(after.build, before.build, "the build");
    assert!(after.console == console, "the console, byte for byte");
    assert_eq!(after.console_length, before.console_length);
    assert_eq!(after.history, before.history, "the pipeline's history");
    assert_eq!(after.instance, before.instance, "the pipeline's instance");
    assert_eq!(after, before);
    let builder_seen = api.agent(&builder.uuid).await;
    assert_eq!(builder_seen["agent_config_state"], "Enabled");
    assert_eq!(builder_seen["resources"], json!(["docker", "linux"]));
    assert_eq!(
        api.agent(&waiting.uuid).await["agent_config_state"],
        "Pending"
    );
    // The agents still hold good tokens: the builder asks for work, is answered, and is back.
    assert_eq!(api.as_agent(&builder).work().await.status, 204);
    assert_eq!(api.agent(&builder.uuid).await["agent_state"], "Idle");

    // New rows get new ids: the pipeline's next instance (a new stage run, whose PostgreSQL
    // rowid comes from its reset sequence) and a job after it.
    assert_eq!(trigger(&api, "moving").await, 2);
    let work = finish_next(&api, &builder, "Passed").await;
    let second_run = work["build_id"].as_i64().expect("a build id");
    assert!(
        second_run > build_id,
        "build {second_run} after the copied {build_id}"
    );
    let history = api
        .get("/go/api/pipelines/moving/history")
        .await
        .expect(200);
    assert_eq!(history["pagination"]["total"], 2, "{history}");
    assert_eq!(history["pipelines"][0]["counter"], 2, "{history}");
    let next = api.schedule_job("adhoc", "after-the-move").await;
    assert!(next > second_run, "build {next} after {second_run}");
    server.stop().await;

    // The database holds an installation now: a second copy is refused, and says why.
    let (code, stdout, stderr) = db_copy(
        &[],
        &[
            ("FERROCD_COPY_FROM", &sqlite_url),
            ("FERROCD_COPY_TO", &target),
        ],
    )
    .await;
    assert_eq!(code, Some(1), "a second copy: {stdout}{stderr}");
    assert!(stderr.contains("is not empty"), "{stderr}");
    assert!(
        stderr.contains("agents"),
        "names a table with rows: {stderr}"
    );
}
