//! The agent: dials out to the relay, keeps the tunnel up, and serves each
//! relay-opened stream as one exchange with kube-apiserver under the
//! caller's impersonated identity.

pub(crate) mod apiserver;
/// Reconnect backoff; public so the load driver runs the same algorithm.
pub mod backoff;
mod failure;
pub(crate) mod link;
mod passthrough;
mod path;
mod reload;
mod serve;
mod tunnels;

use std::sync::Arc;
use std::time::Duration;

#[cfg(test)]
use tracing::Instrument;
use tracing::{info, warn};

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
    /// The admin listener.
    #[error("admin listener: {0}")]
    Admin(String),
    /// kube-apiserver refused the agent's own credential (401): no request could work.
    #[error(
        "kube-apiserver {server} refused the agent's credential ({credential}): {message}; a client certificate \
         must be signed by the apiserver's --client-ca-file CA and be valid now, a token must be current and for \
         this cluster (docs/configuration.md, The agent's credential)"
    )]
    CredentialRefused {
        /// The apiserver's URL.
        server: String,
        /// What the credential is (never the secret).
        credential: String,
        /// The apiserver's answer.
        message: String,
    },
}

/// Why one tunnel attempt ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("resolving {0}: {1}")]
    Resolve(String, String),
    #[error("connecting: {0}")]
    Endpoint(tunnel::TunnelError),
    #[error("connecting: {0}")]
    Dial(#[from] tunnel::DialError),
    #[error("handshake with the relay: {0}")]
    Hello(String),
    /// The relay refused the hello with one of its close codes.
    #[error("handshake with the relay: refused ({code}): {reason}")]
    Refused { code: u32, reason: String },
    #[error("tcp transport: connecting to {address}: {error}")]
    TcpConnect { address: String, error: std::io::Error },
    #[error("tcp transport: {0}")]
    Proxy(#[from] link::ProxyError),
    #[error("tcp transport: tls: {0}")]
    Tls(std::io::Error),
    #[error("tcp transport: {0}")]
    Tcp(String),
    #[error("relay {0} already holds another of this agent's tunnels")]
    SameRelay(String),
}

impl SessionError {
    /// Whether QUIC got no handshake at all (UDP blocked, most likely), so TCP may do better.
    pub(crate) fn quic_unreachable(&self) -> bool {
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

impl AgentState {
    /// Counts a tunnel over QUIC (`quic`) or TCP as up until the guard drops.
    pub(crate) fn tunnel_up(&self, quic: bool) -> TunnelUp {
        let count = self.tunnels_up[usize::from(!quic)].clone();
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TunnelUp(count)
    }

    /// Tunnels up now, over QUIC and over TCP.
    fn tunnels(&self) -> [usize; 2] {
        self.tunnels_up
            .each_ref()
            .map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// What every stream handler shares.
pub(crate) struct AgentState {
    /// Issuers, mode and passthrough reviews: swapped whole by a reload.
    live: reload::Current,
    /// Relay assertions (`true`) or callers' own tokens (fixed: the hello told the relay).
    takes_assertions: bool,
    apiserver: apiserver::Apiserver,
    audit: Arc<crate::audit::AuditLog>,
    cluster: String,
    instance: String,
    /// Owner of the per-stream tasks and TCP tunnels; shutdown waits for them within a deadline.
    tasks: tokio_util::task::TaskTracker,
    /// Cancelled at shutdown: TCP tunnels drop their connections.
    stop: tokio_util::sync::CancellationToken,
    /// Tunnels welcomed and not yet ended, over QUIC and over TCP (the `hawser.tunnels` metric;
    /// `/readyz` on the admin listener wants one).
    tunnels_up: [Arc<std::sync::atomic::AtomicUsize>; 2],
}

/// A tunnel counted as up until dropped.
pub(crate) struct TunnelUp(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for TunnelUp {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl AgentState {
    /// The issuers, the apiserver client and the audit log: all a stream needs, without a tunnel
    /// (so tests can serve streams in-process).
    pub(crate) fn new(config: &AgentConfig) -> Result<Self, AgentError> {
        Ok(Self {
            live: reload::Current::new(reload::Live::new(config, None)?),
            takes_assertions: config.assertions.is_some(),
            apiserver: apiserver::Apiserver::from_config(&config.apiserver)?,
            audit: {
                let audit = crate::audit::AuditLog::open(&config.audit, "agent", &config.instance)?;
                audit.name_users_in_spans(config.telemetry.record_user);
                audit
            },
            cluster: config.cluster.clone(),
            instance: config.instance.clone(),
            tasks: tokio_util::task::TaskTracker::new(),
            stop: tokio_util::sync::CancellationToken::new(),
            tunnels_up: Default::default(),
        })
    }
}

/// Reads the cluster's agent token: the file's text, trimmed, not empty.
pub(crate) fn read_token(path: &std::path::Path) -> Result<Secret, AgentError> {
    let failed = |message: String| AgentError::Token {
        path: path.display().to_string(),
        message,
    };
    let token = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let token = Secret::new(token.trim().to_owned());
    if token.expose().is_empty() {
        return Err(failed("empty".into()));
    }
    Ok(token)
}

/// Stops the start when kube-apiserver answered 401: the agent's credential is not one it
/// accepts, and every request would fail (an unreachable apiserver, by contrast, may come back).
fn refused(apiserver: &apiserver::Apiserver, e: &apiserver::ApiCallError) -> Result<(), AgentError> {
    match e {
        apiserver::ApiCallError::Status { status, message } if *status == http::StatusCode::UNAUTHORIZED => {
            Err(AgentError::CredentialRefused {
                server: apiserver.base().to_string().trim_end_matches('/').to_owned(),
                credential: apiserver.credential(),
                message: if message.is_empty() {
                    status.to_string()
                } else {
                    message.clone()
                },
            })
        }
        _ => Ok(()),
    }
}

/// Runs the agent until SIGINT or SIGTERM; with `config_path`, reloads it on SIGHUP and when it
/// changes (`agent::reload`).
pub async fn run(
    config: AgentConfig,
    config_path: Option<std::path::PathBuf>,
    metrics: Option<prometheus::Registry>,
) -> Result<(), AgentError> {
    let token = read_token(&config.token_file)?;
    let state = Arc::new(AgentState::new(&config)?);
    let apiserver = &state.apiserver;
    info!(credential = %apiserver.credential(), apiserver = %apiserver.base(), "the agent's credential for kube-apiserver");
    if config.mode.allows_identity() {
        match apiserver.missing_impersonation_rights(&config.impersonates()).await {
            Ok(missing) if missing.is_empty() => info!("the agent may impersonate what its issuers map"),
            Ok(missing) => warn!(
                ?missing,
                "the agent's credential lacks these rights; callers will get Forbidden \
                 (grant them: docs/configuration.md)"
            ),
            Err(e) => {
                refused(apiserver, &e)?;
                warn!(error = %e, "could not check the agent's impersonation rights");
            }
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
            Err(e) => {
                refused(apiserver, &e)?;
                warn!(error = %e, "could not check the agent's passthrough rights");
            }
        }
    }
    let dialer = link::Dialer::new(&config, &token)?;
    // The agent's counters over a fixed set start at 0, so that `rate()` sees their first event.
    let counters = crate::telemetry::metrics::metrics();
    // Every agent has the series, idle or not: the dashboard's variables are read from it.
    counters.active.add(0, &[]);
    crate::telemetry::metrics::start_at_zero::<failure::Reason>(&counters.refusals);
    crate::telemetry::metrics::start_at_zero::<tunnels::Cause>(&counters.reconnects);
    let observed = state.clone();
    let _tunnels = crate::telemetry::metrics::observe_tunnels(move || {
        let [quic, tcp] = observed.tunnels();
        let cluster = &observed.cluster;
        vec![
            (cluster.clone(), "quic", quic as i64),
            (cluster.clone(), "tcp", tcp as i64),
        ]
    });
    // Probes and scrapes: ready while a tunnel is up.
    let admin_stop = tokio_util::sync::CancellationToken::new();
    let admin = match config.admin.listen {
        Some(addr) => {
            let admin = crate::admin::Admin::bind(addr)
                .await
                .map_err(|e| AgentError::Admin(format!("listening on {addr}: {e}")))?;
            let up = state.clone();
            let ready: crate::admin::Readiness =
                Arc::new(move || (up.tunnels() == [0, 0]).then_some("no tunnel to a relay is up"));
            Some(tokio::spawn(admin.serve(metrics, ready, admin_stop.clone())))
        }
        None => None,
    };

    let dial = tunnels::hold(&config, &dialer, &state);
    let reloads = reload::watch(config_path, &state, &dialer, reload::Fixed::of(&config));
    tokio::select! {
        _ = dial => {}
        () = reloads => {}
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
    admin_stop.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
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
