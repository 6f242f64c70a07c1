//! The materials store: what the materials context asks of the database, whichever backend
//! it is. Each function hands its connection to the same-named function of `sqlite.rs`.

use super::{postgres, sqlite};
use crate::db::{Conn, backend};
use crate::domain::material::Modification;
use crate::error::Result;

/// A polled material as stored: the last poll's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct MaterialRow {
    pub fingerprint: String,
    pub url: String,
    pub branch: String,
    pub last_revision: Option<String>,
    pub last_polled_at: Option<i64>,
    pub error: Option<String>,
}

pub async fn all(conn: Conn<'_>) -> Result<Vec<MaterialRow>> {
    backend!(conn, all())
}

/// One material's row, if it was ever polled.
pub async fn one(conn: Conn<'_>, fingerprint: &str) -> Result<Option<MaterialRow>> {
    backend!(conn, one(fingerprint))
}

pub async fn last_revision(conn: Conn<'_>, fingerprint: &str) -> Result<Option<String>> {
    backend!(conn, last_revision(fingerprint))
}

/// A poll that worked: the head it found and the commits new to it, stored only if the
/// revision stored is still `known`, the one the poll started from. Answers whether it was:
/// `false` means another poll (on this node or another) recorded a revision meanwhile.
pub async fn record_revision(
    conn: Conn<'_>,
    row: &MaterialRow,
    known: Option<&str>,
    modifications: &[Modification],
) -> Result<bool> {
    backend!(conn, record_revision(row, known, modifications))
}

/// A poll that failed: its error, the last good revision kept.
pub async fn record_error(conn: Conn<'_>, row: &MaterialRow) -> Result<()> {
    backend!(conn, record_error(row))
}

/// The revision of the first commit found after `revision` (the oldest new one), if known.
pub async fn first_after(
    conn: Conn<'_>,
    fingerprint: &str,
    revision: &str,
) -> Result<Option<String>> {
    backend!(conn, first_after(fingerprint, revision))
}

/// Who committed `revision` and its message, if a poll read it.
pub async fn commit_of(
    conn: Conn<'_>,
    fingerprint: &str,
    revision: &str,
) -> Result<Option<(String, String)>> {
    backend!(conn, commit_of(fingerprint, revision))
}

/// Every material whose last poll failed: fingerprint and error.
pub async fn errors(conn: Conn<'_>) -> Result<Vec<(String, String)>> {
    backend!(conn, errors())
}

/// The newest `limit` commits polled of `fingerprint`, newest first.
pub async fn recent(conn: Conn<'_>, fingerprint: &str, limit: i64) -> Result<Vec<Modification>> {
    backend!(conn, recent(fingerprint, limit))
}

/// The commits from `from` to `to` as polled, newest first (just `to`'s if `from` is unknown).
pub async fn between(
    conn: Conn<'_>,
    fingerprint: &str,
    from: &str,
    to: &str,
) -> Result<Vec<Modification>> {
    backend!(conn, between(fingerprint, from, to))
}
