//! A job's artifact files for people and scripts: `/go/files/{pipeline}/{pc}/{stage}/{sc}/{job}/{path}`
//! (GoCD's path, which scripts using `GO_SERVER_URL` know) and the same under `/files/…`.
//! Agent-written files are never served as active content from our origin (they would run
//! with the viewer's session): every answer is an attachment, `nosniff`, with a sandboxing
//! Content-Security-Policy. A re-run job's copy serves its original's files. `…/{job}.json`
//! lists them, as GoCD does; `…/{folder}.zip` is a folder as one zip, written as it is sent.
//! `/tab/artifact/…` shows a file inline for a job's custom tab, in a frame the page
//! sandboxes, itself served with `Content-Security-Policy: sandbox` (it runs nothing, and
//! reaches nothing of ours).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::domain::artifact::{ArtifactFile, ArtifactPath};
use crate::error::{Error, Result};
use crate::web::api::pipeline_counter;
use crate::web::auth::Credential;
use crate::web::routes::Routes;

pub fn router() -> Routes {
    Routes::new()
        .get(
            "/go/files/{pipeline}/{pc}/{stage}/{sc}/{job_json}",
            Credential::User,
            listing,
        )
        .get(
            "/files/{pipeline}/{pc}/{stage}/{sc}/{job_json}",
            Credential::User,
            listing,
        )
        .get(
            "/go/files/{pipeline}/{pc}/{stage}/{sc}/{job}/{*path}",
            Credential::User,
            download,
        )
        .get(
            "/files/{pipeline}/{pc}/{stage}/{sc}/{job}/{*path}",
            Credential::User,
            download,
        )
        .get(
            "/tab/artifact/{pipeline}/{pc}/{stage}/{sc}/{job}/{*path}",
            Credential::User,
            inline,
        )
}

type FilePath = Path<(String, String, String, String, String, String)>;

/// The job run whose files `(pipeline, pc, stage, sc, job)` names (a copy's original).
async fn job_build(
    state: &AppState,
    (pipeline, pc, stage, sc, job): (&str, &str, &str, &str, &str),
) -> Result<i64> {
    let (pc, sc) = (pipeline_counter(pc)?, pipeline_counter(sc)?);
    let view = state.pipelines.stage(pipeline, pc, stage, sc).await?;
    let run = view
        .jobs
        .iter()
        .find(|j| j.job_name.eq_ignore_ascii_case(job))
        .ok_or_else(|| Error::NotFound(format!("no job {job} in {pipeline}/{pc}/{stage}/{sc}")))?;
    Ok(run.copied_from.unwrap_or(run.build_id))
}

/// `…/{job}.json`: the job's files as GoCD lists them, a tree of `{"name", "url", "type":
/// "folder"|"file", "files"?}` with each file's download URL (absolute paths on this server).
async fn listing(
    State(state): State<AppState>,
    Path((pipeline, pc, stage, sc, job_json)): Path<(String, String, String, String, String)>,
) -> Result<axum::Json<serde_json::Value>> {
    let job = job_json
        .strip_suffix(".json")
        .ok_or_else(|| Error::NotFound(format!("no file listing {job_json}")))?;
    let build_id = job_build(&state, (&pipeline, &pc, &stage, &sc, job)).await?;
    let files = state.artifacts.files(build_id).await?;
    let base = format!("/files/{pipeline}/{pc}/{stage}/{sc}/{job}");
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    Ok(axum::Json(serde_json::Value::Array(tree(
        &base, "", &paths,
    ))))
}

/// The entries directly under `prefix` (`""` or `a/b/`) among `paths`, folders first.
fn tree(base: &str, prefix: &str, paths: &[&str]) -> Vec<serde_json::Value> {
    let mut folders: Vec<&str> = Vec::new();
    let mut files: Vec<&str> = Vec::new();
    for path in paths.iter().filter_map(|p| p.strip_prefix(prefix)) {
        match path.split_once('/') {
            Some((folder, _)) if !folders.contains(&folder) => folders.push(folder),
            Some(_) => {}
            None => files.push(path),
        }
    }
    let mut entries: Vec<serde_json::Value> = folders
        .into_iter()
        .map(|folder| {
            let inner = format!("{prefix}{folder}/");
            serde_json::json!({
                "name": folder,
                "url": format!("{base}/{prefix}{folder}"),
                "type": "folder",
                "files": tree(base, &inner, paths),
            })
        })
        .collect();
    entries.extend(files.into_iter().map(|file| {
        serde_json::json!({"name": file, "url": format!("{base}/{prefix}{file}"), "type": "file"})
    }));
    entries
}

async fn download(
    State(state): State<AppState>,
    Path((pipeline, pc, stage, sc, job, path)): FilePath,
) -> Result<Response> {
    let path = ArtifactPath::parse(&path).map_err(Error::NotFound)?;
    let build_id = job_build(&state, (&pipeline, &pc, &stage, &sc, &job)).await?;
    match attachment(&state, build_id, &path).await {
        // No file of that name: `FOLDER.zip` is the folder, zipped.
        Err(Error::NotFound(why)) => match path.as_str().strip_suffix(".zip") {
            Some(folder) => folder_zip(&state, build_id, folder)
                .await?
                .ok_or(Error::NotFound(why)),
            None => Err(Error::NotFound(why)),
        },
        other => other,
    }
}

/// A job's file for its custom tab: inline, typed by its extension, `nosniff`, and
/// sandboxed by its CSP as by the frame.
async fn inline(
    State(state): State<AppState>,
    Path((pipeline, pc, stage, sc, job, path)): FilePath,
) -> Result<Response> {
    let path = ArtifactPath::parse(&path).map_err(Error::NotFound)?;
    let build_id = job_build(&state, (&pipeline, &pc, &stage, &sc, &job)).await?;
    let (_, mut response) = streamed(&state, build_id, &path).await?;
    let mime = mime_guess::from_path(path.as_str()).first_or_octet_stream();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(mime.essence_str())
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
    );
    unreachable_by_script(headers);
    // Framed by our own run page only.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(TAB_POLICY),
    );
    headers.insert(
        header::X_FRAME_OPTIONS,
        HeaderValue::from_static("SAMEORIGIN"),
    );
    Ok(response)
}

/// The stored file `path` of `build_id` as a streamed body with its length.
async fn streamed(
    state: &AppState,
    build_id: i64,
    path: &ArtifactPath,
) -> Result<(ArtifactFile, Response)> {
    let (file, on_disk) = state.artifacts.file(build_id, path).await?;
    let opened = tokio::fs::File::open(&on_disk)
        .await
        .map_err(|e| Error::NotFound(format!("artifact {path} is gone: {e}")))?;
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(opened)).into_response();
    response.headers_mut().insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(file.size.max(0) as u64),
    );
    Ok((file, response))
}

/// `attachment; filename="NAME"` (quotes and backslashes in the name made `_`).
fn disposition(name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{}\"",
        name.replace(['"', '\\'], "_")
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// A download: a sandbox of its own that loads nothing, framed by nobody.
const DOWNLOAD_POLICY: &str = "sandbox; default-src 'none'; frame-ancestors 'none'";
/// A custom tab's file: a sandbox (no script, no form, no same-origin access, whatever the
/// file holds) that may show its own images and styles, framed only by our pages.
const TAB_POLICY: &str = "sandbox; default-src 'none'; img-src 'self' data:; \
    style-src 'self' 'unsafe-inline'; frame-ancestors 'self'";

/// `nosniff` and the download's sandboxing CSP.
fn unreachable_by_script(headers: &mut axum::http::HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOWNLOAD_POLICY),
    );
}

/// The files under `folder` of `build_id` as one zip (`FOLDER/…` inside, as GoCD's), written
/// on a blocking thread as the client reads it; `None` when no file is under it.
async fn folder_zip(state: &AppState, build_id: i64, folder: &str) -> Result<Option<Response>> {
    let prefix = format!("{folder}/");
    let parent_len = folder.rfind('/').map(|i| i + 1).unwrap_or(0);
    let mut inside = Vec::new();
    for file in state.artifacts.files(build_id).await? {
        if file.path.starts_with(&prefix) {
            let path = ArtifactPath::parse(&file.path).map_err(Error::Unprocessable)?;
            let on_disk = state.artifacts.on_disk(build_id, &path);
            inside.push((file.path[parent_len..].to_string(), on_disk, file.size));
        }
    }
    if inside.is_empty() {
        return Ok(None);
    }
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let folder_name = folder.rsplit('/').next().unwrap_or("artifacts").to_string();
    tokio::task::spawn_blocking(move || {
        let mut zip = zip::ZipWriter::new_stream(ChannelWriter::new(sender.clone()));
        let written = (|| -> zip::result::ZipResult<()> {
            for (name, on_disk, size) in inside {
                let options = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Stored)
                    .large_file(size >= u32::MAX as i64);
                zip.start_file(name, options)?;
                let mut file = std::fs::File::open(on_disk)?;
                std::io::copy(&mut file, &mut zip)?;
            }
            zip.finish()?.into_inner().flush_rest()?;
            Ok(())
        })();
        if let Err(error) = written {
            // The client sees a broken-off body, never a zip that looks whole.
            tracing::info!(%error, build_id, "a folder's zip was not finished");
            let _ = sender.blocking_send(Err(std::io::Error::other(error.to_string())));
        }
    });
    let mut response = Body::from_stream(tokio_stream_of(receiver)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        disposition(&format!("{folder_name}.zip")),
    );
    unreachable_by_script(headers);
    Ok(Some(response))
}

fn tokio_stream_of(
    mut receiver: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> {
    async_stream::stream! {
        while let Some(item) = receiver.recv().await {
            yield item;
        }
    }
}

/// A `Write` that sends what it is given down a bounded channel in 64 KiB pieces, blocking
/// while the client reads slower (so memory stays flat); a closed channel (the client went
/// away) is a broken pipe, which ends the zip.
struct ChannelWriter {
    sender: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buffer: Vec<u8>,
}

const ZIP_PIECE: usize = 64 * 1024;

impl ChannelWriter {
    fn new(sender: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>) -> ChannelWriter {
        ChannelWriter {
            sender,
            buffer: Vec::with_capacity(ZIP_PIECE),
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let piece = bytes::Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(ZIP_PIECE),
        ));
        self.sender
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }

    fn flush_rest(mut self) -> std::io::Result<()> {
        self.send()
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= ZIP_PIECE {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Artifact `path` of `build_id`, streamed as a download that never runs in our origin.
pub async fn attachment(state: &AppState, build_id: i64, path: &ArtifactPath) -> Result<Response> {
    let (file, mut response) = streamed(state, build_id, path).await?;
    let name = path.as_str().rsplit('/').next().unwrap_or("artifact");
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_DISPOSITION, disposition(name));
    unreachable_by_script(headers);
    headers.insert(
        "x-checksum-sha256",
        HeaderValue::from_str(&file.sha256).unwrap_or_else(|_| HeaderValue::from_static("")),
    );
    Ok(response)
}
