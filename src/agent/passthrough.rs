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
//!
//! Threat: one valid relay JWT plus a new random cluster token per request
//! never hits that cache, and each request would cost the apiserver a
//! TokenReview (an outside review made 500 in 2 s). So:
//! - reviews are single-flight: concurrent reviews of one token make one
//!   TokenReview and the others wait for its answer, also with
//!   `cache_secs = 0`, where the cache keeps nothing and only joins loads in
//!   flight;
//! - a review that goes to the apiserver (not a cache hit, not a waiter)
//!   takes a token from its caller's bucket (the relay identity's username,
//!   `passthrough.reviews_per_caller_per_minute`, also the burst); an empty
//!   bucket means 429 with `Retry-After` and no review. The check runs as the
//!   load starts, so a waiter that joins a load in that instant shares its
//!   429: only callers presenting the very same cluster token can meet that;
//! - a token TokenReview refused answers 401 marked as the caller's failed
//!   authentication ([`crate::proto::AUTH_FAILED_HEADER`]), so the relay can
//!   charge the caller's failed-authentication budget.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, StatusCode};
use moka::future::Cache;
use sha2::{Digest, Sha256};

use super::apiserver::Apiserver;
use super::failure::Failure;
use crate::config::PassthroughConfig;
use crate::impersonation::CLUSTER_AUTHORIZATION;

/// Most reviews kept; past it the cache evicts.
const CACHE_ENTRIES: u64 = 4096;
/// Rate checks between sweeps of callers whose bucket is full again, so the
/// limiter holds the callers of the last minute plus at most this many.
const SWEEP_EVERY: u64 = 256;

/// The identity a TokenReview found for a cluster token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    /// The token's username.
    pub user: String,
    /// The token's groups.
    pub groups: Vec<String>,
}

/// A review's answer worth remembering: accepted, or refused (401).
type Answer = Result<Reviewed, Failure>;

/// Why a review has no answer worth remembering (429 or 503); every caller
/// waiting on that review gets it, nobody later does.
#[derive(Debug)]
struct Unanswered(Failure);

/// Reviews left per caller (relay username).
type CallerLimiter<C> = RateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Where TokenReviews go: the apiserver, or a fake in unit tests.
pub trait ReviewApi: Sync {
    /// Posts a TokenReview: the HTTP status and the JSON answer, or why none came.
    fn token_review(
        &self,
        review: &serde_json::Value,
    ) -> impl Future<Output = Result<(StatusCode, serde_json::Value), String>> + Send;
}

impl ReviewApi for Apiserver {
    fn token_review(
        &self,
        review: &serde_json::Value,
    ) -> impl Future<Output = Result<(StatusCode, serde_json::Value), String>> + Send {
        self.post_json("/apis/authentication.k8s.io/v1/tokenreviews", review)
    }
}

/// Checks cluster tokens with TokenReview, one review per token at a time,
/// remembers the answers briefly and limits each caller's reviews.
pub struct TokenReviewer<C: Clock = DefaultClock> {
    audiences: Vec<String>,
    /// Answers by token SHA-256. moka rather than a map of our own: its
    /// `try_get_with` makes concurrent loads of one key a single flight (a
    /// cancelled loader hands over to a waiter), with TTL and a bounded size,
    /// and it spawns no threads or tasks.
    cache: Cache<[u8; 32], Answer>,
    /// Reviews per caller; `None` when unlimited. governor: a keyed GCRA
    /// bucket that is lock-free per key and can forget idle keys.
    limiter: Option<CallerLimiter<C>>,
    per_minute: u32,
    checks: AtomicU64,
}

/// The cluster token a request carries, if any: `Bearer <token>` in exactly one
/// `Hawser-Cluster-Authorization` header.
pub fn cluster_token(headers: &HeaderMap) -> Result<Option<String>, Failure> {
    let mut values = headers.get_all(CLUSTER_AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Failure::SeveralClusterTokens);
    }
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or(Failure::MalformedClusterToken)?;
    Ok(Some(token.to_owned()))
}

impl TokenReviewer {
    /// A reviewer with the configured audiences, cache lifetime and per-caller rate.
    pub fn new(config: &PassthroughConfig) -> Self {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock> TokenReviewer<C> {
    /// Like [`TokenReviewer::new`], with the rate limiter on `clock`.
    pub fn with_clock(config: &PassthroughConfig, clock: C) -> Self {
        let ttl = Duration::from_secs(config.cache_secs);
        // Capacity 0 disables moka's map but not its single flight: loads in
        // flight are still joined, and no answer is kept after.
        let cache = if ttl.is_zero() {
            Cache::builder().max_capacity(0).build()
        } else {
            Cache::builder().max_capacity(CACHE_ENTRIES).time_to_live(ttl).build()
        };
        let limiter = NonZeroU32::new(config.reviews_per_caller_per_minute)
            .map(|n| RateLimiter::dashmap_with_clock(Quota::per_minute(n), clock));
        Self {
            audiences: config.audiences.clone(),
            cache,
            limiter,
            per_minute: config.reviews_per_caller_per_minute,
            checks: AtomicU64::new(0),
        }
    }

    /// The token's identity if the apiserver accepts it; 401 if it does not,
    /// 429 if `caller` is over its review rate, 503 if the apiserver cannot
    /// say (never a pass on doubt).
    pub async fn review(&self, api: &impl ReviewApi, caller: &str, token: &str) -> Result<Reviewed, Failure> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.cache
            .try_get_with(key, self.load(api, caller, token))
            .await
            .map_err(|e| e.0.clone())?
    }

    /// One TokenReview, if `caller` has a review left.
    async fn load(&self, api: &impl ReviewApi, caller: &str, token: &str) -> Result<Answer, Unanswered> {
        self.admit(caller)?;
        let mut spec = serde_json::json!({ "token": token });
        if !self.audiences.is_empty() {
            spec["audiences"] = serde_json::json!(self.audiences);
        }
        let review = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": spec,
        });
        let (status, answer) = api
            .token_review(&review)
            .await
            .map_err(|e| Unanswered(Failure::ReviewUnavailable(e)))?;
        if !status.is_success() {
            return Err(Unanswered(Failure::ReviewUnavailable(format!(
                "TokenReview answered {status}: {}",
                answer["message"].as_str().unwrap_or_default()
            ))));
        }
        // Refusals are remembered too, so a caller repeating a bad token costs one review per
        // cache_secs, not one per request.
        Ok(self.judge(&answer["status"]))
    }

    /// Takes one review from `caller`'s bucket, or 429 naming the limit.
    fn admit(&self, caller: &str) -> Result<(), Unanswered> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&caller.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            Unanswered(Failure::ReviewsExhausted {
                caller: caller.to_owned(),
                per_minute: self.per_minute,
                wait,
            })
        })
    }

    /// Reads a TokenReview status: authenticated, with a user, and (when
    /// audiences were asked for) at least one of them granted.
    fn judge(&self, status: &serde_json::Value) -> Result<Reviewed, Failure> {
        if status["authenticated"] != true {
            let why = status["error"]
                .as_str()
                .filter(|e| !e.is_empty())
                .unwrap_or("not authenticated");
            return Err(refused(why));
        }
        if !self.audiences.is_empty() {
            let granted = status["audiences"].as_array().into_iter().flatten();
            if !granted
                .filter_map(|a| a.as_str())
                .any(|a| self.audiences.iter().any(|w| w == a))
            {
                return Err(refused("none of its audiences is accepted here"));
            }
        }
        let user = status["user"]["username"].as_str().unwrap_or_default();
        if user.is_empty() {
            return Err(refused("no username"));
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
}

/// A cluster token TokenReview refused: the caller's failed authentication.
fn refused(why: impl Into<String>) -> Failure {
    Failure::ClusterTokenRefused(why.into())
}

#[cfg(test)]
mod tests;
