//! The materials context (the materials issue): git materials polled by the server. Every
//! git material of the config is grouped by its fingerprint (repository and branch), so
//! pipelines sharing one share its poll; a poll (`git.rs`) fetches into a mirror under the
//! data dir and reads the commits since the last revision; its outcome is stored (`GET
//! /api/materials`), and a new revision triggers each pipeline using the material whose
//! filter lets the changed files through and that is not paused. Polls run a few at a time,
//! each within a timeout; a failing one is stored and retried next round, never blocking
//! the others.

mod config_repos;
pub mod git;
mod postgres;
mod sqlite;
pub(crate) mod store;
pub mod timers;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use self::git::{Polled, Remote};
use self::store::MaterialRow;
use crate::config_sources::Snapshot;
use crate::db::{Db, WriteTx, now_millis};
use crate::domain::material::{
    FileFilter, Fingerprint, MaterialRevision, normalized_url, without_credentials,
};
use crate::domain::pipeline_config::{MaterialSource, PipelineConfig};
use crate::error::{Error, Result};
use crate::events::{DomainEvent, Topic};
use crate::pipelines::{CHANGES, Pipelines};

/// How many repositories are polled at once.
const PARALLEL_POLLS: usize = 4;
/// How long one poll may take before its git is killed.
const POLL_TIMEOUT: Duration = Duration::from_secs(300);

/// How many times one poll starts over after losing the race to store its revision.
const POLL_ATTEMPTS: usize = 3;

/// One polled repository and branch, and the pipelines that use it.
#[derive(Debug, Clone)]
pub struct Polling {
    pub fingerprint: Fingerprint,
    pub remote: Remote,
    /// Polled unless every material on it says `auto_update: false`.
    pub auto_update: bool,
    pub users: Vec<User>,
}

/// A pipeline's material on a polled repository.
#[derive(Debug, Clone)]
pub struct User {
    pub pipeline: String,
    pub material: String,
    pub filter: FileFilter,
}

/// A pipeline's git material and the commits a trigger may pick from.
#[derive(Debug, Clone)]
pub struct MaterialChoice {
    pub name: String,
    pub fingerprint: Fingerprint,
    pub url: String,
    pub branch: String,
    pub commits: Vec<crate::domain::material::Modification>,
}

/// A polled material as `GET /api/materials` shows it.
#[derive(Debug, Clone)]
pub struct MaterialView {
    pub fingerprint: String,
    pub url: String,
    pub branch: String,
    pub pipelines: Vec<String>,
    pub last_revision: Option<String>,
    pub last_polled_at: Option<i64>,
    pub error: Option<String>,
}

/// The git materials of `snapshot`, one per fingerprint, in fingerprint order.
pub fn pollings(snapshot: &Snapshot) -> Vec<Polling> {
    let mut by_fingerprint: BTreeMap<Fingerprint, Polling> = BTreeMap::new();
    for pipeline in snapshot.pipelines() {
        for material in &pipeline.materials {
            let MaterialSource::Git(git) = &material.source else {
                continue;
            };
            let Ok(filter) = FileFilter::new(&git.ignore, &git.includes) else {
                continue; // refused when the config was read
            };
            let fingerprint = Fingerprint::of_git(&git.url, &git.branch);
            let polling = by_fingerprint
                .entry(fingerprint.clone())
                .or_insert_with(|| Polling {
                    fingerprint,
                    remote: Remote::new(
                        &git.url,
                        &git.branch,
                        git.username.clone(),
                        git.password.clone(),
                    ),
                    auto_update: false,
                    users: Vec::new(),
                });
            polling.auto_update |= git.auto_update;
            polling.users.push(User {
                pipeline: pipeline.name.clone(),
                material: material.name.clone(),
                filter,
            });
        }
    }
    by_fingerprint.into_values().collect()
}

/// Whether `pipeline` depends on an upstream that builds the repository `fingerprint` too:
/// a commit there reaches it through that upstream once it passes (fan-in), not directly.
fn reached_through_upstream(
    snapshot: &Snapshot,
    pipeline: &str,
    fingerprint: &Fingerprint,
) -> bool {
    let Some(config) = snapshot.pipeline(pipeline) else {
        return false;
    };
    config
        .dependencies()
        .filter(|(_, _, _, ignored)| !ignored)
        .filter_map(|(_, upstream, _, _)| snapshot.pipeline(upstream))
        .any(|upstream| {
            upstream.materials.iter().any(|m| {
                matches!(&m.source, MaterialSource::Git(git)
                    if Fingerprint::of_git(&git.url, &git.branch) == *fingerprint)
            })
        })
}

/// `pipeline_updated` for each pipeline on `polling`: what their cards say of it changed.
fn publish_users(tx: &mut WriteTx, polling: &Polling) {
    for user in &polling.users {
        publish_card(tx, &user.pipeline);
    }
}

/// `pipeline_updated` for `pipeline`, whose card shows something of its materials or timer.
fn publish_card(tx: &mut WriteTx, pipeline: &str) {
    tx.publish(
        Topic::PipelinesUpdates,
        DomainEvent::PipelineUpdated {
            pipeline: pipeline.to_string(),
            counter: None,
            stages: Vec::new(),
        },
    );
}

/// The poll errors of `config`'s git materials, by material name (read in a pipeline view).
pub(crate) async fn errors_of(
    conn: crate::db::Conn<'_>,
    configs: &[&PipelineConfig],
) -> Result<HashMap<String, Vec<(String, String)>>> {
    let errors: HashMap<String, String> = store::errors(conn).await?.into_iter().collect();
    let mut by_pipeline = HashMap::new();
    if errors.is_empty() {
        return Ok(by_pipeline);
    }
    for config in configs {
        let found: Vec<(String, String)> = config
            .materials
            .iter()
            .filter_map(|m| match &m.source {
                MaterialSource::Git(git) => errors
                    .get(Fingerprint::of_git(&git.url, &git.branch).as_str())
                    .map(|e| (m.name.clone(), e.clone())),
                _ => None,
            })
            .collect();
        if !found.is_empty() {
            by_pipeline.insert(config.name.to_ascii_lowercase(), found);
        }
    }
    Ok(by_pipeline)
}

/// The revisions a new instance of `config` runs (called inside the write that creates it):
/// per git material, the newest revision polled (a material never polled yet is left out),
/// against `previous`, the revisions of the pipeline's latest instance.
pub(crate) async fn revisions_in(
    tx: &mut WriteTx,
    config: &PipelineConfig,
    previous: &[MaterialRevision],
    picked: &BTreeMap<String, String>,
) -> Result<Vec<MaterialRevision>> {
    let mut revisions = Vec::new();
    let mut unused: Vec<&String> = picked.keys().collect();
    for material in &config.materials {
        let MaterialSource::Git(git) = &material.source else {
            continue;
        };
        let fingerprint = Fingerprint::of_git(&git.url, &git.branch);
        let newest = store::last_revision(tx.conn(), fingerprint.as_str()).await?;
        let revision = match picked.get(fingerprint.as_str()) {
            Some(chosen) => {
                unused.retain(|f| f.as_str() != fingerprint.as_str());
                let known = newest.as_deref() == Some(chosen.as_str())
                    || store::commit_of(tx.conn(), fingerprint.as_str(), chosen)
                        .await?
                        .is_some();
                if !known {
                    return Err(Error::Unprocessable(format!(
                        "materials: {chosen} is not a revision the server has polled of material {} ({fingerprint})",
                        material.name
                    )));
                }
                Some(chosen.clone())
            }
            None => newest,
        };
        let Some(revision) = revision else {
            continue;
        };
        let before = previous
            .iter()
            .find(|r| {
                r.material.eq_ignore_ascii_case(&material.name) && r.fingerprint == fingerprint
            })
            .map(|r| r.revision.clone());
        let from_revision = match &before {
            Some(before) if *before != revision => {
                store::first_after(tx.conn(), fingerprint.as_str(), before)
                    .await?
                    .unwrap_or_else(|| revision.clone())
            }
            _ => revision.clone(),
        };
        let (author, message) = store::commit_of(tx.conn(), fingerprint.as_str(), &revision)
            .await?
            .unwrap_or_default();
        revisions.push(MaterialRevision {
            author,
            summary: message.lines().next().unwrap_or_default().to_string(),
            material: material.name.clone(),
            fingerprint,
            url: without_credentials(&git.url),
            branch: git.branch.clone(),
            destination: git.destination.clone(),
            shallow: git.shallow_clone,
            changed: before.as_deref() != Some(revision.as_str()),
            revision,
            from_revision,
        });
    }
    if let Some(fingerprint) = unused.first() {
        return Err(Error::Unprocessable(format!(
            "materials: pipeline {} has no git material with fingerprint {fingerprint}",
            config.name
        )));
    }
    Ok(revisions)
}

#[derive(Clone)]
pub struct Materials {
    db: Db,
    pipelines: Pipelines,
    mirrors: PathBuf,
    config_mirrors: PathBuf,
    /// One poll of a fingerprint at a time (a webhook's and the round's), so a new revision
    /// triggers once.
    polling: Arc<std::sync::Mutex<HashMap<Fingerprint, Arc<tokio::sync::Mutex<()>>>>>,
    polls: Arc<PollCounts>,
}

/// Polls of git materials since start, by outcome (`/metrics`).
#[derive(Default)]
struct PollCounts {
    stored: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    superseded: std::sync::atomic::AtomicU64,
    gave_up: std::sync::atomic::AtomicU64,
}

impl Materials {
    /// Mirrors go under `data_dir/materials`.
    pub fn new(db: Db, pipelines: Pipelines, data_dir: &std::path::Path) -> Materials {
        Materials {
            db,
            pipelines,
            mirrors: data_dir.join("materials"),
            config_mirrors: data_dir.join("config-repos"),
            polling: Arc::default(),
            polls: Arc::default(),
        }
    }

    /// Polls of git materials since start, by outcome: `stored` (a revision, new or not, was
    /// recorded), `failed` (the fetch failed; its error was recorded) and `superseded` (another
    /// poll recorded a revision while this one fetched, so this one polled again), and
    /// `gave_up` (superseded [`POLL_ATTEMPTS`] times in a row, it left the rest to the next).
    pub fn poll_counts(&self) -> [(&'static str, u64); 4] {
        let read =
            |count: &std::sync::atomic::AtomicU64| count.load(std::sync::atomic::Ordering::Relaxed);
        [
            ("stored", read(&self.polls.stored)),
            ("failed", read(&self.polls.failed)),
            ("superseded", read(&self.polls.superseded)),
            ("gave_up", read(&self.polls.gave_up)),
        ]
    }

    /// The lock one poll of `fingerprint` holds.
    fn poll_lock(&self, fingerprint: &Fingerprint) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(
            self.polling
                .lock()
                .expect("polling lock poisoned")
                .entry(fingerprint.clone())
                .or_default(),
        )
    }

    /// Polls now, in the background, every material on the repository `url` (any spelling)
    /// and on `branch` (any, if `None`), auto-updating or not (a webhook or notify is how an
    /// `auto_update: false` material learns of changes), and the config repositories there.
    /// Answers how many it polls.
    pub fn notify(&self, url: &str, branch: Option<&str>) -> usize {
        let wanted = normalized_url(url);
        let snapshot = self.pipelines.configs().snapshot();
        let due: Vec<Polling> = pollings(&snapshot)
            .into_iter()
            .filter(|p| normalized_url(&p.remote.url) == wanted)
            .filter(|p| branch.is_none_or(|b| b == p.remote.branch))
            .collect();
        let count = due.len() + self.notify_config_repos(url, branch);
        for polling in due {
            let materials = self.clone();
            tokio::spawn(async move {
                if let Err(error) = materials.poll_one(&polling, None).await {
                    tracing::warn!(%error, "a notified material poll could not be stored");
                }
            });
        }
        count
    }

    /// Polls the git materials of `pipeline` now and waits for them (GoCD's
    /// `update_materials_before_scheduling`); a failing poll leaves its last good revision.
    pub async fn poll_pipeline(&self, pipeline: &str) -> Result<()> {
        let snapshot = self.pipelines.configs().snapshot();
        let due: Vec<Polling> = pollings(&snapshot)
            .into_iter()
            .filter(|p| {
                p.users
                    .iter()
                    .any(|u| u.pipeline.eq_ignore_ascii_case(pipeline))
            })
            .collect();
        for polling in &due {
            self.poll_one(polling, Some(pipeline)).await?;
        }
        Ok(())
    }

    /// GoCD's "trigger with options": `pipeline` with `variables` and some git materials at
    /// `picked` revisions (fingerprint → revision), after polling its materials first if
    /// `update_first`. Answers the new counter.
    pub async fn trigger_with_options(
        &self,
        pipeline: &str,
        actor: &str,
        variables: BTreeMap<String, String>,
        picked: &BTreeMap<String, String>,
        update_first: bool,
    ) -> Result<i64> {
        let canonical = self
            .pipelines
            .configs()
            .snapshot()
            .pipeline(pipeline)
            .map_or_else(|| pipeline.to_string(), |p| p.name.clone());
        if update_first {
            self.poll_pipeline(&canonical).await?;
        }
        self.pipelines
            .trigger_at(&canonical, actor, variables, picked)
            .await
    }

    /// Polls every auto-updating material once, a few at a time, and triggers what changed.
    pub async fn poll_all(&self) -> Result<()> {
        let snapshot = self.pipelines.configs().snapshot();
        let due: Vec<Polling> = pollings(&snapshot)
            .into_iter()
            .filter(|p| p.auto_update)
            .collect();
        let outcomes: Vec<Result<()>> = futures::stream::iter(due)
            .map(|polling| async move { self.poll_one(&polling, None).await })
            .buffer_unordered(PARALLEL_POLLS)
            .collect()
            .await;
        for outcome in outcomes {
            if let Err(error) = outcome {
                tracing::warn!(%error, "a material poll could not be stored");
            }
        }
        Ok(())
    }

    /// Polls one repository and triggers what its new revision should, except `except` (a
    /// pipeline about to be triggered by hand anyway).
    ///
    /// Several polls of one repository can overlap: a webhook's on one node while the node on
    /// duty polls, or two nodes across a duty handover. Each stores its revision only if the
    /// stored one is still the one it started from, and only the poll that stored a new one
    /// triggers, so one commit triggers once. A poll that lost the race polls again from the
    /// revision the winner stored, since its own head may be newer than the winner's.
    async fn poll_one(&self, polling: &Polling, except: Option<&str>) -> Result<()> {
        let lock = self.poll_lock(&polling.fingerprint);
        let _one_at_a_time = lock.lock().await;
        for _ in 0..POLL_ATTEMPTS {
            if self.poll_once(polling, except).await? {
                return Ok(());
            }
            self.polls
                .superseded
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.polls
            .gave_up
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(url = %without_credentials(&polling.remote.url), "other polls kept storing revisions first: the next poll tries again");
        Ok(())
    }

    /// One attempt of [`Self::poll_one`]: answers `false` if another poll stored a revision
    /// while this one fetched, and nothing was stored or triggered.
    async fn poll_once(&self, polling: &Polling, except: Option<&str>) -> Result<bool> {
        let fingerprint = polling.fingerprint.as_str();
        let (known, known_error) = {
            let mut read = self.db.reader().await?;
            let row = store::one(read.conn(), fingerprint).await?;
            (
                row.as_ref().and_then(|r| r.last_revision.clone()),
                row.and_then(|r| r.error),
            )
        };
        let mirror = git::mirror_dir(&self.mirrors, fingerprint);
        let outcome = git::poll(&polling.remote, &mirror, known.as_deref(), POLL_TIMEOUT).await;
        let mut row = MaterialRow {
            fingerprint: fingerprint.to_string(),
            url: without_credentials(&polling.remote.url),
            branch: polling.remote.branch.clone(),
            last_revision: known.clone(),
            last_polled_at: Some(now_millis()),
            error: None,
        };
        let polled = match outcome {
            Ok(polled) => polled,
            Err(error) => {
                tracing::info!(url = %row.url, branch = %row.branch, "material poll failed: {error}");
                let changed = known_error.as_deref() != Some(error.as_str());
                row.error = Some(error);
                let mut tx = self.db.begin().await?;
                store::record_error(tx.conn(), &row).await?;
                if changed {
                    publish_users(&mut tx, polling);
                }
                tx.commit().await?;
                self.polls
                    .failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(true);
            }
        };
        row.last_revision = Some(polled.revision.clone());
        let mut tx = self.db.begin().await?;
        if !store::record_revision(tx.conn(), &row, known.as_deref(), &polled.modifications).await?
        {
            return Ok(false); // dropping the transaction rolls it back
        }
        if known_error.is_some() {
            publish_users(&mut tx, polling); // the error beside them goes
        }
        tx.commit().await?;
        let triggered = if known.as_deref() != Some(polled.revision.as_str()) {
            self.trigger_users(polling, known.is_none(), &polled, except)
                .await
        } else {
            Ok(())
        };
        // Counted once what it triggers is triggered, so a count means the poll is over.
        self.polls
            .stored
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        triggered.map(|()| true)
    }

    /// A new revision triggers each pipeline using it whose filter lets one of the changed
    /// files through; a first poll (nothing known yet) triggers those that never ran.
    async fn trigger_users(
        &self,
        polling: &Polling,
        first: bool,
        polled: &Polled,
        except: Option<&str>,
    ) -> Result<()> {
        let files: Vec<String> = polled
            .modifications
            .iter()
            .flat_map(|m| m.files.iter().cloned())
            .collect();
        let snapshot = self.pipelines.configs().snapshot();
        for user in &polling.users {
            if except.is_some_and(|e| e.eq_ignore_ascii_case(&user.pipeline)) {
                continue;
            }
            if reached_through_upstream(&snapshot, &user.pipeline, &polling.fingerprint) {
                tracing::info!(pipeline = %user.pipeline, "the commit reaches it through an upstream: not triggered directly");
                continue;
            }
            if first {
                let (_, total) = self.pipelines.history(&user.pipeline, 0, 1).await?;
                if total > 0 {
                    continue;
                }
            } else if !user.filter.triggers(&files) {
                tracing::info!(pipeline = %user.pipeline, "changes only to filtered files: not triggered");
                continue;
            }
            match self
                .pipelines
                .trigger(&user.pipeline, CHANGES, BTreeMap::new())
                .await
            {
                Ok(counter) => {
                    tracing::info!(pipeline = %user.pipeline, counter, revision = %polled.revision, "triggered by a new revision")
                }
                // Paused or locked: not triggered, as GoCD; the next new revision tries again.
                Err(Error::Conflict(why)) => {
                    tracing::info!(pipeline = %user.pipeline, "not triggered: {why}")
                }
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }

    /// Per material revision of an instance, its modifications: the commits from the oldest
    /// new one to the one it runs, newest first (at most 100).
    pub async fn modifications(
        &self,
        revisions: &[MaterialRevision],
    ) -> Result<Vec<Vec<crate::domain::material::Modification>>> {
        let mut read = self.db.reader().await?;
        let mut all = Vec::with_capacity(revisions.len());
        for r in revisions {
            all.push(
                store::between(
                    read.conn(),
                    r.fingerprint.as_str(),
                    &r.from_revision,
                    &r.revision,
                )
                .await?,
            );
        }
        Ok(all)
    }

    /// `pipeline`'s git materials with their newest polled commits (at most `limit` each,
    /// newest first): what "trigger with options" offers to pick from.
    pub async fn choices(&self, pipeline: &str, limit: i64) -> Result<Vec<MaterialChoice>> {
        let snapshot = self.pipelines.configs().snapshot();
        let Some(config) = snapshot.pipeline(pipeline) else {
            return Err(Error::NotFound(format!("no pipeline named {pipeline}")));
        };
        let mut read = self.db.reader().await?;
        let mut choices = Vec::new();
        for material in &config.materials {
            let MaterialSource::Git(git) = &material.source else {
                continue;
            };
            let fingerprint = Fingerprint::of_git(&git.url, &git.branch);
            choices.push(MaterialChoice {
                name: material.name.clone(),
                url: without_credentials(&git.url),
                branch: git.branch.clone(),
                commits: store::recent(read.conn(), fingerprint.as_str(), limit).await?,
                fingerprint,
            });
        }
        Ok(choices)
    }

    /// Every git material of the config with its last poll, in URL order.
    pub async fn list(&self) -> Result<Vec<MaterialView>> {
        let snapshot = self.pipelines.configs().snapshot();
        let mut read = self.db.reader().await?;
        let rows: BTreeMap<String, MaterialRow> = store::all(read.conn())
            .await?
            .into_iter()
            .map(|r| (r.fingerprint.clone(), r))
            .collect();
        let mut views: Vec<MaterialView> = pollings(&snapshot)
            .into_iter()
            .map(|polling| {
                let row = rows.get(polling.fingerprint.as_str());
                MaterialView {
                    fingerprint: polling.fingerprint.to_string(),
                    url: without_credentials(&polling.remote.url),
                    branch: polling.remote.branch.clone(),
                    pipelines: polling.users.iter().map(|u| u.pipeline.clone()).collect(),
                    last_revision: row.and_then(|r| r.last_revision.clone()),
                    last_polled_at: row.and_then(|r| r.last_polled_at),
                    error: row.and_then(|r| r.error.clone()),
                }
            })
            .collect();
        views.sort_by(|a, b| (&a.url, &a.branch).cmp(&(&b.url, &b.branch)));
        Ok(views)
    }
}
