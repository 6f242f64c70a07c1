//! `GET /api/admin/audit`: who did what, newest first, for admins.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiQuery;
use crate::AppState;
use crate::error::Result;
use crate::web::auth::Credential;
use crate::web::format_time;
use crate::web::routes::Routes;

pub fn router() -> Routes {
    Routes::new().get("/admin/audit", Credential::Admin, audit)
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    offset: i64,
    #[serde(default = "default_page_size")]
    page_size: i64,
}

fn default_page_size() -> i64 {
    50
}

async fn audit(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Value>> {
    let entries = state.audit.page(page.offset, page.page_size).await?;
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|e| json!({"at": format_time(e.at), "actor": e.actor, "action": e.action, "target": e.target}))
        .collect();
    Ok(Json(json!({ "entries": entries })))
}
