//! The QUIC tunnel between agent and relay (quinn, rustls, ALPN `hawser/1`).
//!
//! The agent dials; the relay opens one bidirectional stream per HTTP
//! exchange. QUIC gives every stream its own flow control, so a slow reader
//! stalls only its own stream. Windows and stream limits come from
//! [`TunnelConfig`]; `docs/configuration.md` states the numbers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, TransportConfig, VarInt};

use crate::cid;
use crate::config::TunnelConfig;
use crate::proto::ALPN;

/// One bidirectional QUIC stream as a single byte stream.
pub type Stream = tokio::io::Join<quinn::RecvStream, quinn::SendStream>;

/// Joins the two halves of a bidirectional stream.
pub fn join((send, recv): (quinn::SendStream, quinn::RecvStream)) -> Stream {
    tokio::io::join(recv, send)
}

/// Why an endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// TLS material or configuration.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// rustls could not be used for QUIC.
    #[error("tls for quic: {0}")]
    QuicTls(String),
    /// The UDP socket could not be opened or bound at this address.
    #[error("udp {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause (not a `source`: the message holds it already).
        error: std::io::Error,
    },
    /// The QUIC endpoint could not start on its socket.
    #[error("quic endpoint: {0}")]
    Io(#[from] std::io::Error),
}

/// The connection-level receive window a relay gives an agent connection until its hello is
/// accepted: room for one hello frame and QUIC's bookkeeping, so an unproven peer can make the
/// relay buffer a few KiB at most. The relay then opens it to [`connection_window`].
pub const UNPROVEN_RECEIVE_WINDOW: u32 = 8 * 1024;

/// The configured connection-level receive window (unset: unlimited).
pub fn connection_window(config: &TunnelConfig) -> VarInt {
    config
        .connection_receive_window
        .and_then(|w| VarInt::from_u64(w).ok())
        .unwrap_or(VarInt::MAX)
}

/// Transport settings. `accept_bidi` is how many streams the peer may open
/// towards us at once: large on the agent (the relay opens a stream per
/// request), one on the relay (the agent opens only its control stream).
/// Datagrams are off: the tunnel does not use them, and their receive buffer
/// would be memory an unproven peer could fill.
pub fn transport(config: &TunnelConfig, accept_bidi: u32) -> Arc<TransportConfig> {
    Arc::new(transport_config(config, accept_bidi))
}

fn transport_config(config: &TunnelConfig, accept_bidi: u32) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(accept_bidi))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        .stream_receive_window(VarInt::from_u32(config.stream_receive_window))
        .receive_window(connection_window(config))
        .send_window(config.connection_receive_window.unwrap_or(u64::MAX))
        .keep_alive_interval(Some(Duration::from_secs(config.keep_alive_secs)))
        .max_idle_timeout(Some(
            VarInt::from_u64(quic_idle_timeout(config).as_millis() as u64)
                .unwrap_or(VarInt::MAX)
                .into(),
        ));
    t
}

/// QUIC's idle timeout for a configured `idle_timeout_secs`.
///
/// QUIC restarts its idle timer on the first ack-eliciting packet it sends after its last receipt,
/// and towards a dead peer that is the next keep-alive, up to `keep_alive_secs` later. So a peer
/// that died is noticed between this timeout and this timeout plus `keep_alive_secs` after its
/// last packet: setting it to `idle_timeout_secs - keep_alive_secs` makes `idle_timeout_secs` the
/// bound. Validation keeps it above the keep-alive interval, so a quiet live tunnel never expires.
pub fn quic_idle_timeout(config: &TunnelConfig) -> Duration {
    Duration::from_secs(config.idle_timeout_secs.saturating_sub(config.keep_alive_secs))
}

/// The relay's QUIC listener; every connection ID it issues carries `server_id` (see [`cid`]),
/// and its stateless resets are signed with `reset_key` (see [`reset`]).
pub fn relay_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    config: &TunnelConfig,
    server_id: cid::ServerId,
    reset_key: Arc<dyn quinn::crypto::HmacKey>,
) -> Result<Endpoint, TunnelError> {
    let quic_tls = QuicServerConfig::try_from(tls).map_err(|e| TunnelError::QuicTls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_tls));
    let mut transport = transport_config(config, 1);
    transport.receive_window(VarInt::from_u32(UNPROVEN_RECEIVE_WINDOW));
    server.transport_config(Arc::new(transport));
    let socket = udp_socket(addr, config.udp_buffer_bytes)?;
    let generator = cid::ServerIdGenerator::new(server_id, cid::ConfigRotation::default());
    let mut endpoint = quinn::EndpointConfig::new(reset_key);
    endpoint.cid_generator(move || Box::new(generator));
    Ok(Endpoint::new(
        endpoint,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// A UDP socket bound to `addr` whose kernel buffers are asked to hold `buffer` bytes each way.
///
/// The default (about 208 KiB on Linux) overflows under a bulk transfer on loopback and the
/// kernel drops datagrams, which QUIC then treats as congestion. The kernel caps the request at
/// `net.core.rmem_max`/`wmem_max`; what was granted is logged.
fn udp_socket(addr: SocketAddr, buffer: usize) -> Result<std::net::UdpSocket, TunnelError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_error = |error| TunnelError::Bind { addr, error };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(bind_error)?;
    if buffer > 0 {
        // Best effort: a smaller grant still works, only with more drops under load.
        let _ = socket.set_recv_buffer_size(buffer);
        let _ = socket.set_send_buffer_size(buffer);
        // Linux reports twice what it grants (bookkeeping overhead included).
        let granted = socket.recv_buffer_size().unwrap_or(0) / 2;
        if granted < buffer {
            tracing::info!(
                asked = buffer,
                granted,
                "the kernel capped the tunnel's UDP receive buffer; raise net.core.rmem_max to allow more"
            );
        } else {
            tracing::debug!(granted, "tunnel UDP buffers set");
        }
    }
    socket.bind(&addr.into()).map_err(bind_error)?;
    Ok(socket.into())
}

/// The agent's QUIC client endpoint, accepting only a relay that `trust`
/// recognises (its CA, its pinned key, or both).
pub fn agent_endpoint(
    trust: &crate::tls::RelayTrust,
    config: &TunnelConfig,
    relay: SocketAddr,
) -> Result<Endpoint, TunnelError> {
    agent_endpoint_with(Arc::new(trust.client_config(&[ALPN])?), config, relay)
}

/// The agent's QUIC client endpoint with the given TLS configuration (ALPN `hawser/1`), which must
/// recognise the relay as [`agent_endpoint`]'s does.
pub fn agent_endpoint_with(
    tls: Arc<rustls::ClientConfig>,
    config: &TunnelConfig,
    relay: SocketAddr,
) -> Result<Endpoint, TunnelError> {
    let quic_tls = QuicClientConfig::try_from(tls).map_err(|e| TunnelError::QuicTls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic_tls));
    client.transport_config(transport(config, config.max_streams_per_tunnel));
    let bind: SocketAddr = if relay.is_ipv6() {
        ([0u16; 8], 0).into()
    } else {
        ([0, 0, 0, 0], 0).into()
    };
    let socket = udp_socket(bind, config.udp_buffer_bytes)?;
    let mut endpoint = Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// A relay's endpoint for its fleet peers: it both accepts their connections (`server`, which
/// must ask for their certificates) and dials them (`client`, which presents its own). Peers
/// open as many streams as they forward requests.
pub fn peer_endpoint(
    addr: SocketAddr,
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
    config: &TunnelConfig,
) -> Result<Endpoint, TunnelError> {
    let server = QuicServerConfig::try_from(server).map_err(|e| TunnelError::QuicTls(e.to_string()))?;
    let client = QuicClientConfig::try_from(client).map_err(|e| TunnelError::QuicTls(e.to_string()))?;
    let transport = transport(config, config.max_streams_per_tunnel);
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport.clone());
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(transport);
    let socket = udp_socket(addr, config.udp_buffer_bytes)?;
    let mut endpoint = Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// How long the agent waits for a QUIC handshake with the relay. Without it a lost
/// handshake would wait out the tunnel's idle timeout before the agent tried again.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a dial did not give a connection.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// quinn would not start the attempt (bad name, endpoint closed).
    #[error(transparent)]
    Start(#[from] quinn::ConnectError),
    /// The relay answered and the handshake failed (refused, TLS, closed).
    #[error(transparent)]
    Handshake(#[from] quinn::ConnectionError),
    /// No handshake within the deadline: the relay's answers, if any, never completed one.
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
}

/// Dials `addr` naming `server_name`, giving up after `deadline`.
pub async fn dial(
    endpoint: &Endpoint,
    addr: SocketAddr,
    server_name: &str,
    deadline: Duration,
) -> Result<quinn::Connection, DialError> {
    let connecting = endpoint.connect(addr, server_name)?;
    match tokio::time::timeout(deadline, connecting).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(DialError::Timeout(deadline)),
    }
}

pub mod reset;
#[cfg(test)]
mod tests;
