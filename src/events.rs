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

use crate::agents::Agent;

/// How many events a slow subscriber may fall behind before it is told it lagged
/// (and then gets fresh state instead of the missed events).
const CHANNEL_CAPACITY: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `agents:updates`: every change to any agent.
    AgentsUpdates,
    /// `scheduler:updates`: the queue's pending count.
    SchedulerUpdates,
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::AgentsUpdates => f.write_str("agents:updates"),
            Topic::SchedulerUpdates => f.write_str("scheduler:updates"),
        }
    }
}

impl FromStr for Topic {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agents:updates" => Ok(Topic::AgentsUpdates),
            "scheduler:updates" => Ok(Topic::SchedulerUpdates),
            other => Err(format!("unknown topic {other:?}")),
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
    PendingCount { count: u64 },
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
