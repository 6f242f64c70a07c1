//! `/go/about`: GoCD's server-details page; older GoCD clients read the version from it.

use crate::web::pages::PageResult;
use axum::extract::State;
use maud::{Markup, html};

use super::layout::{Section, page};
use crate::AppState;
use crate::web::api::GOCD_VERSION;
use crate::web::auth::{Credential, CurrentUser};
use crate::web::routes::Routes;

pub fn router() -> Routes {
    Routes::new().get("/go/about", Credential::User, about)
}

async fn about(
    State(state): State<AppState>,
    CurrentUser(viewer): CurrentUser,
) -> PageResult<Markup> {
    let schema = state.db.schema_version().await?;
    let rows = [
        ("Server Version", GOCD_VERSION.to_string()),
        ("ferrocd Version", env!("CARGO_PKG_VERSION").to_string()),
        ("Database schema version", schema.to_string()),
        ("Database", state.db.backend().name().to_string()),
    ];
    Ok(page(
        Some(&viewer),
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
