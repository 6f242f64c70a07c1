//! The accounts store: sessions and personal access tokens, whichever backend holds them.

use super::{postgres, sqlite};
use crate::db::{Conn, backend};
use crate::domain::user::AccessToken;
use crate::error::Result;

pub async fn insert_session(
    conn: Conn<'_>,
    id_hash: &str,
    username: &str,
    now: i64,
    expires_at: i64,
) -> Result<()> {
    backend!(conn, insert_session(id_hash, username, now, expires_at))
}

/// The user of a session that has not expired at `now`.
pub async fn session_user(conn: Conn<'_>, id_hash: &str, now: i64) -> Result<Option<String>> {
    backend!(conn, session_user(id_hash, now))
}

pub async fn delete_session(conn: Conn<'_>, id_hash: &str) -> Result<()> {
    backend!(conn, delete_session(id_hash))
}

pub async fn delete_expired_sessions(conn: Conn<'_>, now: i64) -> Result<()> {
    backend!(conn, delete_expired_sessions(now))
}

/// A new token; returns its id.
pub async fn insert_token(
    conn: Conn<'_>,
    username: &str,
    description: &str,
    token_hash: &str,
    now: i64,
) -> Result<i64> {
    backend!(conn, insert_token(username, description, token_hash, now))
}

/// The token whose secret hashes to `token_hash`, revoked or not.
pub async fn token_by_hash(conn: Conn<'_>, token_hash: &str) -> Result<Option<AccessToken>> {
    backend!(conn, token_by_hash(token_hash))
}

pub async fn token(conn: Conn<'_>, id: i64) -> Result<Option<AccessToken>> {
    backend!(conn, token(id))
}

/// A user's tokens, newest first.
pub async fn tokens_of(conn: Conn<'_>, username: &str) -> Result<Vec<AccessToken>> {
    backend!(conn, tokens_of(username))
}

pub async fn touch_token(conn: Conn<'_>, id: i64, now: i64) -> Result<()> {
    backend!(conn, touch_token(id, now))
}

pub async fn revoke_token(conn: Conn<'_>, id: i64, by: &str, cause: &str, now: i64) -> Result<()> {
    backend!(conn, revoke_token(id, by, cause, now))
}
