//! Per-caller and per-source limits at the front door.
//!
//! - Concurrent exchanges per caller: one identity cannot take a whole
//!   tunnel's stream budget (every open watch, exec or port-forward counts
//!   until it ends). Over the limit: 429 with `Retry-After`.
//! - Failed authentications per source address: a token bucket per IPv4
//!   address or IPv6 /64; a source that ran it dry gets 429 for everything
//!   before any signature is checked, so guessing or a flood of bad tokens
//!   costs the relay little.
//!
//! - Agent connections that have not proved their cluster yet, per source, and refused agent
//!   hellos per source (the same token bucket as callers' failures, charged after the fact).
//!
//! The maps are sharded (dashmap); no guard is held across an `.await`, and
//! they stay bounded: in-flight entries leave at zero, source entries that have
//! refilled are swept (at most once a second) when the map is full, and past
//! that new sources go untracked.
//!
//! The token bucket is written here rather than taken from a rate-limit crate because an attempt
//! takes its token up front and gives it back on success (so a burst of concurrent bad requests
//! cannot overshoot, while good ones cost nothing), which those crates do not offer.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Most source addresses tracked before full buckets are swept.
const SOURCES_BEFORE_SWEEP: usize = 65_536;

/// Things in flight per key: exchanges per caller, unproven agent connections per source.
pub struct InFlight<K: Eq + std::hash::Hash> {
    in_flight: DashMap<K, usize>,
}

impl<K: Eq + std::hash::Hash> Default for InFlight<K> {
    fn default() -> Self {
        Self {
            in_flight: DashMap::new(),
        }
    }
}

/// In-flight exchanges per caller.
pub type CallerStreams = InFlight<String>;

/// One admitted thing in flight; dropping it frees its key's slot.
pub struct Lease<K: Eq + std::hash::Hash> {
    owner: Arc<InFlight<K>>,
    key: K,
}

impl<K: Eq + std::hash::Hash + Clone> InFlight<K> {
    /// Admits one more for `key` unless it already has `max` (0: no limit).
    pub fn acquire(self: &Arc<Self>, key: &K, max: usize) -> Option<Lease<K>> {
        let mut count = self.in_flight.entry(key.clone()).or_insert(0);
        if max != 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(Lease {
            owner: self.clone(),
            key: key.clone(),
        })
    }

    /// How many `key` has in flight.
    #[cfg(test)]
    pub fn count(&self, key: &K) -> usize {
        self.in_flight.get(key).map_or(0, |c| *c)
    }
}

impl<K: Eq + std::hash::Hash> Drop for Lease<K> {
    fn drop(&mut self) {
        self.owner.in_flight.remove_if_mut(&self.key, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

/// A token bucket of failed authentications per source (an IPv4 address, or an IPv6 /64).
///
/// Each attempt takes a token when it starts ([`AuthFailures::attempt`]), so a burst of
/// concurrent bad requests cannot all pass the check before the first failure is counted; an
/// attempt that succeeds (or that failed for a reason that is not the caller's) gives it back.
pub struct AuthFailures {
    per_minute: u32,
    buckets: DashMap<IpAddr, (f64, Instant)>,
    /// When the map was last swept, so a flood of sources costs one sweep per second at most.
    last_sweep: Mutex<Instant>,
}

/// One authentication attempt holding a token of its source's bucket, spent unless refunded.
/// Clones share it: the failed-auth step keeps one, and the authenticating step settles it.
#[derive(Clone)]
pub struct Attempt(Arc<Ticket>);

struct Ticket {
    limiter: Arc<AuthFailures>,
    /// The bucket the token came from; `None` when the source is untracked (or no limit is set).
    source: Option<IpAddr>,
    refunded: AtomicBool,
}

impl Attempt {
    /// The caller failed to authenticate: the token stays spent.
    pub fn failed(&self) {}

    /// The attempt did not fail through the caller's fault: its token goes back (once).
    pub fn refund(&self) {
        if self.0.refunded.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(source) = self.0.source {
            self.0.limiter.give_back(source);
        }
    }

    /// Whether the token went back, that is whether the caller authenticated.
    pub fn refunded(&self) -> bool {
        self.0.refunded.load(Ordering::Relaxed)
    }
}

impl AuthFailures {
    /// Allows `per_minute` failures per source (also the burst); 0 disables the limit.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: DashMap::new(),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Starts an attempt from `source`, or `None` if its budget is spent.
    pub fn attempt(self: &Arc<Self>, source: IpAddr) -> Option<Attempt> {
        self.attempt_at(source, Instant::now())
    }

    /// Whether `source` has no failure left in its budget (nothing is taken).
    pub fn is_spent(&self, source: IpAddr) -> bool {
        if self.per_minute == 0 {
            return false;
        }
        let now = Instant::now();
        self.buckets
            .get(&bucket_key(source))
            .is_some_and(|bucket| self.refilled(bucket.0, bucket.1, now) < 1.0)
    }

    /// Counts one failure against `source` after the fact (for checks that cannot take a token
    /// up front without delaying a burst of legitimate attempts, such as an agents' reconnect storm).
    pub fn charge(&self, source: IpAddr) {
        let _spent = self.take(source, Instant::now());
    }

    /// How long until a spent source may try again, rounded up to whole seconds.
    pub fn retry_after(&self) -> Duration {
        let per_token = 60.0 / f64::from(self.per_minute.max(1));
        Duration::from_secs(per_token.ceil() as u64)
    }

    fn refilled(&self, tokens: f64, since: Instant, now: Instant) -> f64 {
        let capacity = f64::from(self.per_minute);
        (tokens + now.saturating_duration_since(since).as_secs_f64() * capacity / 60.0).min(capacity)
    }

    fn attempt_at(self: &Arc<Self>, source: IpAddr, now: Instant) -> Option<Attempt> {
        let source = self.take(source, now)?;
        Some(Attempt(Arc::new(Ticket {
            limiter: self.clone(),
            source,
            refunded: AtomicBool::new(false),
        })))
    }

    /// Takes a token from `source`'s bucket: `None` if there is none left, else the bucket it
    /// came from (`Some(None)`: untracked, nothing taken).
    fn take(&self, source: IpAddr, now: Instant) -> Option<Option<IpAddr>> {
        if self.per_minute == 0 {
            return Some(None);
        }
        let source = bucket_key(source);
        if self.buckets.len() >= SOURCES_BEFORE_SWEEP && !self.buckets.contains_key(&source) {
            self.sweep(now);
            if self.buckets.len() >= SOURCES_BEFORE_SWEEP {
                // Still full of sources with recent failures: this new one goes untracked
                // rather than the map growing without bound.
                return Some(None);
            }
        }
        let capacity = f64::from(self.per_minute);
        let mut bucket = self.buckets.entry(source).or_insert((capacity, now));
        let tokens = self.refilled(bucket.0, bucket.1, now);
        if tokens < 1.0 {
            *bucket = (tokens, now);
            return None;
        }
        *bucket = (tokens - 1.0, now);
        Some(Some(source))
    }

    /// Puts back a token taken from `source`'s bucket.
    fn give_back(&self, source: IpAddr) {
        let capacity = f64::from(self.per_minute);
        if let Some(mut bucket) = self.buckets.get_mut(&source) {
            bucket.0 = (bucket.0 + 1.0).min(capacity);
        }
    }

    /// Drops sources whose buckets have refilled, at most once a second.
    fn sweep(&self, now: Instant) {
        {
            let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
            if now.saturating_duration_since(*last) < Duration::from_secs(1) {
                return;
            }
            *last = now;
        }
        let capacity = f64::from(self.per_minute);
        self.buckets
            .retain(|_, (tokens, since)| self.refilled(*tokens, *since, now) < capacity);
    }
}

/// The source a bucket belongs to: IPv4 as is (also when mapped into IPv6), IPv6 by its /64,
/// since one host usually holds a whole /64 and could otherwise rotate addresses freely.
pub(crate) fn bucket_key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts a failed attempt, if one was allowed.
    fn fail(attempt: Option<Attempt>) {
        if let Some(attempt) = attempt {
            attempt.failed();
        }
    }

    #[test]
    fn caller_slots_are_counted_and_freed() {
        let streams = Arc::new(CallerStreams::default());
        let (alice, bob, carol) = ("alice".to_owned(), "bob".to_owned(), "carol".to_owned());
        let a1 = streams.acquire(&alice, 2).unwrap();
        let _a2 = streams.acquire(&alice, 2).unwrap();
        assert!(streams.acquire(&alice, 2).is_none(), "third exchange over the limit");
        let _b = streams.acquire(&bob, 2).expect("other callers are unaffected");
        drop(a1);
        assert_eq!(streams.count(&alice), 1);
        let _a3 = streams.acquire(&alice, 2).expect("a freed slot can be reused");
        assert!(streams.acquire(&carol, 0).is_some(), "0 means no limit");
    }

    #[test]
    fn entries_leave_at_zero() {
        let streams = Arc::new(CallerStreams::default());
        drop(streams.acquire(&"alice".to_owned(), 5));
        assert!(streams.in_flight.is_empty());
    }

    #[test]
    fn failures_drain_the_bucket_which_refills_over_time() {
        let limit = Arc::new(AuthFailures::new(6));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..6 {
            limit.attempt_at(ip, t0).expect("within budget").failed();
        }
        assert!(
            limit.attempt_at(ip, t0).is_none(),
            "six failures at once empty the bucket"
        );
        assert!(limit.attempt_at(other, t0).is_some(), "another source is unaffected");
        assert!(limit.attempt_at(ip, t0 + Duration::from_secs(9)).is_none());
        assert!(
            limit.attempt_at(ip, t0 + Duration::from_secs(10)).is_some(),
            "one token per 10 s at 6/min"
        );
        assert_eq!(limit.retry_after(), Duration::from_secs(10));
        let off = Arc::new(AuthFailures::new(0));
        for _ in 0..100 {
            fail(off.attempt_at(ip, t0));
        }
        assert!(off.attempt_at(ip, t0).is_some());
    }

    #[test]
    fn concurrent_attempts_take_their_tokens_up_front_and_successes_refund() {
        let limit = Arc::new(AuthFailures::new(3));
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let t0 = Instant::now();
        let held: Vec<_> = (0..3).map(|_| limit.attempt_at(ip, t0).expect("budget")).collect();
        assert!(
            limit.attempt_at(ip, t0).is_none(),
            "a fourth concurrent attempt is refused before any has failed"
        );
        for attempt in held {
            attempt.refund();
        }
        for _ in 0..3 {
            limit.attempt_at(ip, t0).expect("refunded").refund();
        }
        assert!(limit.attempt_at(ip, t0).is_some(), "successes never spend the budget");
    }

    #[test]
    fn an_attempt_and_its_clones_give_back_one_token_at_most() {
        let limit = Arc::new(AuthFailures::new(2));
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let t0 = Instant::now();
        fail(limit.attempt_at(ip, t0));
        let attempt = limit.attempt_at(ip, t0).expect("budget");
        let clone = attempt.clone();
        assert!(!clone.refunded());
        attempt.refund();
        clone.refund();
        assert!(clone.refunded(), "a clone sees the refund");
        limit.attempt_at(ip, t0).expect("the refunded token").failed();
        assert!(limit.attempt_at(ip, t0).is_none(), "two refunds gave back one token");
    }

    #[test]
    fn ipv6_sources_share_a_bucket_per_64_and_mapped_ipv4_is_ipv4() {
        let limit = Arc::new(AuthFailures::new(2));
        let t0 = Instant::now();
        fail(limit.attempt_at("2001:db8:1:2::1".parse().unwrap(), t0));
        fail(limit.attempt_at("2001:db8:1:2:ffff::9".parse().unwrap(), t0));
        assert!(limit.attempt_at("2001:db8:1:2::abcd".parse().unwrap(), t0).is_none());
        assert!(limit.attempt_at("2001:db8:1:3::1".parse().unwrap(), t0).is_some());
        fail(limit.attempt_at("::ffff:192.0.2.7".parse().unwrap(), t0));
        fail(limit.attempt_at("192.0.2.7".parse().unwrap(), t0));
        assert!(limit.attempt_at("192.0.2.7".parse().unwrap(), t0).is_none());
    }

    #[test]
    fn the_map_stays_bounded_under_a_flood_of_sources() {
        let limit = Arc::new(AuthFailures::new(1));
        let t0 = Instant::now();
        for i in 0..(SOURCES_BEFORE_SWEEP as u32 + 1000) {
            fail(limit.attempt_at(IpAddr::V4(i.into()), t0));
        }
        assert!(limit.buckets.len() <= SOURCES_BEFORE_SWEEP);
    }
}
