//! A whole request path in one process: the relay's steps, an in-memory tunnel, the agent's own
//! stream serving and steps, and a fake kube-apiserver speaking HTTPS on 127.0.0.1. Both ends
//! load real configuration files (validated as in production) and check tokens themselves.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};

use crate::agent::AgentState;
use crate::body::{self, Body};
use crate::config::{AgentConfig, RelayConfig};
use crate::relay::RelayState;
use crate::relay::path::{Peer, RequestPath, request_path};
use crate::relay::registry::{Admission, SessionGuard};
use crate::transport::{Tunnel, memory};

/// The callers' issuer, trusted by the relay and (with the same key) by the agents.
pub const ISSUER: &str = "https://idp.example";
/// The caller the access rules let through.
pub const USER: &str = "alice";
/// The caller an admin rule names (and no cluster rule).
pub const ADMIN: &str = "root";
/// The agents' instance name: a second session under it replaces the first.
pub const INSTANCE: &str = "agent-1";
/// The relay's instance name.
pub const RELAY: &str = "relay-test";
/// The agents' own credential for the apiserver.
pub const AGENT_CREDENTIAL: &str = "agent-sa-token";
/// Failed authentications a source may have per minute at this relay.
pub const FAILURES_PER_MINUTE: u32 = 3;
/// Where callers seem to come from unless a test says otherwise.
pub const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10)), 40000);
/// How long anything that should happen at once may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// A token signing key (P-256).
pub struct Key(rcgen::KeyPair);

impl Key {
    fn new() -> Self {
        Self(rcgen::KeyPair::generate().unwrap())
    }

    /// `claims`, signed.
    pub fn sign(&self, claims: &Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_ec_der(&self.0.serialize_der());
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), claims, &key).unwrap()
    }
}

/// A relay (its request path, no listeners), the fake apiserver, and the files both read.
pub struct World {
    /// Holds every file; `relay-audit.log` among them.
    pub dir: tempfile::TempDir,
    /// The relay's shared state.
    pub relay: Arc<RelayState>,
    /// The relay's request path.
    pub path: RequestPath,
    /// What the agents forward to.
    pub apiserver: FakeApiserver,
    idp: Key,
}

/// One agent process: its state as `agent::run` builds it, and its audit file.
pub struct Agent {
    /// What its streams share.
    pub state: Arc<AgentState>,
    audit: PathBuf,
}

/// A session of an agent in the relay's registry, served by `agent::serve_memory`.
pub struct Session {
    _guard: SessionGuard,
    /// Ends with the close code and reason once the relay closes the tunnel.
    pub served: tokio::task::JoinHandle<(u32, String)>,
}

impl World {
    /// Clusters `dev`, `idle` and `rogue`, each taking callers' own tokens (audience
    /// `aud-NAME`); only `alice` may reach them, only `root` ask about the fleet; no agent is
    /// registered yet.
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (idp, other) = (Key::new(), Key::new());
        std::fs::write(dir.path().join("idp.pem"), idp.0.public_key_pem()).unwrap();
        std::fs::write(dir.path().join("other.pem"), other.0.public_key_pem()).unwrap();
        let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
        crate::tls::ensure_self_signed(&cert, &key, &["localhost".to_owned()]).unwrap();
        let apiserver = FakeApiserver::start(dir.path()).await;
        let clusters: String = ["dev", "idle", "rogue"]
            .iter()
            .map(|name| {
                let digest = crate::relay::token_digest_hex(&format!("token-{name}"));
                format!("[[clusters]]\nname = \"{name}\"\nagent_token_sha256 = \"{digest}\"\ncaller_audience = \"aud-{name}\"\n")
            })
            .collect();
        let relay_toml = format!(
            r#"instance = "{RELAY}"
listen = "127.0.0.1:0"
[tls]
cert_file = "relay.crt"
key_file = "relay.key"
[[issuers]]
issuer = "{ISSUER}"
audiences = ["aud-dev", "aud-idle", "aud-rogue"]
public_key_file = "idp.pem"
[[access]]
clusters = ["*"]
users = ["{USER}"]
[[access]]
users = ["{ADMIN}"]
admin = true
{clusters}
[audit]
output = "relay-audit.log"
[limits]
auth_failures_per_minute = {FAILURES_PER_MINUTE}
"#
        );
        let file = dir.path().join("relay.toml");
        std::fs::write(&file, relay_toml).unwrap();
        let config: RelayConfig = crate::config::load(&file).unwrap();
        let relay = Arc::new(RelayState::new(&config).unwrap());
        let path = request_path(relay.clone());
        Self {
            dir,
            relay,
            path,
            apiserver,
            idp,
        }
    }

    /// An agent of `cluster` (instance [`INSTANCE`]) whose callers' issuer key is the PEM file
    /// `trusts`; `name` names its config and audit files.
    pub fn agent(&self, name: &str, cluster: &str, trusts: &str) -> Agent {
        let audit = self.dir.path().join(format!("{name}-audit.log"));
        // `relay.address` is required by the config but never dialled: the tunnel is in memory.
        let agent_toml = format!(
            r#"instance = "{INSTANCE}"
cluster = "{cluster}"
token_file = "agent-token"
[relay]
address = "127.0.0.1:1"
ca_file = "relay.crt"
[apiserver]
kubeconfig = "apiserver.kubeconfig"
[[issuers]]
issuer = "{ISSUER}"
audiences = ["aud-{cluster}"]
public_key_file = "{trusts}"
[audit]
output = "{}"
"#,
            audit.display()
        );
        let file = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, agent_toml).unwrap();
        let config: AgentConfig = crate::config::load(&file).unwrap();
        Agent {
            state: Arc::new(AgentState::new(&config).unwrap()),
            audit,
        }
    }

    /// Registers a new in-memory session of `agent` for `cluster`, as the agent listener does
    /// once an agent proved its cluster (so a second one replaces the first).
    pub fn register(&self, cluster: &str, agent: &Agent) -> Session {
        let (tunnel, acceptor) = memory::tunnel(([127, 0, 0, 1], 50000).into());
        let guard = self.register_tunnel(cluster, INSTANCE, tunnel);
        let served = tokio::spawn(crate::agent::serve_memory(acceptor, agent.state.clone(), RELAY.into()));
        Session { _guard: guard, served }
    }

    /// Registers a session of another instance (`agent-lost`) for `cluster` whose tunnel is
    /// closed already, as the agent closes one: it stays registered while the guard lives, as in
    /// the moment before the relay sees the close.
    pub fn register_closed(&self, cluster: &str) -> SessionGuard {
        let (tunnel, _acceptor) = memory::tunnel(([127, 0, 0, 1], 50001).into());
        tunnel.close(0, b"closed by the agent");
        self.register_tunnel(cluster, "agent-lost", tunnel)
    }

    fn register_tunnel(&self, cluster: &str, instance: &str, tunnel: memory::Tunnel) -> SessionGuard {
        let table = self.relay.clusters.current();
        let admitted = Admission {
            token_digest: table.verify(cluster, &format!("token-{cluster}")).unwrap(),
            caller_audience: table.caller_audience(cluster).map(str::to_owned),
        };
        let registry = &self.relay.registry;
        let (guard, _) = registry.register(
            registry.new_id(),
            cluster,
            (instance, 0),
            Tunnel::Memory(tunnel),
            admitted,
        );
        guard
    }

    /// A token of the callers' issuer for `user`, bound to `cluster`, in group `dev-team`.
    pub fn token(&self, user: &str, cluster: &str) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        self.idp.sign(&json!({
            "iss": ISSUER, "aud": format!("aud-{cluster}"), "sub": user, "groups": ["dev-team"],
            "iat": now, "exp": now + 300,
        }))
    }

    /// Sends `req` down the relay's path from [`PEER`].
    pub async fn send(&self, req: Request<Body>) -> Response<Body> {
        self.send_from(PEER, req).await
    }

    /// Sends `req` down the relay's path from `peer`, as the front door does.
    pub async fn send_from(&self, peer: SocketAddr, mut req: Request<Body>) -> Response<Body> {
        req.extensions_mut().insert(Peer(peer));
        crate::relay::path::send(self.path.clone(), req)
            .await
            .unwrap_or_else(|e| e.status().into_response())
    }

    /// Sends `req` down the relay's path from [`PEER`] in a task of its own.
    pub fn spawn_send(&self, mut req: Request<Body>) -> tokio::task::JoinHandle<Response<Body>> {
        req.extensions_mut().insert(Peer(PEER));
        let path = self.path.clone();
        tokio::spawn(async move {
            crate::relay::path::send(path, req)
                .await
                .unwrap_or_else(|e| e.status().into_response())
        })
    }

    /// Serves the relay's path as plain HTTP/1.1 on 127.0.0.1 (only a hyper server connection
    /// gives a request the upgrade it can be switched to), and says where.
    pub async fn serve_http1(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let path = self.path.clone();
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let path = path.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let mut req = req.map(body::boxed);
                    req.extensions_mut().insert(Peer(peer));
                    let path = path.clone();
                    async move {
                        let resp = crate::relay::path::send(path, req).await;
                        Ok::<_, Infallible>(resp.unwrap_or_else(|e| e.status().into_response()))
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
                tokio::spawn(conn.with_upgrades());
            }
        });
        addr
    }

    /// The relay's audit lines so far.
    pub fn relay_audit(&self) -> Vec<Value> {
        self.relay.audit.flush();
        read_lines(&self.dir.path().join("relay-audit.log"))
    }
}

impl Agent {
    /// The agent's audit line for `request_id`, once written (the agent writes it when its side
    /// of the exchange is over, which may be just after the caller has the whole answer).
    pub async fn audit_line(&self, request_id: &str) -> Value {
        eventually("the agent's audit line", || {
            read_lines(&self.audit)
                .into_iter()
                .find(|line| line["request_id"] == request_id)
        })
        .await
    }

    /// The request ids in the agent's audit so far.
    pub fn audited_ids(&self) -> Vec<String> {
        read_lines(&self.audit)
            .iter()
            .filter_map(|line| line["request_id"].as_str().map(str::to_owned))
            .collect()
    }
}

fn read_lines(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Waits until `check` finds something, failing the test after [`DEADLINE`].
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A caller's request for `uri` on the relay, with `token` as its bearer token if any.
pub fn request(method: Method, uri: &str, token: Option<&str>) -> Request<Body> {
    let mut req = Request::new(body::empty());
    *req.method_mut() = method;
    *req.uri_mut() = uri.parse().unwrap();
    if let Some(token) = token {
        req.headers_mut()
            .insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    }
    req
}

/// A request as the fake apiserver received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Path and query.
    pub uri: Uri,
    /// Every header.
    pub headers: HeaderMap,
}

/// kube-apiserver as far as these tests need it, over HTTPS (HTTP/2 and HTTP/1.1, upgrades):
/// - `.../configmaps/slow` answers once [`FakeApiserver::release`] is notified;
/// - `?watch=true` streams an event every 10 ms and never ends, and notifies `watch_ended` once
///   its client went away;
/// - an upgrade request is switched and its bytes echoed until the client ends its side;
/// - anything else gets a ConfigMap.
pub struct FakeApiserver {
    seen: watch::Sender<Vec<Seen>>,
    /// Lets the slow request answer.
    pub release: Arc<Notify>,
    /// Told when a watch's client went away.
    pub watch_ended: Arc<Notify>,
}

/// The ConfigMap the fake apiserver answers with.
pub const CONFIGMAP: &str = r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"cm"}}"#;

impl FakeApiserver {
    /// Starts on 127.0.0.1 with a fresh self-signed certificate, and writes the agents'
    /// kubeconfig for it into `dir`.
    async fn start(dir: &Path) -> Self {
        let (cert, key) = (dir.join("apiserver.crt"), dir.join("apiserver.key"));
        crate::tls::ensure_self_signed(&cert, &key, &["127.0.0.1".to_owned()]).unwrap();
        let tls = crate::tls::server_config(&cert, &key, &[b"h2", b"http/1.1"]).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let kubeconfig = json!({
            "clusters": [{"name": "c", "cluster": {"server": format!("https://{addr}"), "certificate-authority": cert}}],
            "users": [{"name": "u", "user": {"token": AGENT_CREDENTIAL}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        });
        std::fs::write(dir.join("apiserver.kubeconfig"), kubeconfig.to_string()).unwrap();
        let fake = Self {
            seen: watch::channel(Vec::new()).0,
            release: Arc::default(),
            watch_ended: Arc::default(),
        };
        let shared = (fake.seen.clone(), fake.release.clone(), fake.watch_ended.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, shared) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| answer(shared.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        fake
    }

    /// Every request it received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.borrow().clone()
    }

    /// Waits until a request for `path` arrived, failing the test after [`DEADLINE`].
    pub async fn arrived(&self, path: &str) {
        let mut seen = self.seen.subscribe();
        let arrived = seen.wait_for(|all| all.iter().any(|s| s.uri.path() == path));
        tokio::time::timeout(DEADLINE, arrived)
            .await
            .unwrap_or_else(|_| panic!("{path} reached the apiserver within {DEADLINE:?}"))
            .unwrap();
    }
}

type Shared = (watch::Sender<Vec<Seen>>, Arc<Notify>, Arc<Notify>);

async fn answer(
    (seen, release, watch_ended): Shared,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    seen.send_modify(|all| {
        all.push(Seen {
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        })
    });
    let json = |status: StatusCode, text: &'static str| {
        let mut resp = Response::new(body::full(text));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(CONTENT_TYPE, "application/json".parse().unwrap());
        resp
    };
    if let Some(protocol) = crate::headers::upgrade_protocol(req.headers()) {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(io) = upgrade.await {
                echo(TokioIo::new(io)).await;
            }
        });
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert(CONNECTION, "Upgrade".parse().unwrap());
        resp.headers_mut().insert(UPGRADE, protocol);
        return Ok(resp);
    }
    if req.uri().path().ends_with("/configmaps/slow") {
        release.notified().await;
        return Ok(json(StatusCode::OK, CONFIGMAP));
    }
    if req.uri().query().is_some_and(|q| q.contains("watch=true")) {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tokio::select! {
                    () = tx.closed() => break,
                    _ = tick.tick() => {
                        if tx.send(Bytes::from_static(b"{\"type\":\"BOOKMARK\"}\n")).await.is_err() {
                            break;
                        }
                    }
                }
            }
            // The server dropped the body: the client's connection (or stream) is gone.
            watch_ended.notify_one();
        });
        let mut resp = Response::new(body::boxed(Events(rx)));
        resp.headers_mut()
            .insert(CONTENT_TYPE, "application/json".parse().unwrap());
        return Ok(resp);
    }
    Ok(json(StatusCode::OK, CONFIGMAP))
}

/// Echoes what it reads until the other side ends its half, then ends its own.
async fn echo(mut io: TokioIo<hyper::upgrade::Upgraded>) {
    let mut buf = [0u8; 1024];
    while let Ok(n @ 1..) = io.read(&mut buf).await {
        if io.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = io.shutdown().await;
}

/// A watch's body: each event as it comes, no end.
struct Events(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|event| event.map(|e| Ok(Frame::data(e))))
    }
}
