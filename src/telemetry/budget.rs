//! A budget for a warning that may repeat without end (a refused hello, a failed handshake):
//! at most so many lines a minute, and the line after a quiet spell says how many were not
//! written, so that nobody can flood the log and nothing goes unseen.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

/// Lines of one kind a minute at most; see the module docs.
pub struct LogBudget {
    limiter: governor::DefaultDirectRateLimiter,
    suppressed: AtomicU64,
}

impl LogBudget {
    /// A budget of `lines` a minute (at least one).
    pub fn per_minute(lines: u32) -> Self {
        let lines = NonZeroU32::new(lines).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: governor::RateLimiter::direct(governor::Quota::per_minute(lines)),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if a line may be written now, `n` being how many were not since the last one;
    /// `None` (and counted) if not.
    pub fn take(&self) -> Option<u64> {
        if self.limiter.check().is_ok() {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_lets_its_lines_through_then_counts_the_rest() {
        let budget = LogBudget::per_minute(3);
        let taken: Vec<Option<u64>> = (0..5).map(|_| budget.take()).collect();
        assert_eq!(taken, [Some(0), Some(0), Some(0), None, None]);
        assert_eq!(
            budget.suppressed.load(Ordering::Relaxed),
            2,
            "the next line reports two"
        );
    }
}
