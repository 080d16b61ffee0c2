//! Time sources for token validity and refetch rate limits, replaceable in tests.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock and monotonic time, behind a trait so that tests can move time forward.
pub(crate) trait Clock: Send + Sync + 'static {
    /// Seconds since the Unix epoch, for `exp` and `nbf`.
    fn unix_seconds(&self) -> u64;
    /// Monotonic time since an arbitrary origin, for rate limits (immune to wall-clock jumps).
    fn monotonic(&self) -> Duration;
}

/// The real clock.
#[derive(Debug)]
pub(crate) struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose monotonic origin is now.
    pub(crate) fn new() -> Self {
        Self { origin: Instant::now() }
    }
}

impl Clock for SystemClock {
    fn unix_seconds(&self) -> u64 {
        // A clock set before 1970 reads as 0, which makes every token look expired: fails closed.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that starts at the real time and only moves when told to.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct ManualClock {
    start_unix: u64,
    offset_ms: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
impl ManualClock {
    /// A manual clock reading the current wall-clock time.
    pub(crate) fn new() -> Self {
        Self {
            start_unix: SystemClock::new().unix_seconds(),
            offset_ms: Default::default(),
        }
    }

    /// Move both readings forward.
    pub(crate) fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.offset_ms.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn unix_seconds(&self) -> u64 {
        self.start_unix + self.monotonic().as_secs()
    }

    fn monotonic(&self) -> Duration {
        Duration::from_millis(self.offset_ms.load(std::sync::atomic::Ordering::SeqCst))
    }
}
