//! The retry policy every sink uses for retryable errors: capped exponential backoff with jitter.
//!
//! Jitter is "equal jitter" (a random delay in `[d/2, d]`): it spreads retries of many endpoints
//! hitting one recovering server while keeping a floor, so a retry never fires immediately.

use std::time::Duration;

use serde::Deserialize;

/// How a sink retries retryable failures. Retries never give up (the contract forbids turning a
/// retryable error into a row failure); backpressure stops the pipeline meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Delay before the first retry (default 100 ms); doubles per attempt.
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Upper bound of the delay (default 30 s). Also caps a server's `Retry-After`.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
}

fn default_initial_backoff() -> Duration {
    Duration::from_millis(100)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (0-based), or the server's `retry_after` (capped).
    pub(crate) fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(retry_after) = retry_after {
            return retry_after.min(self.max_backoff);
        }
        let ceiling = self
            .initial_backoff
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        let floor = ceiling / 2;
        if ceiling <= floor {
            return ceiling;
        }
        let nanos = rand::random_range(floor.as_nanos()..=ceiling.as_nanos());
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_jitter_bounds_and_are_capped() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let cases = [
            (0, 50, 100),
            (1, 100, 200),
            (2, 200, 400),
            (3, 400, 800),
            (4, 500, 1000),
            (40, 500, 1000),
        ];
        for (attempt, low, high) in cases {
            for _ in 0..50 {
                let delay = policy.delay(attempt, None).as_millis();
                assert!(
                    (low..=high).contains(&delay),
                    "attempt {attempt}: {delay} ms"
                );
            }
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let cases = [(2, 2), (120, 30)];
        for (asked, expected) in cases {
            assert_eq!(
                policy.delay(0, Some(Duration::from_secs(asked))),
                Duration::from_secs(expected)
            );
        }
    }
}
