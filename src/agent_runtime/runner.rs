//! Running one job: report `Preparing`, `Building`, run the tasks in order in the pipeline's
//! sandbox, report `Completing`, wait until the console holds every byte, report `Completed`
//! with the result.
//!
//! Tasks follow GoCD's rules: a task runs by its `run_if`: `passed` (the default) while every
//! task before it passed, `failed` once one failed, `any` always; the job fails if any task
//! failed. An exec task runs its command directly; a script task's text is written to a file
//! in the sandbox and run with `bash`; a task type the agent cannot run fails at once, saying
//! so. On a cancel, the running task is stopped, then its `on_cancel` task (if any) runs, and
//! no further task does. With `clean_workspace` the sandbox is emptied before the first task.
//!
//! A report or console upload that keeps failing is retried for [`FAIL_AFTER`] of continuous
//! failure, and only for [`RETRY_AFTER_STOP`] more once the job is cancelled or the agent
//! stops; then the agent moves on (best effort: the job is still reported `Completed`, and
//! `Failed` if its console could not be stored, unless it was cancelled).
//!
//! Every process the tasks started in their process groups, background ones included, is
//! stopped when the job ends (see `process`).
//!
//! Each task gets the agent's environment (without its `FERROCD_*` variables) plus the job's
//! `environment_variables` and GoCD's `GO_SERVER_URL`, `GO_PIPELINE_NAME`,
//! `GO_PIPELINE_COUNTER`, `GO_PIPELINE_LABEL` (the work's `pipeline_label`, else the
//! counter), `GO_STAGE_NAME`, `GO_STAGE_COUNTER` and `GO_JOB_NAME`. A `GO_*` variable the
//! server sent wins over the agent's own value (the server knows the job), except
//! `GO_SERVER_URL`, which is always the agent's `--server` + `/go` (the address the agent
//! reaches the server at).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::client::Client;
use super::console::{self, BuildConsole, ConsoleWriter, command_line};
use super::process::{JobProcesses, TaskEnd, TaskSpec, run_task};
use super::retry::{ApiError, FAIL_AFTER, Patience, retry_within};
use super::wire::{BuildId, JobResult, JobState, RunIf, Task, TaskKind, Work};

/// Once a job is cancelled or the agent stops, failing reports and uploads are retried for
/// this much longer at most.
pub const RETRY_AFTER_STOP: Duration = Duration::from_secs(10);

/// Why a running job is being stopped.
pub struct Stops {
    /// The server said CANCEL.
    pub cancel: CancellationToken,
    /// The agent is shutting down.
    pub shutdown: CancellationToken,
    /// Fires a while after shutdown: stop retrying reports and uploads.
    pub give_up: CancellationToken,
}

impl Stops {
    /// How long this job's calls are retried: see [`RETRY_AFTER_STOP`] and [`FAIL_AFTER`].
    fn patience(&self) -> Patience {
        let stop_retrying = CancellationToken::new();
        let timer = {
            let stop_retrying = stop_retrying.clone();
            let cancel = self.cancel.clone();
            let shutdown = self.shutdown.clone();
            async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = shutdown.cancelled() => {}
                    // The job is over: nothing retries any more.
                    _ = stop_retrying.cancelled() => return,
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_AFTER_STOP) => stop_retrying.cancel(),
                    _ = stop_retrying.cancelled() => {}
                }
            }
        };
        tokio::spawn(timer);
        Patience {
            give_up: self.give_up.clone(),
            stop_retrying,
            fail_after: FAIL_AFTER,
        }
    }
}

/// Runs `work` to its end; returns the result reported (None if the server refused the run).
pub async fn run_job(
    client: Arc<Client>,
    work: Work,
    work_dir: &Path,
    stops: &Stops,
) -> Option<JobResult> {
    let patience = stops.patience();
    // Ends the retry timer with the job.
    let _end_timer = patience.stop_retrying.clone().drop_guard();
    run_job_within(client, work, work_dir, stops, &patience).await
}

async fn run_job_within(
    client: Arc<Client>,
    work: Work,
    work_dir: &Path,
    stops: &Stops,
    patience: &Patience,
) -> Option<JobResult> {
    let build = work.build_id.clone();
    tracing::info!(
        %build,
        pipeline = %work.pipeline_name,
        stage = %work.stage_name,
        job = %work.job_name,
        tasks = work.tasks.len(),
        "running a job"
    );
    if let Err(error) = report(&client, &build, JobState::Preparing, None, patience).await {
        tracing::error!(%build, %error, "the server refused the job's Preparing report; dropping the job");
        return None;
    }
    let (mut console, uploader) = console::start(
        BuildConsole {
            client: Arc::clone(&client),
            build: build.clone(),
        },
        patience.clone(),
    );
    // Either stop, as one token the tasks watch.
    let stop = CancellationToken::new();
    let watcher = {
        let stop = stop.clone();
        let cancel = stops.cancel.clone();
        let shutdown = stops.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = shutdown.cancelled() => {}
            }
            stop.cancel();
        })
    };

    let mut processes = JobProcesses::new();
    let mut sandbox_used = None;
    let mut result = match prepare(&work, work_dir, client.base(), &mut console).await {
        Ok((sandbox, env)) => {
            sandbox_used = Some(sandbox.clone());
            match report(&client, &build, JobState::Building, None, patience).await {
                Ok(()) => {
                    let mut job = JobTasks {
                        client: &client,
                        sandbox: &sandbox,
                        env: &env,
                        console: &mut console,
                        processes: &mut processes,
                    };
                    job.run(&work.tasks, &stop, &stops.give_up).await
                }
                Err(error) => {
                    tracing::error!(%build, %error, "the server refused the job's Building report");
                    console
                        .marker(&format!("The server refused the job: {error}"))
                        .await;
                    JobResult::Failed
                }
            }
        }
        Err(problem) => {
            console.marker(&problem).await;
            JobResult::Failed
        }
    };
    watcher.abort();
    // Whatever the tasks left running (background processes) ends with the job.
    processes.finish().await;
    // Artifacts go up whatever the tasks' result, unless the job was cancelled.
    if let Some(sandbox) = sandbox_used.filter(|_| result != JobResult::Cancelled)
        && !work.artifacts.is_empty()
        && !super::artifacts::publish(&client, &build, &sandbox, &work.artifacts, &mut console)
            .await
    {
        result = JobResult::Failed;
    }
    if result == JobResult::Cancelled {
        if stops.shutdown.is_cancelled() && !stops.cancel.is_cancelled() {
            console.marker("Agent stopping: job cancelled").await;
        } else {
            console.marker("Job cancelled").await;
        }
    }
    console.marker(&format!("Job completed: {result}")).await;

    let _ = report(&client, &build, JobState::Completing, None, patience).await;
    drop(console);
    let console_lost = match uploader.await {
        Ok(upload) => match upload.error {
            Some(error) => {
                tracing::error!(%build, %error, "part of the console was not stored");
                true
            }
            None => false,
        },
        Err(error) => {
            tracing::error!(%build, %error, "the console uploader failed");
            true
        }
    };
    if console_lost && result == JobResult::Passed {
        // A build whose log is lost cannot count as passed.
        result = JobResult::Failed;
    }
    match report(&client, &build, JobState::Completed, Some(result), patience).await {
        Ok(()) => tracing::info!(%build, %result, "job completed"),
        Err(error) => {
            tracing::error!(%build, %result, %error, "could not report the job completed")
        }
    }
    Some(result)
}

/// Fails a job whose description could not be read, so it does not stay assigned forever.
pub async fn fail_unreadable_job(client: Arc<Client>, build: BuildId, error: &str, stops: &Stops) {
    tracing::error!(%build, %error, "cannot read the job the server assigned; failing it");
    let patience = stops.patience();
    let _end_timer = patience.stop_retrying.clone().drop_guard();
    let (mut console, uploader) = console::start(
        BuildConsole {
            client: Arc::clone(&client),
            build: build.clone(),
        },
        patience.clone(),
    );
    console
        .marker(&format!("The agent could not read this job: {error}"))
        .await;
    console.marker("Job completed: Failed").await;
    drop(console);
    let _ = uploader.await;
    let _ = report(
        &client,
        &build,
        JobState::Completed,
        Some(JobResult::Failed),
        &patience,
    )
    .await;
}

async fn report(
    client: &Client,
    build: &BuildId,
    state: JobState,
    result: Option<JobResult>,
    patience: &Patience,
) -> Result<(), ApiError> {
    let what = format!("reporting build {build} {state:?}");
    retry_within(&what, patience, || client.status(build, state, result)).await
}

/// How one task went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    /// The stop fired while it ran; it was stopped.
    Cancelled,
}

/// What the tasks of one job share: where they run, their environment, the console, and
/// their processes.
struct JobTasks<'a> {
    client: &'a Client,
    sandbox: &'a Path,
    env: &'a [(String, String)],
    console: &'a mut ConsoleWriter,
    processes: &'a mut JobProcesses,
}

impl JobTasks<'_> {
    /// Runs the tasks in order, each by its `run_if`; the job fails if any task failed.
    /// `Cancelled` only when `stop` actually stopped a task or kept one from starting: a stop
    /// landing after the last task ended does not change the job's result. A stopped task's
    /// `on_cancel` runs next, stopped only by `stop_on_cancel`.
    async fn run(
        &mut self,
        tasks: &[Task],
        stop: &CancellationToken,
        stop_on_cancel: &CancellationToken,
    ) -> JobResult {
        let mut failed = false;
        for task in tasks {
            let runs = match task.run_if {
                RunIf::Passed => !failed,
                RunIf::Failed => failed,
                RunIf::Any => true,
            };
            if !runs {
                continue;
            }
            if stop.is_cancelled() {
                return JobResult::Cancelled;
            }
            match self.run_one(task, "Task", stop).await {
                Outcome::Passed => {}
                Outcome::Failed => failed = true,
                Outcome::Cancelled => {
                    if let Some(on_cancel) = &task.on_cancel {
                        // Its own result does not change the job's: it was cancelled.
                        self.run_one(on_cancel, "On cancel", stop_on_cancel).await;
                    }
                    return JobResult::Cancelled;
                }
            }
        }
        if failed {
            JobResult::Failed
        } else {
            JobResult::Passed
        }
    }

    /// Runs one task, its header line (`WHAT: …`) first and a line saying why if it failed.
    async fn run_one(&mut self, task: &Task, what: &str, stop: &CancellationToken) -> Outcome {
        self.console
            .marker(&format!("{what}: {}", describe(task)))
            .await;
        let (command, args, cwd, script) = match &task.kind {
            TaskKind::Exec {
                command,
                args,
                working_dir: dir,
            } => match working_dir(self.sandbox, dir.as_deref()) {
                Ok(cwd) => (command.clone(), args.clone(), cwd, None),
                Err(problem) => return self.failed(&problem).await,
            },
            TaskKind::Script { script } => match ScriptFile::write(self.sandbox, script) {
                Ok(file) => {
                    let args = vec![file.path.display().to_string()];
                    (
                        "bash".to_string(),
                        args,
                        self.sandbox.to_path_buf(),
                        Some(file),
                    )
                }
                Err(problem) => return self.failed(&problem).await,
            },
            TaskKind::Fetch(fetch) => {
                return match super::artifacts::fetch(
                    self.client,
                    self.sandbox,
                    fetch,
                    self.console,
                    stop,
                )
                .await
                {
                    Ok(()) => Outcome::Passed,
                    Err(_) if stop.is_cancelled() => Outcome::Cancelled,
                    Err(why) => self.failed(&why).await,
                };
            }
            TaskKind::Unsupported(task_type) => {
                return self
                    .failed(&format!("ferrocd cannot run {task_type:?} tasks yet"))
                    .await;
            }
        };
        let spec = TaskSpec {
            command: &command,
            args: &args,
            cwd: &cwd,
            env: self.env,
        };
        let end = run_task(&spec, self.console.sender(), stop, self.processes).await;
        drop(script);
        match end {
            TaskEnd::Exited(0) => Outcome::Passed,
            TaskEnd::Cancelled => Outcome::Cancelled,
            TaskEnd::Exited(code) => self.failed(&format!("exited with code {code}")).await,
            TaskEnd::Signalled(signal) => self.failed(&format!("killed by signal {signal}")).await,
            TaskEnd::FailedToStart(message) => self.failed(&message).await,
        }
    }

    async fn failed(&mut self, why: &str) -> Outcome {
        self.console.marker(&format!("Task failed: {why}")).await;
        Outcome::Failed
    }
}

/// A task as its header line shows it: the command line (` (in DIR)` with a working dir),
/// `script: TEXT` (cut at [`SCRIPT_SHOWN`] characters), or the type's name.
fn describe(task: &Task) -> String {
    match &task.kind {
        TaskKind::Exec {
            command,
            args,
            working_dir,
        } => {
            let mut line = command_line(command, args);
            if let Some(dir) = working_dir {
                line.push_str(&format!(" (in {dir})"));
            }
            line
        }
        TaskKind::Script { script } => {
            let script = script.trim_end();
            let mut shown: String = script.chars().take(SCRIPT_SHOWN).collect();
            if shown.len() < script.len() {
                shown.push_str("...");
            }
            format!("script: {shown}")
        }
        TaskKind::Fetch(fetch) => match &fetch.from {
            Some(from) => format!("fetch {} from {from}", fetch.source),
            None => format!("fetch {}", fetch.source),
        },
        TaskKind::Unsupported(task_type) => task_type.clone(),
    }
}

/// How much of a script its header line shows.
const SCRIPT_SHOWN: usize = 200;

/// A script task's text in a file of the sandbox, for `bash` to run; removed when dropped.
struct ScriptFile {
    path: PathBuf,
}

impl ScriptFile {
    fn write(sandbox: &Path, script: &str) -> Result<ScriptFile, String> {
        use std::io::Write;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = sandbox.join(format!(".ferrocd-script-{}-{n}.sh", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("cannot write the script to {}: {e}", path.display()))?;
        let written = file.write_all(script.as_bytes());
        let script = ScriptFile { path };
        written
            .map_err(|e| format!("cannot write the script to {}: {e}", script.path.display()))?;
        Ok(script)
    }
}

impl Drop for ScriptFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The job's sandbox (created, emptied first with `clean_workspace`, its git materials checked
/// out at the instance's revisions) and its tasks' extra environment.
async fn prepare(
    work: &Work,
    work_dir: &Path,
    server: &str,
    console: &mut ConsoleWriter,
) -> Result<(PathBuf, Vec<(String, String)>), String> {
    let sandbox = sandbox_dir(work_dir, &work.pipeline_name)?;
    std::fs::create_dir_all(&sandbox)
        .map_err(|e| format!("cannot create the sandbox {}: {e}", sandbox.display()))?;
    if work.clean_workspace {
        console
            .marker("Cleaning the sandbox (clean_workspace)")
            .await;
        empty_dir(&sandbox)
            .map_err(|e| format!("cannot clean the sandbox {}: {e}", sandbox.display()))?;
    }
    for material in &work.materials {
        super::checkout::checkout(material, &sandbox, console).await?;
    }
    Ok((sandbox, job_environment(work, server)))
}

/// Removes everything inside `dir`, never following a symbolic link out of it.
pub fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        // `symlink_metadata`: a link is removed itself, whatever it points at.
        if std::fs::symlink_metadata(&path)?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// `WORK_DIR/pipelines/NAME`; a name that is not one plain path component is refused.
pub fn sandbox_dir(work_dir: &Path, pipeline_name: &str) -> Result<PathBuf, String> {
    let plain = !pipeline_name.is_empty()
        && pipeline_name != "."
        && pipeline_name != ".."
        && !pipeline_name.contains(['/', '\\', '\0']);
    if !plain {
        return Err(format!(
            "the pipeline name {pipeline_name:?} cannot name a sandbox directory"
        ));
    }
    Ok(work_dir.join("pipelines").join(pipeline_name))
}

/// A task's working directory: `working_dir` below the sandbox, which it may not leave.
pub fn working_dir(sandbox: &Path, working_dir: Option<&str>) -> Result<PathBuf, String> {
    let Some(relative) = working_dir.filter(|d| !d.is_empty()) else {
        return Ok(sandbox.to_path_buf());
    };
    let path = Path::new(relative);
    let inside = path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !inside {
        return Err(format!(
            "the working directory {relative:?} is not inside the sandbox"
        ));
    }
    let full = sandbox.join(path);
    if !full.is_dir() {
        return Err(format!(
            "the working directory {relative:?} does not exist in the sandbox"
        ));
    }
    Ok(full)
}

/// The job's variables, then GoCD's `GO_*` ones that the server did not send (but always the
/// agent's `GO_SERVER_URL`).
pub fn job_environment(work: &Work, server: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = work
        .environment_variables
        .iter()
        .filter(|(name, _)| !name.is_empty() && !name.contains(['=', '\0']))
        .filter_map(|(name, value)| {
            let value = match value {
                Value::String(s) => s.clone(),
                Value::Null => return None,
                Value::Number(_) | Value::Bool(_) => value.to_string(),
                other => other.to_string(),
            };
            (!value.contains('\0')).then(|| (name.clone(), value))
        })
        .collect();
    let counter = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let pipeline_counter = counter(&work.pipeline_counter);
    let label = work
        .pipeline_label
        .as_ref()
        .map(counter)
        .filter(|l| !l.is_empty() && !l.contains('\0'))
        .unwrap_or_else(|| pipeline_counter.clone());
    let server_url = "GO_SERVER_URL";
    env.retain(|(n, _)| n != server_url);
    env.push((
        server_url.to_string(),
        format!("{}/go", server.trim_end_matches('/')),
    ));
    let go = [
        ("GO_PIPELINE_NAME", work.pipeline_name.clone()),
        ("GO_PIPELINE_COUNTER", pipeline_counter),
        ("GO_PIPELINE_LABEL", label),
        ("GO_STAGE_NAME", work.stage_name.clone()),
        ("GO_STAGE_COUNTER", counter(&work.stage_counter)),
        ("GO_JOB_NAME", work.job_name.clone()),
    ];
    for (name, value) in go {
        // What the server sent for the job wins.
        if !env.iter().any(|(n, _)| n == name) {
            env.push((name.to_string(), value));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn work() -> Work {
        serde_json::from_value(json!({
            "build_id": 7, "pipeline_name": "web", "pipeline_counter": 12, "stage_name": "test",
            "stage_counter": 2, "job_name": "unit", "tasks": [],
            "environment_variables": {"A": "1", "N": 5, "GO_TRIGGER_USER": "alice",
                "GO_SERVER_URL": "http://elsewhere/go", "SKIP": null}
        }))
        .unwrap()
    }

    #[test]
    fn the_environment_has_the_job_variables_and_gocd_names() {
        let env = job_environment(&work(), "http://ci:8153/");
        let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("A"), Some("1"));
        assert_eq!(get("N"), Some("5"));
        assert_eq!(get("SKIP"), None);
        assert_eq!(get("GO_PIPELINE_NAME"), Some("web"));
        assert_eq!(get("GO_PIPELINE_COUNTER"), Some("12"));
        assert_eq!(get("GO_PIPELINE_LABEL"), Some("12"));
        assert_eq!(get("GO_STAGE_NAME"), Some("test"));
        assert_eq!(get("GO_STAGE_COUNTER"), Some("2"));
        assert_eq!(get("GO_JOB_NAME"), Some("unit"));
        assert_eq!(get("GO_TRIGGER_USER"), Some("alice"));
        // The agent's own address for the server, whatever the job says.
        assert_eq!(get("GO_SERVER_URL"), Some("http://ci:8153/go"));
        assert_eq!(env.iter().filter(|(n, _)| n == "GO_SERVER_URL").count(), 1);
    }

    #[test]
    fn the_servers_go_variables_and_label_win_over_the_agents() {
        let mut work = work();
        work.pipeline_label = Some(json!("12-abc123"));
        work.environment_variables
            .insert("GO_JOB_NAME".into(), json!("unit-runInstance-2"));
        let env = job_environment(&work, "http://ci:8153");
        let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("GO_PIPELINE_LABEL"), Some("12-abc123"));
        assert_eq!(get("GO_JOB_NAME"), Some("unit-runInstance-2"));
        assert_eq!(env.iter().filter(|(n, _)| n == "GO_JOB_NAME").count(), 1);
        // An empty label is the counter.
        work.pipeline_label = Some(json!(""));
        let env = job_environment(&work, "http://ci:8153");
        assert!(env.contains(&("GO_PIPELINE_LABEL".into(), "12".into())));
    }

    /// A console that stores everything.
    struct Sink;

    impl console::ConsoleApi for Sink {
        async fn append(
            &self,
            offset: u64,
            chunk: bytes::Bytes,
        ) -> Result<super::super::wire::ConsoleAck, ApiError> {
            Ok(super::super::wire::ConsoleAck::Stored(
                offset + chunk.len() as u64,
            ))
        }
    }

    async fn tasks_result(tasks: Value, stop: &CancellationToken) -> (JobResult, PathBuf) {
        let sandbox = tempfile::tempdir().unwrap().keep();
        let tasks: Vec<Task> = serde_json::from_value(tasks).unwrap();
        let (mut console, uploader) =
            console::start(Sink, Patience::until(&CancellationToken::new()));
        let mut processes = JobProcesses::new();
        // No server: these tasks never call it.
        let server = "http://127.0.0.1:9";
        let client = Client::new(
            super::super::client::Endpoint::new(server, None).unwrap(),
            None,
            super::super::identity::MachineFacts::gather(server, &sandbox, None, &[], &[]).await,
            super::super::identity::IdentityStore::open(&sandbox.join(".agent")).unwrap(),
        );
        let mut job = JobTasks {
            client: &client,
            sandbox: &sandbox,
            env: &[],
            console: &mut console,
            processes: &mut processes,
        };
        let result = job.run(&tasks, stop, &CancellationToken::new()).await;
        processes.finish().await;
        drop(console);
        uploader.await.unwrap();
        (result, sandbox)
    }

    #[tokio::test]
    async fn a_stop_changes_the_result_only_when_it_stopped_something() {
        let stop = CancellationToken::new();
        stop.cancel();
        // Nothing left to stop: the job's result stands.
        let (result, _) = tasks_result(json!([]), &stop).await;
        assert_eq!(result, JobResult::Passed);
        // A task it kept from starting: cancelled.
        let (result, sandbox) =
            tasks_result(json!([{"command": "touch", "args": ["ran"]}]), &stop).await;
        assert_eq!(result, JobResult::Cancelled);
        assert!(!sandbox.join("ran").exists());
        let _ = std::fs::remove_dir_all(sandbox);
        // Tasks that ended before any stop keep their result.
        let (result, sandbox) = tasks_result(
            json!([{"command": "sh", "args": ["-c", "exit 4"]}]),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(result, JobResult::Failed);
        let _ = std::fs::remove_dir_all(sandbox);
    }

    #[test]
    fn sandboxes_are_one_directory_per_pipeline() {
        let root = Path::new("/w");
        assert_eq!(
            sandbox_dir(root, "web").unwrap(),
            PathBuf::from("/w/pipelines/web")
        );
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(sandbox_dir(root, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn working_dirs_stay_inside_the_sandbox() {
        let sandbox = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(sandbox.path().join("src/app")).unwrap();
        assert_eq!(working_dir(sandbox.path(), None).unwrap(), sandbox.path());
        assert_eq!(
            working_dir(sandbox.path(), Some("src/app")).unwrap(),
            sandbox.path().join("src/app")
        );
        assert!(working_dir(sandbox.path(), Some("../etc")).is_err());
        assert!(working_dir(sandbox.path(), Some("/etc")).is_err());
        assert!(working_dir(sandbox.path(), Some("missing")).is_err());
    }
}
