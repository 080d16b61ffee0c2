//! The relay's QUIC listener: agents connect, prove their cluster, and stay
//! registered until their connection ends.
//!
//! # Threat model
//!
//! Anyone can reach this port. Until an agent has proved its cluster with that cluster's agent
//! token (its hello), its connection may make the relay hold only a few KiB: the connection-level
//! receive window starts at [`tunnel::UNPROVEN_RECEIVE_WINDOW`] (enough for a hello, [`proto::MAX_HELLO`])
//! and opens up only after the welcome; the agent may open one stream (its control stream), no
//! unidirectional streams and no datagrams. Unproven connections are bounded in all (a handshake
//! permit is held until the hello is judged) and per source address
//! (`limits.agent_unproven_per_source`, counted once the QUIC handshake proved the address).
//! Refused hellos are charged to their source (`limits.agent_hello_failures_per_minute`); a
//! source that ran out is ignored before any handshake work, and refusals are logged at a bounded
//! rate, so guessing tokens is slow and cannot flood the log. Nothing an agent sends reaches a
//! log line unescaped (`telemetry`), and its cluster and instance names must be plain names.
//!
//! A token that proves cluster B lets its holder serve B and nothing else. A second instance
//! serving a cluster beside others gets a share of its requests, so its arrival is a warning in
//! the log and an `agent_registered` audit event naming the others. The agent also says which
//! credential it checks (relay assertions from which issuer, or callers' own tokens for which
//! audiences); one that does not match this relay's configuration for the cluster is refused
//! with a close reason naming both sides, so no request is ever routed to it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::VarInt;
use tokio::sync::{Semaphore, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use super::clusters::Clusters;
use super::limits::{AuthFailures, InFlight};
use super::registry::{Admission, Registry};
use crate::audit::{AgentEvent, AuditLog};
use crate::proto::{self, Hello, Welcome};
use crate::transport::Tunnel;
use crate::tunnel;

/// Why a session ended, as its `agent_gone` event and log line say: the agent retired the tunnel.
const RETIRED: &str = "retired: the agent moved to another tunnel";
/// ... this relay closed its QUIC connection.
const CLOSED_HERE: &str =
    "closed by this relay (a newer session of the instance replaced it, or its token was revoked)";
/// ... the relay stopped.
const SHUTTING_DOWN: &str = "relay shutting down";

/// How long an agent has for its QUIC handshake, and then again for its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Refused hellos logged per minute at most; the rest are counted into the next line.
const REFUSALS_LOGGED_PER_MINUTE: u32 = 10;

pub mod close_code;

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
    /// Attempts ignored because their source ran out of hello failures.
    pub throttled: AtomicU64,
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
    /// One permit per connection that has not proved its cluster yet, handshake included
    /// ([`MAX_HANDSHAKES`] in the relay), shared by all sources.
    pub handshakes: Arc<Semaphore>,
    /// Once fewer permits than this are free, unvalidated sources get a Retry first
    /// (`MAX_HANDSHAKES - RETRY_ABOVE` in the relay).
    pub retry_below_free: usize,
    /// Counters of what happened to incoming attempts.
    pub stats: Arc<ListenerStats>,
    /// What sessions need.
    pub sessions: Arc<Sessions>,
    /// Owner of the per-connection tasks (shared with the TCP door); the relay's shutdown waits
    /// for them within its close deadline.
    pub tasks: tokio_util::task::TaskTracker,
}

/// What judging a hello and keeping a session need.
pub struct Sessions {
    /// Clusters, their agent tokens and trust models.
    pub clusters: Arc<Clusters>,
    /// Where registered sessions go.
    pub registry: Arc<Registry>,
    /// This relay's instance name, told to agents in the welcome.
    pub relay: String,
    /// The issuer of this relay's assertions, if it has `[assertions]`.
    pub assertion_issuer: Option<String>,
    /// The connection receive window once an agent has proved its cluster.
    pub proven_receive_window: VarInt,
    /// Refused hellos per source.
    pub hello_failures: AuthFailures,
    /// Connections per source past the QUIC handshake but not yet past the hello.
    pub unproven: Arc<InFlight<IpAddr>>,
    /// How many of those one source may have.
    pub unproven_per_source: usize,
    /// Tunnel events.
    pub audit: Arc<AuditLog>,
    /// Bounds how often refused hellos are logged.
    pub refusal_log: RefusalLog,
    /// Windows and liveness of tunnels over TCP (QUIC's are in its endpoint).
    pub tunnel: crate::config::TunnelConfig,
    /// Whether this relay is one of a fleet (told to agents in the welcome).
    pub fleet: bool,
    /// Turns true when the relay starts draining: every agent is told to move, and new agents
    /// are refused so that they dial again and land on another relay.
    pub draining: watch::Sender<bool>,
}

/// Accepts agent connections until the endpoint closes; once `stopping` turns true (or its
/// sender is gone), closes every tunnel with [`close_code::SHUTDOWN`] and leaves new attempts
/// unanswered.
///
/// Each `Incoming` is judged before any handshake work. A source that ran out of hello failures
/// is ignored. While many handshakes are in progress, an unvalidated source address gets a QUIC
/// Retry first, so a flood from spoofed sources can hold only the first few permits and cannot
/// starve real agents; below that, the Retry is skipped: it costs every connect a round trip,
/// and with it about one attempt in a few thousand hung on loopback (docs/benchmarks.md). Until a
/// source answers, QUIC's anti-amplification limit bounds what it makes us send. Without a
/// permit, and while stopping, an attempt is ignored rather than refused: the agent's QUIC stack
/// resends its first packet (about 1, 3 and 7 s after the dial, with quinn's defaults), so the
/// attempt succeeds if a permit frees up or the next relay listens on this address by then, and
/// the agent is not charged a failure and a longer backoff. Past its handshake deadline it is, as
/// for a refusal. The permit is held until the hello is judged.
pub async fn serve(listener: Listener, stopping: watch::Receiver<bool>) {
    let Listener {
        endpoint,
        handshakes,
        retry_below_free,
        stats,
        sessions,
        tasks,
    } = listener;
    while let Some(incoming) = endpoint.accept().await {
        if is_stopping(&stopping) {
            stats.ignored.fetch_add(1, Ordering::Relaxed);
            incoming.ignore();
            continue;
        }
        if *sessions.draining.borrow() {
            // Refused at once, not ignored: the agent dials again without waiting out a
            // handshake, and through a balancer lands on another relay.
            stats.ignored.fetch_add(1, Ordering::Relaxed);
            incoming.refuse();
            continue;
        }
        // Only a source whose address was proved can have failed a hello, so a spoofer cannot
        // spend another's budget.
        if sessions.hello_failures.is_spent(incoming.remote_address().ip()) {
            stats.throttled.fetch_add(1, Ordering::Relaxed);
            sessions.refusal_log.throttled(incoming.remote_address().ip(), "quic");
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
        let sessions = sessions.clone();
        let mut stopping = stopping.clone();
        tasks.spawn(
            async move {
                // Not cut short by a stop: a handshake in progress finishes (it is bounded), so
                // its agent hears the shutdown code rather than a bare close.
                let connection = match tokio::time::timeout(HELLO_TIMEOUT, incoming).await {
                    Ok(Ok(connection)) => connection,
                    Ok(Err(e)) => return info!(error = %e, "agent handshake failed"),
                    Err(_) => return info!("agent handshake timed out"),
                };
                // By the same key as failure budgets: an IPv6 /64 is one source.
                let source = super::limits::bucket_key(remote.ip());
                let Some(unproven) = sessions.unproven.acquire(&source, sessions.unproven_per_source) else {
                    debug!("too many unproven agent connections from this address; closed");
                    connection.close(
                        close_code::BUSY.into(),
                        b"too many unproven connections from this address",
                    );
                    return;
                };
                tokio::select! {
                    _ = session(connection.clone(), remote, &sessions, (permit, unproven)) => {}
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

/// Reads and judges the hello; on success registers the session and holds it until the
/// connection ends. `unproven` (the handshake permit and the per-source slot) is released as
/// soon as the hello is judged.
async fn session(connection: quinn::Connection, remote: SocketAddr, sessions: &Sessions, unproven: impl Send) {
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        let mut control = tunnel::join(
            connection
                .accept_bi()
                .await
                .map_err(|e| NoHello::Unreadable(e.into()))?,
        );
        let hello = read_hello(&mut control).await?;
        Ok::<_, NoHello>((control, hello))
    })
    .await
    .unwrap_or(Err(NoHello::Late));
    let (mut control, hello) = match hello {
        Ok(pair) => pair,
        Err(why) => {
            let (code, why) = no_hello(why, remote, sessions);
            connection.close(code.into(), why.as_bytes());
            return;
        }
    };
    let admitted = match judge(&hello, remote.ip(), sessions) {
        Ok(admitted) => admitted,
        Err((code, why)) => {
            connection.close(code.into(), why.as_bytes());
            return;
        }
    };
    drop(unproven);
    if hello.probe {
        return probe::answer_quic(&connection, &mut control, &hello, remote, sessions).await;
    }
    // Proved: now the agent's responses may fill the tunnel's configured windows.
    connection.set_receive_window(sessions.proven_receive_window);
    let id = sessions.registry.new_id();
    let tunnel = crate::transport::Tunnel::Quic(connection.clone());
    let Some(held) = hold(hello, admitted, id, remote, tunnel, sessions) else {
        return;
    };
    if proto::write_frame(&mut control, &held.welcome()).await.is_err() {
        return;
    }
    info!(cluster = %held.hello.cluster, agent = %held.hello.instance, session = id, "agent registered");
    let mut held = held;
    let mut draining = sessions.draining.subscribe();
    let (mut told, mut retired) = (false, false);
    let reason = loop {
        tokio::select! {
            reason = connection.closed() => break match reason {
                // This relay closed it: a newer session of the instance took its place, or a
                // reload revoked it (an `agent_revoked` event says so).
                quinn::ConnectionError::LocallyClosed => CLOSED_HERE.to_owned(),
                other => other.to_string(),
            },
            drains = async { draining.wait_for(|d| *d).await.is_ok() }, if !told => {
                told = true;
                if !drains {
                    continue;
                }
                let notice = proto::Notice::Move { reason: "the relay is draining".into() };
                if proto::write_frame(&mut control, &notice).await.is_err() {
                    debug!(session = id, "could not tell the agent to move");
                }
            }
            // The agent moved to another tunnel: the session ends here; what is in flight goes
            // on until the connection closes.
            () = retires(&mut control), if !retired => {
                retired = true;
                held.gone(&RETIRED);
            }
        }
    };
    held.gone(&reason);
}

/// Resolves once the agent says on the control stream that it retires this tunnel; never if the
/// stream ends or fails otherwise (a dropped stream is no retirement: the connection's end says
/// when the agent is gone).
async fn retires(control: &mut tunnel::Stream) {
    match proto::read_frame::<_, proto::AgentNotice>(control).await {
        Ok(proto::AgentNotice::Retire) => {}
        Err(e) => {
            debug!(error = %e, "the agent's control stream ended");
            std::future::pending().await
        }
    }
}

/// Reads a hello frame.
async fn read_hello<R: tokio::io::AsyncRead + Unpin>(control: &mut R) -> Result<Hello, NoHello> {
    proto::read_frame_limited::<_, Hello>(control, proto::MAX_HELLO)
        .await
        .map_err(|e| match e {
            proto::ProtoError::UnsupportedVersion(_) => NoHello::OtherVersion(e),
            other => NoHello::Unreadable(other.into()),
        })
}

/// The close code and reason for a connection that said no readable hello. A handshake that
/// never says one held a slot for nothing: it is charged, unless it is an agent of another
/// version (a rollout, not an attack).
fn no_hello(why: NoHello, remote: SocketAddr, sessions: &Sessions) -> (u32, String) {
    if !matches!(why, NoHello::OtherVersion(_)) {
        sessions.hello_failures.charge(remote.ip());
    }
    info!(reason = %why, "agent connection closed before registering");
    (close_code::BAD_HELLO, why.to_string())
}

/// A registered session: held until its tunnel ends. Its end is put on record once, however it
/// comes: retired, closed, lost, or dropped when the relay stops.
struct Held<'a> {
    hello: Hello,
    /// Unregisters the session when dropped (a retiring tunnel drops it early).
    guard: Option<super::registry::SessionGuard>,
    id: u64,
    remote: SocketAddr,
    sessions: &'a Sessions,
    /// Whether its end is on record.
    ended: bool,
}

/// Registers an admitted agent's tunnel as session `id`, and puts its arrival on record. `None`
/// (the tunnel closed with [`close_code::REVOKED`]) when a reload revoked it meanwhile.
fn hold(
    hello: Hello,
    admitted: Admission,
    id: u64,
    remote: SocketAddr,
    tunnel: Tunnel,
    sessions: &Sessions,
) -> Option<Held<'_>> {
    let (guard, registered) = sessions.registry.register(
        id,
        &hello.cluster,
        (&hello.instance, hello.link),
        tunnel.clone(),
        admitted.clone(),
    );
    // A reload between the judgement and the registration replaced the table and swept the
    // registry without this session in it: check again against the table now in force.
    if !sessions.clusters.current().admits(
        &hello.cluster,
        &admitted.token_digest,
        admitted.caller_audience.as_deref(),
    ) {
        tunnel.close(
            close_code::REVOKED,
            b"agent token revoked or the cluster's trust model changed",
        );
        return None;
    }
    let held = Held {
        hello,
        guard: Some(guard),
        id,
        remote,
        sessions,
        ended: false,
    };
    let beside = registered.beside;
    held.event("agent_registered", &beside, None);
    let hello = &held.hello;
    if let Some(old) = registered.replaced.filter(|old| old.ip() != remote.ip()) {
        // The same instance name from another address: a restarted pod, or someone holding the
        // cluster's agent token taking its place. Either way it now gets that instance's share.
        warn!(
            cluster = %hello.cluster, agent = %hello.instance, session = id, previous = %old,
            "an agent instance took over this instance name from another address"
        );
    }
    if !beside.is_empty() {
        warn!(
            cluster = %hello.cluster, agent = %hello.instance, session = id, ?beside,
            "another agent instance joined this cluster: it gets a share of the cluster's requests"
        );
    }
    Some(held)
}

impl Held<'_> {
    fn welcome(&self) -> Welcome {
        Welcome {
            relay: self.sessions.relay.clone(),
            session: self.id,
            fleet: self.sessions.fleet,
        }
    }

    fn event(&self, event: &'static str, beside: &[String], reason: Option<&str>) {
        self.sessions.audit.agent_event(&AgentEvent {
            event,
            cluster: &self.hello.cluster,
            agent: &self.hello.instance,
            session: self.id,
            peer: self.remote.to_string(),
            beside,
            reason,
        });
    }

    /// Puts the end of the session on record, unless it is already, and unregisters it.
    fn gone(&mut self, reason: &dyn std::fmt::Display) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let reason = reason.to_string();
        self.event("agent_gone", &[], Some(&reason));
        let hello = &self.hello;
        info!(cluster = %hello.cluster, agent = %hello.instance, session = self.id, %reason, "agent gone");
        self.guard = None;
    }
}

impl Drop for Held<'_> {
    /// A session whose task is dropped before its end was recorded: the relay stopped (its
    /// listener drops every tunnel's task as it closes the connection).
    fn drop(&mut self) {
        self.gone(&SHUTTING_DOWN);
    }
}

/// Why a connection said no hello the relay could read.
#[derive(Debug, thiserror::Error)]
enum NoHello {
    /// A frame of another wire version: its message names both versions.
    #[error(transparent)]
    OtherVersion(proto::ProtoError),
    /// No control stream, or no frame that reads as a hello.
    #[error("no readable hello: {0}")]
    Unreadable(Box<dyn std::error::Error + Send + Sync>),
    /// Nothing within [`HELLO_TIMEOUT`].
    #[error("no hello within the deadline")]
    Late,
}

mod judge;
pub use judge::RefusalLog;
mod probe;
use judge::judge;
mod tcp;
pub use tcp::tcp_session;

#[cfg(test)]
mod tests;
