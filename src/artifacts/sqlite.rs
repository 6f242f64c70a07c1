//! The artifacts store on SQLite.

use sqlx::SqliteConnection;

use crate::domain::artifact::ArtifactFile;
use crate::error::Result;

pub async fn files(conn: &mut SqliteConnection, build_id: i64) -> Result<Vec<ArtifactFile>> {
    let rows: Vec<(String, i64, String, i64)> = sqlx::query_as(
        "SELECT path, size, sha256, created_at FROM artifacts WHERE build_id = $1 ORDER BY path",
    )
    .bind(build_id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(path, size, sha256, created_at)| ArtifactFile {
            path,
            size,
            sha256,
            created_at,
        })
        .collect())
}

pub async fn insert(
    conn: &mut SqliteConnection,
    build_id: i64,
    folded_path: &str,
    file: &ArtifactFile,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO artifacts (build_id, path, folded_path, size, sha256, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(build_id)
    .bind(&file.path)
    .bind(folded_path)
    .bind(file.size)
    .bind(&file.sha256)
    .bind(file.created_at)
    .execute(conn)
    .await?;
    Ok(())
}
