//! Publishing a job's artifacts after its tasks, whatever their result (as GoCD: test reports
//! matter most when tests failed). Each rule's `source`, relative to the working folder, is a
//! file (uploaded as `destination/NAME`), a folder (every file under it, as
//! `destination/FOLDER/…`) or a glob (`*` within a folder, `**` across; each match keeps its
//! path below the glob's first wildcard segment). Each file is hashed, then streamed to the
//! server with its SHA-256. A rule that matches nothing, a symlink leaving the working folder,
//! or a refused upload fails the job, and the console says which file and why.
//!
//! A fetch task downloads the files the server found for it, each to a temporary name beside
//! its place while its SHA-256 is counted, and renames it into place only once the checksum
//! is the one the server recorded: a file that is there is whole. A missing file, a changed
//! one or a path leaving the sandbox fails the task, saying which and why.

use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::client::Client;
use super::console::ConsoleWriter;
use super::retry::ApiError;
use super::wire::{BuildId, Fetch};
use crate::domain::pipeline_config::{ArtifactConfig, ArtifactKind};

/// How many times a file is sent before its upload counts as failed (a dropped connection).
const ATTEMPTS: usize = 3;

/// Uploads what `rules` name under `sandbox`; false if any of it failed (said on the console).
pub async fn publish(
    client: &Client,
    build: &BuildId,
    sandbox: &Path,
    rules: &[ArtifactConfig],
    console: &mut ConsoleWriter,
) -> bool {
    let files = match collect(sandbox, rules) {
        Ok(files) => files,
        Err(why) => {
            console
                .marker(&format!("Artifacts not uploaded: {why}"))
                .await;
            return false;
        }
    };
    console
        .marker(&format!("Uploading {} artifact file(s)", files.len()))
        .await;
    for (local, path, kind) in files {
        let sum = match sha256_of(&local).await {
            Ok(sum) => sum,
            Err(e) => {
                console
                    .marker(&format!(
                        "Artifact {path} not uploaded: cannot read {}: {e}",
                        local.display()
                    ))
                    .await;
                return false;
            }
        };
        let mut last_error = String::new();
        let mut stored = false;
        for _ in 0..ATTEMPTS {
            match client
                .upload_artifact(build, (&path, kind), &local, &sum)
                .await
            {
                Ok(200 | 201) => {
                    stored = true;
                    break;
                }
                Ok(status) => last_error = format!("the server answered {status}"),
                // A refusal (4xx) will not change on a repeat.
                Err(
                    error @ ApiError::Status {
                        status: 400..=499, ..
                    },
                ) => {
                    last_error = error.to_string();
                    break;
                }
                Err(error) => last_error = error.to_string(),
            }
        }
        if !stored {
            console
                .marker(&format!("Artifact {path} not uploaded: {last_error}"))
                .await;
            return false;
        }
    }
    true
}

/// Runs a fetch task: see the module's doc. `Err` says why it failed.
pub async fn fetch(
    client: &Client,
    sandbox: &Path,
    fetch: &Fetch,
    console: &mut ConsoleWriter,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    if let Some(why) = &fetch.error {
        return Err(format!("cannot fetch {}: {why}", fetch.source));
    }
    let (Some(build), Some(from)) = (fetch.from_build_id, fetch.from.as_deref()) else {
        return Err(format!(
            "cannot fetch {}: the server named no job to fetch from",
            fetch.source
        ));
    };
    let total: u64 = fetch.files.iter().map(|f| f.size).sum();
    console
        .marker(&format!(
            "Fetching {} file(s), {total} bytes, from {from}",
            fetch.files.len()
        ))
        .await;
    for file in &fetch.files {
        let target = inside(sandbox, &file.save_as)?;
        let parent = target.parent().unwrap_or(sandbox);
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot make {}: {e}", parent.display()))?;
        let root = sandbox
            .canonicalize()
            .map_err(|e| format!("cannot read the working folder: {e}"))?;
        check_inside(&root, parent)?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let temp = parent.join(format!(".{name}.ferrocd-fetch"));
        let mut last_error = String::new();
        let mut fetched = false;
        for _ in 0..ATTEMPTS {
            let attempt = tokio::select! {
                got = download(client, build, &file.path, file.size, &temp) => got,
                _ = stop.cancelled() => {
                    let _ = std::fs::remove_file(&temp);
                    return Err("cancelled".into());
                }
            };
            match attempt {
                Ok(sum) if sum == file.sha256 => {
                    std::fs::rename(&temp, &target)
                        .map_err(|e| format!("cannot put {} in place: {e}", target.display()))?;
                    fetched = true;
                    break;
                }
                Ok(sum) => {
                    last_error = format!(
                        "it arrived with SHA-256 {sum}, not the {} recorded when it was published",
                        file.sha256
                    )
                }
                Err(Download::Server(
                    error @ ApiError::Status {
                        status: 400..=499, ..
                    },
                )) => {
                    last_error = error.to_string();
                    break;
                }
                Err(Download::Server(error)) => last_error = error.to_string(),
                Err(Download::Local(error)) => {
                    last_error = error;
                    break;
                }
            }
        }
        if !fetched {
            let _ = std::fs::remove_file(&temp);
            return Err(format!(
                "cannot fetch {} from {from}: {last_error}",
                file.path
            ));
        }
    }
    console
        .marker(&format!(
            "Fetched {} file(s) from {from}, each checked against its SHA-256",
            fetch.files.len()
        ))
        .await;
    Ok(())
}

/// `relative` below `sandbox`, if it stays inside it.
fn inside(sandbox: &Path, relative: &str) -> Result<PathBuf, String> {
    let path = Path::new(relative);
    if relative.is_empty()
        || path.is_absolute()
        || path.components().any(|c| matches!(c, Component::ParentDir))
    {
        return Err(format!("{relative:?} is outside the working folder"));
    }
    Ok(sandbox.join(path))
}

enum Download {
    Server(ApiError),
    Local(String),
}

/// One download of `path` of `build` into `temp`; the SHA-256 of what arrived.
async fn download(
    client: &Client,
    build: i64,
    path: &str,
    size: u64,
    temp: &Path,
) -> Result<String, Download> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let response = client
        .artifact(build, path, size)
        .await
        .map_err(Download::Server)?;
    let local =
        |e: std::io::Error| Download::Local(format!("cannot write {}: {e}", temp.display()));
    let mut file = tokio::fs::File::create(temp).await.map_err(local)?;
    let mut hasher = Sha256::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Download::Server(super::client::transport_error(e)))?;
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(local)?;
    }
    file.flush().await.map_err(local)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Every (local file, artifact path, kind) the rules name, in rule order.
fn collect(
    sandbox: &Path,
    rules: &[ArtifactConfig],
) -> Result<Vec<(PathBuf, String, ArtifactKind)>, String> {
    let root = sandbox
        .canonicalize()
        .map_err(|e| format!("cannot read the working folder: {e}"))?;
    let mut found = Vec::new();
    for rule in rules {
        let source = rule.source.trim_start_matches("./");
        let relative = Path::new(source);
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(format!(
                "artifact source {source:?} is outside the working folder"
            ));
        }
        let destination = rule
            .destination
            .as_deref()
            .map(|d| d.trim_matches('/'))
            .filter(|d| !d.is_empty());
        let under = |name: &str| match destination {
            Some(d) => format!("{d}/{name}"),
            None => name.to_string(),
        };
        let before = found.len();
        let target = sandbox.join(relative);
        if target.is_file() {
            let name = target
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            check_inside(&root, &target)?;
            found.push((target, under(&name), rule.kind));
        } else if target.is_dir() {
            let folder = target
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            for (file, below) in files_under(&target)? {
                check_inside(&root, &file)?;
                found.push((file, under(&format!("{folder}/{below}")), rule.kind));
            }
        } else {
            let matcher = globset::GlobBuilder::new(source)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("artifact source {source:?} is not a pattern: {e}"))?
                .compile_matcher();
            let base: Vec<&str> = source
                .split('/')
                .take_while(|s| !s.contains(['*', '?', '[', '{']))
                .collect();
            let base = base.join("/");
            for (file, relative) in files_under(sandbox)? {
                if matcher.is_match(&relative) {
                    check_inside(&root, &file)?;
                    let below = relative
                        .strip_prefix(&base)
                        .unwrap_or(&relative)
                        .trim_start_matches('/')
                        .to_string();
                    found.push((file, under(&below), rule.kind));
                }
            }
        }
        if found.len() == before {
            return Err(format!("artifact source {source:?} matched no file"));
        }
    }
    Ok(found)
}

/// A symlink may not lead out of the working folder.
fn check_inside(root: &Path, file: &Path) -> Result<(), String> {
    let real = file
        .canonicalize()
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if real.starts_with(root) {
        Ok(())
    } else {
        Err(format!(
            "{} is a symlink leading out of the working folder",
            file.display()
        ))
    }
}

/// Every file under `dir` (symlinked folders not followed) with its `/` path below it.
fn files_under(dir: &Path) -> Result<Vec<(PathBuf, String)>, String> {
    let mut out = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((folder, prefix)) = pending.pop() {
        let entries = std::fs::read_dir(&folder)
            .map_err(|e| format!("cannot read {}: {e}", folder.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push((entry.path(), relative));
            } else if kind.is_file() || (kind.is_symlink() && entry.path().is_file()) {
                out.push((entry.path(), relative));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

async fn sha256_of(file: &Path) -> std::io::Result<String> {
    let mut reader = tokio::fs::File::open(file).await?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}
