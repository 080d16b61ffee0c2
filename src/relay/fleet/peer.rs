//! The relay-to-relay link: QUIC with mutual TLS from the fleet's CA, one stream per forwarded
//! request.
//!
//! # Threat model
//!
//! Anyone may reach the peer port. A connection is accepted only if its client certificate chains
//! to the fleet CA (`peers.ca_file`): callers, agents and relays of another fleet are refused in
//! the handshake, before any stream. A dialling relay checks that the certificate of the relay it
//! dials names that relay's instance, so the registry cannot point it at another fleet member
//! than the one it names. A peer can only ask this relay to put a stream on a tunnel this relay
//! holds: it registers nothing, and a stream for a cluster held elsewhere is refused
//! ([`reset::NO_ROUTE`]), never forwarded again (one hop at most, so no loop). What it forwards
//! carries the caller's credential as the first relay made it; the agent validates it itself, so
//! a relay cannot lend another an identity the agent would not accept from it.
//!
//! ```text
//! peer stream = u8 version (1), u8 cluster length, cluster name, then the tunnel's own framing
//!               (the request head, sent once acknowledged; the answering relay reads it for its
//!               span and passes it on, with its own `traceparent` when the request is sampled)
//! answer      = u8 ACK (1) once the answering relay opened a stream on its agent's tunnel, then
//!               the agent's bytes; or a reset with NO_ROUTE before anything, if it holds none
//! ```
//!
//! The acknowledgement costs a round trip on the peer link, and buys a safe retry: a relay that
//! lost the cluster's tunnel since the registry said otherwise (its agent moved) answers
//! NO_ROUTE before the request was sent, and the forwarding relay tries the next holder.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::records::Holder;
use crate::config::{PeersConfig, TunnelConfig};
use crate::relay::registry::Registry;
use crate::telemetry::LogBudget;
use crate::tls::{self, TlsError};
use crate::transport::{AnyRecv, AnySend, RecvHalf, SendHalf, StreamError, next_chunk, pipe, write_chunk};
use crate::tunnel::{self, DialError, TunnelError};
use crate::wire::reset;
use hop::{PreambleError, read_preamble};

/// ALPN of the peer link; nothing else is accepted on it.
pub const PEER_ALPN: &[u8] = b"hawser-peer/1";
/// Version of the peer stream's preamble.
const PREAMBLE_VERSION: u8 = 1;
/// The answering relay's acknowledgement: a stream on its agent's tunnel is open.
const ACK: u8 = 1;
/// Handshakes in progress at once on the peer port.
const MAX_HANDSHAKES: usize = 64;
/// How long a peer has for its handshake, and for a stream's preamble.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dial to a peer may take: relays of a fleet are near each other, and a dead one
/// must not hold a request for long.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a peer that failed is tried only after every other holder of a cluster: a relay
/// that died is otherwise first in line for some requests until its lease expires.
const QUARANTINE: Duration = Duration::from_secs(10);
/// Failed peer handshakes logged a minute at most, on each side: a misconfigured relay fails one
/// per forwarded request.
const HANDSHAKE_FAILURES_LOGGED_PER_MINUTE: u32 = 10;

/// Why the peer link could not be set up, or a peer reached.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Certificates, keys or the CA.
    #[error("peers: {0}")]
    Tls(#[from] TlsError),
    /// This relay's own certificate, which its peers would refuse.
    #[error("peers.cert_file {file}: {why}")]
    OwnCert {
        /// The certificate file.
        file: String,
        /// Why peers would refuse it.
        why: String,
    },
    /// The peer port could not be bound.
    #[error("peers.listen {addr}: {error}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        error: std::io::Error,
    },
    /// The QUIC endpoint.
    #[error("peers: {0}")]
    Endpoint(#[from] TunnelError),
    /// The peer's advertised address does not resolve.
    #[error("relay {relay}: its address {address:?} does not resolve: {why}")]
    Resolve {
        /// The relay.
        relay: String,
        /// What it advertised.
        address: String,
        /// The cause.
        why: String,
    },
    /// No connection.
    #[error("relay {relay}: {why}")]
    Dial {
        /// The relay.
        relay: String,
        /// The cause.
        why: String,
    },
    /// The relay holds no tunnel of the cluster (any more).
    #[error("relay {0} holds no tunnel of the cluster any more")]
    NoRoute(String),
    /// A connection, but no stream on it.
    #[error("relay {relay}: {error}")]
    Stream {
        /// The relay.
        relay: String,
        /// The cause.
        error: StreamError,
    },
}

/// The peer endpoint and the pooled connection to each peer.
pub struct Peers {
    endpoint: quinn::Endpoint,
    /// One slot per peer relay; a slot's lock is held while it dials, so concurrent requests
    /// share one connection attempt.
    pool: DashMap<String, Arc<tokio::sync::Mutex<Option<quinn::Connection>>>>,
    /// When each peer last failed to take a stream.
    failed: DashMap<String, std::time::Instant>,
    /// Bounds the warnings about handshakes with peers that failed, as the dialling side.
    dial_failures: Arc<LogBudget>,
    /// Bounds the warnings about handshakes peers failed, as the dialled side.
    refused: LogBudget,
    /// Owner of the task watching each pooled connection for its end; they end with the endpoint.
    watchers: TaskTracker,
}

impl Peers {
    /// Loads the fleet CA and this relay's certificate, checks the certificate is one its peers
    /// will take from relay `instance`, and binds the peer port.
    pub fn bind(config: &PeersConfig, instance: &str, tunnel: &TunnelConfig) -> Result<Self, PeerError> {
        let roots = Arc::new(tls::root_store(&config.ca_file)?);
        let certs = tls::load_certs(&config.cert_file)?;
        own_cert::check(config, instance, &certs, &roots)?;
        let key = tls::load_key(&config.key_file)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), tls::provider())
            .build()
            .map_err(TlsError::from)?;
        let mut server = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::from)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(TlsError::from)?;
        server.alpn_protocols = vec![PEER_ALPN.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::from)?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(TlsError::from)?;
        client.alpn_protocols = vec![PEER_ALPN.to_vec()];
        // The agents' windows and stream limits, but the peer link's own liveness: a relay
        // that died must fail what was forwarded to it within seconds.
        let transport = TunnelConfig {
            keep_alive_secs: config.keep_alive_secs,
            idle_timeout_secs: config.idle_timeout_secs,
            ..tunnel.clone()
        };
        let endpoint = tunnel::peer_endpoint(config.listen, server, client, &transport).map_err(|e| match e {
            TunnelError::Bind { addr, error } => PeerError::Listen { addr, error },
            other => PeerError::Endpoint(other),
        })?;
        Ok(Self {
            endpoint,
            pool: DashMap::new(),
            failed: DashMap::new(),
            dial_failures: Arc::new(LogBudget::per_minute(HANDSHAKE_FAILURES_LOGGED_PER_MINUTE)),
            refused: LogBudget::per_minute(HANDSHAKE_FAILURES_LOGGED_PER_MINUTE),
            watchers: TaskTracker::new(),
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Each peer relay this relay has dialled, and whether its connection is up now: a live
    /// pooled connection (one being dialled is not up yet).
    pub fn links(&self) -> Vec<(String, bool)> {
        self.pool
            .iter()
            .map(|entry| {
                let up = entry
                    .value()
                    .try_lock()
                    .is_ok_and(|slot| slot.as_ref().is_some_and(|c| c.close_reason().is_none()));
                (entry.key().clone(), up)
            })
            .collect()
    }

    /// Whether `relay` failed to take a stream within the last [`QUARANTINE`].
    pub fn recently_failed(&self, relay: &str) -> bool {
        self.failed.get(relay).is_some_and(|at| at.elapsed() < QUARANTINE)
    }

    /// Opens a stream to `holder` for a request to `cluster`, dialling it first if no live
    /// connection to it is pooled; gives up after `wait`. A failure (other than the peer saying
    /// it holds no tunnel of the cluster) puts the peer in quarantine.
    pub async fn open(&self, holder: &Holder, cluster: &str, wait: Duration) -> Result<(AnySend, AnyRecv), PeerError> {
        let opened = self.try_open(holder, cluster, wait).await;
        match &opened {
            Ok(_) => {
                self.failed.remove(&holder.relay);
            }
            Err(PeerError::NoRoute(_)) => {}
            Err(_) => {
                self.failed.insert(holder.relay.clone(), std::time::Instant::now());
            }
        }
        opened
    }

    async fn try_open(&self, holder: &Holder, cluster: &str, wait: Duration) -> Result<(AnySend, AnyRecv), PeerError> {
        let connection = tokio::time::timeout(wait, self.connection(holder))
            .await
            .map_err(|_| PeerError::Dial {
                relay: holder.relay.clone(),
                why: format!("no connection within {wait:?}"),
            })??;
        let stream_error = |error| PeerError::Stream {
            relay: holder.relay.clone(),
            error,
        };
        let (mut send, recv) = tokio::time::timeout(wait, connection.open_bi())
            .await
            .map_err(|_| stream_error(StreamError::Closed(format!("no stream free within {wait:?}"))))?
            .map_err(|e| stream_error(StreamError::Closed(e.to_string())))?;
        write_chunk(&mut send, preamble(cluster)).await.map_err(stream_error)?;
        let mut recv = recv;
        let answer = tokio::time::timeout(wait, next_chunk(&mut recv))
            .await
            .map_err(|_| stream_error(StreamError::Closed(format!("no answer within {wait:?}"))))?;
        match answer {
            Ok(Some(first)) if first.first() == Some(&ACK) => {
                Ok((AnySend::Quic(send), AnyRecv::Prefixed(Some(first.slice(1..)), recv)))
            }
            Err(StreamError::Reset(code)) if code == u64::from(reset::NO_ROUTE) => {
                Err(PeerError::NoRoute(holder.relay.clone()))
            }
            Ok(_) => Err(stream_error(StreamError::Closed("no acknowledgement".into()))),
            Err(e) => Err(stream_error(e)),
        }
    }

    async fn connection(&self, holder: &Holder) -> Result<quinn::Connection, PeerError> {
        // The slot is cloned out: no map guard is held across the dial.
        let slot = self.pool.entry(holder.relay.clone()).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(connection.clone());
        }
        let resolve_error = |why: String| PeerError::Resolve {
            relay: holder.relay.clone(),
            address: holder.peer.clone(),
            why,
        };
        let address = tokio::net::lookup_host(&holder.peer)
            .await
            .map_err(|e| resolve_error(e.to_string()))?
            .next()
            .ok_or_else(|| resolve_error("no address".into()))?;
        let connection = match tunnel::dial(&self.endpoint, address, &holder.relay, DIAL_TIMEOUT).await {
            Ok(connection) => connection,
            Err(e) => {
                if let DialError::Handshake(reason) = &e {
                    handshake_failed(&self.dial_failures, &holder.relay, address, reason);
                }
                return Err(PeerError::Dial {
                    relay: holder.relay.clone(),
                    why: e.to_string(),
                });
            }
        };
        info!(peer = %holder.relay, %address, "connected to a peer relay");
        *slot = Some(connection.clone());
        let (watched, peer, budget) = (connection.clone(), holder.relay.clone(), self.dial_failures.clone());
        self.watchers.spawn(async move {
            let reason = watched.closed().await;
            // TLS 1.3: a peer that refuses our certificate does so once our handshake is done.
            // Our own close (the relay is stopping) is no news.
            if !handshake_failed(&budget, &peer, address, &reason)
                && !matches!(reason, quinn::ConnectionError::LocallyClosed)
            {
                info!(%peer, %address, %reason, "the connection to a peer relay was lost; the next request dials again");
            }
        });
        Ok(connection)
    }

    /// Closes every connection (the relay is stopping).
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"relay shutting down");
    }
}

/// Whether `reason` is a failed TLS handshake with `relay`; warns of it within `budget`. Either
/// side's certificate is the cause: one that does not name the relay it is dialled as, or one
/// not from the fleet CA.
fn handshake_failed(
    budget: &LogBudget,
    relay: &str,
    address: std::net::SocketAddr,
    reason: &quinn::ConnectionError,
) -> bool {
    let code = match reason {
        quinn::ConnectionError::TransportError(e) => e.code,
        quinn::ConnectionError::ConnectionClosed(close) => close.error_code,
        _ => return false,
    };
    // QUIC carries TLS alerts as transport error codes 0x100 to 0x1ff.
    if u64::from(code) >> 8 != 1 {
        return false;
    }
    if let Some(suppressed) = budget.take() {
        warn!(
            peer = %relay, %address, error = %reason, suppressed,
            "TLS handshake with a peer relay failed: each relay's peers.cert_file must name its instance, and \
             come from the fleet CA (peers.ca_file)"
        );
    }
    true
}

/// The first bytes of a peer stream: which cluster the request is for.
fn preamble(cluster: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(2 + cluster.len());
    buf.extend_from_slice(&[PREAMBLE_VERSION, cluster.len() as u8]);
    buf.extend_from_slice(cluster.as_bytes());
    buf.freeze()
}

/// What serving forwarded requests needs.
pub struct Serving {
    /// This relay's tunnels.
    pub registry: Arc<Registry>,
    /// How long to wait for a stream on a saturated tunnel.
    pub open_stream_timeout: Duration,
    /// Owner of every peer connection's task.
    pub tasks: TaskTracker,
    /// Owner of every forwarded stream's task (a draining relay waits for them).
    pub streams: TaskTracker,
}

/// Accepts peers until `stop`, putting each of their streams on a tunnel this relay holds.
pub async fn serve(peers: Arc<Peers>, serving: Arc<Serving>, stop: CancellationToken) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let incoming = tokio::select! {
            incoming = peers.endpoint.accept() => incoming,
            () = stop.cancelled() => return,
        };
        let Some(incoming) = incoming else { return };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            incoming.ignore();
            continue;
        };
        let remote = incoming.remote_address();
        let serving_for = serving.clone();
        let (stop, peers) = (stop.clone(), peers.clone());
        serving.tasks.spawn(
            async move {
                let connection = match tokio::time::timeout(PEER_TIMEOUT, async { incoming.accept()?.await }).await {
                    Ok(Ok(connection)) => connection,
                    Ok(Err(e)) => {
                        // A caller, an agent, a relay of another fleet (no certificate of ours),
                        // or one that dialled us under another instance's name: once per request.
                        match peers.refused.take() {
                            Some(suppressed) => warn!(error = %e, suppressed, "peer handshake failed"),
                            None => debug!(error = %e, "peer handshake failed"),
                        }
                        return;
                    }
                    Err(_) => return,
                };
                drop(permit);
                debug!("peer relay connected");
                connection_streams(connection, serving_for, stop).await;
            }
            .instrument(info_span!("peer", %remote)),
        );
    }
}

async fn connection_streams(connection: quinn::Connection, serving: Arc<Serving>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            accepted = connection.accept_bi() => accepted,
            () = stop.cancelled() => return,
        };
        match accepted {
            Ok((send, recv)) => {
                serving
                    .streams
                    .spawn(forward(send, recv, serving.clone()).in_current_span());
            }
            Err(e) => {
                debug!(reason = %e, "peer connection ended");
                return;
            }
        }
    }
}

/// Reads a forwarded stream's preamble and joins the stream to one of this relay's own tunnels
/// of its cluster; refuses it with [`reset::NO_ROUTE`] if there is none. The request's head is
/// read between the two, for this relay's span of the request ([`hop`]).
async fn forward(mut send: quinn::SendStream, mut recv: quinn::RecvStream, serving: Arc<Serving>) {
    let read = tokio::time::timeout(PEER_TIMEOUT, read_preamble(&mut recv))
        .await
        .unwrap_or(Err(PreambleError::Late));
    let (cluster, rest) = match read {
        Ok(read) => read,
        Err(why) => {
            debug!(%why, "unreadable peer stream");
            recv.stop_reading(reset::BAD_HEAD);
            send.cut(reset::BAD_HEAD);
            return;
        }
    };
    let refuse = |send: &mut quinn::SendStream, recv: &mut quinn::RecvStream| {
        recv.stop_reading(reset::NO_ROUTE);
        send.cut(reset::NO_ROUTE);
    };
    // This relay's own tunnels only: a forwarded request is never forwarded again.
    let Some(session) = serving.registry.pick(&cluster) else {
        debug!(%cluster, "forwarded request for a cluster this relay holds no tunnel of");
        return refuse(&mut send, &mut recv);
    };
    let opened = tokio::time::timeout(serving.open_stream_timeout, session.connection.open()).await;
    let Ok(Ok((mut agent_send, agent_recv))) = opened else {
        debug!(%cluster, "no stream on the agent's tunnel for a forwarded request");
        return refuse(&mut send, &mut recv);
    };
    if write_chunk(&mut send, Bytes::from_static(&[ACK])).await.is_err() {
        return;
    }
    // The forwarding relay sends the request head once acknowledged: read here to join the
    // request's trace, bounded as the agent bounds it.
    let mut recv = AnyRecv::Prefixed(Some(rest), recv);
    let hop = match hop::read(&mut recv, PEER_TIMEOUT, &cluster, session.id).await {
        Ok(hop) => hop,
        Err(why) => {
            debug!(%cluster, %why, "refused the head of a forwarded request");
            recv.stop_reading(why.code());
            send.cut(why.code());
            agent_send.cut(reset::CANCELLED);
            return;
        }
    };
    let hop::Hop { head, first, span } = hop;
    let mut chunks = vec![head];
    if !first.is_empty() {
        chunks.push(first);
    }
    if let Err(e) = agent_send.send_chunks(&mut chunks).await {
        recv.stop_reading(reset::CANCELLED);
        let lost = matches!(e, crate::transport::StreamError::Closed(_));
        send.cut(if lost { reset::TUNNEL_LOST } else { reset::SOURCE_FAILED });
        return;
    }
    pipe::join((send, recv), (agent_send, agent_recv))
        .instrument(span)
        .await;
}

mod hop;
mod own_cert;

#[cfg(test)]
mod tests;
