//! The agent: dials out to the relay, keeps the tunnel up, and serves each
//! relay-opened stream as one exchange with kube-apiserver under the
//! caller's impersonated identity.

mod apiserver;
/// Reconnect backoff; public so the load driver runs the same algorithm.
pub mod backoff;
mod failure;
mod link;
mod passthrough;
mod path;
mod serve;
mod tunnels;

use std::sync::Arc;
use std::time::Duration;

#[cfg(test)]
use tracing::Instrument;
use tracing::{info, warn};

use crate::auth::Authenticator;
use crate::config::{AgentConfig, Secret};
use crate::{shutdown, tls, tunnel};

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent token file.
    #[error("agent token {path}: {message}")]
    Token {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Token validation set-up.
    #[error("issuers: {0}")]
    Auth(String),
    /// The apiserver client.
    #[error(transparent)]
    Apiserver(#[from] apiserver::ApiserverError),
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The QUIC endpoint.
    #[error(transparent)]
    Tunnel(#[from] tunnel::TunnelError),
    /// The audit log.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The HTTP proxy for the TCP transport.
    #[error("relay proxy: {0}")]
    Proxy(String),
}

/// Why one tunnel attempt ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("resolving {0}: {1}")]
    Resolve(String, String),
    #[error("connecting: {0}")]
    Endpoint(tunnel::TunnelError),
    #[error("connecting: {0}")]
    Dial(#[from] tunnel::DialError),
    #[error("handshake with the relay: {0}")]
    Hello(String),
    #[error("tcp transport: {0}")]
    Tcp(String),
    #[error("relay {0} already holds another of this agent's tunnels")]
    SameRelay(String),
}

impl SessionError {
    /// Whether QUIC got no handshake at all (UDP blocked, most likely), so TCP may do better.
    fn quic_unreachable(&self) -> bool {
        matches!(self, Self::Dial(tunnel::DialError::Timeout(_)) | Self::Endpoint(_))
            || matches!(
                self,
                Self::Dial(tunnel::DialError::Handshake(quinn::ConnectionError::TimedOut))
            )
    }

    /// Whether the relay refused the tunnel only because of where it is (it is draining, or
    /// another of the agent's tunnels is on it): dialling again through a balancer reaches
    /// another relay, so it is no failure to back off from.
    fn elsewhere(&self) -> bool {
        match self {
            Self::SameRelay(_) => true,
            Self::Dial(tunnel::DialError::Handshake(quinn::ConnectionError::ConnectionClosed(close))) => {
                close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
            }
            _ => false,
        }
    }
}

/// What every stream handler shares.
pub(crate) struct AgentState {
    auth: Authenticator,
    /// Relay assertions (`true`) or callers' own tokens.
    takes_assertions: bool,
    apiserver: apiserver::Apiserver,
    mode: crate::config::AccessMode,
    reviewer: passthrough::TokenReviewer,
    audit: Arc<crate::audit::AuditLog>,
    cluster: String,
    instance: String,
    /// Owner of the per-stream tasks and TCP tunnels; shutdown waits for them within a deadline.
    tasks: tokio_util::task::TaskTracker,
    /// Cancelled at shutdown: TCP tunnels drop their connections.
    stop: tokio_util::sync::CancellationToken,
}

impl AgentState {
    /// The issuers, the apiserver client and the audit log: all a stream needs, without a tunnel
    /// (so tests can serve streams in-process).
    pub(crate) fn new(config: &AgentConfig) -> Result<Self, AgentError> {
        Ok(Self {
            auth: Authenticator::new(config.caller_issuers()).map_err(|e| AgentError::Auth(e.to_string()))?,
            takes_assertions: config.assertions.is_some(),
            apiserver: apiserver::Apiserver::from_config(&config.apiserver)?,
            mode: config.mode,
            reviewer: passthrough::TokenReviewer::new(&config.passthrough),
            audit: crate::audit::AuditLog::open(&config.audit, "agent", &config.instance)?,
            cluster: config.cluster.clone(),
            instance: config.instance.clone(),
            tasks: tokio_util::task::TaskTracker::new(),
            stop: tokio_util::sync::CancellationToken::new(),
        })
    }
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let token_path = config.token_file.display().to_string();
    let token = std::fs::read_to_string(&config.token_file).map_err(|e| AgentError::Token {
        path: token_path.clone(),
        message: e.to_string(),
    })?;
    let token = Secret::new(token.trim().to_owned());
    if token.expose().is_empty() {
        return Err(AgentError::Token {
            path: token_path,
            message: "empty".into(),
        });
    }
    let state = Arc::new(AgentState::new(&config)?);
    let apiserver = &state.apiserver;
    let uids = config.issuers.iter().any(|i| i.uid_claim.is_some());
    let extra_keys: Vec<String> = config
        .issuers
        .iter()
        .flat_map(|i| i.extra_claims.keys().cloned())
        .collect();
    if config.mode.allows_identity() {
        match apiserver.missing_impersonation_rights(uids, &extra_keys).await {
            Ok(missing) if missing.is_empty() => info!("the agent may impersonate what its issuers map"),
            Ok(missing) => warn!(
                ?missing,
                "the agent's credential lacks these rights; callers will get Forbidden \
                 (grant them: docs/configuration.md)"
            ),
            Err(e) => warn!(error = %e, "could not check the agent's impersonation rights"),
        }
    }
    if config.mode.allows_passthrough() {
        match apiserver.missing_passthrough_rights().await {
            Ok(missing) if missing.is_empty() => info!("the agent may review passthrough cluster tokens"),
            Ok(missing) => warn!(
                ?missing,
                "the agent's credential cannot review cluster tokens; passthrough requests will get 503 \
                 (grant create on tokenreviews.authentication.k8s.io: docs/configuration.md)"
            ),
            Err(e) => warn!(error = %e, "could not check the agent's passthrough rights"),
        }
    }
    let dialer = link::Dialer::new(&config, &token)?;

    let dial = tunnels::hold(&config, &dialer, &state);
    tokio::select! {
        _ = dial => {}
        signal = shutdown::signal() => info!(%signal, "agent shutting down: closing its tunnels"),
    }
    // TCP tunnels end at once (their connections drop); the relay fails their streams.
    state.stop.cancel();
    let endpoints = std::mem::take(&mut *dialer.current.lock().unwrap_or_else(|e| e.into_inner()));
    for endpoint in &endpoints {
        // The relay fails this tunnel's streams at once and callers get an error.
        endpoint.close(0u32.into(), b"agent shutting down");
    }
    let idle = futures_util::future::join_all(endpoints.iter().map(quinn::Endpoint::wait_idle));
    let _ = tokio::time::timeout(Duration::from_secs(3), idle).await;
    // The close failed every stream; their tasks end as soon as they notice.
    state.tasks.close();
    if tokio::time::timeout(Duration::from_secs(3), state.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            streams = state.tasks.len(),
            "stream tasks still running at the shutdown deadline"
        );
    }
    state.audit.flush();
    Ok(())
}

/// Serves an in-memory tunnel's streams until it closes, as a QUIC one is served, and
/// says why it ended.
#[cfg(test)]
pub(crate) async fn serve_memory(
    mut acceptor: crate::transport::memory::Acceptor,
    state: Arc<AgentState>,
    relay: Arc<str>,
) -> (u32, String) {
    loop {
        match acceptor.accept().await {
            Ok((send, recv)) => {
                state
                    .tasks
                    .spawn(serve::stream(send, recv, state.clone(), relay.clone()).in_current_span());
            }
            Err(closed) => return closed,
        }
    }
}
