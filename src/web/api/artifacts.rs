//! Artifacts over the API (the artifacts issue, its first part): the agent running a job
//! uploads each file with its SHA-256, streamed (the body is never held whole: it is not
//! under the API's 1 MiB body limit, which only buffered extractors apply); anyone who may
//! read the pages lists a job's files; any agent downloads them (fetch tasks).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::AppState;
use crate::artifacts::Stored;
use crate::domain::artifact::{ArtifactKind, ArtifactPath, Sha256Hex};
use crate::error::{Error, Result};
use crate::web::api::build_id;
use crate::web::auth::{AuthenticatedAgent, Credential};
use crate::web::routes::Routes;

pub fn router() -> Routes {
    Routes::new()
        .put(
            "/builds/{build_id}/artifacts/{*path}",
            Credential::Agent,
            upload,
        )
        .get(
            "/builds/{build_id}/artifacts/{*path}",
            Credential::Agent,
            download,
        )
        .get("/builds/{build_id}/artifacts", Credential::User, list)
}

/// `PUT /api/builds/{id}/artifacts/{path}` with `X-Checksum-SHA256`: 201 stored, 200 the same
/// file again, 409 another file of that name, 422 a bad path or a body that is not what its
/// checksum says, 413 past `--max-artifact-bytes`.
async fn upload(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
    caller: AuthenticatedAgent,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>)> {
    let build_id = build_id(&id)?;
    let path = ArtifactPath::parse(&path).map_err(Error::Unprocessable)?;
    let checksum = headers
        .get("x-checksum-sha256")
        .ok_or_else(|| Error::Unprocessable("X-Checksum-SHA256: the header is required".into()))?
        .to_str()
        .map_err(|_| Error::Unprocessable("X-Checksum-SHA256: not text".into()))
        .and_then(|v| {
            Sha256Hex::parse(v).map_err(|e| Error::Unprocessable(format!("X-Checksum-SHA256: {e}")))
        })?;
    let kind = match headers.get("x-artifact-kind").map(|v| v.to_str()) {
        None => ArtifactKind::Build,
        Some(Ok(v)) if v.eq_ignore_ascii_case("build") => ArtifactKind::Build,
        Some(Ok(v)) if v.eq_ignore_ascii_case("test") => ArtifactKind::Test,
        Some(other) => {
            return Err(Error::Unprocessable(format!(
                "X-Artifact-Kind: {:?} is not build or test",
                other.unwrap_or("(not text)")
            )));
        }
    };
    let stored = state
        .artifacts
        .upload(
            build_id,
            caller.uuid(),
            (&path, kind),
            &checksum,
            body.into_data_stream(),
        )
        .await?;
    let (status, message) = match stored {
        Stored::Created => (StatusCode::CREATED, format!("{path} stored")),
        Stored::Unchanged => (StatusCode::OK, format!("{path} was stored already")),
    };
    Ok((
        status,
        Json(json!({ "message": message, "path": path.as_str() })),
    ))
}

/// `GET /api/builds/{id}/artifacts/{path}`: a file, for an agent's fetch task (any agent:
/// a job may fetch from any pipeline's, as in GoCD).
async fn download(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
    _caller: AuthenticatedAgent,
) -> Result<axum::response::Response> {
    let path = ArtifactPath::parse(&path).map_err(Error::NotFound)?;
    crate::web::pages::files::attachment(&state, build_id(&id)?, &path).await
}

/// `GET /api/builds/{id}/artifacts`: `{"files": [{"path", "size", "sha256"}]}`, in path order.
async fn list(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>> {
    let files = state.artifacts.files(build_id(&id)?).await?;
    Ok(Json(json!({
        "files": files
            .iter()
            .map(|f| json!({"path": f.path, "size": f.size, "sha256": f.sha256, "kind": f.kind}))
            .collect::<Vec<_>>(),
    })))
}
