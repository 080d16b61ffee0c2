//! The bare-quinn ceiling: what one QUIC connection on loopback carries with
//! Hawser's tunnel settings and nothing of Hawser around it.
//!
//! Both ends live in the driver: a quinn server (the relay's role: it opens a
//! bidirectional stream per download and reads it) and a quinn client (the
//! agent's role: it accepts the stream, reads an 8-byte length and writes that
//! many bytes in 64 KiB chunks, as the backend frames `/bulk`). Same quinn as
//! the product (this workspace's lock file pins the same 0.11 release), rustls
//! with ring, a self-signed ECDSA P-256 certificate as the relay generates, and
//! the transport settings of `hawser::tunnel` taken from
//! `hawser::config::TunnelConfig::default()`: stream window, connection
//! window (unlimited), stream limits, keep-alive, idle timeout and the UDP
//! socket buffer size asked for each way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, VarInt};
use serde::Serialize;
use tokio::task::JoinSet;

/// One ceiling measurement.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingResult {
    /// Concurrent streams on the one connection.
    pub streams: usize,
    /// Bytes each stream carries.
    pub bytes_per_stream: u64,
    /// Wall time from the first request to the last byte.
    pub elapsed_s: f64,
    /// Aggregate throughput, 10^6 bytes per second.
    pub mb_per_sec: f64,
}

/// The settings the ceiling used (Hawser's `[tunnel]` defaults).
#[derive(Debug, Clone, Serialize)]
pub struct CeilingSettings {
    /// quinn's stream receive window, bytes.
    pub stream_receive_window: u32,
    /// Connection receive (and send) window; `None` = unlimited.
    pub connection_receive_window: Option<u64>,
    /// Streams the "relay" may open at once.
    pub max_streams_per_tunnel: u32,
    /// UDP socket buffer asked for each way, bytes (0 = OS default).
    pub udp_buffer_bytes: usize,
    /// What the kernel granted for the receive buffer (half of what it reports).
    pub udp_recv_buffer_granted: usize,
    /// Key type of the server certificate.
    pub key: &'static str,
}

/// Chunk the writer hands quinn, as the backend's `/bulk` frames.
const CHUNK: usize = 64 * 1024;

/// A UDP socket on 127.0.0.1 with the tunnel's buffer size asked for; returns it and the grant.
fn udp_socket(buffer: usize) -> Result<(std::net::UdpSocket, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if buffer > 0 {
        let _ = socket.set_recv_buffer_size(buffer);
        let _ = socket.set_send_buffer_size(buffer);
    }
    let granted = socket.recv_buffer_size().unwrap_or(0) / 2;
    socket.bind(&addr.into())?;
    Ok((socket.into(), granted))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A connected pair: the "relay" side's connection and the "agent" task serving streams.
struct Pair {
    relay: quinn::Connection,
    _endpoints: (Endpoint, Endpoint),
    agent: tokio::task::JoinHandle<()>,
    settings: CeilingSettings,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.relay.close(VarInt::from_u32(0), b"done");
        self.agent.abort();
    }
}

async fn connect() -> Result<Pair> {
    let config = hawser::config::TunnelConfig::default();
    let key = rcgen::KeyPair::generate()?; // ECDSA P-256, as the relay's self-signed certificate
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?.self_signed(&key)?;
    let alpn = b"hawser/1".to_vec();

    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
    server_tls.alpn_protocols = vec![alpn.clone()];
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(server_tls).map_err(|e| anyhow!("quic tls: {e}"))?,
    ));
    server.transport_config(hawser::tunnel::transport(&config, 2));
    let (socket, granted) = udp_socket(config.udp_buffer_bytes)?;
    let relay_ep = Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    let relay_addr = relay_ep.local_addr()?;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone())?;
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![alpn];
    let mut client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(client_tls).map_err(|e| anyhow!("quic tls: {e}"))?,
    ));
    client.transport_config(hawser::tunnel::transport(&config, config.max_streams_per_tunnel));
    let (socket, _) = udp_socket(config.udp_buffer_bytes)?;
    let mut agent_ep = Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    agent_ep.set_default_client_config(client);

    // The agent dials, as in Hawser; the relay accepts.
    let dialing = agent_ep.connect(relay_addr, "127.0.0.1")?;
    let accept = async {
        let incoming = relay_ep.accept().await.context("relay endpoint closed")?;
        anyhow::Ok(incoming.await?)
    };
    let (agent_conn, relay_conn) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::try_join!(async { dialing.await.map_err(anyhow::Error::from) }, accept)
    })
    .await
    .context("bare quinn handshake within 10 s")??;

    let agent = tokio::spawn(async move {
        let payload = Bytes::from(vec![0x5a; CHUNK]);
        while let Ok((mut send, mut recv)) = agent_conn.accept_bi().await {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut len = [0u8; 8];
                if recv.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut left = u64::from_be_bytes(len);
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    if send.write_chunk(payload.slice(..n)).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                let _ = send.finish();
                let _ = send.stopped().await;
            });
        }
    });
    Ok(Pair {
        relay: relay_conn,
        _endpoints: (relay_ep, agent_ep),
        agent,
        settings: CeilingSettings {
            stream_receive_window: config.stream_receive_window,
            connection_receive_window: config.connection_receive_window,
            max_streams_per_tunnel: config.max_streams_per_tunnel,
            udp_buffer_bytes: config.udp_buffer_bytes,
            udp_recv_buffer_granted: granted,
            key: "ECDSA P-256 (rcgen default, as the relay's self-signed certificate)",
        },
    })
}

/// Opens a stream, asks for `bytes` and reads them all; returns the count.
async fn download(conn: &quinn::Connection, bytes: u64) -> Result<u64> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&bytes.to_be_bytes()).await?;
    send.finish()?;
    let mut got = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
        got += chunk.bytes.len() as u64;
        crate::PROGRESS
            .bytes
            .fetch_add(chunk.bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
    anyhow::ensure!(got == bytes, "stream carried {got} bytes, expected {bytes}");
    Ok(got)
}

/// Measures one stream and then `streams` concurrent ones, `bytes` each, on one fresh connection,
/// after one unrecorded warm-up download.
pub async fn measure(stream_counts: &[usize], bytes: u64) -> Result<(CeilingSettings, Vec<CeilingResult>)> {
    let pair = connect().await?;
    let within = Duration::from_secs(30) + Duration::from_secs_f64(bytes as f64 / 10e6);
    let warm = bytes.min(16 << 20);
    tokio::time::timeout(within, download(&pair.relay, warm))
        .await
        .context("bare quinn warm-up download timed out")??;
    let mut results = Vec::new();
    for &streams in stream_counts {
        crate::PROGRESS.begin(
            &format!("bulk bare-quinn x{streams}"),
            crate::progress::Kind::Downloads,
            Duration::ZERO,
        );
        let started = Instant::now();
        let mut set = JoinSet::new();
        for _ in 0..streams {
            let conn = pair.relay.clone();
            let within = within + Duration::from_secs_f64((bytes * streams as u64) as f64 / 10e6);
            set.spawn(async move {
                tokio::time::timeout(within, download(&conn, bytes))
                    .await
                    .map_err(|_| anyhow!("bare quinn download timed out after {within:?}"))?
            });
        }
        let mut total = 0;
        while let Some(joined) = set.join_next().await {
            total += joined??;
            crate::PROGRESS.ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let elapsed = started.elapsed().as_secs_f64();
        crate::PROGRESS.end();
        results.push(CeilingResult {
            streams,
            bytes_per_stream: bytes,
            elapsed_s: elapsed,
            mb_per_sec: total as f64 / elapsed / 1e6,
        });
    }
    Ok((pair.settings.clone(), results))
}
