//! Session changes not yet written to the shared registry.
//!
//! The registry of this relay records every change here (under its shard lock, so a replaced
//! session's late removal can never overtake its replacement's arrival); the etcd task takes
//! them in batches. Coalescing by key bounds it by the number of sessions, whatever the churn: a
//! restart storm of 10,000 agents is 10,000 entries, not a queue of every event.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::records::SessionRecord;

/// A session's key: cluster and agent instance (the relay is this one).
pub type SessionKey = (String, String);

/// Changes by key: `Some` to write, `None` to delete.
#[derive(Default)]
pub struct Pending {
    changes: Mutex<HashMap<SessionKey, Option<SessionRecord>>>,
    notify: Notify,
}

impl Pending {
    /// `cluster`'s agent `agent` is held here now.
    pub fn put(&self, cluster: &str, agent: &str, record: SessionRecord) {
        self.set((cluster.to_owned(), agent.to_owned()), Some(record));
    }

    /// `cluster`'s agent `agent` is no longer held here.
    pub fn delete(&self, cluster: &str, agent: &str) {
        self.set((cluster.to_owned(), agent.to_owned()), None);
    }

    fn set(&self, key: SessionKey, change: Option<SessionRecord>) {
        self.changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, change);
        self.notify.notify_one();
    }

    /// Every change so far, leaving none.
    pub fn take(&self) -> HashMap<SessionKey, Option<SessionRecord>> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves once a change was recorded since the last call (or one was pending already).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}
