//! The artifacts store: what the artifacts context asks of the database, whichever backend
//! it is. Each function hands its connection to the same-named function of `sqlite.rs`.

use super::sqlite;
use crate::db::{Conn, backend};
use crate::domain::artifact::ArtifactFile;
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
