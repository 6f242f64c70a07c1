//! `--artifacts-keep N`: whenever a pipeline changes (an instance made, a stage ended), its
//! artifacts beyond what N spares are deleted, oldest first. Changes that come while a purge
//! runs are gathered and purged together after it.

use std::collections::BTreeSet;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::Artifacts;
use crate::db::Duty;
use crate::events::{DomainEvent, Hub, Topic};
use crate::pipelines::Pipelines;

pub fn spawn_purge(
    artifacts: Artifacts,
    pipelines: Pipelines,
    keep: u32,
    hub: &Hub,
    duty: Duty,
    shutdown: CancellationToken,
) {
    let mut changes = hub.subscribe(&Topic::PipelinesUpdates);
    tokio::spawn(async move {
        // Every pipeline once at start: a lower N, or changes while the server was down.
        let mut due: BTreeSet<String> = pipelines
            .configs()
            .snapshot()
            .pipelines()
            .map(|p| p.name.clone())
            .collect();
        loop {
            // Off duty, another node purges (this one keeps nothing to do later).
            if !duty.is_mine() {
                due.clear();
            }
            for pipeline in std::mem::take(&mut due) {
                if let Err(error) = artifacts.purge(&pipelines, &pipeline, keep).await {
                    tracing::warn!(%error, pipeline, "purging artifacts failed; tried again on its next change");
                }
            }
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = changes.recv() => event,
            };
            // Missed some (here, or this node did not hear the others): every pipeline may
            // have changed.
            let missed = match &event {
                Err(RecvError::Lagged(_)) => true,
                Ok(event) => **event == DomainEvent::Resync,
                Err(RecvError::Closed) => false,
            };
            if missed {
                due.extend(
                    pipelines
                        .configs()
                        .snapshot()
                        .pipelines()
                        .map(|p| p.name.clone()),
                );
                continue;
            }
            match event {
                Err(RecvError::Lagged(_)) => {}
                Ok(event) => {
                    if let DomainEvent::PipelineUpdated { pipeline, .. } = &*event {
                        due.insert(pipeline.clone());
                    }
                }
                Err(RecvError::Closed) => return,
            }
            // Gather what else came meanwhile.
            while let Ok(event) = changes.try_recv() {
                if let DomainEvent::PipelineUpdated { pipeline, .. } = &*event {
                    due.insert(pipeline.clone());
                }
            }
        }
    });
}
