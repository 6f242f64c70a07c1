//! The hub: topics, typed domain events and their broadcast.
//!
//! Contexts publish here after a successful write, never before; views and `/api/events`
//! subscribe. A topic's channel is created on first use and dropped once nobody listens.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use bytes::Bytes;
use uuid::Uuid;

use crate::agents::Agent;
use crate::job_runs::JobRun;

/// How many events a slow subscriber may fall behind before it is told it lagged
/// (and then gets fresh state instead of the missed events).
const CHANNEL_CAPACITY: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `agents:updates`: every change to any agent.
    AgentsUpdates,
    /// `scheduler:updates`: the queue's pending count.
    SchedulerUpdates,
    /// `agent_job_runs:{agent_uuid}`: runs assigned to one agent.
    AgentJobRuns(Uuid),
    /// `agent_job_run_console:{build_id}`: one run's console and state.
    AgentJobRunConsole(i64),
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::AgentsUpdates => f.write_str("agents:updates"),
            Topic::SchedulerUpdates => f.write_str("scheduler:updates"),
            Topic::AgentJobRuns(agent) => write!(f, "agent_job_runs:{agent}"),
            Topic::AgentJobRunConsole(build_id) => write!(f, "agent_job_run_console:{build_id}"),
        }
    }
}

impl FromStr for Topic {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agents:updates" => Ok(Topic::AgentsUpdates),
            "scheduler:updates" => Ok(Topic::SchedulerUpdates),
            other => {
                let unknown = || format!("unknown topic {other:?}");
                if let Some(agent) = other.strip_prefix("agent_job_runs:") {
                    agent
                        .parse()
                        .map(Topic::AgentJobRuns)
                        .map_err(|_| unknown())
                } else if let Some(build_id) = other.strip_prefix("agent_job_run_console:") {
                    build_id
                        .parse()
                        .map(Topic::AgentJobRunConsole)
                        .map_err(|_| unknown())
                } else {
                    Err(unknown())
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
pub enum DomainEvent {
    AgentRegistered(Agent),
    AgentUpdated(Agent),
    AgentEnabled(Agent),
    AgentDisabled(Agent),
    AgentDeleted(Agent),
    PendingCount {
        count: u64,
    },
    RunCreated(JobRun),
    RunUpdated(JobRun),
    /// Bytes appended to a console at `start` (kept raw; JSON shows them as lossy UTF-8).
    ConsoleAppend {
        build_id: i64,
        start: i64,
        bytes: Bytes,
    },
}

impl DomainEvent {
    /// The event name, as `/api/events` sends it.
    pub fn name(&self) -> &'static str {
        match self {
            DomainEvent::AgentRegistered(_) => "agent_registered",
            DomainEvent::AgentUpdated(_) => "agent_updated",
            DomainEvent::AgentEnabled(_) => "agent_enabled",
            DomainEvent::AgentDisabled(_) => "agent_disabled",
            DomainEvent::AgentDeleted(_) => "agent_deleted",
            DomainEvent::PendingCount { .. } => "pending_count",
            DomainEvent::RunCreated(_) => "run_created",
            DomainEvent::RunUpdated(_) => "run_updated",
            DomainEvent::ConsoleAppend { .. } => "console_append",
        }
    }

    /// The event's JSON data, as `/api/events` sends it.
    pub fn data(&self) -> Value {
        match self {
            DomainEvent::AgentRegistered(agent)
            | DomainEvent::AgentUpdated(agent)
            | DomainEvent::AgentEnabled(agent)
            | DomainEvent::AgentDisabled(agent)
            | DomainEvent::AgentDeleted(agent) => {
                serde_json::to_value(agent).unwrap_or(Value::Null)
            }
            DomainEvent::PendingCount { count } => json!({ "count": count }),
            DomainEvent::RunCreated(run) | DomainEvent::RunUpdated(run) => {
                serde_json::to_value(run).unwrap_or(Value::Null)
            }
            DomainEvent::ConsoleAppend { start, bytes, .. } => json!({
                "offset": start + bytes.len() as i64,
                "chunk": String::from_utf8_lossy(bytes),
            }),
        }
    }
}

pub type Published = Arc<DomainEvent>;

#[derive(Default)]
pub struct Hub {
    channels: Mutex<HashMap<Topic, broadcast::Sender<Published>>>,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    pub fn subscribe(&self, topic: &Topic) -> broadcast::Receiver<Published> {
        let mut channels = self.channels.lock().expect("hub lock poisoned");
        channels
            .entry(topic.clone())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Sends `event` to everyone subscribed to `topic` now. Call only after the write it
    /// describes has committed.
    pub fn publish(&self, topic: &Topic, event: DomainEvent) {
        let mut channels = self.channels.lock().expect("hub lock poisoned");
        if let Some(sender) = channels.get(topic) {
            if sender.send(Arc::new(event)).is_err() {
                // Nobody listens any more: forget the channel so per-id topics don't pile up.
                channels.remove(topic);
            }
        }
    }
}
