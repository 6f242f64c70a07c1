//! The database: which backend, its connections, and the one way to write: [`WriteTx`], which
//! publishes the write's events once it has committed.
//!
//! Contexts never name a backend's types. They pass a [`Conn`] (from [`WriteTx::conn`] or
//! [`ReadConn::conn`]) to their store (`agents/store.rs`, `job_runs/store.rs`), and the store
//! calls the same-named function of the backend's module (`agents/sqlite.rs`, …) through
//! [`backend!`]. A second backend adds a `Conn` variant, an arm in `backend!` and a module per
//! store beside `sqlite.rs`; the compiler then names every store function it lacks.
//!
//! The URL chooses the backend at start: `sqlite:` (embedded, the default) or `postgres:`.
//!
//! SQLite: up to 8 readers and one writer connection (`db/sqlite_conns.rs`), which serialises
//! every write transaction, so a read-then-write never meets SQLITE_BUSY on an upgraded
//! snapshot (its `BEGIN` is DEFERRED); WAL lets readers go on while it writes. With `synchronous=NORMAL`
//! an acknowledged write survives a process crash; a power loss may take the last moments.
//!
//! PostgreSQL: a pool of readers and a pool of writers, and every write transaction first takes
//! one transaction-scoped advisory lock, the same on every node. So writes are serial across
//! every node sharing the database, as on SQLite: a read-then-write inside a write sees
//! everything committed before it and nothing commits in between, which is what the contexts'
//! writes were written for. Reads run beside the writes (READ COMMITTED: each statement sees
//! what was committed when it started).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, PgConnection, PgPool, Postgres, SqliteConnection, Transaction};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::events::{DomainEvent, Publisher, Topic};

pub mod copy;
pub mod dialect;
mod duty;
mod notify;
mod sqlite_conns;

pub use duty::Duty;

#[derive(Clone)]
pub struct Db {
    pools: Pools,
    /// Where committed writes publish.
    publisher: Arc<Publisher>,
    /// This process among the nodes sharing a PostgreSQL database (it skips its own notices).
    node: Uuid,
}

/// The backend a [`Db`] is on, as `/go/about` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite (embedded)",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

#[derive(Clone)]
enum Pools {
    Sqlite {
        /// Readers: many connections, WAL snapshots.
        read: Arc<sqlite_conns::Readers>,
        /// The one writer, reached only through [`Db::begin`].
        write: sqlite_conns::Writer,
    },
    Postgres {
        read: PgPool,
        /// Writers, reached only through [`Db::begin`], which takes [`WRITE_LOCK`].
        write: PgPool,
        /// How to open the connections held for as long as they live ([`dedicated_pool`]): the
        /// one that listens to the other nodes (`db/notify.rs`), the one that holds or
        /// contends for duty (`db/duty.rs`).
        dedicated: Box<PgConnectOptions>,
    },
}

/// How a node names its PostgreSQL connections (then its uuid), so each can tell which nodes
/// are running.
const NODE_PREFIX: &str = "ferrocd node ";

/// The advisory lock every PostgreSQL write holds until it commits or rolls back: one number,
/// the same on every node ("ferrocd" in ASCII, so no other program's lock is likely to match).
const WRITE_LOCK: i64 = i64::from_be_bytes(*b"\0ferrocd");

/// One write: a transaction on the writer connection and the events it will publish. They go
/// out only if [`WriteTx::commit`] succeeds, after the commit and in commit order; a write
/// dropped without committing rolls back and publishes nothing.
pub struct WriteTx {
    tx: Tx,
    events: Vec<(Topic, DomainEvent)>,
    publisher: Arc<Publisher>,
    node: Uuid,
}

impl WriteTx {
    /// Queues `event` on `topic`, for once the write has committed.
    pub fn publish(&mut self, topic: Topic, event: DomainEvent) {
        self.events.push((topic, event));
    }

    /// Commits, then publishes the queued events, in order; no other write publishes between
    /// this commit and its events. On PostgreSQL the events also go to the other nodes, as
    /// notices sent inside the transaction: they hear of it once it has committed.
    pub async fn commit(self) -> Result<()> {
        let WriteTx {
            tx,
            events,
            publisher,
            node,
        } = self;
        let _turn = publisher.turn().await;
        match tx {
            Tx::Sqlite(write) => write.commit().await?,
            Tx::Postgres(mut tx) => {
                for payload in notify::payloads(node, &events) {
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(notify::CHANNEL)
                        .bind(payload)
                        .execute(&mut *tx)
                        .await?;
                }
                if let Err(error) = tx.commit().await {
                    // The commit may have happened (the answer lost with the connection): the
                    // other nodes would hear of it, this one would not; re-read everything.
                    publisher.resync();
                    return Err(error.into());
                }
            }
        }
        for (topic, event) in events {
            publisher.send(&topic, event);
        }
        Ok(())
    }
}

impl WriteTx {
    /// The write's connection, for a store.
    pub fn conn(&mut self) -> Conn<'_> {
        match &mut self.tx {
            Tx::Sqlite(write) => Conn::Sqlite(write.conn()),
            Tx::Postgres(tx) => Conn::Postgres(tx),
        }
    }
}

enum Tx {
    Sqlite(sqlite_conns::WriteConn),
    Postgres(Transaction<'static, Postgres>),
}

/// A connection of the backend in use, handed to a store.
pub enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

impl Conn<'_> {
    /// The same connection for one more call, keeping this one for later calls.
    pub fn reborrow(&mut self) -> Conn<'_> {
        match self {
            Conn::Sqlite(c) => Conn::Sqlite(c),
            Conn::Postgres(c) => Conn::Postgres(c),
        }
    }
}

/// A reader connection (a consistent snapshot per statement; several reads through one
/// connection are not one snapshot).
pub enum ReadConn {
    Sqlite(sqlite_conns::Reader),
    Postgres(PoolConnection<Postgres>),
}

impl ReadConn {
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            ReadConn::Sqlite(c) => Conn::Sqlite(c),
            ReadConn::Postgres(c) => Conn::Postgres(c),
        }
    }
}

/// Calls the store function `f` of the backend `conn` belongs to: `backend!(conn, f(a, b))`
/// is `sqlite::f(c, a, b).await` for a SQLite connection `c` and `postgres::f(c, a, b).await`
/// for a PostgreSQL one. The backend modules sit beside the store that uses this.
macro_rules! backend {
    ($conn:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $conn {
            $crate::db::Conn::Sqlite(c) => sqlite::$f(c $(, $arg)*).await,
            $crate::db::Conn::Postgres(c) => postgres::$f(c $(, $arg)*).await,
        }
    };
}
pub(crate) use backend;

impl Db {
    /// Opens (creating and migrating) the database at `url`; committed writes publish through
    /// `publisher`.
    pub async fn connect(url: &str, publisher: Publisher) -> Result<Db> {
        let node = Uuid::new_v4();
        let pools = if url.starts_with("sqlite:") {
            Self::connect_sqlite(url).await?
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Self::connect_postgres(url, node).await?
        } else {
            return Err(Error::Unprocessable(format!(
                "database-url: expected a sqlite:// or postgres:// URL, got {:?}",
                redact_password(url)
            )));
        };
        Ok(Db {
            pools,
            publisher: Arc::new(publisher),
            node,
        })
    }

    /// This process among the nodes sharing the database.
    pub fn node(&self) -> String {
        self.node.to_string()
    }

    /// The nodes connected to the database now, this one included: on PostgreSQL those with a
    /// connection open (each names its connections `ferrocd node {uuid}`); on SQLite this one.
    pub async fn live_nodes(&self) -> Result<Vec<String>> {
        match &self.pools {
            Pools::Sqlite { .. } => Ok(vec![self.node()]),
            Pools::Postgres { read, .. } => {
                let names: Vec<String> = sqlx::query_scalar(
                    "SELECT DISTINCT application_name FROM pg_stat_activity \
                     WHERE datname = current_database() AND application_name LIKE 'ferrocd node %'",
                )
                .fetch_all(read)
                .await?;
                Ok(names
                    .iter()
                    .filter_map(|name| name.strip_prefix(NODE_PREFIX).map(String::from))
                    .collect())
            }
        }
    }

    /// Whether this node does the work one node at a time does, now and from now on, until
    /// `shutdown` (`db/duty.rs`); a check of the duty's connection unanswered for `heartbeat`
    /// counts as the duty lost.
    pub async fn duty(&self, heartbeat: Duration, shutdown: CancellationToken) -> Duty {
        match &self.pools {
            Pools::Sqlite { .. } => Duty::always(),
            Pools::Postgres { dedicated, .. } => {
                Duty::contend(dedicated_pool(dedicated, heartbeat), heartbeat, shutdown).await
            }
        }
    }

    /// On PostgreSQL, hears the other nodes' writes from now on and publishes their events
    /// here until `shutdown`, checking its connection every `heartbeat`; it listens before
    /// this returns. Nothing to do on SQLite.
    pub async fn listen_to_other_nodes(
        &self,
        heartbeat: Duration,
        shutdown: CancellationToken,
    ) -> Result<()> {
        if let Pools::Postgres { dedicated, .. } = &self.pools {
            notify::listen(
                (**dedicated).clone(),
                self.node,
                Arc::clone(&self.publisher),
                heartbeat,
                shutdown,
            )
            .await?;
        }
        Ok(())
    }

    async fn connect_sqlite(url: &str) -> Result<Pools> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // Held by `db/sqlite_conns.rs`, not by sqlx pools, which ping a SQLite connection's
        // worker thread each time one is taken back.
        let mut write = options.connect().await?;
        sqlx::migrate!("migrations/sqlite").run(&mut write).await?;
        restrict_to_owner(url);
        Ok(Pools::Sqlite {
            read: sqlite_conns::Readers::new(options, 8),
            write: sqlite_conns::Writer::new(write),
        })
    }

    async fn connect_postgres(url: &str, node: Uuid) -> Result<Pools> {
        let options =
            PgConnectOptions::from_str(url)?.application_name(&format!("{NODE_PREFIX}{node}"));
        // sqlx's migrator holds an advisory lock while it runs, so nodes starting together
        // migrate once.
        let write = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/postgres").run(&write).await?;
        let read = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        Ok(Pools::Postgres {
            read,
            write,
            dedicated: Box::new(options),
        })
    }

    pub fn backend(&self) -> Backend {
        match self.pools {
            Pools::Sqlite { .. } => Backend::Sqlite,
            Pools::Postgres { .. } => Backend::Postgres,
        }
    }

    /// A reader connection.
    pub async fn reader(&self) -> Result<ReadConn> {
        Ok(match &self.pools {
            Pools::Sqlite { read, .. } => ReadConn::Sqlite(read.acquire().await?),
            Pools::Postgres { read, .. } => ReadConn::Postgres(read.acquire().await?),
        })
    }

    /// Starts a write (waiting for the writer connection, and on PostgreSQL for every other
    /// node's write in progress).
    pub async fn begin(&self) -> Result<WriteTx> {
        let tx = match &self.pools {
            Pools::Sqlite { write, .. } => Tx::Sqlite(write.begin().await?),
            Pools::Postgres { write, .. } => {
                let mut tx = write.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(WRITE_LOCK)
                    .execute(&mut *tx)
                    .await?;
                Tx::Postgres(tx)
            }
        };
        Ok(WriteTx {
            tx,
            events: Vec::new(),
            publisher: Arc::clone(&self.publisher),
            node: self.node,
        })
    }

    /// The newest applied migration, shown on `/go/about` as the schema version.
    pub async fn schema_version(&self) -> Result<i64> {
        const NEWEST: &str = "SELECT MAX(version) FROM _sqlx_migrations WHERE success";
        let version: Option<i64> = match &self.pools {
            Pools::Sqlite { read, .. } => {
                sqlx::query_scalar(NEWEST)
                    .fetch_one(&mut *read.acquire().await?)
                    .await?
            }
            Pools::Postgres { read, .. } => sqlx::query_scalar(NEWEST).fetch_one(read).await?,
        };
        Ok(version.unwrap_or(0))
    }

    /// Closes the pools, waiting at most [`CLOSE_DEADLINE`]: closing waits for connections in
    /// use to come back, and one stuck on a database that went silent never would. (The
    /// dedicated connections close as their tasks end at shutdown.)
    pub async fn close(&self) {
        let close = async {
            match &self.pools {
                Pools::Sqlite { read, write } => tokio::join!(read.close(), write.close()),
                Pools::Postgres { read, write, .. } => tokio::join!(read.close(), write.close()),
            }
        };
        if tokio::time::timeout(CLOSE_DEADLINE, close).await.is_err() {
            tracing::warn!(
                "the database connections did not close within {CLOSE_DEADLINE:?}; leaving them"
            );
        }
    }
}

/// A request waits this long for a connection while the database is away, then is answered
/// 503 (sqlx's default is 30 s, long past what an agent or a browser waits).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool of one connection held for as long as it lives, as the listener and the duty use.
/// Its session asks the server to end it when this node goes quiet on it for three heartbeats
/// (both send a query at least every heartbeat) or leaves what the server sends unacknowledged
/// that long: behind a NAT that dropped the connection without a word, the server would
/// otherwise keep the session for hours, with the duty's lock held and the listener's backlog
/// of notifications growing. Each setting is skipped where the server lacks it
/// (`idle_session_timeout` is PostgreSQL 14's).
fn dedicated_pool(options: &PgConnectOptions, heartbeat: Duration) -> PgPool {
    let quiet = (heartbeat * 3).as_millis();
    PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                for setting in [
                    format!("SET idle_session_timeout = {quiet}"),
                    format!("SET tcp_user_timeout = {quiet}"),
                ] {
                    if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(setting.clone()))
                        .execute(&mut *conn)
                        .await
                    {
                        tracing::debug!(%error, "{setting}: not on this server");
                    }
                }
                Ok(())
            })
        })
        .connect_lazy_with(options.clone())
}

/// How long [`Db::close`] waits for connections in use.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// The URL as it may be shown: without its password, whether in the user part
/// (`postgres://user:secret@host/db`) or as a query parameter (`?password=secret`, and any
/// other parameter named `…password`, as libpq's `sslpassword`). A password may hold an
/// unescaped `@`, `/`, `?`, `&` or `#`, so where the URL is ambiguous more is hidden, never
/// less: a parameter's value runs to the next `&`, and the user part ends at the last `@`
/// before the first `/` that follows an `@`.
pub fn redact_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = redact_password_parameters(&url[scheme_end..]);
    let Some(first_at) = rest.find('@') else {
        return format!("{}{rest}", &url[..scheme_end]);
    };
    let bound = rest[first_at..]
        .find('/')
        .map_or(rest.len(), |i| first_at + i);
    let last_at = rest[..bound].rfind('@').unwrap_or(first_at);
    let (user_part, host_and_rest) = (&rest[..last_at], &rest[last_at..]);
    let user_part = match user_part.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => user_part.to_string(),
    };
    format!("{}{user_part}{host_and_rest}", &url[..scheme_end])
}

/// `text` with the value of every `?…password=` or `&…password=` parameter hidden, wherever
/// it stands (a `?` inside a password does not hide a real query after it).
fn redact_password_parameters(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(separator) = rest.find(['?', '&']) {
        shown.push_str(&rest[..=separator]);
        rest = &rest[separator + 1..];
        let key_end = rest.find(['=', '&', '?']).unwrap_or(rest.len());
        if rest[key_end..].starts_with('=')
            && rest[..key_end].to_ascii_lowercase().ends_with("password")
        {
            shown.push_str(&rest[..=key_end]);
            shown.push_str("***");
            let value_end = rest[key_end..]
                .find('&')
                .map_or(rest.len(), |i| key_end + i);
            rest = &rest[value_end..];
        }
    }
    shown.push_str(rest);
    shown
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

#[cfg(test)]
mod redact_tests {
    use super::redact_password;

    #[test]
    fn a_shown_database_url_keeps_no_password() {
        let cases = [
            (
                "postgres://fcd:s3cret@db:5432/ferrocd",
                "postgres://fcd:***@db:5432/ferrocd",
            ),
            (
                "postgres://fcd:p%40ss@db/ferrocd",
                "postgres://fcd:***@db/ferrocd",
            ),
            (
                "postgres://db/ferrocd?user=fcd&password=s3cret&sslmode=require",
                "postgres://db/ferrocd?user=fcd&password=***&sslmode=require",
            ),
            (
                "postgres://fcd:a@db/x?sslpassword=k3y",
                "postgres://fcd:***@db/x?sslpassword=***",
            ),
            ("postgres://fcd:ab#cd@db/x", "postgres://fcd:***@db/x"),
            ("postgres://fcd:p/w@db/x", "postgres://fcd:***@db/x"),
            ("postgres://fcd:a@b@db/x", "postgres://fcd:***@db/x"),
            ("postgres://fcd:a?b@db/x", "postgres://fcd:***@db/x"),
            (
                "postgres://db/x?password=s@b&user=fcd",
                "postgres://db/x?password=***&user=fcd",
            ),
            (
                "postgres://db/x?password=ab#cd",
                "postgres://db/x?password=***",
            ),
            (
                "postgres://fcd:a?b=c@db/x?password=z",
                "postgres://fcd:***@db/x?password=***",
            ),
            ("postgres://fcd@db/ferrocd", "postgres://fcd@db/ferrocd"),
            (
                "sqlite://data/ferrocd.db?mode=rwc",
                "sqlite://data/ferrocd.db?mode=rwc",
            ),
            ("not a url", "not a url"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_password(url), shown, "{url}");
        }
    }
}
