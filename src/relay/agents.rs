//! The relay's QUIC listener: agents connect, prove their cluster, and stay
//! registered until their connection ends.
//!
//! An agent proves its cluster with that cluster's agent token. The relay
//! keeps only the token's SHA-256 and compares digests in constant time, so
//! neither a config leak nor timing reveals a token, and a token for cluster
//! A can never register as cluster B (the digest is looked up by the cluster
//! the agent names).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{Instrument, info, info_span, warn};

use super::registry::Registry;
use crate::proto::{self, Hello, Welcome};
use crate::tunnel;

/// How long an agent has to send its hello after the handshake.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Error codes the relay closes an agent connection with.
pub mod close_code {
    /// The hello was missing, malformed or late.
    pub const BAD_HELLO: u32 = 1;
    /// Unknown cluster or wrong token.
    pub const REFUSED: u32 = 2;
    /// The relay is shutting down.
    pub const SHUTDOWN: u32 = 3;
}

/// Agent token digests by cluster.
pub struct AgentTokens(HashMap<String, [u8; 32]>);

impl AgentTokens {
    /// Builds the table from `(cluster, hex SHA-256)` pairs (validated by config).
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut map = HashMap::new();
        for (cluster, hex) in pairs {
            let mut digest = [0u8; 32];
            for (i, byte) in digest.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
            }
            map.insert(cluster.to_owned(), digest);
        }
        Self(map)
    }

    /// Whether `cluster` is configured at all.
    pub fn knows(&self, cluster: &str) -> bool {
        self.0.contains_key(cluster)
    }

    /// Whether `token` is the agent token of `cluster`.
    pub fn verify(&self, cluster: &str, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        match self.0.get(cluster) {
            Some(expected) => bool::from(expected.ct_eq(&digest)),
            None => false,
        }
    }
}

/// The hex SHA-256 of an agent token, as the relay's config stores it.
pub fn token_digest_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Handshakes in progress at once; more are refused until some finish.
const MAX_HANDSHAKES: usize = 256;

/// Accepts agent connections until the endpoint closes.
///
/// Each `Incoming` is judged before any handshake work: an unvalidated
/// source address gets a QUIC retry (so spoofed sources cost us nothing),
/// and beyond [`MAX_HANDSHAKES`] in flight new attempts are refused.
pub async fn serve(endpoint: quinn::Endpoint, tokens: Arc<AgentTokens>, registry: Arc<Registry>, relay: String) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    while let Some(incoming) = endpoint.accept().await {
        if !incoming.remote_address_validated() && incoming.may_retry() {
            let _ = incoming.retry();
            continue;
        }
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let remote = incoming.remote_address();
        let (tokens, registry, relay) = (tokens.clone(), registry.clone(), relay.clone());
        tokio::spawn(
            async move {
                let handshake = tokio::time::timeout(HELLO_TIMEOUT, incoming).await;
                drop(permit);
                match handshake {
                    Ok(Ok(connection)) => session(connection, &tokens, &registry, &relay).await,
                    Ok(Err(e)) => info!(error = %e, "agent handshake failed"),
                    Err(_) => info!("agent handshake timed out"),
                }
            }
            .instrument(info_span!("agent_connection", net.peer.address = %remote)),
        );
    }
}

async fn session(connection: quinn::Connection, tokens: &AgentTokens, registry: &Arc<Registry>, relay: &str) {
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        let mut control = tunnel::join(connection.accept_bi().await.ok()?);
        let hello: Hello = proto::read_frame(&mut control).await.ok()?;
        Some((control, hello))
    })
    .await;
    let Ok(Some((mut control, hello))) = hello else {
        connection.close(close_code::BAD_HELLO.into(), b"expected a hello");
        return;
    };
    if !tokens.verify(&hello.cluster, &hello.token) {
        warn!(cluster = %hello.cluster, agent = %hello.instance, "agent refused: unknown cluster or wrong token");
        connection.close(close_code::REFUSED.into(), b"unknown cluster or wrong agent token");
        return;
    }
    let guard = registry.register(&hello.cluster, &hello.instance, connection.clone());
    let welcome = Welcome {
        relay: relay.to_owned(),
        session: guard.id(),
    };
    if proto::write_frame(&mut control, &welcome).await.is_err() {
        return;
    }
    info!(cluster = %hello.cluster, agent = %hello.instance, session = guard.id(), "agent registered");
    let reason = connection.closed().await;
    info!(cluster = %hello.cluster, agent = %hello.instance, session = guard.id(), %reason, "agent gone");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_of_one_cluster_cannot_serve_another() {
        let a = token_digest_hex("token-a");
        let b = token_digest_hex("token-b");
        let tokens = AgentTokens::new([("a", a.as_str()), ("b", b.as_str())]);
        assert!(tokens.verify("a", "token-a"));
        assert!(!tokens.verify("b", "token-a"));
        assert!(!tokens.verify("a", "token-b"));
        assert!(!tokens.verify("c", "token-a"));
        assert!(tokens.knows("a") && !tokens.knows("c"));
    }
}
