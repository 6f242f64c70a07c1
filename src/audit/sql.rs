//! The audit store's statements, the same on SQLite and PostgreSQL (`sqlite.rs`, `postgres.rs`
//! compile this file once each): every statement that touches `audit`.

use super::Connection;

use crate::domain::audit::AuditEntry;
use crate::error::Result;

pub async fn insert(c: &mut Connection, entry: &AuditEntry) -> Result<()> {
    sqlx::query("INSERT INTO audit (at, actor, action, target) VALUES ($1, $2, $3, $4)")
        .bind(entry.at)
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.target)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn page(c: &mut Connection, offset: i64, limit: i64) -> Result<Vec<AuditEntry>> {
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT at, actor, action, target FROM audit ORDER BY id DESC LIMIT $1 OFFSET $2",
    )
    .bind(limit)
    .bind(offset)
    .fetch_all(c)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(at, actor, action, target)| AuditEntry {
            at,
            actor,
            action,
            target,
        })
        .collect())
}
