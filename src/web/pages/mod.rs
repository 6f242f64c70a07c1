//! Server-rendered pages: one file per page, holding the page, its fragments and its stream.

pub mod about;
pub mod access_tokens;
pub mod agents;
pub mod build;
pub mod build_cause;
pub mod dashboard;
pub mod files;
pub mod history;
pub mod layout;
pub mod login;
pub mod runs;
pub mod stage;

use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use crate::error::Error;
use crate::web::auth::Credential;
use crate::web::routes::Routes;

async fn home() -> Redirect {
    Redirect::to("/pipelines")
}

pub fn router() -> Routes {
    Routes::new()
        .get("/", Credential::User, home)
        .get("/go", Credential::User, home)
        .merge(login::router())
        .merge(access_tokens::router())
        .merge(agents::router())
        .merge(dashboard::router())
        .merge(history::router())
        .merge(build_cause::router())
        .merge(files::router())
        .merge(stage::router())
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
        let mut response = error_page(status, &self.0.public_message());
        if let Error::TooManyRequests { retry_after, .. } = &self.0 {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, (*retry_after).into());
        }
        response
    }
}

/// A page saying what went wrong, with `status`.
pub fn error_page(status: axum::http::StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        div.page-title { h1 { (title) } }
        section.card.error-page {
            p { (message) }
            p { a href="/pipelines" { "Back to the pipelines" } }
        }
    };
    (
        status,
        layout::page(None, title, layout::Section::None, &[], body),
    )
        .into_response()
}

/// A page form's fields (`application/x-www-form-urlencoded`, as a browser posts a form):
/// another type is a 415 page, unreadable fields a 422 page.
pub struct PageForm<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for PageForm<T> {
    type Rejection = PageError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, PageError> {
        let is_form = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !is_form {
            return Err(PageError(Error::UnsupportedMediaType(
                "Content-Type: a page form is sent as application/x-www-form-urlencoded".into(),
            )));
        }
        let body = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| PageError(Error::BadRequest(rejection.body_text())))?;
        serde_urlencoded::from_bytes(&body)
            .map(PageForm)
            .map_err(|e| PageError(Error::Unprocessable(format!("the form: {e}"))))
    }
}

/// A fragment as sent in an event: a raw `\r` (from a hostname, say) is written as `&#13;`,
/// so the HTML a browser swaps in says exactly what the full page says.
pub fn fragment(markup: maud::Markup) -> String {
    markup.into_string().replace('\r', "&#13;")
}
