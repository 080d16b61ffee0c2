//! The session registry: which agent connections serve which cluster.
//!
//! Sharded (dashmap) by cluster. Several sessions per cluster may be live
//! (an agent may hold two for availability). A reconnect of the same agent
//! instance replaces its own old session; a session is removed only by the
//! guard of the connection that owns it, so a late cleanup of an old
//! connection cannot remove its replacement. No map guard is ever held
//! across an `.await`. The trait-free newtype keeps the door open for a
//! registry shared across relays later.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

/// One registered agent connection.
#[derive(Clone, Debug)]
pub struct Session {
    /// Unique id of this session in this relay.
    pub id: u64,
    /// The agent instance that owns it.
    pub instance: String,
    /// The QUIC connection to open streams on.
    pub connection: quinn::Connection,
}

/// Sessions by cluster.
#[derive(Default)]
pub struct Registry {
    clusters: DashMap<String, Vec<Session>>,
    next_id: AtomicU64,
    round_robin: AtomicUsize,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a connection for `cluster`, replacing an older session of the
    /// same agent instance. The returned guard unregisters it when dropped.
    pub fn register(self: &Arc<Self>, cluster: &str, instance: &str, connection: quinn::Connection) -> SessionGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let session = Session {
            id,
            instance: instance.to_owned(),
            connection,
        };
        let replaced = {
            let mut entry = self.clusters.entry(cluster.to_owned()).or_default();
            let old = entry
                .iter()
                .position(|s| s.instance == instance)
                .map(|i| entry.swap_remove(i));
            entry.push(session);
            old
        };
        if let Some(old) = replaced {
            // The agent came back on a new connection: the old one is stale.
            old.connection.close(0u32.into(), b"replaced by a newer session");
        }
        SessionGuard {
            registry: self.clone(),
            cluster: cluster.to_owned(),
            id,
        }
    }

    /// A live session for `cluster`, spreading load over several.
    pub fn pick(&self, cluster: &str) -> Option<Session> {
        let sessions = self.clusters.get(cluster)?;
        if sessions.is_empty() {
            return None;
        }
        let i = self.round_robin.fetch_add(1, Ordering::Relaxed) % sessions.len();
        Some(sessions[i].clone())
    }

    fn remove(&self, cluster: &str, id: u64) {
        // remove_if keeps the check and the removal under one shard lock.
        if let Some(mut sessions) = self.clusters.get_mut(cluster) {
            sessions.retain(|s| s.id != id);
        }
        self.clusters.remove_if(cluster, |_, sessions| sessions.is_empty());
    }
}

/// Unregisters its session when dropped, and only its own.
pub struct SessionGuard {
    registry: Arc<Registry>,
    cluster: String,
    id: u64,
}

impl SessionGuard {
    /// The session id.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.registry.remove(&self.cluster, self.id);
    }
}
