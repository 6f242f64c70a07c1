//! `/go/about`: GoCD's server-details page; older GoCD clients read the version from it.

use crate::web::pages::PageResult;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use maud::{Markup, html};

use super::layout::{Section, page};
use crate::AppState;
use crate::web::api::GOCD_VERSION;

pub fn router() -> Router<AppState> {
    Router::new().route("/go/about", get(about))
}

async fn about(State(state): State<AppState>) -> PageResult<Markup> {
    let schema = state.db.schema_version().await?;
    let rows = [
        ("Server Version", GOCD_VERSION.to_string()),
        ("ferrocd Version", env!("CARGO_PKG_VERSION").to_string()),
        ("Database schema version", schema.to_string()),
        ("Database", "SQLite (embedded)".to_string()),
    ];
    Ok(page(
        "About",
        Section::None,
        &[],
        html! {
            h1 { "Server details" }
            div.card {
                table.details {
                    @for (name, value) in &rows {
                        tr { td { (name) } td { (value) } }
                    }
                }
            }
        },
    ))
}
