//! The agent protocol's messages as the agent reads and writes them.
//!
//! The split from the server's side (`web/api/remoting.rs`) is deliberate: the server writes
//! strictly (`WORK` from a run, numbers for ids and counters), while the agent reads liberally,
//! as the contract allows (a string id is echoed back as received, counters may be absent),
//! so it keeps working against any server that follows the contract. A unit test in
//! `web/api/remoting.rs` checks that what the server writes, the agent reads.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::material::Checkout;

/// A build's id as the server wrote it in `WORK` (a number per the contract; a string is
/// tolerated), echoed back in pings exactly as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BuildId {
    Number(u64),
    Text(String),
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildId::Number(n) => write!(f, "{n}"),
            BuildId::Text(s) => f.write_str(s),
        }
    }
}

impl BuildId {
    /// The id as one URL path segment.
    pub(super) fn path_segment(&self) -> String {
        let text = self.to_string();
        let mut out = String::with_capacity(text.len());
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                out.push(byte as char);
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    }
}

/// One task of a job, read liberally: no `type` is an exec task (the first shape,
/// `{command, args, working_dir?}`), a type this agent does not know is kept by name (the job
/// fails at it, saying so), `run_if` in any case, absent or null is `passed`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "TaskShape")]
pub struct Task {
    pub kind: TaskKind,
    pub run_if: RunIf,
    /// Runs once this task was stopped, when the job is cancelled while it runs.
    pub on_cancel: Option<Box<Task>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TaskKind {
    /// A command run directly (no shell), in `working_dir` below the sandbox.
    Exec {
        command: String,
        args: Vec<String>,
        working_dir: Option<String>,
    },
    /// A script run with `bash` from a file in the sandbox.
    Script { script: String },
    /// Artifacts downloaded from the job the server found.
    Fetch(Fetch),
    /// A task type this agent cannot run, by the name the server gave it.
    Unsupported(String),
}

/// A fetch task as the server resolved it: the files of build `from_build_id` (the job
/// `from`) to download, each to its `save_as` in the sandbox, or why there are none.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fetch {
    pub source: String,
    pub from: Option<String>,
    pub from_build_id: Option<i64>,
    pub files: Vec<FetchFile>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FetchFile {
    pub path: String,
    #[serde(default)]
    pub size: u64,
    pub sha256: String,
    pub save_as: String,
}

/// When a task runs, given how the tasks before it went (GoCD's `run_if`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunIf {
    /// While every task before it passed.
    #[default]
    Passed,
    /// Once a task before it failed.
    Failed,
    /// Always.
    Any,
}

#[derive(Deserialize)]
struct TaskShape {
    #[serde(rename = "type", default)]
    task_type: Option<String>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    script: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    from_build_id: Option<i64>,
    #[serde(default)]
    files: Option<Vec<FetchFile>>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    run_if: Option<String>,
    #[serde(default)]
    on_cancel: Option<Box<Task>>,
}

impl TryFrom<TaskShape> for Task {
    type Error = String;

    fn try_from(shape: TaskShape) -> Result<Task, String> {
        let run_if = match shape.run_if.as_deref().map(str::trim) {
            None => RunIf::Passed,
            Some(r) if r.eq_ignore_ascii_case("passed") => RunIf::Passed,
            Some(r) if r.eq_ignore_ascii_case("failed") => RunIf::Failed,
            Some(r) if r.eq_ignore_ascii_case("any") => RunIf::Any,
            Some(other) => return Err(format!("run_if: {other:?} is not passed, failed or any")),
        };
        let task_type = match shape.task_type.as_deref().map(str::trim) {
            Some(t) => t.to_string(),
            None if shape.command.is_none() && shape.script.is_some() => "script".into(),
            None => "exec".into(),
        };
        let kind = if task_type.eq_ignore_ascii_case("exec") {
            TaskKind::Exec {
                command: shape.command.ok_or("an exec task needs a command")?,
                args: shape.args.unwrap_or_default(),
                working_dir: shape.working_dir,
            }
        } else if task_type.eq_ignore_ascii_case("script") {
            TaskKind::Script {
                script: shape.script.ok_or("a script task needs a script")?,
            }
        } else if task_type.eq_ignore_ascii_case("fetch") {
            TaskKind::Fetch(Fetch {
                source: shape.source.unwrap_or_default(),
                from: shape.from,
                from_build_id: shape.from_build_id,
                files: shape.files.unwrap_or_default(),
                error: shape.error,
            })
        } else {
            TaskKind::Unsupported(task_type)
        };
        Ok(Task {
            kind,
            run_if,
            on_cancel: shape.on_cancel,
        })
    }
}

/// `WORK`: the job the server assigned to this agent.
#[derive(Debug, Clone, Deserialize)]
pub struct Work {
    pub build_id: BuildId,
    pub pipeline_name: String,
    #[serde(default)]
    pub pipeline_counter: Value,
    /// GoCD's label; absent, null or empty: the counter.
    #[serde(default)]
    pub pipeline_label: Option<Value>,
    pub stage_name: String,
    #[serde(default)]
    pub stage_counter: Value,
    pub job_name: String,
    /// Empty the sandbox before the tasks.
    #[serde(default)]
    pub clean_workspace: bool,
    #[serde(default)]
    pub tasks: Vec<Task>,
    #[serde(default)]
    pub environment_variables: serde_json::Map<String, Value>,
    /// Git materials to check out into the sandbox before the tasks.
    #[serde(default)]
    pub materials: Vec<Checkout>,
    /// What to upload after the tasks, whatever their result.
    #[serde(default)]
    pub artifacts: Vec<crate::domain::pipeline_config::ArtifactConfig>,
}

/// What `POST /work` handed out.
#[derive(Debug)]
pub enum WorkOffer {
    /// `204`: nothing to do.
    None,
    Job(Box<Work>),
    /// A job whose description the agent cannot read; it is failed so it does not hang.
    Malformed {
        build_id: BuildId,
        error: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum JobState {
    Preparing,
    Building,
    Completing,
    Completed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum JobResult {
    Passed,
    Failed,
    Cancelled,
}

impl fmt::Display for JobResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobResult::Passed => "Passed",
            JobResult::Failed => "Failed",
            JobResult::Cancelled => "Cancelled",
        })
    }
}

/// The server's answer to a console append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleAck {
    /// Stored; the log is now this long.
    Stored(u64),
    /// `409`: the agent believed more was stored than is; the log is this long.
    Gap(u64),
    /// The server cut the console at this many bytes (its cap): send no more.
    Truncated(u64),
}

#[derive(Debug, Deserialize)]
pub struct PingReply {
    #[serde(default)]
    pub agent_config_state: Option<String>,
    #[serde(default)]
    pub instruction: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RegisterReply {
    pub uuid: String,
    pub token: String,
    #[serde(default)]
    pub agent_config_state: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn build_ids_echo_as_received_and_are_path_safe() {
        assert_eq!(json!(BuildId::Number(9)), json!(9));
        assert_eq!(json!(BuildId::Text("a b".into())), json!("a b"));
        assert_eq!(BuildId::Text("a/b c".into()).path_segment(), "a%2Fb%20c");
        assert_eq!(BuildId::Number(42).path_segment(), "42");
    }

    #[test]
    fn tasks_are_read_liberally() {
        let tasks: Vec<Task> = serde_json::from_value(json!([
            {"command": "make", "args": ["a"]},
            {"command": "true", "args": null, "run_if": "ANY"},
            {"script": "echo hi"},
            {"type": "Script", "script": "echo hi", "run_if": null},
            {"type": "gradle", "run_if": "Failed"}
        ]))
        .unwrap();
        assert_eq!(
            tasks[0].kind,
            TaskKind::Exec {
                command: "make".into(),
                args: vec!["a".into()],
                working_dir: None
            }
        );
        assert_eq!(tasks[1].run_if, RunIf::Any);
        assert_eq!(
            tasks[2].kind,
            TaskKind::Script {
                script: "echo hi".into()
            }
        );
        assert_eq!(tasks[3].kind, tasks[2].kind);
        assert_eq!(tasks[3].run_if, RunIf::Passed);
        assert_eq!(tasks[4].kind, TaskKind::Unsupported("gradle".into()));
        assert_eq!(tasks[4].run_if, RunIf::Failed);
        assert!(serde_json::from_value::<Task>(json!({"args": []})).is_err());
        assert!(
            serde_json::from_value::<Task>(json!({"command": "x", "run_if": "later"})).is_err()
        );
    }
}
