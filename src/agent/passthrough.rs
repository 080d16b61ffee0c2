//! Passthrough mode: the caller brings its own cluster credential.
//!
//! The caller authenticates to the relay (and to this agent) with its relay
//! JWT in `Authorization`, and carries a token the cluster itself issued in
//! `Hawser-Cluster-Authorization: Bearer <token>`. Before use, the agent asks
//! the apiserver whether that token is valid (a TokenReview, with the
//! configured audiences) and refuses it otherwise, so a bad token never rides
//! the tunnel further than here. The request then leaves with the cluster
//! token as its only credential: every caller `Impersonate-*`, `X-Remote-*`
//! and `Authorization` header is stripped (see
//! [`crate::impersonation::apply_passthrough`]) and the agent adds nothing of
//! its own, so RBAC sees the token's identity and never the agent's.
//!
//! Reviews are cached briefly by the token's SHA-256 (never the token), so a
//! watch-heavy client does not cost one review per request; refusals are
//! remembered the same way, so repeating a bad token costs one review per
//! `cache_secs`, while "the apiserver cannot say" (503) is never remembered. The cache only
//! skips the agent's own pre-check: the apiserver still authenticates the
//! forwarded token on every request, so a revoked token is refused there at
//! once.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use super::apiserver::Apiserver;
use crate::config::PassthroughConfig;
use crate::impersonation::CLUSTER_AUTHORIZATION;
use crate::status::HttpError;

/// Most reviews kept; past it, expired ones are dropped, then all.
const CACHE_ENTRIES: usize = 4096;

/// The identity a TokenReview found for a cluster token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    /// The token's username.
    pub user: String,
    /// The token's groups.
    pub groups: Vec<String>,
}

/// Checks cluster tokens with TokenReview and remembers the answers briefly.
pub struct TokenReviewer {
    audiences: Vec<String>,
    ttl: Duration,
    /// Answers by token SHA-256: accepted, or refused (401); never "cannot say" (503).
    cache: DashMap<[u8; 32], (Result<Reviewed, HttpError>, Instant)>,
}

/// The cluster token a request carries, if any: `Bearer <token>` in exactly one
/// `Hawser-Cluster-Authorization` header.
pub fn cluster_token(headers: &HeaderMap) -> Result<Option<String>, HttpError> {
    let mut values = headers.get_all(CLUSTER_AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(HttpError::bad_request(
            "more than one Hawser-Cluster-Authorization header",
        ));
    }
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| HttpError::unauthorized("Hawser-Cluster-Authorization must be \"Bearer <token>\""))?;
    Ok(Some(token.to_owned()))
}

impl TokenReviewer {
    /// A reviewer with the configured audiences and cache lifetime.
    pub fn new(config: &PassthroughConfig) -> Self {
        Self {
            audiences: config.audiences.clone(),
            ttl: Duration::from_secs(config.cache_secs),
            cache: DashMap::new(),
        }
    }

    /// The token's identity if the apiserver accepts it; 401 if it does not,
    /// 503 if the apiserver cannot say (never a pass on doubt).
    pub async fn review(&self, apiserver: &Apiserver, token: &str) -> Result<Reviewed, HttpError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cached(&key) {
            return hit;
        }
        let mut spec = serde_json::json!({ "token": token });
        if !self.audiences.is_empty() {
            spec["audiences"] = serde_json::json!(self.audiences);
        }
        let review = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": spec,
        });
        let (status, answer) = apiserver
            .post_json("/apis/authentication.k8s.io/v1/tokenreviews", &review)
            .await
            .map_err(|e| HttpError::unavailable(format!("cannot check the cluster token: {e}")))?;
        if !status.is_success() {
            return Err(HttpError::unavailable(format!(
                "cannot check the cluster token: TokenReview answered {status}: {}",
                answer["message"].as_str().unwrap_or_default()
            )));
        }
        // Refusals are remembered too, so a caller repeating a bad token costs one review per
        // cache_secs, not one per request.
        let reviewed = self.judge(&answer["status"]);
        if !self.ttl.is_zero() {
            self.remember(key, reviewed.clone());
        }
        reviewed
    }

    /// Reads a TokenReview status: authenticated, with a user, and (when
    /// audiences were asked for) at least one of them granted.
    fn judge(&self, status: &serde_json::Value) -> Result<Reviewed, HttpError> {
        if status["authenticated"] != true {
            let why = status["error"]
                .as_str()
                .filter(|e| !e.is_empty())
                .unwrap_or("not authenticated");
            return Err(HttpError::unauthorized(format!(
                "the cluster token was rejected: {why}"
            )));
        }
        if !self.audiences.is_empty() {
            let granted = status["audiences"].as_array().into_iter().flatten();
            if !granted
                .filter_map(|a| a.as_str())
                .any(|a| self.audiences.iter().any(|w| w == a))
            {
                return Err(HttpError::unauthorized(
                    "the cluster token was rejected: none of its audiences is accepted here",
                ));
            }
        }
        let user = status["user"]["username"].as_str().unwrap_or_default();
        if user.is_empty() {
            return Err(HttpError::unauthorized("the cluster token was rejected: no username"));
        }
        let groups = status["user"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect();
        Ok(Reviewed {
            user: user.to_owned(),
            groups,
        })
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Result<Reviewed, HttpError>> {
        let hit = self.cache.get(key)?;
        let (reviewed, at) = hit.value();
        (at.elapsed() < self.ttl).then(|| reviewed.clone())
    }

    fn remember(&self, key: [u8; 32], reviewed: Result<Reviewed, HttpError>) {
        if self.cache.len() >= CACHE_ENTRIES {
            let ttl = self.ttl;
            self.cache.retain(|_, (_, at)| at.elapsed() < ttl);
            if self.cache.len() >= CACHE_ENTRIES {
                self.cache.clear();
            }
        }
        self.cache.insert(key, (reviewed, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reviewer(audiences: &[&str]) -> TokenReviewer {
        TokenReviewer::new(&PassthroughConfig {
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            cache_secs: 10,
        })
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CLUSTER_AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn refusals_are_remembered_like_acceptances() {
        let r = reviewer(&[]);
        let refused = r.judge(&serde_json::json!({"authenticated": false, "error": "expired"}));
        let key = [7u8; 32];
        r.remember(key, refused.clone());
        assert_eq!(r.cached(&key), Some(refused));
        assert_eq!(
            r.cached(&key).unwrap().unwrap_err().code,
            http::StatusCode::UNAUTHORIZED
        );
        let accepted = r.judge(&serde_json::json!({"authenticated": true, "user": {"username": "u"}}));
        r.remember([8u8; 32], accepted.clone());
        assert_eq!(r.cached(&[8u8; 32]), Some(accepted));
        assert_eq!(r.cached(&[9u8; 32]), None);
    }

    #[test]
    fn cluster_token_is_one_bearer_header() {
        assert_eq!(cluster_token(&headers(&[])).unwrap(), None);
        assert_eq!(
            cluster_token(&headers(&["Bearer abc"])).unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(
            cluster_token(&headers(&["Bearer a", "Bearer b"]))
                .unwrap_err()
                .code
                .as_u16(),
            400
        );
        for bad in ["abc", "Basic abc", "Bearer ", "Bearer a b"] {
            assert_eq!(cluster_token(&headers(&[bad])).unwrap_err().code.as_u16(), 401, "{bad}");
        }
    }

    #[test]
    fn judge_requires_authenticated_user_and_audience() {
        let r = reviewer(&["hawser"]);
        let ok = serde_json::json!({"authenticated": true, "audiences": ["hawser"],
            "user": {"username": "system:serviceaccount:ns:sa", "groups": ["system:serviceaccounts"]}});
        assert_eq!(r.judge(&ok).unwrap().user, "system:serviceaccount:ns:sa");
        let denied = serde_json::json!({"authenticated": false, "error": "token expired"});
        assert!(r.judge(&denied).unwrap_err().message.contains("token expired"));
        let wrong_aud = serde_json::json!({"authenticated": true, "audiences": ["other"], "user": {"username": "u"}});
        assert_eq!(r.judge(&wrong_aud).unwrap_err().code.as_u16(), 401);
        let no_user = serde_json::json!({"authenticated": true, "audiences": ["hawser"], "user": {}});
        assert_eq!(r.judge(&no_user).unwrap_err().code.as_u16(), 401);
        let any_aud = reviewer(&[]);
        let plain = serde_json::json!({"authenticated": true, "user": {"username": "u"}});
        assert_eq!(any_aud.judge(&plain).unwrap().groups, Vec::<String>::new());
    }

    #[test]
    fn cache_expires_and_stays_bounded() {
        let r = TokenReviewer::new(&PassthroughConfig {
            audiences: vec![],
            cache_secs: 0,
        });
        r.remember(
            [1; 32],
            Ok(Reviewed {
                user: "u".into(),
                groups: vec![],
            }),
        );
        assert_eq!(r.cached(&[1; 32]), None, "a zero lifetime never hits");
        let r = reviewer(&[]);
        for i in 0..(CACHE_ENTRIES + 10) {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_be_bytes());
            r.remember(
                key,
                Ok(Reviewed {
                    user: "u".into(),
                    groups: vec![],
                }),
            );
        }
        assert!(r.cache.len() <= CACHE_ENTRIES);
    }
}
