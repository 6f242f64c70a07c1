//! The audit store on SQLite: every statement that touches `audit`.

use sqlx::SqliteConnection;

use crate::domain::audit::AuditEntry;
use crate::error::Result;

pub async fn insert(c: &mut SqliteConnection, entry: &AuditEntry) -> Result<()> {
    sqlx::query("INSERT INTO audit (at, actor, action, target) VALUES ($1, $2, $3, $4)")
        .bind(entry.at)
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.target)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn page(c: &mut SqliteConnection, offset: i64, limit: i64) -> Result<Vec<AuditEntry>> {
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
