//! An owned, row-at-a-time view of one message: for tests, the CLI's `route test`, the simulator and
//! sinks that serialise rows (webhooks). Hot paths never build these; they work on whole batches.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// IoT Hub system properties, merged from the AMQP properties and message annotations.
///
/// Field names follow IoT Hub's query keywords (`$contentType` → `content_type`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SystemProperties {
    /// `$messageId`.
    pub message_id: Option<String>,
    /// `$correlationId`.
    pub correlation_id: Option<String>,
    /// `$userId` (AMQP binary; usually UTF-8 text such as the hub name).
    pub user_id: Option<Vec<u8>>,
    /// `$contentType`.
    pub content_type: Option<String>,
    /// `$contentEncoding`.
    pub content_encoding: Option<String>,
    /// `$enqueuedTime` (`iothub-enqueuedtime`).
    pub iothub_enqueued_time: Option<DateTime<Utc>>,
    /// `$connectionDeviceId`.
    pub connection_device_id: Option<String>,
    /// `$connectionModuleId`.
    pub connection_module_id: Option<String>,
    /// `$connectionAuthMethod`.
    pub connection_auth_method: Option<String>,
    /// `$connectionDeviceGenerationId`.
    pub connection_device_generation_id: Option<String>,
    /// `iothub-message-source`.
    pub message_source: Option<String>,
    /// `$dt-dataschema`.
    #[serde(rename = "dt-dataschema")]
    pub dt_dataschema: Option<String>,
    /// `$dt-subject`.
    #[serde(rename = "dt-subject")]
    pub dt_subject: Option<String>,
}

/// An application property value as it arrived on the wire.
///
/// The batch stores every value as its canonical string (what IoT Hub route conditions see) and,
/// for non-strings, the AMQP type name, so the original can be reconstructed:
///
/// | variant | canonical string | type name |
/// |---|---|---|
/// | `String` | as is | (none) |
/// | `Bool` | `true` / `false` | `boolean` |
/// | `Long` (all signed integer widths) | decimal | `long` |
/// | `ULong` (all unsigned widths) | decimal | `ulong` |
/// | `Double` (float and double) | shortest round-trip decimal | `double` |
/// | `Timestamp` | RFC 3339 UTC with milliseconds | `timestamp` |
/// | `Uuid` | hyphenated lower-case | `uuid` |
/// | `Binary` | standard base64 | `binary` |
/// | `Null` | (null value) | `null` |
/// | `Other` | debug rendering of the AMQP value | the AMQP type name |
#[derive(Debug, Clone, PartialEq)]
pub enum AppPropertyValue {
    /// AMQP `string` or `symbol`.
    String(String),
    /// AMQP `boolean`.
    Bool(bool),
    /// AMQP `byte`, `short`, `int`, `long`.
    Long(i64),
    /// AMQP `ubyte`, `ushort`, `uint`, `ulong`.
    ULong(u64),
    /// AMQP `float`, `double`.
    Double(f64),
    /// AMQP `timestamp`, milliseconds since the Unix epoch.
    Timestamp(i64),
    /// AMQP `uuid`.
    Uuid([u8; 16]),
    /// AMQP `binary`.
    Binary(Vec<u8>),
    /// AMQP `null`.
    Null,
    /// Any other AMQP type (lists, maps, decimals...), already rendered.
    Other {
        /// The AMQP type name, e.g. `list`.
        type_name: String,
        /// The rendered value.
        rendered: String,
    },
}

impl AppPropertyValue {
    /// The canonical string stored in the `application_properties` map (`None` for `Null`).
    pub fn canonical_string(&self) -> Option<String> {
        use base64::Engine as _;
        Some(match self {
            Self::String(s) => s.clone(),
            Self::Bool(b) => b.to_string(),
            Self::Long(v) => v.to_string(),
            Self::ULong(v) => v.to_string(),
            Self::Double(v) => v.to_string(),
            Self::Timestamp(ms) => match DateTime::<Utc>::from_timestamp_millis(*ms) {
                Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
                None => ms.to_string(),
            },
            Self::Uuid(bytes) => format_uuid(bytes),
            Self::Binary(bytes) => base64::engine::general_purpose::STANDARD.encode(bytes),
            Self::Null => return None,
            Self::Other { rendered, .. } => rendered.clone(),
        })
    }

    /// The AMQP type name recorded in `application_property_types` (`None` for strings).
    pub fn type_name(&self) -> Option<&str> {
        Some(match self {
            Self::String(_) => return None,
            Self::Bool(_) => "boolean",
            Self::Long(_) => "long",
            Self::ULong(_) => "ulong",
            Self::Double(_) => "double",
            Self::Timestamp(_) => "timestamp",
            Self::Uuid(_) => "uuid",
            Self::Binary(_) => "binary",
            Self::Null => "null",
            Self::Other { type_name, .. } => type_name,
        })
    }
}

fn format_uuid(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

impl From<&str> for AppPropertyValue {
    fn from(value: &str) -> Self {
        Self::String(value.to_owned())
    }
}

/// One message, owned. Convert to a batch with [`crate::MessageBatchBuilder`].
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Event hub the message was read from.
    pub event_hub: String,
    /// Partition id.
    pub partition: String,
    /// `x-opt-sequence-number`.
    pub sequence_number: i64,
    /// `x-opt-offset`.
    pub offset: String,
    /// `x-opt-enqueued-time`.
    pub enqueued_time: DateTime<Utc>,
    /// `x-opt-partition-key`.
    pub partition_key: Option<String>,
    /// IoT Hub system properties.
    pub system: SystemProperties,
    /// Application properties in wire order.
    pub application_properties: Vec<(String, AppPropertyValue)>,
    /// Raw body bytes.
    pub body: Bytes,
    /// Twin JSON, when known.
    pub twin: Option<String>,
}

impl Message {
    /// A telemetry message with the given body and defaults for everything else
    /// (hub `hub`, partition `0`, sequence number 0, enqueued now). Handy in tests and tools.
    pub fn telemetry(body: impl Into<Bytes>) -> Self {
        Self {
            event_hub: "hub".to_owned(),
            partition: "0".to_owned(),
            sequence_number: 0,
            offset: "0".to_owned(),
            enqueued_time: Utc::now(),
            partition_key: None,
            system: SystemProperties {
                message_source: Some("Telemetry".to_owned()),
                ..SystemProperties::default()
            },
            application_properties: Vec::new(),
            body: body.into(),
            twin: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_strings_follow_the_documented_table() {
        let cases = [
            (AppPropertyValue::from("x"), Some("x"), None),
            (AppPropertyValue::Bool(true), Some("true"), Some("boolean")),
            (AppPropertyValue::Long(-3), Some("-3"), Some("long")),
            (AppPropertyValue::ULong(7), Some("7"), Some("ulong")),
            (AppPropertyValue::Double(1.5), Some("1.5"), Some("double")),
            (
                AppPropertyValue::Timestamp(1_654_109_018_051),
                Some("2022-06-01T18:43:38.051Z"),
                Some("timestamp"),
            ),
            (
                AppPropertyValue::Uuid([
                    0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89,
                    0xab, 0xcd, 0xef,
                ]),
                Some("12345678-9abc-def0-0123-456789abcdef"),
                Some("uuid"),
            ),
            (
                AppPropertyValue::Binary(b"hi".to_vec()),
                Some("aGk="),
                Some("binary"),
            ),
            (AppPropertyValue::Null, None, Some("null")),
        ];
        for (value, string, type_name) in cases {
            assert_eq!(value.canonical_string().as_deref(), string, "{value:?}");
            assert_eq!(value.type_name(), type_name, "{value:?}");
        }
    }
}
