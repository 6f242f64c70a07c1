//! The audit context: who did what. Each context records its entry inside the transaction
//! that makes the change (so a change and its entry commit together); this module reads the
//! trail back, newest first.

mod postgres;
mod sqlite;
mod store;

use crate::db::{Db, WriteTx, now_millis};
use crate::domain::audit::AuditEntry;
use crate::error::{Error, Result};

/// At most this many entries per page.
pub const MAX_PAGE_SIZE: i64 = 500;

#[derive(Clone)]
pub struct Audit {
    db: Db,
}

impl Audit {
    pub fn new(db: Db) -> Audit {
        Audit { db }
    }

    /// `page_size` entries from `offset`, newest first.
    pub async fn page(&self, offset: i64, page_size: i64) -> Result<Vec<AuditEntry>> {
        if offset < 0 {
            return Err(Error::Unprocessable("offset: 0 or more".into()));
        }
        if !(1..=MAX_PAGE_SIZE).contains(&page_size) {
            return Err(Error::Unprocessable(format!(
                "page_size: from 1 to {MAX_PAGE_SIZE}"
            )));
        }
        let mut read = self.db.reader().await?;
        store::page(read.conn(), offset, page_size).await
    }
}

/// Records an entry in the write that makes the change.
pub(crate) async fn record(
    tx: &mut WriteTx,
    actor: &str,
    action: &str,
    target: &str,
) -> Result<()> {
    let entry = AuditEntry {
        at: now_millis(),
        actor: actor.to_string(),
        action: action.to_string(),
        target: target.to_string(),
    };
    store::insert(tx.conn(), &entry).await
}
