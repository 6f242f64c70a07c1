//! `GET /api/materials`: every git material of the config, one per repository and branch,
//! with the pipelines that use it and its last poll (credentials removed).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::Result;
use crate::web::auth::Credential::User;
use crate::web::format_time;
use crate::web::routes::Routes;

pub fn router() -> Routes {
    Routes::new().get("/materials", User, list)
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>> {
    let materials: Vec<Value> = state
        .materials
        .list()
        .await?
        .into_iter()
        .map(|m| {
            let mut material = json!({
                "fingerprint": m.fingerprint,
                "type": "git",
                "url": m.url,
                "branch": m.branch,
                "pipelines": m.pipelines,
                "last_revision": m.last_revision,
                "last_polled_at": m.last_polled_at.map(format_time),
            });
            if let Some(error) = m.error {
                material["error"] = json!(error);
            }
            material
        })
        .collect();
    Ok(Json(json!({ "materials": materials })))
}
