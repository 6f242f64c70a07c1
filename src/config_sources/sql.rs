//! The config sources store's statements, the same on SQLite and PostgreSQL (`sqlite.rs`,
//! `postgres.rs` compile this file once each): every statement that touches
//! `config_documents`.

use super::Connection;
use crate::error::Result;

pub async fn documents(c: &mut Connection) -> Result<Vec<(String, String)>> {
    Ok(
        sqlx::query_as("SELECT name, text FROM config_documents ORDER BY name")
            .fetch_all(c)
            .await?,
    )
}

pub async fn exists(c: &mut Connection, name: &str) -> Result<bool> {
    let found: Option<String> =
        sqlx::query_scalar("SELECT name FROM config_documents WHERE name = $1")
            .bind(name)
            .fetch_optional(c)
            .await?;
    Ok(found.is_some())
}

pub async fn put(c: &mut Connection, name: &str, text: &str, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO config_documents (name, text, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET text = excluded.text, updated_at = excluded.updated_at",
    )
    .bind(name)
    .bind(text)
    .bind(now)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn remove(c: &mut Connection, name: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM config_documents WHERE name = $1")
        .bind(name)
        .execute(c)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn put_node_config(c: &mut Connection, node: &str, hash: &str, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO node_configs (node, config_hash, started_at) VALUES ($1, $2, $3) \
         ON CONFLICT (node) DO UPDATE SET config_hash = excluded.config_hash, \
         started_at = excluded.started_at",
    )
    .bind(node)
    .bind(hash)
    .bind(now)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn node_configs(c: &mut Connection) -> Result<Vec<(String, String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT node, config_hash, started_at FROM node_configs ORDER BY started_at, node",
    )
    .fetch_all(c)
    .await?)
}

pub async fn forget_nodes_but(c: &mut Connection, live: &[String]) -> Result<()> {
    let all: Vec<String> = sqlx::query_scalar("SELECT node FROM node_configs")
        .fetch_all(&mut *c)
        .await?;
    for node in all.iter().filter(|n| !live.contains(n)) {
        sqlx::query("DELETE FROM node_configs WHERE node = $1")
            .bind(node)
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}
