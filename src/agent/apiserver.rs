//! The agent's client for kube-apiserver: the cluster CA is verified, the
//! agent's own bearer token is re-read from its file so rotation works, and
//! the only host it ever dials is the apiserver of its configuration.
//!
//! Ordinary requests share HTTP/2 connections; upgrades and long-running
//! requests (watch, follow) use HTTP/1.1 connections of their own so they
//! never queue behind an HTTP/2 connection's stream limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use http::Uri;
use serde::Deserialize;

use crate::config::ApiserverConfig;
use crate::forward::{HttpsClient, https_client};
use crate::token_file::TokenFile;

const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// Why the apiserver client could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum ApiserverError {
    /// The kubeconfig or in-cluster files.
    #[error("apiserver configuration: {0}")]
    Config(String),
    /// TLS set-up.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Why a request of the agent's own to the apiserver got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiCallError {
    /// The agent's credential or the apiserver's URL.
    #[error(transparent)]
    Setup(#[from] ApiserverError),
    /// The agent's token cannot be a header value.
    #[error("the agent's token is not a header value")]
    Token,
    /// No answer: the connection, TLS or the protocol failed (the causes say which).
    #[error("{}", crate::telemetry::error_chain(.0))]
    Request(hyper_util::client::legacy::Error),
    /// Nothing within 10 s.
    #[error("the apiserver did not answer within 10s")]
    Timeout,
    /// An answer that is not JSON of at most 64 KiB.
    #[error("unreadable answer: {0}")]
    Answer(String),
    /// An answer other than 2xx, with the apiserver's message.
    #[error("{status}: {message}")]
    Status {
        /// The status.
        status: http::StatusCode,
        /// The `message` of the apiserver's Status, if any.
        message: String,
    },
}

/// The apiserver and the agent's credential for it.
pub struct Apiserver {
    base: Uri,
    shared: HttpsClient,
    dedicated: HttpsClient,
    token: TokenSource,
}

enum TokenSource {
    Static(String),
    File(TokenFile),
}

impl Apiserver {
    /// From a kubeconfig's current context, or the in-cluster service account.
    pub fn from_config(config: &ApiserverConfig) -> Result<Self, ApiserverError> {
        let (server, roots, token) = match &config.kubeconfig {
            Some(path) => from_kubeconfig(path)?,
            None => in_cluster()?,
        };
        let base: Uri = server
            .parse()
            .map_err(|_| ApiserverError::Config(format!("bad server URL {server:?}")))?;
        if base.scheme_str() != Some("https") {
            return Err(ApiserverError::Config(format!(
                "the apiserver must be https, not {server}"
            )));
        }
        let tls = crate::tls::client_config(roots, &[])?;
        let shared = https_client(tls.clone(), true);
        let dedicated = https_client(tls, false);
        Ok(Self {
            base,
            shared,
            dedicated,
            token,
        })
    }

    /// The apiserver's URL, as configured.
    pub fn base(&self) -> &Uri {
        &self.base
    }

    /// The apiserver URI for a request's path and query (never another host, never out of the
    /// server URL's path prefix).
    pub fn uri_for(&self, uri: &Uri) -> Result<Uri, ApiserverError> {
        crate::headers::rebase(&self.base, uri).map_err(|e| ApiserverError::Config(e.to_string()))
    }

    /// The client for a request: dedicated connections for upgrades and long-running requests.
    pub fn client(&self, long_running: bool) -> &HttpsClient {
        if long_running { &self.dedicated } else { &self.shared }
    }

    /// Asks the apiserver which impersonation rights the agent lacks (SelfSubjectAccessReview
    /// per right), given what it impersonates. A missing grant otherwise shows up only as a
    /// confusing Forbidden on some requests.
    pub async fn missing_impersonation_rights(
        &self,
        impersonates: &crate::config::Impersonates,
    ) -> Result<Vec<String>, ApiCallError> {
        let mut needed: Vec<(&str, &str, &str, String)> = vec![
            ("impersonate", "", "users", String::new()),
            ("impersonate", "", "groups", String::new()),
        ];
        if impersonates.uids {
            needed.push(("impersonate", "authentication.k8s.io", "uids", String::new()));
        }
        for key in &impersonates.extra_keys {
            needed.push(("impersonate", "authentication.k8s.io", "userextras", key.clone()));
        }
        if impersonates.service_accounts {
            needed.push(("impersonate", "", "serviceaccounts", String::new()));
        }
        self.missing_rights(&needed).await
    }

    /// Whether the agent may review cluster tokens (`create tokenreviews`), as passthrough needs;
    /// the missing right's name if not.
    pub async fn missing_passthrough_rights(&self) -> Result<Vec<String>, ApiCallError> {
        self.missing_rights(&[("create", "authentication.k8s.io", "tokenreviews", String::new())])
            .await
    }

    /// Asks with SelfSubjectAccessReviews which of `needed` (verb, group, resource, subresource)
    /// the agent's credential lacks.
    async fn missing_rights(&self, needed: &[(&str, &str, &str, String)]) -> Result<Vec<String>, ApiCallError> {
        let mut missing = Vec::new();
        for (verb, group, resource, subresource) in needed {
            let review = serde_json::json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {
                    "verb": verb, "group": group, "resource": resource, "subresource": subresource,
                }},
            });
            let answer = self
                .call(
                    http::Method::POST,
                    "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                    Some(&review),
                )
                .await?;
            if answer["status"]["allowed"] != true {
                missing.push(if subresource.is_empty() {
                    format!("{verb} {resource}")
                } else {
                    format!("{verb} {resource}/{subresource}")
                });
            }
        }
        Ok(missing)
    }

    /// POSTs `body` as the agent and returns the answer's status and JSON, head
    /// and body under one 10 s deadline, the body bounded to 64 KiB.
    pub async fn post_json(
        &self,
        path: &'static str,
        body: &serde_json::Value,
    ) -> Result<(http::StatusCode, serde_json::Value), String> {
        self.exchange(http::Method::POST, path, Some(body))
            .await
            .map_err(|e| e.to_string())
    }

    /// GETs `path` (or POSTs `body`) as the agent: the JSON answer of a 2xx, else
    /// [`ApiCallError::Status`] with the apiserver's message.
    pub async fn call(
        &self,
        method: http::Method,
        path: &'static str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ApiCallError> {
        let (status, answer) = self.exchange(method, path, body).await?;
        if !status.is_success() {
            let message = answer["message"].as_str().unwrap_or_default().to_owned();
            return Err(ApiCallError::Status { status, message });
        }
        Ok(answer)
    }

    /// One request as the agent: the answer's status and JSON, head and body under one 10 s
    /// deadline, the body bounded to 64 KiB.
    async fn exchange(
        &self,
        method: http::Method,
        path: &'static str,
        body: Option<&serde_json::Value>,
    ) -> Result<(http::StatusCode, serde_json::Value), ApiCallError> {
        let token = self.token()?;
        let uri = self.uri_for(&Uri::from_static(path))?;
        let mut bearer = http::HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| ApiCallError::Token)?;
        bearer.set_sensitive(true);
        let mut req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::AUTHORIZATION, bearer);
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let body = body.map_or_else(String::new, ToString::to_string);
        let req = req
            .body(crate::body::full(body))
            .map_err(|e| ApiCallError::Answer(e.to_string()))?;
        let exchange = async {
            let resp = self.shared.request(req).await.map_err(ApiCallError::Request)?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024);
            let body = http_body_util::BodyExt::collect(body)
                .await
                .map_err(|e| ApiCallError::Answer(e.to_string()))?;
            let answer: serde_json::Value =
                serde_json::from_slice(&body.to_bytes()).map_err(|e| ApiCallError::Answer(e.to_string()))?;
            Ok::<_, ApiCallError>((status, answer))
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| ApiCallError::Timeout)?
    }

    /// The agent's bearer token, re-read from file when stale.
    pub fn token(&self) -> Result<String, ApiserverError> {
        match &self.token {
            TokenSource::Static(token) => Ok(token.clone()),
            TokenSource::File(file) => file.get().map_err(|e| ApiserverError::Config(e.to_string())),
        }
    }
}

/// Whether a path segment is `.` or `..`, also when its dots or an inner slash are percent-encoded.
fn in_cluster() -> Result<(String, rustls::RootCertStore, TokenSource), ApiserverError> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .map_err(|_| ApiserverError::Config("not in a pod (KUBERNETES_SERVICE_HOST unset) and no kubeconfig".into()))?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let roots = crate::tls::root_store(Path::new(IN_CLUSTER_CA))?;
    let token = TokenSource::File(TokenFile::new(IN_CLUSTER_TOKEN));
    Ok((format!("https://{host}:{port}"), roots, token))
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<Named<KubeCluster>>,
    #[serde(default)]
    users: Vec<Named<KubeUser>>,
    #[serde(default)]
    contexts: Vec<Named<KubeContext>>,
    current_context: Option<String>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: T,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct KubeCluster {
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct KubeUser {
    token: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
struct KubeContext {
    cluster: String,
    user: String,
}

fn from_kubeconfig(path: &Path) -> Result<(String, rustls::RootCertStore, TokenSource), ApiserverError> {
    let bad = |m: String| ApiserverError::Config(format!("kubeconfig {}: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let kc: Kubeconfig = serde_yaml_ng::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let current = kc
        .current_context
        .as_deref()
        .ok_or_else(|| bad("no current-context".into()))?;
    let context = find(&kc.contexts, current).ok_or_else(|| bad(format!("no context {current}")))?;
    let cluster = find(&kc.clusters, &context.cluster).ok_or_else(|| bad(format!("no cluster {}", context.cluster)))?;
    let user = find(&kc.users, &context.user).ok_or_else(|| bad(format!("no user {}", context.user)))?;
    let base = path.parent().unwrap_or(Path::new("."));

    let roots = match (&cluster.certificate_authority, &cluster.certificate_authority_data) {
        (_, Some(data)) => {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| bad(e.to_string()))?;
            crate::tls::roots_of(crate::tls::parse_certs(&pem, "certificate-authority-data")?)?
        }
        (Some(file), None) => crate::tls::root_store(&base.join(file))?,
        (None, None) => {
            return Err(bad(
                "the cluster has no certificate-authority: refusing to trust the system roots".into(),
            ));
        }
    };
    let token = match (&user.token, &user.token_file) {
        (Some(token), _) => TokenSource::Static(token.clone()),
        (None, Some(file)) => TokenSource::File(TokenFile::new(base.join(file))),
        (None, None) => {
            return Err(bad(
                "the user has no token or tokenFile (the agent impersonates with a bearer token)".into(),
            ));
        }
    };
    Ok((cluster.server.clone(), roots, token))
}

fn find<'a, T>(items: &'a [Named<T>], name: &str) -> Option<&'a T> {
    items.iter().find(|i| i.name == name).map(|i| &i.value)
}

#[cfg(test)]
mod tests;
