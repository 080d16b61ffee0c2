//! The callers' side: HTTP/2 over TLS on a few long-lived connections, as
//! kubectl does with many requests. Windows as Go's HTTP/2 transport sets
//! them (4 MiB per stream, 1 GiB per connection).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// One system under test as the callers see it: where to send, with what.
pub struct Target {
    /// `direct` or `hawser`.
    pub name: &'static str,
    /// The connections; one the server closed (its idle timeout, between phases) is reopened on
    /// its next use, as kubectl's transport does.
    senders: Vec<tokio::sync::Mutex<SendRequest<Empty<Bytes>>>>,
    connector: TlsConnector,
    /// Connection `i` goes to `addrs[i % len]`.
    addrs: Vec<SocketAddr>,
    next: AtomicUsize,
    /// URL prefixes, one per cluster (`https://ADDR` for direct).
    bases: Vec<String>,
    authorization: Option<HeaderValue>,
    /// How long a small request may take before it counts as failed.
    pub timeout: Duration,
}

/// What one request returned.
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// Body bytes read.
    pub bytes: u64,
}

impl Target {
    /// Opens `connections` HTTP/2 connections to `addr`, trusting `ca`.
    pub async fn connect(
        name: &'static str,
        addr: SocketAddr,
        ca: &Path,
        connections: usize,
        bases: Vec<String>,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Arc<Self>> {
        Self::connect_spread(name, &[addr], ca, connections, bases, token, timeout).await
    }

    /// Like [`Target::connect`], with the connections spread over `addrs` in turn.
    pub async fn connect_spread(
        name: &'static str,
        addrs: &[SocketAddr],
        ca: &Path,
        connections: usize,
        bases: Vec<String>,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Arc<Self>> {
        anyhow::ensure!(!addrs.is_empty(), "a target needs an address");
        let connector = TlsConnector::from(Arc::new(crate::tls::client_config(ca)?));
        let mut senders = Vec::with_capacity(connections);
        for i in 0..connections.max(1) {
            let addr = addrs[i % addrs.len()];
            senders.push(tokio::sync::Mutex::new(
                open(&connector, addr)
                    .await
                    .with_context(|| format!("connecting to {addr}"))?,
            ));
        }
        let authorization = match token {
            Some(t) => Some(HeaderValue::try_from(format!("Bearer {t}")).context("token is not a header value")?),
            None => None,
        };
        Ok(Arc::new(Self {
            name,
            senders,
            connector,
            addrs: addrs.to_vec(),
            next: AtomicUsize::new(0),
            bases,
            authorization,
            timeout,
        }))
    }

    /// The URI of `path_and_query` on the `i`-th cluster (round robin).
    pub fn uri(&self, i: usize, path_and_query: &str) -> Result<Uri> {
        let base = &self.bases[i % self.bases.len()];
        format!("{base}{path_and_query}")
            .parse()
            .with_context(|| format!("bad URI {base}{path_and_query}"))
    }

    /// How many URL prefixes (clusters) requests are spread over.
    pub fn clusters(&self) -> usize {
        self.bases.len()
    }

    /// GETs `uri` on the next connection and reads the whole body.
    pub async fn get(&self, uri: Uri) -> Result<Answer> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        let slot = &self.senders[i];
        let mut sender = {
            let mut held = slot.lock().await;
            if held.is_closed() {
                let addr = self.addrs[i % self.addrs.len()];
                *held = open(&self.connector, addr)
                    .await
                    .with_context(|| format!("reconnecting to {addr}"))?;
            }
            held.clone()
        };
        let mut req = Request::get(uri).body(Empty::<Bytes>::new())?;
        if let Some(auth) = &self.authorization {
            req.headers_mut().insert(http::header::AUTHORIZATION, auth.clone());
        }
        sender.ready().await.map_err(|e| anyhow!("connection: {e}"))?;
        let resp = sender.send_request(req).await.map_err(|e| anyhow!("request: {e}"))?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| anyhow!("body after {bytes} bytes: {e}"))?;
            if let Some(data) = frame.data_ref() {
                bytes += data.len() as u64;
                crate::PROGRESS.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        Ok(Answer { status, bytes })
    }

    /// GETs `uri` and insists on 200 and exactly `expected` body bytes within the request timeout.
    pub async fn get_expecting(&self, uri: Uri, expected: u64) -> Result<u64> {
        self.get_expecting_within(uri, expected, self.timeout).await
    }

    /// Like [`Target::get_expecting`], with a timeout of its own.
    pub async fn get_expecting_within(&self, uri: Uri, expected: u64, within: Duration) -> Result<u64> {
        let answer = tokio::time::timeout(within, self.get(uri))
            .await
            .map_err(|_| anyhow!("no whole answer within {within:?}"))??;
        if answer.status != StatusCode::OK {
            bail!("status {}", answer.status);
        }
        if answer.bytes != expected {
            bail!("body of {} bytes, expected {expected}", answer.bytes);
        }
        Ok(answer.bytes)
    }
}

pub async fn open(connector: &TlsConnector, addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .context("TLS handshake")?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        bail!("the server did not agree to HTTP/2");
    }
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(1 << 30)
        .handshake(TokioIo::new(tls))
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}
