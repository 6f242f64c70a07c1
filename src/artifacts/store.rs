//! The artifacts store: what the artifacts context asks of the database, whichever backend
//! it is. Each function hands its connection to the same-named function of `sqlite.rs`.

use super::{postgres, sqlite};
use crate::db::{Conn, backend};
use crate::domain::artifact::ArtifactFile;
use crate::domain::test_report::TestSummary;
use crate::error::Result;

/// A job run's files, in path order.
pub async fn files(conn: Conn<'_>, build_id: i64) -> Result<Vec<ArtifactFile>> {
    backend!(conn, files(build_id))
}

/// Records a complete file.
pub async fn insert(
    conn: Conn<'_>,
    build_id: i64,
    folded_path: &str,
    file: &ArtifactFile,
) -> Result<()> {
    backend!(conn, insert(build_id, folded_path, file))
}

/// Records what the JUnit report `path` of `build_id` says.
pub async fn insert_test_report(
    conn: Conn<'_>,
    build_id: i64,
    path: &str,
    summary: &TestSummary,
) -> Result<()> {
    backend!(conn, insert_test_report(build_id, path, summary))
}

/// The test reports of the runs `build_ids`: (build, path, summary), by build then path.
pub async fn test_reports(
    conn: Conn<'_>,
    build_ids: &[i64],
) -> Result<Vec<(i64, String, TestSummary)>> {
    backend!(conn, test_reports(build_ids))
}

/// When the artifacts of `build_id` were purged, if they were.
pub async fn purged_at(conn: Conn<'_>, build_id: i64) -> Result<Option<i64>> {
    backend!(conn, purged_at(build_id))
}

/// The instances of `pipeline` that still have artifacts, oldest first.
pub async fn counters_with_files(conn: Conn<'_>, pipeline: &str) -> Result<Vec<i64>> {
    backend!(conn, counters_with_files(pipeline))
}

/// The runs of instance `counter` of `pipeline` that have artifacts, with their stage.
pub async fn builds_with_files(
    conn: Conn<'_>,
    pipeline: &str,
    counter: i64,
) -> Result<Vec<(i64, String)>> {
    backend!(conn, builds_with_files(pipeline, counter))
}

/// Forgets `build_id`'s files and records that they were purged.
pub async fn mark_purged(conn: Conn<'_>, build_id: i64, now: i64) -> Result<()> {
    backend!(conn, mark_purged(build_id, now))
}

/// Which of `build_ids` were purged, and when.
pub async fn purges(conn: Conn<'_>, build_ids: &[i64]) -> Result<Vec<(i64, i64)>> {
    backend!(conn, purges(build_ids))
}
