//! Endpoint health as IoT Hub reports it: unknown, healthy, degraded, unhealthy, dead.
//!
//! The state is a pure function of the endpoint's recent commit outcomes and the time, fed by the
//! sink task; the caller passes `now` so that tests are deterministic and the state machine never
//! reads a clock. IoT Hub's meanings: *unhealthy* is failing and being retried, *dead* has failed
//! continuously for longer than the retry period, *degraded* is delivering again after a failure
//! (or delivering slowly) and becomes *healthy* after a quiet period.

use std::time::{Duration, Instant};

/// The health of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    /// Nothing delivered or failed yet.
    Unknown,
    /// Delivering.
    Healthy,
    /// Delivering again after a recent failure.
    Degraded,
    /// Failing; deliveries are retried.
    Unhealthy,
    /// Failing continuously for longer than the dead threshold.
    Dead,
}

impl HealthStatus {
    /// The lowercase name used in `/healthz`, `/routes` and metrics labels.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Unhealthy => "unhealthy",
            Self::Dead => "dead",
        }
    }
}

/// Thresholds of the health state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HealthPolicy {
    /// Continuous failure after which an endpoint is dead (IoT Hub retries for up to an hour).
    pub(crate) dead_after: Duration,
    /// Time without failure after which a recovered endpoint is healthy again.
    pub(crate) degraded_for: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            dead_after: Duration::from_secs(3600),
            degraded_for: Duration::from_secs(60),
        }
    }
}

/// The tracked health of one endpoint, with its last error and times.
#[derive(Debug, Clone)]
pub(crate) struct EndpointHealth {
    policy: HealthPolicy,
    last_success: Option<Instant>,
    last_failure: Option<Instant>,
    /// Start of the current run of failures; `None` once a delivery succeeded.
    failing_since: Option<Instant>,
    last_error: Option<String>,
}

impl EndpointHealth {
    /// A new endpoint in state [`HealthStatus::Unknown`].
    pub(crate) fn new(policy: HealthPolicy) -> Self {
        Self {
            policy,
            last_success: None,
            last_failure: None,
            failing_since: None,
            last_error: None,
        }
    }

    /// Records a committed delivery at `now`.
    pub(crate) fn record_success(&mut self, now: Instant) {
        self.last_success = Some(now);
        self.failing_since = None;
    }

    /// Records a failed delivery attempt at `now`.
    pub(crate) fn record_failure(&mut self, now: Instant, error: &str) {
        self.last_failure = Some(now);
        self.failing_since.get_or_insert(now);
        self.last_error = Some(error.to_owned());
    }

    /// The status at `now`.
    pub(crate) fn status(&self, now: Instant) -> HealthStatus {
        if let Some(since) = self.failing_since {
            return if now.saturating_duration_since(since) >= self.policy.dead_after {
                HealthStatus::Dead
            } else {
                HealthStatus::Unhealthy
            };
        }
        match (self.last_success, self.last_failure) {
            (None, _) => HealthStatus::Unknown,
            (Some(_), Some(failed))
                if now.saturating_duration_since(failed) < self.policy.degraded_for =>
            {
                HealthStatus::Degraded
            }
            (Some(_), _) => HealthStatus::Healthy,
        }
    }

    /// The last error reported, kept after recovery for diagnosis.
    pub(crate) fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// When the endpoint last delivered.
    pub(crate) fn last_success(&self) -> Option<Instant> {
        self.last_success
    }

    /// When the endpoint last failed.
    pub(crate) fn last_failure(&self) -> Option<Instant> {
        self.last_failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy)]
    enum Event {
        Ok(u64),
        Fail(u64),
    }

    #[test]
    fn status_follows_outcomes_and_time() {
        let policy = HealthPolicy {
            dead_after: Duration::from_secs(100),
            degraded_for: Duration::from_secs(10),
        };
        // (events as seconds since start, status queried at, expected)
        let cases: &[(&[Event], u64, HealthStatus)] = &[
            (&[], 0, HealthStatus::Unknown),
            (&[Event::Ok(1)], 2, HealthStatus::Healthy),
            (&[Event::Fail(1)], 2, HealthStatus::Unhealthy),
            (
                &[Event::Fail(1), Event::Fail(50)],
                100,
                HealthStatus::Unhealthy,
            ),
            (&[Event::Fail(1), Event::Fail(50)], 101, HealthStatus::Dead),
            (
                &[Event::Ok(1), Event::Fail(2), Event::Ok(3)],
                5,
                HealthStatus::Degraded,
            ),
            (
                &[Event::Ok(1), Event::Fail(2), Event::Ok(3)],
                12,
                HealthStatus::Healthy,
            ),
            (
                &[Event::Fail(1), Event::Ok(200), Event::Fail(201)],
                300,
                HealthStatus::Unhealthy,
            ),
        ];
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        for (events, query, expected) in cases {
            let mut health = EndpointHealth::new(policy);
            for event in *events {
                match *event {
                    Event::Ok(s) => health.record_success(at(s)),
                    Event::Fail(s) => health.record_failure(at(s), "boom"),
                }
            }
            assert_eq!(
                health.status(at(*query)),
                *expected,
                "{events:?} at {query}"
            );
        }
    }

    #[test]
    fn last_error_and_times_are_kept_after_recovery() {
        let start = Instant::now();
        let mut health = EndpointHealth::new(HealthPolicy::default());
        health.record_failure(start, "connection refused");
        health.record_success(start + Duration::from_secs(1));
        assert_eq!(health.last_error(), Some("connection refused"));
        assert_eq!(health.last_failure(), Some(start));
        assert_eq!(health.last_success(), Some(start + Duration::from_secs(1)));
        assert_eq!(
            health.status(start + Duration::from_secs(2)).as_str(),
            "degraded"
        );
    }
}
