//! The materials store's statements, the same on SQLite and PostgreSQL (`sqlite.rs`, `postgres.rs`
//! compile this file once each): every statement that touches `materials` and `modifications`.
//! Binds are `$1, $2, …` in order of first appearance, as in the other stores.

use super::Connection;
use sqlx::types::Json;

use crate::domain::material::Modification;
use crate::error::Result;
use crate::materials::store::MaterialRow;

type Row = (
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
);

fn row((fingerprint, url, branch, last_revision, last_polled_at, error): Row) -> MaterialRow {
    MaterialRow {
        fingerprint,
        url,
        branch,
        last_revision,
        last_polled_at,
        error,
    }
}

pub async fn all(conn: &mut Connection) -> Result<Vec<MaterialRow>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT fingerprint, url, branch, last_revision, last_polled_at, error FROM materials \
         ORDER BY url, branch",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(row).collect())
}

pub async fn one(conn: &mut Connection, fingerprint: &str) -> Result<Option<MaterialRow>> {
    let found: Option<Row> = sqlx::query_as(
        "SELECT fingerprint, url, branch, last_revision, last_polled_at, error FROM materials \
         WHERE fingerprint = $1",
    )
    .bind(fingerprint)
    .fetch_optional(conn)
    .await?;
    Ok(found.map(row))
}

pub async fn last_revision(conn: &mut Connection, fingerprint: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT last_revision FROM materials WHERE fingerprint = $1")
            .bind(fingerprint)
            .fetch_optional(conn)
            .await?
            .flatten(),
    )
}

pub async fn record_revision(
    conn: &mut Connection,
    row: &MaterialRow,
    known: Option<&str>,
    modifications: &[Modification],
) -> Result<bool> {
    let recorded = sqlx::query(
        "INSERT INTO materials (fingerprint, url, branch, last_revision, last_polled_at, error) \
         VALUES ($1, $2, $3, $4, $5, NULL) \
         ON CONFLICT (fingerprint) DO UPDATE SET url = $2, branch = $3, last_revision = $4, \
         last_polled_at = $5, error = NULL \
         WHERE materials.last_revision IS NOT DISTINCT FROM $6",
    )
    .bind(&row.fingerprint)
    .bind(&row.url)
    .bind(&row.branch)
    .bind(&row.last_revision)
    .bind(row.last_polled_at)
    .bind(known)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0;
    if !recorded {
        return Ok(false);
    }
    for m in modifications {
        sqlx::query(
            "INSERT INTO modifications (fingerprint, revision, author, committed_at, message, files) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (fingerprint, revision) DO NOTHING",
        )
        .bind(&row.fingerprint)
        .bind(&m.revision)
        .bind(&m.author)
        .bind(m.time)
        .bind(&m.message)
        .bind(Json(&m.files))
        .execute(&mut *conn)
        .await?;
    }
    Ok(true)
}

pub async fn record_error(conn: &mut Connection, row: &MaterialRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO materials (fingerprint, url, branch, last_polled_at, error) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (fingerprint) DO UPDATE SET url = $2, branch = $3, last_polled_at = $4, \
         error = $5",
    )
    .bind(&row.fingerprint)
    .bind(&row.url)
    .bind(&row.branch)
    .bind(row.last_polled_at)
    .bind(&row.error)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn first_after(
    conn: &mut Connection,
    fingerprint: &str,
    revision: &str,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT revision FROM modifications WHERE fingerprint = $1 AND id > \
         (SELECT id FROM modifications WHERE fingerprint = $1 AND revision = $2) \
         ORDER BY id LIMIT 1",
    )
    .bind(fingerprint)
    .bind(revision)
    .fetch_optional(conn)
    .await?)
}

pub async fn commit_of(
    conn: &mut Connection,
    fingerprint: &str,
    revision: &str,
) -> Result<Option<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT author, message FROM modifications WHERE fingerprint = $1 AND revision = $2",
    )
    .bind(fingerprint)
    .bind(revision)
    .fetch_optional(conn)
    .await?)
}

pub async fn errors(conn: &mut Connection) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT fingerprint, error FROM materials WHERE error IS NOT NULL ORDER BY fingerprint",
    )
    .fetch_all(conn)
    .await?)
}

pub async fn recent(
    conn: &mut Connection,
    fingerprint: &str,
    limit: i64,
) -> Result<Vec<Modification>> {
    let rows: Vec<ModificationRow> = sqlx::query_as(
        "SELECT revision, author, committed_at, message, files FROM modifications \
         WHERE fingerprint = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(fingerprint)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(modification).collect())
}

/// A modification as the table holds it: revision, author, time, message, files.
type ModificationRow = (String, String, i64, String, Json<Vec<String>>);

fn modification((revision, author, time, message, files): ModificationRow) -> Modification {
    Modification {
        revision,
        author,
        time,
        message,
        files: files.0,
    }
}

pub async fn between(
    conn: &mut Connection,
    fingerprint: &str,
    from: &str,
    to: &str,
) -> Result<Vec<Modification>> {
    let rows: Vec<ModificationRow> = sqlx::query_as(
        "SELECT revision, author, committed_at, message, files FROM modifications \
         WHERE fingerprint = $1 AND id <= (SELECT id FROM modifications WHERE fingerprint = $1 AND revision = $3) \
         AND id >= COALESCE((SELECT id FROM modifications WHERE fingerprint = $1 AND revision = $2), \
         (SELECT id FROM modifications WHERE fingerprint = $1 AND revision = $3)) \
         ORDER BY id DESC LIMIT 100",
    )
    .bind(fingerprint)
    .bind(from)
    .bind(to)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(modification).collect())
}
