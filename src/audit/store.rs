//! The audit store: the trail, whichever backend holds it.

use super::{postgres, sqlite};
use crate::db::{Conn, backend};
use crate::domain::audit::AuditEntry;
use crate::error::Result;

pub async fn insert(conn: Conn<'_>, entry: &AuditEntry) -> Result<()> {
    backend!(conn, insert(entry))
}

/// Entries newest first.
pub async fn page(conn: Conn<'_>, offset: i64, limit: i64) -> Result<Vec<AuditEntry>> {
    backend!(conn, page(offset, limit))
}
