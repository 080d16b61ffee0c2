//! Per-caller and per-source limits at the front door.
//!
//! - Concurrent exchanges per caller: one identity cannot take a whole
//!   tunnel's stream budget (every open watch, exec or port-forward counts
//!   until it ends). Over the limit: 429 with `Retry-After`.
//! - Failed authentications per source address: a token bucket per IP; a
//!   source that ran it dry gets 429 for everything before any signature is
//!   checked, so guessing or a flood of bad tokens costs the relay little.
//!
//! Both maps are sharded (dashmap); no guard is held across an `.await`, and
//! both stay bounded: caller entries leave at zero, source entries that have
//! refilled are swept when the map grows.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Most source addresses tracked before full buckets are swept.
const SOURCES_BEFORE_SWEEP: usize = 65_536;

/// In-flight exchanges per caller.
#[derive(Default)]
pub struct CallerStreams {
    in_flight: DashMap<String, usize>,
}

/// One admitted exchange; dropping it frees the caller's slot.
pub struct CallerLease {
    owner: Arc<CallerStreams>,
    caller: String,
}

impl CallerStreams {
    /// Admits one more exchange for `caller` unless it already has `max` (0: no limit).
    pub fn acquire(self: &Arc<Self>, caller: &str, max: usize) -> Option<CallerLease> {
        let mut count = self.in_flight.entry(caller.to_owned()).or_insert(0);
        if max != 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(CallerLease {
            owner: self.clone(),
            caller: caller.to_owned(),
        })
    }

    /// The exchanges `caller` has in flight.
    #[cfg(test)]
    pub fn count(&self, caller: &str) -> usize {
        self.in_flight.get(caller).map_or(0, |c| *c)
    }
}

impl Drop for CallerLease {
    fn drop(&mut self) {
        self.owner.in_flight.remove_if_mut(&self.caller, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

/// A token bucket of failed authentications per source address.
pub struct AuthFailures {
    per_minute: u32,
    buckets: DashMap<IpAddr, (f64, Instant)>,
}

impl AuthFailures {
    /// Allows `per_minute` failures per source (also the burst); 0 disables the limit.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: DashMap::new(),
        }
    }

    /// Whether `source` may try to authenticate now.
    pub fn allowed(&self, source: IpAddr) -> bool {
        self.allowed_at(source, Instant::now())
    }

    /// Counts one failed authentication from `source`.
    pub fn failed(&self, source: IpAddr) {
        self.failed_at(source, Instant::now());
    }

    /// How long until `source` may try again, rounded up to whole seconds.
    pub fn retry_after(&self) -> Duration {
        let per_token = 60.0 / f64::from(self.per_minute.max(1));
        Duration::from_secs(per_token.ceil() as u64)
    }

    fn refilled(&self, tokens: f64, since: Instant, now: Instant) -> f64 {
        let capacity = f64::from(self.per_minute);
        (tokens + now.saturating_duration_since(since).as_secs_f64() * capacity / 60.0).min(capacity)
    }

    fn allowed_at(&self, source: IpAddr, now: Instant) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        match self.buckets.get(&source) {
            Some(bucket) => self.refilled(bucket.0, bucket.1, now) >= 1.0,
            None => true,
        }
    }

    fn failed_at(&self, source: IpAddr, now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        if self.buckets.len() >= SOURCES_BEFORE_SWEEP {
            let capacity = f64::from(self.per_minute);
            self.buckets
                .retain(|_, (tokens, since)| self.refilled(*tokens, *since, now) < capacity);
        }
        let capacity = f64::from(self.per_minute);
        let mut bucket = self.buckets.entry(source).or_insert((capacity, now));
        let tokens = self.refilled(bucket.0, bucket.1, now);
        *bucket = ((tokens - 1.0).max(0.0), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_slots_are_counted_and_freed() {
        let streams = Arc::new(CallerStreams::default());
        let a1 = streams.acquire("alice", 2).unwrap();
        let _a2 = streams.acquire("alice", 2).unwrap();
        assert!(streams.acquire("alice", 2).is_none(), "third exchange over the limit");
        let _b = streams.acquire("bob", 2).expect("other callers are unaffected");
        drop(a1);
        assert_eq!(streams.count("alice"), 1);
        let _a3 = streams.acquire("alice", 2).expect("a freed slot can be reused");
        assert!(streams.acquire("carol", 0).is_some(), "0 means no limit");
    }

    #[test]
    fn entries_leave_at_zero() {
        let streams = Arc::new(CallerStreams::default());
        drop(streams.acquire("alice", 5));
        assert!(streams.in_flight.is_empty());
    }

    #[test]
    fn failures_drain_the_bucket_which_refills_over_time() {
        let limit = AuthFailures::new(6);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..6 {
            assert!(limit.allowed_at(ip, t0));
            limit.failed_at(ip, t0);
        }
        assert!(!limit.allowed_at(ip, t0), "six failures at once empty the bucket");
        assert!(limit.allowed_at(other, t0), "another source is unaffected");
        assert!(!limit.allowed_at(ip, t0 + Duration::from_secs(9)));
        assert!(
            limit.allowed_at(ip, t0 + Duration::from_secs(10)),
            "one token per 10 s at 6/min"
        );
        assert_eq!(limit.retry_after(), Duration::from_secs(10));
        let off = AuthFailures::new(0);
        for _ in 0..100 {
            off.failed_at(ip, t0);
        }
        assert!(off.allowed_at(ip, t0));
    }
}
