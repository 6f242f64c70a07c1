//! Server-rendered pages: one file per page, holding the page, its fragments and its stream.

pub mod about;
pub mod agents;
pub mod build;
pub mod layout;
pub mod runs;

use axum::Router;
use axum::response::Redirect;
use axum::routing::get;

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        // The dashboard comes with pipelines; until then the agents page is home.
        .route("/", get(|| async { Redirect::to("/agents") }))
        .route("/go", get(|| async { Redirect::to("/agents") }))
        .merge(agents::router())
        .merge(about::router())
        .merge(runs::router())
        .merge(build::router())
}

/// A fragment as sent in an event: a raw `\r` (from a hostname, say) is written as `&#13;`,
/// so the HTML a browser swaps in says exactly what the full page says.
pub fn fragment(markup: maud::Markup) -> String {
    markup.into_string().replace('\r', "&#13;")
}
