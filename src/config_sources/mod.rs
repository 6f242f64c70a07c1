//! The config sources context: the GoCD YAML documents pipelines come from (files named with
//! `--config`, and documents stored through the API, whole, as rows of `config_documents`),
//! read and checked together, and the snapshot of them in effect.
//!
//! A config repository (`--config-repo URL[#branch]`, GoCD's config repos) is one source:
//! every `*.gocd.yaml|yml` file of one of its revisions, read together, so the repository is
//! in effect at one revision or kept at its last good one. The materials context polls it
//! and hands its files here (`set_repo_files`); this context knows no git.
//!
//! The texts are the one truth: the database holds the API documents' texts, never a parsed
//! config. A source that fails to parse or validate keeps its last good document, and its
//! errors are shown beside it: a broken commit to the config never takes running pipelines
//! away. Readers take the snapshot (an `Arc`, swapped whole on reload); reloads run one at a
//! time and publish `ConfigReloaded` once the new snapshot is in place. Storing or deleting an
//! API document publishes `ConfigChanged` in its write, and every node (this one too) reads
//! its sources again on hearing it (`spawn_reload_on_change`), so nodes sharing a PostgreSQL
//! database show the same pipelines.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::db::{Db, now_millis};
use crate::domain::pipeline_config::{
    ConfigDocument, ConfigIssue, EnvironmentConfig, GitMaterial, MaterialSource, PipelineConfig,
    SourcedIssue,
};
use crate::error::{Error, Result};
use crate::events::{DomainEvent, Topic};
use crate::gocd_yaml;
use tokio_util::sync::CancellationToken;

mod postgres;
mod sqlite;
mod store;

/// Where a source's text lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceKind {
    /// A file named with `--config`, or found in a directory named with it.
    File { path: PathBuf },
    /// A document stored through `PUT /api/config/{name}`.
    Api { name: String },
    /// A config repository's `*.gocd.yaml|yml` files, at one revision.
    Repo { url: String, branch: String },
}

/// A config repository named with `--config-repo URL[#branch]` (branch `master` when
/// absent, as a git material's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigRepo {
    pub url: String,
    pub branch: String,
}

impl std::str::FromStr for ConfigRepo {
    type Err = String;
    fn from_str(spec: &str) -> std::result::Result<ConfigRepo, String> {
        let (url, branch) = match spec.rsplit_once('#') {
            Some((url, branch)) => (url.trim(), branch.trim()),
            None => (spec.trim(), "master"),
        };
        if url.is_empty() || branch.is_empty() {
            return Err(format!(
                "config repo {spec:?}: give a git URL, optionally #branch"
            ));
        }
        Ok(ConfigRepo {
            url: url.to_string(),
            branch: branch.to_string(),
        })
    }
}

/// What the materials context last read of a config repository.
#[derive(Debug, Clone)]
pub enum RepoFiles {
    /// Its config files at `revision` (path, text), read at `read_at`.
    Read {
        revision: String,
        files: Vec<(String, String)>,
        read_at: i64,
    },
    /// Its last poll failed: the files in effect stay, with this error beside them.
    Failed { error: String, read_at: i64 },
}

/// A config repository's state, beside its source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoState {
    /// The revision whose files are in effect.
    pub revision: Option<String>,
    /// When its newest revision was last read.
    pub last_parsed_at: Option<i64>,
    /// The newest revision, when it is refused (its errors are the source's).
    pub broken_revision: Option<String>,
    /// Why its last poll failed (also among the source's errors).
    pub poll_error: Option<String>,
}

impl RepoState {
    /// The newest revision read, refused or not.
    pub fn last_read(&self) -> Option<&str> {
        self.broken_revision.as_deref().or(self.revision.as_deref())
    }
}

/// One source and what became of it at the last reload.
#[derive(Debug, Clone)]
pub struct Source {
    pub kind: SourceKind,
    /// The document in effect: the latest good one (`None`: it never read well).
    pub document: Option<Arc<ConfigDocument>>,
    /// Why its latest text is not in effect, or what is wrong with what is.
    pub errors: Vec<ConfigIssue>,
    /// A config repository's revisions (`None` for the other kinds).
    pub repo: Option<RepoState>,
}

impl Source {
    /// How errors and pages name it: the file's path, or `api:NAME`.
    pub fn name(&self) -> String {
        match &self.kind {
            SourceKind::File { path } => path.display().to_string(),
            SourceKind::Api { name } => format!("api:{name}"),
            SourceKind::Repo { url, branch } => format!(
                "repo:{}#{branch}",
                crate::domain::material::without_credentials(url)
            ),
        }
    }

    pub fn pipelines(&self) -> &[PipelineConfig] {
        self.document.as_deref().map_or(&[], |d| &d.pipelines)
    }

    pub fn warnings(&self) -> &[ConfigIssue] {
        self.document.as_deref().map_or(&[], |d| &d.warnings)
    }
}

/// The sources as the last reload left them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub sources: Vec<Source>,
    /// Lowercased pipeline name → (source index, pipeline index).
    by_name: HashMap<String, (usize, usize)>,
}

impl Snapshot {
    fn new(sources: Vec<Source>) -> Snapshot {
        let mut by_name = HashMap::new();
        for (s, source) in sources.iter().enumerate() {
            for (p, pipeline) in source.pipelines().iter().enumerate() {
                // The first source to define a name keeps it (the later one is in error).
                by_name
                    .entry(pipeline.name.to_ascii_lowercase())
                    .or_insert((s, p));
            }
        }
        Snapshot { sources, by_name }
    }

    /// What the last reload made of config repository `repo`.
    pub fn repo_state(&self, repo: &ConfigRepo) -> Option<&RepoState> {
        self.sources
            .iter()
            .find(|s| matches!(&s.kind, SourceKind::Repo { url, branch } if *url == repo.url && *branch == repo.branch))?
            .repo
            .as_ref()
    }

    pub fn pipeline(&self, name: &str) -> Option<&PipelineConfig> {
        let (s, p) = self.by_name.get(&name.to_ascii_lowercase())?;
        self.sources[*s].pipelines().get(*p)
    }

    /// Every pipeline in effect, in source order.
    pub fn pipelines(&self) -> impl Iterator<Item = &PipelineConfig> {
        let mut seen: Vec<(usize, usize)> = self.by_name.values().copied().collect();
        seen.sort_unstable();
        seen.into_iter()
            .filter_map(|(s, p)| self.sources[s].pipelines().get(p))
    }

    /// The environment a pipeline belongs to (the first that lists it).
    pub fn environment_of(&self, pipeline: &str) -> Option<&EnvironmentConfig> {
        self.sources
            .iter()
            .filter_map(|s| s.document.as_deref())
            .flat_map(|d| &d.environments)
            .find(|e| e.pipelines.iter().any(|p| p.eq_ignore_ascii_case(pipeline)))
    }

    /// The pipelines a pass of `pipeline`'s `stage` triggers (dependency materials on it
    /// that are not `ignore_for_scheduling`).
    pub fn triggered_by_stage(&self, pipeline: &str, stage: &str) -> Vec<&PipelineConfig> {
        self.pipelines()
            .filter(|p| {
                p.dependencies().any(|(_, up, up_stage, ignored)| {
                    !ignored
                        && up.eq_ignore_ascii_case(pipeline)
                        && up_stage.eq_ignore_ascii_case(stage)
                })
            })
            .collect()
    }

    /// Every error, with the source it belongs to.
    pub fn errors(&self) -> impl Iterator<Item = (&Source, &ConfigIssue)> {
        self.sources
            .iter()
            .flat_map(|s| s.errors.iter().map(move |e| (s, e)))
    }
}

#[derive(Clone)]
pub struct ConfigSources {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    /// `--config` paths: files, or directories searched for `**/*.gocd.yaml|yml`.
    paths: Vec<PathBuf>,
    /// `--config-repo`s, in the order named, and what was last read of each.
    repos: Vec<ConfigRepo>,
    repo_files: std::sync::Mutex<HashMap<ConfigRepo, RepoFiles>>,
    /// Where API documents were kept as files, before they were rows: moved in at start.
    old_api_dir: PathBuf,
    current: RwLock<Arc<Snapshot>>,
    /// One reload (or store, or delete) at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Told of every new snapshot (the timers wait on it).
    changed: tokio::sync::watch::Sender<()>,
}

/// What a stored document was checked to be.
pub struct Stored {
    pub created: bool,
    pub warnings: Vec<ConfigIssue>,
}

impl ConfigSources {
    pub fn new(
        db: Db,
        paths: Vec<PathBuf>,
        repos: Vec<ConfigRepo>,
        data_dir: &Path,
    ) -> ConfigSources {
        ConfigSources {
            inner: Arc::new(Inner {
                db,
                paths,
                repos,
                repo_files: std::sync::Mutex::default(),
                old_api_dir: data_dir.join("config"),
                current: RwLock::new(Arc::new(Snapshot::default())),
                reloading: tokio::sync::Mutex::new(()),
                changed: tokio::sync::watch::Sender::new(()),
            }),
        }
    }

    /// The sources in effect now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner
            .current
            .read()
            .expect("config snapshot lock")
            .clone()
    }

    /// The `--config-repo`s.
    pub fn repos(&self) -> &[ConfigRepo] {
        &self.inner.repos
    }

    /// What was read of `repo` now; the sources are read again with it. Answers the revision
    /// in effect for it afterwards (the one read, or the last good one if that one is refused).
    pub async fn set_repo_files(
        &self,
        repo: &ConfigRepo,
        files: RepoFiles,
    ) -> Result<Option<String>> {
        let _one = self.inner.reloading.lock().await;
        self.inner
            .repo_files
            .lock()
            .expect("repo files lock")
            .insert(repo.clone(), files);
        let snapshot = self.reload_locked().await?;
        let kind = SourceKind::Repo {
            url: repo.url.clone(),
            branch: repo.branch.clone(),
        };
        Ok(snapshot
            .sources
            .iter()
            .find(|s| s.kind == kind)
            .and_then(|s| s.repo.as_ref()?.revision.clone()))
    }

    /// Wakes whenever a new snapshot takes effect.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.inner.changed.subscribe()
    }

    /// Reads every source again; each keeps its last good document if its new text fails.
    pub async fn reload(&self) -> Result<Arc<Snapshot>> {
        let _one = self.inner.reloading.lock().await;
        self.reload_locked().await
    }

    async fn reload_locked(&self) -> Result<Arc<Snapshot>> {
        let previous = self.snapshot();
        let paths = self.inner.paths.clone();
        let api_documents = store::documents(self.inner.db.reader().await?.conn()).await?;
        let repos: Vec<(ConfigRepo, Option<RepoFiles>)> = {
            let files = self.inner.repo_files.lock().expect("repo files lock");
            self.inner
                .repos
                .iter()
                .map(|r| (r.clone(), files.get(r).cloned()))
                .collect()
        };
        let snapshot = tokio::task::spawn_blocking(move || {
            let mut reads = read_sources(&paths, api_documents);
            reads.extend(
                repos
                    .into_iter()
                    .map(|(repo, files)| read_repo(repo, files)),
            );
            Arc::new(settle(reads, &previous))
        })
        .await
        .map_err(|e| Error::Unavailable(format!("config reload failed: {e}")))?;
        *self.inner.current.write().expect("config snapshot lock") = snapshot.clone();
        self.inner.changed.send_replace(());
        for (source, issue) in snapshot.errors() {
            tracing::warn!(source = %source.name(), "config error: {issue}");
        }
        let mut tx = self.inner.db.begin().await?;
        tx.publish(Topic::PipelinesUpdates, DomainEvent::ConfigReloaded);
        tx.commit().await?;
        Ok(snapshot)
    }

    /// Stores `text` as the API document `name` if it reads and validates as the other
    /// sources stand; otherwise nothing changes and the answer names every error. The other
    /// API documents are read inside the write, so two nodes storing at once cannot both
    /// accept documents that conflict (say, two defining one pipeline).
    pub async fn store(&self, name: &str, text: &str) -> Result<Stored> {
        check_document_name(name)?;
        let _one = self.inner.reloading.lock().await;
        let kind = SourceKind::Api { name: name.into() };
        let document = gocd_yaml::parse_document(text)
            .map(warn_of_config_repo_materials)
            .map_err(|issues| invalid(&kind_name(&kind), issues))?;
        let mut tx = self.inner.db.begin().await?;
        let mut docs = self.others_in_effect(&mut tx, name).await?;
        docs.push((kind_name(&kind), Arc::new(document.clone())));
        let refs: Vec<(&str, &ConfigDocument)> =
            docs.iter().map(|(n, d)| (n.as_str(), d.as_ref())).collect();
        let mine = docs.len() - 1;
        let problems: Vec<ConfigIssue> = gocd_yaml::check_sources(&refs)
            .into_iter()
            .filter(|(i, _)| *i == mine)
            .map(|(_, issue)| issue)
            .collect();
        if !problems.is_empty() {
            return Err(invalid(&kind_name(&kind), problems));
        }
        let created = !store::exists(tx.conn(), name).await?;
        store::put(tx.conn(), name, text, now_millis()).await?;
        tx.publish(Topic::PipelinesUpdates, DomainEvent::ConfigChanged);
        tx.commit().await?;
        self.reload_after_commit().await;
        Ok(Stored {
            created,
            warnings: document.warnings,
        })
    }

    /// Removes the API document `name`, unless a pipeline elsewhere depends on one of its
    /// pipelines (409 naming the dependant). What depends on it is read inside the write, as
    /// for [`Self::store`].
    pub async fn delete(&self, name: &str) -> Result<()> {
        check_document_name(name)?;
        let _one = self.inner.reloading.lock().await;
        let kind = SourceKind::Api { name: name.into() };
        let mut tx = self.inner.db.begin().await?;
        let stored = store::documents(tx.conn()).await?;
        let Some((_, text)) = stored.iter().find(|(stored, _)| stored == name) else {
            return Err(Error::NotFound(format!("no config document named {name}")));
        };
        // Its pipelines: as its text reads now, or its last good document if that fails.
        let pipelines: Vec<String> = match gocd_yaml::parse_document(text) {
            Ok(document) => document.pipelines.iter().map(|p| p.name.clone()).collect(),
            Err(_) => self
                .snapshot()
                .sources
                .iter()
                .find(|s| s.kind == kind)
                .map(|s| s.pipelines().iter().map(|p| p.name.clone()).collect())
                .unwrap_or_default(),
        };
        let others = self.others_in_effect(&mut tx, name).await?;
        for pipeline in &pipelines {
            for (other, document) in &others {
                if let Some(dependant) = document.pipelines.iter().find(|p| {
                    p.dependencies()
                        .any(|(_, up, _, _)| up.eq_ignore_ascii_case(pipeline))
                }) {
                    return Err(Error::Conflict(format!(
                        "pipeline {} (in {other}) depends on pipeline {pipeline} of config document {name}",
                        dependant.name,
                    )));
                }
            }
        }
        store::remove(tx.conn(), name).await?;
        tx.publish(Topic::PipelinesUpdates, DomainEvent::ConfigChanged);
        tx.commit().await?;
        self.reload_after_commit().await;
        Ok(())
    }

    /// Reads the sources again after a committed store or delete. The write stands whatever
    /// happens here: should the reload fail (the database gone away since), the reload task
    /// tries again on hearing the write's `config_changed`, so it is logged, not answered.
    async fn reload_after_commit(&self) {
        if let Err(error) = self.reload_locked().await {
            tracing::warn!(%error, "the config document is stored, but reading the config again failed");
        }
    }

    /// Every source's document but the API document `except`, by name: the files and config
    /// repositories as this node has them, the API documents as stored now (read in `tx`,
    /// whichever node wrote them; one whose text does not read counts with its last good
    /// document here, if any).
    async fn others_in_effect(
        &self,
        tx: &mut crate::db::WriteTx,
        except: &str,
    ) -> Result<Vec<(String, Arc<ConfigDocument>)>> {
        let current = self.snapshot();
        let mut docs: Vec<(String, Arc<ConfigDocument>)> = current
            .sources
            .iter()
            .filter(|s| !matches!(s.kind, SourceKind::Api { .. }))
            .filter_map(|s| Some((s.name(), s.document.clone()?)))
            .collect();
        for (name, text) in store::documents(tx.conn()).await? {
            if name == except {
                continue;
            }
            let kind = SourceKind::Api { name };
            let document = match gocd_yaml::parse_document(&text) {
                Ok(document) => Some(Arc::new(document)),
                Err(_) => current
                    .sources
                    .iter()
                    .find(|s| s.kind == kind)
                    .and_then(|s| s.document.clone()),
            };
            if let Some(document) = document {
                docs.push((kind_name(&kind), document));
            }
        }
        Ok(docs)
    }

    /// Records what `--config` files this node started with (a hash of their names and
    /// texts) and warns if another running node started with different ones: every node must
    /// read the same pipelines from them. Forgets the nodes no longer running.
    pub async fn compare_config_files_with_other_nodes(&self) -> Result<()> {
        let paths = self.inner.paths.clone();
        let hash = tokio::task::spawn_blocking(move || config_files_hash(&paths))
            .await
            .map_err(|e| Error::Unavailable(format!("hashing the config files failed: {e}")))?;
        let db = &self.inner.db;
        let me = db.node();
        let live = db.live_nodes().await?;
        let mut tx = db.begin().await?;
        store::forget_nodes_but(tx.conn(), &live).await?;
        store::put_node_config(tx.conn(), &me, &hash, now_millis()).await?;
        let others = store::node_configs(tx.conn()).await?;
        tx.commit().await?;
        for (node, their_hash, _) in others.iter().filter(|(node, _, _)| *node != me) {
            if *their_hash != hash {
                tracing::warn!(
                    other_node = %node,
                    "this node's --config files differ from those node {node} started with: \
                     every node must have the same files, or they show different pipelines"
                );
            }
        }
        Ok(())
    }

    /// Moves API documents kept as files by an older ferrocd (`DATA_DIR/config/*.gocd.yaml`)
    /// into the database, unless one of that name is there already, and renames the folder
    /// to `config.moved-to-database` so nothing is moved twice. Where the rename fails, a
    /// marker file in the folder ([`MOVED_MARKER`]) says so instead: a document deleted
    /// through the API since must not come back at the next start. Before the first reload.
    pub async fn move_old_api_files_in(&self) -> Result<()> {
        let dir = &self.inner.old_api_dir;
        let marker = dir.join(MOVED_MARKER);
        if marker.exists() {
            tracing::warn!(
                "{} was moved into the database at an earlier start but could not be renamed; \
                 its files are not read again: remove it by hand",
                dir.display()
            );
            return Ok(());
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        let mut files: Vec<(String, PathBuf)> = entries
            .flatten()
            .filter_map(|entry| {
                let file_name = entry.file_name().to_string_lossy().to_string();
                let name = file_name.strip_suffix(".gocd.yaml")?.to_string();
                Some((name, entry.path()))
            })
            .collect();
        files.sort();
        let mut tx = self.inner.db.begin().await?;
        let mut moved_in = 0;
        for (name, path) in &files {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Unavailable(format!("cannot read {}: {e}", path.display())))?;
            if !store::exists(tx.conn(), name).await? {
                store::put(tx.conn(), name, &text, now_millis()).await?;
                moved_in += 1;
            }
        }
        if moved_in > 0 {
            tx.publish(Topic::PipelinesUpdates, DomainEvent::ConfigChanged);
        }
        tx.commit().await?;
        let moved = dir.with_file_name("config.moved-to-database");
        match std::fs::rename(dir, &moved) {
            Ok(()) => tracing::info!(
                documents = moved_in,
                "config documents stored through the API are rows now; the old files are in {}",
                moved.display()
            ),
            Err(error) => {
                tracing::warn!(
                    documents = moved_in,
                    "config documents stored through the API are rows now, but {} could not be \
                     renamed to {}: {error}; remove it by hand",
                    dir.display(),
                    moved.display()
                );
                if let Err(error) = std::fs::write(&marker, MOVED_MARKER_TEXT) {
                    tracing::warn!(
                        "nor could {} be written: {error}; until the folder is removed, each \
                         start moves in again any of its documents deleted through the API",
                        marker.display()
                    );
                }
            }
        }
        Ok(())
    }
}

/// The file left in a folder of old API documents that was moved into the database but could
/// not be renamed aside.
const MOVED_MARKER: &str = ".moved-to-database";
const MOVED_MARKER_TEXT: &str = "The config documents in this folder were moved into ferrocd's \
database, where the API keeps them now; this folder is no longer read. Remove it.\n";

/// Reads the sources again whenever a config document was stored or deleted, on any node, or
/// events may have been missed, until `shutdown`. `changes` is subscribed to
/// `Topic::PipelinesUpdates` before the first reload, so no change between the two is missed.
/// A reload that fails (the database away) is tried again after 100 ms, then after twice as
/// long each time up to 5 s, until one works; what is heard meanwhile does not hurry it.
pub fn spawn_reload_on_change(
    configs: ConfigSources,
    mut changes: tokio::sync::broadcast::Receiver<crate::events::Published>,
    shutdown: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    use tokio::time::{Duration, Instant};
    const FIRST_RETRY: Duration = Duration::from_millis(100);
    tokio::spawn(async move {
        let mut owed = false;
        // Set only while owed, after a failed reload: when to try again, whatever else is
        // heard meanwhile.
        let mut retry_at: Option<Instant> = None;
        let mut retry = FIRST_RETRY;
        loop {
            let retry_timer = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                heard = changes.recv() => owed |= match heard {
                    Ok(event) => matches!(*event, DomainEvent::ConfigChanged | DomainEvent::Resync),
                    Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => return,
                },
                () = retry_timer => {}
            }
            if !owed || retry_at.is_some_and(|at| Instant::now() < at) {
                continue;
            }
            match configs.reload().await {
                Ok(_) => {
                    owed = false;
                    retry_at = None;
                    retry = FIRST_RETRY;
                }
                Err(error) => {
                    tracing::warn!(%error, "reading the config again failed; trying again in {retry:?}");
                    retry_at = Some(Instant::now() + retry);
                    retry = (retry * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
}

fn kind_name(kind: &SourceKind) -> String {
    Source {
        kind: kind.clone(),
        document: None,
        errors: vec![],
        repo: None,
    }
    .name()
}

fn invalid(file: &str, issues: Vec<ConfigIssue>) -> Error {
    Error::InvalidConfig(
        issues
            .into_iter()
            .map(|issue| SourcedIssue {
                file: file.to_string(),
                issue,
            })
            .collect(),
    )
}

fn check_document_name(name: &str) -> Result<()> {
    let fine = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.');
    if fine {
        Ok(())
    } else {
        Err(Error::Unprocessable(format!(
            "name: {name:?} is not a valid config document name (letters, digits, '_', '-', '.'; \
             at most 255; not starting with '.')"
        )))
    }
}

/// A source as read now: its document, or why it does not read (`None`: nothing new to read,
/// the previous document stays).
struct Read {
    kind: SourceKind,
    parsed: Option<std::result::Result<ConfigDocument, Vec<ConfigIssue>>>,
    /// A config repository's: the revision read, and when.
    repo: Option<RepoRead>,
}

struct RepoRead {
    revision: Option<String>,
    read_at: Option<i64>,
    /// Why its poll failed (the document in effect stays).
    poll_error: Option<String>,
}

/// A file's or an API document's text, parsed (a `configrepo` material warned of).
fn parse_text(
    text: std::result::Result<String, String>,
) -> Option<std::result::Result<ConfigDocument, Vec<ConfigIssue>>> {
    Some(
        text.map_err(|message| vec![issue_at("", message)])
            .and_then(|text| gocd_yaml::parse_document(&text))
            .map(warn_of_config_repo_materials),
    )
}

/// Outside a config repository a `type: configrepo` material names no repository: it is kept
/// (the file may be a checkout of one) but never polled or checked out, and says so.
fn warn_of_config_repo_materials(mut document: ConfigDocument) -> ConfigDocument {
    for pipeline in &document.pipelines {
        for material in &pipeline.materials {
            if matches!(material.source, MaterialSource::ConfigRepo { .. }) {
                document.warnings.push(issue_at(
                    &format!("pipelines.{}.materials.{}", pipeline.name, material.name),
                    format!(
                        "material {} is `type: configrepo`, which means the config repository \
                         the file is in; outside one (--config-repo) it is not polled or checked out",
                        material.name
                    ),
                ));
            }
        }
    }
    document
}

fn issue_at(path: &str, message: String) -> ConfigIssue {
    ConfigIssue {
        path: path.to_string(),
        line: None,
        message,
    }
}

/// A config repository's files read as one document: each parsed, then merged; an error in
/// any refuses the revision whole (each error names its file and the revision). Its
/// `type: configrepo` materials become git materials on the repository itself.
fn read_repo(repo: ConfigRepo, files: Option<RepoFiles>) -> Read {
    let kind = SourceKind::Repo {
        url: repo.url.clone(),
        branch: repo.branch.clone(),
    };
    let (revision, files, read_at) = match files {
        None => {
            return Read {
                kind,
                parsed: None,
                repo: Some(RepoRead {
                    revision: None,
                    read_at: None,
                    poll_error: None,
                }),
            };
        }
        Some(RepoFiles::Failed { error, read_at }) => {
            return Read {
                kind,
                parsed: None,
                repo: Some(RepoRead {
                    revision: None,
                    read_at: Some(read_at),
                    poll_error: Some(error),
                }),
            };
        }
        Some(RepoFiles::Read {
            revision,
            files,
            read_at,
        }) => (revision, files, read_at),
    };
    let short = crate::domain::material::short_revision(&revision).to_string();
    let mut merged = ConfigDocument {
        format_version: 1,
        pipelines: Vec::new(),
        environments: Vec::new(),
        warnings: Vec::new(),
    };
    let mut refused = Vec::new();
    let located = |file: &str, mut issue: ConfigIssue| {
        issue.message = format!("{file} at {short}: {}", issue.message);
        issue
    };
    for (file, text) in files {
        match gocd_yaml::parse_document(&text) {
            Ok(document) => {
                merged.format_version = merged.format_version.max(document.format_version);
                merged.pipelines.extend(document.pipelines);
                merged.environments.extend(document.environments);
                merged
                    .warnings
                    .extend(document.warnings.into_iter().map(|w| located(&file, w)));
            }
            Err(issues) => refused.extend(issues.into_iter().map(|i| located(&file, i))),
        }
    }
    for pipeline in &mut merged.pipelines {
        for material in &mut pipeline.materials {
            if let MaterialSource::ConfigRepo {
                destination,
                ignore,
                includes,
            } = &material.source
            {
                material.source = MaterialSource::Git(GitMaterial {
                    url: repo.url.clone(),
                    branch: repo.branch.clone(),
                    destination: destination.clone(),
                    ignore: ignore.clone(),
                    includes: includes.clone(),
                    shallow_clone: false,
                    auto_update: true,
                    username: None,
                    password: None,
                });
            }
        }
    }
    Read {
        kind,
        parsed: Some(if refused.is_empty() {
            Ok(merged)
        } else {
            Err(refused)
        }),
        repo: Some(RepoRead {
            revision: Some(revision),
            read_at: Some(read_at),
            poll_error: None,
        }),
    }
}

/// The `--config` files (directories searched, in name order) and then the API documents
/// (`(name, text)`, by name).
fn read_sources(paths: &[PathBuf], api_documents: Vec<(String, String)>) -> Vec<Read> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found = Vec::new();
            find_config_files(path, &mut found);
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let mut reads: Vec<Read> = files
        .into_iter()
        .map(|path| Read {
            parsed: parse_text(
                std::fs::read_to_string(&path).map_err(|e| format!("cannot read the file: {e}")),
            ),
            kind: SourceKind::File { path },
            repo: None,
        })
        .collect();
    reads.extend(api_documents.into_iter().map(|(name, text)| Read {
        parsed: parse_text(Ok(text)),
        kind: SourceKind::Api { name },
        repo: None,
    }));
    reads
}

/// SHA-256 over the `--config` files' names (relative to the path named) and texts, in
/// order; a file that cannot be read counts as its error.
fn config_files_hash(paths: &[PathBuf]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for path in paths {
        let mut files = Vec::new();
        if path.is_dir() {
            find_config_files(path, &mut files);
            files.sort();
        } else {
            files.push(path.clone());
        }
        for file in files {
            let name = match file.strip_prefix(path) {
                Ok(relative) if path.is_dir() => relative,
                _ => Path::new(file.file_name().unwrap_or_default()),
            };
            hasher.update(name.as_os_str().as_encoded_bytes());
            hasher.update([0]);
            match std::fs::read(&file) {
                Ok(bytes) => hasher.update(&bytes),
                Err(error) => hasher.update(error.to_string()),
            }
            hasher.update([0]);
        }
    }
    hex::encode(hasher.finalize())
}

fn find_config_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            find_config_files(&path, found);
        } else {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".gocd.yaml") || name.ends_with(".gocd.yml") {
                found.push(path);
            }
        }
    }
}

/// The snapshot the texts make: each source's new document if it parses and agrees with the
/// others, else its previous one; then the errors of what is in effect.
fn settle(reads: Vec<Read>, previous: &Snapshot) -> Snapshot {
    struct Candidate {
        kind: SourceKind,
        fresh: Option<Arc<ConfigDocument>>,
        previous: Option<Arc<ConfigDocument>>,
        /// Why the new text is not in effect.
        refused: Vec<ConfigIssue>,
        /// A config repository's read, and its state before it.
        repo: Option<(RepoRead, RepoState)>,
    }
    impl Candidate {
        fn in_effect(&self) -> Option<Arc<ConfigDocument>> {
            self.fresh.clone().or_else(|| self.previous.clone())
        }
    }
    let mut candidates: Vec<Candidate> = reads
        .into_iter()
        .map(|read| {
            let before = previous.sources.iter().find(|s| s.kind == read.kind);
            let (fresh, refused) = match read.parsed {
                Some(Ok(doc)) => (Some(Arc::new(doc)), vec![]),
                Some(Err(issues)) => (None, issues),
                None => (None, vec![]),
            };
            Candidate {
                kind: read.kind,
                fresh,
                previous: before.and_then(|s| s.document.clone()),
                refused,
                repo: read
                    .repo
                    .map(|r| (r, before.and_then(|s| s.repo.clone()).unwrap_or_default())),
            }
        })
        .collect();
    // A new document the others refuse falls back to its previous one; that changes what the
    // others see, so check again (each round refuses at least one more, so it ends).
    let mut issues;
    loop {
        let docs: Vec<(usize, String, Arc<ConfigDocument>)> = candidates
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((i, kind_name(&c.kind), c.in_effect()?)))
            .collect();
        let refs: Vec<(&str, &ConfigDocument)> = docs
            .iter()
            .map(|(_, n, d)| (n.as_str(), d.as_ref()))
            .collect();
        issues = gocd_yaml::check_sources(&refs)
            .into_iter()
            .map(|(at, issue)| (docs[at].0, issue))
            .collect::<Vec<_>>();
        let mut fell_back = false;
        for (i, issue) in &issues {
            let candidate = &mut candidates[*i];
            if candidate.fresh.is_some() && candidate.refused.is_empty() {
                fell_back = true;
            }
            if candidate.fresh.is_some() {
                candidate.refused.push(issue.clone());
            }
        }
        if !fell_back {
            break;
        }
        for candidate in &mut candidates {
            if !candidate.refused.is_empty() {
                candidate.fresh = None;
            }
        }
    }
    let sources = candidates
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let document = c.in_effect();
            let refused = !c.refused.is_empty();
            let mut errors = c.refused;
            if c.fresh.is_none() {
                errors.extend(
                    issues
                        .iter()
                        .filter(|(at, _)| *at == i)
                        .map(|(_, e)| e.clone()),
                );
            }
            let repo = c.repo.map(|(read, before)| {
                if let Some(error) = &read.poll_error {
                    errors.push(issue_at("", format!("cannot poll the repository: {error}")));
                }
                RepoState {
                    revision: match (&c.fresh, refused) {
                        (Some(_), false) => read.revision.clone(),
                        _ => before.revision,
                    },
                    last_parsed_at: match read.poll_error {
                        Some(_) => before.last_parsed_at,
                        None => read.read_at.or(before.last_parsed_at),
                    },
                    // A failed poll leaves what the last read said.
                    broken_revision: match (&read.poll_error, refused) {
                        (Some(_), _) => before.broken_revision,
                        (None, true) => read.revision,
                        (None, false) => None,
                    },
                    poll_error: read.poll_error,
                }
            });
            Source {
                kind: c.kind,
                document,
                errors,
                repo,
            }
        })
        .collect();
    Snapshot::new(sources)
}
