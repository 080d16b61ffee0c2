//! Tokens already verified, so a caller's every request does not pay for a signature check.
//!
//! An ES256 verification costs about 325 µs of CPU here (docs/benchmarks.md), and both the relay
//! and the agent verify every request's token. A token that passed every check is remembered by
//! its SHA-256 (never the token itself) with the identity it produced, until the earlier of its
//! `exp` and [`TTL`] after it was verified. Only the exact same bytes hit; anything else takes the
//! full path. An entry also names the key set that verified it (issuer, and the JWKS fetch
//! generation), and is used only while that key set is still the issuer's current one, so a key
//! rotated out of a JWKS stops its tokens here as soon as the new set is fetched. The table holds at most [`CAPACITY`] tokens: when full, expired entries are swept (at most
//! once a second), and a token that still finds no room is simply not remembered.

use std::time::Duration;

use dashmap::DashMap;
use sha2::{Digest, Sha256};

use super::Caller;
use super::clock::Clock;

/// How long a verified token is remembered at most.
pub const TTL: Duration = Duration::from_secs(30);
/// Most tokens remembered at once.
pub const CAPACITY: usize = 10_000;

/// Verified tokens by SHA-256.
#[derive(Default)]
pub(crate) struct Verified {
    tokens: DashMap<[u8; 32], Entry>,
    /// Monotonic time of the last sweep, in milliseconds.
    last_sweep_ms: std::sync::atomic::AtomicU64,
}

/// The key set a token was verified with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeysSeen {
    /// Index of the issuer.
    pub(crate) issuer: usize,
    /// Its key set's generation (0 for static keys).
    pub(crate) generation: u64,
}

struct Entry {
    caller: Caller,
    keys: KeysSeen,
    /// Unix seconds at which the entry stops being used: min(exp, verified + TTL).
    until: u64,
}

/// The key a token is remembered by.
pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Verified {
    /// The identity of a token verified before, if it is still within its time.
    ///
    /// `current` says whether the key set that verified it is still the issuer's.
    pub(crate) fn get(&self, key: &[u8; 32], current: impl Fn(KeysSeen) -> bool, clock: &dyn Clock) -> Option<Caller> {
        let now = clock.unix_seconds();
        let entry = self.tokens.get(key)?;
        let keys = entry.keys;
        if now < entry.until && current(keys) {
            return Some(entry.caller.clone());
        }
        drop(entry);
        self.tokens.remove_if(key, |_, e| e.keys == keys);
        None
    }

    /// Remembers a token that passed every check, with its `exp` (Unix seconds).
    pub(crate) fn insert(&self, key: [u8; 32], caller: &Caller, keys: KeysSeen, clock: &dyn Clock) {
        let exp = caller.expires_at;
        let now = clock.unix_seconds();
        let until = exp.min(now.saturating_add(TTL.as_secs()));
        if until <= now {
            return;
        }
        if self.tokens.len() >= CAPACITY {
            self.sweep(now, clock);
            if self.tokens.len() >= CAPACITY {
                return;
            }
        }
        self.tokens.insert(
            key,
            Entry {
                caller: caller.clone(),
                keys,
                until,
            },
        );
    }

    fn sweep(&self, now: u64, clock: &dyn Clock) {
        use std::sync::atomic::Ordering;
        let ms = u64::try_from(clock.monotonic().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if ms.saturating_sub(last) < 1000 && last != 0 {
            return;
        }
        if self
            .last_sweep_ms
            .compare_exchange(last, ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.tokens.retain(|_, e| now < e.until);
        }
    }

    /// How many tokens are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }
}
