//! Pipeline timers (`timer.spec`, the materials issue): one task sleeps until the earliest
//! next fire time of every configured timer, and wakes early when the config changes. A
//! firing first polls the pipeline's git materials (as GoCD's timer does, so it builds what
//! is there now) and then triggers it, as `timer`; with `only_on_changes: true` it skips
//! the firing when no git material has a revision the pipeline's latest instance did not run
//! (a pipeline that never ran counts as changed). A paused or locked pipeline is not
//! triggered, as GoCD. A firing missed while the server was down is not made up, as
//! Quartz's default for GoCD's timers.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Materials, store};
use crate::db::{Duty, now_millis};
use crate::domain::material::Fingerprint;
use crate::domain::pipeline_config::MaterialSource;
use crate::domain::timer::TimerSpec;
use crate::error::{Error, Result};

/// Who triggers an instance on a timer (its `triggered_by`, GoCD's build cause "Timer").
pub const TIMER: &str = "timer";

/// The longest the loop sleeps without looking again (a spec whose next firing is years
/// away, or none).
const LONGEST_SLEEP: Duration = Duration::from_secs(3600);

/// Runs the timers until `shutdown`; they fire on the node on duty only (a firing missed
/// while no node was on duty is not made up).
pub fn spawn_timers(materials: Materials, duty: Duty, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut changes = materials.pipelines.configs().changes();
        let mut checked = now_millis();
        loop {
            let now = now_millis();
            let timers = configured_timers(&materials);
            for (pipeline, spec, only_on_changes) in &timers {
                if duty.is_mine()
                    && spec.next_after(checked).is_some_and(|at| at <= now)
                    && let Err(error) = materials.fire_timer(pipeline, *only_on_changes).await
                {
                    tracing::warn!(%pipeline, %error, "timer firing failed");
                }
            }
            checked = now;
            let next = timers
                .iter()
                .filter_map(|(_, spec, _)| spec.next_after(now))
                .min();
            let wait = next
                .map(|at| Duration::from_millis((at - now_millis()).max(0) as u64))
                .unwrap_or(LONGEST_SLEEP)
                .min(LONGEST_SLEEP);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
}

/// Every configured pipeline with a timer: its name, spec and `only_on_changes`.
fn configured_timers(materials: &Materials) -> Vec<(String, TimerSpec, bool)> {
    let snapshot = materials.pipelines.configs().snapshot();
    snapshot
        .pipelines()
        .filter_map(|p| {
            let timer = p.timer.as_ref()?;
            // Refused when the config was read; a spec that fails here never fires.
            let spec = TimerSpec::parse(&timer.spec).ok()?;
            Some((p.name.clone(), spec, timer.only_on_changes))
        })
        .collect()
}

impl Materials {
    /// One firing of `pipeline`'s timer. Answers the counter it triggered, if it did.
    pub async fn fire_timer(&self, pipeline: &str, only_on_changes: bool) -> Result<Option<i64>> {
        self.poll_pipeline(pipeline).await?;
        if only_on_changes && !self.has_new_revisions(pipeline).await? {
            tracing::info!(%pipeline, "timer fired, no material changed: not triggered");
            self.publish_pipeline(pipeline).await?; // its card's next fire time moved on
            return Ok(None);
        }
        match self
            .pipelines
            .trigger(pipeline, TIMER, BTreeMap::new())
            .await
        {
            Ok(counter) => {
                tracing::info!(%pipeline, counter, "triggered by its timer");
                Ok(Some(counter))
            }
            Err(Error::Conflict(why)) => {
                tracing::info!(%pipeline, "timer fired, not triggered: {why}");
                self.publish_pipeline(pipeline).await?;
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    /// Whether one of `pipeline`'s git materials has a newest revision its latest instance
    /// did not run (or it never ran).
    async fn has_new_revisions(&self, pipeline: &str) -> Result<bool> {
        let snapshot = self.pipelines.configs().snapshot();
        let Some(config) = snapshot.pipeline(pipeline) else {
            return Ok(false);
        };
        let (latest, _) = self.pipelines.history(&config.name, 0, 1).await?;
        let Some(latest) = latest.first() else {
            return Ok(true);
        };
        let mut read = self.db.reader().await?;
        for material in &config.materials {
            let MaterialSource::Git(git) = &material.source else {
                continue;
            };
            let fingerprint = Fingerprint::of_git(&git.url, &git.branch);
            let newest = store::last_revision(read.conn(), fingerprint.as_str()).await?;
            let ran = latest
                .instance
                .material_revisions
                .iter()
                .find(|r| r.fingerprint == fingerprint)
                .map(|r| r.revision.as_str());
            if newest.is_some() && newest.as_deref() != ran {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn publish_pipeline(&self, pipeline: &str) -> Result<()> {
        let mut tx = self.db.begin().await?;
        super::publish_card(&mut tx, pipeline);
        tx.commit().await
    }
}
