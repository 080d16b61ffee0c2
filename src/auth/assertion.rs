//! Relay assertions: what the relay tells an agent about a caller it authenticated.
//!
//! # Design
//!
//! The relay validates the caller's token, then hands the cluster's agent a short-lived ES256 JWT
//! of its own, signed with its assertion key (never its TLS key, never the caller-token issuer's
//! key): `iss` is the relay's assertion issuer, `aud` is [`cluster_audience`] of exactly one
//! cluster, `sub`, `groups`, `uid` and `extra` are the identity the relay mapped (prefixes
//! applied), `exp` is at most the configured lifetime and never past the caller token's own `exp`.
//! The caller's token itself never reaches an agent in this mode.
//!
//! An assertion is minted once per caller token and cluster and reused while more than half its
//! lifetime is left, so neither side pays a signature per request (an ES256 signature and its
//! check cost hundreds of µs here, more than the rest of a small request); the request id rides
//! the stream's request head beside it.
//!
//! # Threat model
//!
//! - A holder of one cluster's agent token (a rogue agent) receives assertions bound to that
//!   cluster. It cannot use them anywhere else: the relay never accepts an assertion as a caller
//!   token (its assertion issuer is refused among callers' issuers), and another cluster's agent
//!   accepts only assertions whose `aud` names that cluster.
//! - A relay that routes a stream to the wrong tunnel (a bug, or a forged registry entry) cannot
//!   grant an identity there: the receiving agent checks `aud` against its own cluster.
//! - The agent trusts the assertion key: in this mode the relay vouches for callers, and whoever
//!   holds that key can act as any user on these clusters (docs/security.md says so). Clusters that
//!   must not trust the relay for identity use the caller-token mode instead.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use super::builtin::unix_now;
use super::{Caller, IssuerConfig, IssuerError, SigningKey};

/// Longest assertion lifetime an agent accepts.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Bytes of assertions kept for reuse (an assertion carries its caller's groups and extras, so
/// the cache is bounded by size, not count).
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The audience that binds an assertion to `cluster` and to no other.
pub fn cluster_audience(cluster: &str) -> String {
    format!("hawser:cluster:{cluster}")
}

impl IssuerConfig {
    /// How an agent for `cluster` trusts relay assertions from `issuer` (add the key source).
    pub fn relay_assertions(issuer: impl Into<String>, cluster: &str) -> Self {
        let mut config = Self::new(issuer, vec![cluster_audience(cluster)]);
        config.algorithms = vec!["ES256".to_owned()];
        config.max_token_lifetime = format!("{}s", MAX_LIFETIME.as_secs());
        config.assertion = true;
        config
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: String,
    sub: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    groups: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    extra: &'a std::collections::BTreeMap<String, Vec<String>>,
    /// The caller token's issuer, for the agent's audit line.
    caller_iss: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
}

/// A minted assertion, when it was minted and its `exp` (Unix seconds).
type Minted = (Arc<str>, u64, u64);

/// Mints assertions with the relay's assertion key, and reuses them.
pub struct AssertionMinter {
    key: SigningKey,
    issuer: String,
    lifetime: Duration,
    /// By (SHA-256 of the caller's token, cluster): the assertion, when it was minted, its `exp`.
    /// moka bounds it by bytes and drops entries once half the lifetime has passed.
    minted: moka::sync::Cache<([u8; 32], String), Minted>,
}

impl std::fmt::Debug for AssertionMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionMinter")
            .field("issuer", &self.issuer)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl AssertionMinter {
    /// A minter for `issuer` whose assertions live at most `lifetime` (capped at [`MAX_LIFETIME`]).
    pub fn new(key: SigningKey, issuer: String, lifetime: Duration) -> Self {
        let lifetime = lifetime.min(MAX_LIFETIME);
        let minted = moka::sync::Cache::builder()
            .max_capacity(CACHE_BYTES)
            .weigher(|(_, cluster): &([u8; 32], String), (assertion, _, _): &Minted| {
                u32::try_from(assertion.len() + cluster.len() + 64).unwrap_or(u32::MAX)
            })
            .time_to_live(lifetime / 2)
            .build();
        Self {
            key,
            issuer,
            lifetime,
            minted,
        }
    }

    /// The assertions' `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The signing key (the relay compares it with its other keys).
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The assertion key's public JWKS, for agents to trust.
    pub fn jwks(&self) -> serde_json::Value {
        self.key.jwks()
    }

    /// The assertion for `caller` (whose token has SHA-256 `token_digest`) at `cluster`.
    pub fn assertion(&self, caller: &Caller, token_digest: [u8; 32], cluster: &str) -> Result<Arc<str>, IssuerError> {
        let now = unix_now();
        let key = (token_digest, cluster.to_owned());
        let half = self.lifetime.as_secs() / 2;
        if let Some((assertion, minted, exp)) = self.minted.get(&key)
            && now < minted + half
            && now + 5 < exp
        {
            return Ok(assertion);
        }
        let exp = (now + self.lifetime.as_secs()).min(caller.expires_at);
        let identity = &caller.identity;
        let assertion: Arc<str> = self
            .key
            .sign(&Claims {
                iss: &self.issuer,
                aud: cluster_audience(cluster),
                sub: &identity.user,
                groups: &identity.groups,
                uid: identity.uid.as_deref(),
                extra: &identity.extra,
                caller_iss: &caller.issuer,
                iat: now,
                nbf: now,
                exp,
                jti: URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>()),
            })?
            .into();
        self.minted.insert(key, (assertion.clone(), now, exp));
        Ok(assertion)
    }
}

#[cfg(test)]
mod tests;
