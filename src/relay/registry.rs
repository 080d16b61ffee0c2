//! The session registry: which agent connections serve which cluster.
//!
//! Sharded (dashmap) by cluster. Several sessions per cluster may be live
//! (an agent may hold two for availability). A reconnect of the same agent
//! instance replaces its own old session; a session is removed only by the
//! guard of the connection that owns it, so a late cleanup of an old
//! connection cannot remove its replacement. No map guard is ever held
//! across an `.await`. In a fleet every change is also recorded for the shared registry
//! (`fleet::Pending`), in the same shard lock as the change itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

use super::fleet::{Pending, SessionRecord};

/// One registered agent connection.
#[derive(Clone, Debug)]
pub struct Session {
    /// Unique id of this session in this relay.
    pub id: u64,
    /// The agent instance that owns it.
    pub instance: String,
    /// Which of that agent's tunnels it is.
    pub link: u8,
    /// The tunnel to open streams on.
    pub connection: crate::transport::Tunnel,
    /// What the session was admitted with: its token's digest and the cluster's caller audience
    /// then, so a reload that revokes the token or changes the trust model closes it.
    pub admitted: Admission,
    /// When it was registered.
    pub since: std::time::SystemTime,
}

/// The terms under which a session was admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// SHA-256 of the agent token it proved.
    pub token_digest: [u8; 32],
    /// The cluster's `caller_audience` at the time (`None`: relay assertions).
    pub caller_audience: Option<String>,
}

/// Sessions by cluster.
#[derive(Default)]
pub struct Registry {
    clusters: DashMap<String, Vec<Session>>,
    next_id: AtomicU64,
    round_robin: AtomicUsize,
    /// Where changes go for the shared registry, in a fleet.
    shared: Option<Arc<Pending>>,
    /// Woken whenever a session is removed.
    removed: tokio::sync::Notify,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// An empty registry whose every change is also recorded in `shared`.
    pub fn shared(shared: Arc<Pending>) -> Arc<Self> {
        Arc::new(Self {
            shared: Some(shared),
            ..Self::default()
        })
    }

    /// Every session as the shared registry records it: cluster, agent instance, record.
    pub fn records(&self) -> Vec<(String, String, SessionRecord)> {
        let mut all = Vec::new();
        for entry in &self.clusters {
            for session in entry.value() {
                all.push((entry.key().clone(), session.instance.clone(), session.record()));
            }
        }
        all
    }

    /// Sessions by cluster and transport, for the `hawser.tunnels` metric.
    pub fn tunnel_counts(&self) -> Vec<(String, &'static str, i64)> {
        let mut counts = std::collections::BTreeMap::<(String, &'static str), i64>::new();
        for entry in &self.clusters {
            for session in entry.value() {
                *counts
                    .entry((entry.key().clone(), session.connection.kind()))
                    .or_default() += 1;
            }
        }
        counts.into_iter().map(|((c, t), n)| (c, t, n)).collect()
    }

    /// A session id never given before in this relay.
    pub fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a connection for `cluster` as session `id` (from [`Self::new_id`]), replacing an older session of the
    /// same agent instance and link. The returned guard unregisters it when dropped; with it come the
    /// other instances that serve the cluster now (a new one beside them gets a share of the
    /// cluster's requests, which the caller of this makes visible) and the address of the
    /// session it replaced, if any.
    pub fn register(
        self: &Arc<Self>,
        id: u64,
        cluster: &str,
        (instance, link): (&str, u8),
        connection: crate::transport::Tunnel,
        admitted: Admission,
    ) -> (SessionGuard, Registered) {
        let session = Session {
            id,
            instance: instance.to_owned(),
            link,
            connection,
            admitted,
            since: std::time::SystemTime::now(),
        };
        let (replaced, others) = {
            let mut entry = self.clusters.entry(cluster.to_owned()).or_default();
            let old = entry
                .iter()
                .position(|s| s.instance == instance && s.link == link)
                .map(|i| entry.swap_remove(i));
            let others: Vec<String> = entry
                .iter()
                .filter(|s| s.instance != instance)
                .map(|s| s.instance.clone())
                .collect();
            if let Some(shared) = &self.shared {
                shared.put(cluster, instance, session.record());
            }
            entry.push(session);
            (old, others)
        };
        let replaced = replaced.map(|old| {
            // The agent came back on a new connection: the old one is stale. A TCP tunnel is left
            // to drain instead: its agent retires it once this session is welcomed (`auto` moving
            // back to QUIC) and it ends with its last exchange, or its pings fail if the agent is gone.
            if !matches!(old.connection, crate::transport::Tunnel::H2(_)) {
                old.connection.close(0, b"replaced by a newer session");
            }
            old.connection.remote_address()
        });
        let guard = SessionGuard {
            registry: self.clone(),
            cluster: cluster.to_owned(),
            id,
        };
        (
            guard,
            Registered {
                beside: others,
                replaced,
            },
        )
    }

    /// Closes (with `code` and `reason`) every session for which `keep(cluster, session)` is
    /// false, and returns `(cluster, instance, id)` of each; their guards unregister them.
    pub fn close_unless(
        &self,
        keep: impl Fn(&str, &Session) -> bool,
        code: u32,
        reason: &[u8],
    ) -> Vec<(String, String, u64)> {
        // Collected first, closed after: no map guard is held while a connection closes.
        let mut doomed = Vec::new();
        for entry in &self.clusters {
            for session in entry.value().iter().filter(|s| !keep(entry.key(), s)) {
                doomed.push((entry.key().clone(), session.clone()));
            }
        }
        doomed
            .into_iter()
            .map(|(cluster, session)| {
                session.connection.close(code, reason);
                (cluster, session.instance, session.id)
            })
            .collect()
    }

    /// Resolves once no session is registered (every agent retired its tunnel or left).
    pub async fn emptied(&self) {
        loop {
            let removed = self.removed.notified();
            let mut removed = std::pin::pin!(removed);
            removed.as_mut().enable();
            if self.clusters.is_empty() {
                return;
            }
            removed.await;
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

    /// Like [`Self::pick`], but never session `avoid` (its tunnel just failed).
    pub fn pick_other(&self, cluster: &str, avoid: u64) -> Option<Session> {
        let sessions = self.clusters.get(cluster)?;
        let others: Vec<&Session> = sessions.iter().filter(|s| s.id != avoid).collect();
        if others.is_empty() {
            return None;
        }
        let i = self.round_robin.fetch_add(1, Ordering::Relaxed) % others.len();
        Some(others[i].clone())
    }

    fn remove(&self, cluster: &str, id: u64) {
        // remove_if keeps the check and the removal under one shard lock.
        if let Some(mut sessions) = self.clusters.get_mut(cluster) {
            let Some(at) = sessions.iter().position(|s| s.id == id) else {
                return;
            };
            let gone = sessions.swap_remove(at);
            // A replaced session leaves its replacement (same instance) on record.
            if let Some(shared) = &self.shared
                && !sessions.iter().any(|s| s.instance == gone.instance)
            {
                shared.delete(cluster, &gone.instance);
            }
        }
        self.clusters.remove_if(cluster, |_, sessions| sessions.is_empty());
        self.removed.notify_waiters();
    }
}

impl Session {
    /// What the shared registry records of it.
    fn record(&self) -> SessionRecord {
        SessionRecord {
            since: crate::audit::rfc3339(self.since),
            transport: self.connection.kind().to_owned(),
            protocol: crate::proto::VERSION,
        }
    }
}

/// What registering a session found.
#[derive(Debug)]
pub struct Registered {
    /// The other instances serving the cluster.
    pub beside: Vec<String>,
    /// The address of the session of the same instance that this one replaced.
    pub replaced: Option<std::net::SocketAddr>,
}

/// Unregisters its session when dropped, and only its own.
pub struct SessionGuard {
    registry: Arc<Registry>,
    cluster: String,
    id: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.registry.remove(&self.cluster, self.id);
    }
}
