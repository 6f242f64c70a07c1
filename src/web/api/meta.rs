//! `/api/version` and `/api/health`.

use axum::Json;
use serde_json::{Value, json};

use crate::web::auth::Credential;
use crate::web::routes::Routes;

/// The GoCD API level ferrocd follows; GoCD clients read it to pick endpoints.
pub const GOCD_VERSION: &str = "25.1.0";

pub fn router() -> Routes {
    Routes::new()
        .get("/version", Credential::User, version)
        .get("/health", Credential::Probe, health)
}

async fn version() -> Json<Value> {
    let commit = option_env!("FERROCD_GIT_SHA").unwrap_or("");
    Json(json!({
        "version": GOCD_VERSION,
        "full_version": format!("{GOCD_VERSION} (ferrocd {})", env!("CARGO_PKG_VERSION")),
        "git_sha": commit,
        "commit_url": "",
    }))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}
