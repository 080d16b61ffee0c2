//! How the agent reaches the relay, and its hello: over QUIC, or over HTTP/2 on TLS on TCP (the
//! relay's caller port, ALPN `hawser/1`), through an HTTP CONNECT proxy where one applies.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::SessionError;
use crate::config::{AgentConfig, Secret};
use crate::proto::{self, Answer, Hello, Welcome};
use crate::transport::h2::{AgentSide, agent_side};
use crate::{tls, tunnel};

mod connect;
pub(crate) use connect::{ProxyError, ProxyFailure};

/// How long the hello and its answer may take.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A tunnel that the relay welcomed.
pub(crate) enum Link {
    /// QUIC, with its control stream (the relay closes the connection, not the stream).
    Quic(quinn::Connection, tunnel::Stream),
    /// HTTP/2 over TLS over TCP.
    Tcp(Box<AgentSide<TlsStream<TcpStream>>>),
}

impl Link {
    /// Closes a tunnel the agent will not use, saying why.
    pub(crate) fn close(self, why: &str) {
        match self {
            Self::Quic(connection, _) => connection.close(0u32.into(), why.as_bytes()),
            // Dropping the connection closes it.
            Self::Tcp(_) => {}
        }
    }
}

/// What dialing the relay needs, once per agent.
pub(crate) struct Dialer {
    quic_address: String,
    tcp_address: String,
    server_name: String,
    /// How the relay is recognised, for QUIC and TCP alike (ALPN `hawser/1`).
    tls: Arc<rustls::ClientConfig>,
    tunnel: crate::config::TunnelConfig,
    hello: Hello,
    /// Where the agent token is read again at every dial (a rotated Secret is used at the next
    /// reconnect), and the last token read; a probe has no file and sends the hello's.
    token: Mutex<(Option<std::path::PathBuf>, Secret)>,
    proxy: Option<connect::Proxy>,
    /// The QUIC endpoints that may still carry a tunnel, so shutdown can close them instead of
    /// leaving the relay to notice by idle timeout.
    pub current: Mutex<Vec<quinn::Endpoint>>,
}

impl Dialer {
    /// Reads what dialing needs from the configuration: trust, proxy and its credentials.
    pub(crate) fn new(config: &AgentConfig, token: &Secret) -> Result<Self, super::AgentError> {
        let trust = tls::RelayTrust::load(config.relay.ca_file.as_deref(), &config.relay.pinned_key_sha256)?;
        Self::build(config, token, trust.verifier()?, false)
    }

    /// A dialer whose hellos are probes (judged, answered, never registered: `hawser doctor`),
    /// the relay's certificate judged by `verifier`.
    pub(crate) fn probing(
        config: &AgentConfig,
        token: &Secret,
        verifier: Arc<dyn ServerCertVerifier>,
    ) -> Result<Self, super::AgentError> {
        Self::build(config, token, verifier, true)
    }

    fn build(
        config: &AgentConfig,
        token: &Secret,
        verifier: Arc<dyn ServerCertVerifier>,
        probe: bool,
    ) -> Result<Self, super::AgentError> {
        let relay = &config.relay;
        let tls = Arc::new(tls::client_config_with(verifier, &[proto::ALPN])?);
        let server_name = match &relay.server_name {
            Some(name) => name.clone(),
            None => host_of(&relay.address).to_owned(),
        };
        let tcp_address = relay.tcp_address.clone().unwrap_or_else(|| relay.address.clone());
        let proxy = connect::proxy_for(&tcp_address, relay.proxy.as_deref(), relay.proxy_auth_file.as_deref())?;
        if let Some(proxy) = &proxy
            && !probe
        {
            tracing::info!(proxy = %proxy.shown(), "the tcp transport goes through an http proxy");
        }
        Ok(Self {
            quic_address: relay.address.clone(),
            tcp_address,
            server_name,
            tls,
            tunnel: config.tunnel.clone(),
            hello: Hello {
                cluster: config.cluster.clone(),
                token: token.expose().to_owned(),
                instance: config.instance.clone(),
                accepts: config.accepts(),
                link: 0,
                held: Vec::new(),
                probe,
            },
            token: Mutex::new(((!probe).then(|| config.token_file.clone()), token.clone())),
            proxy,
            current: Mutex::new(Vec::new()),
        })
    }

    /// Reads the agent token from `file` from the next dial on (a reload).
    pub(crate) fn set_token_file(&self, file: std::path::PathBuf) {
        self.token.lock().unwrap_or_else(|e| e.into_inner()).0 = Some(file);
    }

    /// The agent token for a dial now: the file's, or the last one read if it cannot be read.
    fn token(&self) -> String {
        let mut token = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = &token.0 {
            match super::read_token(file) {
                Ok(read) => token.1 = read,
                Err(e) => tracing::warn!(error = %e, "dialing with the agent token read before"),
            }
        }
        token.1.expose().to_owned()
    }

    /// The proxy the TCP transport goes through, as shown in logs, if one applies.
    pub(crate) fn proxy(&self) -> Option<String> {
        self.proxy.as_ref().map(connect::Proxy::shown)
    }

    /// The name the relay's certificate must hold (with a CA), sent as SNI.
    pub(crate) fn server_name(&self) -> &str {
        &self.server_name
    }

    /// `host:port` of the relay for QUIC, and for TCP.
    pub(crate) fn addresses(&self) -> (&str, &str) {
        (&self.quic_address, &self.tcp_address)
    }

    /// The hello of the agent's tunnel number `link`.
    fn hello(&self, link: u8, held: &[String]) -> Hello {
        Hello {
            link,
            held: held.to_vec(),
            token: self.token(),
            ..self.hello.clone()
        }
    }

    /// A QUIC tunnel (the agent's number `link`), if a handshake completes within `deadline`,
    /// and its welcome.
    pub(crate) async fn quic(
        &self,
        deadline: Duration,
        link: u8,
        held: &[String],
    ) -> Result<(Link, Welcome), SessionError> {
        let addr = resolve(&self.quic_address).await?;
        // A fresh endpoint per attempt: a restarted relay sees a new source port (and a
        // balancer may send it to another relay).
        let endpoint =
            tunnel::agent_endpoint_with(self.tls.clone(), &self.tunnel, addr).map_err(SessionError::Endpoint)?;
        {
            let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
            current.retain(|e| e.open_connections() > 0);
            current.push(endpoint.clone());
        }
        let hello = self.hello(link, held);
        let connection = tunnel::dial(&endpoint, addr, &self.server_name, deadline).await?;
        let welcome = tokio::time::timeout(HELLO_TIMEOUT, async {
            let mut control = tunnel::join(connection.open_bi().await.map_err(|e| e.to_string())?);
            proto::write_frame(&mut control, &hello)
                .await
                .map_err(|e| e.to_string())?;
            let welcome: Welcome = proto::read_frame(&mut control).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((control, welcome))
        })
        .await
        .map_err(|_| SessionError::Hello("no answer within 10s".into()))?
        .map_err(|e| match connection.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(close)) => {
                let code = u32::try_from(close.error_code.into_inner()).unwrap_or(u32::MAX);
                let reason = String::from_utf8_lossy(&close.reason).into_owned();
                if code == proto::HELD_HERE {
                    SessionError::SameRelay(reason)
                } else {
                    SessionError::Refused { code, reason }
                }
            }
            reason => SessionError::Hello(reason.map_or(e, |r| r.to_string())),
        })?;
        let (control, welcome) = welcome;
        Ok((Link::Quic(connection, control), welcome))
    }

    /// A tunnel over TCP (the agent's number `link`; through the proxy, if one applies) and its
    /// welcome.
    pub(crate) async fn tcp(&self, link: u8, held: &[String]) -> Result<(Link, Welcome), SessionError> {
        let tcp = self.tcp_connect().await?;
        let (io, welcome) = self.tcp_hello(tcp, link, held).await?;
        let side = tokio::time::timeout(HELLO_TIMEOUT, agent_side(io, &self.tunnel))
            .await
            .map_err(|_| SessionError::Tcp("no HTTP/2 preface from the relay within 10s".into()))?
            .map_err(|e| SessionError::Tcp(e.to_string()))?;
        Ok((Link::Tcp(Box::new(side)), welcome))
    }

    /// A TCP connection to the relay's TCP address: through the proxy if one applies.
    pub(crate) async fn tcp_connect(&self) -> Result<TcpStream, SessionError> {
        let tcp = match &self.proxy {
            Some(proxy) => {
                let tcp = proxy.connect(&self.tcp_address).await?;
                tracing::debug!(proxy = %proxy.shown(), "tunnel through the proxy open");
                tcp
            }
            None => {
                let addr = resolve(&self.tcp_address).await?;
                let failed = |error| SessionError::TcpConnect {
                    address: self.tcp_address.clone(),
                    error,
                };
                tokio::time::timeout(tunnel::HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
                    .await
                    .map_err(|_| {
                        failed(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no answer within 10s",
                        ))
                    })?
                    .map_err(failed)?
            }
        };
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// TLS to the relay over `tcp`, the hello of the agent's tunnel number `link`, and its welcome.
    pub(crate) async fn tcp_hello(
        &self,
        tcp: TcpStream,
        link: u8,
        held: &[String],
    ) -> Result<(TlsStream<TcpStream>, Welcome), SessionError> {
        let name = rustls::pki_types::ServerName::try_from(self.server_name.clone())
            .map_err(|e| SessionError::Tcp(format!("server name {:?}: {e}", self.server_name)))?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let mut io = tokio::time::timeout(tunnel::HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| {
                SessionError::Tls(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no tls handshake within 10s",
                ))
            })?
            .map_err(SessionError::Tls)?;
        let answer = tokio::time::timeout(HELLO_TIMEOUT, async {
            proto::write_frame(&mut io, &self.hello(link, held)).await?;
            proto::read_frame::<_, Answer>(&mut io).await
        })
        .await
        .map_err(|_| SessionError::Hello("no answer within 10s".into()))?
        .map_err(|e| SessionError::Hello(e.to_string()))?;
        match answer {
            Answer::Welcome(welcome) => Ok((io, welcome)),
            Answer::Closing(closing) if closing.code == proto::HELD_HERE => {
                Err(SessionError::SameRelay(closing.reason))
            }
            Answer::Closing(closing) => Err(SessionError::Refused {
                code: closing.code,
                reason: closing.reason,
            }),
        }
    }
}

async fn resolve(address: &str) -> Result<SocketAddr, SessionError> {
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| SessionError::Resolve(address.to_owned(), e.to_string()))?
        .next()
        .ok_or_else(|| SessionError::Resolve(address.to_owned(), "no address".into()))
}

fn host_of(address: &str) -> &str {
    match address.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => address,
    }
}
