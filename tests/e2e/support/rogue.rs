//! An agent of our own, in the test process: it holds one cluster's agent token, registers like
//! an agent, answers every relay-opened stream `200 {}` and keeps what each stream brought — what
//! a rogue agent would harvest.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hawser::config::TunnelConfig;
use hawser::proto::{self, Accepts, Hello, Welcome};
use hawser::transport::{SendHalf, write_chunk};
use hawser::wire::{self, RequestHead, ResponseHead};

use super::hawser::Hawser;

/// What one relay-opened stream brought a rogue agent.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The request head.
    pub header: RequestHead,
    /// The request's headers, one `name: value` line each.
    pub request: String,
}

/// An agent of our own, registered with a cluster's agent token, answering `200 {}` to every
/// stream and keeping what each brought.
pub struct Rogue {
    runtime: tokio::runtime::Runtime,
    connection: quinn::Connection,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Rogue {
    /// Registers as `instance` for `cluster` with `token`, saying it accepts `accepts`.
    pub fn register(hawser: &Hawser, cluster: &str, token: &str, instance: &str, accepts: Accepts) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let hello = Hello {
            link: 0,
            held: Vec::new(),
            probe: false,
            cluster: cluster.into(),
            token: token.into(),
            instance: instance.into(),
            accepts,
        };
        let connection = runtime.block_on(dial_and_hello(hawser, &hello))?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        runtime.spawn(serve(connection.clone(), seen.clone()));
        Ok(Self {
            runtime,
            connection,
            seen,
        })
    }

    /// What the streams so far brought.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        let _inside = self.runtime.enter();
        self.connection.close(0u32.into(), b"rogue done");
        let _ = self
            .runtime
            .block_on(tokio::time::timeout(Duration::from_secs(3), self.connection.closed()));
    }
}

/// The relay's agent address (the same port as its front door, over UDP).
pub fn relay_addr(hawser: &Hawser) -> Result<std::net::SocketAddr> {
    let port = hawser.relay_url.rsplit(':').next().context("relay URL port")?;
    Ok(format!("127.0.0.1:{port}").parse()?)
}

async fn dial_and_hello(hawser: &Hawser, hello: &Hello) -> Result<quinn::Connection> {
    let addr = relay_addr(hawser)?;
    let trust = hawser::tls::RelayTrust::load(Some(&hawser.relay_ca), &[])?;
    let endpoint = hawser::tunnel::agent_endpoint(&trust, &TunnelConfig::default(), addr)?;
    let connection = hawser::tunnel::dial(&endpoint, addr, "localhost", Duration::from_secs(10)).await?;
    let mut control = hawser::tunnel::join(connection.open_bi().await?);
    proto::write_frame(&mut control, hello).await?;
    match tokio::time::timeout(Duration::from_secs(10), proto::read_frame::<_, Welcome>(&mut control)).await {
        Ok(Ok(_)) => {
            // The control stream stays open for the session's life.
            std::mem::forget(control);
            Ok(connection)
        }
        _ => bail!("not welcomed: {:?}", connection.close_reason()),
    }
}

async fn serve(connection: quinn::Connection, seen: Arc<Mutex<Vec<Seen>>>) {
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let seen = seen.clone();
        tokio::spawn(async move {
            let Ok((payload, _)) = wire::read_head(&mut recv, wire::MAX_HEAD).await else {
                return;
            };
            let Ok(header) = RequestHead::decode(&payload) else {
                return;
            };
            let request = header
                .headers
                .iter()
                .map(|(name, value)| format!("{name}: {}\r\n", String::from_utf8_lossy(value.as_bytes())))
                .collect();
            seen.lock().unwrap().push(Seen { header, request });
            let mut headers = http::HeaderMap::new();
            headers.insert("content-type", "application/json".parse().unwrap());
            headers.insert("content-length", "2".parse().unwrap());
            let answer = ResponseHead {
                status: http::StatusCode::OK,
                headers,
                body: true,
            };
            let _ = write_chunk(&mut send, answer.encode(wire::MAX_HEAD).unwrap()).await;
            let _ = write_chunk(&mut send, bytes::Bytes::from_static(b"{}")).await;
            send.end();
            let _ = send.stopped().await;
        });
    }
}
