//! A relay as one of a fleet: its tunnels written to a shared registry (etcd), the other relays'
//! read from it, and requests for a cluster whose agents another relay holds forwarded there
//! over the peer link (one hop).
//!
//! The local registry stays the fast path: a relay that holds a tunnel of the cluster uses it.
//! Only otherwise does it look at the fleet view (a map in memory, kept current by etcd's watch,
//! so a request never waits on etcd) and open a stream to a relay that holds one.

mod etcd;
mod peer;
mod pending;
mod records;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use etcd::Health;
pub use peer::{PeerError, Peers};
pub use pending::Pending;
pub use records::{Held, Keys, RelayRecord, SessionRecord, View};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::registry::Registry;
use crate::config::{RegistryConfig, RelayConfig};
use crate::transport::{AnyRecv, AnySend};

/// This relay's part in a fleet.
pub struct Fleet {
    me: String,
    config: crate::config::EtcdConfig,
    /// The fleet as the registry says it is.
    pub view: Arc<View>,
    /// This relay's session changes for the registry.
    pub pending: Arc<Pending>,
    /// The peer link.
    pub peers: Arc<Peers>,
    health: Arc<Health>,
    presence: watch::Sender<RelayRecord>,
    turn: AtomicUsize,
    /// Owner of the streams peers forwarded here; a draining relay waits for them.
    forwarded: TaskTracker,
}

/// A stream to a peer relay that holds a tunnel of the cluster.
pub struct Forwarded {
    /// The stream's halves.
    pub stream: (AnySend, AnyRecv),
    /// The relay it goes to.
    pub relay: String,
    /// Cancelled once that relay drains or leaves: a watch or followed log on the stream then
    /// ends cleanly.
    pub hop_end: CancellationToken,
}

/// Why no peer took a request.
#[derive(Debug)]
pub enum NoPeer {
    /// No relay of the fleet holds a tunnel of the cluster.
    NoneHolds,
    /// This relay has not read the registry since it started (within the request's wait).
    Unread,
    /// Some do, and none could be reached: each one's error.
    Unreachable(Vec<PeerError>),
}

impl Fleet {
    /// The fleet part of a relay configured with a shared registry (started at `started`), its
    /// peer port bound; `None` for a relay of its own.
    pub fn new(config: &RelayConfig, started: std::time::SystemTime) -> Result<Option<Self>, PeerError> {
        let (RegistryConfig::Etcd(etcd), Some(peers)) = (&config.registry, &config.peers) else {
            return Ok(None);
        };
        let bound = Peers::bind(peers, &config.instance, &config.tunnel)?;
        let presence = RelayRecord {
            peer: peers.advertised(),
            protocol: crate::proto::VERSION,
            started: crate::audit::rfc3339(started),
            draining: false,
        };
        Ok(Some(Self {
            me: config.instance.clone(),
            config: etcd.clone(),
            view: Arc::default(),
            pending: Arc::default(),
            peers: Arc::new(bound),
            health: Arc::new(Health::new(Duration::from_secs(etcd.lease_ttl_secs))),
            presence: watch::Sender::new(presence),
            turn: AtomicUsize::new(0),
            forwarded: TaskTracker::new(),
        }))
    }

    /// Starts the registry task and the peer listener; both stop on `stop`, the registry task
    /// after removing this relay's entries.
    pub fn start(
        &self,
        registry: Arc<Registry>,
        open_stream_timeout: Duration,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) {
        let sync = etcd::Sync {
            keys: Keys::new(&self.config.prefix),
            config: self.config.clone(),
            me: self.me.clone(),
            presence: self.presence.subscribe(),
            view: self.view.clone(),
            pending: self.pending.clone(),
            registry: registry.clone(),
            health: self.health.clone(),
        };
        tasks.spawn(sync.run(stop.clone()));
        let serving = Arc::new(peer::Serving {
            registry,
            open_stream_timeout,
            tasks: tasks.clone(),
            streams: self.forwarded.clone(),
        });
        tasks.spawn(peer::serve(self.peers.clone(), serving, stop.clone()));
    }

    /// `host:port` other relays reach this one's peer link at, as the registry has it.
    pub fn peer(&self) -> String {
        self.presence.borrow().peer.clone()
    }

    /// Whether the registry answered within its lease TTL.
    pub fn registry_reachable(&self) -> bool {
        self.health.reachable()
    }

    /// Tells the fleet this relay is draining: peers then prefer others for its clusters.
    pub fn drain(&self) {
        self.presence.send_modify(|p| p.draining = true);
    }

    /// Resolves once every stream peers forwarded here has ended (new ones may still come, and
    /// are waited for too).
    pub async fn forwarded_done(&self) {
        self.forwarded.close();
        self.forwarded.wait().await;
    }

    /// Opens a stream for `cluster` to a relay that holds one of its tunnels, trying each that
    /// the registry names until one answers; `wait` bounds each attempt.
    pub async fn forward(&self, cluster: &str, wait: Duration) -> Result<Forwarded, NoPeer> {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut holders = self.view.holders(cluster, &self.me, turn);
        if holders.is_empty() {
            // A relay that just started has not read the registry yet, and a balancer that does
            // not heed /readyz sends it callers already: "offline" would be a guess. Wait for the
            // first read, within the request's wait.
            if tokio::time::timeout(wait, self.health.first_sync()).await.is_err() {
                return Err(NoPeer::Unread);
            }
            holders = self.view.holders(cluster, &self.me, turn);
        }
        // A peer that failed lately goes last (a stable sort keeps the rest in order).
        holders.sort_by_key(|h| self.peers.recently_failed(&h.relay));
        if holders.is_empty() {
            return Err(NoPeer::NoneHolds);
        }
        let mut errors = Vec::new();
        let mut unreachable = false;
        for holder in holders {
            match self.peers.open(&holder, cluster, wait).await {
                Ok(stream) => {
                    return Ok(Forwarded {
                        stream,
                        hop_end: self.view.hop_end(&holder.relay),
                        relay: holder.relay,
                    });
                }
                Err(e) => {
                    debug!(error = %e, "peer relay did not take the request; trying the next");
                    unreachable |= !matches!(e, PeerError::NoRoute(_));
                    errors.push(e);
                }
            }
        }
        // Every holder the registry named had lost its tunnel: the cluster is offline.
        Err(if unreachable {
            NoPeer::Unreachable(errors)
        } else {
            NoPeer::NoneHolds
        })
    }
}
