//! GoCD's task rules on a real `ferrocd agent`: script tasks run through bash, `run_if`
//! decides which tasks run after a failure, a task type the agent cannot run fails the job
//! naming it, `clean_workspace` empties the sandbox (and nothing outside it), `on_cancel`
//! runs when the job is cancelled, a job whose console stays silent past its timeout is
//! cancelled by the server with a line saying why, and `GO_PIPELINE_LABEL` is the run's label.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::agent_runtime::{AgentProcess, KEY, completed, registered_enabled};
use crate::helpers::{TestApp, eventually, message, spawn_app_with};

/// A server that enables agents with [`KEY`], and one agent of it.
struct Setup {
    app: TestApp,
    _agent: AgentProcess,
    work: TempDir,
    _logs: TempDir,
}

impl Setup {
    async fn start() -> Setup {
        Self::start_with(|_| {}).await
    }

    async fn start_with(configure: impl FnOnce(&mut ferrocd::config::Config)) -> Setup {
        let app = spawn_app_with(|c| {
            c.agent_registration_key = Some(KEY.into());
            configure(c);
        })
        .await;
        let work = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let mut command = AgentProcess::command(&app.base, work.path());
        command.arg("--registration-key").arg(KEY);
        let agent = AgentProcess::spawn(command, work.path(), &logs);
        registered_enabled(&app, &agent).await;
        Setup {
            app,
            _agent: agent,
            work,
            _logs: logs,
        }
    }

    fn sandbox(&self, pipeline: &str) -> PathBuf {
        self.work.path().join("pipelines").join(pipeline)
    }

    /// Schedules `tasks` (and the `extra` fields) as a job of `pipeline`; its build id.
    async fn schedule(&self, pipeline: &str, tasks: Value, extra: Value) -> i64 {
        let mut body = json!({"pipeline_name": pipeline, "stage_name": "s", "job_name": "j",
                              "tasks": tasks, "resources": []});
        for (name, value) in extra.as_object().expect("an object") {
            body[name] = value.clone();
        }
        self.app.schedule_ok(body).await
    }

    /// Runs the job to its end: the run and its console.
    async fn run(&self, pipeline: &str, tasks: Value, extra: Value) -> (Value, String) {
        let build_id = self.schedule(pipeline, tasks, extra).await;
        let run = completed(&self.app, build_id).await;
        (run, self.console(build_id).await)
    }

    async fn console(&self, build_id: i64) -> String {
        String::from_utf8(self.app.console(build_id, Some(0)).await.0).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_task_runs_through_bash_from_a_file_it_leaves_no_trace_of() {
    let setup = Setup::start().await;
    let script =
        "set -o pipefail\nprintf 'a\\nb\\nc\\n' | grep -c .\necho \"in ${BASH_VERSION:+bash}\"\n";
    let (run, console) = setup
        .run(
            "scripted",
            json!([{"type": "script", "script": script}]),
            json!({}),
        )
        .await;
    assert_eq!(run["result"], "Passed", "{run} {console}");
    assert_eq!(
        console,
        "[ferrocd] Task: script: set -o pipefail\\nprintf 'a\\nb\\nc\\n' | grep -c .\\necho \"in ${BASH_VERSION:+bash}\"\n\
         3\n\
         in bash\n\
         [ferrocd] Job completed: Passed\n"
    );
    assert_eq!(run["tasks"][0]["type"], "script", "{run}");
    let left: Vec<_> = std::fs::read_dir(setup.sandbox("scripted"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "the script file is removed: {left:?}");

    // A failing script fails the job like any task.
    let (run, console) = setup
        .run(
            "scripted",
            json!([{"type": "script", "script": "false | true\nexit 7"}]),
            json!({}),
        )
        .await;
    assert_eq!(run["result"], "Failed", "{run}");
    assert!(
        console.contains("[ferrocd] Task failed: exited with code 7\n"),
        "{console}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_failure_only_failed_and_any_tasks_run_and_the_job_fails() {
    let setup = Setup::start().await;
    let (run, console) = setup
        .run(
            "runif",
            json!([
                {"command": "echo", "args": ["first"]},
                {"command": "sh", "args": ["-c", "exit 2"]},
                {"command": "echo", "args": ["skipped-passed"]},
                {"type": "exec", "command": "echo", "args": ["ran-failed"], "run_if": "failed"},
                {"command": "echo", "args": ["ran-any"], "run_if": "any"},
                {"command": "echo", "args": ["skipped-passed-2"], "run_if": "passed"}
            ]),
            json!({}),
        )
        .await;
    assert_eq!(run["result"], "Failed", "{run}");
    assert_eq!(
        console,
        "[ferrocd] Task: echo first\n\
         first\n\
         [ferrocd] Task: sh -c 'exit 2'\n\
         [ferrocd] Task failed: exited with code 2\n\
         [ferrocd] Task: echo ran-failed\n\
         ran-failed\n\
         [ferrocd] Task: echo ran-any\n\
         ran-any\n\
         [ferrocd] Job completed: Failed\n"
    );

    // While everything passes, a failed-only task is skipped and an any task runs.
    let (run, console) = setup
        .run(
            "runif",
            json!([
                {"command": "echo", "args": ["one"]},
                {"command": "echo", "args": ["not-run"], "run_if": "failed"},
                {"command": "echo", "args": ["always"], "run_if": "any"}
            ]),
            json!({}),
        )
        .await;
    assert_eq!(run["result"], "Passed", "{run}");
    assert!(!console.contains("not-run"), "{console}");
    assert!(console.contains("always\n"), "{console}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_type_the_agent_cannot_run_fails_the_job_naming_it() {
    let setup = Setup::start().await;
    let (run, console) = setup
        .run(
            "builders",
            json!([{"type": "rake"}, {"command": "touch", "args": ["after"]}]),
            json!({}),
        )
        .await;
    assert_eq!(run["result"], "Failed", "{run}");
    assert_eq!(
        console,
        "[ferrocd] Task: rake\n\
         [ferrocd] Task failed: ferrocd cannot run \"rake\" tasks yet\n\
         [ferrocd] Job completed: Failed\n"
    );
    assert!(!setup.sandbox("builders").join("after").exists());

    // A type GoCD does not have is refused when scheduled.
    let body = setup
        .app
        .schedule(
            json!({"pipeline_name": "builders", "stage_name": "s", "job_name": "j",
                         "tasks": [{"type": "gradle"}]}),
        )
        .await
        .expect(422);
    assert!(message(&body).contains("gradle"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn clean_workspace_empties_the_sandbox_and_nothing_outside_it() {
    let setup = Setup::start().await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("keep"), "mine").unwrap();
    let link = format!(
        "ln -s {} link; mkdir -p dir/sub; touch dir/sub/f",
        outside.path().display()
    );
    let (run, _) = setup
        .run(
            "cleaned",
            json!([{"command": "sh", "args": ["-c", format!("touch left-over; {link}")]}]),
            json!({}),
        )
        .await;
    assert_eq!(run["result"], "Passed", "{run}");
    assert!(setup.sandbox("cleaned").join("left-over").exists());

    // Without clean_workspace the sandbox is kept.
    let (_, console) = setup
        .run(
            "cleaned",
            json!([{"command": "ls", "args": ["-A"]}]),
            json!({}),
        )
        .await;
    assert!(console.contains("left-over\n"), "{console}");

    let (run, console) = setup
        .run(
            "cleaned",
            json!([{"command": "ls", "args": ["-A"]}]),
            json!({"clean_workspace": true}),
        )
        .await;
    assert_eq!(run["result"], "Passed", "{run}");
    assert_eq!(run["clean_workspace"], true, "{run}");
    assert_eq!(
        console,
        "[ferrocd] Cleaning the sandbox (clean_workspace)\n\
         [ferrocd] Task: ls -A\n\
         [ferrocd] Job completed: Passed\n"
    );
    assert!(setup.sandbox("cleaned").is_dir());
    assert_eq!(
        std::fs::read_to_string(outside.path().join("keep")).unwrap(),
        "mine",
        "what a link in the sandbox pointed at is untouched"
    );
}

async fn wait_for_file(path: &Path) {
    eventually(&format!("{} exists", path.display()), || async {
        path.exists().then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn on_cancel_runs_when_the_job_is_cancelled_and_nothing_after_it() {
    let setup = Setup::start().await;
    let build_id = setup
        .schedule(
            "cancelling",
            json!([
                {"command": "sh", "args": ["-c", "touch started; sleep 60"],
                 "on_cancel": {"type": "script", "script": "echo cleaning up\ntouch cleaned-up"}},
                {"command": "touch", "args": ["after-any"], "run_if": "any"}
            ]),
            json!({}),
        )
        .await;
    let sandbox = setup.sandbox("cancelling");
    wait_for_file(&sandbox.join("started")).await;
    setup.app.cancel(build_id).await.expect(202);
    let run = completed(&setup.app, build_id).await;
    assert_eq!(run["result"], "Cancelled", "{run}");
    let console = setup.console(build_id).await;
    assert_eq!(
        console,
        "[ferrocd] Task: sh -c 'touch started; sleep 60'\n\
         [ferrocd] On cancel: script: echo cleaning up\\ntouch cleaned-up\n\
         cleaning up\n\
         [ferrocd] Job cancelled\n\
         [ferrocd] Job completed: Cancelled\n"
    );
    assert!(sandbox.join("cleaned-up").exists());
    assert!(
        !sandbox.join("after-any").exists(),
        "no task runs after a cancel"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_silent_past_its_timeout_is_cancelled_by_the_server_saying_why() {
    let setup = Setup::start().await;
    let build_id = setup
        .schedule(
            "silent",
            json!([{"command": "sh", "args": ["-c", "echo begin; sleep 60"]}]),
            json!({"timeout_seconds": 2}),
        )
        .await;
    let run = completed(&setup.app, build_id).await;
    assert_eq!(run["result"], "Cancelled", "{run}");
    assert_eq!(run["cancelled_by"], "timeout", "{run}");
    assert_eq!(run["timeout_seconds"], 2, "{run}");
    let console = setup.console(build_id).await;
    assert_eq!(
        console,
        "[ferrocd] Task: sh -c 'echo begin; sleep 60'\n\
         begin\n\
         [ferrocd] Job cancelled\n\
         [ferrocd] Job completed: Cancelled\n\
         [ferrocd] job timed out: no console output for 2 seconds\n"
    );

    // Output keeps a job alive past its timeout.
    let (run, _) = setup
        .run(
            "chatty",
            json!([{"command": "sh", "args": ["-c", "for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.5; done"]}]),
            json!({"timeout_seconds": 2}),
        )
        .await;
    assert_eq!(run["result"], "Passed", "{run}");

    // The schedule API takes GoCD's minutes too.
    let build_id = setup
        .schedule(
            "minutes",
            json!([{"command": "true"}]),
            json!({"timeout": 3}),
        )
        .await;
    assert_eq!(setup.app.build(build_id).await["timeout_seconds"], 180);
    let body = setup
        .app
        .schedule(
            json!({"pipeline_name": "both", "stage_name": "s", "job_name": "j",
                         "tasks": [{"command": "true"}], "timeout": 1, "timeout_seconds": 1}),
        )
        .await
        .expect(422);
    assert!(message(&body).contains("timeout"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_servers_default_timeout_applies_to_jobs_without_one_and_zero_is_never() {
    let setup = Setup::start_with(|c| c.default_job_timeout = Duration::from_secs(2)).await;
    let build_id = setup
        .schedule(
            "defaulted",
            json!([{"command": "sleep", "args": ["60"]}]),
            json!({}),
        )
        .await;
    let run = completed(&setup.app, build_id).await;
    assert_eq!(run["result"], "Cancelled", "{run}");
    let console = setup.console(build_id).await;
    assert!(
        console.ends_with("\n[ferrocd] job timed out: no console output for 2 seconds\n"),
        "{console}"
    );

    let (run, _) = setup
        .run(
            "patient",
            json!([{"command": "sleep", "args": ["4"]}]),
            json!({"timeout_seconds": 0}),
        )
        .await;
    assert_eq!(run["result"], "Passed", "{run}");
}

#[tokio::test(flavor = "multi_thread")]
async fn go_pipeline_label_is_the_runs_label_and_the_servers_go_variables_pass_through() {
    let setup = Setup::start().await;
    let print = r#"printf '%s|%s|%s\n' "$GO_PIPELINE_LABEL" "$GO_TRIGGER_USER" "$GO_SERVER_URL""#;
    let (run, console) = setup
        .run(
            "labelled",
            json!([{"command": "sh", "args": ["-c", print]}]),
            json!({"pipeline_label": "1.4.2-abc123",
                   "environment_variables": {"GO_TRIGGER_USER": "alice",
                                             "GO_SERVER_URL": "http://elsewhere/go"}}),
        )
        .await;
    assert_eq!(run["result"], "Passed", "{run}");
    assert_eq!(run["pipeline_label"], "1.4.2-abc123", "{run}");
    let server_url = format!("{}/go", setup.app.base);
    assert!(
        console.contains(&format!("1.4.2-abc123|alice|{server_url}\n")),
        "{console}"
    );

    // Without a label, the counter.
    let (run, console) = setup
        .run(
            "labelled",
            json!([{"command": "sh", "args": ["-c", print]}]),
            json!({}),
        )
        .await;
    let counter = run["pipeline_counter"].as_i64().unwrap();
    assert!(console.contains(&format!("\n{counter}||")), "{console}");
}
