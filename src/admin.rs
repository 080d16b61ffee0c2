//! The admin listener: plain HTTP on a port of its own, for Prometheus and probes. `/metrics`
//! (the Prometheus text format), `/healthz` (the process serves) and `/readyz` (as the relay's own
//! `/readyz`). Nothing here takes a credential or reaches a cluster, and the callers' port never
//! serves these metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::idle::Activity;

/// How long one scrape connection may stay idle before it is closed.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the process is ready: `None`, or why not.
pub type Readiness = Arc<dyn Fn() -> Option<&'static str> + Send + Sync>;

/// A bound admin listener.
pub struct Admin {
    listener: TcpListener,
}

impl Admin {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `/metrics` from `registry` and `/readyz` from `ready` until `stop`; connections
    /// still open then are dropped (a scrape is retried).
    pub async fn serve(self, registry: Option<prometheus::Registry>, ready: Readiness, stop: CancellationToken) {
        info!(admin = %self.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin listener (metrics, probes)");
        let service = Arc::new((registry, ready));
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (stream, peer) = tokio::select! {
                () = stop.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        debug!(error = %e, "admin accept failed");
                        continue;
                    }
                },
                // Reap finished connections as they end, so the set stays small.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let service = service.clone();
            connections.spawn(async move {
                // hyper's header timer starts only at a request's first byte: a connection that
                // sends nothing is closed by this watch instead.
                let activity = Activity::new();
                let requests = activity.clone();
                let serve = hyper::service::service_fn(move |req| {
                    let _busy = requests.begin();
                    let (registry, ready) = &*service;
                    std::future::ready(Ok::<_, Infallible>(answer(&req, registry.as_ref(), ready)))
                });
                let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                http.http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT);
                tokio::select! {
                    served = http.serve_connection(TokioIo::new(stream), serve) => {
                        if let Err(e) = served {
                            debug!(error = %e, %peer, "admin connection ended");
                        }
                    }
                    () = activity.expired(HEADER_READ_TIMEOUT, HEADER_READ_TIMEOUT) => {
                        debug!(%peer, "admin connection closed: no request");
                    }
                }
            });
        }
    }
}

/// The answer to one admin request.
fn answer(
    req: &Request<Incoming>,
    registry: Option<&prometheus::Registry>,
    ready: &Readiness,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String, content_type: &'static str| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
        resp
    };
    let plain = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n".into(), plain);
    }
    match req.uri().path() {
        "/metrics" => match registry {
            Some(registry) => {
                let mut out = String::new();
                match prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut out) {
                    Ok(()) => text(StatusCode::OK, out, "text/plain; version=0.0.4; charset=utf-8"),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"), plain),
                }
            }
            None => text(StatusCode::NOT_FOUND, "no metrics are kept\n".into(), plain),
        },
        "/healthz" => text(StatusCode::OK, "ok\n".into(), plain),
        "/readyz" => match ready() {
            None => text(StatusCode::OK, "ok\n".into(), plain),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"), plain),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "the admin listener serves /metrics, /healthz and /readyz\n".into(),
            plain,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves an admin listener on a free port; the address, and the token that stops it.
    async fn serving() -> (SocketAddr, CancellationToken) {
        let admin = Admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = admin.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(admin.serve(None, Arc::new(|| None), stop.clone()));
        (addr, stop)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_is_closed() {
        let (addr, stop) = serving().await;
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        // Paused time runs ahead while nothing else can happen: no real wait.
        let read = tokio::time::timeout(HEADER_READ_TIMEOUT * 6, silent.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "still open: {read:?}");
        stop.cancel();
    }

    #[tokio::test]
    async fn only_get_and_head_are_answered() {
        let (addr, stop) = serving().await;
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"DELETE /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 405") && answer.ends_with("GET or HEAD only\n"),
            "{answer}"
        );
        stop.cancel();
    }
}
