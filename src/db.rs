//! The embedded SQLite database: one pool for reads and a single-connection pool for writes.
//!
//! One writer connection serialises every write transaction, so a read-then-write never meets
//! SQLITE_BUSY on an upgraded snapshot (sqlx's `begin()` is DEFERRED); WAL lets readers go on
//! while it writes. With `synchronous=NORMAL` an acknowledged write survives a process crash;
//! a power loss may take the last moments.

use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct Db {
    /// Readers: many connections, WAL snapshots.
    pub read: SqlitePool,
    /// The one writer.
    pub write: SqlitePool,
}

impl Db {
    pub async fn connect(url: &str) -> Result<Db> {
        if !url.starts_with("sqlite:") {
            return Err(Error::Unprocessable(format!(
                "database-url: only sqlite:// URLs are supported so far, got {url:?}"
            )));
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Db { read, write })
    }

    /// The newest applied migration, shown on `/go/about` as the schema version.
    pub async fn schema_version(&self) -> Result<i64> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.read)
                .await?;
        Ok(version.unwrap_or(0))
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}

/// Milliseconds since the Unix epoch, the time format of every stored timestamp.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
