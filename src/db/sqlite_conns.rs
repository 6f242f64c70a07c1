//! The SQLite connections, held here rather than in sqlx pools: a pool tests every connection
//! it takes back (sqlx always pings on release), and for SQLite a ping is a round trip to the
//! connection's worker thread, two thread switches after every read and every write. The one
//! writer was not handed to the next write until that ping came back, so it sat on the path
//! every write waits on. An open SQLite file does not go stale and a reader holds no
//! transaction, so there is nothing to test; a write left unfinished (its future dropped, or a
//! statement failed) is rolled back when the writer is next taken.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

/// How long a read or a write waits for a connection before it is answered 503 (sqlx's pool
/// default, which these replaced).
const WAIT: Duration = Duration::from_secs(30);

/// Up to `max` read-only connections, opened as they are first needed and kept open.
pub struct Readers {
    options: SqliteConnectOptions,
    idle: Mutex<Vec<SqliteConnection>>,
    permits: Arc<Semaphore>,
    max: u32,
}

/// A reader connection in use; it goes back to [`Readers`] when dropped.
pub struct Reader {
    conn: Option<SqliteConnection>,
    home: Arc<Readers>,
    /// Released after the connection is back (fields drop after `Drop::drop`).
    _permit: OwnedSemaphorePermit,
}

impl Readers {
    pub fn new(options: SqliteConnectOptions, max: u32) -> Arc<Readers> {
        Arc::new(Readers {
            options: options.read_only(true),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
        })
    }

    pub async fn acquire(self: &Arc<Self>) -> Result<Reader, sqlx::Error> {
        let permit = match tokio::time::timeout(WAIT, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(sqlx::Error::PoolClosed),
            Err(_elapsed) => return Err(sqlx::Error::PoolTimedOut),
        };
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.options.connect().await?,
        };
        Ok(Reader {
            conn: Some(conn),
            home: Arc::clone(self),
            _permit: permit,
        })
    }

    /// Waits for the readers in use to come back, closes every connection, and refuses
    /// readers from then on.
    pub async fn close(&self) {
        let Ok(all) = self.permits.acquire_many(self.max).await else {
            return;
        };
        self.permits.close();
        drop(all);
        let conns = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for conn in conns {
            let _ = conn.close().await;
        }
    }
}

impl std::ops::Deref for Reader {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Reader {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn.as_mut().expect("held until dropped")
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.home
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
    }
}

/// The one writer connection; taking it is waiting for every other write to finish.
#[derive(Clone)]
pub struct Writer(Arc<tokio::sync::Mutex<WriterState>>);

struct WriterState {
    /// `None` once closed.
    conn: Option<SqliteConnection>,
    /// A transaction was begun and neither committed nor rolled back.
    in_transaction: bool,
}

/// The writer inside a transaction; dropped without [`WriteConn::commit`], the transaction is
/// rolled back when the writer is next taken.
pub struct WriteConn(OwnedMutexGuard<WriterState>);

impl Writer {
    pub fn new(conn: SqliteConnection) -> Writer {
        Writer(Arc::new(tokio::sync::Mutex::new(WriterState {
            conn: Some(conn),
            in_transaction: false,
        })))
    }

    /// Takes the writer and begins a (deferred) transaction on it.
    pub async fn begin(&self) -> Result<WriteConn, sqlx::Error> {
        let mut held = tokio::time::timeout(WAIT, self.0.clone().lock_owned())
            .await
            .map_err(|_elapsed| sqlx::Error::PoolTimedOut)?;
        let WriterState {
            conn,
            in_transaction,
        } = &mut *held;
        let conn = conn.as_mut().ok_or(sqlx::Error::PoolClosed)?;
        if *in_transaction {
            // An unfinished write before this one. (If its BEGIN never ran, there is nothing to
            // roll back and SQLite says so; that is not an error here.)
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        }
        // Set first: if this future is dropped while BEGIN is on its way, the next write still
        // rolls back whatever began.
        *in_transaction = true;
        sqlx::query("BEGIN").execute(&mut *conn).await?;
        Ok(WriteConn(held))
    }

    /// Waits for the write in progress, then closes the connection (an unfinished transaction
    /// is rolled back by SQLite as it closes).
    pub async fn close(&self) {
        let conn = self.0.lock().await.conn.take();
        if let Some(conn) = conn {
            let _ = conn.close().await;
        }
    }
}

impl WriteConn {
    pub fn conn(&mut self) -> &mut SqliteConnection {
        self.0
            .conn
            .as_mut()
            .expect("a write begins only on an open writer")
    }

    /// Commits; the writer is free for the next write once this returns. A failed commit leaves
    /// the transaction for the next write to roll back.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        sqlx::query("COMMIT").execute(self.conn()).await?;
        self.0.in_transaction = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::SqliteJournalMode;

    async fn opened(dir: &tempfile::TempDir) -> (Writer, Arc<Readers>) {
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("t.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let mut conn = options.connect().await.unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER NOT NULL)")
            .execute(&mut conn)
            .await
            .unwrap();
        (Writer::new(conn), Readers::new(options, 2))
    }

    async fn stored(readers: &Arc<Readers>) -> Vec<i64> {
        sqlx::query_scalar("SELECT n FROM t ORDER BY n")
            .fetch_all(&mut *readers.acquire().await.unwrap())
            .await
            .unwrap()
    }

    async fn insert(write: &mut WriteConn, n: i64) {
        sqlx::query("INSERT INTO t VALUES ($1)")
            .bind(n)
            .execute(write.conn())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_write_dropped_before_its_commit_leaves_nothing_and_the_next_write_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, readers) = opened(&dir).await;
        let mut dropped = writer.begin().await.unwrap();
        insert(&mut dropped, 1).await;
        drop(dropped);
        for n in [2, 3] {
            let mut write = writer.begin().await.unwrap();
            insert(&mut write, n).await;
            write.commit().await.unwrap();
        }
        assert_eq!(stored(&readers).await, [2, 3]);
    }

    #[tokio::test]
    async fn readers_past_the_limit_wait_for_one_to_come_back_and_none_are_had_once_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (_writer, readers) = opened(&dir).await;
        let first = readers.acquire().await.unwrap();
        let _second = readers.acquire().await.unwrap();
        let third = tokio::spawn({
            let readers = Arc::clone(&readers);
            async move { stored(&readers).await }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished(), "a third reader while two are out");
        drop(first);
        assert_eq!(third.await.unwrap(), Vec::<i64>::new());
        drop(_second);
        readers.close().await;
        assert!(matches!(
            readers.acquire().await,
            Err(sqlx::Error::PoolClosed)
        ));
    }
}
