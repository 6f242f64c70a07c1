//! Job runs (GoCD's builds: one run of one job, on one agent): their states and results, the
//! entity, and the rules on them: what an ad-hoc job must name, which progress reports an
//! agent may make, what a console append adds, and what cancelling does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::agent::{NameKind, names};
pub use super::pipeline_config::RunIf;
use super::pipeline_config::{TaskConfig, TaskKind as ConfiguredKind};
use super::{Checked, Rejection};

/// GoCD's job states, in the only order a run may move through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum JobState {
    Scheduled,
    Assigned,
    Preparing,
    Building,
    Completing,
    Completed,
}
text_enum!(JobState {
    Scheduled,
    Assigned,
    Preparing,
    Building,
    Completing,
    Completed
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobResult {
    Unknown,
    Passed,
    Failed,
    Cancelled,
}
text_enum!(JobResult {
    Unknown,
    Passed,
    Failed,
    Cancelled
});

/// One task of a job, as GoCD has them: what it runs, when it runs given how the tasks before
/// it went (`run_if`), and what runs if the job is cancelled while it runs (`on_cancel`).
///
/// Its JSON (stored with the run, listed by the API, accepted by `POST /api/jobs/schedule`) is
/// flat: `{"type", "run_if", …the type's fields, "on_cancel"?}`. A task without `type` is an
/// exec task, so the first shape, `{command, args, working_dir?}`, keeps its meaning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TaskShape", into = "TaskShape")]
pub struct Task {
    pub kind: TaskKind,
    pub run_if: RunIf,
    /// Runs once the task was stopped, when the job is cancelled while this task runs.
    pub on_cancel: Option<Box<Task>>,
}

/// What a task runs.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskKind {
    /// `command` run directly (no shell) with `args`, in `working_dir` below the sandbox.
    Exec {
        command: String,
        args: Vec<String>,
        working_dir: Option<String>,
    },
    /// GoCD's script-executor: the text, written to a file in the sandbox, run with `bash`.
    Script { script: String },
    /// Downloads artifacts of an earlier stage of the same instance, or of the upstream
    /// instance that `pipeline` (an ancestor path `a/b`, the parent last) leads to. The server
    /// finds the files when it hands out the work; the agent checks each one's SHA-256.
    Fetch(FetchTask),
    /// A GoCD task type ferrocd accepts but cannot run (`plugin`, `ant`, `nant`, `rake`):
    /// the job fails at it.
    Unsupported { task_type: String },
}

/// A `fetch` task, as configured (GoCD's `artifact_origin: gocd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchTask {
    /// This pipeline when `None`; else the path from the ancestor to this pipeline's parent.
    pub pipeline: Option<String>,
    pub stage: String,
    pub job: String,
    /// A file (`is_file`) or a folder of the job's artifacts.
    pub source: String,
    pub is_file: bool,
    /// A folder below the sandbox (the sandbox itself when `None`).
    pub destination: Option<String>,
}

/// The GoCD task types ferrocd knows of but cannot run.
pub const UNSUPPORTED_TASK_TYPES: [&str; 4] = ["plugin", "ant", "nant", "rake"];

impl Task {
    /// An exec task that runs while every task before it passed.
    pub fn exec(command: &str, args: &[&str]) -> Task {
        Task {
            kind: TaskKind::Exec {
                command: command.into(),
                args: args.iter().map(|a| a.to_string()).collect(),
                working_dir: None,
            },
            run_if: RunIf::Passed,
            on_cancel: None,
        }
    }

    /// `exec`, `script` or the unsupported type's name.
    pub fn type_name(&self) -> &str {
        match &self.kind {
            TaskKind::Exec { .. } => "exec",
            TaskKind::Script { .. } => "script",
            TaskKind::Fetch(_) => "fetch",
            TaskKind::Unsupported { task_type } => task_type,
        }
    }

    /// What a task must hold to be scheduled: a command, or a script.
    fn check(&self, field: &str) -> Checked<()> {
        match &self.kind {
            TaskKind::Exec { command, .. } if command.trim().is_empty() => Err(Rejection::Invalid(
                format!("{field}.command: must not be empty"),
            )),
            TaskKind::Script { script } if script.trim().is_empty() => Err(Rejection::Invalid(
                format!("{field}.script: must not be empty"),
            )),
            TaskKind::Fetch(fetch) => {
                for (name, value) in [
                    ("stage", &fetch.stage),
                    ("job", &fetch.job),
                    ("source", &fetch.source),
                ] {
                    if value.trim().is_empty() {
                        return Err(Rejection::Invalid(format!(
                            "{field}.{name}: a fetch task needs it"
                        )));
                    }
                }
                Ok(())
            }
            _ => match &self.on_cancel {
                Some(task) => task.check(&format!("{field}.on_cancel")),
                None => Ok(()),
            },
        }
    }
}

/// A configured task as a run carries it: exec and script as they are, any other type by its
/// name (the agent fails the job at it).
impl From<&TaskConfig> for Task {
    fn from(task: &TaskConfig) -> Task {
        let kind = match &task.kind {
            ConfiguredKind::Exec {
                command,
                arguments,
                working_directory,
            } => TaskKind::Exec {
                command: command.clone(),
                args: arguments.clone(),
                working_dir: working_directory.clone(),
            },
            ConfiguredKind::Script { script } => TaskKind::Script {
                script: script.clone(),
            },
            ConfiguredKind::Fetch {
                pipeline,
                stage,
                job,
                source,
                is_file,
                destination,
            } => TaskKind::Fetch(FetchTask {
                pipeline: pipeline.clone(),
                stage: stage.clone(),
                job: job.clone(),
                source: source.clone(),
                is_file: *is_file,
                destination: destination.clone(),
            }),
            other => TaskKind::Unsupported {
                task_type: other.type_name().to_string(),
            },
        };
        Task {
            kind,
            run_if: task.run_if,
            on_cancel: task.on_cancel.as_deref().map(|t| Box::new(Task::from(t))),
        }
    }
}

/// [`Task`]'s JSON: one flat object whatever the type.
#[derive(Serialize, Deserialize)]
struct TaskShape {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    task_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    script: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pipeline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    is_file: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    destination: Option<String>,
    #[serde(default)]
    run_if: RunIf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_cancel: Option<Box<Task>>,
}

impl TryFrom<TaskShape> for Task {
    type Error = String;

    fn try_from(shape: TaskShape) -> Result<Task, String> {
        let task_type = shape
            .task_type
            .as_deref()
            .unwrap_or("exec")
            .trim()
            .to_ascii_lowercase();
        let refuse = |field: &str, present: bool| {
            if present {
                Err(format!("a {task_type} task takes no {field}"))
            } else {
                Ok(())
            }
        };
        let kind = match task_type.as_str() {
            "exec" => {
                refuse("script", shape.script.is_some())?;
                TaskKind::Exec {
                    command: shape
                        .command
                        .ok_or("an exec task needs a command (missing field `command`)")?,
                    args: shape.args.unwrap_or_default(),
                    working_dir: shape.working_dir,
                }
            }
            "script" => {
                refuse("command", shape.command.is_some())?;
                refuse("args", shape.args.is_some())?;
                refuse("working_dir", shape.working_dir.is_some())?;
                TaskKind::Script {
                    script: shape.script.ok_or("a script task needs a script")?,
                }
            }
            "fetch" => {
                refuse("command", shape.command.is_some())?;
                refuse("script", shape.script.is_some())?;
                let needed = |field: &str, value: Option<String>| {
                    value.ok_or(format!(
                        "a fetch task needs {field} (missing field `{field}`)"
                    ))
                };
                TaskKind::Fetch(FetchTask {
                    pipeline: shape.pipeline,
                    stage: needed("stage", shape.stage)?,
                    job: needed("job", shape.job)?,
                    source: needed("source", shape.source)?,
                    is_file: shape.is_file.unwrap_or(false),
                    destination: shape.destination,
                })
            }
            other if UNSUPPORTED_TASK_TYPES.contains(&other) => TaskKind::Unsupported { task_type },
            other => {
                return Err(format!(
                    "type: {other:?} is not a task type (exec, script, fetch, {})",
                    UNSUPPORTED_TASK_TYPES.join(", ")
                ));
            }
        };
        Ok(Task {
            kind,
            run_if: shape.run_if,
            on_cancel: shape.on_cancel,
        })
    }
}

impl From<Task> for TaskShape {
    fn from(task: Task) -> TaskShape {
        let mut shape = TaskShape {
            task_type: Some(task.type_name().to_string()),
            command: None,
            args: None,
            working_dir: None,
            script: None,
            pipeline: None,
            stage: None,
            job: None,
            source: None,
            is_file: None,
            destination: None,
            run_if: task.run_if,
            on_cancel: task.on_cancel,
        };
        match task.kind {
            TaskKind::Exec {
                command,
                args,
                working_dir,
            } => {
                shape.command = Some(command);
                shape.args = Some(args);
                shape.working_dir = working_dir;
            }
            TaskKind::Script { script } => shape.script = Some(script),
            TaskKind::Fetch(fetch) => {
                shape.pipeline = fetch.pipeline;
                shape.stage = Some(fetch.stage);
                shape.job = Some(fetch.job);
                shape.source = Some(fetch.source);
                shape.is_file = Some(fetch.is_file);
                shape.destination = fetch.destination;
            }
            TaskKind::Unsupported { .. } => {}
        }
        shape
    }
}

/// When a run entered a state (milliseconds since the epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub state: JobState,
    pub state_change_time: i64,
}

/// What a job needs of the agent that runs it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Requirements {
    pub resources: Vec<String>,
    pub environment: Option<String>,
    /// The one agent that may run it (a copy of a `run_instances: all` job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Uuid>,
}

/// A run of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRun {
    pub build_id: i64,
    pub pipeline_name: String,
    pub pipeline_counter: i64,
    pub stage_name: String,
    pub stage_counter: i64,
    pub job_name: String,
    pub agent_uuid: Option<Uuid>,
    pub state: JobState,
    pub result: JobResult,
    pub console_length: i64,
    /// Where the console was cut, once it reached the server's cap.
    pub console_truncated_at: Option<i64>,
    pub resources: Vec<String>,
    pub environment: Option<String>,
    pub tasks: Vec<Task>,
    /// Set once a cancel was asked for a run its agent has not finished yet.
    pub cancel_requested: bool,
    pub rescheduled_from: Option<i64>,
    /// Who scheduled it (`None`: the server itself, e.g. a trigger).
    pub scheduled_by: Option<String>,
    /// Who cancelled it, once someone did.
    pub cancelled_by: Option<String>,
    pub scheduled_at: i64,
    pub completed_at: Option<i64>,
    pub job_state_transitions: Vec<Transition>,
    /// Variables for the agent only; the API does not show them.
    pub environment_variables: BTreeMap<String, String>,
    /// The agent empties the job's sandbox before the tasks (GoCD's stage `clean_workspace`).
    pub clean_workspace: bool,
    /// GoCD's pipeline label (`GO_PIPELINE_LABEL`); `None`: the counter.
    pub pipeline_label: Option<String>,
    /// Seconds of console silence after which the server cancels the run; `Some(0)` never;
    /// `None`: the server's `--default-job-timeout`.
    pub timeout_seconds: Option<i64>,
    /// Why the server itself cancelled the run (it timed out): written into its console when
    /// the run ends.
    pub cancel_reason: Option<String>,
    /// A job not run again when some of its stage's jobs were (GoCD's rerun of failed or
    /// selected jobs): the run whose result this copy keeps.
    pub copied_from: Option<i64>,
    /// The one agent that may run it (a copy of a `run_instances: all` job).
    pub pinned_agent: Option<Uuid>,
}

/// What an agent's progress report does to its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The run is in that state already: a harmless retry.
    Retry,
    /// The run moves on to `state` with `result`.
    Move { state: JobState, result: JobResult },
}

/// What a console append at an offset adds to a log of `stored` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Append {
    /// Every byte is stored already (a retry): answer the stored length.
    Stored,
    /// Store the chunk from this byte of it on (a retry may overlap what is stored).
    From(usize),
    /// The chunk starts past the stored end: the agent must resend from `stored`.
    Gap { stored: i64 },
    /// The console was cut at `at` bytes: nothing more is stored.
    Truncated { at: i64 },
}

/// What a console that reaches `cap` keeps of a new chunk: the bytes up to the cap and the
/// line saying where it was cut (on a line of its own), or the whole chunk when it fits.
pub fn within_cap(stored: i64, chunk: &[u8], cap: i64) -> (Vec<u8>, bool) {
    if stored + chunk.len() as i64 <= cap {
        return (chunk.to_vec(), false);
    }
    let keep = (cap - stored).clamp(0, chunk.len() as i64) as usize;
    let mut kept = chunk[..keep].to_vec();
    if kept.last() != Some(&b'\n') {
        kept.push(b'\n');
    }
    kept.extend_from_slice(format!("[ferrocd] console truncated at {cap} bytes\n").as_bytes());
    (kept, true)
}

/// What a cancel does to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// Finished, or a cancel was asked already.
    Nothing,
    /// Not started: it ends Completed/Cancelled now.
    EndNow,
    /// Running: its agent is asked to stop it, and reports the end.
    AskTheAgent,
}

/// A report an agent may make at all: Preparing onwards, and Completed with a result.
pub fn check_report(state: JobState, result: Option<JobResult>) -> Checked<()> {
    if state == JobState::Completed
        && !matches!(
            result,
            Some(JobResult::Passed | JobResult::Failed | JobResult::Cancelled)
        )
    {
        return Err(Rejection::Invalid(
            "result: Completed needs a result: Passed, Failed or Cancelled".into(),
        ));
    }
    if state < JobState::Preparing {
        return Err(Rejection::Invalid(format!(
            "job_state: an agent reports Preparing, Building, Completing or Completed, not {state}"
        )));
    }
    Ok(())
}

impl JobRun {
    pub fn is_completed(&self) -> bool {
        self.state == JobState::Completed
    }

    /// When it entered `state`, if it did.
    pub fn entered(&self, state: JobState) -> Option<i64> {
        self.job_state_transitions
            .iter()
            .find(|t| t.state == state)
            .map(|t| t.state_change_time)
    }

    /// What the work requirements of this run are.
    pub fn requirements(&self) -> Requirements {
        Requirements {
            resources: self.resources.clone(),
            environment: self.environment.clone(),
            agent: self.pinned_agent,
        }
    }

    fn require_agent(&self, agent: Uuid) -> Checked<()> {
        if self.agent_uuid != Some(agent) {
            return Err(Rejection::Forbidden(format!(
                "build {} is not assigned to this agent",
                self.build_id
            )));
        }
        Ok(())
    }

    /// Progress reported by `agent` (checked by [`check_report`] first): forward only;
    /// repeating the current state is a retry. A run whose cancel was asked for ends
    /// Cancelled, whatever its last task did.
    pub fn report(
        &self,
        agent: Uuid,
        state: JobState,
        result: Option<JobResult>,
    ) -> Checked<Report> {
        self.require_agent(agent)?;
        let build_id = self.build_id;
        if state == self.state {
            let same_result = state != JobState::Completed
                || result == Some(self.result)
                || self.cancel_requested;
            if same_result {
                return Ok(Report::Retry);
            }
            return Err(Rejection::Conflict(format!(
                "build {build_id} already completed as {}",
                self.result
            )));
        }
        if state < self.state {
            return Err(Rejection::Conflict(format!(
                "build {build_id} is {}; it cannot go back to {state}",
                self.state
            )));
        }
        let result = match (state, result) {
            (JobState::Completed, _) if self.cancel_requested => JobResult::Cancelled,
            (JobState::Completed, Some(result)) => result,
            _ => JobResult::Unknown,
        };
        Ok(Report::Move { state, result })
    }

    /// `len` console bytes from `agent` at `offset` (the length it believes stored).
    pub fn append(&self, agent: Uuid, offset: i64, len: usize) -> Checked<Append> {
        self.require_agent(agent)?;
        if let Some(at) = self.console_truncated_at {
            return Ok(Append::Truncated { at });
        }
        let stored = self.console_length;
        if offset > stored {
            return Ok(Append::Gap { stored });
        }
        if offset + len as i64 <= stored {
            return Ok(Append::Stored);
        }
        if self.is_completed() {
            return Err(Rejection::Conflict(format!(
                "build {} is Completed; its console is closed",
                self.build_id
            )));
        }
        Ok(Append::From((stored - offset) as usize))
    }

    pub fn cancel(&self) -> Cancel {
        match self.state {
            JobState::Completed => Cancel::Nothing,
            JobState::Scheduled => Cancel::EndNow,
            _ if self.cancel_requested => Cancel::Nothing,
            _ => Cancel::AskTheAgent,
        }
    }
}

/// A pipeline, stage, job or environment name: letters, digits, `_`, `-`, `.`; at most 255.
pub fn job_name(field: &str, value: &str) -> Checked<String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Rejection::Invalid(format!("{field}: must not be empty")));
    }
    if value.len() > 255
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(Rejection::Invalid(format!(
            "{field}: {value:?} is not a valid name (letters, digits, '_', '-', '.'; at most 255)"
        )));
    }
    Ok(value.to_string())
}

/// A job to schedule ad hoc (`POST /api/jobs/schedule`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewJob {
    pub pipeline_name: String,
    pub stage_name: String,
    pub job_name: String,
    pub tasks: Vec<Task>,
    pub resources: Vec<String>,
    pub environment: Option<String>,
    pub environment_variables: BTreeMap<String, String>,
    pub clean_workspace: bool,
    pub pipeline_label: Option<String>,
    /// Seconds of console silence before the run is cancelled; `Some(0)` never; `None`: the
    /// server's default.
    pub timeout_seconds: Option<i64>,
}

impl NewJob {
    /// The job with its names trimmed and checked, its resources de-duplicated, and an empty
    /// environment dropped.
    pub fn checked(self) -> Checked<NewJob> {
        let pipeline_name = job_name("pipeline_name", &self.pipeline_name)?;
        let stage_name = job_name("stage_name", &self.stage_name)?;
        let job = job_name("job_name", &self.job_name)?;
        if self.tasks.is_empty() {
            return Err(Rejection::Invalid(
                "tasks: a job needs at least one task".into(),
            ));
        }
        for (i, task) in self.tasks.iter().enumerate() {
            task.check(&format!("tasks[{i}]"))?;
        }
        if self.timeout_seconds.is_some_and(|t| t < 0) {
            return Err(Rejection::Invalid(
                "timeout: must not be negative (0: never)".into(),
            ));
        }
        let pipeline_label = self
            .pipeline_label
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty());
        if pipeline_label.as_ref().is_some_and(|l| l.len() > 255) {
            return Err(Rejection::Invalid(
                "pipeline_label: at most 255 characters".into(),
            ));
        }
        let resources = names("resources", &self.resources, NameKind::Resource)?;
        let environment = self
            .environment
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| job_name("environment", e))
            .transpose()?;
        Ok(NewJob {
            pipeline_name,
            stage_name,
            job_name: job,
            tasks: self.tasks,
            resources,
            environment,
            environment_variables: self.environment_variables,
            clean_workspace: self.clean_workspace,
            pipeline_label,
            timeout_seconds: self.timeout_seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn run(state: JobState, agent: Option<Uuid>) -> JobRun {
        JobRun {
            build_id: 7,
            pipeline_name: "p".into(),
            pipeline_counter: 1,
            stage_name: "s".into(),
            stage_counter: 1,
            job_name: "j".into(),
            agent_uuid: agent,
            state,
            result: JobResult::Unknown,
            console_length: 10,
            console_truncated_at: None,
            scheduled_by: None,
            cancelled_by: None,
            resources: vec![],
            environment: None,
            tasks: vec![],
            cancel_requested: false,
            rescheduled_from: None,
            scheduled_at: 0,
            completed_at: None,
            job_state_transitions: vec![],
            environment_variables: BTreeMap::new(),
            clean_workspace: false,
            pipeline_label: None,
            timeout_seconds: None,
            cancel_reason: None,
            copied_from: None,
            pinned_agent: None,
        }
    }

    #[test]
    fn reports_move_forward_only_and_a_repeat_is_a_retry() {
        let agent = Uuid::new_v4();
        let building = run(JobState::Building, Some(agent));
        assert_eq!(
            building.report(agent, JobState::Completed, Some(JobResult::Passed)),
            Ok(Report::Move {
                state: JobState::Completed,
                result: JobResult::Passed
            })
        );
        assert_eq!(
            building.report(agent, JobState::Building, None),
            Ok(Report::Retry)
        );
        assert!(matches!(
            building.report(agent, JobState::Preparing, None),
            Err(Rejection::Conflict(_))
        ));
        assert!(matches!(
            building.report(Uuid::new_v4(), JobState::Completing, None),
            Err(Rejection::Forbidden(_))
        ));
        let mut done = run(JobState::Completed, Some(agent));
        done.result = JobResult::Passed;
        assert_eq!(
            done.report(agent, JobState::Completed, Some(JobResult::Passed)),
            Ok(Report::Retry)
        );
        assert!(matches!(
            done.report(agent, JobState::Completed, Some(JobResult::Failed)),
            Err(Rejection::Conflict(_))
        ));
    }

    #[test]
    fn a_cancelled_run_ends_cancelled_whatever_its_last_task_did() {
        let agent = Uuid::new_v4();
        let mut asked = run(JobState::Building, Some(agent));
        asked.cancel_requested = true;
        assert_eq!(
            asked.report(agent, JobState::Completed, Some(JobResult::Passed)),
            Ok(Report::Move {
                state: JobState::Completed,
                result: JobResult::Cancelled
            })
        );
        assert_eq!(asked.cancel(), Cancel::Nothing);
        assert_eq!(run(JobState::Scheduled, None).cancel(), Cancel::EndNow);
        assert_eq!(
            run(JobState::Building, Some(agent)).cancel(),
            Cancel::AskTheAgent
        );
        assert_eq!(
            run(JobState::Completed, Some(agent)).cancel(),
            Cancel::Nothing
        );
    }

    #[test]
    fn what_an_agent_may_report_at_all() {
        assert!(check_report(JobState::Completed, None).is_err());
        assert!(check_report(JobState::Completed, Some(JobResult::Unknown)).is_err());
        assert!(check_report(JobState::Assigned, None).is_err());
        assert!(check_report(JobState::Building, None).is_ok());
    }

    #[test]
    fn appends_store_only_what_is_new_and_refuse_gaps() {
        let agent = Uuid::new_v4();
        let r = run(JobState::Building, Some(agent));
        assert_eq!(r.append(agent, 10, 5), Ok(Append::From(0)));
        assert_eq!(r.append(agent, 8, 5), Ok(Append::From(2)));
        assert_eq!(r.append(agent, 0, 10), Ok(Append::Stored));
        assert_eq!(r.append(agent, 11, 1), Ok(Append::Gap { stored: 10 }));
        let done = run(JobState::Completed, Some(agent));
        assert!(matches!(
            done.append(agent, 10, 1),
            Err(Rejection::Conflict(_))
        ));
        assert_eq!(done.append(agent, 0, 3), Ok(Append::Stored));
    }

    #[test]
    fn an_ad_hoc_job_is_checked_and_tidied() {
        let job = NewJob {
            pipeline_name: " web ".into(),
            stage_name: "s".into(),
            job_name: "j".into(),
            tasks: vec![Task::exec("true", &[])],
            resources: vec!["linux".into(), "LINUX".into()],
            environment: Some("  ".into()),
            ..Default::default()
        };
        let checked = job.clone().checked().unwrap();
        assert_eq!(checked.pipeline_name, "web");
        assert_eq!(checked.resources, vec!["linux"]);
        assert_eq!(checked.environment, None);
        let no_tasks = NewJob {
            tasks: vec![],
            ..job.clone()
        };
        assert!(
            no_tasks
                .checked()
                .unwrap_err()
                .to_string()
                .starts_with("tasks:")
        );
        let bad = NewJob {
            stage_name: "a b".into(),
            ..job
        };
        assert!(
            bad.checked()
                .unwrap_err()
                .to_string()
                .starts_with("stage_name:")
        );
    }

    #[test]
    fn the_first_task_shape_is_still_an_exec_task() {
        let old: Vec<Task> = serde_json::from_value(serde_json::json!([
            {"command": "make", "args": ["test"], "working_dir": "src"},
            {"command": "true"}
        ]))
        .unwrap();
        assert_eq!(
            old[0],
            Task {
                kind: TaskKind::Exec {
                    command: "make".into(),
                    args: vec!["test".into()],
                    working_dir: Some("src".into()),
                },
                run_if: RunIf::Passed,
                on_cancel: None,
            }
        );
        assert_eq!(old[1], Task::exec("true", &[]));
        // What is stored and listed reads back the same.
        let again: Vec<Task> = serde_json::from_value(serde_json::to_value(&old).unwrap()).unwrap();
        assert_eq!(again, old);
        assert_eq!(serde_json::to_value(&old[1]).unwrap()["type"], "exec");
    }

    #[test]
    fn the_new_task_shape_reads_types_run_ifs_and_on_cancel() {
        let tasks: Vec<Task> = serde_json::from_value(serde_json::json!([
            {"type": "script", "script": "echo a | wc -c", "run_if": "any",
             "on_cancel": {"command": "echo", "args": ["stopped"]}},
            {"type": "RAKE", "run_if": "failed"}
        ]))
        .unwrap();
        assert_eq!(
            tasks[0].kind,
            TaskKind::Script {
                script: "echo a | wc -c".into()
            }
        );
        assert_eq!(tasks[0].run_if, RunIf::Any);
        assert_eq!(
            tasks[0].on_cancel.as_deref(),
            Some(&Task::exec("echo", &["stopped"]))
        );
        assert_eq!(tasks[1].type_name(), "rake");
        assert_eq!(tasks[1].run_if, RunIf::Failed);
        let again: Vec<Task> =
            serde_json::from_value(serde_json::to_value(&tasks).unwrap()).unwrap();
        assert_eq!(again, tasks);
        for bad in [
            serde_json::json!({"type": "make"}),
            serde_json::json!({"type": "script"}),
            serde_json::json!({"type": "script", "script": "x", "command": "y"}),
            serde_json::json!({"args": ["no command"]}),
            serde_json::json!({"command": "x", "run_if": "sometimes"}),
        ] {
            assert!(
                serde_json::from_value::<Task>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn configured_tasks_become_run_tasks() {
        use crate::domain::pipeline_config::BuilderTool;
        let configured = TaskConfig {
            kind: ConfiguredKind::Exec {
                command: "make".into(),
                arguments: vec!["-j".into(), "2".into()],
                working_directory: Some("app".into()),
            },
            run_if: RunIf::Failed,
            on_cancel: Some(Box::new(TaskConfig {
                kind: ConfiguredKind::Script {
                    script: "cleanup\nmore".into(),
                },
                run_if: RunIf::Passed,
                on_cancel: None,
            })),
        };
        let task = Task::from(&configured);
        assert_eq!(
            task.kind,
            TaskKind::Exec {
                command: "make".into(),
                args: vec!["-j".into(), "2".into()],
                working_dir: Some("app".into()),
            }
        );
        assert_eq!(task.run_if, RunIf::Failed);
        assert_eq!(
            task.on_cancel.map(|t| t.kind),
            Some(TaskKind::Script {
                script: "cleanup\nmore".into()
            })
        );
        let rake = TaskConfig {
            kind: ConfiguredKind::Builder {
                tool: BuilderTool::Rake,
                build_file: None,
                target: None,
                working_directory: None,
            },
            run_if: RunIf::Any,
            on_cancel: None,
        };
        assert_eq!(Task::from(&rake).type_name(), "rake");
        let fetch = TaskConfig {
            kind: ConfiguredKind::Fetch {
                pipeline: None,
                stage: "s".into(),
                job: "j".into(),
                source: "a".into(),
                is_file: true,
                destination: None,
            },
            run_if: RunIf::Passed,
            on_cancel: None,
        };
        assert_eq!(
            Task::from(&fetch).kind,
            TaskKind::Fetch(FetchTask {
                pipeline: None,
                stage: "s".into(),
                job: "j".into(),
                source: "a".into(),
                is_file: true,
                destination: None,
            })
        );
    }

    #[test]
    fn scheduled_tasks_need_their_command_or_script() {
        let job = |tasks: Vec<Task>| NewJob {
            pipeline_name: "p".into(),
            stage_name: "s".into(),
            job_name: "j".into(),
            tasks,
            ..Default::default()
        };
        let blank_script = Task {
            kind: TaskKind::Script { script: " ".into() },
            ..Task::exec("x", &[])
        };
        let error = job(vec![Task::exec("true", &[]), blank_script])
            .checked()
            .unwrap_err();
        assert_eq!(error.to_string(), "tasks[1].script: must not be empty");
        let blank_on_cancel = Task {
            on_cancel: Some(Box::new(Task::exec("", &[]))),
            ..Task::exec("x", &[])
        };
        let error = job(vec![blank_on_cancel]).checked().unwrap_err();
        assert_eq!(
            error.to_string(),
            "tasks[0].on_cancel.command: must not be empty"
        );
    }
}

#[cfg(test)]
mod properties {

    use proptest::prelude::*;
    use uuid::Uuid;

    use super::*;

    const AGENT: Uuid = Uuid::from_u128(1);
    const STRANGER: Uuid = Uuid::from_u128(2);

    /// The unit tests' run, with an empty console.
    fn run(state: JobState, agent: Option<Uuid>) -> JobRun {
        JobRun {
            console_length: 0,
            ..super::tests::run(state, agent)
        }
    }

    fn truncation_line(cap: i64) -> Vec<u8> {
        format!("[ferrocd] console truncated at {cap} bytes\n").into_bytes()
    }

    /// What the server answers an append, as `JobRuns::append_console` does.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Ack {
        Stored(i64),
        Gap(i64),
        Truncated(i64),
    }

    /// A run's console on the server, deciding each append with `JobRun::append` and
    /// `within_cap`, storing as `JobRuns::append_console` does.
    struct Server {
        run: JobRun,
        log: Vec<u8>,
        cap: i64,
    }

    impl Server {
        fn append(&mut self, agent: Uuid, offset: i64, chunk: &[u8]) -> Checked<Ack> {
            let new = match self.run.append(agent, offset, chunk.len())? {
                Append::Stored => return Ok(Ack::Stored(self.run.console_length)),
                Append::Gap { stored } => return Ok(Ack::Gap(stored)),
                Append::Truncated { at } => return Ok(Ack::Truncated(at)),
                Append::From(skip) => &chunk[skip..],
            };
            let (new, truncated) = within_cap(self.run.console_length, new, self.cap);
            self.log.extend_from_slice(&new);
            self.run.console_length += new.len() as i64;
            Ok(if truncated {
                self.run.console_truncated_at = Some(self.cap);
                Ack::Truncated(self.cap)
            } else {
                Ack::Stored(offset + chunk.len() as i64)
            })
        }

        /// The log holds the intended bytes in order, none twice and none skipped; once cut,
        /// the first `cap` of them and the line saying so.
        fn check(&self, intended: &[u8]) -> Result<(), TestCaseError> {
            prop_assert_eq!(self.run.console_length, self.log.len() as i64);
            match self.run.console_truncated_at {
                None => prop_assert_eq!(&self.log[..], &intended[..self.log.len()]),
                Some(at) => {
                    let line = truncation_line(self.cap);
                    let at = at as usize;
                    prop_assert_eq!(at as i64, self.cap);
                    prop_assert!(
                        self.log.len() <= at + line.len() + 1,
                        "{} bytes",
                        self.log.len()
                    );
                    prop_assert_eq!(&self.log[..at], &intended[..at]);
                    let rest = &self.log[at..];
                    prop_assert!(rest == &line[..] || rest == &[b"\n", &line[..]].concat()[..]);
                }
            }
            Ok(())
        }
    }

    /// One thing that happens to the agent's upload.
    #[derive(Debug, Clone)]
    enum Step {
        /// The agent sends `len` bytes from where it believes the log ends; with `lost` the
        /// answer never reaches it (a timeout after the server stored them), so it sends
        /// from the same place again.
        Send { len: usize, lost: bool },
        /// A request sent earlier reaches the server again (a retry the network delivered
        /// late); its answer goes nowhere.
        Replay(prop::sample::Index),
        /// The agent believes `ahead` bytes more are stored than are, sends from there, and
        /// goes on from where the server answers.
        Ahead { ahead: usize, len: usize },
        /// Another agent sends to this run.
        Stranger { len: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (1usize..=64, prop::bool::weighted(0.3))
                .prop_map(|(len, lost)| Step::Send { len, lost }),
            2 => any::<prop::sample::Index>().prop_map(Step::Replay),
            1 => (1usize..=64, 1usize..=64).prop_map(|(ahead, len)| Step::Ahead { ahead, len }),
            1 => (1usize..=64).prop_map(|len| Step::Stranger { len }),
        ]
    }

    /// Mostly no cap in reach, sometimes one inside or just past the log.
    fn cap() -> impl Strategy<Value = i64> {
        prop_oneof![2 => Just(1i64 << 40), 1 => 0i64..700]
    }

    /// An answer the agent's own requests must get.
    fn answered<T>(answer: Checked<T>) -> Result<T, TestCaseError> {
        answer.map_err(|r| TestCaseError::fail(r.to_string()))
    }

    /// The agent's side: what it believes stored, and whether it stopped (the console was cut).
    struct Agent {
        offset: i64,
        stopped: bool,
    }

    impl Agent {
        fn hear(&mut self, ack: Ack, server: &Server) -> Result<(), TestCaseError> {
            match ack {
                // The server answers the length it holds.
                Ack::Stored(n) | Ack::Gap(n) => {
                    prop_assert_eq!(n, server.run.console_length);
                    self.offset = n;
                }
                Ack::Truncated(at) => {
                    prop_assert_eq!(Some(at), server.run.console_truncated_at);
                    self.stopped = true;
                }
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn retried_duplicated_and_early_chunks_store_each_byte_once_in_order(
            len in 0usize..600,
            steps in prop::collection::vec(step(), 0..60),
            cap in cap(),
        ) {
            // No byte value repeats within 251 bytes, and no chunk is as long: a byte stored
            // twice or skipped shows.
            let intended: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut server = Server { run: run(JobState::Building, Some(AGENT)), log: vec![], cap };
            let mut agent = Agent { offset: 0, stopped: false };
            let mut sent: Vec<(i64, Vec<u8>)> = vec![];
            let chunk = |from: i64, n: usize| {
                let from = (from as usize).min(len);
                intended[from..(from + n).min(len)].to_vec()
            };
            for step in steps {
                match step {
                    Step::Send { len: n, lost } if !agent.stopped => {
                        let bytes = chunk(agent.offset, n);
                        if bytes.is_empty() {
                            continue;
                        }
                        let ack = server.append(AGENT, agent.offset, &bytes);
                        sent.push((agent.offset, bytes));
                        let ack = answered(ack)?;
                        if !lost {
                            agent.hear(ack, &server)?;
                        }
                    }
                    Step::Ahead { ahead, len: n } if !agent.stopped => {
                        let from = agent.offset + ahead as i64;
                        let bytes = chunk(from, n);
                        if bytes.is_empty() {
                            continue;
                        }
                        let ack = server.append(AGENT, from, &bytes);
                        sent.push((from, bytes));
                        agent.hear(answered(ack)?, &server)?;
                    }
                    Step::Replay(which) if !sent.is_empty() => {
                        let (from, bytes) = sent[which.index(sent.len())].clone();
                        answered(server.append(AGENT, from, &bytes))?;
                    }
                    Step::Stranger { len: n } => {
                        let before = server.log.clone();
                        let answer = server.append(STRANGER, agent.offset, &chunk(agent.offset, n));
                        let refused = matches!(answer, Err(Rejection::Forbidden(_)));
                        prop_assert!(refused, "{:?}", answer);
                        prop_assert_eq!(&server.log, &before);
                    }
                    _ => {}
                }
                server.check(&intended)?;
            }
            // Then every answer arrives: the agent sends the rest.
            let mut tries = 0;
            while !agent.stopped && (agent.offset as usize) < len {
                tries += 1;
                prop_assert!(tries <= len, "no progress at {}", agent.offset);
                let bytes = chunk(agent.offset, 64);
                let ack = server.append(AGENT, agent.offset, &bytes);
                agent.hear(answered(ack)?, &server)?;
                server.check(&intended)?;
            }
            if cap >= len as i64 {
                prop_assert_eq!(server.log, intended);
            } else {
                prop_assert!(agent.stopped, "the agent stops at the cap");
                prop_assert_eq!(server.run.console_truncated_at, Some(cap));
            }
        }

        /// Whatever a chunk and however full the log: what is kept is a prefix of the chunk,
        /// and, at the cap, a line of its own saying so; the log ends at most a newline and
        /// that line past the cap.
        #[test]
        fn at_the_cap_a_prefix_and_the_line_are_kept(
            chunk in prop::collection::vec(any::<u8>(), 0..100),
            cap in 0i64..200,
            stored in any::<prop::sample::Index>(),
        ) {
            let stored = stored.index(cap as usize + 1) as i64;
            let (kept, truncated) = within_cap(stored, &chunk, cap);
            if stored + chunk.len() as i64 <= cap {
                prop_assert!(!truncated);
                prop_assert_eq!(kept, chunk);
                return Ok(());
            }
            prop_assert!(truncated);
            let line = truncation_line(cap);
            prop_assert!(stored + kept.len() as i64 <= cap + line.len() as i64 + 1);
            let body = kept.strip_suffix(&line[..]).expect("the line is last");
            let prefix = (cap - stored) as usize;
            prop_assert_eq!(&body[..prefix], &chunk[..prefix]);
            prop_assert_eq!(body.last(), Some(&b'\n'), "the line starts a line");
            // A newline is added only where the kept bytes do not end a line.
            let ends_a_line = chunk[..prefix].last() == Some(&b'\n');
            prop_assert!(body.len() == prefix || (body.len() == prefix + 1 && !ends_a_line));
        }

        /// Whatever agents report, and whatever cancels and lost contacts come between: a
        /// run only moves forward, a Completed run never changes, only its agent moves it,
        /// and it ends with a result (Cancelled once a cancel was asked).
        #[test]
        fn a_run_moves_forward_only_by_its_agent_and_ends_with_a_result(
            start in start(),
            events in prop::collection::vec(event(), 0..40),
        ) {
            let mut run = start;
            for event in events {
                let before = run.clone();
                match event {
                    Event::Assign => {
                        // The scheduler takes a run only while it is Scheduled.
                        if run.state == JobState::Scheduled {
                            run.agent_uuid = Some(AGENT);
                            run.state = JobState::Assigned;
                        }
                    }
                    Event::Report { by_agent, state, result } => {
                        let reporter = if by_agent { AGENT } else { STRANGER };
                        // As `Scheduler::report_status` does: the report itself, then the run.
                        let checked = check_report(state, result);
                        let answer = checked
                            .clone()
                            .and_then(|()| run.report(reporter, state, result));
                        if run.agent_uuid != Some(reporter) {
                            let refused = match checked {
                                Ok(()) => matches!(answer, Err(Rejection::Forbidden(_))),
                                Err(_) => answer.is_err(),
                            };
                            prop_assert!(refused, "{:?} from {}", answer, reporter);
                        }
                        match answer {
                            Ok(Report::Move { state: to, result }) => {
                                prop_assert_eq!(to, state);
                                prop_assert!(to > run.state, "{} to {}", run.state, to);
                                if before.cancel_requested && to == JobState::Completed {
                                    prop_assert_eq!(result, JobResult::Cancelled);
                                }
                                run.state = to;
                                run.result = result;
                            }
                            Ok(Report::Retry) => prop_assert_eq!(state, run.state),
                            Err(_) => {}
                        }
                    }
                    Event::Cancel => match run.cancel() {
                        Cancel::Nothing => {
                            prop_assert!(run.is_completed() || run.cancel_requested);
                        }
                        Cancel::EndNow => {
                            prop_assert_eq!(run.state, JobState::Scheduled);
                            run.state = JobState::Completed;
                            run.result = JobResult::Cancelled;
                        }
                        Cancel::AskTheAgent => {
                            prop_assert!(!run.is_completed() && run.state != JobState::Scheduled);
                            prop_assert!(!run.cancel_requested, "asked twice");
                            run.cancel_requested = true;
                        }
                    },
                    Event::LoseContact => {
                        // The scheduler gives up on a run its agent holds and has not ended.
                        if run.agent_uuid.is_some() && !run.is_completed() {
                            run.state = JobState::Completed;
                            run.result = JobResult::Cancelled;
                        }
                    }
                }
                prop_assert!(run.state >= before.state, "{} to {}", before.state, run.state);
                if before.is_completed() {
                    prop_assert_eq!(&run, &before);
                }
                if run.is_completed() {
                    prop_assert_ne!(run.result, JobResult::Unknown);
                } else {
                    prop_assert_eq!(run.result, JobResult::Unknown);
                }
            }
        }
    }

    /// What happens to a run.
    #[derive(Debug, Clone)]
    enum Event {
        Assign,
        Report {
            by_agent: bool,
            state: JobState,
            result: Option<JobResult>,
        },
        Cancel,
        LoseContact,
    }

    fn any_state() -> impl Strategy<Value = JobState> {
        use JobState::*;
        prop::sample::select(vec![
            Scheduled, Assigned, Preparing, Building, Completing, Completed,
        ])
    }

    fn any_result() -> impl Strategy<Value = JobResult> {
        use JobResult::*;
        prop::sample::select(vec![Unknown, Passed, Failed, Cancelled])
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            1 => Just(Event::Assign),
            8 => (prop::bool::weighted(0.8), any_state(), prop::option::of(any_result()))
                .prop_map(|(by_agent, state, result)| Event::Report { by_agent, state, result }),
            1 => Just(Event::Cancel),
            1 => Just(Event::LoseContact),
        ]
    }

    /// A run in any state it can be in: Scheduled and nobody's, held by the agent (a cancel
    /// asked or not), or Completed with a result.
    fn start() -> impl Strategy<Value = JobRun> {
        use JobResult::*;
        (
            any_state(),
            prop::bool::ANY,
            prop::sample::select(vec![Passed, Failed, Cancelled]),
        )
            .prop_map(|(state, cancel_requested, result)| match state {
                JobState::Scheduled => run(state, None),
                JobState::Completed => JobRun {
                    result,
                    ..run(state, Some(AGENT))
                },
                _ => JobRun {
                    cancel_requested,
                    ..run(state, Some(AGENT))
                },
            })
    }
}
