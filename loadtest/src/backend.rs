//! The trivial HTTPS backend that stands in for kube-apiserver.
//!
//! It runs as a child process of the driver (`hawser-loadtest serve-backend`),
//! so its CPU time is its own, and exits when the driver closes its stdin.
//! HTTP/1.1 and HTTP/2 (ALPN), its own self-signed CA, and five routes:
//!
//! - `GET /small`: a ~100-byte JSON body;
//! - `GET /bulk?bytes=N`: N bytes, streamed in 64 KiB frames of one shared buffer;
//! - `GET /watch?interval_ms=N`: a never-ending watch, one ~90-byte JSON event
//!   line every N ms stamped with the time it was sent (`crate::watches`);
//! - `GET /stats`: `/bulk` bytes produced so far (to see a stalled reader's stream stop);
//! - `GET /api/v1/...`: the pods and configmaps `k6mix` asks for (`crate::k6mix::canned`);
//! - `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`: allowed,
//!   so the agent's start-up check of its impersonation rights passes.
//!
//! Any `Authorization` and `Impersonate-*` headers are accepted and ignored.

use std::convert::Infallible;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The `/small` answer: about 100 bytes of JSON, like a small API object.
pub const SMALL_BODY: &[u8] =
    br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","message":"hawser-loadtest small"}"#;

/// The size of each `/bulk` frame.
const CHUNK: usize = 64 * 1024;

/// Largest `/bulk` answer (64 GiB): a bound, not a target.
const MAX_BULK: u64 = 64 << 30;

/// PEM files of the backend's CA and its serving certificate.
pub struct BackendPki {
    /// The CA certificate (PEM), to trust.
    pub ca_pem: String,
    /// The serving certificate (PEM).
    pub cert_pem: String,
    /// The serving key (PKCS#8 PEM).
    pub key_pem: String,
}

/// A fresh CA and a serving certificate for 127.0.0.1 and localhost.
pub fn generate_pki() -> Result<BackendPki> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hawser-loadtest backend CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "hawser-loadtest backend");
    let cert = params.signed_by(&key, &issuer)?;
    Ok(BackendPki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Serves on 127.0.0.1 (a free port), prints `listening ADDR` on stdout, and
/// runs until stdin closes.
pub async fn serve(cert: &Path, key: &Path) -> Result<()> {
    let tls = crate::tls::server_config(cert, key)?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let accept = async {
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let (acceptor, chunk) = (acceptor.clone(), chunk.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = service_fn(move |req| {
                    let chunk = chunk.clone();
                    async move { Ok::<_, Infallible>(answer(&req, chunk)) }
                });
                let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http2()
                    .max_concurrent_streams(10_000)
                    .initial_stream_window_size(4 << 20)
                    .initial_connection_window_size(16 << 20);
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    // The lifeline: the driver holds our stdin; when it goes, so do we.
    let lifeline = async {
        let mut sink = [0u8; 64];
        let mut stdin = tokio::io::stdin();
        while stdin.read(&mut sink).await.unwrap_or(0) > 0 {}
    };
    tokio::select! {
        r = accept => r.context("accepting"),
        _ = lifeline => Ok(()),
    }
}

fn answer(req: &Request<Incoming>, chunk: Bytes) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/small") => json(SMALL_BODY),
        (&Method::GET, "/bulk") => match bulk_size(req.uri().query()) {
            Some(n) => Response::new(Body::Bulk { chunk, remaining: n }),
            None => status(StatusCode::BAD_REQUEST, "bulk needs ?bytes=N"),
        },
        (&Method::GET, "/watch") => crate::watches::watch_body(req.uri().query()),
        (&Method::GET, "/stats") => crate::watches::stats_body(),
        (&Method::GET, path) if path.starts_with("/api/v1/") => crate::k6mix::canned::answer(path, req.uri().query()),
        (&Method::POST, "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews") => json(
            br#"{"kind":"SelfSubjectAccessReview","apiVersion":"authorization.k8s.io/v1","status":{"allowed":true}}"#
                .as_slice(),
        ),
        _ => status(StatusCode::NOT_FOUND, "no such route"),
    }
}

fn bulk_size(query: Option<&str>) -> Option<u64> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("bytes="))?
        .parse()
        .ok()
        .filter(|n| *n <= MAX_BULK)
}

/// A 200 with a JSON body.
pub(crate) fn json(body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Body::Once(Some(body.into())));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// An error answer with a plain-text message.
pub(crate) fn status(code: StatusCode, message: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::Once(Some(Bytes::from_static(message.as_bytes()))));
    *resp.status_mut() = code;
    resp
}

/// A response body: fixed bytes, or N bytes in frames of one shared chunk.
pub enum Body {
    /// One frame.
    Once(Option<Bytes>),
    /// `remaining` bytes in slices of `chunk`.
    Bulk {
        /// The shared buffer.
        chunk: Bytes,
        /// Bytes still to send.
        remaining: u64,
    },
    /// A watch: one small event per tick, never ending.
    Watch(Box<tokio::time::Interval>),
    /// A watch that ends when its timer fires (kube-apiserver's `timeoutSeconds`).
    WatchUntil(Box<tokio::time::Interval>, Pin<Box<tokio::time::Sleep>>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(match this {
            Body::Watch(ticker) => {
                std::task::ready!(ticker.poll_tick(cx));
                Some(Ok(Frame::data(crate::watches::event())))
            }
            Body::WatchUntil(ticker, end) => {
                if end.as_mut().poll(cx).is_ready() {
                    None
                } else {
                    std::task::ready!(ticker.poll_tick(cx));
                    Some(Ok(Frame::data(crate::watches::event())))
                }
            }
            Body::Once(data) => data.take().map(|d| Ok(Frame::data(d))),
            Body::Bulk { chunk, remaining } => {
                if *remaining == 0 {
                    None
                } else {
                    let n = (*remaining).min(chunk.len() as u64) as usize;
                    *remaining -= n as u64;
                    crate::watches::BULK_SENT.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    Some(Ok(Frame::data(chunk.slice(..n))))
                }
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Once(data) => data.is_none(),
            Body::Bulk { remaining, .. } => *remaining == 0,
            Body::Watch(_) | Body::WatchUntil(..) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Once(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Body::Bulk { remaining, .. } => SizeHint::with_exact(*remaining),
            Body::Watch(_) | Body::WatchUntil(..) => SizeHint::default(),
        }
    }
}
