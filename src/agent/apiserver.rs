//! The agent's client for kube-apiserver: the cluster CA is verified, the
//! agent's own credential (a bearer token, a client certificate, or both) is
//! re-read from its files so rotation works, and the only host it ever dials
//! is the apiserver of its configuration.
//!
//! A client certificate is presented only on requests made as the agent
//! (its own calls, impersonated requests): kube-apiserver tries client
//! certificates before bearer tokens, so a passthrough request carrying a
//! caller's cluster token over a connection that presented the agent's
//! certificate would run as the agent. Those go over connections of their own
//! that present none ([`Apiserver::client`]).
//!
//! Ordinary requests share HTTP/2 connections; upgrades and long-running
//! requests (watch, follow) use HTTP/1.1 connections of their own so they
//! never queue behind an HTTP/2 connection's stream limit.

mod client_cert;
mod kubeconfig;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;

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
    /// Connections presenting the agent's client certificate, if it has one: shared, dedicated.
    as_agent: [HttpsClient; 2],
    /// Connections presenting no certificate, for requests with a caller's own credential (the
    /// same clients as `as_agent` when the agent has no certificate).
    as_caller: [HttpsClient; 2],
    credential: Credential,
}

/// Who the agent is to the apiserver: a bearer token, a client certificate, or both.
pub(crate) struct Credential {
    bearer: Option<TokenSource>,
    cert: Option<Arc<client_cert::ClientCert>>,
}

enum TokenSource {
    Static(String),
    File(TokenFile),
}

/// Whose credential a forwarded request carries, which decides the connection it may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acting {
    /// The agent's own (impersonation): its client certificate may be presented.
    Agent,
    /// The caller's own cluster token (passthrough): no client certificate.
    Caller,
}

impl Apiserver {
    /// From a kubeconfig's current context, or the in-cluster service account.
    pub fn from_config(config: &ApiserverConfig) -> Result<Self, ApiserverError> {
        let kubeconfig::Target {
            server,
            roots,
            credential,
        } = match &config.kubeconfig {
            Some(path) => kubeconfig::from_kubeconfig(path)?,
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
        let plain = crate::tls::client_config(roots.clone(), &[])?;
        let clients = |tls: rustls::ClientConfig| [https_client(tls.clone(), true), https_client(tls, false)];
        let as_caller = clients(plain);
        let as_agent = match &credential.cert {
            Some(cert) => clients(crate::tls::client_config_presenting(roots, cert.clone(), &[])?),
            None => as_caller.clone(),
        };
        Ok(Self {
            base,
            as_agent,
            as_caller,
            credential,
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

    /// The client for a request made with `acting`'s credential: dedicated connections for
    /// upgrades and long-running requests.
    pub fn client(&self, long_running: bool, acting: Acting) -> &HttpsClient {
        let clients = match acting {
            Acting::Agent => &self.as_agent,
            Acting::Caller => &self.as_caller,
        };
        &clients[usize::from(long_running)]
    }

    /// What the agent's credential is, for log lines and errors (never the secret itself).
    pub fn credential(&self) -> String {
        let bearer = self.credential.bearer.as_ref().map(|token| match token {
            TokenSource::Static(_) => "the kubeconfig's token".to_owned(),
            TokenSource::File(file) => format!("token file {}", file.path().display()),
        });
        let cert = self.credential.cert.as_ref().map(|cert| cert.describe());
        match (cert, bearer) {
            (Some(cert), Some(bearer)) => format!("{cert} and {bearer}"),
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => "no credential".into(),
        }
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
        let uri = self.uri_for(&Uri::from_static(path))?;
        let mut req = http::Request::builder().method(method).uri(uri);
        if let Some(token) = self.bearer()? {
            let mut bearer = http::HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| ApiCallError::Token)?;
            bearer.set_sensitive(true);
            req = req.header(http::header::AUTHORIZATION, bearer);
        }
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let body = body.map_or_else(String::new, ToString::to_string);
        let req = req
            .body(crate::body::full(body))
            .map_err(|e| ApiCallError::Answer(e.to_string()))?;
        let exchange = async {
            let resp = self
                .client(false, Acting::Agent)
                .request(req)
                .await
                .map_err(ApiCallError::Request)?;
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

    /// The agent's bearer token, re-read from file when stale; none when it authenticates with
    /// a client certificate alone.
    pub fn bearer(&self) -> Result<Option<String>, ApiserverError> {
        match &self.credential.bearer {
            None => Ok(None),
            Some(TokenSource::Static(token)) => Ok(Some(token.clone())),
            Some(TokenSource::File(file)) => file.get().map(Some).map_err(|e| ApiserverError::Config(e.to_string())),
        }
    }
}

/// The pod's service account: its token and CA as mounted, the apiserver from the environment.
fn in_cluster() -> Result<kubeconfig::Target, ApiserverError> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .map_err(|_| ApiserverError::Config("not in a pod (KUBERNETES_SERVICE_HOST unset) and no kubeconfig".into()))?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    Ok(kubeconfig::Target {
        server: format!("https://{host}:{port}"),
        roots: crate::tls::root_store(Path::new(IN_CLUSTER_CA))?,
        credential: Credential {
            bearer: Some(TokenSource::File(TokenFile::new(IN_CLUSTER_TOKEN))),
            cert: None,
        },
    })
}

#[cfg(test)]
mod tests;
