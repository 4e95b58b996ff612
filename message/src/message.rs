//! An owned, row-at-a-time view of one message: for tests, the CLI's `route test`, the simulator and
//! sinks that serialise rows (webhooks). Hot paths never build these; they work on whole batches.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// IoT Hub system properties, merged from the AMQP properties and message annotations.
///
/// Field names follow IoT Hub's query keywords (`$contentType` → `content_type`). In JSON a field is
/// written in camelCase (`contentType`, and `iothubEnqueuedTime` for the enqueued time), which is
/// also how IoT Hub names system properties in storage; it is read under that name, under the query
/// keyword (`$contentType`, `$enqueuedTime`) and, for the enqueued time, under IoT Hub's storage
/// name `enqueuedTime`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SystemProperties {
    /// `$messageId`.
    #[serde(alias = "$messageId")]
    pub message_id: Option<String>,
    /// `$correlationId`.
    #[serde(alias = "$correlationId")]
    pub correlation_id: Option<String>,
    /// `$userId` (AMQP binary; usually UTF-8 text such as the hub name). Read from an array of
    /// bytes or, as IoT Hub's storage records write it, a string.
    #[serde(alias = "$userId", default, deserialize_with = "bytes_or_text")]
    pub user_id: Option<Vec<u8>>,
    /// `$contentType`.
    #[serde(alias = "$contentType")]
    pub content_type: Option<String>,
    /// `$contentEncoding`.
    #[serde(alias = "$contentEncoding")]
    pub content_encoding: Option<String>,
    /// `$enqueuedTime` (`iothub-enqueuedtime`).
    #[serde(alias = "$enqueuedTime", alias = "enqueuedTime")]
    pub iothub_enqueued_time: Option<DateTime<Utc>>,
    /// `$connectionDeviceId`.
    #[serde(alias = "$connectionDeviceId")]
    pub connection_device_id: Option<String>,
    /// `$connectionModuleId`.
    #[serde(alias = "$connectionModuleId")]
    pub connection_module_id: Option<String>,
    /// `$connectionAuthMethod`.
    #[serde(alias = "$connectionAuthMethod")]
    pub connection_auth_method: Option<String>,
    /// `$connectionDeviceGenerationId`.
    #[serde(alias = "$connectionDeviceGenerationId")]
    pub connection_device_generation_id: Option<String>,
    /// `iothub-message-source` (no query keyword: routes select it with their `source`).
    pub message_source: Option<String>,
    /// `$dt-dataschema`.
    #[serde(rename = "dt-dataschema", alias = "$dt-dataschema")]
    pub dt_dataschema: Option<String>,
    /// `$dt-subject`.
    #[serde(rename = "dt-subject", alias = "$dt-subject")]
    pub dt_subject: Option<String>,
}

/// `userId` as an array of bytes or as text (its UTF-8 bytes).
fn bytes_or_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<u8>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum BytesOrText {
        Bytes(Vec<u8>),
        Text(String),
    }
    Ok(
        Option::<BytesOrText>::deserialize(deserializer)?.map(|value| match value {
            BytesOrText::Bytes(bytes) => bytes,
            BytesOrText::Text(text) => text.into_bytes(),
        }),
    )
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
    /// The value a JSON value stands for, as `hubroute route test --app-properties` and test
    /// fixtures write application properties: a string, boolean or `null` as itself, an integer as
    /// `Long` (`ULong` above `i64::MAX`), any other number as `Double`, and an object or array as
    /// its JSON text (a string).
    pub fn from_json(value: &serde_json::Value) -> Self {
        match value {
            serde_json::Value::String(s) => Self::String(s.clone()),
            serde_json::Value::Bool(b) => Self::Bool(*b),
            serde_json::Value::Number(n) => n
                .as_i64()
                .map(Self::Long)
                .or_else(|| n.as_u64().map(Self::ULong))
                .or_else(|| n.as_f64().map(Self::Double))
                .unwrap_or_else(|| Self::String(n.to_string())),
            serde_json::Value::Null => Self::Null,
            other @ (serde_json::Value::Array(_) | serde_json::Value::Object(_)) => {
                Self::String(other.to_string())
            }
        }
    }

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

    #[test]
    fn json_values_become_the_application_property_they_stand_for() {
        let cases = [
            (r#""hot""#, AppPropertyValue::from("hot")),
            ("true", AppPropertyValue::Bool(true)),
            ("-3", AppPropertyValue::Long(-3)),
            ("18446744073709551615", AppPropertyValue::ULong(u64::MAX)),
            ("2.5", AppPropertyValue::Double(2.5)),
            ("1e3", AppPropertyValue::Double(1000.0)),
            ("null", AppPropertyValue::Null),
            (r#"{"a": [1]}"#, AppPropertyValue::from(r#"{"a":[1]}"#)),
            ("[1, 2]", AppPropertyValue::from("[1,2]")),
        ];
        for (json, expected) in cases {
            let value: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
            assert_eq!(AppPropertyValue::from_json(&value), expected, "{json}");
        }
    }

    #[test]
    fn system_properties_read_camel_case_query_keyword_and_storage_names() {
        let time = DateTime::parse_from_rfc3339("2022-06-06T22:56:06.5Z")
            .expect("a time")
            .with_timezone(&Utc);
        for json in [
            r#"{"iothubEnqueuedTime": "2022-06-06T22:56:06.5Z", "connectionDeviceId": "d"}"#,
            r#"{"$enqueuedTime": "2022-06-06T22:56:06.5Z", "$connectionDeviceId": "d"}"#,
            r#"{"enqueuedTime": "2022-06-06T22:56:06.5Z", "connectionDeviceId": "d", "userId": "hub"}"#,
        ] {
            let system: SystemProperties = serde_json::from_str(json).expect(json);
            assert_eq!(system.iothub_enqueued_time, Some(time), "{json}");
            assert_eq!(system.connection_device_id.as_deref(), Some("d"), "{json}");
        }
        let storage: SystemProperties =
            serde_json::from_str(r#"{"userId": "hub"}"#).expect("userId as text");
        assert_eq!(storage.user_id.as_deref(), Some(&b"hub"[..]));
        let keywords: SystemProperties = serde_json::from_str(
            r#"{"$messageId": "m", "$correlationId": "c", "$userId": [104], "$contentType": "t",
                "$contentEncoding": "e", "$connectionModuleId": "mod", "$connectionAuthMethod": "a",
                "$connectionDeviceGenerationId": "g", "$dt-dataschema": "s", "$dt-subject": "x"}"#,
        )
        .expect("every query keyword is accepted");
        let camel_case: SystemProperties = serde_json::from_str(
            r#"{"messageId": "m", "correlationId": "c", "userId": [104], "contentType": "t",
                "contentEncoding": "e", "connectionModuleId": "mod", "connectionAuthMethod": "a",
                "connectionDeviceGenerationId": "g", "dt-dataschema": "s", "dt-subject": "x"}"#,
        )
        .expect("camelCase names");
        assert_eq!(keywords, camel_case);
        assert_ne!(camel_case, SystemProperties::default());
        let written = serde_json::to_value(&camel_case).expect("serialises");
        assert_eq!(written["messageId"], "m", "written names are unchanged");
        let unknown = serde_json::from_str::<SystemProperties>(r#"{"enqueued": "x"}"#);
        assert!(unknown.is_err(), "unknown names stay errors");
    }
}
