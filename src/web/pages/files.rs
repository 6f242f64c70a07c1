//! A job's artifact files for people and scripts: `/go/files/{pipeline}/{pc}/{stage}/{sc}/{job}/{path}`
//! (GoCD's path, which scripts using `GO_SERVER_URL` know) and the same under `/files/…`.
//! Agent-written files are never served as active content from our origin (they would run
//! with the viewer's session): every answer is an attachment, `nosniff`, with a sandboxing
//! Content-Security-Policy. A re-run job's copy serves its original's files. `…/{job}.json`
//! lists them, as GoCD does.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::domain::artifact::ArtifactPath;
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
    attachment(&state, build_id, &path).await
}

/// Artifact `path` of `build_id`, streamed as a download that never runs in our origin.
pub async fn attachment(state: &AppState, build_id: i64, path: &ArtifactPath) -> Result<Response> {
    let (file, on_disk) = state.artifacts.file(build_id, path).await?;
    let opened = tokio::fs::File::open(&on_disk)
        .await
        .map_err(|e| Error::NotFound(format!("artifact {path} is gone: {e}")))?;
    let name = path.as_str().rsplit('/').next().unwrap_or("artifact");
    let disposition = format!(
        "attachment; filename=\"{}\"",
        name.replace(['"', '\\'], "_")
    );
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(opened)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(file.size.max(0) as u64),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition)
            .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    headers.insert(
        "x-checksum-sha256",
        HeaderValue::from_str(&file.sha256).unwrap_or_else(|_| HeaderValue::from_static("")),
    );
    Ok(response)
}
