//! The hub: topics, domain events and their broadcast.
//!
//! Events are small facts that name what changed (ids, a pending count, a console range),
//! never the entities themselves: views re-read what they show, and an event serializes to a
//! few dozen bytes, so it can cross a process (a Postgres `NOTIFY` payload is at most 8000).
//!
//! The hub comes in two halves. [`Hub`] subscribes; it is what views and streams hold.
//! [`Publisher`] sends; the only one connected to the server's hub goes to the database
//! (`db::Db`), whose write transaction publishes a write's events once it has committed, in
//! commit order. So no context can publish before, or without, its commit.
//! A topic's channel is created on first use and dropped once nobody listens.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::domain::pipeline::StageStatus;

/// How many events a slow subscriber may fall behind before it is told it lagged
/// (and then gets fresh state instead of the missed events).
const CHANNEL_CAPACITY: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Topic {
    /// `agents:updates`: every change to any agent.
    AgentsUpdates,
    /// `scheduler:updates`: the queue's pending count.
    SchedulerUpdates,
    /// `agent_job_runs:{agent_uuid}`: runs assigned to one agent.
    AgentJobRuns(Uuid),
    /// `agent_job_run_console:{build_id}`: one run's console and state.
    AgentJobRunConsole(i64),
    /// `pipelines:updates`: every change to a pipeline (its instances, stages, pause, lock)
    /// and to the pipeline config.
    PipelinesUpdates,
    /// `job_runs:updates`: every run's change (`run_updated`), for views of many runs at
    /// once (a stage's jobs).
    JobRunsUpdates,
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::AgentsUpdates => f.write_str("agents:updates"),
            Topic::SchedulerUpdates => f.write_str("scheduler:updates"),
            Topic::AgentJobRuns(agent) => write!(f, "agent_job_runs:{agent}"),
            Topic::AgentJobRunConsole(build_id) => write!(f, "agent_job_run_console:{build_id}"),
            Topic::PipelinesUpdates => f.write_str("pipelines:updates"),
            Topic::JobRunsUpdates => f.write_str("job_runs:updates"),
        }
    }
}

impl From<Topic> for String {
    fn from(topic: Topic) -> String {
        topic.to_string()
    }
}

impl TryFrom<String> for Topic {
    type Error = String;
    fn try_from(name: String) -> Result<Topic, String> {
        name.parse()
    }
}

impl FromStr for Topic {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agents:updates" => Ok(Topic::AgentsUpdates),
            "scheduler:updates" => Ok(Topic::SchedulerUpdates),
            "pipelines:updates" => Ok(Topic::PipelinesUpdates),
            "job_runs:updates" => Ok(Topic::JobRunsUpdates),
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

/// What a committed write changed. Views re-read the entities named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DomainEvent {
    AgentRegistered {
        uuid: Uuid,
    },
    AgentUpdated {
        uuid: Uuid,
    },
    AgentEnabled {
        uuid: Uuid,
    },
    AgentDisabled {
        uuid: Uuid,
    },
    AgentDeleted {
        uuid: Uuid,
    },
    /// The queue's length after the write (a fact small enough to carry).
    PendingCount {
        count: u64,
    },
    /// A run just handed to its agent.
    RunCreated {
        build_id: i64,
    },
    RunUpdated {
        build_id: i64,
    },
    /// Console bytes `start..end` of a run were stored.
    ConsoleAppend {
        build_id: i64,
        start: i64,
        end: i64,
    },
    /// A pipeline changed: an instance (`counter`) or its stages moved, or it was paused,
    /// unpaused, locked or unlocked (`counter`: its latest instance, if it has one). The
    /// stage statuses are those of that instance, in order.
    PipelineUpdated {
        pipeline: String,
        counter: Option<i64>,
        stages: Vec<(String, StageStatus)>,
    },
    /// The pipeline config was read again: pipelines may have come, gone or changed, and
    /// config errors with them.
    ConfigReloaded,
    /// A config document stored through the API was stored or deleted: every node reads its
    /// sources again (and then publishes `ConfigReloaded`).
    ConfigChanged,
    /// A run's artifacts changed: a file was stored (its test report read, if it is one), or
    /// they were purged.
    ArtifactsChanged {
        build_id: i64,
    },
    /// Events may have been lost (this node could not hear the other nodes for a while):
    /// whoever hears this re-reads everything it shows, as after a lag. Sent by the hub on
    /// every topic (`Publisher::resync`), never by a write.
    Resync,
}

impl DomainEvent {
    /// The event name, as `/api/events` sends it.
    pub fn name(&self) -> &'static str {
        match self {
            DomainEvent::AgentRegistered { .. } => "agent_registered",
            DomainEvent::AgentUpdated { .. } => "agent_updated",
            DomainEvent::AgentEnabled { .. } => "agent_enabled",
            DomainEvent::AgentDisabled { .. } => "agent_disabled",
            DomainEvent::AgentDeleted { .. } => "agent_deleted",
            DomainEvent::PendingCount { .. } => "pending_count",
            DomainEvent::RunCreated { .. } => "run_created",
            DomainEvent::RunUpdated { .. } => "run_updated",
            DomainEvent::ConsoleAppend { .. } => "console_append",
            DomainEvent::PipelineUpdated { .. } => "pipeline_updated",
            DomainEvent::ConfigReloaded => "config_reloaded",
            DomainEvent::ConfigChanged => "config_changed",
            DomainEvent::ArtifactsChanged { .. } => "artifacts_changed",
            DomainEvent::Resync => "resync",
        }
    }
}

pub type Published = Arc<DomainEvent>;

/// Events published since start: ((topic kind, event name), count), in order.
pub type EventCounts = Vec<((&'static str, &'static str), u64)>;

type Channels = Arc<Mutex<ChannelMap>>;

/// The subscribing half of the hub.
pub struct Hub {
    channels: Channels,
}

/// The sending half of the hub: held by the database, used by its write transaction.
pub struct Publisher {
    channels: Channels,
    /// Held from a write's commit until its events are out, so events go out in commit
    /// order (the last pending count heard is the true one).
    order: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct ChannelMap {
    by_topic: HashMap<Topic, broadcast::Sender<Published>>,
    /// Subscriptions since the last sweep of channels nobody listens to.
    since_sweep: usize,
    /// Events published since start, by topic kind and event name (`/metrics`).
    published: HashMap<(&'static str, &'static str), u64>,
    /// Console bytes whose appends were published since start (`/metrics`).
    console_bytes: u64,
}

/// Sweep abandoned channels after this many subscriptions (amortised; a topic that is
/// never published again, such as a finished build's console, must not stay forever).
const SWEEP_EVERY: usize = 64;

/// A new hub: what subscribes, and what publishes into it.
pub fn hub() -> (Arc<Hub>, Publisher) {
    let channels = Channels::default();
    let hub = Hub {
        channels: Arc::clone(&channels),
    };
    let publisher = Publisher {
        channels,
        order: tokio::sync::Mutex::new(()),
    };
    (Arc::new(hub), publisher)
}

impl Topic {
    /// The topic without its id: `agents:updates`, `agent_job_runs`, `agent_job_run_console`…
    pub fn kind(&self) -> &'static str {
        match self {
            Topic::AgentsUpdates => "agents:updates",
            Topic::SchedulerUpdates => "scheduler:updates",
            Topic::AgentJobRuns(_) => "agent_job_runs",
            Topic::AgentJobRunConsole(_) => "agent_job_run_console",
            Topic::PipelinesUpdates => "pipelines:updates",
            Topic::JobRunsUpdates => "job_runs:updates",
        }
    }

    /// Per-agent and per-build topics carry far fewer events than the global ones.
    fn capacity(&self) -> usize {
        match self {
            Topic::AgentsUpdates
            | Topic::SchedulerUpdates
            | Topic::PipelinesUpdates
            | Topic::JobRunsUpdates => CHANNEL_CAPACITY,
            Topic::AgentJobRuns(_) | Topic::AgentJobRunConsole(_) => CHANNEL_CAPACITY / 4,
        }
    }
}

impl Hub {
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

    /// Events published since start: ((topic kind, event name), count), and the console
    /// bytes whose appends were published.
    pub fn published(&self) -> (EventCounts, u64) {
        let channels = self.channels.lock().expect("hub lock poisoned");
        let mut counts: Vec<_> = channels.published.iter().map(|(k, v)| (*k, *v)).collect();
        counts.sort();
        (counts, channels.console_bytes)
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

impl Publisher {
    /// Waits for the writes before this one to have published, then holds the turn: commit,
    /// then [`Publisher::send`] the write's events, then drop the guard.
    pub async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.order.lock().await
    }

    /// Tells everyone subscribed to any topic that they may have missed events
    /// ([`DomainEvent::Resync`]).
    pub fn resync(&self) {
        let topics: Vec<Topic> = {
            let channels = self.channels.lock().expect("hub lock poisoned");
            channels.by_topic.keys().cloned().collect()
        };
        for topic in topics {
            self.send(&topic, DomainEvent::Resync);
        }
    }

    /// Sends `event` to everyone subscribed to `topic` now.
    pub fn send(&self, topic: &Topic, event: DomainEvent) {
        let mut channels = self.channels.lock().expect("hub lock poisoned");
        *channels
            .published
            .entry((topic.kind(), event.name()))
            .or_default() += 1;
        if let (Topic::AgentJobRunConsole(_), DomainEvent::ConsoleAppend { start, end, .. }) =
            (topic, &event)
        {
            channels.console_bytes += end.saturating_sub(*start).max(0) as u64;
        }
        let nobody_listens = match channels.by_topic.get(topic) {
            Some(sender) => sender.send(Arc::new(event)).is_err(),
            None => false,
        };
        if nobody_listens {
            channels.by_topic.remove(topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_nobody_listens_to_are_swept() {
        let (hub, publisher) = hub();
        for build_id in 0..(SWEEP_EVERY as i64 * 3) {
            drop(hub.subscribe(&Topic::AgentJobRunConsole(build_id)));
        }
        let kept = hub.subscribe(&Topic::AgentsUpdates);
        assert!(
            hub.channel_count() <= SWEEP_EVERY + 1,
            "{} channels",
            hub.channel_count()
        );
        publisher.send(
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

    #[test]
    fn events_are_small_and_round_trip_through_json() {
        let events = [
            DomainEvent::AgentDisabled {
                uuid: Uuid::new_v4(),
            },
            DomainEvent::PendingCount { count: 3 },
            DomainEvent::ConsoleAppend {
                build_id: 9,
                start: 0,
                end: 1 << 20,
            },
        ];
        for event in events {
            let json = serde_json::to_string(&(Topic::AgentJobRunConsole(9), &event)).unwrap();
            assert!(json.len() < 200, "{json}");
            let (topic, back): (Topic, DomainEvent) = serde_json::from_str(&json).unwrap();
            assert_eq!((topic, back), (Topic::AgentJobRunConsole(9), event));
        }
    }
}
