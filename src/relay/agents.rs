//! The relay's QUIC listener: agents connect, prove their cluster, and stay
//! registered until their connection ends.
//!
//! An agent proves its cluster with that cluster's agent token. The relay
//! keeps only the token's SHA-256 and compares digests in constant time, so
//! neither a config leak nor timing reveals a token, and a token for cluster
//! A can never register as cluster B (the digest is looked up by the cluster
//! the agent names).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use super::registry::Registry;
use crate::proto::{self, Hello, Welcome};
use crate::tunnel;

/// How long an agent has to send its hello after the handshake.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Error codes the relay closes an agent connection with.
pub mod close_code {
    /// The hello was missing, malformed or late.
    pub const BAD_HELLO: u32 = 1;
    /// Unknown cluster or wrong token.
    pub const REFUSED: u32 = 2;
    /// The relay is shutting down.
    pub const SHUTDOWN: u32 = 3;
}

/// Agent token digests by cluster.
pub struct AgentTokens(HashMap<String, [u8; 32]>);

impl AgentTokens {
    /// Builds the table from `(cluster, hex SHA-256)` pairs (validated by config).
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut map = HashMap::new();
        for (cluster, hex) in pairs {
            let mut digest = [0u8; 32];
            for (i, byte) in digest.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
            }
            map.insert(cluster.to_owned(), digest);
        }
        Self(map)
    }

    /// Whether `cluster` is configured at all.
    pub fn knows(&self, cluster: &str) -> bool {
        self.0.contains_key(cluster)
    }

    /// Whether `token` is the agent token of `cluster`.
    pub fn verify(&self, cluster: &str, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        match self.0.get(cluster) {
            Some(expected) => bool::from(expected.ct_eq(&digest)),
            None => false,
        }
    }
}

/// The hex SHA-256 of an agent token, as the relay's config stores it.
pub fn token_digest_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Handshakes in progress at once; beyond it new attempts go unanswered until some finish.
pub const MAX_HANDSHAKES: usize = 256;

/// Handshakes in progress beyond which an unvalidated source must first answer a QUIC Retry.
pub const RETRY_ABOVE: usize = 64;

/// What the listener did with incoming attempts, for tests and metrics.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Attempts sent a QUIC Retry (address validation).
    pub retried: AtomicU64,
    /// Attempts ignored (no handshake permit, or stopping).
    pub ignored: AtomicU64,
    /// Attempts whose handshake was started.
    pub accepted: AtomicU64,
}

impl ListenerStats {
    /// `(retried, ignored, accepted)` at this moment.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        (load(&self.retried), load(&self.ignored), load(&self.accepted))
    }
}

/// What the agent listener needs.
pub struct Listener {
    /// The relay's QUIC endpoint.
    pub endpoint: quinn::Endpoint,
    /// Agent token digests by cluster.
    pub tokens: Arc<AgentTokens>,
    /// Where registered sessions go.
    pub registry: Arc<Registry>,
    /// This relay's instance name, told to agents in the welcome.
    pub relay: String,
    /// One permit per handshake in progress ([`MAX_HANDSHAKES`] in the relay), shared by all
    /// sources.
    pub handshakes: Arc<Semaphore>,
    /// Once fewer permits than this are free, unvalidated sources get a Retry first
    /// (`MAX_HANDSHAKES - RETRY_ABOVE` in the relay).
    pub retry_below_free: usize,
    /// Counters of what happened to incoming attempts.
    pub stats: Arc<ListenerStats>,
}

/// Accepts agent connections until the endpoint closes; once `stopping` turns true (or its
/// sender is gone), closes every tunnel with [`close_code::SHUTDOWN`] and leaves new attempts
/// unanswered.
///
/// Each `Incoming` is judged before any handshake work. While many handshakes are in progress,
/// an unvalidated source address gets a QUIC Retry first, so a flood from spoofed sources can
/// hold only the first few permits and cannot starve real agents; below that, the Retry is
/// skipped: it costs every connect a round trip, and with it about one attempt in a few
/// thousand hung on loopback (docs/benchmarks.md). Until a source answers, QUIC's
/// anti-amplification limit bounds what it makes us send. Without a handshake permit, and while
/// stopping, an attempt is ignored rather than refused: the agent's QUIC stack resends its first
/// packet (about 1, 3 and 7 s after the dial, with quinn's defaults), so the attempt succeeds if
/// a permit frees up or the next relay listens on this address by then, and the agent is not
/// charged a failure and a longer backoff. Past its handshake deadline it is, as for a refusal.
pub async fn serve(listener: Listener, stopping: watch::Receiver<bool>) {
    let Listener {
        endpoint,
        tokens,
        registry,
        relay,
        handshakes,
        retry_below_free,
        stats,
    } = listener;
    while let Some(incoming) = endpoint.accept().await {
        if is_stopping(&stopping) {
            stats.ignored.fetch_add(1, Ordering::Relaxed);
            incoming.ignore();
            continue;
        }
        if handshakes.available_permits() < retry_below_free
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            stats.retried.fetch_add(1, Ordering::Relaxed);
            let _ = incoming.retry();
            continue;
        }
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            debug!(net.peer.address = %incoming.remote_address(), "handshake limit reached; attempt ignored");
            stats.ignored.fetch_add(1, Ordering::Relaxed);
            incoming.ignore();
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let remote = incoming.remote_address();
        let (tokens, registry, relay) = (tokens.clone(), registry.clone(), relay.clone());
        let mut stopping = stopping.clone();
        tokio::spawn(
            async move {
                // Not cut short by a stop: a handshake in progress finishes (it is bounded), so
                // its agent hears the shutdown code rather than a bare close.
                let handshake = tokio::time::timeout(HELLO_TIMEOUT, incoming).await;
                drop(permit);
                let connection = match handshake {
                    Ok(Ok(connection)) => connection,
                    Ok(Err(e)) => {
                        info!(error = %e, "agent handshake failed");
                        return;
                    }
                    Err(_) => {
                        info!("agent handshake timed out");
                        return;
                    }
                };
                tokio::select! {
                    _ = session(connection.clone(), &tokens, &registry, &relay) => {}
                    _ = stopped(&mut stopping) => {
                        connection.close(close_code::SHUTDOWN.into(), b"relay shutting down");
                    }
                }
            }
            .instrument(info_span!("agent_connection", net.peer.address = %remote)),
        );
    }
}

/// Whether the relay is stopping, or whoever could stop it is gone.
fn is_stopping(stopping: &watch::Receiver<bool>) -> bool {
    *stopping.borrow() || stopping.has_changed().is_err()
}

/// Resolves once [`is_stopping`] would say so.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

async fn session(connection: quinn::Connection, tokens: &AgentTokens, registry: &Arc<Registry>, relay: &str) {
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        let mut control = tunnel::join(connection.accept_bi().await.ok()?);
        let hello: Hello = proto::read_frame(&mut control).await.ok()?;
        Some((control, hello))
    })
    .await;
    let Ok(Some((mut control, hello))) = hello else {
        let why = match hello {
            Err(_) => "no hello within the deadline",
            Ok(_) => "no readable hello",
        };
        info!(reason = why, "agent connection closed before registering");
        connection.close(close_code::BAD_HELLO.into(), b"expected a hello");
        return;
    };
    if !tokens.verify(&hello.cluster, &hello.token) {
        warn!(cluster = %hello.cluster, agent = %hello.instance, "agent refused: unknown cluster or wrong token");
        connection.close(close_code::REFUSED.into(), b"unknown cluster or wrong agent token");
        return;
    }
    let guard = registry.register(&hello.cluster, &hello.instance, connection.clone());
    let welcome = Welcome {
        relay: relay.to_owned(),
        session: guard.id(),
    };
    if proto::write_frame(&mut control, &welcome).await.is_err() {
        return;
    }
    info!(cluster = %hello.cluster, agent = %hello.instance, session = guard.id(), "agent registered");
    let reason = connection.closed().await;
    info!(cluster = %hello.cluster, agent = %hello.instance, session = guard.id(), %reason, "agent gone");
}

#[cfg(test)]
mod tests;
