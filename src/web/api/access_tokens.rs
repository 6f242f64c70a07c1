//! Personal access tokens, in GoCD's `/go/api/current_user/access_tokens` shape: each person
//! manages their own; the secret is in the answer to its creation only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiJson;
use crate::AppState;
use crate::domain::user::AccessToken;
use crate::error::{Error, Result};
use crate::web::auth::{Credential, CurrentUser};
use crate::web::format_time;
use crate::web::routes::Routes;

pub fn router() -> Routes {
    Routes::new()
        .get("/current_user/access_tokens", Credential::User, list)
        .post("/current_user/access_tokens", Credential::User, create)
        .get("/current_user/access_tokens/{id}", Credential::User, show)
        .post(
            "/current_user/access_tokens/{id}/revoke",
            Credential::User,
            revoke,
        )
}

pub fn token_json(token: &AccessToken) -> Value {
    let time = |t: Option<i64>| t.map(format_time);
    json!({
        "id": token.id,
        "description": token.description,
        "username": token.username,
        "revoked": token.revoked(),
        "revoked_by": token.revoked_by,
        "revoked_at": time(token.revoked_at),
        "revoke_cause": token.revoke_cause,
        "created_at": format_time(token.created_at),
        "last_used_at": time(token.last_used_at),
    })
}

fn token_id(raw: &str) -> Result<i64> {
    raw.parse()
        .map_err(|_| Error::NotFound(format!("no access token {raw:?}")))
}

async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> Result<Json<Value>> {
    let tokens = state.accounts.tokens(&user).await?;
    let tokens: Vec<Value> = tokens.iter().map(token_json).collect();
    Ok(Json(json!({ "_embedded": { "access_tokens": tokens } })))
}

#[derive(Deserialize)]
struct NewToken {
    description: String,
}

async fn create(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<Value>)> {
    let (token, secret) = state
        .accounts
        .create_token(&user, &body.description)
        .await?;
    let mut shown = token_json(&token);
    shown["token"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(shown)))
}

async fn show(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let token = state.accounts.token(&user, token_id(&id)?).await?;
    Ok(Json(token_json(&token)))
}

#[derive(Deserialize, Default)]
struct Revoke {
    #[serde(default)]
    revoke_cause: String,
}

async fn revoke(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Revoke>,
) -> Result<Json<Value>> {
    let token = state
        .accounts
        .revoke_token(&user, token_id(&id)?, &body.revoke_cause)
        .await?;
    Ok(Json(token_json(&token)))
}
