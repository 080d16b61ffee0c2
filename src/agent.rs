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

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{Instrument, debug, info, info_span, warn};

use crate::auth::Authenticator;
use crate::config::{AgentConfig, Secret, Transport};
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

    let mut backoff = backoff::Backoff::new(config.reconnect.clone());
    let dial = async {
        let mut auto = Auto::default();
        loop {
            let started = Instant::now();
            let span = info_span!("tunnel", relay = %config.relay.address, cluster = %config.cluster);
            let ended = session(&config, &dialer, &state, &mut auto).instrument(span).await;
            let uptime = started.elapsed();
            let wait = backoff.next_wait(uptime, &mut rand::rng());
            match ended {
                Ok(reason) => info!(%reason, ?uptime, ?wait, "tunnel closed; reconnecting"),
                Err(e) => warn!(error = %e, ?wait, "tunnel attempt failed; retrying"),
            }
            tokio::time::sleep(wait).await;
        }
    };
    tokio::select! {
        _ = dial => {}
        _ = shutdown::signal() => info!("agent shutting down"),
    }
    // TCP tunnels end at once (their connections drop); the relay fails their streams.
    state.stop.cancel();
    let endpoint = dialer.current.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(endpoint) = endpoint {
        // The relay fails this tunnel's streams at once and callers get an error.
        endpoint.close(0u32.into(), b"agent shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
    }
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

/// What `auto` has learnt of QUIC on this network.
#[derive(Default)]
struct Auto {
    /// QUIC found unreachable: dial TCP, and probe QUIC from there.
    blocked: bool,
    /// A QUIC tunnel came up at least once.
    worked: bool,
    /// QUIC dials in a row that got no handshake.
    timeouts: u32,
}

/// One tunnel: connect by the configured transport, say hello, serve streams until it ends.
async fn session(
    config: &AgentConfig,
    dialer: &link::Dialer,
    state: &Arc<AgentState>,
    auto: &mut Auto,
) -> Result<String, SessionError> {
    let relay = &config.relay;
    let (link, welcome) = match relay.transport {
        Transport::Quic => dialer.quic(tunnel::HANDSHAKE_TIMEOUT).await?,
        Transport::Tcp => dialer.tcp().await?,
        Transport::Auto if auto.blocked => match dialer.tcp().await {
            Ok(up) => up,
            Err(e) => {
                // TCP fails too: the next attempt tries QUIC again rather than TCP for ever.
                auto.blocked = false;
                return Err(e);
            }
        },
        Transport::Auto => match dialer.quic(Duration::from_secs(relay.quic_fallback_secs)).await {
            Ok(up) => up,
            // Where QUIC once worked, one silent dial is more likely a relay restarting (it leaves
            // attempts unanswered meanwhile) than UDP blocked: only a second one in a row falls back.
            Err(e) if e.quic_unreachable() && auto.worked && auto.timeouts == 0 => {
                auto.timeouts += 1;
                return Err(e);
            }
            Err(e) if e.quic_unreachable() => {
                warn!(
                    error = %e,
                    probe_every_secs = relay.quic_probe_secs,
                    "no QUIC handshake with the relay; using TCP, and trying QUIC again later"
                );
                auto.blocked = true;
                dialer.tcp().await?
            }
            Err(e) => return Err(e),
        },
    };
    let relay_name: Arc<str> = welcome.relay.into();
    match link {
        link::Link::Quic(connection, _control) => {
            *auto = Auto {
                worked: true,
                ..Auto::default()
            };
            info!(relay = %relay_name, session = welcome.session, transport = "quic", "tunnel up");
            Ok(serve_quic(connection, state, relay_name).await)
        }
        link::Link::Tcp(side) => {
            info!(relay = %relay_name, session = welcome.session, transport = "tcp", "tunnel up");
            let retire = tokio_util::sync::CancellationToken::new();
            let serving = {
                let (state, relay_name) = (state.clone(), relay_name.clone());
                let (stop, retire) = (state.stop.clone(), retire.clone());
                let tasks = state.tasks.clone();
                tasks.spawn(
                    async move {
                        let why = side
                            .serve(
                                move |send, recv| {
                                    state.tasks.spawn(
                                        serve::stream(send, recv, state.clone(), relay_name.clone()).in_current_span(),
                                    );
                                },
                                retire,
                                stop,
                            )
                            .await;
                        info!(reason = %why, "tcp tunnel ended");
                        why
                    }
                    .in_current_span(),
                )
            };
            if relay.transport != Transport::Auto {
                return Ok(serving.await.unwrap_or_else(|e| e.to_string()));
            }
            let mut serving = std::pin::pin!(serving);
            let probe = async {
                loop {
                    tokio::time::sleep(Duration::from_secs(relay.quic_probe_secs)).await;
                    match dialer.quic(Duration::from_secs(relay.quic_fallback_secs)).await {
                        Ok(up) => return up,
                        Err(e) => debug!(error = %e, "QUIC still unreachable"),
                    }
                }
            };
            let (link, welcome) = tokio::select! {
                ended = &mut serving => return Ok(ended.unwrap_or_else(|e| e.to_string())),
                up = probe => up,
            };
            // The relay now routes to the QUIC session (same instance); the TCP tunnel takes no
            // new streams and ends once those it carries are done.
            retire.cancel();
            *auto = Auto {
                worked: true,
                ..Auto::default()
            };
            let relay_name: Arc<str> = welcome.relay.into();
            info!(relay = %relay_name, session = welcome.session, transport = "quic", "QUIC reachable again: tunnel moved to QUIC");
            match link {
                link::Link::Quic(connection, _control) => Ok(serve_quic(connection, state, relay_name).await),
                link::Link::Tcp(_) => Ok("unexpected tcp link".into()),
            }
        }
    }
}

/// Serves a QUIC tunnel's streams until the connection ends, and says why it ended.
async fn serve_quic(connection: quinn::Connection, state: &Arc<AgentState>, relay: Arc<str>) -> String {
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                state
                    .tasks
                    .spawn(serve::stream(send, recv, state.clone(), relay.clone()).in_current_span());
            }
            Err(reason) => return reason.to_string(),
        }
    }
}

/// Serves an in-memory tunnel's streams until it closes, as [`serve_quic`] does a QUIC one, and
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
