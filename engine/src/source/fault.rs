//! What a receiver does about a failure: retry after a backoff, give the partition up (stolen), ask
//! the out-of-range policy, or stop with an error.
//!
//! Conditions follow the official SDKs (reference §4.9): `server-busy` waits at least 4 s,
//! `argument-out-of-range` is never retried, `amqp:link:stolen` means another receiver with an equal
//! or higher owner level now owns the partition, authorisation failures are fatal, and everything else
//! that ends a link, session or connection (timeouts, forced detaches, connection loss) is transient.

use std::time::Duration;

use fe2o3_amqp_types::definitions;
use hubroute_amqp::client::condition_text;
use hubroute_protocol::conditions;

use crate::Error;

/// The least wait after `com.microsoft:server-busy`, as the SDKs do.
const SERVER_BUSY_BACKOFF: Duration = Duration::from_secs(4);
/// The first retry delay.
const BASE_BACKOFF: Duration = Duration::from_millis(100);

/// A classified failure.
#[derive(Debug)]
pub(crate) enum Fault {
    /// Reconnect after at least `min_delay`.
    Transient { error: Error, min_delay: Duration },
    /// Another receiver took the partition.
    Stolen { description: String },
    /// The start position is outside the stream.
    OutOfRange { description: String },
    /// Stop the partition with this error.
    Fatal(Error),
}

impl Fault {
    /// Classifies an AMQP error the service sent when closing something.
    pub(crate) fn from_amqp(partition: &str, error: &definitions::Error) -> Self {
        Self::from_condition(
            partition,
            &condition_text(&error.condition),
            error.description.as_deref().unwrap_or_default(),
        )
    }

    /// Classifies an error condition and its description.
    pub(crate) fn from_condition(partition: &str, condition: &str, description: &str) -> Self {
        let (condition, description) = (condition.to_owned(), description.to_owned());
        let amqp = || Error::Amqp {
            partition: partition.to_owned(),
            condition: condition.clone(),
            description: description.clone(),
        };
        match condition.as_str() {
            conditions::LINK_STOLEN => Self::Stolen { description },
            conditions::ARGUMENT_OUT_OF_RANGE => Self::OutOfRange { description },
            conditions::SERVER_BUSY => Self::Transient {
                error: amqp(),
                min_delay: SERVER_BUSY_BACKOFF,
            },
            conditions::UNAUTHORIZED_ACCESS | conditions::AUTH_FAILED => {
                Self::Fatal(Error::Unauthorized {
                    audience: format!("partition {partition}"),
                    problem: format!("{condition}: {description}"),
                })
            }
            conditions::ARGUMENT_ERROR
            | conditions::NOT_FOUND
            | "com.microsoft:entity-disabled" => Self::Fatal(amqp()),
            _ => Self::Transient {
                error: amqp(),
                min_delay: Duration::ZERO,
            },
        }
    }

    /// Classifies an engine error: connection problems are transient, the rest fatal.
    pub(crate) fn from_error(error: Error) -> Self {
        match error {
            Error::Connect { .. } => Self::Transient {
                error,
                min_delay: Duration::ZERO,
            },
            other => Self::Fatal(other),
        }
    }

    fn lost(partition: &str, problem: String) -> Self {
        Self::Transient {
            error: Error::Amqp {
                partition: partition.to_owned(),
                condition: "connection-lost".to_owned(),
                description: problem,
            },
            min_delay: Duration::ZERO,
        }
    }

    /// Classifies a failure of the data-plane connection: a refusal with a condition as the
    /// service meant it, anything else (I/O, framing, a protocol slip) as a lost connection.
    pub(crate) fn from_wire(partition: &str, error: &hubroute_amqp::Error) -> Self {
        match error {
            hubroute_amqp::Error::Refused {
                condition: Some(condition),
                description,
                ..
            } => Self::from_condition(
                partition,
                condition,
                description.as_deref().unwrap_or_default(),
            ),
            hubroute_amqp::Error::Redirected { what, redirect } => Self::Fatal(Error::Amqp {
                partition: partition.to_owned(),
                condition: "amqp:link:redirect".to_owned(),
                description: format!(
                    "{what} was redirected to {redirect}: the connection string names an IoT hub's \
                     own host; give it as HostName=… (an IoT Hub connection string) or give the \
                     built-in endpoint's Event Hub-compatible endpoint"
                ),
            }),
            other => Self::lost(partition, other.to_string()),
        }
    }
}

/// Capped exponential backoff with jitter: attempt 1 waits about `BASE_BACKOFF`, each further attempt
/// doubles it up to `max`; the wait is drawn from [50 %, 100 %] of that and is never below `min`.
pub(crate) fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let exponential =
        BASE_BACKOFF.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
    let capped = exponential.min(max);
    capped.mul_f64(rand::random_range(0.5..=1.0)).max(min)
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp_types::definitions::{AmqpError, ErrorCondition, LinkError};
    use fe2o3_amqp_types::primitives::Symbol;

    use super::*;

    fn error(condition: ErrorCondition) -> definitions::Error {
        definitions::Error::new(condition, Some("why".to_owned()), None)
    }

    fn custom(name: &str) -> ErrorCondition {
        ErrorCondition::Custom(Symbol::from(name))
    }

    #[test]
    fn conditions_are_classified_like_the_sdks() {
        let cases: [(ErrorCondition, &str); 8] = [
            (LinkError::Stolen.into(), "stolen"),
            (
                custom("com.microsoft:argument-out-of-range"),
                "out-of-range",
            ),
            (custom("com.microsoft:server-busy"), "transient 4s"),
            (custom("com.microsoft:timeout"), "transient"),
            (LinkError::DetachForced.into(), "transient"),
            (AmqpError::UnauthorizedAccess.into(), "fatal"),
            (AmqpError::NotFound.into(), "fatal"),
            (custom("com.microsoft:argument-error"), "fatal"),
        ];
        for (condition, expected) in cases {
            let name = format!("{condition:?}");
            let actual = match Fault::from_amqp("0", &error(condition)) {
                Fault::Stolen { .. } => "stolen",
                Fault::OutOfRange { .. } => "out-of-range",
                Fault::Transient { min_delay, .. } if min_delay >= SERVER_BUSY_BACKOFF => {
                    "transient 4s"
                }
                Fault::Transient { .. } => "transient",
                Fault::Fatal(_) => "fatal",
            };
            assert_eq!(actual, expected, "{name}");
        }
    }

    #[test]
    fn backoff_grows_is_capped_jittered_and_respects_the_minimum() {
        let max = Duration::from_secs(30);
        for _ in 0..100 {
            let first = backoff(1, Duration::ZERO, max);
            assert!(
                first >= Duration::from_millis(50) && first <= BASE_BACKOFF,
                "{first:?}"
            );
            let fifth = backoff(5, Duration::ZERO, max);
            assert!(
                fifth >= Duration::from_millis(800) && fifth <= Duration::from_millis(1600),
                "{fifth:?}"
            );
            let late = backoff(100, Duration::ZERO, max);
            assert!(late >= max / 2 && late <= max, "{late:?}");
            assert!(backoff(1, SERVER_BUSY_BACKOFF, max) >= SERVER_BUSY_BACKOFF);
        }
    }
}
