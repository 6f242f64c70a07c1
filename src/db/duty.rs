//! Work that one node at a time does: polling materials, firing timers, purging artifacts.
//! Done by two nodes at once, a commit could trigger a pipeline twice and a timer fire twice.
//! (Config repositories are polled by every node, into mirrors of its own: that writes
//! nothing shared.)
//!
//! On SQLite this process is the only node, always on duty. On PostgreSQL the node on duty is
//! the one holding a session-level advisory lock, on a connection of its own: PostgreSQL lets
//! it go when that connection closes, so when a node stops or dies (its sockets close with its
//! process) another takes the duty within [`CHECK`]. The holder checks its connection every
//! [`CHECK`] and stops counting itself on duty as soon as a check fails or goes unanswered
//! for the heartbeat (`--database-heartbeat`): a connection dropped without a word by a NAT
//! would otherwise hang the check, and the node would go on counting itself on duty.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often a node not on duty tries to take it, and the holder checks it still holds it.
pub const CHECK: Duration = Duration::from_secs(1);

/// The advisory lock of the duty ("fcd duty"), distinct from the write lock.
const DUTY_LOCK: i64 = i64::from_be_bytes(*b"fcd duty");

/// Whether this node is on duty now; cheap to ask before each round of the work.
#[derive(Clone)]
pub struct Duty {
    mine: Arc<AtomicBool>,
}

impl Duty {
    pub fn is_mine(&self) -> bool {
        self.mine.load(Ordering::Relaxed)
    }

    /// The only node there is (SQLite).
    pub fn always() -> Duty {
        Duty {
            mine: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Takes the duty whenever no other node has it, until `shutdown`. Tries once before it
    /// returns, so a node starting alone is on duty from its first round.
    pub async fn contend(pool: PgPool, heartbeat: Duration, shutdown: CancellationToken) -> Duty {
        let duty = Duty {
            mine: Arc::new(AtomicBool::new(false)),
        };
        let mut holder = Holder {
            pool,
            heartbeat,
            conn: None,
            mine: Arc::clone(&duty.mine),
        };
        holder.try_take().await;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(CHECK) => {}
                }
                if holder.mine.load(Ordering::Relaxed) {
                    holder.check().await;
                } else {
                    holder.try_take().await;
                }
            }
            holder.mine.store(false, Ordering::Relaxed);
            // Dropping the connection closes it, and lets the duty go at once.
        });
        duty
    }
}

struct Holder {
    pool: PgPool,
    /// How long a query on the duty's connection may go unanswered.
    heartbeat: Duration,
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    mine: Arc<AtomicBool>,
}

impl Holder {
    async fn try_take(&mut self) {
        if self.conn.is_none() {
            match self.pool.acquire().await {
                Ok(conn) => self.conn = Some(conn),
                Err(error) => {
                    tracing::debug!(%error, "cannot contend for duty yet");
                    return;
                }
            }
        }
        let conn = self.conn.as_mut().expect("a connection");
        let take = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(DUTY_LOCK)
            .fetch_one(&mut **conn);
        match tokio::time::timeout(self.heartbeat, take)
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut))
        {
            Ok(true) => {
                tracing::info!(
                    "this node is on duty: it polls materials, fires timers and purges artifacts"
                );
                self.mine.store(true, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(error) => {
                tracing::debug!(%error, "cannot contend for duty");
                self.drop_connection();
            }
        }
    }

    async fn check(&mut self) {
        let alive = match self.conn.as_mut() {
            Some(conn) => {
                let ask = sqlx::query("SELECT 1").execute(&mut **conn);
                matches!(tokio::time::timeout(self.heartbeat, ask).await, Ok(Ok(_)))
            }
            None => false,
        };
        if !alive {
            tracing::warn!("lost the connection holding duty: another node may take it");
            self.mine.store(false, Ordering::Relaxed);
            self.drop_connection();
        }
    }

    /// Closes the connection rather than giving it back to the pool, which would keep a lock
    /// this node no longer counts on.
    fn drop_connection(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}
