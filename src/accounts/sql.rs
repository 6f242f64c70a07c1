//! The accounts store's statements, the same on SQLite and PostgreSQL (`sqlite.rs`, `postgres.rs`
//! compile this file once each): every statement that touches `sessions` and `access_tokens`.
//! Binds are `$1, $2, …` in order of first appearance, so they read the same on PostgreSQL.

use super::Connection;

use crate::domain::user::AccessToken;
use crate::error::Result;

pub async fn insert_session(
    c: &mut Connection,
    id_hash: &str,
    username: &str,
    now: i64,
    expires_at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sessions (id_hash, username, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(id_hash)
    .bind(username)
    .bind(now)
    .bind(expires_at)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn session_user(c: &mut Connection, id_hash: &str, now: i64) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT username FROM sessions WHERE id_hash = $1 AND expires_at > $2")
            .bind(id_hash)
            .bind(now)
            .fetch_optional(c)
            .await?,
    )
}

pub async fn delete_session(c: &mut Connection, id_hash: &str) -> Result<()> {
    sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
        .bind(id_hash)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn delete_expired_sessions(c: &mut Connection, now: i64) -> Result<()> {
    sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
        .bind(now)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn insert_token(
    c: &mut Connection,
    username: &str,
    description: &str,
    token_hash: &str,
    now: i64,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO access_tokens (username, description, token_hash, created_at) \
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(username)
    .bind(description)
    .bind(token_hash)
    .bind(now)
    .fetch_one(c)
    .await?)
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: i64,
    username: String,
    description: String,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
    revoked_by: Option<String>,
    revoke_cause: Option<String>,
}

impl From<TokenRow> for AccessToken {
    fn from(row: TokenRow) -> AccessToken {
        AccessToken {
            id: row.id,
            username: row.username,
            description: row.description,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            revoked_at: row.revoked_at,
            revoked_by: row.revoked_by,
            revoke_cause: row.revoke_cause,
        }
    }
}

/// The columns of an [`AccessToken`], as a literal to build statements with.
macro_rules! token_columns {
    () => {
        "id, username, description, created_at, last_used_at, revoked_at, revoked_by, revoke_cause"
    };
}

pub async fn token_by_hash(c: &mut Connection, token_hash: &str) -> Result<Option<AccessToken>> {
    let row: Option<TokenRow> = sqlx::query_as(concat!(
        "SELECT ",
        token_columns!(),
        " FROM access_tokens WHERE token_hash = $1"
    ))
    .bind(token_hash)
    .fetch_optional(c)
    .await?;
    Ok(row.map(AccessToken::from))
}

pub async fn token(c: &mut Connection, id: i64) -> Result<Option<AccessToken>> {
    let row: Option<TokenRow> = sqlx::query_as(concat!(
        "SELECT ",
        token_columns!(),
        " FROM access_tokens WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(c)
    .await?;
    Ok(row.map(AccessToken::from))
}

pub async fn tokens_of(c: &mut Connection, username: &str) -> Result<Vec<AccessToken>> {
    let rows: Vec<TokenRow> = sqlx::query_as(concat!(
        "SELECT ",
        token_columns!(),
        " FROM access_tokens WHERE username = $1 ORDER BY id DESC"
    ))
    .bind(username)
    .fetch_all(c)
    .await?;
    Ok(rows.into_iter().map(AccessToken::from).collect())
}

pub async fn touch_token(c: &mut Connection, id: i64, now: i64) -> Result<()> {
    sqlx::query("UPDATE access_tokens SET last_used_at = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn revoke_token(
    c: &mut Connection,
    id: i64,
    by: &str,
    cause: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE access_tokens SET revoked_at = $1, revoked_by = $2, revoke_cause = $3 \
         WHERE id = $4 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(by)
    .bind(cause)
    .bind(id)
    .execute(c)
    .await?;
    Ok(())
}
