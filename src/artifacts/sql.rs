//! The artifacts store's statements, the same on SQLite and PostgreSQL (`sqlite.rs`, `postgres.rs`
//! compile this file once each).

use super::{Connection, dialect};

use sqlx::types::Json;

use crate::domain::artifact::ArtifactFile;
use crate::domain::pipeline_config::ArtifactKind;
use crate::domain::test_report::TestSummary;
use crate::error::{Error, Result};

pub async fn files(conn: &mut Connection, build_id: i64) -> Result<Vec<ArtifactFile>> {
    let rows: Vec<(String, i64, String, i64, String)> = sqlx::query_as(
        "SELECT path, size, sha256, created_at, kind FROM artifacts WHERE build_id = $1 \
         ORDER BY path",
    )
    .bind(build_id)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(path, size, sha256, created_at, kind)| {
            Ok(ArtifactFile {
                path,
                size,
                sha256,
                created_at,
                kind: kind_of(&kind)?,
            })
        })
        .collect()
}

fn kind_of(text: &str) -> Result<ArtifactKind> {
    match text {
        "build" => Ok(ArtifactKind::Build),
        "test" => Ok(ArtifactKind::Test),
        other => Err(Error::Database(sqlx::Error::Decode(
            format!("artifact kind {other:?}").into(),
        ))),
    }
}

fn kind_text(kind: ArtifactKind) -> &'static str {
    match kind {
        ArtifactKind::Build => "build",
        ArtifactKind::Test => "test",
    }
}

pub async fn insert_test_report(
    conn: &mut Connection,
    build_id: i64,
    path: &str,
    summary: &TestSummary,
) -> Result<()> {
    sqlx::query("INSERT INTO test_reports (build_id, path, summary) VALUES ($1, $2, $3)")
        .bind(build_id)
        .bind(path)
        .bind(Json(summary))
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn test_reports(
    conn: &mut Connection,
    build_ids: &[i64],
) -> Result<Vec<(i64, String, TestSummary)>> {
    if build_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64, String, Json<TestSummary>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT build_id, path, summary FROM test_reports \
         WHERE build_id IN ({}) ORDER BY build_id, path",
        dialect::json_ints("$1")
    )))
    .bind(Json(build_ids))
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(b, p, s)| (b, p, s.0)).collect())
}

pub async fn insert(
    conn: &mut Connection,
    build_id: i64,
    folded_path: &str,
    file: &ArtifactFile,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO artifacts (build_id, path, folded_path, size, sha256, created_at, kind) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(build_id)
    .bind(&file.path)
    .bind(folded_path)
    .bind(file.size)
    .bind(&file.sha256)
    .bind(file.created_at)
    .bind(kind_text(file.kind))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn purged_at(conn: &mut Connection, build_id: i64) -> Result<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT purged_at FROM artifact_purges WHERE build_id = $1")
            .bind(build_id)
            .fetch_optional(conn)
            .await?,
    )
}

pub async fn counters_with_files(conn: &mut Connection, pipeline: &str) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT r.pipeline_counter FROM artifacts a \
         JOIN job_runs r ON r.build_id = a.build_id \
         WHERE r.pipeline_name = $1 ORDER BY r.pipeline_counter",
    )
    .bind(pipeline)
    .fetch_all(conn)
    .await?)
}

pub async fn builds_with_files(
    conn: &mut Connection,
    pipeline: &str,
    counter: i64,
) -> Result<Vec<(i64, String)>> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT r.build_id, r.stage_name FROM artifacts a \
         JOIN job_runs r ON r.build_id = a.build_id \
         WHERE r.pipeline_name = $1 AND r.pipeline_counter = $2 ORDER BY r.build_id",
    )
    .bind(pipeline)
    .bind(counter)
    .fetch_all(conn)
    .await?)
}

pub async fn mark_purged(conn: &mut Connection, build_id: i64, now: i64) -> Result<()> {
    sqlx::query("DELETE FROM artifacts WHERE build_id = $1")
        .bind(build_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO artifact_purges (build_id, purged_at) VALUES ($1, $2) \
         ON CONFLICT (build_id) DO NOTHING",
    )
    .bind(build_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn purges(conn: &mut Connection, build_ids: &[i64]) -> Result<Vec<(i64, i64)>> {
    if build_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT build_id, purged_at FROM artifact_purges \
         WHERE build_id IN ({}) ORDER BY build_id",
        dialect::json_ints("$1")
    )))
    .bind(Json(build_ids))
    .fetch_all(conn)
    .await?)
}
