//! The HTTP client every request to the provider goes through: hyper-rustls (no second HTTP
//! stack), HTTPS only except on loopback, bounded in time and body size. It is the `oauth2`
//! crate's `AsyncHttpClient` (through [`Http::call`]).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use super::LoginError;

/// How long one exchange with the provider (connect, request, whole answer) may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read from the provider (discovery documents and tokens are a few KiB).
const MAX_BODY: usize = 1 << 20;

/// A request to the provider failed before an OAuth2 answer could be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpFailure {
    /// The URL is not one we send credentials to.
    #[error("{0}")]
    Refused(String),
    /// Connecting, TLS, or the exchange failed.
    #[error("{url}: {cause}")]
    Transport {
        /// The URL.
        url: String,
        /// The error chain.
        cause: String,
    },
    /// The provider answered with a server error.
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: http::StatusCode,
    },
    /// No whole answer in time.
    #[error("{url}: no answer within {TIMEOUT:?}")]
    Timeout {
        /// The URL.
        url: String,
    },
}

/// An HTTPS client for one provider.
#[derive(Clone, Debug)]
pub struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Http {
    /// A client trusting the CAs in `ca_file`, else the system's.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, LoginError> {
        let tls = crate::client::relay_tls(ca_file)?;
        // http is allowed by the connector only so loopback providers work; `call` refuses
        // plain http to any other host before connecting.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Ok(Self { client })
    }

    /// Sends `request` and reads the whole answer; 5xx answers are failures here (the provider
    /// is down, not refusing), other statuses are left to the caller.
    pub async fn call(&self, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpFailure> {
        let url = request.uri().to_string();
        check_url(&url, "the provider's URL").map_err(|e| HttpFailure::Refused(e.to_string()))?;
        let request = request.map(|body| Full::new(Bytes::from(body)));
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| HttpFailure::Transport {
                url: url.clone(),
                cause: crate::telemetry::error_chain(&e),
            })?;
            let (parts, body) = response.into_parts();
            if parts.status.is_server_error() {
                return Err(HttpFailure::Status {
                    url: url.clone(),
                    status: parts.status,
                });
            }
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| HttpFailure::Transport {
                    url: url.clone(),
                    cause: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body.to_vec()))
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| HttpFailure::Timeout { url: url.clone() })?
    }

    /// GETs `url` as JSON.
    pub async fn get(&self, url: &str) -> Result<oauth2::HttpResponse, HttpFailure> {
        let request = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| HttpFailure::Refused(format!("{url}: {e}")))?;
        self.call(request).await
    }
}

// A named impl with a boxed `Send` future rather than a closure: the proxy's request futures
// must be `Send`, which the compiler cannot prove through a closure's higher-ranked borrow.
impl<'c> oauth2::AsyncHttpClient<'c> for Http {
    type Error = HttpFailure;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, HttpFailure>> + Send + Sync + 'c>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(Http::call(self, request))
    }
}

/// Refuses a URL credentials must not be sent to: anything but `https://`, or `http://` to
/// 127.0.0.1, ::1 or localhost. `what` names it in the error.
pub fn check_url(url: &str, what: &str) -> Result<Uri, LoginError> {
    let text = super::provider_text(url);
    let uri: Uri = url
        .parse()
        .map_err(|_| LoginError::Usage(format!("{what} {text} is not a URL")))?;
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(uri),
        Some("http") if matches!(host, "127.0.0.1" | "[::1]" | "::1" | "localhost") => Ok(uri),
        _ => Err(LoginError::Usage(format!(
            "{what} {text} must be an https:// URL (plain http only on 127.0.0.1, ::1 or localhost)"
        ))),
    }
}
