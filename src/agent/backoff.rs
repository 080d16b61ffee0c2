//! Reconnect backoff: exponential with full jitter, so thousands of agents
//! that lost the same relay do not return in lockstep; reset once a tunnel
//! has stayed up for a stable period.

use std::time::Duration;

use rand::Rng;

use crate::config::ReconnectConfig;

/// Redials in a row that may land on a relay already held, or draining, before the backoff
/// applies again.
pub const QUICK_REDIALS: u32 = 8;

/// The wait before a quick redial: short, jittered so refused agents do not return in lockstep.
pub fn quick_redial_wait(rng: &mut impl Rng) -> Duration {
    Duration::from_millis(rng.random_range(50..300))
}

/// Backoff state across reconnect attempts.
#[derive(Debug)]
pub struct Backoff {
    config: ReconnectConfig,
    attempt: u32,
}

impl Backoff {
    /// Fresh state: the next wait is drawn from `[0, initial]`.
    pub fn new(config: ReconnectConfig) -> Self {
        Self { config, attempt: 0 }
    }

    /// The ceiling of the next wait: `initial * 2^attempt`, capped.
    pub fn ceiling(&self) -> Duration {
        let initial = self.config.initial_backoff_ms;
        let ms = initial
            .saturating_mul(1u64 << self.attempt.min(32))
            .min(self.config.max_backoff_ms);
        Duration::from_millis(ms)
    }

    /// The wait before the next attempt, given how long the last tunnel lasted.
    pub fn next_wait(&mut self, uptime: Duration, rng: &mut impl Rng) -> Duration {
        if uptime >= Duration::from_secs(self.config.stable_after_secs) {
            self.attempt = 0;
        }
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        // Full jitter: anywhere in [0, ceiling].
        Duration::from_millis(rng.random_range(0..=ceiling.as_millis() as u64))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn config() -> ReconnectConfig {
        ReconnectConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            stable_after_secs: 60,
        }
    }

    #[test]
    fn grows_exponentially_to_the_cap() {
        let mut b = Backoff::new(config());
        let mut rng = StdRng::seed_from_u64(1);
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(b.ceiling().as_millis());
            let wait = b.next_wait(Duration::ZERO, &mut rng);
            assert!(wait.as_millis() <= *ceilings.last().unwrap());
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn a_stable_tunnel_resets_the_backoff() {
        let mut b = Backoff::new(config());
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..5 {
            b.next_wait(Duration::ZERO, &mut rng);
        }
        assert_eq!(b.ceiling().as_millis(), 1000);
        b.next_wait(Duration::from_secs(61), &mut rng);
        assert_eq!(b.ceiling().as_millis(), 200, "reset, then one attempt made");
    }

    #[test]
    fn jitter_spreads_agents_out() {
        // 1000 agents at the same attempt must not pick the same wait.
        let mut rng = StdRng::seed_from_u64(3);
        let waits: std::collections::HashSet<u128> = (0..1000)
            .map(|_| {
                let mut b = Backoff::new(config());
                b.attempt = 4;
                b.next_wait(Duration::ZERO, &mut rng).as_millis()
            })
            .collect();
        assert!(waits.len() > 500, "only {} distinct waits", waits.len());
    }
}
