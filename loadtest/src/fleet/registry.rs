//! The fleet's registry as the driver reads it: etcd's JSON gateway (`POST /v3/kv/range`) over
//! plain HTTP on loopback, keys only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Every key the fleet's relays write starts with this (`[registry] prefix`).
pub const PREFIX: &str = "/hawser-loadtest";

/// One call to etcd on `127.0.0.1:port`: the status and the body.
pub async fn call(port: u16, method: &str, path: &str, body: String) -> Result<(u16, String)> {
    let within = Duration::from_secs(10);
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp)).await?;
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, format!("127.0.0.1:{port}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let answer = async {
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&body).into_owned()))
        };
        // The connection is driven here, in this task, until the answer is in.
        tokio::select! {
            answer = answer => answer,
            ended = connection => match ended {
                Ok(()) => Err(anyhow!("etcd closed the connection before answering")),
                Err(e) => Err(anyhow!("etcd connection: {e}")),
            },
        }
    };
    tokio::time::timeout(within, exchange)
        .await
        .map_err(|_| anyhow!("etcd did not answer {method} {path} within {within:?}"))?
}

/// Whether etcd on `port` reports itself healthy now.
pub async fn healthy(port: u16) -> bool {
    matches!(call(port, "GET", "/health", String::new()).await, Ok((200, body)) if body.contains(r#""health":"true""#))
}

/// The sessions in the registry: for each cluster, the relays holding a tunnel of it (one entry
/// per session, so an agent with two tunnels on one relay would show twice).
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    /// Relays by cluster.
    pub clusters: BTreeMap<String, Vec<String>>,
    /// Session keys in all.
    pub keys: usize,
}

impl Sessions {
    /// Clusters whose name starts with `prefix` that have a session anywhere.
    pub fn registered(&self, prefix: &str) -> usize {
        self.clusters.keys().filter(|c| c.starts_with(prefix)).count()
    }

    /// Clusters whose name starts with `prefix` that have a session on a relay other than `relay`.
    pub fn registered_elsewhere(&self, prefix: &str, relay: &str) -> usize {
        self.clusters
            .iter()
            .filter(|(c, relays)| c.starts_with(prefix) && relays.iter().any(|r| r != relay))
            .count()
    }

    /// Sessions of clusters whose name starts with `prefix`.
    pub fn sessions(&self, prefix: &str) -> usize {
        self.clusters
            .iter()
            .filter(|(c, _)| c.starts_with(prefix))
            .map(|(_, r)| r.len())
            .sum()
    }

    /// Sessions on `relay` of clusters whose name starts with `prefix`.
    pub fn on(&self, prefix: &str, relay: &str) -> usize {
        self.clusters
            .iter()
            .filter(|(c, _)| c.starts_with(prefix))
            .map(|(_, r)| r.iter().filter(|x| *x == relay).count())
            .sum()
    }

    /// The relays holding `cluster`, each once.
    pub fn holders(&self, cluster: &str) -> BTreeSet<String> {
        self.clusters.get(cluster).into_iter().flatten().cloned().collect()
    }
}

/// Reads every session key under the fleet's prefix.
pub async fn sessions(port: u16) -> Result<Sessions> {
    let prefix = format!("{PREFIX}/sessions/");
    let mut end = prefix.clone().into_bytes();
    *end.last_mut().context("empty prefix")? += 1;
    let body = serde_json::json!({
        "key": base64_encode(prefix.as_bytes()),
        "range_end": base64_encode(&end),
        "keys_only": true,
    });
    let (status, answer) = call(port, "POST", "/v3/kv/range", body.to_string()).await?;
    if status != 200 {
        bail!(
            "etcd answered {status}: {}",
            answer.chars().take(300).collect::<String>()
        );
    }
    let value: serde_json::Value = serde_json::from_str(&answer).context("etcd's range answer")?;
    let mut out = Sessions::default();
    for kv in value["kvs"].as_array().into_iter().flatten() {
        let key = base64_decode(kv["key"].as_str().unwrap_or_default()).context("a key from etcd")?;
        let key = String::from_utf8(key)?;
        // {prefix}/sessions/{cluster}/{relay}/{agent}
        let mut parts = key.strip_prefix(&prefix).unwrap_or_default().splitn(3, '/');
        if let (Some(cluster), Some(relay)) = (parts.next(), parts.next()) {
            out.clusters
                .entry(cluster.to_owned())
                .or_default()
                .push(relay.to_owned());
            out.keys += 1;
        }
    }
    Ok(out)
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as etcd's gateway wants bytes.
fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or_else(|| anyhow!("{c:?} is not base64"))? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), coded);
            assert_eq!(base64_decode(coded).unwrap(), plain.as_bytes());
        }
        let key = b"/hawser-loadtest/sessions0";
        assert_eq!(base64_decode(&base64_encode(key)).unwrap(), key);
    }

    #[test]
    fn sessions_count_clusters_and_relays() {
        let mut s = Sessions::default();
        for (c, r) in [
            ("swarm-1", "relay-0"),
            ("swarm-1", "relay-1"),
            ("swarm-2", "relay-0"),
            ("bench-0", "relay-2"),
        ] {
            s.clusters.entry(c.into()).or_default().push(r.into());
            s.keys += 1;
        }
        assert_eq!(s.registered("swarm-"), 2);
        assert_eq!(s.registered_elsewhere("swarm-", "relay-0"), 1);
        assert_eq!(s.sessions("swarm-"), 3);
        assert_eq!(s.on("swarm-", "relay-0"), 2);
        assert_eq!(s.holders("swarm-1").len(), 2);
    }
}
