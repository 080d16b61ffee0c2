//! The agent: dials out to the relay, keeps the tunnel up, and serves each
//! relay-opened stream as one exchange with kube-apiserver under the
//! caller's impersonated identity.

mod apiserver;
/// Reconnect backoff; public so the load driver runs the same algorithm.
pub mod backoff;
mod passthrough;
mod serve;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{Instrument, info, info_span, warn};

use crate::auth::Authenticator;
use crate::config::{AgentConfig, Secret};
use crate::proto::{self, Hello, Welcome};
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
    /// Owner of the per-stream tasks; shutdown waits for them within a deadline.
    tasks: tokio_util::task::TaskTracker,
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
    let auth = Authenticator::new(config.caller_issuers()).map_err(|e| AgentError::Auth(e.to_string()))?;
    let apiserver = apiserver::Apiserver::from_config(&config.apiserver)?;
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
    let trust = tls::RelayTrust::load(config.relay.ca_file.as_deref(), &config.relay.pinned_key_sha256)?;
    let state = Arc::new(AgentState {
        auth,
        takes_assertions: config.assertions.is_some(),
        apiserver,
        mode: config.mode,
        reviewer: passthrough::TokenReviewer::new(&config.passthrough),
        audit: crate::audit::AuditLog::open(&config.audit, "agent", &config.instance)?,
        cluster: config.cluster.clone(),
        instance: config.instance.clone(),
        tasks: tokio_util::task::TaskTracker::new(),
    });

    let server_name = match &config.relay.server_name {
        Some(name) => name.clone(),
        None => host_of(&config.relay.address).to_owned(),
    };
    let hello = Hello {
        cluster: config.cluster.clone(),
        token: token.expose().to_owned(),
        instance: config.instance.clone(),
        accepts: config.accepts(),
    };
    let mut backoff = backoff::Backoff::new(config.reconnect.clone());
    // The live endpoint, so shutdown can close the tunnel instead of leaving
    // the relay to notice by idle timeout.
    let current: std::sync::Mutex<Option<quinn::Endpoint>> = std::sync::Mutex::new(None);
    let dial = async {
        loop {
            let started = Instant::now();
            let span = info_span!("tunnel", relay = %config.relay.address, cluster = %config.cluster);
            let ended = session(&config, &trust, &server_name, &hello, &state, &current)
                .instrument(span)
                .await;
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
    let endpoint = current.lock().unwrap_or_else(|e| e.into_inner()).take();
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

/// One tunnel: connect, say hello, serve streams until the connection ends.
async fn session(
    config: &AgentConfig,
    trust: &tls::RelayTrust,
    server_name: &str,
    hello: &Hello,
    state: &Arc<AgentState>,
    current: &std::sync::Mutex<Option<quinn::Endpoint>>,
) -> Result<quinn::ConnectionError, SessionError> {
    let addr: SocketAddr = tokio::net::lookup_host(&config.relay.address)
        .await
        .map_err(|e| SessionError::Resolve(config.relay.address.clone(), e.to_string()))?
        .next()
        .ok_or_else(|| SessionError::Resolve(config.relay.address.clone(), "no address".into()))?;
    // A fresh endpoint per attempt: a restarted relay sees a new source port.
    let endpoint = tunnel::agent_endpoint(trust, &config.tunnel, addr).map_err(SessionError::Endpoint)?;
    *current.lock().unwrap_or_else(|e| e.into_inner()) = Some(endpoint.clone());
    let connection = tunnel::dial(&endpoint, addr, server_name, tunnel::HANDSHAKE_TIMEOUT).await?;
    let welcome = tokio::time::timeout(Duration::from_secs(10), async {
        let mut control = tunnel::join(connection.open_bi().await.map_err(|e| e.to_string())?);
        proto::write_frame(&mut control, hello)
            .await
            .map_err(|e| e.to_string())?;
        let welcome: Welcome = proto::read_frame(&mut control).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((control, welcome))
    })
    .await
    .map_err(|_| SessionError::Hello("no answer within 10s".into()))?
    .map_err(|e| SessionError::Hello(connection.close_reason().map_or(e, |r| r.to_string())))?;
    let (_control, welcome) = welcome;
    info!(relay = %welcome.relay, session = welcome.session, "tunnel up");
    let relay: Arc<str> = welcome.relay.into();
    loop {
        match connection.accept_bi().await {
            Ok(pair) => {
                let (send, recv) = pair;
                state
                    .tasks
                    .spawn(serve::stream(send, recv, state.clone(), relay.clone()).in_current_span());
            }
            Err(reason) => return Ok(reason),
        }
    }
}

fn host_of(address: &str) -> &str {
    match address.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => address,
    }
}
