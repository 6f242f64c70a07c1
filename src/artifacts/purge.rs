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
        let every_pipeline = || -> Vec<String> {
            let snapshot = pipelines.configs().snapshot();
            snapshot.pipelines().map(|p| p.name.clone()).collect()
        };
        // Every pipeline once at start: a lower N, or changes while the server was down.
        let mut due: BTreeSet<String> = every_pipeline().into_iter().collect();
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
            match event {
                // Missed some (here, or this node did not hear the others): every pipeline
                // may have changed.
                Err(RecvError::Lagged(_)) => due.extend(every_pipeline()),
                Ok(event) if *event == DomainEvent::Resync => due.extend(every_pipeline()),
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
