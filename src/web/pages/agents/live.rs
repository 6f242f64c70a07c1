//! The agents page's live view, run by the shared runner (`web::live`).
//!
//! It keeps the rows it has told its connections about (`Rows`: every agent as last sent, in
//! the server's order). A change re-reads only the agents it names and sends one event per
//! agent that differs from what was sent: `agent-added` for one the connections do not have,
//! `agent-{uuid}` for one they have (empty data once it is gone). Counts and the queued count
//! go out when they change. The whole body (`agents`) is for a connection's first state and a
//! lagging connection only; it is rendered from `Rows` when a connection asks for it, and
//! kept until the rows change, so however many connect, one render serves them.
//!
//! A new connection subscribes before it reads `Rows`, and the view updates `Rows` before it
//! sends, so every event a connection receives applies on top of the state it started from:
//! a row event always names a row the connection has, unless it is `agent-added`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::Stream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::fragments::{self, AgentCounts};
use crate::agents::Agents;
use crate::domain::agent::Agent;
use crate::error::Result;
use crate::events::{DomainEvent, Hub, Topic};
use crate::scheduler::Scheduler;
use crate::web::live::{self, Output, RenderCounts, Subscription, View};
use crate::web::pages::fragment;
use crate::web::sse::frame;

/// What `/agents/events` connections share.
pub struct AgentsView {
    out: Arc<Output<Bytes>>,
    shared: Arc<Shared>,
}

/// What a new connection reads as its state; written by the view before each send.
struct Shared {
    rows: RwLock<Rows>,
    /// The `agents` frame, and the version of `rows` it shows.
    table: tokio::sync::Mutex<Option<(u64, Bytes)>>,
    counts: RwLock<Bytes>,
    queued: RwLock<Bytes>,
    queued_count: AtomicU64,
}

/// Every agent as the connections were last told, in the server's order.
#[derive(Default)]
struct Rows {
    /// Bumped by every change, so a cached table knows whether it is current.
    version: u64,
    by_uuid: HashMap<Uuid, Agent>,
    /// As `Agents::list` sorts them: by hostname, then uuid, both compared bytewise.
    order: BTreeSet<(String, Uuid)>,
}

impl Rows {
    fn insert(&mut self, agent: Agent) {
        self.remove(agent.uuid);
        self.order.insert((agent.hostname.clone(), agent.uuid));
        self.by_uuid.insert(agent.uuid, agent);
    }

    fn remove(&mut self, uuid: Uuid) {
        if let Some(old) = self.by_uuid.remove(&uuid) {
            self.order.remove(&(old.hostname, uuid));
        }
    }

    fn in_order(&self) -> impl Iterator<Item = &Agent> {
        self.order.iter().map(|(_, uuid)| &self.by_uuid[uuid])
    }
}

impl AgentsView {
    /// Reads the agents and the queued count and starts the view; it stops with `shutdown`.
    pub async fn start(
        agents: Agents,
        scheduler: Scheduler,
        hub: &Hub,
        renders: Arc<RenderCounts>,
        shutdown: CancellationToken,
    ) -> Result<Arc<AgentsView>> {
        // Subscribe before the first read, so no change falls between the two.
        let events = Subscription::new(hub, &[Topic::AgentsUpdates, Topic::SchedulerUpdates]);
        let mut rows = Rows::default();
        for agent in agents.list().await? {
            rows.insert(agent);
        }
        let queued = scheduler.pending_count().await?;
        let out = Output::new(renders);
        let counts = AgentCounts::of(rows.by_uuid.values());
        let shared = Arc::new(Shared {
            rows: RwLock::new(rows),
            table: tokio::sync::Mutex::new(None),
            counts: RwLock::new(counts_frame(&out, &counts)),
            queued: RwLock::new(queued_frame(&out, queued)),
            queued_count: AtomicU64::new(queued),
        });
        let view = Renderer {
            agents,
            scheduler,
            shared: Arc::clone(&shared),
            dirty: Dirty::default(),
            counts,
        };
        live::spawn(view, events, Arc::clone(&out), shutdown);
        Ok(Arc::new(AgentsView { out, shared }))
    }

    /// The scheduler's pending count, as last heard.
    pub fn queued(&self) -> u64 {
        self.shared.queued_count.load(Ordering::Relaxed)
    }

    /// One `/agents/events` connection: `agents`, `counts`, `queued`, then the changes.
    pub fn stream(self: &Arc<Self>) -> impl Stream<Item = Bytes> + Send + use<> {
        let view = Arc::clone(self);
        self.out.frames(move || {
            let view = Arc::clone(&view);
            async move { view.state().await }
        })
    }

    async fn state(&self) -> Vec<Bytes> {
        let table = {
            let mut cached = self.shared.table.lock().await;
            let rows = self.shared.rows.read().expect("rows lock poisoned");
            match &*cached {
                Some((version, table)) if *version == rows.version => table.clone(),
                _ => {
                    self.out.rendered("agents.table");
                    let html = fragment(fragments::rows(rows.in_order()));
                    let table = frame("agents", &self.out.next_id(), &html);
                    *cached = Some((rows.version, table.clone()));
                    table
                }
            }
        };
        let counts = self
            .shared
            .counts
            .read()
            .expect("counts lock poisoned")
            .clone();
        let queued = self
            .shared
            .queued
            .read()
            .expect("queued lock poisoned")
            .clone();
        vec![table, counts, queued]
    }
}

fn counts_frame(out: &Output<Bytes>, counts: &AgentCounts) -> Bytes {
    out.rendered("agents.counts");
    frame(
        "counts",
        &out.next_id(),
        &fragment(fragments::counts(counts)),
    )
}

fn queued_frame(out: &Output<Bytes>, queued: u64) -> Bytes {
    out.rendered("agents.queued");
    frame("queued", &out.next_id(), &queued.to_string())
}

/// What changed since the last render.
#[derive(Default)]
struct Dirty {
    /// Agents to re-read.
    rows: HashSet<Uuid>,
    /// Events were missed: re-read every agent.
    every_agent: bool,
    /// The pending count last heard, if one was.
    queued: Option<u64>,
    /// Scheduler events were missed: re-read the pending count.
    reread_queued: bool,
}

struct Renderer {
    agents: Agents,
    scheduler: Scheduler,
    shared: Arc<Shared>,
    dirty: Dirty,
    /// The counts last sent: a change that leaves them as they were sends no `counts`.
    counts: AgentCounts,
}

impl View for Renderer {
    type Change = Bytes;

    fn note(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::AgentRegistered { uuid }
            | DomainEvent::AgentUpdated { uuid }
            | DomainEvent::AgentEnabled { uuid }
            | DomainEvent::AgentDisabled { uuid }
            | DomainEvent::AgentDeleted { uuid } => {
                self.dirty.rows.insert(*uuid);
            }
            DomainEvent::PendingCount { count } => self.dirty.queued = Some(*count),
            DomainEvent::RunCreated { .. }
            | DomainEvent::RunUpdated { .. }
            | DomainEvent::ConsoleAppend { .. }
            | DomainEvent::PipelineUpdated { .. }
            | DomainEvent::ConfigReloaded
            | DomainEvent::ConfigChanged
            | DomainEvent::ArtifactsChanged { .. } => {}
            // A miss by the time a view hears it (`live::Subscription`).
            DomainEvent::Resync => {}
        }
    }

    fn missed(&mut self, topic: &Topic, _: u64) {
        match topic {
            Topic::SchedulerUpdates => self.dirty.reread_queued = true,
            _ => self.dirty.every_agent = true,
        }
    }

    fn is_dirty(&self) -> bool {
        let d = &self.dirty;
        d.every_agent || !d.rows.is_empty() || d.queued.is_some() || d.reread_queued
    }

    async fn render(&mut self, out: &Output<Bytes>) -> Result<()> {
        let dirty = std::mem::take(&mut self.dirty);
        match self.send_changes(&dirty, out).await {
            Ok(()) => Ok(()),
            Err(error) => {
                // Nothing was marked meanwhile (the runner waits for us): try it all again.
                self.dirty = dirty;
                Err(error)
            }
        }
    }
}

impl Renderer {
    /// Re-reads what `dirty` names, updates the shared state, then sends what differs.
    async fn send_changes(&mut self, dirty: &Dirty, out: &Output<Bytes>) -> Result<()> {
        let fresh = self.read(dirty).await?;
        let queued = match dirty.reread_queued {
            true => Some(self.scheduler.pending_count().await?),
            false => dirty.queued,
        };
        let mut frames = Vec::new();
        let counts = {
            let mut rows = self.shared.rows.write().expect("rows lock poisoned");
            for (uuid, now) in fresh {
                let before = rows.by_uuid.get(&uuid);
                match now {
                    None if before.is_some() => {
                        rows.remove(uuid);
                        frames.push(frame(&format!("agent-{uuid}"), &out.next_id(), ""));
                    }
                    Some(agent) if before != Some(&agent) => {
                        // A row the connections lack is added; one they have is replaced.
                        let event = match before {
                            None => "agent-added".to_string(),
                            Some(_) => format!("agent-{uuid}"),
                        };
                        out.rendered("agents.row");
                        let html = fragment(fragments::row(&agent));
                        frames.push(frame(&event, &out.next_id(), &html));
                        rows.insert(agent);
                    }
                    _ => {}
                }
            }
            if !frames.is_empty() {
                rows.version += 1;
            }
            AgentCounts::of(rows.by_uuid.values())
        };
        if counts != self.counts {
            let counts_frame = counts_frame(out, &counts);
            *self.shared.counts.write().expect("counts lock poisoned") = counts_frame.clone();
            frames.push(counts_frame);
            self.counts = counts;
        }
        if let Some(queued) = queued
            && queued != self.shared.queued_count.load(Ordering::Relaxed)
        {
            let queued_frame = queued_frame(out, queued);
            *self.shared.queued.write().expect("queued lock poisoned") = queued_frame.clone();
            self.shared.queued_count.store(queued, Ordering::Relaxed);
            frames.push(queued_frame);
        }
        for frame in frames {
            out.send(frame);
        }
        Ok(())
    }

    /// Each agent `dirty` names (every agent, after missed events) as stored now; `None`
    /// for one that is gone.
    async fn read(&self, dirty: &Dirty) -> Result<Vec<(Uuid, Option<Agent>)>> {
        let (mut uuids, stored) = if dirty.every_agent {
            let known: Vec<Uuid> = {
                let rows = self.shared.rows.read().expect("rows lock poisoned");
                rows.by_uuid.keys().copied().collect()
            };
            (known, self.agents.list().await?)
        } else if dirty.rows.is_empty() {
            return Ok(Vec::new());
        } else {
            let uuids: Vec<Uuid> = dirty.rows.iter().copied().collect();
            let stored = self.agents.find_many(&uuids).await?;
            (uuids, stored)
        };
        let mut stored: HashMap<Uuid, Agent> = stored.into_iter().map(|a| (a.uuid, a)).collect();
        // Every agent asked for or stored: an absent one is gone, a new one is added.
        uuids.extend(stored.keys().copied());
        uuids.sort();
        uuids.dedup();
        Ok(uuids
            .into_iter()
            .map(|uuid| (uuid, stored.remove(&uuid)))
            .collect())
    }
}
