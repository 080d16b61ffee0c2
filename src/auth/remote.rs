//! Keys fetched from a JWKS URL: cache, single-flight refetch, rate limit, bounded fetches.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::clock::Clock;
use super::keys::{VerifyKey, keys_from_jwks};
use super::{ConfigError, IssuerConfig};

/// When and how the key set is fetched again.
#[derive(Debug, Clone)]
pub(crate) struct RefetchPolicy {
    /// At most one fetch per this interval, whatever the tokens say.
    pub(crate) min_interval: Duration,
    /// Keys older than this are refreshed in the background, so removed keys eventually stop working.
    pub(crate) max_age: Duration,
    /// Whole fetch (connect, request, body) must finish within this.
    pub(crate) timeout: Duration,
    /// Largest JWKS body accepted.
    pub(crate) max_body: usize,
}

impl Default for RefetchPolicy {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(10),
            max_age: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            max_body: 1024 * 1024,
        }
    }
}

/// One successfully fetched key set; `generation` 0 is the empty set before the first fetch.
#[derive(Debug)]
pub(crate) struct KeySet {
    /// Counts successful fetches; lets a waiter see that someone else already refetched.
    pub(crate) generation: u64,
    /// The keys.
    pub(crate) keys: Vec<VerifyKey>,
    /// Monotonic time of the fetch.
    fetched_at: Duration,
}

/// Fetch bookkeeping, guarded by the single-flight lock.
#[derive(Debug, Default)]
struct FetchState {
    last_attempt: Option<Duration>,
    last_error: Option<String>,
}

/// Outcome of asking for a refetch.
enum Admission {
    /// No fetch now: someone else fetched, or the rate limit holds (with the last error, if any).
    Answer(Result<Arc<KeySet>, String>),
    /// Fetch now.
    Fetch,
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The key set of one issuer's JWKS URL.
pub(crate) struct RemoteKeys {
    inner: Arc<Inner>,
}

struct Inner {
    uri: Uri,
    client: HttpsClient,
    // Readers take a snapshot without waiting for a fetch in progress.
    cache: RwLock<Arc<KeySet>>,
    // Held for the whole fetch: concurrent refetches queue here and then find the new generation.
    fetch: Arc<Mutex<FetchState>>,
    clock: Arc<dyn Clock>,
    policy: RefetchPolicy,
    /// Owner of the fetch tasks (one at a time, under `fetch`); each ends within
    /// `policy.timeout`, its drain deadline.
    tasks: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("uri", &self.inner.uri)
            .field("policy", &self.inner.policy)
            .finish()
    }
}

impl RemoteKeys {
    /// Prepare the HTTPS client for `config.jwks_url`; nothing is fetched yet.
    pub(crate) fn new(
        config: &IssuerConfig,
        clock: Arc<dyn Clock>,
        policy: RefetchPolicy,
    ) -> Result<Self, ConfigError> {
        let url = config.jwks_url.as_deref().unwrap_or_default();
        let uri = config.jwks_uri_of(url)?;
        let client = build_client(config, &uri)?;
        let empty = KeySet {
            generation: 0,
            keys: Vec::new(),
            fetched_at: Duration::ZERO,
        };
        let inner = Inner {
            uri,
            client,
            cache: RwLock::new(Arc::new(empty)),
            fetch: Arc::new(Mutex::new(FetchState::default())),
            clock,
            policy,
            tasks: tokio_util::task::TaskTracker::new(),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The generation of the key set in use now (0 before the first fetch).
    pub(crate) fn generation(&self) -> u64 {
        self.inner.current().generation
    }

    /// The cached key set; fetches first if there is none yet, refreshes in the background if old.
    pub(crate) async fn keys(&self) -> Result<Arc<KeySet>, String> {
        let current = self.inner.current();
        if current.generation == 0 {
            return self.refresh(0).await;
        }
        let age = self.inner.clock.monotonic().saturating_sub(current.fetched_at);
        if age >= self.inner.policy.max_age
            && let Ok(state) = Arc::clone(&self.inner.fetch).try_lock_owned()
            && matches!(self.inner.admit(&state, current.generation), Admission::Fetch)
        {
            // Fire and forget: requests keep using the current keys meanwhile.
            drop(self.inner.start_fetch(state, current.generation));
        }
        Ok(current)
    }

    /// Fetch again unless someone already did since generation `seen`, or the rate limit says no.
    ///
    /// Returns the newest key set (possibly still generation `seen`), or the fetch error if the
    /// most recent attempt failed.
    pub(crate) async fn refresh(&self, seen: u64) -> Result<Arc<KeySet>, String> {
        let state = Arc::clone(&self.inner.fetch).lock_owned().await;
        match self.inner.admit(&state, seen) {
            Admission::Answer(result) => result,
            Admission::Fetch => {
                // A task, so that a caller giving up cannot abandon the fetch half-way.
                self.inner
                    .start_fetch(state, seen)
                    .await
                    .unwrap_or_else(|_| Err("JWKS fetch task failed".to_owned()))
            }
        }
    }
}

impl Inner {
    fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.cache.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Decide, under the fetch lock, whether a fetch for generation `seen` should start now.
    fn admit(&self, state: &FetchState, seen: u64) -> Admission {
        let current = self.current();
        if current.generation != seen {
            return Admission::Answer(Ok(current));
        }
        let now = self.clock.monotonic();
        if state
            .last_attempt
            .is_some_and(|last| now.saturating_sub(last) < self.policy.min_interval)
        {
            return Admission::Answer(match &state.last_error {
                Some(error) => Err(error.clone()),
                None => Ok(current),
            });
        }
        Admission::Fetch
    }

    fn start_fetch(
        self: &Arc<Self>,
        mut state: OwnedMutexGuard<FetchState>,
        seen: u64,
    ) -> tokio::task::JoinHandle<Result<Arc<KeySet>, String>> {
        let inner = Arc::clone(self);
        let started = inner.clock.monotonic();
        state.last_attempt = Some(started);
        let tasks = inner.tasks.clone();
        tasks.spawn(async move {
            let result = inner.fetch().await;
            match result {
                Ok(keys) => {
                    tracing::info!(uri = %inner.uri, keys = keys.len(), "fetched JWKS");
                    let set = Arc::new(KeySet {
                        generation: seen + 1,
                        keys,
                        fetched_at: started,
                    });
                    *inner.cache.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&set);
                    state.last_error = None;
                    Ok(set)
                }
                Err(error) => {
                    tracing::warn!(uri = %inner.uri, %error, "JWKS fetch failed");
                    state.last_error = Some(error.clone());
                    Err(error)
                }
            }
        })
    }

    async fn fetch(&self) -> Result<Vec<VerifyKey>, String> {
        let request = Request::get(self.uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("building JWKS request: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("fetching JWKS: {}", crate::telemetry::error_chain(&e)))?;
            if response.status() != StatusCode::OK {
                return Err(format!("JWKS endpoint answered {}", response.status()));
            }
            let body = Limited::new(response.into_body(), self.policy.max_body)
                .collect()
                .await
                .map_err(|e| format!("reading JWKS: {e}"))?
                .to_bytes();
            keys_from_jwks(&body).map_err(|e| e.to_string())
        };
        tokio::time::timeout(self.policy.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("JWKS fetch timed out after {:?}", self.policy.timeout)))
    }
}

fn build_client(config: &IssuerConfig, uri: &Uri) -> Result<HttpsClient, ConfigError> {
    let error = |reason: String| ConfigError::Keys {
        issuer: config.issuer.clone(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_with_roots = |roots: rustls::RootCertStore| {
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .map_err(|e| error(format!("TLS setup: {e}")))
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = if uri.scheme_str() == Some("http") {
        // Loopback plain http (validated): TLS is never used, so no roots are needed.
        builder
            .with_tls_config(tls_with_roots(rustls::RootCertStore::empty())?)
            .https_or_http()
    } else if let Some(path) = &config.jwks_ca_file {
        let pem = std::fs::read(path).map_err(|source| ConfigError::ReadFile {
            issuer: config.issuer.clone(),
            path: path.clone(),
            source,
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| error(format!("jwks_ca_file {path:?}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| error(format!("jwks_ca_file {path:?}: {e}")))?;
        }
        if roots.is_empty() {
            return Err(error(format!("jwks_ca_file {path:?} holds no certificate")));
        }
        builder.with_tls_config(tls_with_roots(roots)?).https_only()
    } else {
        builder
            .with_provider_and_native_roots(Arc::clone(&provider))
            .map_err(|e| error(format!("loading system CA certificates: {e}")))?
            .https_only()
    };
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    Ok(Client::builder(TokioExecutor::new()).build(builder.enable_http1().wrap_connector(tcp)))
}
