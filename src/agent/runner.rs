//! Running one job: report `Preparing`, `Building`, run the tasks in order in the pipeline's
//! sandbox (the first failure ends the job), report `Completing`, wait until the console holds
//! every byte, report `Completed` with the result.
//!
//! Each task gets the agent's environment plus the job's `environment_variables` and GoCD's
//! `GO_SERVER_URL`, `GO_PIPELINE_NAME`, `GO_PIPELINE_COUNTER`, `GO_PIPELINE_LABEL` (the
//! counter), `GO_STAGE_NAME`, `GO_STAGE_COUNTER` and `GO_JOB_NAME` (these win over a job
//! variable of the same name).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::client::{ApiError, BuildId, Client, JobResult, JobState, Task, Work, retry};
use super::console::{self, BuildConsole, ConsoleWriter, command_line};
use super::process::{TaskEnd, TaskSpec, run_task};

/// Why a running job is being stopped.
pub struct Stops {
    /// The server said CANCEL.
    pub cancel: CancellationToken,
    /// The agent is shutting down.
    pub shutdown: CancellationToken,
    /// Fires a while after shutdown: stop retrying reports and uploads.
    pub give_up: CancellationToken,
}

/// Runs `work` to its end; returns the result reported (None if the server refused the run).
pub async fn run_job(
    client: Arc<Client>,
    work: Work,
    work_dir: &Path,
    stops: &Stops,
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
    if let Err(error) = report(&client, &build, JobState::Preparing, None, stops).await {
        tracing::error!(%build, %error, "the server refused the job's Preparing report; dropping the job");
        return None;
    }
    let (mut console, uploader) = console::start(
        BuildConsole {
            client: Arc::clone(&client),
            build: build.clone(),
        },
        stops.give_up.clone(),
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

    let mut result = match prepare(&work, work_dir, client.base()) {
        Ok((sandbox, env)) => {
            match report(&client, &build, JobState::Building, None, stops).await {
                Ok(()) => run_tasks(&work.tasks, &sandbox, &env, &mut console, &stop).await,
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
    if result != JobResult::Cancelled && stop.is_cancelled() && stops.shutdown.is_cancelled() {
        // Shut down between tasks: the remaining ones did not run.
        result = JobResult::Cancelled;
    }
    if result == JobResult::Cancelled {
        if stops.shutdown.is_cancelled() && !stops.cancel.is_cancelled() {
            console.marker("Agent stopping: job cancelled").await;
        } else {
            console.marker("Job cancelled").await;
        }
    }
    console.marker(&format!("Job completed: {result}")).await;

    let _ = report(&client, &build, JobState::Completing, None, stops).await;
    drop(console);
    match uploader.await {
        Ok(upload) => {
            if let Some(error) = upload.error {
                tracing::error!(%build, %error, "part of the console was not stored");
            }
        }
        Err(error) => tracing::error!(%build, %error, "the console uploader failed"),
    }
    match report(&client, &build, JobState::Completed, Some(result), stops).await {
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
    let (mut console, uploader) = console::start(
        BuildConsole {
            client: Arc::clone(&client),
            build: build.clone(),
        },
        stops.give_up.clone(),
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
        stops,
    )
    .await;
}

async fn report(
    client: &Client,
    build: &BuildId,
    state: JobState,
    result: Option<JobResult>,
    stops: &Stops,
) -> Result<(), ApiError> {
    let what = format!("reporting build {build} {state:?}");
    retry(&what, &stops.give_up, || {
        client.status(build, state, result)
    })
    .await
}

/// Runs the tasks in order; the first that does not pass ends the job.
async fn run_tasks(
    tasks: &[Task],
    sandbox: &Path,
    env: &[(String, String)],
    console: &mut ConsoleWriter,
    stop: &CancellationToken,
) -> JobResult {
    for task in tasks {
        if stop.is_cancelled() {
            return JobResult::Cancelled;
        }
        let mut header = format!("Task: {}", command_line(&task.command, &task.args));
        if let Some(dir) = &task.working_dir {
            header.push_str(&format!(" (in {dir})"));
        }
        console.marker(&header).await;
        let cwd = match working_dir(sandbox, task.working_dir.as_deref()) {
            Ok(cwd) => cwd,
            Err(problem) => {
                console.marker(&format!("Task failed: {problem}")).await;
                return JobResult::Failed;
            }
        };
        let spec = TaskSpec {
            command: &task.command,
            args: &task.args,
            cwd: &cwd,
            env,
        };
        let (end, last) = run_task(&spec, console.sender(), stop).await;
        console.note_output(last);
        match end {
            TaskEnd::Exited(0) => {}
            TaskEnd::Cancelled => return JobResult::Cancelled,
            TaskEnd::Exited(code) => {
                console
                    .marker(&format!("Task failed: exited with code {code}"))
                    .await;
                return JobResult::Failed;
            }
            TaskEnd::Signalled(signal) => {
                console
                    .marker(&format!("Task failed: killed by signal {signal}"))
                    .await;
                return JobResult::Failed;
            }
            TaskEnd::FailedToStart(message) => {
                console.marker(&format!("Task failed: {message}")).await;
                return JobResult::Failed;
            }
        }
    }
    if stop.is_cancelled() {
        JobResult::Cancelled
    } else {
        JobResult::Passed
    }
}

/// The job's sandbox (created) and its tasks' extra environment.
fn prepare(
    work: &Work,
    work_dir: &Path,
    server: &str,
) -> Result<(PathBuf, Vec<(String, String)>), String> {
    let sandbox = sandbox_dir(work_dir, &work.pipeline_name)?;
    std::fs::create_dir_all(&sandbox)
        .map_err(|e| format!("cannot create the sandbox {}: {e}", sandbox.display()))?;
    Ok((sandbox, job_environment(work, server)))
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

/// The job's variables, then GoCD's `GO_*` ones.
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
    let go = [
        (
            "GO_SERVER_URL",
            format!("{}/go", server.trim_end_matches('/')),
        ),
        ("GO_PIPELINE_NAME", work.pipeline_name.clone()),
        ("GO_PIPELINE_COUNTER", pipeline_counter.clone()),
        ("GO_PIPELINE_LABEL", pipeline_counter),
        ("GO_STAGE_NAME", work.stage_name.clone()),
        ("GO_STAGE_COUNTER", counter(&work.stage_counter)),
        ("GO_JOB_NAME", work.job_name.clone()),
    ];
    for (name, value) in go {
        env.retain(|(n, _)| n != name);
        env.push((name.to_string(), value));
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
            "environment_variables": {"A": "1", "N": 5, "GO_JOB_NAME": "spoofed", "SKIP": null}
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
        assert_eq!(get("GO_SERVER_URL"), Some("http://ci:8153/go"));
        assert_eq!(env.iter().filter(|(n, _)| n == "GO_JOB_NAME").count(), 1);
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
