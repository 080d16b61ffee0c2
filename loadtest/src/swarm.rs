//! Many agent tunnels in this one process (a "swarm"), since one `hawser
//! agent` process is about 34 MiB and 10,000 of them do not fit here.
//!
//! Each swarm agent is a real QUIC connection to the real relay binary,
//! made with the product's own pieces: `hawser::tunnel::agent_endpoint`
//! (the agent's transport settings, [`TunnelConfig::default`]),
//! `hawser::tls::RelayTrust`, and the `Hello`/`Welcome` frames of
//! `hawser::proto`, each agent registering a cluster of its own
//! (`swarm-00000`, ...). It does what `hawser::agent` does for a tunnel
//! (connect, hello within 10 s, serve until the connection ends, back off,
//! again) but serves no request: a stream the relay opens is dropped.
//!
//! Differences from the product's agent, on purpose:
//! - endpoints (UDP sockets) are shared, `per_endpoint` agents each, where the
//!   product makes a fresh endpoint per attempt: quinn allocates a receive
//!   buffer of several MiB per endpoint, so 10,000 of them would not fit. The
//!   relay still sees one QUIC connection per agent (own connection ids,
//!   own handshake, own keep-alives); only the source port is shared.
//! - each swarm tunnel accepts at most `agent_streams` relay-opened streams
//!   (the product's `max_streams_per_tunnel`, default 16,384): quinn-proto
//!   allocates bookkeeping for every stream the peer may open when the
//!   connection starts, about 1.5 MB per connection at 16,384, which at
//!   10,000 tunnels would need some 15 GB in this process. This changes only
//!   what the agent side allocates; the relay's side of each connection is the same.
//! - over TCP (`--transport tcp`) each swarm agent dials the relay's caller port with its own TCP
//!   connection and TLS, says its hello and serves HTTP/2 with `hawser::transport::h2`, as the
//!   product's agent does; no endpoint is shared then.
//! - the backoff is the product's own (`hawser::agent::backoff::Backoff`), with its
//!   defaults ([`ReconnectConfig::default`]).
//! - behind a balancer ([`Swarm::behind_balancer`], the `fleet` scenario) each swarm agent moves
//!   when its relay says so, as the product's agent does: it dials again, its hello naming the
//!   relay it leaves, and once welcomed elsewhere retires the old tunnel (QUIC: the retire notice,
//!   then it closes the connection; TCP: it closes the connection, as it carries no exchange).
//!   Every attempt after an agent's first then goes out through a socket of the swarm picked at
//!   random, since the product's agent dials from a fresh socket each time and a UDP balancer
//!   that hashes the source address would otherwise send it to the same relay for ever. Without
//!   it (`swarm`, `storm`) the notices are read and ignored: a swarm agent then redials only once
//!   its tunnel is closed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hawser::agent::backoff::{Backoff, QUICK_REDIALS, quick_redial_wait};
use hawser::config::{ReconnectConfig, TunnelConfig};
use hawser::proto::{self, Hello, Welcome};
use rand::Rng;
use serde::Serialize;
use tokio::task::JoinHandle;

/// Cluster name of swarm agent `i`.
pub fn cluster(i: usize) -> String {
    format!("swarm-{i:05}")
}

/// What the swarm's agents have done, summed over all of them.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connection attempts started.
    pub attempts: AtomicU64,
    /// Attempts that got a `Welcome` (registered at the relay).
    pub welcomed: AtomicU64,
    /// Tunnels up now (welcomed and not yet closed).
    pub up: AtomicU64,
    /// Move notices the agents were given.
    pub move_notices: AtomicU64,
    /// Tunnels replaced elsewhere after a move notice, before the old one ended.
    pub moved: AtomicU64,
    /// Attempts that ended before a welcome, by reason.
    failures: Mutex<BTreeMap<String, u64>>,
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CountersSnapshot {
    /// Connection attempts started.
    pub attempts: u64,
    /// Attempts that registered.
    pub welcomed: u64,
    /// Tunnels up.
    pub up: u64,
    /// Move notices the agents were given.
    pub move_notices: u64,
    /// Tunnels replaced elsewhere after a move notice, before the old one ended.
    pub moved: u64,
    /// Failed attempts by reason (the error as quinn or the relay gave it).
    pub failures: BTreeMap<String, u64>,
}

impl Counters {
    fn fail(&self, reason: String) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let reason: String = reason.chars().take(100).collect();
        if map.len() < 20 || map.contains_key(&reason) {
            *map.entry(reason).or_default() += 1;
        } else {
            *map.entry("(other)".into()).or_default() += 1;
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            attempts: self.attempts.load(Ordering::Relaxed),
            welcomed: self.welcomed.load(Ordering::Relaxed),
            up: self.up.load(Ordering::Relaxed),
            move_notices: self.move_notices.load(Ordering::Relaxed),
            moved: self.moved.load(Ordering::Relaxed),
            failures: self.failures.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

impl CountersSnapshot {
    /// What happened between `self` and `later`.
    pub fn until(&self, later: &CountersSnapshot) -> CountersSnapshot {
        let mut failures = later.failures.clone();
        for (k, v) in &self.failures {
            if let Some(n) = failures.get_mut(k) {
                *n = n.saturating_sub(*v);
            }
        }
        failures.retain(|_, n| *n > 0);
        CountersSnapshot {
            attempts: later.attempts.saturating_sub(self.attempts),
            welcomed: later.welcomed.saturating_sub(self.welcomed),
            up: later.up,
            move_notices: later.move_notices.saturating_sub(self.move_notices),
            moved: later.moved.saturating_sub(self.moved),
            failures,
        }
    }
}

/// What every swarm agent shares.
struct Shared {
    relay: SocketAddr,
    /// Over TCP instead: the relay's caller port and the agent's TLS (ALPN `hawser/1`).
    tcp: Option<(SocketAddr, Arc<rustls::ClientConfig>)>,
    tunnel: TunnelConfig,
    token: String,
    reconnect: ReconnectConfig,
    counters: Arc<Counters>,
    /// As the agents before the quick redial, not the product: a refused attempt grows the backoff.
    grow_backoff_on_refusal: std::sync::atomic::AtomicBool,
    /// Behind a balancer: move when told, and dial each later attempt from a random socket.
    behind_balancer: std::sync::atomic::AtomicBool,
    /// Every UDP socket of the swarm (QUIC).
    endpoints: Mutex<Vec<quinn::Endpoint>>,
}

impl Shared {
    /// The socket for an attempt: the agent's own first, then (behind a balancer) any.
    fn endpoint(&self, own: &Option<quinn::Endpoint>, first: bool) -> Option<quinn::Endpoint> {
        if first || !self.behind_balancer.load(Ordering::Relaxed) {
            return own.clone();
        }
        let endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if endpoints.is_empty() {
            return own.clone();
        }
        Some(endpoints[rand::rng().random_range(0..endpoints.len())].clone())
    }
}

/// The swarm: agents `0..len()` running, each in a task of its own.
pub struct Swarm {
    shared: Arc<Shared>,
    trust: hawser::tls::RelayTrust,
    tunnel: TunnelConfig,
    per_endpoint: usize,
    agents: Vec<JoinHandle<()>>,
}

impl Swarm {
    /// A swarm of no agents yet, for the relay's QUIC address, trusting `ca`,
    /// proving clusters with `token`; `per_endpoint` agents share a UDP socket.
    pub fn new(
        relay: SocketAddr,
        tcp: Option<SocketAddr>,
        ca: &Path,
        token: String,
        per_endpoint: usize,
        agent_streams: u32,
    ) -> Result<Self> {
        let trust = hawser::tls::RelayTrust::load(Some(ca), &[]).context("loading the relay's CA")?;
        let tcp = match tcp {
            Some(addr) => Some((addr, Arc::new(trust.client_config(&[proto::ALPN])?))),
            None => None,
        };
        let tunnel = TunnelConfig {
            max_streams_per_tunnel: agent_streams.max(1),
            ..TunnelConfig::default()
        };
        Ok(Self {
            shared: Arc::new(Shared {
                relay,
                tcp,
                tunnel: tunnel.clone(),
                token,
                reconnect: ReconnectConfig::default(),
                counters: Arc::default(),
                grow_backoff_on_refusal: Default::default(),
                behind_balancer: Default::default(),
                endpoints: Mutex::default(),
            }),
            tunnel,
            trust,
            per_endpoint: per_endpoint.max(1),
            agents: Vec::new(),
        })
    }

    /// As the agents before the quick redial: from now on a refused attempt grows the backoff.
    pub fn grow_backoff_on_refusal(&self) {
        self.shared.grow_backoff_on_refusal.store(true, Ordering::Relaxed);
    }

    /// Behind a balancer: from now on agents move when told, and each attempt after an agent's
    /// first dials from a random socket of the swarm (see the module's notes).
    pub fn behind_balancer(&self) {
        self.shared.behind_balancer.store(true, Ordering::Relaxed);
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Agents running.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// UDP sockets in use.
    pub fn endpoints(&self) -> usize {
        self.shared.endpoints.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Starts agents until `n` run (each dials at once, as a starting agent does).
    pub fn grow_to(&mut self, n: usize) -> Result<()> {
        while self.agents.len() < n {
            let i = self.agents.len();
            let e = i / self.per_endpoint;
            let mut endpoints = self.shared.endpoints.lock().unwrap_or_else(|e| e.into_inner());
            if self.shared.tcp.is_none() && e == endpoints.len() {
                let endpoint = hawser::tunnel::agent_endpoint(&self.trust, &self.tunnel, self.shared.relay)
                    .context("creating a QUIC endpoint")?;
                endpoints.push(endpoint);
            }
            let endpoint = endpoints.get(e).cloned();
            drop(endpoints);
            let hello = Hello {
                link: 0,
                held: Vec::new(),
                probe: false,
                cluster: cluster(i),
                token: self.shared.token.clone(),
                instance: format!("swarm-agent-{i:05}"),
                accepts: hawser::proto::Accepts::Assertion {
                    issuer: crate::system::ASSERTION_ISSUER.to_owned(),
                },
            };
            let task = tokio::spawn(agent(endpoint, hello, self.shared.clone()));
            self.agents.push(task);
        }
        Ok(())
    }

    /// Stops agents until `n` run; their connections close (code 0) as their handles drop.
    pub fn shrink_to(&mut self, n: usize) {
        while self.agents.len() > n {
            if let Some(task) = self.agents.pop() {
                task.abort();
            }
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.shrink_to(0);
        for e in self.shared.endpoints.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            e.close(0u32.into(), b"loadtest done");
        }
    }
}

/// One swarm agent: the loop of `hawser::agent::run`, without serving.
async fn agent(endpoint: Option<quinn::Endpoint>, hello: Hello, shared: Arc<Shared>) {
    let mut backoff = Backoff::new(shared.reconnect.clone());
    // Refused attempts in a row: as `hawser::agent`'s tunnels, up to 8 redial at once.
    let mut refused_in_a_row = 0;
    let counters = &shared.counters;
    // The tunnel being left after a move notice, kept until a replacement is welcomed.
    let mut leaving: Option<Leaving> = None;
    let mut first = true;
    loop {
        let started = Instant::now();
        counters.attempts.fetch_add(1, Ordering::Relaxed);
        let mut hello = hello.clone();
        hello.held = leaving.iter().map(|l| l.from.clone()).collect();
        let endpoint = shared.endpoint(&endpoint, first);
        first = false;
        let dial = async {
            match (&shared.tcp, &endpoint) {
                (Some((addr, tls)), _) => tcp_session(*addr, tls, &hello, &shared.tunnel)
                    .await
                    .map(|(side, w)| (Up::Tcp(side), w)),
                (None, Some(endpoint)) => session(endpoint, shared.relay, &hello)
                    .await
                    .map(|(c, control, w)| (Up::Quic(c, control), w)),
                (None, None) => Err("no endpoint".to_owned()),
            }
        };
        // As the product's agent, a replacement dial goes on when the old tunnel ends meanwhile
        // (the drain's deadline closed it): only nothing is left to retire.
        let (attempt, old_ended) = match &mut leaving {
            Some(old) => {
                tokio::pin!(dial);
                tokio::select! {
                    attempt = &mut dial => (attempt, false),
                    () = old.ended() => (dial.await, true),
                }
            }
            None => (dial.await, false),
        };
        if old_ended {
            leaving = None;
            counters.up.fetch_sub(1, Ordering::Relaxed);
            counters.fail("move: the old tunnel ended before a replacement was welcomed".into());
        }
        match attempt {
            Ok((up, welcome)) => {
                counters.welcomed.fetch_add(1, Ordering::Relaxed);
                match leaving.take() {
                    Some(old) => {
                        old.retire().await;
                        counters.moved.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        counters.up.fetch_add(1, Ordering::Relaxed);
                    }
                }
                match serve(up, welcome.relay, &shared).await {
                    // Told to move: dial at once, the old tunnel kept meanwhile.
                    Some(old) => {
                        leaving = Some(old);
                        continue;
                    }
                    None => {
                        counters.up.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
            Err(reason) => {
                let refused = reason.contains("refused");
                counters.fail(reason);
                if refused
                    && refused_in_a_row < QUICK_REDIALS
                    && !shared.grow_backoff_on_refusal.load(Ordering::Relaxed)
                {
                    refused_in_a_row += 1;
                    let wait = quick_redial_wait(&mut rand::rng());
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
        }
        refused_in_a_row = 0;
        let wait = backoff.next_wait(started.elapsed(), &mut rand::rng());
        match &mut leaving {
            Some(old) => tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = old.ended() => {
                    leaving = None;
                    counters.up.fetch_sub(1, Ordering::Relaxed);
                }
            },
            None => tokio::time::sleep(wait).await,
        }
    }
}

/// Holds a welcomed tunnel until it ends (`None`) or, behind a balancer, until the relay asks the
/// agent to move (the tunnel, to be retired once a replacement is welcomed).
async fn serve(up: Up, from: String, shared: &Shared) -> Option<Leaving> {
    let moves = shared.behind_balancer.load(Ordering::Relaxed);
    let notices = &shared.counters.move_notices;
    match up {
        Up::Quic(connection, mut control) => {
            let moving = {
                // Streams the relay opens would be requests; a swarm cluster gets none.
                let accept = async {
                    while let Ok(stream) = connection.accept_bi().await {
                        drop(stream);
                    }
                };
                let notice = async {
                    loop {
                        match proto::read_frame::<_, proto::Control>(&mut control).await {
                            Ok(proto::Control::Notice(proto::Notice::Move { .. })) => {
                                notices.fetch_add(1, Ordering::Relaxed);
                                if moves {
                                    return;
                                }
                            }
                            Ok(proto::Control::Closing(_)) => {}
                            // The connection's end says the rest.
                            Err(_) => std::future::pending::<()>().await,
                        }
                    }
                };
                tokio::select! {
                    () = accept => false,
                    () = notice => true,
                }
            };
            moving.then(|| Leaving {
                from,
                old: Old::Quic(connection, control),
            })
        }
        Up::Tcp(side) => {
            let never = tokio_util::sync::CancellationToken::new;
            let moving = tokio_util::sync::CancellationToken::new();
            let mut serving: Serving = Box::pin(side.serve(|_send, _recv| {}, never(), never(), moving.clone()));
            tokio::select! {
                _ = &mut serving => None,
                () = moving.cancelled() => {
                    notices.fetch_add(1, Ordering::Relaxed);
                    if moves {
                        Some(Leaving { from, old: Old::Tcp(serving) })
                    } else {
                        serving.await;
                        None
                    }
                }
            }
        }
    }
}

/// A TCP tunnel being served.
type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;

/// A tunnel the agent was told to leave, kept up until a replacement is welcomed.
struct Leaving {
    /// Its relay, named in the replacement's hello.
    from: String,
    old: Old,
}

enum Old {
    Quic(quinn::Connection, hawser::tunnel::Stream),
    Tcp(Serving),
}

impl Leaving {
    /// Resolves when the old tunnel ends (its relay closed it). Not to be awaited again after.
    async fn ended(&mut self) {
        match &mut self.old {
            Old::Quic(connection, _) => {
                connection.closed().await;
            }
            Old::Tcp(serving) => {
                serving.as_mut().await;
            }
        }
    }

    /// Retires the old tunnel: over QUIC the retire notice, then the connection is closed (a swarm
    /// tunnel carries no exchange to wait for); over TCP the connection is closed.
    async fn retire(self) {
        match self.old {
            Old::Quic(connection, mut control) => {
                let retire = proto::write_frame(&mut control, &proto::AgentNotice::Retire);
                let _ = tokio::time::timeout(Duration::from_secs(1), retire).await;
                connection.close(0u32.into(), b"moved");
            }
            Old::Tcp(serving) => drop(serving),
        }
    }
}

/// A tunnel that was welcomed.
enum Up {
    Quic(quinn::Connection, hawser::tunnel::Stream),
    Tcp(Box<TcpSide>),
}

/// The agent's side of a TCP tunnel.
type TcpSide = hawser::transport::h2::AgentSide<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Over TCP: connect, TLS, hello, welcome, HTTP/2: as `hawser::agent`'s TCP dial does.
async fn tcp_session(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    hello: &Hello,
    tunnel: &TunnelConfig,
) -> Result<(Box<TcpSide>, Welcome), String> {
    let within = |what: &'static str| move |_| format!("{what}: no answer within 10s");
    let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(within("connect"))?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut io = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
    )
    .await
    .map_err(within("tls"))?
    .map_err(|e| format!("tls: {e}"))?;
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        proto::write_frame(&mut io, hello).await?;
        proto::read_frame::<_, proto::Answer>(&mut io).await
    })
    .await
    .map_err(within("hello"))?
    .map_err(|e| format!("hello: {e}"))?;
    let welcome = match answer {
        proto::Answer::Closing(closing) => {
            return Err(format!("hello: refused ({}): {}", closing.code, closing.reason));
        }
        proto::Answer::Welcome(welcome) => welcome,
    };
    let side = tokio::time::timeout(Duration::from_secs(10), hawser::transport::h2::agent_side(io, tunnel))
        .await
        .map_err(within("http/2"))?
        .map_err(|e| format!("http/2: {e}"))?;
    Ok((Box::new(side), welcome))
}

/// Connect, hello, welcome: as `hawser::agent`'s session does, with its 10 s handshake and hello deadlines.
async fn session(
    endpoint: &quinn::Endpoint,
    relay: SocketAddr,
    hello: &Hello,
) -> Result<(quinn::Connection, hawser::tunnel::Stream, Welcome), String> {
    use hawser::tunnel::{DialError, HANDSHAKE_TIMEOUT, dial};
    let connection = dial(endpoint, relay, "localhost", HANDSHAKE_TIMEOUT)
        .await
        .map_err(|e| match e {
            DialError::Start(e) => format!("connect: {e}"),
            DialError::Handshake(e) => format!("handshake: {e}"),
            DialError::Timeout(_) => "handshake: timed out".to_owned(),
        })?;
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let mut control = hawser::tunnel::join(connection.open_bi().await.map_err(|e| e.to_string())?);
        proto::write_frame(&mut control, hello)
            .await
            .map_err(|e| e.to_string())?;
        let welcome: Welcome = proto::read_frame(&mut control).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((control, welcome))
    })
    .await;
    match answer {
        Ok(Ok((control, welcome))) => Ok((connection, control, welcome)),
        Ok(Err(e)) => Err(format!(
            "hello: {}",
            connection.close_reason().map_or(e, |r| r.to_string())
        )),
        Err(_) => Err("hello: no answer within 10s".into()),
    }
}
