//! The database: which backend, its connections, and the one way to write: [`WriteTx`], which
//! publishes the write's events once it has committed.
//!
//! Contexts never name a backend's types. They pass a [`Conn`] (from [`WriteTx::conn`] or
//! [`ReadConn::conn`]) to their store (`agents/store.rs`, `job_runs/store.rs`), and the store
//! calls the same-named function of the backend's module (`agents/sqlite.rs`, …) through
//! [`backend!`]. A second backend adds a `Conn` variant, an arm in `backend!` and a module per
//! store beside `sqlite.rs`; the compiler then names every store function it lacks.
//!
//! SQLite today (embedded): a pool of readers and one writer connection, which serialises
//! every write transaction, so a read-then-write never meets SQLITE_BUSY on an upgraded
//! snapshot (sqlx's `begin()` is DEFERRED); WAL lets readers go on while it writes. With
//! `synchronous=NORMAL` an acknowledged write survives a process crash; a power loss may take
//! the last moments.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};

use crate::error::{Error, Result};
use crate::events::{DomainEvent, Publisher, Topic};

#[derive(Clone)]
pub struct Db {
    /// Readers: many connections, WAL snapshots.
    read: SqlitePool,
    /// The one writer, reached only through [`Db::begin`].
    write: SqlitePool,
    /// Where committed writes publish.
    publisher: Arc<Publisher>,
}

/// One write: a transaction on the writer connection and the events it will publish. They go
/// out only if [`WriteTx::commit`] succeeds, after the commit and in commit order; a write
/// dropped without committing rolls back and publishes nothing.
pub struct WriteTx {
    tx: Transaction<'static, Sqlite>,
    events: Vec<(Topic, DomainEvent)>,
    publisher: Arc<Publisher>,
}

impl WriteTx {
    /// Queues `event` on `topic`, for once the write has committed.
    pub fn publish(&mut self, topic: Topic, event: DomainEvent) {
        self.events.push((topic, event));
    }

    /// Commits, then publishes the queued events, in order; no other write publishes between
    /// this commit and its events.
    pub async fn commit(self) -> Result<()> {
        let WriteTx {
            tx,
            events,
            publisher,
        } = self;
        let _turn = publisher.turn().await;
        tx.commit().await?;
        for (topic, event) in events {
            publisher.send(&topic, event);
        }
        Ok(())
    }
}

impl WriteTx {
    /// The write's connection, for a store.
    pub fn conn(&mut self) -> Conn<'_> {
        Conn::Sqlite(&mut self.tx)
    }
}

/// A connection of the backend in use, handed to a store.
pub enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
}

impl Conn<'_> {
    /// The same connection for one more call, keeping this one for later calls.
    pub fn reborrow(&mut self) -> Conn<'_> {
        match self {
            Conn::Sqlite(c) => Conn::Sqlite(c),
        }
    }
}

/// A reader connection (a consistent snapshot per statement; several reads through one
/// connection are not one snapshot).
pub struct ReadConn {
    conn: PoolConnection<Sqlite>,
}

impl ReadConn {
    pub fn conn(&mut self) -> Conn<'_> {
        Conn::Sqlite(&mut self.conn)
    }
}

/// Calls the store function `f` of the backend `conn` belongs to: `backend!(conn, f(a, b))`
/// is `sqlite::f(c, a, b).await` for a SQLite connection `c`. The backend modules sit beside
/// the store that uses this.
macro_rules! backend {
    ($conn:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $conn {
            $crate::db::Conn::Sqlite(c) => sqlite::$f(c $(, $arg)*).await,
        }
    };
}
pub(crate) use backend;

impl Db {
    /// Opens (creating and migrating) the database at `url`; committed writes publish through
    /// `publisher`.
    pub async fn connect(url: &str, publisher: Publisher) -> Result<Db> {
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
        // A pool pings a connection before handing it out, by default; for SQLite each ping is
        // a round trip to the connection's worker thread (two thread switches) on every read and
        // write, and an open file does not go stale. (sqlx still pings on release.) A fleet of
        // 2,000 agents: 20.5 → 16.1 context switches per call.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&write).await?;
        restrict_to_owner(url);
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Db {
            read,
            write,
            publisher: Arc::new(publisher),
        })
    }

    /// A reader connection.
    pub async fn reader(&self) -> Result<ReadConn> {
        Ok(ReadConn {
            conn: self.read.acquire().await?,
        })
    }

    /// Starts a write (waiting for the writer connection).
    pub async fn begin(&self) -> Result<WriteTx> {
        Ok(WriteTx {
            tx: self.write.begin().await?,
            events: Vec::new(),
            publisher: Arc::clone(&self.publisher),
        })
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

/// The database holds job secrets and token hashes: only its owner may read it (0600), the
/// journal files beside it too. SQLite creates them with the process's umask.
fn restrict_to_owner(url: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return;
    }
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{path}{suffix}");
        if std::path::Path::new(&file).exists()
            && let Err(error) =
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
        {
            tracing::warn!(%error, file, "could not make the database readable by its owner only");
        }
    }
}

/// Milliseconds since the Unix epoch, the time format of every stored timestamp.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
