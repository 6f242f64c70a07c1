//! The artifacts context (the artifacts issue; this is its first part, the upload): the files
//! a job publishes, kept under `--artifacts-dir` per job run (`BUILD_ID/files/PATH`). An
//! upload streams to a temporary file under `BUILD_ID/.incoming/` while its SHA-256 and size
//! are counted, is checked against the checksum the agent sent, and only then renamed into
//! place and recorded: a file that is listed is whole, and an interrupted upload leaves
//! nothing that looks complete (its temporary file is removed; the agent sends it again).
//! Only the agent running the job may upload to it, and the job's files together stay
//! within `--max-artifact-bytes`. A `test` artifact that is a JUnit XML report is read as it
//! comes in, and its summary recorded with it (the job and stage pages show them).

mod postgres;
pub mod purge;
mod sqlite;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::db::{Db, now_millis};
use crate::domain::artifact::{ArtifactFile, ArtifactKind, ArtifactPath, Sha256Hex};
use crate::domain::job_run::JobState;
use crate::domain::test_report::{TestSummary, read_junit};
use crate::error::{Error, Result};
use crate::events::{DomainEvent, Topic};
use crate::job_runs::JobRuns;
use crate::pipelines::Pipelines;

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A new file (201).
    Created,
    /// The same file again, same checksum: nothing to do (200).
    Unchanged,
}

#[derive(Clone)]
pub struct Artifacts {
    db: Db,
    job_runs: JobRuns,
    dir: PathBuf,
    max_bytes: u64,
    /// Uploads end one at a time: the check that no file holds the name and the rename.
    finishing: Arc<tokio::sync::Mutex<()>>,
}

impl Artifacts {
    pub fn new(db: Db, job_runs: JobRuns, dir: PathBuf, max_bytes: u64) -> Artifacts {
        Artifacts {
            db,
            job_runs,
            dir,
            max_bytes,
            finishing: Arc::default(),
        }
    }

    /// A job run's files, in path order.
    pub async fn files(&self, build_id: i64) -> Result<Vec<ArtifactFile>> {
        self.job_runs.get(build_id).await?; // 404 for an unknown build
        let mut read = self.db.reader().await?;
        store::files(read.conn(), build_id).await
    }

    /// A stored file of job run `build_id` (its record and where it lies), or 404.
    pub async fn file(
        &self,
        build_id: i64,
        path: &ArtifactPath,
    ) -> Result<(ArtifactFile, PathBuf)> {
        let found = self
            .files(build_id)
            .await?
            .into_iter()
            .find(|f| f.path == path.as_str())
            .ok_or_else(|| Error::NotFound(format!("build {build_id} has no artifact {path}")))?;
        Ok((found, self.on_disk(build_id, path)))
    }

    /// Where stored file `path` of `build_id` lies.
    pub fn on_disk(&self, build_id: i64, path: &ArtifactPath) -> PathBuf {
        self.dir
            .join(build_id.to_string())
            .join("files")
            .join(path.as_str())
    }

    /// When the artifacts of `build_id` were purged (`--artifacts-keep`), if they were.
    pub async fn purged_at(&self, build_id: i64) -> Result<Option<i64>> {
        let mut read = self.db.reader().await?;
        store::purged_at(read.conn(), build_id).await
    }

    /// The newest purge among the runs `build_ids`, if any of them was purged.
    pub async fn last_purge_among(&self, build_ids: &[i64]) -> Result<Option<i64>> {
        let mut read = self.db.reader().await?;
        Ok(store::purges(read.conn(), build_ids)
            .await?
            .into_iter()
            .map(|(_, at)| at)
            .max())
    }

    /// The JUnit reports among the test artifacts of runs `build_ids`: (build, path,
    /// summary), by build then path.
    pub async fn test_reports(&self, build_ids: &[i64]) -> Result<Vec<(i64, String, TestSummary)>> {
        let mut read = self.db.reader().await?;
        store::test_reports(read.conn(), build_ids).await
    }

    /// Stores `body` as `path` (a `kind` artifact) of job run `build_id`, uploaded by `agent`,
    /// if its SHA-256 is `checksum`. The same path again: `Unchanged` with the same checksum,
    /// else 409.
    pub async fn upload<S, E>(
        &self,
        build_id: i64,
        agent: Uuid,
        upload: (&ArtifactPath, ArtifactKind),
        checksum: &Sha256Hex,
        body: S,
    ) -> Result<Stored>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (path, kind) = upload;
        let run = self.job_runs.get(build_id).await?;
        if run.agent_uuid != Some(agent) {
            return Err(Error::Forbidden(format!(
                "build {build_id}: only the agent running the job may upload its artifacts"
            )));
        }
        if matches!(run.state, JobState::Scheduled | JobState::Completed) {
            return Err(Error::Conflict(format!(
                "build {build_id} is {}: artifacts are uploaded while it runs",
                run.state
            )));
        }
        let existing = self.files(build_id).await?;
        if let Some(answer) = same_name(&existing, path, checksum) {
            return answer;
        }
        let stored: u64 = existing.iter().map(|f| f.size.max(0) as u64).sum();
        let incoming = self.dir.join(build_id.to_string()).join(".incoming");
        let temp = incoming.join(Uuid::new_v4().to_string());
        let received = receive(&temp, body, self.max_bytes.saturating_sub(stored)).await;
        let (size, sum) = match received {
            Ok(received) => received,
            Err(error) => {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(match error {
                    Received::TooLarge => Error::PayloadTooLarge(format!(
                        "build {build_id}: its artifacts would pass --max-artifact-bytes ({} bytes)",
                        self.max_bytes
                    )),
                    Received::Failed(error) => error,
                });
            }
        };
        if sum != checksum.as_str() {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(Error::Unprocessable(format!(
                "X-Checksum-SHA256: {path} arrived with SHA-256 {sum}, not {checksum}",
                checksum = checksum.as_str()
            )));
        }
        let report = match kind {
            ArtifactKind::Test if path.as_str().to_ascii_lowercase().ends_with(".xml") => {
                test_report(&temp, path).await
            }
            _ => None,
        };
        let file = ArtifactFile {
            path: path.to_string(),
            size: size as i64,
            sha256: checksum.as_str().to_string(),
            created_at: now_millis(),
            kind,
        };
        let _one = self.finishing.lock().await;
        let outcome = self
            .finish(build_id, (path, &file), report.as_ref(), &temp)
            .await;
        if !matches!(outcome, Ok(Stored::Created)) {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        outcome
    }

    /// Puts a checked temporary file in place and records it, with its test report if it is
    /// one (under `finishing`).
    async fn finish(
        &self,
        build_id: i64,
        (path, file): (&ArtifactPath, &ArtifactFile),
        report: Option<&TestSummary>,
        temp: &Path,
    ) -> Result<Stored> {
        let existing = self.files(build_id).await?;
        let checksum = Sha256Hex::parse(&file.sha256).map_err(Error::Unprocessable)?;
        if let Some(answer) = same_name(&existing, path, &checksum) {
            return answer;
        }
        let target = self.on_disk(build_id, path);
        let conflict = |what: &str| {
            Error::Conflict(format!(
                "{path}: {what} (a file and a folder of the same name?)"
            ))
        };
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| conflict(&format!("cannot make its folder: {e}")))?;
        }
        if tokio::fs::symlink_metadata(&target).await.is_ok() {
            return Err(conflict("something is already there"));
        }
        tokio::fs::rename(temp, &target)
            .await
            .map_err(|e| conflict(&format!("cannot put it in place: {e}")))?;
        let recorded = async {
            let mut tx = self.db.begin().await?;
            store::insert(tx.conn(), build_id, &path.folded(), file).await?;
            if let Some(report) = report {
                store::insert_test_report(tx.conn(), build_id, path.as_str(), report).await?;
            }
            publish_changed(&mut tx, build_id);
            tx.commit().await
        }
        .await;
        if let Err(error) = recorded {
            let _ = tokio::fs::remove_file(&target).await;
            return Err(error);
        }
        Ok(Stored::Created)
    }
}

impl Artifacts {
    /// Deletes what `--artifacts-keep keep` does not spare of `pipeline`'s artifacts
    /// (see `Pipelines::artifacts_spared`), oldest instance first; answers how many runs'.
    /// Each run's records go first, then its files: a listed file is always there.
    pub async fn purge(&self, pipelines: &Pipelines, pipeline: &str, keep: u32) -> Result<usize> {
        let counters = {
            let mut read = self.db.reader().await?;
            store::counters_with_files(read.conn(), pipeline).await?
        };
        if counters.len() <= keep as usize {
            return Ok(0);
        }
        let mut purged = 0;
        for (counter, spared) in pipelines
            .artifacts_spared(pipeline, keep, &counters)
            .await?
        {
            let Some(kept_stages) = spared else {
                continue;
            };
            let builds = {
                let mut read = self.db.reader().await?;
                store::builds_with_files(read.conn(), pipeline, counter).await?
            };
            for (build_id, stage) in builds {
                if kept_stages.iter().any(|s| s.eq_ignore_ascii_case(&stage)) {
                    continue;
                }
                let _one = self.finishing.lock().await;
                let mut tx = self.db.begin().await?;
                store::mark_purged(tx.conn(), build_id, now_millis()).await?;
                publish_changed(&mut tx, build_id);
                tx.commit().await?;
                let folder = self.dir.join(build_id.to_string());
                if let Err(error) = tokio::fs::remove_dir_all(&folder).await {
                    tracing::warn!(%error, build_id, "purged artifacts' folder not removed");
                }
                tracing::info!(
                    pipeline,
                    counter,
                    build_id,
                    "artifacts purged (--artifacts-keep)"
                );
                purged += 1;
            }
        }
        Ok(purged)
    }
}

/// Tells the run's page and its stage's that its artifacts changed.
fn publish_changed(tx: &mut crate::db::WriteTx, build_id: i64) {
    let changed = DomainEvent::ArtifactsChanged { build_id };
    tx.publish(Topic::AgentJobRunConsole(build_id), changed.clone());
    tx.publish(Topic::JobRunsUpdates, changed);
}

/// What the JUnit report in `file` says; `None` for one that is not a report (said in the
/// log: a test artifact may be any file).
async fn test_report(file: &Path, path: &ArtifactPath) -> Option<TestSummary> {
    let file = file.to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        let opened = std::fs::File::open(&file).map_err(|e| e.to_string())?;
        read_junit(std::io::BufReader::new(opened))
    })
    .await;
    match read {
        Ok(Ok(summary)) => summary,
        Ok(Err(why)) => {
            tracing::info!(%path, "a test artifact that is not a JUnit report: {why}");
            None
        }
        Err(error) => {
            tracing::warn!(%path, %error, "reading a test report failed");
            None
        }
    }
}

/// The answer when a file of that name (any case) is stored already.
fn same_name(
    existing: &[ArtifactFile],
    path: &ArtifactPath,
    checksum: &Sha256Hex,
) -> Option<Result<Stored>> {
    let folded = path.folded();
    let found = existing.iter().find(|f| f.path.to_lowercase() == folded)?;
    Some(if found.path != path.as_str() {
        Err(Error::Conflict(format!(
            "{path} differs only in case from {}, stored already",
            found.path
        )))
    } else if found.sha256 == checksum.as_str() {
        Ok(Stored::Unchanged)
    } else {
        Err(Error::Conflict(format!(
            "{path} is stored already with SHA-256 {}",
            found.sha256
        )))
    })
}

enum Received {
    TooLarge,
    Failed(Error),
}

/// Writes `body` to `temp`, at most `room` bytes, flushed to disk; answers its size and
/// SHA-256.
async fn receive<S, E>(
    temp: &Path,
    mut body: S,
    room: u64,
) -> std::result::Result<(u64, String), Received>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let unavailable = |e: std::io::Error| {
        Received::Failed(Error::Unavailable(format!("cannot store the upload: {e}")))
    };
    if let Some(dir) = temp.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(unavailable)?;
    }
    let mut file = tokio::fs::File::create(temp).await.map_err(unavailable)?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            Received::Failed(Error::BadRequest(format!("the upload broke off: {e}")))
        })?;
        size += chunk.len() as u64;
        if size > room {
            return Err(Received::TooLarge);
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(unavailable)?;
    }
    file.sync_all().await.map_err(unavailable)?;
    Ok((size, hex::encode(hasher.finalize())))
}
