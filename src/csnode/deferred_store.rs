//! The persistent copy of a shard's deferred messages (seed 5.3.1.1.1:
//! kept for a user not registered, delivered at the next registration):
//! one redb table, message id → [`encode_deferred`] record. The SIP thread
//! drains the server's changes after every datagram and tick and writes
//! them in one durable transaction; at start the table is read back into
//! the server. Deferrals are rare next to the rest of the traffic, so a
//! commit per event that changed any (not a group commit) is what they
//! cost.

use crate::cs::server::{decode_deferred, encode_deferred, Deferred, DeferredChange, Server};
use redb::{Database, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("deferred.v1");

/// Why the store failed: the file and redb's reason.
#[derive(Debug, thiserror::Error)]
#[error("deferred store {path}: {reason}")]
pub struct StoreError {
    pub path: PathBuf,
    pub reason: String,
}

pub struct DeferredStore {
    db: Database,
    path: PathBuf,
    /// Records that did not decode at start (left in the file, logged).
    pub unreadable: usize,
}

impl DeferredStore {
    /// Open (or create) the file.
    pub fn open(path: &Path) -> Result<DeferredStore, StoreError> {
        let e = |r: String| StoreError {
            path: path.to_path_buf(),
            reason: r,
        };
        let db = Database::create(path).map_err(|x| e(x.to_string()))?;
        let w = db.begin_write().map_err(|x| e(x.to_string()))?;
        w.open_table(TABLE).map_err(|x| e(x.to_string()))?;
        w.commit().map_err(|x| e(x.to_string()))?;
        Ok(DeferredStore {
            db,
            path: path.to_path_buf(),
            unreadable: 0,
        })
    }

    fn err(&self, reason: impl ToString) -> StoreError {
        StoreError {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// Every kept message; a record that does not decode is counted in
    /// [`Self::unreadable`] and logged, and stays in the file.
    pub fn load(&mut self) -> Result<Vec<(String, Deferred)>, StoreError> {
        let r = self.db.begin_read().map_err(|x| self.err(x))?;
        let t = r.open_table(TABLE).map_err(|x| self.err(x))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|x| self.err(x))? {
            let (k, v) = row.map_err(|x| self.err(x))?;
            match decode_deferred(k.value(), v.value()) {
                Ok(kept) => out.push(kept),
                Err(why) => {
                    self.unreadable += 1;
                    tracing::error!(path = %self.path.display(), id = k.value(), why, "deferred message unreadable");
                }
            }
        }
        Ok(out)
    }

    /// The server's pending changes in one durable transaction; how many.
    pub fn save(&mut self, server: &mut Server) -> Result<usize, StoreError> {
        let mut changes = Vec::new();
        while let Some(c) = server.poll_deferred_change() {
            changes.push(c);
        }
        if changes.is_empty() {
            return Ok(0);
        }
        let w = self.db.begin_write().map_err(|x| self.err(x))?;
        {
            let mut t = w.open_table(TABLE).map_err(|x| self.err(x))?;
            for c in &changes {
                match c {
                    DeferredChange::Kept(user, d) => {
                        let rec = encode_deferred(user, d);
                        t.insert(d.id, &rec[..]).map_err(|x| self.err(x))?;
                    }
                    DeferredChange::Gone(id) => {
                        t.remove(id).map_err(|x| self.err(x))?;
                    }
                }
            }
        }
        w.commit().map_err(|x| self.err(x))?;
        Ok(changes.len())
    }
}
