//! The TCP transport's way through an HTTP proxy: which proxy applies (configured, or the
//! environment as curl reads it), its credentials, and the `CONNECT` itself, whose failures say
//! what the proxy answered (a doctor's line, an agent's log) rather than "unsuccessful".

use http::{HeaderValue, StatusCode, Uri};
use hyper_util::client::proxy::matcher::Matcher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::agent::AgentError;
use crate::tunnel::HANDSHAKE_TIMEOUT;

/// Most bytes of a proxy's answer to `CONNECT` that are read.
const MAX_ANSWER: usize = 8 * 1024;

/// An HTTP proxy the TCP transport goes through.
pub(crate) struct Proxy {
    uri: Uri,
    auth: Option<HeaderValue>,
}

/// Why no tunnel came through the proxy.
#[derive(Debug, thiserror::Error)]
#[error("proxy {proxy}: {failure}")]
pub(crate) struct ProxyError {
    /// The proxy, as [`Proxy::shown`] writes it.
    pub proxy: String,
    /// What went wrong.
    pub failure: ProxyFailure,
}

/// What went wrong on the way through a proxy.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyFailure {
    /// No TCP connection to the proxy.
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    /// The connection broke before the proxy answered.
    #[error("{0}")]
    Io(std::io::Error),
    /// No answer within [`HANDSHAKE_TIMEOUT`].
    #[error("no answer within 10s")]
    Timeout,
    /// The proxy answered, but not 200.
    #[error("CONNECT {target} answered {status}")]
    Refused {
        /// The relay's `host:port`.
        target: String,
        /// What the proxy answered (407: it wants credentials).
        status: StatusCode,
    },
    /// The answer was not HTTP.
    #[error("{0}")]
    Protocol(&'static str),
}

impl Proxy {
    /// The proxy's scheme, host and port, never credentials an environment variable may carry.
    pub(crate) fn shown(&self) -> String {
        shown(&self.uri)
    }

    /// A TCP connection to `target` (`host:port`) through this proxy: `CONNECT`, then the raw
    /// stream once the proxy answers 200.
    pub(crate) async fn connect(&self, target: &str) -> Result<TcpStream, ProxyError> {
        let fail = |failure| ProxyError {
            proxy: self.shown(),
            failure,
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.tunnel(target))
            .await
            .map_err(|_| fail(ProxyFailure::Timeout))?
            .map_err(fail)
    }

    async fn tunnel(&self, target: &str) -> Result<TcpStream, ProxyFailure> {
        let host = self.uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = self.uri.port_u16().unwrap_or(80);
        let mut tcp = TcpStream::connect((host, port)).await.map_err(ProxyFailure::Connect)?;
        let _ = tcp.set_nodelay(true);
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
        if let Some(auth) = &self.auth {
            request.extend_from_slice(b"Proxy-Authorization: ");
            request.extend_from_slice(auth.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        tcp.write_all(&request).await.map_err(ProxyFailure::Io)?;
        let status = read_answer(&mut tcp).await?;
        if status != StatusCode::OK {
            return Err(ProxyFailure::Refused {
                target: target.to_owned(),
                status,
            });
        }
        Ok(tcp)
    }
}

/// Reads the proxy's answer up to its blank line and returns its status. After a 200 the relay
/// speaks only once the agent's TLS ClientHello went out, so nothing may follow the blank line
/// yet; a refusal may carry a body, which is not read.
async fn read_answer(tcp: &mut TcpStream) -> Result<StatusCode, ProxyFailure> {
    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if answer.len() > MAX_ANSWER {
            return Err(ProxyFailure::Protocol("an answer of over 8 KiB"));
        }
        let n = tcp.read(&mut chunk).await.map_err(ProxyFailure::Io)?;
        if n == 0 {
            return Err(ProxyFailure::Protocol(
                "the proxy closed the connection without an answer",
            ));
        }
        answer.extend_from_slice(&chunk[..n]);
    };
    let status = status_of(&answer).ok_or(ProxyFailure::Protocol("not an HTTP answer"))?;
    if status == StatusCode::OK && end != answer.len() {
        return Err(ProxyFailure::Protocol("bytes after the proxy's answer"));
    }
    Ok(status)
}

/// The status of an HTTP/1.x answer's first line.
fn status_of(answer: &[u8]) -> Option<StatusCode> {
    let line = answer.split(|&b| b == b'\r').next()?;
    let mut words = line.split(|&b| b == b' ');
    if !words.next()?.starts_with(b"HTTP/1.") {
        return None;
    }
    StatusCode::from_bytes(words.next()?).ok()
}

/// The proxy the TCP transport uses to reach `address`: `configured`, or what the environment
/// says (`HTTPS_PROXY` and `NO_PROXY`, as curl reads them); basic credentials from `auth_file`.
pub(crate) fn proxy_for(
    address: &str,
    configured: Option<&str>,
    auth_file: Option<&std::path::Path>,
) -> Result<Option<Proxy>, AgentError> {
    let matcher = match configured {
        Some(uri) => Matcher::builder().https(uri).build(),
        None => Matcher::from_env(),
    };
    let target: Uri = format!("https://{address}")
        .parse()
        .map_err(|e| AgentError::Proxy(format!("relay tcp address {address:?}: {e}")))?;
    let Some(intercept) = matcher.intercept(&target) else {
        return Ok(None);
    };
    // The environment may name an https:// or socks proxy; only CONNECT to an http:// one is spoken.
    if intercept.uri().scheme_str() != Some("http") {
        return Err(AgentError::Proxy(format!(
            "{}: only http:// proxies are supported (the agent sends CONNECT; TLS to the relay runs inside)",
            shown(intercept.uri())
        )));
    }
    let auth = match auth_file {
        Some(path) => {
            let secret = std::fs::read_to_string(path)
                .map_err(|e| AgentError::Proxy(format!("proxy_auth_file {}: {e}", path.display())))?;
            let secret = secret.trim();
            if !secret.contains(':') {
                return Err(AgentError::Proxy(format!(
                    "proxy_auth_file {}: write user:password",
                    path.display()
                )));
            }
            use base64::Engine;
            let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
            let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
                .map_err(|e| AgentError::Proxy(format!("proxy_auth_file: {e}")))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot proxy on 127.0.0.1 that reads a request head and writes `answer`; the head it read.
    async fn proxy_answering(answer: &'static [u8]) -> (Proxy, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}", listener.local_addr().unwrap()).parse().unwrap();
        let served = tokio::spawn(async move {
            let (mut io, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                io.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            io.write_all(answer).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        let auth = Some(HeaderValue::from_static("Basic dTpw"));
        (Proxy { uri, auth }, served)
    }

    #[tokio::test]
    async fn connect_sends_the_target_and_credentials_and_says_what_the_proxy_answered() {
        let (proxy, served) = proxy_answering(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
        proxy.connect("relay.example:443").await.expect("a tunnel");
        let head = served.await.unwrap();
        assert!(head.starts_with("CONNECT relay.example:443 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("Proxy-Authorization: Basic dTpw\r\n"), "{head}");

        let (proxy, _) = proxy_answering(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n<html>...").await;
        let e = proxy.connect("relay.example:443").await.unwrap_err();
        assert!(matches!(e.failure, ProxyFailure::Refused { status, .. } if status == 407));
        assert!(
            e.to_string()
                .ends_with("CONNECT relay.example:443 answered 407 Proxy Authentication Required"),
            "{e}"
        );
        let (proxy, _) = proxy_answering(b"SSH-2.0-nope\r\n\r\n").await;
        let e = proxy.connect("relay.example:443").await.unwrap_err();
        assert!(matches!(e.failure, ProxyFailure::Protocol(_)), "{e}");
        let (proxy, _) = proxy_answering(b"HTTP/1.1 200 OK\r\n\r\nearly").await;
        let e = proxy.connect("relay.example:443").await.unwrap_err();
        assert!(
            matches!(e.failure, ProxyFailure::Protocol("bytes after the proxy's answer")),
            "{e}"
        );
    }
}
