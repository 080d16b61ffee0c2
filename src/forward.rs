//! HTTP exchanges passed through unchanged, protocol upgrades included.
//!
//! Bodies travel as `Bytes` frames, never parsed or re-buffered. An upgrade
//! (exec, attach, port-forward over WebSocket or SPDY) is spliced only after
//! the upstream answered `101 Switching Protocols`; any other answer ends the
//! exchange and nothing is spliced, so no later byte can reach the upstream
//! on that exchange (CVE-2018-1002105).

use std::future::Future;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::{Instrument, debug};

use crate::audit::Audit;
use crate::body::{Body, boxed, empty};
use crate::headers::{strip_hop_by_hop, upgrade_protocol};
use crate::status::HttpError;

/// Refuses CONNECT: the Kubernetes API never uses it, and a tunnel to an
/// arbitrary authority is exactly what a relay must not offer.
pub fn refuse_connect(method: &http::Method) -> Result<(), HttpError> {
    if method == http::Method::CONNECT {
        return Err(HttpError::method_not_allowed("CONNECT is not forwarded"));
    }
    Ok(())
}

/// Sends `req` with `send` and returns the answer for the caller. If the
/// caller asked for an upgrade and the upstream switched protocols, the two
/// upgraded connections are spliced in a task of their own. With `audit`,
/// bytes each way and the status are recorded, and the record stays open
/// until the response body or the upgraded stream is done.
pub async fn exchange<F, Fut, E>(
    mut req: Request<Body>,
    audit: Option<&Audit>,
    tasks: &tokio_util::task::TaskTracker,
    send: F,
) -> Result<Response<Body>, E>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Result<Response<Incoming>, E>>,
{
    let caller_side = upgrade_protocol(req.headers())
        .is_some()
        .then(|| hyper::upgrade::on(&mut req));
    if let Some(audit) = audit {
        req = req.map(|body| audit.count(body, true));
    }
    let mut resp = send(req).await?;
    if let Some(audit) = audit {
        audit.status(resp.status().as_u16());
    }
    match caller_side {
        Some(caller_side) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let upstream_side = hyper::upgrade::on(&mut resp);
            tasks.spawn(splice(caller_side, upstream_side, audit.cloned()).in_current_span());
            Ok(resp.map(|_| empty()))
        }
        _ => {
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                strip_hop_by_hop(resp.headers_mut());
            }
            Ok(resp.map(|body| match audit {
                Some(audit) => audit.count(boxed(body), false),
                None => boxed(body),
            }))
        }
    }
}

/// An HTTPS client; `allow_h2` lets ALPN pick HTTP/2 (never for upgrades).
pub type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Body,
>;

/// Builds an [`HttpsClient`] that trusts what `tls` trusts.
pub fn https_client(tls: rustls::ClientConfig, allow_h2: bool) -> HttpsClient {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    // Small requests and responses must not wait for Nagle's algorithm.
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let connector = if allow_h2 {
        builder.enable_http1().enable_http2().wrap_connector(tcp)
    } else {
        builder.enable_http1().wrap_connector(tcp)
    };
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build(connector)
}

/// Upgrades, watches and followed logs stay open indefinitely: they get
/// HTTP/1.1 connections of their own instead of an HTTP/2 stream slot.
/// Judged on the decoded path and query, as the apiserver reads them.
pub fn is_long_running<B>(req: &Request<B>) -> bool {
    long_running(req.method(), req.uri(), req.headers())
}

/// [`is_long_running`] of a request's parts.
pub fn long_running(method: &http::Method, uri: &http::Uri, headers: &http::HeaderMap) -> bool {
    use crate::request_info::{decode_path, query_param, request_info};
    // As apimachinery converts a query value to a bool: anything but `0` or `false` is true.
    let set = |key| query_param(uri, key).is_some_and(|v| !matches!(v.to_ascii_lowercase().as_str(), "0" | "false"));
    upgrade_protocol(headers).is_some()
        || request_info(method, uri).is_ok_and(|info| info.verb == "watch")
        || decode_path(uri.path()).is_ok_and(|path| path.split('/').any(|segment| segment == "watch"))
        || set("follow")
}

/// Copies bytes both ways until both directions are done; each direction's
/// EOF is passed on as a half-close without ending the other direction
/// (exec stdin EOF must not cut stdout).
async fn splice(caller: OnUpgrade, upstream: OnUpgrade, audit: Option<Audit>) {
    let (caller, upstream) = match tokio::try_join!(caller, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    // Bytes are counted as they are read, so an exchange that ends in an error still has them.
    let mut caller = Tally::new(TokioIo::new(caller), audit.clone(), true);
    let mut upstream = Tally::new(TokioIo::new(upstream), audit, false);
    match tokio::io::copy_bidirectional(&mut caller, &mut upstream).await {
        Ok((up, down)) => debug!(bytes_up = up, bytes_down = down, "upgraded stream closed"),
        Err(e) => debug!(
            error = %e,
            bytes_up = caller.read,
            bytes_down = upstream.read,
            "upgraded stream ended with an error"
        ),
    }
}

/// An upgraded connection whose reads are counted into an audit record
/// (`inbound`: bytes from the caller).
struct Tally<T> {
    inner: T,
    audit: Option<Audit>,
    inbound: bool,
    read: u64,
}

impl<T> Tally<T> {
    fn new(inner: T, audit: Option<Audit>, inbound: bool) -> Self {
        Self {
            inner,
            audit,
            inbound,
            read: 0,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Tally<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.read += n;
            match (&self.audit, self.inbound) {
                (Some(audit), true) => audit.add_in(n),
                (Some(audit), false) => audit.add_out(n),
                (None, _) => {}
            }
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tally<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
