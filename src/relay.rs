//! The relay: the callers' front door, the agents' QUIC listener, the
//! session registry and the routing between them.

mod agents;
pub use agents::close_code;
mod clusters;
mod door;
mod fleet;
mod front;
mod keys;
mod limits;
mod live;
mod observed;
mod overview;
mod path;
mod refusal;
mod registry;
mod reload;
mod route;
mod stall;
mod stream;

use std::path::PathBuf;
use std::sync::Arc;

pub use clusters::token_digest_hex;
use tokio::net::TcpListener;
use tracing::info;

use crate::auth::SigningKey;
use crate::auth::assertion::AssertionMinter;
use crate::config::RelayConfig;
use crate::proto::ALPN;
use crate::{shutdown, tls, tunnel};

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
    /// The assertion key.
    #[error("assertions: {0}")]
    Assertions(String),
    /// Two of the relay's keys are one key.
    #[error("{0}")]
    SharedKey(String),
    /// The audit log.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The fleet's peer link.
    #[error(transparent)]
    Peers(#[from] fleet::PeerError),
    /// A listener could not bind.
    #[error("{key} {addr}: {error}")]
    Bind {
        /// The configuration key that names the address.
        key: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause (not a `source`: the message holds it already).
        error: std::io::Error,
    },
}

/// What every request handler shares.
pub(crate) struct RelayState {
    instance: String,
    /// Issuers, access rules and limits: swapped whole by a reload.
    live: live::Current,
    minter: Option<AssertionMinter>,
    clusters: Arc<clusters::Clusters>,
    registry: Arc<registry::Registry>,
    audit: Arc<crate::audit::AuditLog>,
    caller_streams: Arc<limits::CallerStreams>,
    /// This relay's part in a fleet (`[registry] kind = "etcd"`).
    fleet: Option<Arc<fleet::Fleet>>,
    /// Set once the relay stops taking new work: `/readyz` then fails.
    draining: std::sync::atomic::AtomicBool,
    /// Cancelled when the relay drains: the watches and followed logs it carries end cleanly.
    streams_end: tokio_util::sync::CancellationToken,
    /// When the relay started.
    started: std::time::SystemTime,
    /// Owner of the tasks an exchange leaves behind (request body pumps, spliced upgrades); the
    /// relay's shutdown waits for them within the drain deadline.
    tasks: tokio_util::task::TaskTracker,
}

impl RelayState {
    /// Loads the keys and issuers, checks the access rules and opens the audit log: all a
    /// request needs, without the listeners (so tests can drive the request path in-process).
    fn new(config: &RelayConfig) -> Result<Self, RelayError> {
        let live = live::Live::new(config, None)?;
        let minter = match &config.assertions {
            Some(a) => {
                let key = SigningKey::load_or_generate(&a.signing_key_file, a.generate)
                    .map_err(|e| RelayError::Assertions(e.to_string()))?;
                Some(AssertionMinter::new(key, a.issuer.clone(), a.lifetime()))
            }
            None => None,
        };
        keys::check_distinct(&config.tls.cert_file, live.issuer.as_ref(), minter.as_ref())?;
        let started = std::time::SystemTime::now();
        let fleet = fleet::Fleet::new(config, started)?.map(Arc::new);
        let registry = match &fleet {
            Some(fleet) => registry::Registry::shared(fleet.pending.clone()),
            None => registry::Registry::new(),
        };
        Ok(Self {
            instance: config.instance.clone(),
            live: live::Current::new(live),
            minter,
            clusters: Arc::new(clusters::Clusters::new(clusters::ClusterTable::new(&config.clusters))),
            registry,
            fleet,
            draining: std::sync::atomic::AtomicBool::new(false),
            streams_end: tokio_util::sync::CancellationToken::new(),
            started,
            audit: {
                let audit = crate::audit::AuditLog::open(&config.audit, "relay", &config.instance)?;
                audit.name_users_in_spans(config.telemetry.record_user);
                audit
            },
            caller_streams: Arc::default(),
            tasks: tokio_util::task::TaskTracker::new(),
        })
    }
}

impl RelayState {
    /// Why the relay should get no new callers now (`/readyz` fails), if it should not: it is
    /// draining, or it has lost the fleet's registry for longer than its lease.
    fn unready(&self) -> Option<&'static str> {
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Some("draining");
        }
        if self.fleet.as_ref().is_some_and(|f| !f.registry_reachable()) {
            return Some("the registry (etcd) has not answered within its lease TTL");
        }
        None
    }
}

/// A relay bound to its ports, not yet serving.
pub struct Relay {
    listener: TcpListener,
    /// Callers' TLS, and agents' over TCP.
    tls: (Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>),
    endpoint: quinn::Endpoint,
    state: Arc<RelayState>,
    sessions: Arc<agents::Sessions>,
    config_path: Option<PathBuf>,
    /// The running values of what a reload cannot change.
    fixed: reload::Fixed,
    drain: crate::config::DrainConfig,
    /// The admin listener, and the metrics it renders.
    admin: Option<(crate::admin::Admin, Option<prometheus::Registry>)>,
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
        let state = Arc::new(RelayState::new(&config)?);
        let admin = match config.admin.listen {
            Some(addr) => Some((
                crate::admin::Admin::bind(addr)
                    .await
                    .map_err(|error| RelayError::Bind {
                        key: "admin.listen",
                        addr,
                        error,
                    })?,
                None,
            )),
            None => None,
        };

        let listen_error = |error| RelayError::Bind {
            key: "listen",
            addr: config.listen,
            error,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(listen_error)?;
        let front_tls = tls::server_config(&config.tls.cert_file, &config.tls.key_file, &[b"h2", b"http/1.1"])?;
        let agent_addr = config
            .agent_listen
            .unwrap_or(listener.local_addr().map_err(listen_error)?);
        let agent_tls = tls::server_config(&config.tls.cert_file, &config.tls.key_file, &[ALPN])?;
        let agent_tcp_tls = Arc::new(agent_tls.clone());
        let server_id = config.server_id();
        // The same after a restart as itself, so the new process can reset its old tunnels.
        let reset_key = tunnel::reset::reset_key(&tls::load_key(&config.tls.key_file)?, server_id, &config.instance);
        let endpoint = tunnel::relay_endpoint(agent_addr, agent_tls, &config.tunnel, server_id, reset_key).map_err(
            |e| match e {
                tunnel::TunnelError::Bind { addr, error } => RelayError::Bind {
                    // Agents' QUIC shares the callers' address unless it has its own.
                    key: if config.agent_listen.is_some() {
                        "agent_listen"
                    } else {
                        "listen (UDP)"
                    },
                    addr,
                    error,
                },
                other => RelayError::Tunnel(other),
            },
        )?;
        // What to register at a balancer that routes QUIC by connection ID.
        info!(%server_id, "QUIC connection IDs carry this server id");

        let sessions = Arc::new(agents::Sessions {
            clusters: state.clusters.clone(),
            registry: state.registry.clone(),
            relay: config.instance.clone(),
            assertion_issuer: state.minter.as_ref().map(|m| m.issuer().to_owned()),
            proven_receive_window: tunnel::connection_window(&config.tunnel),
            hello_failures: limits::AuthFailures::new(config.limits.agent_hello_failures_per_minute),
            unproven: Arc::default(),
            unproven_per_source: config.limits.agent_unproven_per_source,
            audit: state.audit.clone(),
            refusal_log: agents::RefusalLog::default(),
            tunnel: config.tunnel.clone(),
            fleet: state.fleet.is_some(),
            draining: tokio::sync::watch::Sender::new(false),
        });
        Ok(Self {
            listener,
            tls: (Arc::new(front_tls), agent_tcp_tls),
            endpoint,
            state,
            sessions,
            config_path: None,
            fixed: reload::Fixed::of(&config),
            drain: config.drain.clone(),
            admin,
        })
    }

    /// Re-reads `path` on SIGHUP and whenever its content changes, and applies its clusters,
    /// access rules, issuers, limits and audit output; sessions no longer admitted are closed,
    /// every other tunnel and exchange goes on (`relay::reload`).
    pub fn reload_from(mut self, path: PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// Serves `registry` on the admin listener's `/metrics` (if `[admin] listen` is set).
    pub fn with_metrics(mut self, registry: Option<prometheus::Registry>) -> Self {
        if let Some((_, metrics)) = &mut self.admin {
            *metrics = registry;
        }
        self
    }

    /// The caller-facing TCP address.
    pub fn front_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The agent-facing UDP address.
    pub fn agent_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The admin listener's address, if `[admin] listen` is set.
    pub fn admin_addr(&self) -> Option<std::io::Result<std::net::SocketAddr>> {
        self.admin.as_ref().map(|(admin, _)| admin.local_addr())
    }

    /// The UDP address of the fleet's peer link, if the relay is part of a fleet.
    pub fn peer_addr(&self) -> Option<std::io::Result<std::net::SocketAddr>> {
        self.state.fleet.as_ref().map(|f| f.peers.local_addr())
    }

    /// Serves until a shutdown signal, then closes agent tunnels cleanly.
    pub async fn run(self) {
        let Self {
            listener,
            tls: (callers, agents_tls),
            endpoint,
            state,
            sessions,
            config_path,
            fixed,
            drain,
            admin,
        } = self;
        // Probes and scrapes are answered until the process ends.
        let admin_stop = tokio_util::sync::CancellationToken::new();
        let admin = admin.map(|(admin, registry)| {
            let ready_state = state.clone();
            let ready: crate::admin::Readiness = Arc::new(move || ready_state.unready());
            tokio::spawn(admin.serve(registry, ready, admin_stop.clone()))
        });
        info!(
            front = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            agents = %endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "relay listening"
        );
        let (stop_agents, stopping) = tokio::sync::watch::channel(false);
        let listener_stats = Arc::new(agents::ListenerStats::default());
        let _observed = observed::observe(&state, &listener_stats);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(agents::MAX_HANDSHAKES));
        let door = Arc::new(door::Door {
            callers,
            agents: agents_tls,
            sessions: sessions.clone(),
            handshakes: handshakes.clone(),
            stopping: stopping.clone(),
            tasks: tokio_util::task::TaskTracker::new(),
        });
        // One owner for every agent tunnel's task, QUIC or TCP.
        let agent_tunnels = door.tasks.clone();
        let agents = tokio::spawn(agents::serve(
            agents::Listener {
                endpoint: endpoint.clone(),
                handshakes,
                retry_below_free: agents::MAX_HANDSHAKES - agents::RETRY_ABOVE,
                stats: listener_stats.clone(),
                sessions: sessions.clone(),
                tasks: agent_tunnels.clone(),
            },
            stopping,
        ));
        // The fleet's registry task and peer listener, stopped after the agent tunnels.
        let (fleet_stop, fleet_tasks) = (
            tokio_util::sync::CancellationToken::new(),
            tokio_util::task::TaskTracker::new(),
        );
        if let Some(fleet) = &state.fleet {
            let open_stream_timeout =
                std::time::Duration::from_secs(state.live.current().limits.open_stream_timeout_secs);
            fleet.start(state.registry.clone(), open_stream_timeout, &fleet_tasks, &fleet_stop);
        }
        let connections = front::Connections::default();
        let audit = state.audit.clone();
        let accepting = tokio_util::sync::CancellationToken::new();
        let mut front = Box::pin(front::serve(
            listener,
            door,
            state.clone(),
            connections.clone(),
            accepting.clone(),
        ));
        tokio::select! {
            () = &mut front => {}
            () = reload::watch(config_path, &state, fixed) => {}
            signal = shutdown::signal() => info!(
                %signal, grace_secs = drain.grace_secs, timeout_secs = drain.timeout_secs,
                "draining: /readyz fails and agents are told to move (in a fleet); callers are still taken for \
                 grace_secs, then what is in flight has until timeout_secs"
            ),
        }
        state.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(fleet) = &state.fleet {
            fleet.drain();
        }
        // In a fleet, agents dial another relay and retire their tunnels here (make before
        // break); a relay of its own has nowhere to send them.
        if state.fleet.is_some() {
            sessions.draining.send_replace(true);
        }
        // Watches and followed logs never end by themselves: they end now, cleanly, and their
        // clients re-establish them through another relay.
        state.streams_end.cancel();
        // Callers are still taken for the grace, while /readyz fails; then none.
        let grace = std::time::Duration::from_secs(drain.grace_secs);
        let _ = tokio::time::timeout(grace, &mut front).await;
        accepting.cancel();
        (&mut front).await;
        drop(front);
        // Drain: HTTP/1.1 connections close after their current exchange, HTTP/2 ones get
        // GOAWAY; a connection accepted a moment ago is served its first request first.
        info!(connections = connections.count(), "relay draining caller connections");
        let timeout = std::time::Duration::from_secs(drain.timeout_secs);
        let drained = tokio::time::timeout(timeout, async {
            let callers = async {
                connections.drain().await;
                // Upgraded streams (exec, port-forward) live outside their connections.
                state.tasks.close();
                state.tasks.wait().await;
            };
            // In a fleet: until every agent moved, and what peers forwarded here is done.
            let fleet = async {
                if let Some(fleet) = &state.fleet {
                    tokio::join!(state.registry.emptied(), fleet.forwarded_done());
                }
            };
            tokio::join!(callers, fleet);
        });
        if drained.await.is_err() {
            info!(upgraded = state.tasks.len(), "drain deadline reached; closing the rest");
        }
        info!("relay shutting down");
        // Close every tunnel but keep the port answering nothing rather than refusing: an agent
        // that redials now retransmits until the next relay listens, instead of backing off.
        let _ = stop_agents.send(true);
        agent_tunnels.close();
        let closed = async {
            tokio::join!(endpoint.wait_idle(), agent_tunnels.wait());
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, closed).await.is_err() {
            // Only now, as the process ends: a closed endpoint refuses new attempts.
            info!("agent tunnels still closing at the deadline; closing the rest");
            endpoint.close(agents::close_code::SHUTDOWN.into(), b"relay shutting down");
        }
        agents.abort();
        // Last: this relay's registry entries go (the lease is revoked) and peers are told.
        fleet_stop.cancel();
        fleet_tasks.close();
        if tokio::time::timeout(CLOSE_TIMEOUT, fleet_tasks.wait()).await.is_err() {
            info!("the fleet's registry and peer tasks still running at the deadline");
        }
        if let Some(fleet) = &state.fleet {
            fleet.peers.close();
        }
        // Last: the tunnels' `agent_gone` events, written as they closed.
        audit.flush();
        let (retried, ignored, accepted) = listener_stats.snapshot();
        let throttled = listener_stats.throttled.load(std::sync::atomic::Ordering::Relaxed);
        info!(
            retried,
            ignored, accepted, throttled, "agent attempts over this relay's life"
        );
        admin_stop.cancel();
        if let Some(admin) = admin {
            let _ = admin.await;
        }
    }
}

#[cfg(test)]
mod tests;
