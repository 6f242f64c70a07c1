//! A job's artifact files for people and scripts: `/go/files/{pipeline}/{pc}/{stage}/{sc}/{job}/{path}`
//! (GoCD's path, which scripts using `GO_SERVER_URL` know) and the same under `/files/…`.
//! Agent-written files are never served as active content from our origin (they would run
//! with the viewer's session): every answer is an attachment, `nosniff`, with a sandboxing
//! Content-Security-Policy. A re-run job's copy serves its original's files.

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

async fn download(
    State(state): State<AppState>,
    Path((pipeline, pc, stage, sc, job, path)): FilePath,
) -> Result<Response> {
    let (pc, sc) = (pipeline_counter(&pc)?, pipeline_counter(&sc)?);
    let path = ArtifactPath::parse(&path).map_err(Error::NotFound)?;
    let view = state.pipelines.stage(&pipeline, pc, &stage, sc).await?;
    let run = view
        .jobs
        .iter()
        .find(|j| j.job_name.eq_ignore_ascii_case(&job))
        .ok_or_else(|| Error::NotFound(format!("no job {job} in {pipeline}/{pc}/{stage}/{sc}")))?;
    let build_id = run.copied_from.unwrap_or(run.build_id);
    let (file, on_disk) = state.artifacts.file(build_id, &path).await?;
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
