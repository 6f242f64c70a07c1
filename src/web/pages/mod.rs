//! Server-rendered pages: one file per page, holding the page, its fragments and its stream.

pub mod about;
pub mod agents;
pub mod build;
pub mod layout;
pub mod login;
pub mod runs;

use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use crate::error::Error;
use crate::web::auth::Credential;
use crate::web::routes::Routes;

async fn home() -> Redirect {
    Redirect::to("/agents")
}

pub fn router() -> Routes {
    Routes::new()
        // The dashboard comes with pipelines; until then the agents page is home.
        .get("/", Credential::User, home)
        .get("/go", Credential::User, home)
        .merge(login::router())
        .merge(agents::router())
        .merge(about::router())
        .merge(runs::router())
        .merge(build::router())
}

/// An error on a page a person opened: the same status as the API would answer, shown as a
/// page in the site's shell rather than as JSON.
pub struct PageError(pub Error);

pub type PageResult<T> = std::result::Result<T, PageError>;

impl From<Error> for PageError {
    fn from(error: Error) -> Self {
        PageError(error)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if status.is_server_error() {
            tracing::error!(error = %self.0, "page failed");
        }
        let title = status.canonical_reason().unwrap_or("Error");
        let body = html! {
            div.page-title { h1 { (title) } }
            section.card.error-page {
                p { (self.0.public_message()) }
                p { a href="/agents" { "Back to the agents" } }
            }
        };
        (
            status,
            layout::page(None, title, layout::Section::None, &[], body),
        )
            .into_response()
    }
}

/// A fragment as sent in an event: a raw `\r` (from a hostname, say) is written as `&#13;`,
/// so the HTML a browser swaps in says exactly what the full page says.
pub fn fragment(markup: maud::Markup) -> String {
    markup.into_string().replace('\r', "&#13;")
}
