//! How the agent reaches the relay, and its hello: over QUIC, or over HTTP/2 on TLS on TCP (the
//! relay's caller port, ALPN `hawser/1`), through an HTTP CONNECT proxy where one applies.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tower::Service;
use tracing::debug;

use super::SessionError;
use crate::config::{AgentConfig, Secret};
use crate::proto::{self, Answer, Hello, Welcome};
use crate::transport::h2::{AgentSide, agent_side};
use crate::{tls, tunnel};

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
    trust: tls::RelayTrust,
    tcp_tls: Arc<rustls::ClientConfig>,
    tunnel: crate::config::TunnelConfig,
    hello: Hello,
    proxy: Option<Proxy>,
    /// The QUIC endpoints that may still carry a tunnel, so shutdown can close them instead of
    /// leaving the relay to notice by idle timeout.
    pub current: Mutex<Vec<quinn::Endpoint>>,
}

/// An HTTP proxy the TCP transport goes through.
struct Proxy {
    uri: Uri,
    auth: Option<HeaderValue>,
}

impl Dialer {
    /// Reads what dialing needs from the configuration: trust, proxy and its credentials.
    pub(crate) fn new(config: &AgentConfig, token: &Secret) -> Result<Self, super::AgentError> {
        let relay = &config.relay;
        let trust = tls::RelayTrust::load(relay.ca_file.as_deref(), &relay.pinned_key_sha256)?;
        let tcp_tls = Arc::new(trust.client_config(&[proto::ALPN])?);
        let server_name = match &relay.server_name {
            Some(name) => name.clone(),
            None => host_of(&relay.address).to_owned(),
        };
        let tcp_address = relay.tcp_address.clone().unwrap_or_else(|| relay.address.clone());
        let proxy = proxy_for(&tcp_address, relay.proxy.as_deref(), relay.proxy_auth_file.as_deref())?;
        if let Some(proxy) = &proxy {
            tracing::info!(proxy = %shown(&proxy.uri), "the tcp transport goes through an http proxy");
        }
        Ok(Self {
            quic_address: relay.address.clone(),
            tcp_address,
            server_name,
            trust,
            tcp_tls,
            tunnel: config.tunnel.clone(),
            hello: Hello {
                cluster: config.cluster.clone(),
                token: token.expose().to_owned(),
                instance: config.instance.clone(),
                accepts: config.accepts(),
                link: 0,
                held: Vec::new(),
            },
            proxy,
            current: Mutex::new(Vec::new()),
        })
    }

    /// The hello of the agent's tunnel number `link`.
    fn hello(&self, link: u8, held: &[String]) -> Hello {
        Hello {
            link,
            held: held.to_vec(),
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
        let endpoint = tunnel::agent_endpoint(&self.trust, &self.tunnel, addr).map_err(SessionError::Endpoint)?;
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
            Some(quinn::ConnectionError::ApplicationClosed(close))
                if close.error_code == quinn::VarInt::from_u32(proto::HELD_HERE) =>
            {
                SessionError::SameRelay(String::from_utf8_lossy(&close.reason).into_owned())
            }
            reason => SessionError::Hello(reason.map_or(e, |r| r.to_string())),
        })?;
        let (control, welcome) = welcome;
        Ok((Link::Quic(connection, control), welcome))
    }

    /// A tunnel over TCP (the agent's number `link`; through the proxy, if one applies) and its
    /// welcome.
    pub(crate) async fn tcp(&self, link: u8, held: &[String]) -> Result<(Link, Welcome), SessionError> {
        let tcp = match &self.proxy {
            Some(proxy) => self.through(proxy).await?,
            None => {
                let addr = resolve(&self.tcp_address).await?;
                tokio::time::timeout(tunnel::HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
                    .await
                    .map_err(|_| {
                        SessionError::Tcp(format!("connecting to {}: no answer within 10s", self.tcp_address))
                    })?
                    .map_err(|e| SessionError::Tcp(format!("connecting to {}: {e}", self.tcp_address)))?
            }
        };
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(self.server_name.clone())
            .map_err(|e| SessionError::Tcp(format!("server name {:?}: {e}", self.server_name)))?;
        let connector = tokio_rustls::TlsConnector::from(self.tcp_tls.clone());
        let mut io = tokio::time::timeout(tunnel::HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| SessionError::Tcp("no tls handshake within 10s".into()))?
            .map_err(|e| SessionError::Tcp(format!("tls: {e}")))?;
        let answer = tokio::time::timeout(HELLO_TIMEOUT, async {
            proto::write_frame(&mut io, &self.hello(link, held)).await?;
            proto::read_frame::<_, Answer>(&mut io).await
        })
        .await
        .map_err(|_| SessionError::Hello("no answer within 10s".into()))?
        .map_err(|e| SessionError::Hello(e.to_string()))?;
        let welcome = match answer {
            Answer::Welcome(welcome) => welcome,
            Answer::Closing(closing) if closing.code == proto::HELD_HERE => {
                return Err(SessionError::SameRelay(closing.reason));
            }
            Answer::Closing(closing) => {
                return Err(SessionError::Hello(format!(
                    "refused ({}): {}",
                    closing.code, closing.reason
                )));
            }
        };
        let side = tokio::time::timeout(HELLO_TIMEOUT, agent_side(io, &self.tunnel))
            .await
            .map_err(|_| SessionError::Tcp("no HTTP/2 preface from the relay within 10s".into()))?
            .map_err(|e| SessionError::Tcp(e.to_string()))?;
        Ok((Link::Tcp(Box::new(side)), welcome))
    }

    /// A TCP connection to the relay through `proxy` (HTTP CONNECT).
    async fn through(&self, proxy: &Proxy) -> Result<TcpStream, SessionError> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(tunnel::HANDSHAKE_TIMEOUT));
        let mut connector = Tunnel::new(proxy.uri.clone(), http);
        if let Some(auth) = &proxy.auth {
            connector = connector.with_auth(auth.clone());
        }
        let target: Uri = format!("https://{}", self.tcp_address)
            .parse()
            .map_err(|e| SessionError::Tcp(format!("relay tcp address {:?}: {e}", self.tcp_address)))?;
        let io = tokio::time::timeout(tunnel::HANDSHAKE_TIMEOUT, connector.call(target))
            .await
            .map_err(|_| SessionError::Tcp(format!("proxy {}: no tunnel within 10s", shown(&proxy.uri))))?
            .map_err(|e| SessionError::Tcp(format!("proxy {}: {e}", shown(&proxy.uri))))?;
        debug!(proxy = %shown(&proxy.uri), "tunnel through the proxy open");
        Ok(io.into_inner())
    }
}

/// The proxy the TCP transport uses to reach `address`: `configured`, or what the environment
/// says (`HTTPS_PROXY` and `NO_PROXY`, as curl reads them); basic credentials from `auth_file`.
fn proxy_for(
    address: &str,
    configured: Option<&str>,
    auth_file: Option<&std::path::Path>,
) -> Result<Option<Proxy>, super::AgentError> {
    let matcher = match configured {
        Some(uri) => Matcher::builder().https(uri).build(),
        None => Matcher::from_env(),
    };
    let target: Uri = format!("https://{address}")
        .parse()
        .map_err(|e| super::AgentError::Proxy(format!("relay tcp address {address:?}: {e}")))?;
    let Some(intercept) = matcher.intercept(&target) else {
        return Ok(None);
    };
    // The environment may name an https:// or socks proxy; only CONNECT to an http:// one is spoken.
    if intercept.uri().scheme_str() != Some("http") {
        return Err(super::AgentError::Proxy(format!(
            "{}: only http:// proxies are supported (the agent sends CONNECT; TLS to the relay runs inside)",
            shown(intercept.uri())
        )));
    }
    let auth = match auth_file {
        Some(path) => {
            let secret = std::fs::read_to_string(path)
                .map_err(|e| super::AgentError::Proxy(format!("proxy_auth_file {}: {e}", path.display())))?;
            let secret = secret.trim();
            if !secret.contains(':') {
                return Err(super::AgentError::Proxy(format!(
                    "proxy_auth_file {}: write user:password",
                    path.display()
                )));
            }
            use base64::Engine;
            let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
            let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
                .map_err(|e| super::AgentError::Proxy(format!("proxy_auth_file: {e}")))?;
            value.set_sensitive(true);
            Some(value)
        }
        None => intercept.basic_auth().cloned(),
    };
    Ok(Some(Proxy {
        uri: intercept.uri().clone(),
        auth,
    }))
}

/// A proxy's scheme, host and port, never credentials an environment variable may carry.
fn shown(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    match (uri.host(), uri.port_u16()) {
        (Some(host), Some(port)) => format!("{scheme}://{host}:{port}"),
        (Some(host), None) => format!("{scheme}://{host}"),
        _ => format!("{scheme}://?"),
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
