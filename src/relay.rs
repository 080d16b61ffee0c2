//! The relay: the callers' front door, the agents' QUIC listener, the
//! session registry and the routing between them.

mod agents;
mod front;
mod idle;
mod limits;
mod registry;
mod stall;

use std::sync::Arc;

pub use agents::token_digest_hex;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::info;

use crate::auth::{AccessRules, Authenticator, BuiltinIssuer};
use crate::config::RelayConfig;
use crate::proto::ALPN;
use crate::{shutdown, tls, tunnel};

/// How long a shutting-down relay lets caller connections finish.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long closed agent tunnels get to tell their agents (a few round trips suffice).
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The QUIC listener.
    #[error(transparent)]
    Tunnel(#[from] tunnel::TunnelError),
    /// The built-in issuer's key.
    #[error("built-in issuer: {0}")]
    Issuer(String),
    /// Token validation set-up.
    #[error("issuers: {0}")]
    Auth(String),
    /// The audit log.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// A listener could not bind.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// What every request handler shares.
pub(crate) struct RelayState {
    instance: String,
    auth: Authenticator,
    access: AccessRules,
    issuer: Option<BuiltinIssuer>,
    tokens: Arc<agents::AgentTokens>,
    registry: Arc<registry::Registry>,
    audit: Arc<crate::audit::AuditLog>,
    limits: crate::config::LimitsConfig,
    caller_streams: Arc<limits::CallerStreams>,
    auth_failures: limits::AuthFailures,
}

/// A relay bound to its ports, not yet serving.
pub struct Relay {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    endpoint: quinn::Endpoint,
    state: Arc<RelayState>,
}

impl Relay {
    /// Loads keys and certificates and binds both listeners.
    pub async fn bind(config: RelayConfig) -> Result<Self, RelayError> {
        if config.tls.generate_self_signed
            && tls::ensure_self_signed(
                &config.tls.cert_file,
                &config.tls.key_file,
                &config.tls.self_signed_names,
            )?
        {
            info!(cert = %config.tls.cert_file.display(), "generated a self-signed serving certificate");
        }
        let issuer = match &config.issuer {
            Some(c) => Some(c.load().map_err(|e| RelayError::Issuer(e.to_string()))?),
            None => None,
        };
        let mut issuers = config.issuers.clone();
        if let Some(issuer) = &issuer {
            issuers.push(issuer.issuer_config());
        }
        let auth = Authenticator::new(issuers).map_err(|e| RelayError::Auth(e.to_string()))?;
        let access = AccessRules::new(config.access.clone()).map_err(|e| RelayError::Auth(e.to_string()))?;

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| RelayError::Bind {
                addr: config.listen,
                source,
            })?;
        let front_tls = tls::server_config(&config.tls.cert_file, &config.tls.key_file, &[b"h2", b"http/1.1"])?;
        let agent_addr = config
            .agent_listen
            .unwrap_or(listener.local_addr().map_err(|source| RelayError::Bind {
                addr: config.listen,
                source,
            })?);
        let agent_tls = tls::server_config(&config.tls.cert_file, &config.tls.key_file, &[ALPN])?;
        let endpoint = tunnel::relay_endpoint(agent_addr, agent_tls, &config.tunnel)?;

        let tokens = agents::AgentTokens::new(
            config
                .clusters
                .iter()
                .map(|c| (c.name.as_str(), c.agent_token_sha256.as_str())),
        );
        let state = Arc::new(RelayState {
            instance: config.instance.clone(),
            auth,
            access,
            issuer,
            tokens: Arc::new(tokens),
            registry: registry::Registry::new(),
            audit: crate::audit::AuditLog::open(&config.audit, "relay", &config.instance)?,
            caller_streams: Arc::default(),
            auth_failures: limits::AuthFailures::new(config.limits.auth_failures_per_minute),
            limits: config.limits.clone(),
        });
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(front_tls)),
            endpoint,
            state,
        })
    }

    /// The caller-facing TCP address.
    pub fn front_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The agent-facing UDP address.
    pub fn agent_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves until a shutdown signal, then closes agent tunnels cleanly.
    pub async fn run(self) {
        let Self {
            listener,
            acceptor,
            endpoint,
            state,
        } = self;
        info!(
            front = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            agents = %endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "relay listening"
        );
        let (stop_agents, stopping) = tokio::sync::watch::channel(false);
        let listener_stats = Arc::new(agents::ListenerStats::default());
        let agents = tokio::spawn(agents::serve(
            agents::Listener {
                endpoint: endpoint.clone(),
                tokens: state.tokens.clone(),
                registry: state.registry.clone(),
                relay: state.instance.clone(),
                handshakes: Arc::new(tokio::sync::Semaphore::new(agents::MAX_HANDSHAKES)),
                retry_below_free: agents::MAX_HANDSHAKES - agents::RETRY_ABOVE,
                stats: listener_stats.clone(),
            },
            stopping,
        ));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let audit = state.audit.clone();
        tokio::select! {
            _ = front::serve(listener, acceptor, state, &graceful) => {}
            _ = shutdown::signal() => {}
        }
        // Drain: no new callers; HTTP/1.1 connections close after their
        // current exchange, HTTP/2 ones get GOAWAY. Watches never finish by
        // themselves, hence the deadline.
        info!(connections = graceful.count(), "relay draining caller connections");
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
            info!("drain deadline reached; closing the rest");
        }
        info!("relay shutting down");
        audit.flush();
        // Close every tunnel but keep the port answering nothing rather than refusing: an agent
        // that redials now retransmits until the next relay listens, instead of backing off.
        let _ = stop_agents.send(true);
        if tokio::time::timeout(CLOSE_TIMEOUT, endpoint.wait_idle()).await.is_err() {
            // Only now, as the process ends: a closed endpoint refuses new attempts.
            info!("agent tunnels still closing at the deadline; closing the rest");
            endpoint.close(agents::close_code::SHUTDOWN.into(), b"relay shutting down");
        }
        agents.abort();
        let (retried, ignored, accepted) = listener_stats.snapshot();
        info!(retried, ignored, accepted, "agent attempts over this relay's life");
    }
}
