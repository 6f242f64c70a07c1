//! The agents page's live view: one task renders each changed fragment once and shares the
//! bytes with every open `/agents/events` connection.
//!
//! Coalescing: the first change after a quiet spell renders at once; changes arriving while a
//! render is due fold into one trailing render at most every `COALESCE`. The final state
//! always goes out, because a dirty mark is only cleared by a render that read after it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::fragments::{self, AgentCounts};
use crate::agents::Agents;
use crate::events::{DomainEvent, Hub, Topic};
use crate::web::pages::fragment;
use crate::web::sse::{Coalescer, LiveView, frame};

/// At most one render per fragment this often.
pub const COALESCE: Duration = Duration::from_millis(50);

/// What the page's stream shares: the live view and the queued count it last heard.
pub struct AgentsView {
    pub live: Arc<LiveView>,
    queued: AtomicU64,
}

impl AgentsView {
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }
}

/// What changed since the last render.
#[derive(Default)]
struct Dirty {
    table: bool,
    rows: HashSet<Uuid>,
    queued: bool,
}

impl Dirty {
    fn everything() -> Self {
        Dirty {
            table: true,
            rows: HashSet::new(),
            queued: true,
        }
    }

    fn any(&self) -> bool {
        self.table || !self.rows.is_empty() || self.queued
    }

    fn agent_event(&mut self, event: &DomainEvent) {
        match event {
            // Membership changed: the whole table goes out.
            DomainEvent::AgentRegistered(_) | DomainEvent::AgentDeleted(_) => self.table = true,
            DomainEvent::AgentUpdated(agent)
            | DomainEvent::AgentEnabled(agent)
            | DomainEvent::AgentDisabled(agent) => {
                self.rows.insert(agent.uuid);
            }
            DomainEvent::PendingCount { .. } => self.queued = true,
            DomainEvent::RunCreated(_)
            | DomainEvent::RunUpdated(_)
            | DomainEvent::ConsoleAppend { .. } => {}
        }
    }
}

/// Starts the view task; it stops with `shutdown`.
/// `queued` is the scheduler's pending count at start; `pending_count` events follow it.
pub fn spawn(
    agents: Agents,
    hub: &Hub,
    queued: u64,
    shutdown: CancellationToken,
) -> Arc<AgentsView> {
    let view = Arc::new(AgentsView {
        live: LiveView::new(),
        queued: AtomicU64::new(queued),
    });
    // Subscribe before the first render, so no change falls between the two.
    let mut agent_events = hub.subscribe(&Topic::AgentsUpdates);
    let mut scheduler_events = hub.subscribe(&Topic::SchedulerUpdates);
    let task_view = Arc::clone(&view);
    tokio::spawn(async move {
        let view = task_view;
        let mut renderer = Renderer::default();
        let mut dirty = Dirty::everything();
        let mut coalescer = Coalescer::default();
        loop {
            // What changed is tracked in `dirty`; when to render, by the shared coalescer.
            if dirty.any() {
                coalescer.mark();
            }
            let due = coalescer.due(COALESCE);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = agent_events.recv() => match event {
                    Ok(event) => dirty.agent_event(&event),
                    // We missed changes: re-read everything.
                    Err(RecvError::Lagged(_)) => dirty = Dirty::everything(),
                    Err(RecvError::Closed) => break,
                },
                event = scheduler_events.recv() => match event {
                    Ok(event) => {
                        if let DomainEvent::PendingCount { count } = *event {
                            view.queued.store(count, Ordering::Relaxed);
                            dirty.queued = true;
                        }
                    }
                    Err(RecvError::Lagged(_)) => dirty.queued = true,
                    Err(RecvError::Closed) => break,
                },
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    let pending = std::mem::take(&mut dirty);
                    coalescer.rendered();
                    if let Err(error) = renderer.render(&agents, &view, &pending).await {
                        tracing::warn!(%error, "agents view could not render; retrying");
                        dirty = pending;
                    }
                }
            }
        }
    });
    view
}

/// Keeps the latest frame of each fragment, for connections that arrive later.
#[derive(Default)]
struct Renderer {
    table: Option<Bytes>,
    counts: Option<Bytes>,
    /// The counts last sent: a change that leaves them as they were sends no `counts`.
    last_counts: Option<AgentCounts>,
    queued: Option<Bytes>,
}

impl Renderer {
    async fn render(
        &mut self,
        agents: &Agents,
        view: &AgentsView,
        dirty: &Dirty,
    ) -> crate::error::Result<()> {
        let live = &view.live;
        let mut changes = Vec::new();
        if dirty.table || !dirty.rows.is_empty() || self.table.is_none() {
            // One query per render, however many rows changed or viewers watch.
            let list = agents.list().await?;
            let table = frame("agents", &live.next_id(), &fragment(fragments::rows(&list)));
            let vanished = dirty
                .rows
                .iter()
                .any(|uuid| !list.iter().any(|a| a.uuid == *uuid));
            if dirty.table || vanished {
                changes.push(table.clone());
            } else {
                for agent in list.iter().filter(|a| dirty.rows.contains(&a.uuid)) {
                    let name = format!("agent-{}", agent.uuid);
                    changes.push(frame(
                        &name,
                        &live.next_id(),
                        &fragment(fragments::row(agent)),
                    ));
                }
            }
            self.table = Some(table);
            let counts = AgentCounts::of(&list);
            if self.last_counts != Some(counts) {
                let frame = frame(
                    "counts",
                    &live.next_id(),
                    &fragment(fragments::counts(&counts)),
                );
                changes.push(frame.clone());
                self.counts = Some(frame);
                self.last_counts = Some(counts);
            }
        }
        if dirty.queued || self.queued.is_none() {
            let queued = frame("queued", &live.next_id(), &view.queued().to_string());
            changes.push(queued.clone());
            self.queued = Some(queued);
        }
        let state = [&self.table, &self.counts, &self.queued]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        live.set_state(state);
        for change in changes {
            live.send(change);
        }
        Ok(())
    }
}
