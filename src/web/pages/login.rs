//! The login and logout pages (GoCD's look: a card in the middle of the page). A successful
//! login sets the session cookie (`HttpOnly; SameSite=Lax`, `Secure` behind an HTTPS proxy we
//! trust) and returns to the page the person first asked for; only a path on this server is
//! followed, so the login page cannot be used to send someone elsewhere.

use axum::extract::{Query, State};
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{Section, page};
use crate::AppState;
use crate::accounts::SESSION_LIFETIME;
use crate::error::Error;
use crate::web::auth::{
    Credential, SESSION_COOKIE, came_over_https, client_address, session_secret,
};
use crate::web::pages::{PageError, PageForm};
use crate::web::routes::Routes;

pub fn router() -> Routes {
    Routes::new()
        .get("/auth/login", Credential::None, login_page)
        // GoCD's address for it, which bookmarks and build monitors' links use.
        .get("/go/auth/login", Credential::None, gocd_login)
        .post("/auth/login", Credential::None, login)
        .post("/auth/logout", Credential::None, logout)
}

#[derive(Deserialize, Default)]
struct LoginQuery {
    next: Option<String>,
}

/// Where to go after logging in: a path on this server, else home.
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.starts_with("/\\")
                && !path.starts_with("/auth/") =>
        {
            path.to_string()
        }
        _ => "/".to_string(),
    }
}

async fn gocd_login(uri: axum::http::Uri) -> Response {
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    redirect(&format!("/auth/login{query}"), None)
}

async fn login_page(State(state): State<AppState>, Query(query): Query<LoginQuery>) -> Markup {
    login_form(&state, &local_path(query.next.as_deref()), None)
}

fn login_form(state: &AppState, next: &str, problem: Option<&str>) -> Markup {
    let body = html! {
        section.card.login-card {
            h1 { "Sign in to ferrocd" }
            @if !state.accounts.required() {
                p { "This server is open: it has no password file, so nobody needs to sign in." }
                p { a href="/" { "Go to the server" } }
            } @else {
                @if let Some(problem) = problem {
                    p.login-error role="alert" { (problem) }
                }
                form #login-form method="post" action="/auth/login" {
                    input type="hidden" name="next" value=(next);
                    label for="username" { "Username" }
                    input #username type="text" name="username" autocomplete="username" required autofocus;
                    label for="password" { "Password" }
                    input #password type="password" name="password" autocomplete="current-password" required;
                    button.btn.approve type="submit" { "Sign in" }
                }
            }
        }
    };
    page(None, "Sign in", Section::None, &[], body)
}

#[derive(Deserialize, Default)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    parts: Parts,
    PageForm(form): PageForm<LoginForm>,
) -> Response {
    let next = local_path(form.next.as_deref());
    let from = client_address(&state, &parts.extensions, &parts.headers);
    let user = match state
        .accounts
        .check_password(form.username.trim(), &form.password, from)
        .await
    {
        Ok(user) => user,
        Err(error) => {
            let status = match error {
                Error::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
                Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                _ => return PageError(error).into_response(),
            };
            let mut response = (
                status,
                login_form(&state, &next, Some(&error.public_message())),
            )
                .into_response();
            if let Error::TooManyRequests { retry_after, .. } = error {
                response
                    .headers_mut()
                    .insert("retry-after", retry_after.into());
            }
            return response;
        }
    };
    if !state.accounts.required() {
        return redirect(&next, None);
    }
    let secret = match state.accounts.start_session(&user).await {
        Ok(secret) => secret,
        Err(error) => return PageError(error).into_response(),
    };
    let secure = if came_over_https(&state, &parts) {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        SESSION_LIFETIME.as_secs()
    );
    redirect(&next, Some(cookie))
}

async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(secret) = session_secret(&headers)
        && let Err(error) = state.accounts.end_session(secret).await
    {
        return PageError(error).into_response();
    }
    let expired = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0");
    redirect("/auth/login", Some(expired))
}

fn redirect(to: &str, cookie: Option<String>) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(to) {
        headers.insert(LOCATION, location);
    }
    if let Some(cookie) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_path_on_this_server_is_followed_after_login() {
        assert_eq!(local_path(Some("/agents?x=1")), "/agents?x=1");
        for elsewhere in [
            "https://evil.example",
            "//evil.example",
            "/\\evil.example",
            "agents",
            "/auth/logout",
        ] {
            assert_eq!(local_path(Some(elsewhere)), "/", "{elsewhere}");
        }
        assert_eq!(local_path(None), "/");
    }
}
