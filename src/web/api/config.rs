//! The pipeline config sources over the API: list them with their pipelines, errors and
//! warnings, store and remove documents of the server's own (GoCD YAML bodies), and read
//! every source again. Files stay the one truth: a stored document is a file in the data dir.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};

use crate::AppState;
use crate::config_sources::{Snapshot, Source, SourceKind};
use crate::domain::material::without_credentials;
use crate::error::{Error, Result};
use crate::web::auth::Credential::{Admin, User};
use crate::web::routes::Routes;

pub fn router() -> Routes {
    Routes::new()
        .get("/config", User, list)
        .get("/config/errors", User, errors)
        .put("/config/{name}", Admin, store)
        .delete("/config/{name}", Admin, delete)
        .post("/admin/config/reload", Admin, reload)
        .get("/pipelines/{name}/config", User, pipeline_config)
}

/// Every source: its kind, its pipelines' names, its errors and warnings.
pub fn sources_json(snapshot: &Snapshot) -> Value {
    let sources: Vec<Value> = snapshot.sources.iter().map(source_json).collect();
    json!({ "sources": sources })
}

fn source_json(source: &Source) -> Value {
    let (kind, name) = match &source.kind {
        SourceKind::File { path } => ("file", path.display().to_string()),
        SourceKind::Api { name } => ("api", name.clone()),
        SourceKind::Repo { url, branch } => {
            ("repo", format!("{}#{branch}", without_credentials(url)))
        }
    };
    let mut json = json!({
        "name": name,
        "kind": kind,
        "file": source.name(),
        "pipelines": source.pipelines().iter().map(|p| &p.name).collect::<Vec<_>>(),
        "environments": source
            .document
            .as_deref()
            .map(|d| d.environments.iter().map(|e| &e.name).collect::<Vec<_>>())
            .unwrap_or_default(),
        "errors": source.errors,
        "warnings": source.warnings(),
    });
    if let (SourceKind::Repo { url, branch }, Some(repo), Value::Object(fields)) =
        (&source.kind, &source.repo, &mut json)
    {
        fields.insert("url".into(), json!(without_credentials(url)));
        fields.insert("branch".into(), json!(branch));
        fields.insert("revision".into(), json!(repo.revision));
        fields.insert(
            "last_parsed_at".into(),
            json!(repo.last_parsed_at.map(crate::web::format_time)),
        );
        fields.insert("broken_revision".into(), json!(repo.broken_revision));
    }
    json
}

async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(sources_json(&state.pipelines.configs().snapshot()))
}

async fn errors(State(state): State<AppState>) -> Json<Value> {
    let snapshot = state.pipelines.configs().snapshot();
    let errors: Vec<Value> = snapshot
        .errors()
        .map(|(source, issue)| {
            let mut error = json!({ "file": source.name() });
            if let (Value::Object(out), Ok(Value::Object(fields))) =
                (&mut error, serde_json::to_value(issue))
            {
                out.extend(fields);
            }
            error
        })
        .collect();
    Json(json!({ "errors": errors }))
}

/// `PUT /api/config/{name}` with a YAML body: 201 new, 200 replaced, 422 with the errors.
async fn store(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>)> {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if !matches!(
        media_type.as_str(),
        "application/x-yaml" | "application/yaml" | "text/yaml" | "text/x-yaml"
    ) {
        return Err(Error::UnsupportedMediaType(
            "Content-Type: a config document is sent as application/x-yaml".into(),
        ));
    }
    let text = std::str::from_utf8(&body)
        .map_err(|e| Error::Unprocessable(format!("the document is not UTF-8: {e}")))?;
    let stored = state.pipelines.configs().store(&name, text).await?;
    let status = if stored.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "message": format!("config document {name} stored"),
            "warnings": stored.warnings,
        })),
    ))
}

async fn delete(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>> {
    state.pipelines.configs().delete(&name).await?;
    Ok(Json(
        json!({ "message": format!("config document {name} removed") }),
    ))
}

async fn reload(State(state): State<AppState>) -> Result<Json<Value>> {
    let snapshot = state.pipelines.configs().reload().await?;
    Ok(Json(sources_json(&snapshot)))
}

/// What the server understood of a pipeline's YAML, params resolved.
async fn pipeline_config(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    let snapshot = state.pipelines.configs().snapshot();
    let pipeline = snapshot
        .pipeline(&name)
        .ok_or_else(|| Error::NotFound(format!("no pipeline named {name}")))?;
    Ok(Json(serde_json::to_value(pipeline).unwrap_or(Value::Null)))
}
