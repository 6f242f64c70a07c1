//! `/access_tokens`: a person's personal access tokens, for scripts and build monitors. A new
//! token's secret is shown on the page that created it, once; any token can be revoked here.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{Section, page};
use super::{PageForm, PageResult};
use crate::AppState;
use crate::domain::user::{AccessToken, User};
use crate::error::Error;
use crate::web::auth::{Credential, CurrentUser};
use crate::web::format_time;
use crate::web::routes::Routes;

pub fn router() -> Routes {
    Routes::new()
        .get("/access_tokens", Credential::User, tokens_page)
        .post("/access_tokens", Credential::User, create)
        .post("/access_tokens/{id}/revoke", Credential::User, revoke)
}

async fn tokens_page(
    State(state): State<AppState>,
    CurrentUser(viewer): CurrentUser,
) -> PageResult<Markup> {
    let tokens = state.accounts.tokens(&viewer).await?;
    Ok(tokens_view(&viewer, &tokens, None))
}

#[derive(Deserialize)]
struct NewToken {
    #[serde(default)]
    description: String,
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(viewer): CurrentUser,
    PageForm(form): PageForm<NewToken>,
) -> PageResult<Response> {
    let (_, secret) = match state
        .accounts
        .create_token(&viewer, &form.description)
        .await
    {
        Ok(created) => created,
        Err(error @ Error::Unprocessable(_)) => {
            let tokens = state.accounts.tokens(&viewer).await?;
            let shown = tokens_view(
                &viewer,
                &tokens,
                Some(Shown::Problem(error.public_message())),
            );
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, shown).into_response());
        }
        Err(error) => return Err(error.into()),
    };
    let tokens = state.accounts.tokens(&viewer).await?;
    Ok((
        StatusCode::CREATED,
        tokens_view(&viewer, &tokens, Some(Shown::Secret(secret))),
    )
        .into_response())
}

#[derive(Deserialize)]
struct RevokeForm {
    #[serde(default)]
    revoke_cause: String,
}

async fn revoke(
    State(state): State<AppState>,
    CurrentUser(viewer): CurrentUser,
    Path(id): Path<String>,
    PageForm(form): PageForm<RevokeForm>,
) -> PageResult<Redirect> {
    let id = id
        .parse()
        .map_err(|_| Error::NotFound(format!("no access token {id:?}")))?;
    state
        .accounts
        .revoke_token(&viewer, id, &form.revoke_cause)
        .await?;
    Ok(Redirect::to("/access_tokens"))
}

/// What the page says above the list after a create.
enum Shown {
    Secret(String),
    Problem(String),
}

fn tokens_view(viewer: &User, tokens: &[AccessToken], shown: Option<Shown>) -> Markup {
    let body = html! {
        div.page-title { h1 { "Personal access tokens" } }
        @match &shown {
            Some(Shown::Secret(secret)) => section.card.token-created role="status" {
                p { strong { "Copy the token now: it is not shown again." } }
                code #new-token { (secret) }
                p.muted { "Send it as " code { "Authorization: Bearer TOKEN" } "." }
            },
            Some(Shown::Problem(problem)) => section.card.token-created role="alert" {
                p.login-error { (problem) }
            },
            None => {}
        }
        section.card.toolbar {
            form #new-token-form method="post" action="/access_tokens" {
                label for="token-description" { "Description" }
                input #token-description type="text" name="description" required
                    placeholder="e.g. build monitor in the hallway" maxlength="1024";
                button.btn.approve type="submit" { "Generate token" }
            }
        }
        section.card.table-card {
            table #tokens-table.details {
                thead { tr { th { "Description" } th { "Created" } th { "Last used" } th { "Status" } th {} } }
                tbody {
                    @if tokens.is_empty() {
                        tr { td colspan="5" { (viewer.name) " has no tokens yet." } }
                    }
                    @for token in tokens {
                        tr #{ "token-" (token.id) } {
                            td { (token.description) }
                            td { (format_time(token.created_at)) }
                            td { (token.last_used_at.map(format_time).unwrap_or_else(|| "never".into())) }
                            td {
                                @if token.revoked() {
                                    span.status.status-disabled { "Revoked" }
                                    @if let Some(cause) = &token.revoke_cause {
                                        @if !cause.is_empty() { " " span.muted { (cause) } }
                                    }
                                } @else {
                                    span.status.status-idle { "Active" }
                                }
                            }
                            td {
                                @if !token.revoked() {
                                    form method="post" action={ "/access_tokens/" (token.id) "/revoke" } {
                                        input type="hidden" name="revoke_cause" value="revoked on the tokens page";
                                        button.btn.small.danger type="submit" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(Some(viewer), "Access tokens", Section::None, &[], body)
}
