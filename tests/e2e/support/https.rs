//! A minimal HTTPS/1.1 client for requests kubectl cannot make (kubectl
//! prompts for a password when it has no credential at all).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

/// Status code and body of one GET to `url` (https://127.0.0.1:PORT/path), trusting `ca`.
pub fn get(url: &str, ca: &Path, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    let answer = request("GET", url, ca, headers, "")?;
    Ok((answer.status, answer.body))
}

/// One HTTP/1.1 request to `url` over TLS trusting `ca` (`Connection: close`; a POST's `body`
/// form-encoded), its answer read to the end. The body is left as sent (chunks not decoded).
pub fn request(method: &str, url: &str, ca: &Path, headers: &[(&str, &str)], body: &str) -> Result<Answer> {
    let rest = url.strip_prefix("https://").context("not an https URL")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut tls = connect(url, ca).with_context(|| format!("connecting to {url}"))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    tls.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    // A peer that closes without close_notify still gave us its answer.
    let _ = tls.read_to_end(&mut raw);
    Answer::parse(&raw)
}

/// An HTTP/1.1 answer: status, headers (names lower-cased, the last of each kept), body.
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: BTreeMap<String, String>,
    /// The body as sent.
    pub body: String,
}

impl Answer {
    /// Parses a whole answer.
    pub fn parse(raw: &[u8]) -> Result<Self> {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .context("no HTTP status line")?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok(Self {
            status,
            headers,
            body: body.to_owned(),
        })
    }
}

/// Sends a GET and reads only the response head; the body is left unread,
/// so the connection stalls once every buffer on the way is full.
pub fn get_and_stall(url: &str, ca: &Path, headers: &[(&str, &str)]) -> Result<(u16, Tls)> {
    let mut tls = send_get(url, ca, headers)?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    Ok((status, tls))
}

/// A TLS connection to the relay.
pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// An HTTP/1.1 TLS connection to `url`'s host, trusting `ca` and verifying `localhost`.
pub fn connect(url: &str, ca: &Path) -> Result<Tls> {
    let rest = url.strip_prefix("https://").context("not an https URL")?;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let config = hawser::tls::client_config(hawser::tls::root_store(ca)?, &[b"http/1.1"])?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
    let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let tcp = TcpStream::connect(authority)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Connects to `url`'s host and sends a GET.
fn send_get(url: &str, ca: &Path, headers: &[(&str, &str)]) -> Result<Tls> {
    let rest = url.strip_prefix("https://").context("not an https URL")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut tls = connect(url, ca)?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes())?;
    Ok(tls)
}
