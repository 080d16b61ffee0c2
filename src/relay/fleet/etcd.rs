//! Keeps this relay's entries in etcd and the fleet view current from etcd's watch.
//!
//! One task per relay. Each round: connect, grant a lease of `lease_ttl_secs`, write the relay's
//! presence and every session it holds under that lease, revoke the previous round's lease (its
//! keys not written again vanish with it), read the whole prefix into the view, then watch it
//! from the revision read, writing local changes as they come and keeping the lease alive at a
//! third of its TTL. Any failure ends the round and the next starts after a pause; the view keeps
//! what it last knew meanwhile, so routes already known keep working while etcd is away. If the
//! relay dies, its lease expires and every relay's watch sees its entries deleted. (Log fields
//! are escaped by the log formatter: etcd's words reach a log line only that way.)

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, PutOptions, TlsOptions, Txn, TxnOp,
    WatchOptions,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::pending::{Pending, SessionKey};
use super::records::{Keys, RelayRecord, SessionRecord, View};
use crate::config::EtcdConfig;
use crate::relay::registry::Registry;

/// Operations per etcd transaction (etcd's default limit is 128).
const BATCH: usize = 100;
/// Pause after a failed round, growing to the lease TTL.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Whether etcd answered lately: part of the relay's readiness.
#[derive(Debug)]
pub struct Health {
    last_ok: Mutex<Option<Instant>>,
    within: Duration,
    /// Turns true once the view was first read whole.
    synced: watch::Sender<bool>,
}

impl Health {
    pub(super) fn new(within: Duration) -> Self {
        Self {
            last_ok: Mutex::new(None),
            within,
            synced: watch::Sender::new(false),
        }
    }

    fn ok(&self) {
        *self.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Marks the view as read whole from etcd at least once.
    fn synced(&self) {
        self.synced.send_if_modified(|s| !std::mem::replace(s, true));
    }

    /// Resolves once the view was read whole from etcd at least once.
    pub async fn first_sync(&self) {
        let mut synced = self.synced.subscribe();
        // The sender lives as long as `self`: this cannot fail while borrowed.
        let _ = synced.wait_for(|s| *s).await;
    }

    /// Whether etcd answered within the lease TTL (so this relay's entries are still there).
    pub fn reachable(&self) -> bool {
        self.last_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < self.within)
    }
}

/// Why a round with etcd ended.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the lease expired")]
    LeaseExpired,
    #[error("etcd closed the {0} stream")]
    Closed(&'static str),
    #[error("the watch was cancelled: {0}")]
    Cancelled(String),
    #[error("reading {path}: {error}")]
    File { path: String, error: std::io::Error },
}

/// What the task needs.
pub struct Sync {
    /// etcd and the key layout.
    pub config: EtcdConfig,
    /// The key layout under `config.prefix`.
    pub keys: Keys,
    /// This relay's instance name.
    pub me: String,
    /// This relay's presence, as written (draining changes it).
    pub presence: watch::Receiver<RelayRecord>,
    /// Where the fleet is seen.
    pub view: Arc<View>,
    /// This relay's session changes not yet written.
    pub pending: Arc<Pending>,
    /// This relay's sessions, for a full write.
    pub registry: Arc<Registry>,
    /// Readiness.
    pub health: Arc<Health>,
}

impl Sync {
    /// Runs rounds until `stop`, then revokes the lease so this relay's entries go at once.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut lease = None;
        let mut retry = FIRST_RETRY;
        let ttl = Duration::from_secs(self.config.lease_ttl_secs);
        loop {
            let round = tokio::select! {
                ended = self.round(&mut lease) => ended,
                () = stop.cancelled() => break,
            };
            match round {
                Ok(()) => retry = FIRST_RETRY,
                Err(e) => warn!(error = %e, retry_in = ?retry, "registry (etcd) round ended"),
            }
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                () = stop.cancelled() => break,
            }
            retry = (retry * 2).min(ttl);
        }
        if let Some(id) = lease {
            let timeout = Duration::from_secs(self.config.timeout_secs);
            let revoked = tokio::time::timeout(timeout, async {
                let mut client = self.connect().await?;
                client.lease_revoke(id).await?;
                Ok::<_, RoundError>(())
            })
            .await;
            match revoked {
                Ok(Ok(())) => info!("registry entries removed"),
                Ok(Err(e)) => warn!(error = %e, "registry entries left to expire"),
                Err(_) => warn!("registry entries left to expire (etcd did not answer)"),
            }
        }
    }

    async fn connect(&self) -> Result<Client, RoundError> {
        let timeout = Duration::from_secs(self.config.timeout_secs);
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(timeout, timeout);
        if let Some(tls) = self.tls()? {
            options = options.with_tls(tls);
        }
        Ok(Client::connect(&self.config.endpoints, Some(options)).await?)
    }

    fn tls(&self) -> Result<Option<TlsOptions>, RoundError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|error| RoundError::File {
                path: path.display().to_string(),
                error,
            })
        };
        let https = self.config.endpoints.iter().any(|e| e.starts_with("https://"));
        if !https && self.config.ca_file.is_none() && self.config.cert_file.is_none() {
            return Ok(None);
        }
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.config.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.config.cert_file, &self.config.key_file) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Some(tls))
    }

    /// One round; `lease` is the lease of the round before, replaced by this round's.
    async fn round(&mut self, lease: &mut Option<i64>) -> Result<(), RoundError> {
        let timeout = Duration::from_secs(self.config.timeout_secs);
        let mut client = self.connect().await?;
        let ttl = i64::try_from(self.config.lease_ttl_secs).unwrap_or(i64::MAX);
        let id = in_time(timeout, client.lease_grant(ttl, None)).await?.id();
        let previous = lease.replace(id);
        let (mut keeper, mut acks) = in_time(timeout, client.lease_keep_alive(id)).await?;
        // Changes from now on are written after the full write below; written twice is harmless.
        self.pending.take();
        let presence = self.presence.borrow_and_update().clone();
        let mut ops = vec![put(&self.keys.relay(&self.me), &presence, id)];
        for (cluster, agent, record) in self.registry.records() {
            ops.push(put(&self.keys.session(&cluster, &self.me, &agent), &record, id));
        }
        for batch in ops.chunks(BATCH) {
            in_time(timeout, client.txn(Txn::new().and_then(batch.to_vec()))).await?;
        }
        if let Some(old) = previous.filter(|old| *old != id) {
            // Keys written again above now belong to the new lease; the old one takes the rest.
            if let Err(e) = in_time(timeout, client.lease_revoke(old)).await {
                debug!(error = %e, "previous lease not revoked (it expires by itself)");
            }
        }
        let all = in_time(
            timeout,
            client.get(self.keys.all(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = all.header().map_or(0, |h| h.revision());
        self.view.clear();
        for kv in all.kvs() {
            if let Some(key) = self.keys.parse(kv.key()) {
                self.view.put(key, kv.value());
            }
        }
        let mut watch = in_time(
            timeout,
            client.watch(
                self.keys.all(),
                Some(WatchOptions::new().with_prefix().with_start_revision(revision + 1)),
            ),
        )
        .await?;
        self.health.ok();
        self.health.synced();
        info!(relays = self.view.snapshot().0.len(), "registry (etcd) in sync");
        let mut tick = tokio::time::interval(Duration::from_secs(self.config.lease_ttl_secs) / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => in_time(timeout, keeper.keep_alive()).await?,
                ack = acks.message() => match ack? {
                    Some(ack) if ack.ttl() > 0 => self.health.ok(),
                    Some(_) => return Err(RoundError::LeaseExpired),
                    None => return Err(RoundError::Closed("lease")),
                },
                event = watch.message() => {
                    let response = event?.ok_or(RoundError::Closed("watch"))?;
                    if response.canceled() {
                        return Err(RoundError::Cancelled(response.cancel_reason().to_owned()));
                    }
                    self.apply(&response);
                }
                () = self.pending.changed() => {
                    let changes = self.pending.take();
                    for batch in self.ops(changes, id).chunks(BATCH) {
                        in_time(timeout, client.txn(Txn::new().and_then(batch.to_vec()))).await?;
                    }
                    self.health.ok();
                }
                changed = self.presence.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let presence = self.presence.borrow_and_update().clone();
                    in_time(timeout, client.put(self.keys.relay(&self.me), json(&presence), Some(PutOptions::new().with_lease(id)))).await?;
                }
            }
        }
    }

    fn ops(&self, changes: HashMap<SessionKey, Option<SessionRecord>>, lease: i64) -> Vec<TxnOp> {
        changes
            .into_iter()
            .map(|((cluster, agent), change)| {
                let key = self.keys.session(&cluster, &self.me, &agent);
                match change {
                    Some(record) => put(&key, &record, lease),
                    None => TxnOp::delete(key, None),
                }
            })
            .collect()
    }

    fn apply(&self, response: &etcd_client::WatchResponse) {
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(key) = self.keys.parse(kv.key()) else {
                continue;
            };
            match event.event_type() {
                EventType::Put => {
                    if !self.view.put(key, kv.value()) {
                        debug!(key = %String::from_utf8_lossy(kv.key()), "unreadable registry entry ignored");
                    }
                }
                EventType::Delete => self.view.delete(key),
            }
        }
    }
}

/// `call`, or a timeout error once `timeout` has passed.
async fn in_time<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, RoundError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(RoundError::Timeout(timeout)),
    }
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings and numbers: serialising cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn put<T: serde::Serialize>(key: &str, value: &T, lease: i64) -> TxnOp {
    TxnOp::put(key, json(value), Some(PutOptions::new().with_lease(lease)))
}
