//! Values on their way into a table: a [`Datum`] read from a message, converted to the declared
//! [`SqlType`] as an [`SqlValue`] that both database drivers can bind.
//!
//! Conversion failures carry the SQLSTATE PostgreSQL uses for the same mistake, so a failed row reads
//! the same whichever database is behind the sink.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use super::SqlType;

/// A value read from a message, before conversion.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Datum<'a> {
    Null,
    Text(Cow<'a, str>),
    Int(i64),
    /// Milliseconds since the Unix epoch.
    TimeMs(i64),
    Bytes(&'a [u8]),
    /// Text already known to be valid JSON.
    JsonText(Cow<'a, str>),
    Json(Cow<'a, Value>),
}

/// A value ready to bind, in the representation of its [`SqlType`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SqlValue {
    Null,
    Text(String),
    BigInt(i64),
    Int(i32),
    Double(f64),
    Bool(bool),
    Timestamp(DateTime<Utc>),
    /// JSON text (valid JSON).
    Json(String),
    Bytes(Vec<u8>),
}

/// RFC 3339 UTC with milliseconds, the text form of timestamps.
pub(crate) fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(SecondsFormat::Millis, true),
    )
}

fn invalid(value: &dyn std::fmt::Display, to: SqlType) -> String {
    format!(
        "22P02 invalid_text_representation: cannot convert `{value}` to {}",
        to.postgres()
    )
}

fn out_of_range(value: &dyn std::fmt::Display, to: SqlType) -> String {
    format!(
        "22003 numeric_value_out_of_range: `{value}` is out of range for {}",
        to.postgres()
    )
}

impl Datum<'_> {
    /// Converts to `to`; the error starts with a SQLSTATE.
    pub(crate) fn coerce(self, to: SqlType) -> Result<SqlValue, String> {
        if self == Datum::Null || matches!(&self, Datum::Json(v) if v.is_null()) {
            return Ok(SqlValue::Null);
        }
        match to {
            SqlType::Text => Ok(SqlValue::Text(self.into_text()?)),
            SqlType::Bigint => self.integer(to).map(SqlValue::BigInt),
            SqlType::Integer => {
                let value = self.integer(to)?;
                i32::try_from(value)
                    .map(SqlValue::Int)
                    .map_err(|_| out_of_range(&value, to))
            }
            SqlType::Double => match self {
                Datum::Int(i) => Ok(SqlValue::Double(i as f64)),
                Datum::Json(v) if v.is_f64() || v.is_i64() || v.is_u64() => {
                    Ok(SqlValue::Double(v.as_f64().unwrap_or_default()))
                }
                other => {
                    let text = other.into_text()?;
                    text.trim()
                        .parse()
                        .map(SqlValue::Double)
                        .map_err(|_| invalid(&text, to))
                }
            },
            SqlType::Boolean => match self {
                Datum::Json(value) if value.is_boolean() => {
                    Ok(SqlValue::Bool(value.as_bool().unwrap_or_default()))
                }
                other => {
                    let text = other.into_text()?;
                    match text.trim() {
                        "true" | "True" | "TRUE" | "1" => Ok(SqlValue::Bool(true)),
                        "false" | "False" | "FALSE" | "0" => Ok(SqlValue::Bool(false)),
                        _ => Err(invalid(&text, to)),
                    }
                }
            },
            SqlType::Timestamptz => match self {
                Datum::TimeMs(ms) | Datum::Int(ms) => DateTime::from_timestamp_millis(ms)
                    .map(SqlValue::Timestamp)
                    .ok_or_else(|| out_of_range(&ms, to)),
                other => {
                    let text = other.into_text()?;
                    DateTime::parse_from_rfc3339(text.trim())
                        .map(|t| SqlValue::Timestamp(t.with_timezone(&Utc)))
                        .map_err(|_| {
                            format!(
                                "22007 invalid_datetime_format: `{text}` is not an RFC 3339 timestamp"
                            )
                        })
                }
            },
            SqlType::Jsonb => Ok(SqlValue::Json(match self {
                Datum::JsonText(text) => text.into_owned(),
                Datum::Json(value) => value.to_string(),
                Datum::Int(i) => i.to_string(),
                Datum::Bytes(bytes) => std::str::from_utf8(bytes)
                    .ok()
                    .filter(|s| serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok())
                    .ok_or_else(|| invalid(&"<bytes>", to))?
                    .to_owned(),
                other => Value::String(other.into_text()?).to_string(),
            })),
            SqlType::Bytea => Ok(SqlValue::Bytes(match self {
                Datum::Bytes(bytes) => bytes.to_vec(),
                other => other.into_text()?.into_bytes(),
            })),
        }
    }

    fn integer(self, to: SqlType) -> Result<i64, String> {
        match self {
            Datum::Int(i) => Ok(i),
            Datum::Json(value) if value.is_number() => value
                .as_i64()
                .or_else(|| {
                    value
                        .as_f64()
                        .filter(|f| f.fract() == 0.0)
                        .and_then(float_to_i64)
                })
                .ok_or_else(|| {
                    if value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0) {
                        out_of_range(&value, to)
                    } else {
                        invalid(&value, to)
                    }
                }),
            other => {
                let text = other.into_text()?;
                text.trim().parse::<i64>().map_err(|error| {
                    if matches!(
                        error.kind(),
                        std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow
                    ) {
                        out_of_range(&text, to)
                    } else {
                        invalid(&text, to)
                    }
                })
            }
        }
    }

    fn into_text(self) -> Result<String, String> {
        Ok(match self {
            Datum::Null => String::new(),
            Datum::Text(text) | Datum::JsonText(text) => text.into_owned(),
            Datum::Int(i) => i.to_string(),
            Datum::TimeMs(ms) => rfc3339(ms),
            Datum::Bytes(bytes) => String::from_utf8(bytes.to_vec()).map_err(|_| {
                "22021 character_not_in_repertoire: bytes are not UTF-8 text".to_owned()
            })?,
            Datum::Json(value) => match value.as_ref() {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        })
    }
}

/// Exact conversion of an integral float within `i64` range.
fn float_to_i64(value: f64) -> Option<i64> {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "range is checked first and the value is integral"
    )]
    ((-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&value)).then_some(value as i64)
}
