//! The JSON API, mounted at both `/api` and `/go/api`. One file per resource.

mod access_tokens;
mod agents;
mod artifacts;
mod audit;
mod config;
pub mod events;
mod gocd_pipelines;
mod jobs;
mod materials;
mod meta;
mod pipelines;
mod webhooks;

pub use agents::path_uuid as agent_uuid;
pub use jobs::build_id;
pub use meta::GOCD_VERSION;
pub use pipelines::pipeline_counter;
mod remoting;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, Uri};
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};
use serde_json::Value;
use uuid::Uuid;

use crate::error::Error;
use crate::web::routes::Routes;

pub fn router() -> Routes {
    Routes::new()
        .merge(access_tokens::router())
        .merge(artifacts::router())
        .merge(agents::router())
        .merge(audit::router())
        .merge(config::router())
        .merge(pipelines::router())
        .merge(materials::router())
        .merge(webhooks::router())
        .merge(gocd_pipelines::router())
        .merge(remoting::router())
        .merge(events::router())
        .merge(jobs::router())
        .merge(meta::router())
        .fallback(not_found)
}

async fn not_found(uri: Uri) -> Error {
    Error::NotFound(format!("no API route {}", uri.path()))
}

/// A JSON body, whatever `Content-Type` the client sent (GoCD clients and agents differ).
/// Not JSON → 400; a missing or mistyped field → 422 naming it; too large → 413.
/// An empty body reads as `{}`, so bodiless `PUT …/enable` style calls work.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let says_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_media_type);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge(format!(
                    "the request body is larger than {} bytes",
                    super::MAX_BODY
                ))
            } else {
                Error::BadRequest(rejection.body_text())
            }
        })?;
        let value: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Default::default())
        } else if !says_json {
            // A page on another site may send a body without a preflight only as text/plain,
            // a form, or with no type at all: none of them reaches an API call.
            return Err(Error::UnsupportedMediaType(
                "Content-Type: a request body must be sent as application/json".into(),
            ));
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| Error::BadRequest(format!("the body is not valid JSON: {e}")))?
        };
        if !value.is_object() {
            return Err(Error::Unprocessable(
                "the body must be a JSON object".into(),
            ));
        }
        serde_path_to_error::deserialize(value)
            .map(ApiJson)
            .map_err(|e| {
                let path = e.path().to_string();
                if path == "." {
                    Error::Unprocessable(e.inner().to_string())
                } else {
                    Error::Unprocessable(format!("{path}: {}", e.inner()))
                }
            })
    }
}

/// `application/json`, or a JSON flavour such as GoCD's `application/vnd.go.cd.v7+json`, with
/// any parameters (`; charset=utf-8`).
fn is_json_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim();
    let essence = essence.to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A query string, whose errors are JSON 422s naming the parameter (axum's own `Query`
/// answers a plain-text 400).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Error> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(ApiQuery)
            .map_err(|e| Error::Unprocessable(format!("{}: {}", e.path(), e.inner())))
    }
}

/// Resources and environments: a JSON array of names or a comma-separated string (GoCD
/// accepts both).
pub fn name_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    use serde::de::Error as _;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.split(',').map(str::to_string).collect())),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                other => Err(D::Error::custom(format!(
                    "expected a name (a string), got {other}"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(D::Error::custom(format!(
            "expected an array of names or a comma-separated string, got {other}"
        ))),
    }
}

/// A uuid from a path or a body; a malformed one names no agent that exists.
pub fn parse_uuid(field: &str, raw: &str) -> Result<Uuid, Error> {
    raw.trim()
        .parse()
        .map_err(|_| Error::Unprocessable(format!("{field}: {raw:?} is not a uuid")))
}
