//! `hawser proxy`: the equivalent of `az connectedk8s proxy`.
//!
//! A local HTTPS endpoint on 127.0.0.1 per cluster forwards to the relay with
//! the caller's token. Each cluster has a port of its own and is served at
//! the root, as an apiserver is: clients that drop or mangle a server URL's
//! path (kubectl before 1.34 for `get --raw`, kubernetes #131165) work too. Threat model: other local users can reach a loopback
//! port, so the endpoint accepts only requests that carry this run's secret
//! (written into the caller's kubeconfig, mode 0600) and answers 401 to
//! anything else, before anything is forwarded. The caller's relay token is
//! added here and never written to the kubeconfig.
//!
//! With `--cluster-token-file`, the caller's own cluster token rides beside the
//! relay token in `Hawser-Cluster-Authorization` (passthrough mode); the agent
//! reviews it and sends it to the apiserver in place of the relay token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::header::{AUTHORIZATION, HOST, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::RngCore;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info_span};

use super::ClientError;
use super::kubeconfig::{Entry, User};
use crate::body::{Body, boxed};
use crate::forward::{self, HttpsClient, https_client};
use crate::headers;
use crate::impersonation::CLUSTER_AUTHORIZATION;
use crate::status::HttpError;
use crate::token_file::TokenFile;

/// What `hawser proxy` was asked to do.
#[derive(Debug)]
pub struct ProxyOptions {
    /// Relay base URL, e.g. `https://relay.example.com`.
    pub relay: Uri,
    /// Clusters to expose.
    pub clusters: Vec<String>,
    /// Local port of the first cluster, the next ones on the ports after it (0: free ports).
    pub port: u16,
    /// The kubeconfig to merge contexts into.
    pub kubeconfig: PathBuf,
    /// The caller's relay token.
    pub token: RelayToken,
    /// CA that signs the relay's certificate; the system roots if absent.
    pub relay_ca: Option<PathBuf>,
    /// `CLUSTER=FILE` (or `FILE` with one cluster): the caller's own cluster tokens (passthrough).
    pub cluster_tokens: Vec<String>,
}

/// Where the proxy's relay token comes from.
#[derive(Debug)]
pub enum RelayToken {
    /// A token given at start (file or HAWSER_TOKEN).
    Fixed(crate::config::Secret),
    /// A `hawser login`, refreshed near its expiry.
    Login(Arc<crate::login::refresh::LoginToken>),
}

impl RelayToken {
    /// The `Authorization` value for the relay now.
    async fn bearer(&self) -> Result<HeaderValue, HttpError> {
        let value = match self {
            Self::Fixed(secret) => format!("Bearer {}", secret.expose()),
            Self::Login(login) => {
                let token = login.get().await.map_err(|e| match e {
                    crate::login::LoginError::RefreshFailed { .. } => HttpError::bad_gateway(e.to_string()),
                    _ => HttpError::unauthorized(e.to_string()),
                })?;
                format!("Bearer {}", token.expose())
            }
        };
        let mut bearer = HeaderValue::from_str(&value)
            .map_err(|_| HttpError::internal("the caller's token is not a valid header value"))?;
        bearer.set_sensitive(true);
        Ok(bearer)
    }
}

struct ProxyState {
    secret: String,
    token: RelayToken,
    cluster_tokens: ClusterTokens,
    shared: HttpsClient,
    dedicated: HttpsClient,
    /// Owner of the local connections and their spliced upgrades; SIGINT drains them briefly.
    tasks: tokio_util::task::TaskTracker,
}

/// A bound proxy whose contexts are written, not yet serving.
pub struct Proxy {
    /// One listener per cluster, in the order of `--cluster`.
    listeners: Vec<(Arc<Served>, TcpListener)>,
    acceptor: TlsAcceptor,
    state: Arc<ProxyState>,
    /// The contexts written to the kubeconfig.
    pub contexts: Vec<String>,
}

impl Proxy {
    /// Binds the local endpoint and merges one context per cluster into the kubeconfig.
    pub async fn bind(options: ProxyOptions) -> Result<Self, ClientError> {
        if options.clusters.is_empty() {
            return Err(ClientError::Usage("name at least one --cluster".into()));
        }
        for cluster in &options.clusters {
            if !crate::config::valid_cluster_name(cluster) {
                return Err(ClientError::Usage(format!("{cluster:?} is not a cluster name")));
            }
        }
        if options.relay.scheme_str() != Some("https") || options.relay.authority().is_none() {
            return Err(ClientError::Usage(format!(
                "--relay must be an https:// URL, not {}",
                options.relay
            )));
        }
        let cluster_tokens = ClusterTokens::parse(&options.cluster_tokens, &options.clusters)?;
        let mut listeners = Vec::with_capacity(options.clusters.len());
        for (i, cluster) in options.clusters.iter().enumerate() {
            let port = match options.port {
                0 => 0,
                first => u16::try_from(usize::from(first) + i)
                    .map_err(|_| ClientError::Usage(format!("--port {first}: no port left for cluster {cluster}")))?,
            };
            let listener = TcpListener::bind(("127.0.0.1", port))
                .await
                .map_err(|e| ClientError::Usage(format!("cannot listen on 127.0.0.1:{port} for {cluster}: {e}")))?;
            let served = Served {
                cluster: cluster.clone(),
                base: cluster_base(&options.relay, cluster)?,
            };
            listeners.push((Arc::new(served), listener));
        }

        // A fresh serving certificate and secret for every run.
        let key = rcgen::KeyPair::generate().map_err(crate::tls::TlsError::from)?;
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .map_err(crate::tls::TlsError::from)?;
        let cert = params.self_signed(&key).map_err(crate::tls::TlsError::from)?;
        let mut server_tls = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(crate::tls::TlsError::from)?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .map_err(crate::tls::TlsError::from)?;
        server_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let secret = data_encoding::HEXLOWER.encode(&secret);

        let mut entries = Vec::with_capacity(listeners.len());
        for (served, listener) in &listeners {
            let cluster = &served.cluster;
            let addr = listener.local_addr().map_err(|e| ClientError::Usage(e.to_string()))?;
            entries.push(Entry {
                name: format!("hawser-{cluster}"),
                server: format!("https://{addr}"),
                ca_pem: Some(cert.pem().into_bytes()),
                user: User::Token(secret.clone()),
            });
        }
        super::kubeconfig::merge_into_file(&options.kubeconfig, &entries)?;

        let client_tls = super::relay_tls(options.relay_ca.as_deref())?;
        let state = Arc::new(ProxyState {
            secret,
            token: options.token,
            cluster_tokens,
            shared: https_client(client_tls.clone(), true),
            dedicated: https_client(client_tls, false),
            tasks: tokio_util::task::TaskTracker::new(),
        });
        Ok(Self {
            listeners,
            acceptor: TlsAcceptor::from(Arc::new(server_tls)),
            state,
            contexts: entries.into_iter().map(|e| e.name).collect(),
        })
    }

    /// Each cluster and the local address that serves it.
    pub fn addresses(&self) -> std::io::Result<Vec<(String, SocketAddr)>> {
        self.listeners
            .iter()
            .map(|(served, listener)| Ok((served.cluster.clone(), listener.local_addr()?)))
            .collect()
    }

    /// Serves until SIGINT or SIGTERM.
    pub async fn run(self) {
        let Self {
            listeners,
            acceptor,
            state,
            ..
        } = self;
        // Owned here: the accept loops end when this does.
        let mut loops = tokio::task::JoinSet::new();
        for (served, listener) in listeners {
            loops.spawn(accept(listener, served, acceptor.clone(), state.clone()));
        }
        crate::shutdown::signal().await;
        loops.shutdown().await;
        // Requests in flight get a moment to finish; watches and exec sessions would not end.
        state.tasks.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), state.tasks.wait()).await;
    }
}

/// Accepts local connections for one cluster until the task is aborted.
async fn accept(listener: TcpListener, served: Arc<Served>, acceptor: TlsAcceptor, state: Arc<ProxyState>) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            // Out of file descriptors, typically: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        // Without it the first response on each new kubectl connection waits out Nagle
        // and delayed ACK (about 40 ms).
        let _ = tcp.set_nodelay(true);
        let span = info_span!("local_connection", net.peer.address = %peer, cluster = %served.cluster);
        let connection = connection(tcp, acceptor.clone(), state.clone(), served.clone());
        state.tasks.spawn(connection.instrument(span));
    }
}

/// One cluster a local port serves.
struct Served {
    cluster: String,
    /// The relay's URL for it: `https://RELAY[/prefix]/clusters/NAME`, built once.
    base: Uri,
}

fn cluster_base(relay: &Uri, cluster: &str) -> Result<Uri, ClientError> {
    let prefix = relay.path().trim_end_matches('/');
    Uri::builder()
        .scheme("https")
        .authority(relay.authority().map_or("", |a| a.as_str()))
        .path_and_query(format!("{prefix}/clusters/{cluster}"))
        .build()
        .map_err(|e| ClientError::Usage(format!("the relay URL for {cluster}: {e}")))
}

/// The caller's cluster tokens: one per cluster (`FILE` alone only when the proxy serves a single
/// cluster: a cluster token sent to another cluster's agent could be replayed at its own).
#[derive(Debug, Default)]
struct ClusterTokens {
    every: Option<TokenFile>,
    per_cluster: Vec<(String, TokenFile)>,
}

impl ClusterTokens {
    /// Parses `FILE` and `CLUSTER=FILE` arguments; each file must be readable now.
    fn parse(args: &[String], clusters: &[String]) -> Result<Self, ClientError> {
        let mut tokens = Self::default();
        for arg in args {
            let (cluster, file) = match arg.split_once('=') {
                Some((cluster, file)) => (Some(cluster), file),
                None => (None, arg.as_str()),
            };
            let file = TokenFile::new(file);
            file.get()
                .map_err(|e| ClientError::Usage(format!("--cluster-token-file: {e}")))?;
            match cluster {
                Some(cluster) if !clusters.iter().any(|c| c == cluster) => {
                    return Err(ClientError::Usage(format!(
                        "--cluster-token-file names {cluster:?}, which is not a --cluster of this proxy"
                    )));
                }
                Some(cluster) if tokens.per_cluster.iter().any(|(c, _)| c == cluster) => {
                    return Err(ClientError::Usage(format!(
                        "--cluster-token-file names {cluster:?} twice"
                    )));
                }
                Some(cluster) => tokens.per_cluster.push((cluster.to_owned(), file)),
                None if tokens.every.is_some() => {
                    return Err(ClientError::Usage(
                        "--cluster-token-file without CLUSTER= may be given once".into(),
                    ));
                }
                None if clusters.len() > 1 => {
                    return Err(ClientError::Usage(
                        "--cluster-token-file: with several --cluster, say whose token it is (CLUSTER=FILE); \
                         a cluster token sent to every cluster's agent could be replayed at its own cluster"
                            .into(),
                    ));
                }
                None => tokens.every = Some(file),
            }
        }
        Ok(tokens)
    }

    fn for_cluster(&self, cluster: &str) -> Option<&TokenFile> {
        self.per_cluster
            .iter()
            .find(|(c, _)| c == cluster)
            .map(|(_, f)| f)
            .or(self.every.as_ref())
    }
}

async fn connection(tcp: tokio::net::TcpStream, acceptor: TlsAcceptor, state: Arc<ProxyState>, served: Arc<Served>) {
    let Ok(Ok(tls)) = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await else {
        return;
    };
    let service = service_fn(move |req| {
        let (state, served) = (state.clone(), served.clone());
        async move {
            Ok::<_, Infallible>(
                handle(&state, &served, req)
                    .await
                    .unwrap_or_else(HttpError::into_response),
            )
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(30));
    if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(tls), service).await {
        debug!(error = %e, "local connection ended with an error");
    }
}

async fn handle(state: &ProxyState, served: &Served, req: Request<Incoming>) -> Result<Response<Body>, HttpError> {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let expected = format!("Bearer {}", state.secret);
    if !bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        return Err(HttpError::unauthorized(
            "this local endpoint needs the secret from its kubeconfig context",
        ));
    }
    // This port serves one cluster at its root: every path is the apiserver's.
    let upstream = headers::rebase(&served.base, req.uri()).map_err(|e| HttpError::bad_request(e.to_string()))?;

    let mut req = req.map(boxed);
    *req.uri_mut() = upstream;
    *req.version_mut() = http::Version::HTTP_11;
    headers::strip_hop_by_hop(req.headers_mut());
    req.headers_mut().remove(HOST);
    let bearer = state.token.bearer().await?;
    req.headers_mut().insert(AUTHORIZATION, bearer);
    // Ours alone: a header the caller sent is never forwarded as a cluster token.
    req.headers_mut().remove(CLUSTER_AUTHORIZATION);
    if let Some(file) = state.cluster_tokens.for_cluster(&served.cluster) {
        let token = file.get().map_err(|e| HttpError::internal(e.to_string()))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| HttpError::internal("the cluster token is not a valid header value"))?;
        value.set_sensitive(true);
        req.headers_mut().insert(CLUSTER_AUTHORIZATION, value);
    }
    let client = if forward::is_long_running(&req) {
        &state.dedicated
    } else {
        &state.shared
    };
    forward::exchange(req, None, &state.tasks, |req| client.request(req))
        .await
        .map_err(|e| HttpError::bad_gateway(format!("the relay did not answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_token_files_are_sent_to_their_own_cluster_only() {
        let dir = tempfile::tempdir().unwrap();
        let (all, dev, prod) = (dir.path().join("all"), dir.path().join("dev"), dir.path().join("prod"));
        std::fs::write(&all, "t-all").unwrap();
        std::fs::write(&dev, "t-dev\n").unwrap();
        std::fs::write(&prod, "t-prod").unwrap();
        let one = vec!["dev".to_owned()];
        let tokens = ClusterTokens::parse(&[all.display().to_string()], &one).unwrap();
        assert_eq!(
            tokens.for_cluster("dev").unwrap().get().unwrap(),
            "t-all",
            "one cluster: FILE is its"
        );
        let clusters = vec!["dev".to_owned(), "prod".to_owned()];
        let args = vec![format!("dev={}", dev.display()), format!("prod={}", prod.display())];
        let tokens = ClusterTokens::parse(&args, &clusters).unwrap();
        assert_eq!(tokens.for_cluster("dev").unwrap().get().unwrap(), "t-dev");
        assert_eq!(tokens.for_cluster("prod").unwrap().get().unwrap(), "t-prod");
        let only_dev = ClusterTokens::parse(&args[..1], &clusters).unwrap();
        assert!(only_dev.for_cluster("prod").is_none(), "prod gets no token of dev's");
        assert!(
            ClusterTokens::parse(&[], &clusters)
                .unwrap()
                .for_cluster("dev")
                .is_none()
        );
        // One token for every cluster: each cluster's agent would see every cluster's token.
        let err = ClusterTokens::parse(&[all.display().to_string()], &clusters)
            .unwrap_err()
            .to_string();
        assert!(err.contains("CLUSTER=FILE"), "{err}");

        let unknown = format!("qa={}", dev.display());
        let missing = dir.path().join("missing").display().to_string();
        for bad in [vec![unknown], vec![missing], vec![args[0].clone(), args[0].clone()]] {
            let err = ClusterTokens::parse(&bad, &clusters).unwrap_err().to_string();
            assert!(err.starts_with("--cluster-token-file"), "{err}");
        }
    }
}
