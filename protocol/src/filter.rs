//! Start positions and their `apache.org:selector-filter:string` expressions.
//!
//! `amqp.annotation.x-opt-offset > '12'`, `amqp.annotation.x-opt-sequence-number >= '5'`,
//! `amqp.annotation.x-opt-enqueued-time > '1700000000000'`; offset `-1` means the start of the stream and
//! `@latest` its end. Python quotes values and .NET does not; both are accepted here, as by the service.

use crate::{Error, Result};

/// Which annotation a position refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PositionKind {
    /// `x-opt-offset`; `-1` is the earliest event, `@latest` the end of the stream.
    Offset(String),
    /// `x-opt-sequence-number`.
    SequenceNumber(i64),
    /// `x-opt-enqueued-time`, ms since the Unix epoch.
    EnqueuedTime(i64),
}

/// A position in a partition: where a receiver starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPosition {
    /// The annotation and value.
    pub kind: PositionKind,
    /// `>=` when true, `>` when false (the SDK default).
    pub inclusive: bool,
}

/// Offset value meaning the start of the stream.
pub const EARLIEST_OFFSET: &str = "-1";
/// Offset value meaning the end of the stream.
pub const LATEST_OFFSET: &str = "@latest";

impl EventPosition {
    /// The first event retained in the partition.
    pub fn earliest() -> Self {
        Self {
            kind: PositionKind::Offset(EARLIEST_OFFSET.to_owned()),
            inclusive: false,
        }
    }

    /// Only events enqueued after the receiver attaches.
    pub fn latest() -> Self {
        Self {
            kind: PositionKind::Offset(LATEST_OFFSET.to_owned()),
            inclusive: false,
        }
    }

    /// Events after sequence number `sequence_number` (exclusive), how checkpoints resume.
    pub fn after_sequence_number(sequence_number: i64) -> Self {
        Self {
            kind: PositionKind::SequenceNumber(sequence_number),
            inclusive: false,
        }
    }

    /// The selector filter expression for this position.
    pub fn to_filter_expression(&self) -> String {
        let operator = if self.inclusive { ">=" } else { ">" };
        let (annotation, value) = match &self.kind {
            PositionKind::Offset(offset) => (crate::annotations::OFFSET, offset.clone()),
            PositionKind::SequenceNumber(n) => (crate::annotations::SEQUENCE_NUMBER, n.to_string()),
            PositionKind::EnqueuedTime(ms) => (crate::annotations::ENQUEUED_TIME, ms.to_string()),
        };
        format!("amqp.annotation.{annotation} {operator} '{value}'")
    }

    /// Parses a selector filter expression.
    pub fn parse_filter_expression(expression: &str) -> Result<Self> {
        let fail = |problem: &str| Error::Filter {
            expression: expression.to_owned(),
            problem: problem.to_owned(),
        };
        let rest = expression
            .trim()
            .strip_prefix("amqp.annotation.")
            .ok_or_else(|| fail("it must start with amqp.annotation."))?;
        let (annotation, rest) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| fail("missing operator"))?;
        let rest = rest.trim_start();
        let (inclusive, value) = if let Some(value) = rest.strip_prefix(">=") {
            (true, value)
        } else if let Some(value) = rest.strip_prefix('>') {
            (false, value)
        } else {
            return Err(fail("the operator must be > or >="));
        };
        let value = value.trim();
        let value = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or(value);
        if value.is_empty() {
            return Err(fail("missing value"));
        }
        let number = |what: &str| {
            value
                .parse::<i64>()
                .map_err(|_| fail(&format!("{what} `{value}` is not an integer")))
        };
        let kind = match annotation.to_ascii_lowercase().as_str() {
            crate::annotations::OFFSET => {
                if value != LATEST_OFFSET {
                    number("offset")?;
                }
                PositionKind::Offset(value.to_owned())
            }
            crate::annotations::SEQUENCE_NUMBER => {
                PositionKind::SequenceNumber(number("sequence number")?)
            }
            crate::annotations::ENQUEUED_TIME => {
                PositionKind::EnqueuedTime(number("enqueued time")?)
            }
            _ => {
                return Err(fail(
                    "the annotation must be x-opt-offset, x-opt-sequence-number or x-opt-enqueued-time",
                ));
            }
        };
        Ok(Self { kind, inclusive })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_accepts_both_sdk_quoting_styles() {
        let cases = [
            (
                "amqp.annotation.x-opt-offset > '-1'",
                EventPosition::earliest(),
            ),
            (
                "amqp.annotation.x-opt-offset > '@latest'",
                EventPosition::latest(),
            ),
            (
                "amqp.annotation.x-opt-sequence-number > '41'",
                EventPosition::after_sequence_number(41),
            ),
            (
                "amqp.annotation.x-opt-enqueued-time >= '1700000000000'",
                EventPosition {
                    kind: PositionKind::EnqueuedTime(1_700_000_000_000),
                    inclusive: true,
                },
            ),
        ];
        for (text, position) in cases {
            assert_eq!(
                EventPosition::parse_filter_expression(text).unwrap(),
                position
            );
            assert_eq!(position.to_filter_expression(), text);
        }
        let dotnet =
            EventPosition::parse_filter_expression("amqp.annotation.x-opt-sequence-number >= 7")
                .unwrap();
        assert_eq!(
            dotnet,
            EventPosition {
                kind: PositionKind::SequenceNumber(7),
                inclusive: true
            }
        );
    }

    #[test]
    fn rejects_bad_expressions_with_the_reason() {
        let cases = [
            ("x-opt-offset > '1'", "must start with"),
            ("amqp.annotation.x-opt-offset = '1'", "operator must be"),
            ("amqp.annotation.x-opt-offset > 'abc'", "offset `abc`"),
            ("amqp.annotation.x-opt-foo > '1'", "annotation must be"),
            (
                "amqp.annotation.x-opt-sequence-number > ''",
                "missing value",
            ),
        ];
        for (text, expected) in cases {
            let error = EventPosition::parse_filter_expression(text)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
