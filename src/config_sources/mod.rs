//! The config sources context: the GoCD YAML documents pipelines come from (files named with
//! `--config`, and documents stored through the API as files of the server's own under the
//! data dir), read and checked together, and the snapshot of them in effect.
//!
//! Files are the one truth; the database holds instances, never config. A source that fails
//! to parse or validate keeps its last good document, and its errors are shown beside it: a
//! broken commit to the config never takes running pipelines away. Readers take the snapshot
//! (an `Arc`, swapped whole on reload); reloads run one at a time and publish
//! `ConfigReloaded` once the new snapshot is in place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::db::Db;
use crate::domain::pipeline_config::{
    ConfigDocument, ConfigIssue, EnvironmentConfig, PipelineConfig, SourcedIssue,
};
use crate::error::{Error, Result};
use crate::events::{DomainEvent, Topic};
use crate::gocd_yaml;

/// Where a source's text lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceKind {
    /// A file named with `--config`, or found in a directory named with it.
    File { path: PathBuf },
    /// A document stored through `PUT /api/config/{name}`.
    Api { name: String },
}

/// One source and what became of it at the last reload.
#[derive(Debug, Clone)]
pub struct Source {
    pub kind: SourceKind,
    /// The document in effect: the latest good one (`None`: it never read well).
    pub document: Option<Arc<ConfigDocument>>,
    /// Why its latest text is not in effect, or what is wrong with what is.
    pub errors: Vec<ConfigIssue>,
}

impl Source {
    /// How errors and pages name it: the file's path, or `api:NAME`.
    pub fn name(&self) -> String {
        match &self.kind {
            SourceKind::File { path } => path.display().to_string(),
            SourceKind::Api { name } => format!("api:{name}"),
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
    /// Where API documents are kept.
    api_dir: PathBuf,
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
    pub fn new(db: Db, paths: Vec<PathBuf>, data_dir: &Path) -> ConfigSources {
        ConfigSources {
            inner: Arc::new(Inner {
                db,
                paths,
                api_dir: data_dir.join("config"),
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
        let api_dir = self.inner.api_dir.clone();
        let snapshot = tokio::task::spawn_blocking(move || {
            let texts = read_sources(&paths, &api_dir);
            Arc::new(settle(texts, &previous))
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
    /// sources stand; otherwise nothing changes and the answer names every error.
    pub async fn store(&self, name: &str, text: &str) -> Result<Stored> {
        check_document_name(name)?;
        let _one = self.inner.reloading.lock().await;
        let current = self.snapshot();
        let kind = SourceKind::Api { name: name.into() };
        let document =
            gocd_yaml::parse_document(text).map_err(|issues| invalid(&kind_name(&kind), issues))?;
        let mut docs: Vec<(String, Arc<ConfigDocument>)> = current
            .sources
            .iter()
            .filter(|s| s.kind != kind)
            .filter_map(|s| Some((s.name(), s.document.clone()?)))
            .collect();
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
        let path = self.api_path(name);
        let created = !path.exists();
        write_atomically(&path, text)?;
        self.reload_locked().await?;
        Ok(Stored {
            created,
            warnings: document.warnings,
        })
    }

    /// Removes the API document `name`, unless a pipeline elsewhere depends on one of its
    /// pipelines (409 naming the dependant).
    pub async fn delete(&self, name: &str) -> Result<()> {
        check_document_name(name)?;
        let _one = self.inner.reloading.lock().await;
        let current = self.snapshot();
        let kind = SourceKind::Api { name: name.into() };
        let Some(source) = current.sources.iter().find(|s| s.kind == kind) else {
            return Err(Error::NotFound(format!("no config document named {name}")));
        };
        for pipeline in source.pipelines() {
            for other in current.sources.iter().filter(|s| s.kind != kind) {
                if let Some(dependant) = other.pipelines().iter().find(|p| {
                    p.dependencies()
                        .any(|(_, up, _, _)| up.eq_ignore_ascii_case(&pipeline.name))
                }) {
                    return Err(Error::Conflict(format!(
                        "pipeline {} (in {}) depends on pipeline {} of config document {name}",
                        dependant.name,
                        other.name(),
                        pipeline.name
                    )));
                }
            }
        }
        std::fs::remove_file(self.api_path(name)).map_err(|e| {
            Error::Unavailable(format!("cannot remove config document {name}: {e}"))
        })?;
        self.reload_locked().await?;
        Ok(())
    }

    fn api_path(&self, name: &str) -> PathBuf {
        self.inner.api_dir.join(format!("{name}.gocd.yaml"))
    }
}

fn kind_name(kind: &SourceKind) -> String {
    Source {
        kind: kind.clone(),
        document: None,
        errors: vec![],
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

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let unavailable =
        |e: std::io::Error| Error::Unavailable(format!("cannot store {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(unavailable)?;
    }
    let temp = path.with_extension("yaml.tmp");
    std::fs::write(&temp, text).map_err(unavailable)?;
    std::fs::rename(&temp, path).map_err(unavailable)
}

/// A source's text as read now (or why it could not be read).
struct Read {
    kind: SourceKind,
    text: std::result::Result<String, String>,
}

/// The `--config` files (directories searched, in name order) and then the API documents.
fn read_sources(paths: &[PathBuf], api_dir: &Path) -> Vec<Read> {
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
            text: std::fs::read_to_string(&path).map_err(|e| format!("cannot read the file: {e}")),
            kind: SourceKind::File { path },
        })
        .collect();
    let mut api = Vec::new();
    if let Ok(entries) = std::fs::read_dir(api_dir) {
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().to_string();
            if let Some(name) = file_name.strip_suffix(".gocd.yaml") {
                api.push((name.to_string(), entry.path()));
            }
        }
    }
    api.sort();
    reads.extend(api.into_iter().map(|(name, path)| Read {
        text: std::fs::read_to_string(&path).map_err(|e| format!("cannot read the file: {e}")),
        kind: SourceKind::Api { name },
    }));
    reads
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
    }
    impl Candidate {
        fn in_effect(&self) -> Option<Arc<ConfigDocument>> {
            self.fresh.clone().or_else(|| self.previous.clone())
        }
    }
    let mut candidates: Vec<Candidate> = reads
        .into_iter()
        .map(|read| {
            let previous = previous
                .sources
                .iter()
                .find(|s| s.kind == read.kind)
                .and_then(|s| s.document.clone());
            let parsed = read
                .text
                .map_err(|message| {
                    vec![ConfigIssue {
                        path: String::new(),
                        line: None,
                        message,
                    }]
                })
                .and_then(|text| gocd_yaml::parse_document(&text));
            let (fresh, refused) = match parsed {
                Ok(doc) => (Some(Arc::new(doc)), vec![]),
                Err(issues) => (None, issues),
            };
            Candidate {
                kind: read.kind,
                fresh,
                previous,
                refused,
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
            let mut errors = c.refused;
            if c.fresh.is_none() {
                errors.extend(
                    issues
                        .iter()
                        .filter(|(at, _)| *at == i)
                        .map(|(_, e)| e.clone()),
                );
            }
            Source {
                kind: c.kind,
                document,
                errors,
            }
        })
        .collect();
    Snapshot::new(sources)
}
