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

/// One task of a job: a command run directly (no shell), in `working_dir` below the sandbox.
#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
}

/// `WORK`: the job the server assigned to this agent.
#[derive(Debug, Clone, Deserialize)]
pub struct Work {
    pub build_id: BuildId,
    pub pipeline_name: String,
    #[serde(default)]
    pub pipeline_counter: Value,
    pub stage_name: String,
    #[serde(default)]
    pub stage_counter: Value,
    pub job_name: String,
    #[serde(default)]
    pub tasks: Vec<Task>,
    #[serde(default)]
    pub environment_variables: serde_json::Map<String, Value>,
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
}
