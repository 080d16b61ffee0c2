//! The caller port's TLS door. Callers (ALPN `h2` or `http/1.1`, or none) and agents that dial
//! over TCP (ALPN `hawser/1`) share the port; the ClientHello says which before any handshake
//! work, so an agent source that ran out of hello failures, or a flood beyond the handshake
//! permits, costs the relay no TLS handshake, as on QUIC.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{Instrument, debug, info_span};

use super::agents::{self, Sessions};
use crate::proto::ALPN;

/// How long a caller or an agent has for its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS configurations of the caller port and what agents over TCP need.
pub struct Door {
    /// Callers: `h2` and `http/1.1`.
    pub callers: Arc<rustls::ServerConfig>,
    /// Agents: `hawser/1`.
    pub agents: Arc<rustls::ServerConfig>,
    /// Hellos, budgets and the registry, shared with the QUIC listener.
    pub sessions: Arc<Sessions>,
    /// Handshake permits, shared with the QUIC listener.
    pub handshakes: Arc<Semaphore>,
    /// Turns true when the relay stops: every TCP tunnel is then closed.
    pub stopping: watch::Receiver<bool>,
    /// Owner of the TCP tunnels; the relay's shutdown waits for them.
    pub tasks: tokio_util::task::TaskTracker,
}

impl Door {
    /// Completes a caller's TLS handshake; an agent is handed to its own task instead (`None`),
    /// as is a connection that failed its handshake.
    pub async fn enter<T>(&self, io: T, peer: SocketAddr) -> Option<TlsStream<T>>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let caller = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, async {
            let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
                .await
                .map_err(|e| debug!(error = %e, "tls client hello unreadable"))
                .ok()?;
            let agent = start
                .client_hello()
                .alpn()
                .is_some_and(|mut alpn| alpn.any(|p| p == ALPN));
            if agent {
                self.agent(start, peer);
                return None;
            }
            start
                .into_stream(self.callers.clone())
                .await
                .map_err(|e| debug!(error = %e, "tls handshake failed"))
                .ok()
        })
        .await;
        caller.unwrap_or_else(|_| {
            debug!("tls handshake timed out");
            None
        })
    }

    /// An agent's connection: judged as QUIC attempts are, then a session of its own.
    fn agent<T>(&self, start: tokio_rustls::StartHandshake<T>, peer: SocketAddr)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if *self.stopping.borrow() {
            return debug!("agent over tcp while stopping; closed");
        }
        if self.sessions.hello_failures.is_spent(peer.ip()) {
            return self.sessions.refusal_log.throttled(peer.ip(), "tcp");
        }
        let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
            return debug!("handshake limit reached; agent over tcp closed");
        };
        // TCP proved the address: its share of unproven connections is taken before the TLS
        // work, so one host cannot hold every handshake permit.
        let source = super::limits::bucket_key(peer.ip());
        let per_source = self.sessions.unproven_per_source;
        let Some(slot) = self.sessions.unproven.acquire(&source, per_source) else {
            return debug!("too many unproven agent connections from this address; closed before tls");
        };
        let (tls, sessions, stopping) = (self.agents.clone(), self.sessions.clone(), self.stopping.clone());
        self.tasks.spawn(
            async move {
                let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, start.into_stream(tls)).await;
                let io = match handshake {
                    Ok(Ok(io)) => io,
                    failed => {
                        // A handshake that never completes held a permit for nothing.
                        sessions.hello_failures.charge(peer.ip());
                        return match failed {
                            Ok(Err(e)) => debug!(error = %e, "agent tls handshake failed"),
                            _ => debug!("agent tls handshake timed out"),
                        };
                    }
                };
                agents::tcp_session(io, peer, sessions, (permit, slot), stopping).await;
            }
            .instrument(info_span!("agent_connection", net.peer.address = %peer, transport = "tcp")),
        );
    }
}
