//! HTTP: the accept loop (`serve`), the router, its middleware, and how errors become
//! responses.

pub mod api;
pub mod assets;
pub mod auth;
pub mod cctray;
pub mod gocd_media;
pub mod hosts;
pub mod live;
pub mod metrics;
pub mod pages;
pub mod rate_limit;
pub mod routes;
pub mod same_origin;
pub mod serve;
pub mod sse;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use serde_json::json;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::AppState;
use crate::error::Error;
use crate::web::routes::{Route, Routes};

/// Milliseconds since the epoch as RFC 3339, e.g. `2026-11-27T19:02:07.123Z` (the API's and
/// the pages' time format).
pub fn format_time(millis: i64) -> String {
    let nanos = i128::from(millis) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// What a page may load and do: only this server's scripts and styles (no inline ones, no
/// eval), no plugins, no framing by anyone.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// The largest request body we read (a console chunk, later, is at most 1 MiB too).
pub const MAX_BODY: usize = 1024 * 1024;

/// Every route, as declared: the API twice (GoCD clients call `/go/api`), pages, assets.
fn routes() -> Routes {
    Routes::new()
        .nest("/api", api::router())
        .nest("/go/api", api::router())
        .merge(pages::router())
        .merge(assets::router())
        .merge(cctray::router())
        .merge(metrics::router())
}

/// What every route answers and the credential it needs (the router is built from it).
pub fn route_table() -> Vec<Route> {
    routes().into_parts().1
}

pub fn router(state: AppState) -> Router {
    let (router, _) = routes().into_parts();
    router
        .layer(DefaultBodyLimit::max(MAX_BODY))
        // Each route's guard (`auth::guard`) finds the state here.
        .layer(Extension(state.clone()))
        .layer(axum::middleware::from_fn(same_origin::refuse_cross_site))
        .layer(axum::middleware::from_fn(error_shapes))
        // Outside the error shapes: GoCD's media type goes on errors too.
        .layer(axum::middleware::from_fn(gocd_media::media_type))
        // No page may be framed (a framed Delete button could be clicked for the viewer), no
        // answer sniffed into something active, and a page runs only our own files.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(TraceLayer::new_for_http())
        // Outermost: every answer is counted, the refusals of the layers above too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// Every error comes in the shape its caller reads: JSON `{"message"}` from the API, a page
/// from the site. Ours already do; axum's own rejections (a path that is not UTF-8, a query
/// that does not parse, a method a route does not answer, a page that does not exist) come
/// as plain text or nothing, and are reshaped here, keeping their status and headers.
async fn error_shapes(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = request.uri().path();
    let api = path.starts_with("/api/") || path.starts_with("/go/api/") || path == "/api";
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let shaped = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.starts_with("application/json")
                || t.starts_with("text/html")
                || t.starts_with("text/event-stream")
        });
    if shaped {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let reshaped = if api {
        (status, Json(json!({ "message": message }))).into_response()
    } else {
        pages::error_page(status, &message)
    };
    let (new_parts, body) = reshaped.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in new_parts.headers.iter() {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, body)
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) | Error::ConsoleGap { .. } => StatusCode::CONFLICT,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Unprocessable(_) | Error::InvalidConfig(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::MisdirectedRequest(_) => StatusCode::MISDIRECTED_REQUEST,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Database(error) if database_unreachable(error) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Database(_) | Error::Migrate(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told: the message for its own mistakes, nothing internal otherwise.
    pub fn public_message(&self) -> String {
        match self {
            Error::Database(error) if database_unreachable(error) => {
                "the database is unavailable; try again shortly".to_string()
            }
            Error::Database(_) | Error::Migrate(_) => "internal server error".to_string(),
            other => other.to_string(),
        }
    }
}

/// The database cannot be reached (PostgreSQL restarting, the network to it down): the server
/// is fine and the request may be sent again once the database is back, so a 503, not a 500.
fn database_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Connection exceptions (08…) and an operator's shutdown or restart (57P01–57P03).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// `{"message": "…"}` with the fitting status, as GoCD answers.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        // A refusal at a limit is the server working as meant, and a flood of them must not
        // flood the log too; only internal failures are errors.
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "request failed");
        } else if matches!(self, Error::Database(_)) {
            tracing::warn!(error = %self, "request failed: the database is unavailable");
        }
        let body = match &self {
            // The agent resends from the stored length, so it is a field, not just prose.
            Error::ConsoleGap { stored } => {
                json!({ "message": self.public_message(), "offset": stored })
            }
            // Scripts fix configs from the list: file, line, key path and message each.
            Error::InvalidConfig(issues) => {
                json!({ "message": self.public_message(), "errors": issues })
            }
            _ => json!({ "message": self.public_message() }),
        };
        let mut response = (status, Json(body)).into_response();
        if let Error::ConsoleGap { stored } = &self {
            response
                .headers_mut()
                .insert("x-console-length", (*stored).into());
        }
        if let Error::TooManyRequests { retry_after, .. } = &self {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, (*retry_after).into());
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
