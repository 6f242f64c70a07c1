//! The hub: topics, typed domain events and their broadcast.
//!
//! Contexts publish here after a successful write, never before; views and `/api/events`
//! subscribe. A topic's channel is created on first use and dropped once nobody listens.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use bytes::Bytes;
use uuid::Uuid;

use crate::domain::agent::Agent;
use crate::domain::job_run::JobRun;

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
}

pub type Published = Arc<DomainEvent>;

#[derive(Default)]
pub struct Hub {
    channels: Mutex<Channels>,
}

#[derive(Default)]
struct Channels {
    by_topic: HashMap<Topic, broadcast::Sender<Published>>,
    /// Subscriptions since the last sweep of channels nobody listens to.
    since_sweep: usize,
}

/// Sweep abandoned channels after this many subscriptions (amortised; a topic that is
/// never published again, such as a finished build's console, must not stay forever).
const SWEEP_EVERY: usize = 64;

impl Topic {
    /// Per-agent and per-build topics carry far fewer events than the global ones.
    fn capacity(&self) -> usize {
        match self {
            Topic::AgentsUpdates | Topic::SchedulerUpdates => CHANNEL_CAPACITY,
            Topic::AgentJobRuns(_) | Topic::AgentJobRunConsole(_) => CHANNEL_CAPACITY / 4,
        }
    }
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    pub fn subscribe(&self, topic: &Topic) -> broadcast::Receiver<Published> {
        let mut channels = self.channels.lock().expect("hub lock poisoned");
        channels.since_sweep += 1;
        if channels.since_sweep >= SWEEP_EVERY {
            channels.since_sweep = 0;
            channels
                .by_topic
                .retain(|_, sender| sender.receiver_count() > 0);
        }
        channels
            .by_topic
            .entry(topic.clone())
            .or_insert_with(|| broadcast::channel(topic.capacity()).0)
            .subscribe()
    }

    /// Sends `event` to everyone subscribed to `topic` now. Call only after the write it
    /// describes has committed.
    pub fn publish(&self, topic: &Topic, event: DomainEvent) {
        let mut channels = self.channels.lock().expect("hub lock poisoned");
        let nobody_listens = match channels.by_topic.get(topic) {
            Some(sender) => sender.send(Arc::new(event)).is_err(),
            None => false,
        };
        if nobody_listens {
            channels.by_topic.remove(topic);
        }
    }

    /// How many topics have a channel now (for tests and metrics).
    pub fn channel_count(&self) -> usize {
        self.channels
            .lock()
            .expect("hub lock poisoned")
            .by_topic
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_nobody_listens_to_are_swept() {
        let hub = Hub::default();
        for build_id in 0..(SWEEP_EVERY as i64 * 3) {
            drop(hub.subscribe(&Topic::AgentJobRunConsole(build_id)));
        }
        let kept = hub.subscribe(&Topic::AgentsUpdates);
        assert!(
            hub.channel_count() <= SWEEP_EVERY + 1,
            "{} channels",
            hub.channel_count()
        );
        hub.publish(
            &Topic::AgentsUpdates,
            DomainEvent::PendingCount { count: 1 },
        );
        drop(kept);
    }

    #[test]
    fn topics_round_trip_through_their_names() {
        let uuid = Uuid::new_v4();
        for topic in [
            Topic::AgentsUpdates,
            Topic::SchedulerUpdates,
            Topic::AgentJobRuns(uuid),
            Topic::AgentJobRunConsole(42),
        ] {
            assert_eq!(topic.to_string().parse::<Topic>().unwrap(), topic);
        }
        assert!("agent_job_runs:not-a-uuid".parse::<Topic>().is_err());
        assert!("agent_job_run_console:x".parse::<Topic>().is_err());
    }
}
