//! The clusters a relay serves: each one's agent-token digests and how its agent learns who the
//! caller is. Replaced as a whole on a reload (SIGHUP), so one cluster's token can be revoked or
//! rotated without touching any other cluster's tunnels.
//!
//! An agent proves its cluster with that cluster's agent token. The relay keeps only the token's
//! SHA-256 and compares digests in constant time, so neither a config leak nor timing reveals a
//! token, and a token for cluster A can never register as cluster B (the digests are looked up by
//! the cluster the agent names).

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ClusterConfig;

/// One cluster's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    digests: Vec<[u8; 32]>,
    caller_audience: Option<String>,
}

/// Every cluster by name, as configured at one moment.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClusterTable(HashMap<String, Entry>);

/// The hex SHA-256 of an agent token, as the relay's config stores it.
pub fn token_digest_hex(token: &str) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(token.as_bytes()))
}

/// A configured digest (64 hex digits in either case, as config validation checks); anything
/// else is all zeros, which no token hashes to.
fn parse_hex(hex: &str) -> [u8; 32] {
    let mut digest = [0u8; 32];
    if let Ok(bytes) = data_encoding::HEXLOWER_PERMISSIVE.decode(hex.as_bytes())
        && bytes.len() == 32
    {
        digest.copy_from_slice(&bytes);
    }
    digest
}

impl ClusterTable {
    /// The table of `clusters` (validated by config).
    pub fn new(clusters: &[ClusterConfig]) -> Self {
        Self(
            clusters
                .iter()
                .map(|c| {
                    let entry = Entry {
                        digests: c.agent_token_sha256.all().into_iter().map(parse_hex).collect(),
                        caller_audience: c.caller_audience.clone(),
                    };
                    (c.name.clone(), entry)
                })
                .collect(),
        )
    }

    /// A table of clusters whose agents get relay assertions, from `(cluster, hex SHA-256)` pairs.
    #[cfg(test)]
    pub fn of_tokens<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let clusters: Vec<ClusterConfig> = pairs
            .into_iter()
            .map(|(name, hex)| ClusterConfig {
                name: name.to_owned(),
                agent_token_sha256: crate::config::Digests::One(hex.to_owned()),
                caller_audience: None,
            })
            .collect();
        Self::new(&clusters)
    }

    /// Every configured cluster's name, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Whether `cluster` is configured at all.
    pub fn knows(&self, cluster: &str) -> bool {
        self.0.contains_key(cluster)
    }

    /// The digest of `token` if it is one of `cluster`'s agent tokens.
    pub fn verify(&self, cluster: &str, token: &str) -> Option<[u8; 32]> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let entry = self.0.get(cluster)?;
        // Every digest is compared, so timing does not say which one matched.
        let matched = entry
            .digests
            .iter()
            .fold(subtle::Choice::from(0), |any, d| any | d.ct_eq(&digest));
        bool::from(matched).then_some(digest)
    }

    /// The audience a caller's token needs to be forwarded to `cluster`'s agent, if its agent
    /// takes callers' own tokens (`None`: it gets relay assertions).
    pub fn caller_audience(&self, cluster: &str) -> Option<&str> {
        self.0.get(cluster)?.caller_audience.as_deref()
    }

    /// The first cluster other than `cluster` whose caller audience is among `audiences`: a token
    /// that names it would be good there too, so it is never forwarded to `cluster`.
    pub fn bound_elsewhere(&self, cluster: &str, audiences: &[String]) -> Option<&str> {
        self.0
            .iter()
            .filter(|(name, _)| name.as_str() != cluster)
            .find(|(_, e)| e.caller_audience.as_ref().is_some_and(|a| audiences.contains(a)))
            .map(|(name, _)| name.as_str())
    }

    /// Whether a session of `cluster` admitted with `digest` under `caller_audience` still holds.
    pub fn admits(&self, cluster: &str, digest: &[u8; 32], caller_audience: Option<&str>) -> bool {
        self.0
            .get(cluster)
            .is_some_and(|e| e.digests.contains(digest) && e.caller_audience.as_deref() == caller_audience)
    }
}

/// The current table, swapped whole on a reload.
pub type Clusters = crate::reload::Snapshot<ClusterTable>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_of_one_cluster_cannot_serve_another() {
        let a = token_digest_hex("token-a");
        let b = token_digest_hex("token-b");
        let table = ClusterTable::of_tokens([("a", a.as_str()), ("b", b.as_str())]);
        assert!(table.verify("a", "token-a").is_some());
        assert!(table.verify("b", "token-a").is_none());
        assert!(table.verify("a", "token-b").is_none());
        assert!(table.verify("c", "token-a").is_none());
        assert!(table.knows("a") && !table.knows("c"));
    }

    fn cluster(name: &str, digests: &[&str], audience: Option<&str>) -> ClusterConfig {
        ClusterConfig {
            name: name.into(),
            agent_token_sha256: crate::config::Digests::Many(digests.iter().map(|d| token_digest_hex(d)).collect()),
            caller_audience: audience.map(str::to_owned),
        }
    }

    #[test]
    fn any_listed_token_serves_and_admission_follows_the_table() {
        let old = ClusterTable::new(&[cluster("a", &["old", "new"], None)]);
        let digest = old.verify("a", "old").expect("either token of a rotation");
        assert!(old.verify("a", "new").is_some());
        assert!(old.admits("a", &digest, None));
        let rotated = ClusterTable::new(&[cluster("a", &["new"], None)]);
        assert!(
            !rotated.admits("a", &digest, None),
            "a revoked token's session no longer holds"
        );
        let remoded = ClusterTable::new(&[cluster("a", &["old"], Some("aud-a"))]);
        assert!(
            !remoded.admits("a", &digest, None),
            "a changed trust model ends the session too"
        );
        assert!(remoded.admits("a", &digest, Some("aud-a")));
    }

    #[test]
    fn a_token_naming_another_clusters_audience_is_bound_elsewhere() {
        let table = ClusterTable::new(&[cluster("a", &["x"], Some("aud-a")), cluster("b", &["y"], Some("aud-b"))]);
        assert_eq!(table.caller_audience("a"), Some("aud-a"));
        assert_eq!(table.bound_elsewhere("a", &["aud-a".into()]), None);
        assert_eq!(table.bound_elsewhere("a", &["aud-a".into(), "aud-b".into()]), Some("b"));
    }
}
