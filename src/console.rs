//! Console logs: append-only chunks addressed by byte offset. An append writes the chunk and
//! the run's new length, never the log; a read from offset N touches only the chunks that
//! end past N. Bytes are kept exactly as the agent sent them.

use bytes::{Bytes, BytesMut};
use sqlx::SqliteConnection;

use crate::error::Result;

/// Stores `bytes` at `start` (the stored length) and moves the run's length past them.
pub(crate) async fn append(
    conn: &mut SqliteConnection,
    build_id: i64,
    start: i64,
    bytes: &[u8],
) -> Result<()> {
    sqlx::query("INSERT INTO console_chunks (build_id, start_offset, bytes) VALUES (?, ?, ?)")
        .bind(build_id)
        .bind(start)
        .bind(bytes)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE job_runs SET console_length = ? WHERE build_id = ?")
        .bind(start + bytes.len() as i64)
        .bind(build_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The bytes from `from` up to `to` (the stored length the caller read).
pub(crate) async fn read(
    conn: &mut SqliteConnection,
    build_id: i64,
    from: i64,
    to: i64,
) -> Result<Bytes> {
    if from >= to {
        return Ok(Bytes::new());
    }
    // The chunk holding `from` starts at the largest start at or before it: seek there through
    // the primary key instead of scanning every earlier chunk.
    let chunks: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT start_offset, bytes FROM console_chunks \
         WHERE build_id = ? AND start_offset < ? AND start_offset >= COALESCE( \
           (SELECT MAX(start_offset) FROM console_chunks WHERE build_id = ? AND start_offset <= ?), 0) \
         ORDER BY start_offset",
    )
    .bind(build_id)
    .bind(to)
    .bind(build_id)
    .bind(from)
    .fetch_all(conn)
    .await?;
    let mut out = BytesMut::with_capacity((to - from) as usize);
    for (start, bytes) in chunks {
        let skip = (from - start).max(0) as usize;
        let keep = ((to - start) as usize).min(bytes.len());
        if skip < keep {
            out.extend_from_slice(&bytes[skip..keep]);
        }
    }
    Ok(out.freeze())
}
