//! `ferrocd agent` as a real process against a real server: jobs run, consoles hold the exact
//! bytes, a failing task stops the job, variables reach tasks, cancel stops every process,
//! and a restarted agent keeps its identity.
//!
//! The agent writes marker lines of its own into the console (see src/agent/console.rs):
//! `[ferrocd] Task: CMDLINE` before each task, `[ferrocd] Task failed: ...` after a failing
//! one, `[ferrocd] Job cancelled` on cancel and `[ferrocd] Job completed: RESULT` last.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{Registered, TestApp, eventually, spawn_app_with};

pub(crate) const KEY: &str = "agent-runtime-key";

/// A running `ferrocd agent`; stopped (SIGTERM, then SIGKILL) when dropped. Its log is
/// printed if the test failed.
pub(crate) struct AgentProcess {
    child: Option<Child>,
    work_dir: PathBuf,
    log: PathBuf,
}

impl AgentProcess {
    fn start(app: &TestApp, work_dir: &Path, log_dir: &TempDir) -> AgentProcess {
        Self::start_keyed(app, work_dir, log_dir, false)
    }

    /// `key_in_env`: the registration key comes from `FERROCD_AGENT_REGISTRATION_KEY` instead
    /// of `--registration-key`.
    fn start_keyed(
        app: &TestApp,
        work_dir: &Path,
        log_dir: &TempDir,
        key_in_env: bool,
    ) -> AgentProcess {
        let mut command = Self::command(&app.base, work_dir);
        if key_in_env {
            command.env("FERROCD_AGENT_REGISTRATION_KEY", KEY);
        } else {
            command.arg("--registration-key").arg(KEY);
        }
        Self::spawn(command, work_dir, log_dir)
    }

    /// `ferrocd agent --server SERVER --work-dir WORK_DIR`, for a test to add flags to.
    pub(crate) fn command(server: &str, work_dir: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferrocd"));
        command
            .arg("agent")
            .arg("--server")
            .arg(server)
            .arg("--work-dir")
            .arg(work_dir);
        command
    }

    /// Runs `command`, its stdout and stderr going to a log in `log_dir`.
    pub(crate) fn spawn(mut command: Command, work_dir: &Path, log_dir: &TempDir) -> AgentProcess {
        let log = log_dir
            .path()
            .join(format!("agent-{}.log", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("agent log");
        let child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("the agent starts");
        AgentProcess {
            child: Some(child),
            work_dir: work_dir.to_path_buf(),
            log,
        }
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the agent has logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's exit status once it has exited by itself; `None` while it runs.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The identity the agent saved in its work dir.
    pub(crate) fn identity(&self) -> Option<(String, String)> {
        let text = std::fs::read_to_string(self.work_dir.join("agent.json")).ok()?;
        let value: Value = serde_json::from_str(&text).ok()?;
        Some((
            value["uuid"].as_str()?.to_string(),
            value["token"].as_str()?.to_string(),
        ))
    }

    fn sandbox(&self, pipeline: &str) -> PathBuf {
        self.work_dir.join("pipelines").join(pipeline)
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `patience`).
    pub(crate) fn stop(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + patience;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
        if std::thread::panicking() {
            let log = self.log();
            eprintln!("---- agent log ----\n{log}---- end of agent log ----");
        }
    }
}

async fn app_with_key() -> TestApp {
    spawn_app_with(|c| c.agent_registration_key = Some(KEY.into())).await
}

/// Starts an agent and waits until the server lists it Enabled.
async fn start_agent(app: &TestApp, work_dir: &Path, logs: &TempDir) -> (AgentProcess, String) {
    start_agent_keyed(app, work_dir, logs, false).await
}

async fn start_agent_keyed(
    app: &TestApp,
    work_dir: &Path,
    logs: &TempDir,
    key_in_env: bool,
) -> (AgentProcess, String) {
    let agent = AgentProcess::start_keyed(app, work_dir, logs, key_in_env);
    let uuid = registered_enabled(app, &agent).await;
    (agent, uuid)
}

/// A `ferrocd agent` started with the registration key in folders of its own, registered and
/// Enabled; it stops, and then its folders go, when dropped.
pub(crate) struct EnabledAgent {
    /// Declared first: it stops before its folders go.
    _process: AgentProcess,
    work_dir: TempDir,
    _logs: TempDir,
}

impl EnabledAgent {
    /// Its work dir (`pipelines/NAME` below it are the sandboxes).
    pub fn path(&self) -> &Path {
        self.work_dir.path()
    }
}

/// Starts an agent with the key of `app` (see [`KEY`]) and waits until it is Enabled.
pub(crate) async fn enabled_agent(app: &TestApp) -> EnabledAgent {
    let work_dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut command = AgentProcess::command(&app.base, work_dir.path());
    command.arg("--registration-key").arg(KEY);
    let process = AgentProcess::spawn(command, work_dir.path(), &logs);
    registered_enabled(app, &process).await;
    EnabledAgent {
        _process: process,
        work_dir,
        _logs: logs,
    }
}

/// Waits until `agent` has registered and the server lists it Enabled; its uuid.
pub async fn registered_enabled(app: &TestApp, agent: &AgentProcess) -> String {
    let uuid = eventually("the agent registers and saves its identity", || async {
        agent.identity().map(|(uuid, _)| uuid)
    })
    .await;
    eventually("the agent is listed Enabled", || async {
        let (status, body) = app.get_json(&format!("/api/agents/{uuid}")).await;
        (status == 200 && body["agent_config_state"] == "Enabled").then_some(())
    })
    .await;
    uuid
}

/// Waits until the run is Completed and returns it.
pub(crate) async fn completed(app: &TestApp, build_id: i64) -> Value {
    eventually(&format!("build {build_id} completes"), || async {
        let (status, run) = app.get_json(&format!("/api/builds/{build_id}")).await;
        (status == 200 && run["state"] == "Completed").then_some(run)
    })
    .await
}

fn shown(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_job_ends_failed_and_its_console_holds_the_exact_bytes() {
    let app = app_with_key().await;
    let work = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (_agent, uuid) = start_agent(&app, work.path(), &logs).await;

    let script = r#"echo hello; printf "\033[31mred\033[0m\n"; printf "50%%\r100%%\n"; exit 3"#;
    let build_id = app
        .schedule_ok(
            json!({"pipeline_name": "bytes", "stage_name": "s", "job_name": "j",
               "tasks": [{"command": "sh", "args": ["-c", script]}], "resources": []}),
        )
        .await;
    let run = completed(&app, build_id).await;
    assert_eq!(run["result"], "Failed", "{run}");
    assert_eq!(run["agent_uuid"], uuid.as_str(), "{run}");

    let mut expected = Vec::new();
    expected.extend_from_slice(format!("[ferrocd] Task: sh -c '{script}'\n").as_bytes());
    expected.extend_from_slice(b"hello\n\x1b[31mred\x1b[0m\n50%\r100%\n");
    expected.extend_from_slice(b"[ferrocd] Task failed: exited with code 3\n");
    expected.extend_from_slice(b"[ferrocd] Job completed: Failed\n");
    let stored = app.console(build_id, Some(0)).await.0;
    assert_eq!(
        stored,
        expected,
        "console {} != {}",
        shown(&stored),
        shown(&expected)
    );
    assert_eq!(run["console_length"], expected.len() as u64, "{run}");
}

#[tokio::test(flavor = "multi_thread")]
async fn passing_tasks_all_run_and_the_job_passes() {
    let app = app_with_key().await;
    let work = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (agent, _uuid) = start_agent(&app, work.path(), &logs).await;

    let build_id = app
        .schedule_ok(
            json!({"pipeline_name": "passes", "stage_name": "s", "job_name": "j",
               "tasks": [{"command": "sh", "args": ["-c", "echo one; echo err >&2; touch first"]},
                         {"command": "sh", "args": ["-c", "printf two; touch second"]}],
               "resources": []}),
        )
        .await;
    let run = completed(&app, build_id).await;
    assert_eq!(run["result"], "Passed", "{run}");
    let stored = app.console(build_id, Some(0)).await.0;
    let expected = b"[ferrocd] Task: sh -c 'echo one; echo err >&2; touch first'\n\
one\nerr\n\
[ferrocd] Task: sh -c 'printf two; touch second'\n\
two\n\
[ferrocd] Job completed: Passed\n";
    assert_eq!(stored, expected.to_vec(), "console {}", shown(&stored));
    assert!(agent.sandbox("passes").join("first").exists());
    assert!(agent.sandbox("passes").join("second").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_failing_task_the_next_one_does_not_run() {
    let app = app_with_key().await;
    let work = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (agent, _uuid) = start_agent(&app, work.path(), &logs).await;

    let build_id = app
        .schedule_ok(
            json!({"pipeline_name": "stops", "stage_name": "s", "job_name": "j",
               "tasks": [{"command": "sh", "args": ["-c", "touch first; exit 1"]},
                         {"command": "touch", "args": ["second-ran"]}],
               "resources": []}),
        )
        .await;
    let run = completed(&app, build_id).await;
    assert_eq!(run["result"], "Failed", "{run}");
    let sandbox = agent.sandbox("stops");
    assert!(
        sandbox.join("first").exists(),
        "the first task ran in the sandbox"
    );
    assert!(!sandbox.join("second-ran").exists(), "the second task ran");
    let stored = String::from_utf8(app.console(build_id, Some(0)).await.0).unwrap();
    assert_eq!(
        stored,
        "[ferrocd] Task: sh -c 'touch first; exit 1'\n\
         [ferrocd] Task failed: exited with code 1\n\
         [ferrocd] Job completed: Failed\n"
    );

    // A command that cannot start fails the job the same way, with a line saying so.
    let build_id = app
        .schedule_ok(
            json!({"pipeline_name": "stops", "stage_name": "s", "job_name": "j",
               "tasks": [{"command": "/no/such/program", "args": []},
                         {"command": "touch", "args": ["second-ran"]}],
               "resources": []}),
        )
        .await;
    let run = completed(&app, build_id).await;
    assert_eq!(run["result"], "Failed", "{run}");
    assert!(!sandbox.join("second-ran").exists(), "the second task ran");
    let stored = String::from_utf8(app.console(build_id, Some(0)).await.0).unwrap();
    assert!(
        stored.contains("[ferrocd] Task failed: could not start '/no/such/program'"),
        "{stored}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn environment_variables_reach_the_task() {
    let app = app_with_key().await;
    let work = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (_agent, _uuid) = start_agent(&app, work.path(), &logs).await;

    let script = r#"printf '%s|%s|%s|%s|%s|%s\n' "$GREETING" "$GO_PIPELINE_NAME" "$GO_PIPELINE_COUNTER" "$GO_STAGE_NAME" "$GO_STAGE_COUNTER" "$GO_JOB_NAME"; pwd"#;
    let build_id = app
        .schedule_ok(
            json!({"pipeline_name": "envpipe", "stage_name": "envstage", "job_name": "envjob",
               "tasks": [{"command": "sh", "args": ["-c", script]}], "resources": [],
               "environment_variables": {"GREETING": "hi there"}}),
        )
        .await;
    let run = completed(&app, build_id).await;
    assert_eq!(run["result"], "Passed", "{run}");
    let counter = run["pipeline_counter"]
        .as_i64()
        .expect("a numeric pipeline_counter");
    let stored = String::from_utf8(app.console(build_id, Some(0)).await.0).unwrap();
    let sandbox = std::fs::canonicalize(work.path().join("pipelines/envpipe")).unwrap();
    let expected_line = format!("hi there|envpipe|{counter}|envstage|1|envjob\n");
    assert!(stored.contains(&expected_line), "{stored:?}");
    assert!(
        stored.contains(&format!("{}\n", sandbox.display())),
        "the task runs in the sandbox: {stored:?}"
    );
}

/// A process's pid is gone (or a zombie: dead, waiting to be reaped).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("");
            state == "Z" || state == "X"
        }
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_running_job_stops_all_its_processes() {
    let app = app_with_key().await;
    let work = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (agent, uuid) = start_agent(&app, work.path(), &logs).await;

    let build_id = app.schedule_ok(json!({"pipeline_name": "cancel", "stage_name": "s", "job_name": "j",
               "tasks": [{"command": "sh",
                          "args": ["-c", "echo $$ > shell.pid; sleep 600 & echo $! > child.pid; echo started; wait"]}],
               "resources": []}),
    )
    .await;
    let sandbox = agent.sandbox("cancel");
    let (shell, child) = eventually("the task records its pids", || async {
        Some((
            read_pid(&sandbox.join("shell.pid"))?,
            read_pid(&sandbox.join("child.pid"))?,
        ))
    })
    .await;
    eventually("the run is Building", || async {
        let (_, run) = app.get_json(&format!("/api/builds/{build_id}")).await;
        (run["state"] == "Building").then_some(())
    })
    .await;
    eventually("the agent is Building", || async {
        let agent = app.agent(&uuid).await;
        (agent["agent_state"] == "Building").then_some(())
    })
    .await;
    assert!(
        !process_gone(shell) && !process_gone(child),
        "the task runs"
    );

    let (status, run) = app
        .send_json(
            reqwest::Method::POST,
            &format!("/api/builds/{build_id}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{run}");

    let run = completed(&app, build_id).await;
    assert_eq!(run["result"], "Cancelled", "{run}");
    for pid in [shell, child] {
        eventually(&format!("process {pid} is gone"), || async {
            process_gone(pid).then_some(())
        })
        .await;
    }
    let stored = String::from_utf8(app.console(build_id, Some(0)).await.0).unwrap();
    assert!(stored.contains("started\n"), "{stored:?}");
    assert!(
        stored.ends_with("[ferrocd] Job cancelled\n[ferrocd] Job completed: Cancelled\n"),
        "{stored:?}"
    );
    eventually("the agent is Idle again", || async {
        let agent = app.agent(&uuid).await;
        (agent["agent_state"] == "Idle").then_some(())
    })
    .await;
}

async fn ping_status(app: &TestApp, uuid: &str, token: &str) -> u16 {
    let agent = Registered {
        uuid: uuid.to_string(),
        token: token.to_string(),
    };
    app.as_agent(&agent)
        .with_token(token)
        .ping(json!({"agent_state": "Idle"}))
        .await
        .parts()
        .0
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_keeps_its_identity() {
    let app = app_with_key().await;
    let work = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (mut first, uuid) = start_agent(&app, work.path(), &logs).await;
    let (_, first_token) = first.identity().unwrap();
    let status = first
        .stop(Duration::from_secs(15))
        .expect("the agent exits on SIGTERM");
    assert!(status.success(), "SIGTERM is a clean stop: {status:?}");

    let second = AgentProcess::start(&app, work.path(), &logs);
    let second_token = eventually("the restarted agent re-registers", || async {
        second
            .identity()
            .filter(|(_, token)| *token != first_token)
            .map(|(same_uuid, token)| {
                assert_eq!(same_uuid, uuid);
                token
            })
    })
    .await;
    // The old token no longer works; the new one does.
    assert_eq!(ping_status(&app, &uuid, &first_token).await, 401);
    assert_eq!(ping_status(&app, &uuid, &second_token).await, 200);

    let (status, body) = app.get_json("/api/agents").await;
    assert_eq!(status, 200);
    let agents = body["_embedded"]["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{body}");
    assert_eq!(agents[0]["uuid"], uuid.as_str());
    assert_eq!(agents[0]["agent_config_state"], "Enabled");

    // And it still takes work.
    let build_id = app
        .schedule_ok(
            json!({"pipeline_name": "again", "stage_name": "s", "job_name": "j",
               "tasks": [{"command": "true", "args": []}], "resources": []}),
        )
        .await;
    let run = completed(&app, build_id).await;
    assert_eq!(run["result"], "Passed", "{run}");
    assert_eq!(run["agent_uuid"], uuid.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn megabytes_of_output_arrive_whole_and_in_order() {
    let app = app_with_key().await;
    let work = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (_agent, _uuid) = start_agent(&app, work.path(), &logs).await;

    // About 2.9 MB: more than one 1 MiB request, stdout and stderr interleaved.
    let script = "i=0; while [ $i -lt 40 ]; do seq $((i*10000+1)) $((i*10000+10000)); echo \"err $i\" >&2; i=$((i+1)); done";
    let build_id = app
        .schedule_ok(
            json!({"pipeline_name": "big", "stage_name": "s", "job_name": "j",
               "tasks": [{"command": "sh", "args": ["-c", script]}], "resources": []}),
        )
        .await;
    let run = completed(&app, build_id).await;
    assert_eq!(run["result"], "Passed", "{run}");
    let mut expected = format!("[ferrocd] Task: sh -c '{script}'\n");
    for i in 0..40u64 {
        for n in (i * 10000 + 1)..=(i * 10000 + 10000) {
            expected.push_str(&format!("{n}\n"));
        }
        expected.push_str(&format!("err {i}\n"));
    }
    expected.push_str("[ferrocd] Job completed: Passed\n");
    let stored = app.console(build_id, Some(0)).await.0;
    assert!(expected.len() > 2 * 1024 * 1024);
    assert_eq!(stored.len(), expected.len());
    assert!(stored == expected.as_bytes(), "the console differs");
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_the_agent_mid_job_cancels_the_job_and_exits_cleanly() {
    let app = app_with_key().await;
    let work = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (mut agent, _uuid) = start_agent(&app, work.path(), &logs).await;

    let build_id = app.schedule_ok(json!({"pipeline_name": "stopping", "stage_name": "s", "job_name": "j",
               "tasks": [{"command": "sh", "args": ["-c", "sleep 600 & echo $! > child.pid; wait"]}],
               "resources": []}),
    )
    .await;
    let sandbox = agent.sandbox("stopping");
    let child = eventually("the task records its child's pid", || async {
        read_pid(&sandbox.join("child.pid"))
    })
    .await;
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = agent.stop(Duration::from_secs(15));
        (agent, status)
    })
    .await
    .unwrap()
    .1
    .expect("the agent exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(process_gone(child), "the task's process outlived the agent");
    let run = completed(&app, build_id).await;
    assert_eq!(run["result"], "Cancelled", "{run}");
    let stored = String::from_utf8(app.console(build_id, Some(0)).await.0).unwrap();
    assert!(
        stored.ends_with(
            "[ferrocd] Agent stopping: job cancelled\n[ferrocd] Job completed: Cancelled\n"
        ),
        "{stored:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_console_subscriber_sees_the_lines_while_the_job_runs() {
    let app = app_with_key().await;
    let work = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    // The job waits for a file the test creates, so "while it runs" is certain, not timing.
    let gate = work.path().join("gate");
    let script = format!(
        r#"echo hello; printf "\033[31mred\033[0m\n"; printf "50%%\r100%%\n"; while [ ! -e '{}' ]; do sleep 0.05; done; echo after; exit 3"#,
        gate.display()
    );
    let build_id = app
        .schedule_ok(
            json!({"pipeline_name": "watched", "stage_name": "s", "job_name": "j",
               "tasks": [{"command": "sh", "args": ["-c", script]}], "resources": []}),
        )
        .await;
    let mut stream = crate::helpers::SseClient::connect(
        &app.url(&format!("/builds/{build_id}/console/events")),
        None,
    )
    .await;
    let (_agent, _uuid) = start_agent(&app, work.path(), &logs).await;

    // The first lines arrive while the job is still building (it waits at the gate).
    let mut seen = String::new();
    while !seen.contains("100%\n") {
        let event = stream
            .wait_for("console lines", |e| e.event == "console")
            .await;
        seen.push_str(&crate::helpers::text_content(&event.data));
    }
    let (_, run) = app.get_json(&format!("/api/builds/{build_id}")).await;
    assert_ne!(
        run["state"], "Completed",
        "the lines came before the end: {run}"
    );
    assert!(seen.contains("hello\nred\n50%\r100%\n"), "{seen:?}");

    std::fs::write(&gate, b"open").unwrap();
    let run = completed(&app, build_id).await;
    assert_eq!(run["result"], "Failed");
    let stored = app.console(build_id, Some(0)).await.0;
    while seen.len()
        < String::from_utf8_lossy(&stored)
            .replace("\x1b[31m", "")
            .replace("\x1b[0m", "")
            .len()
    {
        let event = stream
            .wait_for("the last lines", |e| e.event == "console")
            .await;
        seen.push_str(&crate::helpers::text_content(&event.data));
    }
    let expected = String::from_utf8_lossy(&stored)
        .replace("\x1b[31m", "")
        .replace("\x1b[0m", "");
    assert_eq!(
        seen, expected,
        "the subscriber saw every byte of the log, once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_own_variables_do_not_reach_tasks() {
    let app = app_with_key().await;
    let work = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (_agent, _uuid) = start_agent_keyed(&app, work.path(), &logs, true).await;

    let build_id = app
        .schedule_ok(
            json!({"pipeline_name": "envleak", "stage_name": "s", "job_name": "j",
               "tasks": [{"command": "env", "args": []}], "resources": [],
               "environment_variables": {"MINE": "kept"}}),
        )
        .await;
    let run = completed(&app, build_id).await;
    assert_eq!(run["result"], "Passed", "{run}");
    let stored = String::from_utf8(app.console(build_id, Some(0)).await.0).unwrap();
    assert!(stored.contains("MINE=kept\n"), "{stored:?}");
    assert!(stored.contains("GO_JOB_NAME=j\n"), "{stored:?}");
    assert!(
        !stored.contains(KEY),
        "the registration key leaked: {stored:?}"
    );
    assert!(!stored.contains("FERROCD_"), "{stored:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn background_processes_live_through_the_job_and_end_with_it() {
    let app = app_with_key().await;
    let work = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (agent, _uuid) = start_agent(&app, work.path(), &logs).await;

    // The first task starts a "server" that answers only after its task has ended; the
    // second waits for the answer (a closed pipe would have killed the server on SIGPIPE).
    let server = "(while [ ! -e ask ]; do sleep 0.02; done; echo serving; echo yes > answered; sleep 600) & echo $! > server.pid";
    let client = "touch ask; while [ ! -e answered ]; do sleep 0.02; done; echo answered";
    let build_id = app
        .schedule_ok(
            json!({"pipeline_name": "bg", "stage_name": "s", "job_name": "j",
               "tasks": [{"command": "sh", "args": ["-c", server]},
                         {"command": "sh", "args": ["-c", client]}],
               "resources": []}),
        )
        .await;
    let run = completed(&app, build_id).await;
    assert_eq!(run["result"], "Passed", "{run}");
    let stored = String::from_utf8(app.console(build_id, Some(0)).await.0).unwrap();
    // Each task has its own pipe, read by its own reader: "serving" (the first task's
    // background process) and "answered" (the second task) may reach the console in either
    // order, but both arrive before the job's last line.
    let (body, last) = stored
        .rsplit_once("[ferrocd] Job completed")
        .expect("the job's last line");
    assert_eq!(last, ": Passed\n", "{stored:?}");
    assert!(body.contains("\nserving\n"), "{stored:?}");
    assert!(body.contains("\nanswered\n"), "{stored:?}");
    let pid = read_pid(&agent.sandbox("bg").join("server.pid")).expect("the server's pid");
    eventually(
        &format!("the background process {pid} ended with the job"),
        || async { process_gone(pid).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_console_past_the_servers_cap_is_cut_with_a_line_and_the_job_runs_on() {
    let app = spawn_app_with(|c| {
        c.agent_registration_key = Some(KEY.into());
        c.max_console_bytes = 4096;
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (_agent, _uuid) = start_agent(&app, work.path(), &logs).await;
    // 60 KB of output, then a file written after it: the job goes on after the cut.
    let done = work.path().join("ran-to-the-end");
    let script = format!("seq 1 10000; touch {}", done.display());
    let build_id = app
        .schedule_ok(
            json!({"pipeline_name": "loud", "stage_name": "s", "job_name": "j",
                            "tasks": [{"command": "sh", "args": ["-c", script]}]}),
        )
        .await;
    let run = completed(&app, build_id).await;
    assert_eq!(run["result"], "Passed", "{run}");
    assert!(done.exists(), "the task ran to its end");
    let stored = String::from_utf8(app.console(build_id, Some(0)).await.0).unwrap();
    assert!(
        stored.ends_with("\n[ferrocd] console truncated at 4096 bytes\n"),
        "{:?}",
        &stored[stored.len().saturating_sub(200)..]
    );
    assert_eq!(stored.matches("console truncated").count(), 1);
    assert!(stored.len() < 4096 + 100, "{}", stored.len());
}

/// What registering agent `uuid` sends, as someone other than the agent would.
fn registration_of(uuid: &str) -> Value {
    json!({"uuid": uuid, "hostname": "impostor", "ip_address": "10.0.0.9",
           "operating_system": "Linux", "sandbox": "/elsewhere", "free_space": 1,
           "resources": [], "environments": [], "agent_version": "test"})
}

/// Re-registers agent `uuid` with `token` and uses the new token once, which retires `token`
/// for good; the new token, or `None` if `token` was no longer the agent's.
async fn take_over(app: &TestApp, uuid: &str, token: &str) -> Option<String> {
    let stolen = Registered {
        uuid: uuid.to_string(),
        token: token.to_string(),
    };
    let reply = app.as_agent(&stolen).register(registration_of(uuid)).await;
    if reply.status != 200 {
        return None;
    }
    let new_token = reply.body["token"].as_str()?.to_string();
    (ping_status(app, uuid, &new_token).await == 200).then_some(new_token)
}

/// Frees the uuid on the server, as an administrator would: disable, then delete.
async fn delete_on_the_server(app: &TestApp, uuid: &str) {
    app.patch_agent(uuid, json!({"agent_config_state": "Disabled"}))
        .await
        .expect(200);
    app.delete_agent(uuid).await.expect(200);
}

/// Once the agent is back under `uuid` with a token other than `refused_token`, it takes work.
async fn back_and_working(app: &TestApp, agent: &AgentProcess, uuid: &str, refused_token: &str) {
    eventually("the agent registers again under its uuid", || async {
        agent
            .identity()
            .filter(|(same, token)| same == uuid && token != refused_token)
    })
    .await;
    // A deleted agent's uuid comes back Pending, key or not: an admin lets it back in.
    let shown = app.agent(uuid).await;
    assert_eq!(shown["agent_config_state"], "Pending", "{shown}");
    app.patch_agent(uuid, json!({"agent_config_state": "Enabled"}))
        .await
        .expect(200);
    eventually("the agent is listed Enabled again", || async {
        let (status, body) = app.get_json(&format!("/api/agents/{uuid}")).await;
        (status == 200 && body["agent_config_state"] == "Enabled").then_some(())
    })
    .await;
    let build_id = app
        .schedule_ok(
            json!({"pipeline_name": "welcome-back", "stage_name": "s", "job_name": "j",
               "tasks": [{"command": "true", "args": []}], "resources": []}),
        )
        .await;
    let run = completed(app, build_id).await;
    assert_eq!(run["result"], "Passed", "{run}");
    assert_eq!(run["agent_uuid"], uuid, "{run}");
}

/// Waits until the agent has been refused at least twice (it asked again after the first
/// 409), checking it is still running and still holds its identity.
async fn refused_and_still_asking(agent: &mut AgentProcess, uuid: &str) {
    eventually("the agent says its identity was refused", || async {
        agent.log().contains("AGENT IDENTITY REFUSED").then_some(())
    })
    .await;
    let log = agent.log();
    assert!(
        log.contains("An administrator must approve or enable agent"),
        "{log}"
    );
    eventually("the agent asks again after the refusal", || async {
        agent.log().contains("still refuses").then_some(())
    })
    .await;
    assert_eq!(agent.exited(), None, "the agent exited after a 409");
    let (kept, _) = agent.identity().expect("the identity file");
    assert_eq!(kept, uuid, "the agent kept its uuid");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_refused_at_start_keeps_its_identity_and_asks_until_let_back() {
    let app = app_with_key().await;
    let work = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    // An identity the server no longer accepts: its token was retired by someone else.
    let first = app.register("refused-at-start").await;
    take_over(&app, &first.uuid, &first.token)
        .await
        .expect("the take-over");
    std::fs::write(
        work.path().join("agent.json"),
        json!({"uuid": first.uuid, "token": first.token}).to_string(),
    )
    .unwrap();

    let mut agent = AgentProcess::start(&app, work.path(), &logs);
    refused_and_still_asking(&mut agent, &first.uuid).await;
    assert_eq!(
        agent.identity(),
        Some((first.uuid.clone(), first.token.clone())),
        "the refused identity is kept as it was"
    );

    delete_on_the_server(&app, &first.uuid).await;
    back_and_working(&app, &agent, &first.uuid, &first.token).await;
    assert!(
        agent.log().contains("accepts this agent's identity again"),
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_refused_after_a_401_keeps_running_and_asks_until_let_back() {
    let app = app_with_key().await;
    let work = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (mut agent, uuid) = start_agent(&app, work.path(), &logs).await;

    // Someone takes the identity over while the agent runs. The agent may win a round (its
    // next ping's 401 re-registers it with the token just replaced, which still counts once):
    // then the take-over goes again with the token it got.
    let agent_token = eventually("the identity is taken over", || async {
        let (_, token) = agent.identity()?;
        take_over(&app, &uuid, &token).await.map(|_| token)
    })
    .await;
    refused_and_still_asking(&mut agent, &uuid).await;

    delete_on_the_server(&app, &uuid).await;
    back_and_working(&app, &agent, &uuid, &agent_token).await;
}
