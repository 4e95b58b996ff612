//! AMQP message → one row of a message batch.
//!
//! [`MessageDecoder`] reads a message decoded by fe2o3 and appends it to a [`MessageBatchBuilder`]
//! through a borrowed [`MessageRef`]: strings are borrowed from the AMQP message and copied once, into the Arrow
//! buffers. Values that need rendering (numeric message ids, non-string application properties) go
//! through scratch buffers the decoder reuses, so steady-state decoding allocates nothing of its own.
//!
//! System properties come from both sections, as the SDKs merge them: message annotations
//! (`x-opt-*`, `iothub-*`, `dt-*`) and AMQP properties (`message-id`, `correlation-id` of any AMQP id
//! type rendered as a string, `user-id` bytes, `content-type`, `content-encoding`). Annotations that
//! should be strings but carry another AMQP type are treated as absent. Application properties follow
//! the table on [`hubroute_message::AppPropertyValue`] (AMQP `float` is rendered from its `f32` value;
//! `char` keeps the character with type `char`; decimals and described values keep their debug
//! rendering with types `decimal32`/`decimal64`/`decimal128`/`described`).
//!
//! Body: data sections are concatenated (IoT Hub sends one). An `amqp-value` body holding a string or
//! symbol becomes its UTF-8 bytes, holding binary becomes those bytes, holding anything else becomes the
//! AMQP encoding of the value; `amqp-sequence` sections become the AMQP encoding of each section's list,
//! concatenated. An absent body is empty.

use std::fmt::Write as _;

use arrow::record_batch::RecordBatch;
use base64::Engine as _;
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::{Body, Message, MessageId};
use fe2o3_amqp_types::primitives::{SimpleValue, Value};
use hubroute_message::{MessageBatchBuilder, MessageRef};
use hubroute_protocol::annotations as keys;

use crate::{Error, Result};

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DecodeProblem(String);

/// Decodes the AMQP messages of one partition into message batches.
#[derive(Debug)]
pub struct MessageDecoder {
    event_hub: String,
    partition: String,
    builder: MessageBatchBuilder,
    scratch: Scratch,
}

/// Buffers reused from message to message.
#[derive(Debug, Default)]
struct Scratch {
    offset: String,
    message_id: String,
    correlation_id: String,
    value: String,
    body: Vec<u8>,
}

impl MessageDecoder {
    /// A decoder for messages read from `partition` of `event_hub`.
    pub fn new(event_hub: impl Into<String>, partition: impl Into<String>) -> Self {
        Self {
            event_hub: event_hub.into(),
            partition: partition.into(),
            builder: MessageBatchBuilder::new(),
            scratch: Scratch::default(),
        }
    }

    /// Appends `message` as one row and returns its sequence number. Fails (appending nothing) only
    /// if a required `x-opt-*` annotation is missing or mistyped.
    pub fn append(&mut self, message: &Message<Body<Value>>) -> Result<i64> {
        self.scratch
            .append(&mut self.builder, &self.event_hub, &self.partition, message)
            .map_err(|DecodeProblem(problem)| Error::Decode {
                partition: self.partition.clone(),
                problem,
            })
    }

    /// The offset of the row appended last (empty before the first).
    pub fn last_offset(&self) -> &str {
        &self.scratch.offset
    }

    /// Rows appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.builder.len()
    }

    /// Whether no row was appended since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.builder.is_empty()
    }

    /// Body bytes appended since the last [`finish`](Self::finish).
    pub fn body_bytes(&self) -> usize {
        self.builder.body_bytes()
    }

    /// The rows appended so far as a batch; the decoder starts a new one.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        self.builder.finish().map_err(|error| Error::Decode {
            partition: self.partition.clone(),
            problem: error.to_string(),
        })
    }
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        Value::Symbol(s) => Some(s.as_str()),
        _ => None,
    }
}

fn message_id_text<'a>(id: Option<&'a MessageId>, buffer: &'a mut String) -> Option<&'a str> {
    buffer.clear();
    match id? {
        MessageId::String(s) => return Some(s),
        MessageId::Ulong(n) => write!(buffer, "{n}").expect("writing to a String cannot fail"),
        MessageId::Uuid(uuid) => write_uuid(buffer, uuid.as_inner()),
        MessageId::Binary(bytes) => {
            base64::engine::general_purpose::STANDARD.encode_string(bytes, buffer);
        }
    }
    Some(buffer)
}

fn write_uuid(buffer: &mut String, bytes: &[u8; 16]) {
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            buffer.push('-');
        }
        write!(buffer, "{byte:02x}").expect("writing to a String cannot fail");
    }
}

/// Renders an application property into `buffer`; returns `(has value, type name)`.
fn render_property(value: &SimpleValue, buffer: &mut String) -> (bool, Option<&'static str>) {
    buffer.clear();
    let mut put = |args: std::fmt::Arguments<'_>| {
        buffer
            .write_fmt(args)
            .expect("writing to a String cannot fail");
    };
    let type_name = match value {
        SimpleValue::Null => return (false, Some("null")),
        SimpleValue::String(s) => {
            put(format_args!("{s}"));
            return (true, None);
        }
        SimpleValue::Symbol(s) => {
            put(format_args!("{}", s.as_str()));
            return (true, None);
        }
        SimpleValue::Bool(b) => {
            put(format_args!("{b}"));
            "boolean"
        }
        SimpleValue::Byte(v) => {
            put(format_args!("{v}"));
            "long"
        }
        SimpleValue::Short(v) => {
            put(format_args!("{v}"));
            "long"
        }
        SimpleValue::Int(v) => {
            put(format_args!("{v}"));
            "long"
        }
        SimpleValue::Long(v) => {
            put(format_args!("{v}"));
            "long"
        }
        SimpleValue::Ubyte(v) => {
            put(format_args!("{v}"));
            "ulong"
        }
        SimpleValue::Ushort(v) => {
            put(format_args!("{v}"));
            "ulong"
        }
        SimpleValue::Uint(v) => {
            put(format_args!("{v}"));
            "ulong"
        }
        SimpleValue::Ulong(v) => {
            put(format_args!("{v}"));
            "ulong"
        }
        SimpleValue::Float(v) => {
            put(format_args!("{}", v.into_inner()));
            "double"
        }
        SimpleValue::Double(v) => {
            put(format_args!("{}", v.into_inner()));
            "double"
        }
        SimpleValue::Timestamp(t) => {
            match chrono::DateTime::from_timestamp_millis(t.milliseconds()) {
                Some(time) => put(format_args!("{}", time.format("%Y-%m-%dT%H:%M:%S%.3fZ"))),
                None => put(format_args!("{}", t.milliseconds())),
            }
            "timestamp"
        }
        SimpleValue::Uuid(uuid) => {
            write_uuid(buffer, uuid.as_inner());
            "uuid"
        }
        SimpleValue::Binary(bytes) => {
            base64::engine::general_purpose::STANDARD.encode_string(bytes, buffer);
            "binary"
        }
        SimpleValue::Char(c) => {
            put(format_args!("{c}"));
            "char"
        }
        SimpleValue::Decimal32(d) => {
            put(format_args!("{d:?}"));
            "decimal32"
        }
        SimpleValue::Decimal64(d) => {
            put(format_args!("{d:?}"));
            "decimal64"
        }
        SimpleValue::Decimal128(d) => {
            put(format_args!("{d:?}"));
            "decimal128"
        }
        SimpleValue::Described(d) => {
            put(format_args!("{d:?}"));
            "described"
        }
    };
    (true, Some(type_name))
}

fn encode_amqp(value: &impl serde::Serialize, out: &mut Vec<u8>) -> Result<(), DecodeProblem> {
    let encoded = serde_amqp::to_vec(value)
        .map_err(|error| DecodeProblem(format!("cannot re-encode the AMQP body: {error}")))?;
    out.extend_from_slice(&encoded);
    Ok(())
}

impl Scratch {
    fn append(
        &mut self,
        builder: &mut MessageBatchBuilder,
        event_hub: &str,
        partition: &str,
        message: &Message<Body<Value>>,
    ) -> Result<i64, DecodeProblem> {
        let mut row = MessageRef {
            event_hub,
            partition,
            ..MessageRef::default()
        };
        let (mut sequence_number, mut offset_seen, mut enqueued_time) = (None, false, None);
        // Application properties go into the builder before `append` closes the row, so validate the
        // required annotations first: a failure must leave the builder untouched.
        self.offset.clear();
        if let Some(annotations) = &message.message_annotations {
            for (key, value) in annotations.0.iter() {
                let OwnedKey::Symbol(key) = key else { continue };
                match key.as_str() {
                    keys::SEQUENCE_NUMBER => {
                        sequence_number = match value {
                            Value::Long(n) => Some(*n),
                            Value::Int(n) => Some(i64::from(*n)),
                            _ => None,
                        };
                    }
                    keys::OFFSET => {
                        offset_seen = match value {
                            Value::String(s) => {
                                self.offset.push_str(s);
                                true
                            }
                            Value::Long(n) => {
                                write!(self.offset, "{n}")
                                    .expect("writing to a String cannot fail");
                                true
                            }
                            _ => false,
                        };
                    }
                    keys::ENQUEUED_TIME => {
                        if let Value::Timestamp(t) = value {
                            enqueued_time = Some(t.milliseconds());
                        }
                    }
                    keys::IOTHUB_ENQUEUED_TIME => {
                        if let Value::Timestamp(t) = value {
                            row.iothub_enqueued_time_ms = Some(t.milliseconds());
                        }
                    }
                    keys::PARTITION_KEY => row.partition_key = text(value),
                    keys::CONNECTION_DEVICE_ID => row.connection_device_id = text(value),
                    keys::CONNECTION_MODULE_ID => row.connection_module_id = text(value),
                    keys::CONNECTION_AUTH_METHOD => row.connection_auth_method = text(value),
                    keys::CONNECTION_AUTH_GENERATION_ID => {
                        row.connection_auth_generation_id = text(value);
                    }
                    keys::MESSAGE_SOURCE => row.message_source = text(value),
                    keys::DT_DATASCHEMA => row.dt_dataschema = text(value),
                    keys::DT_SUBJECT => row.dt_subject = text(value),
                    _ => {}
                }
            }
        }
        let missing = |what: &str| DecodeProblem(format!("the message has no {what} annotation"));
        row.sequence_number =
            sequence_number.ok_or_else(|| missing("x-opt-sequence-number (long)"))?;
        if !offset_seen {
            return Err(missing("x-opt-offset (string)"));
        }
        row.enqueued_time_ms =
            enqueued_time.ok_or_else(|| missing("x-opt-enqueued-time (timestamp)"))?;
        row.offset = &self.offset;

        if let Some(properties) = &message.properties {
            row.message_id = message_id_text(properties.message_id.as_ref(), &mut self.message_id);
            row.correlation_id =
                message_id_text(properties.correlation_id.as_ref(), &mut self.correlation_id);
            row.user_id = properties.user_id.as_ref().map(|b| b.as_slice());
            row.content_type = properties.content_type.as_ref().map(|s| s.as_str());
            row.content_encoding = properties.content_encoding.as_ref().map(|s| s.as_str());
        }

        self.body.clear();
        row.body = match &message.body {
            Body::Data(sections) if sections.len() == 1 => &sections[0].0,
            Body::Data(sections) => {
                for section in sections.iter() {
                    self.body.extend_from_slice(&section.0);
                }
                &self.body
            }
            Body::Value(value) => match &value.0 {
                Value::String(s) => s.as_bytes(),
                Value::Symbol(s) => s.as_str().as_bytes(),
                Value::Binary(b) => b,
                other => {
                    encode_amqp(other, &mut self.body)?;
                    &self.body
                }
            },
            Body::Sequence(sections) => {
                for section in sections.iter() {
                    encode_amqp(&section.0, &mut self.body)?;
                }
                &self.body
            }
            Body::Empty => &[],
        };
        if let Some(properties) = &message.application_properties {
            for (name, value) in properties.0.iter() {
                let (present, type_name) = render_property(value, &mut self.value);
                builder.append_application_property(
                    name,
                    present.then_some(self.value.as_str()),
                    type_name,
                );
            }
        }

        builder.append(&row);
        Ok(row.sequence_number)
    }
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp_types::messaging::{
        AmqpSequence, AmqpValue, ApplicationProperties, Data, MessageAnnotations, Properties,
    };
    use fe2o3_amqp_types::primitives::{Binary, OrderedMap, Symbol, Timestamp, Uuid};
    use hubroute_message::{AppPropertyValue, MessageColumns};

    use super::*;

    const UUID: [u8; 16] = [
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef,
    ];

    fn annotations(sequence_number: i64) -> MessageAnnotations {
        MessageAnnotations::builder()
            .insert(
                Symbol::from(keys::SEQUENCE_NUMBER),
                Value::Long(sequence_number),
            )
            .insert(
                Symbol::from(keys::OFFSET),
                Value::String(format!("{}", sequence_number * 100)),
            )
            .insert(
                Symbol::from(keys::ENQUEUED_TIME),
                Value::Timestamp(Timestamp::from_milliseconds(1_700_000_000_000)),
            )
            .build()
    }

    fn message(sequence_number: i64, body: Body<Value>) -> Message<Body<Value>> {
        Message::builder()
            .message_annotations(annotations(sequence_number))
            .body(body)
            .build()
    }

    fn only_row(decoder: &mut MessageDecoder) -> hubroute_message::Message {
        let batch = decoder.finish().unwrap();
        let columns = MessageColumns::try_new(&batch).unwrap();
        assert_eq!(columns.len(), 1);
        columns.message(0)
    }

    #[test]
    fn reads_system_properties_from_annotations_and_properties() {
        let mut annotations = annotations(42);
        for (key, value) in [
            (keys::PARTITION_KEY, "pk"),
            (keys::CONNECTION_DEVICE_ID, "dev-1"),
            (keys::CONNECTION_MODULE_ID, "mod-1"),
            (keys::CONNECTION_AUTH_METHOD, "{\"scope\":\"device\"}"),
            (keys::CONNECTION_AUTH_GENERATION_ID, "6371"),
            (keys::MESSAGE_SOURCE, "Telemetry"),
            (keys::DT_DATASCHEMA, "dtmi:x;1"),
            (keys::DT_SUBJECT, "thermostat1"),
        ] {
            annotations
                .0
                .insert(Symbol::from(key).into(), Value::String(value.to_owned()));
        }
        annotations.0.insert(
            Symbol::from(keys::IOTHUB_ENQUEUED_TIME).into(),
            Value::Timestamp(Timestamp::from_milliseconds(1_699_999_999_000)),
        );
        let properties = Properties {
            message_id: Some(MessageId::String("m-1".to_owned())),
            correlation_id: Some(MessageId::Ulong(7)),
            user_id: Some(Binary::from(b"hub".to_vec())),
            content_type: Some(Symbol::from("application/json")),
            content_encoding: Some(Symbol::from("utf-8")),
            ..Properties::default()
        };
        let message = Message::builder()
            .message_annotations(annotations)
            .properties(properties)
            .body(Body::Data(
                vec![Data(Binary::from(b"{\"t\":1}".to_vec()))].into(),
            ))
            .build();
        let mut decoder = MessageDecoder::new("hub", "3");
        assert_eq!(decoder.append(&message).unwrap(), 42);
        assert_eq!(decoder.last_offset(), "4200");
        let row = only_row(&mut decoder);
        assert_eq!(
            (row.event_hub.as_str(), row.partition.as_str()),
            ("hub", "3")
        );
        assert_eq!((row.sequence_number, row.offset.as_str()), (42, "4200"));
        assert_eq!(row.enqueued_time.timestamp_millis(), 1_700_000_000_000);
        assert_eq!(row.partition_key.as_deref(), Some("pk"));
        assert_eq!(&row.body[..], b"{\"t\":1}");
        let system = row.system;
        assert_eq!(system.message_id.as_deref(), Some("m-1"));
        assert_eq!(system.correlation_id.as_deref(), Some("7"));
        assert_eq!(system.user_id.as_deref(), Some(&b"hub"[..]));
        assert_eq!(system.content_type.as_deref(), Some("application/json"));
        assert_eq!(system.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(
            system.iothub_enqueued_time.unwrap().timestamp_millis(),
            1_699_999_999_000
        );
        assert_eq!(system.connection_device_id.as_deref(), Some("dev-1"));
        assert_eq!(system.connection_module_id.as_deref(), Some("mod-1"));
        assert_eq!(
            system.connection_auth_method.as_deref(),
            Some("{\"scope\":\"device\"}")
        );
        assert_eq!(
            system.connection_device_generation_id.as_deref(),
            Some("6371")
        );
        assert_eq!(system.message_source.as_deref(), Some("Telemetry"));
        assert_eq!(system.dt_dataschema.as_deref(), Some("dtmi:x;1"));
        assert_eq!(system.dt_subject.as_deref(), Some("thermostat1"));
    }

    #[test]
    fn message_ids_of_every_amqp_type_become_strings() {
        let cases = [
            (MessageId::String("abc".to_owned()), "abc"),
            (
                MessageId::Ulong(18_446_744_073_709_551_615),
                "18446744073709551615",
            ),
            (
                MessageId::Uuid(Uuid::from(UUID)),
                "12345678-9abc-def0-0123-456789abcdef",
            ),
            (MessageId::Binary(Binary::from(b"hi".to_vec())), "aGk="),
        ];
        for (id, expected) in cases {
            let mut message = message(1, Body::Empty);
            message.properties = Some(Properties {
                message_id: Some(id.clone()),
                ..Properties::default()
            });
            let mut decoder = MessageDecoder::new("hub", "0");
            decoder.append(&message).unwrap();
            assert_eq!(
                only_row(&mut decoder).system.message_id.as_deref(),
                Some(expected),
                "{id:?}"
            );
        }
    }

    #[test]
    fn application_properties_of_every_amqp_type_follow_the_documented_table() {
        let cases: Vec<(SimpleValue, AppPropertyValue)> = vec![
            (
                SimpleValue::String("s".into()),
                AppPropertyValue::String("s".into()),
            ),
            (
                SimpleValue::Symbol(Symbol::from("sym")),
                AppPropertyValue::String("sym".into()),
            ),
            (SimpleValue::Bool(true), AppPropertyValue::Bool(true)),
            (SimpleValue::Byte(-8), AppPropertyValue::Long(-8)),
            (SimpleValue::Short(-16), AppPropertyValue::Long(-16)),
            (SimpleValue::Int(-32), AppPropertyValue::Long(-32)),
            (
                SimpleValue::Long(i64::MIN),
                AppPropertyValue::Long(i64::MIN),
            ),
            (SimpleValue::Ubyte(8), AppPropertyValue::ULong(8)),
            (SimpleValue::Ushort(16), AppPropertyValue::ULong(16)),
            (SimpleValue::Uint(32), AppPropertyValue::ULong(32)),
            (
                SimpleValue::Ulong(u64::MAX),
                AppPropertyValue::ULong(u64::MAX),
            ),
            (
                SimpleValue::Float(1.5f32.into()),
                AppPropertyValue::Double(1.5),
            ),
            (
                SimpleValue::Double(0.1f64.into()),
                AppPropertyValue::Double(0.1),
            ),
            (
                SimpleValue::Timestamp(Timestamp::from_milliseconds(1_654_109_018_051)),
                AppPropertyValue::Timestamp(1_654_109_018_051),
            ),
            (
                SimpleValue::Uuid(Uuid::from(UUID)),
                AppPropertyValue::Uuid(UUID),
            ),
            (
                SimpleValue::Binary(Binary::from(vec![0u8, 255])),
                AppPropertyValue::Binary(vec![0, 255]),
            ),
            (SimpleValue::Null, AppPropertyValue::Null),
            (
                SimpleValue::Char('é'),
                AppPropertyValue::Other {
                    type_name: "char".into(),
                    rendered: "é".into(),
                },
            ),
        ];
        let mut properties = OrderedMap::new();
        for (i, (value, _)) in cases.iter().enumerate() {
            properties.insert(format!("p{i}"), value.clone());
        }
        let mut message = message(5, Body::Empty);
        message.application_properties = Some(ApplicationProperties(properties));
        let mut decoder = MessageDecoder::new("hub", "0");
        decoder.append(&message).unwrap();
        let row = only_row(&mut decoder);
        assert_eq!(row.application_properties.len(), cases.len());
        for (i, ((value, expected), (name, actual))) in
            cases.iter().zip(&row.application_properties).enumerate()
        {
            assert_eq!(name, &format!("p{i}"));
            assert_eq!(actual, expected, "{value:?}");
        }
    }

    #[test]
    fn bodies_of_every_section_kind_follow_the_documented_rule() {
        let sequence = AmqpSequence(vec![Value::Int(1)]);
        let cases: Vec<(Body<Value>, Vec<u8>)> = vec![
            (
                Body::Data(
                    vec![
                        Data(Binary::from(b"ab".to_vec())),
                        Data(Binary::from(b"cd".to_vec())),
                    ]
                    .into(),
                ),
                b"abcd".to_vec(),
            ),
            (
                Body::Value(AmqpValue(Value::String("text".into()))),
                b"text".to_vec(),
            ),
            (
                Body::Value(AmqpValue(Value::Binary(Binary::from(vec![1u8, 2])))),
                vec![1, 2],
            ),
            (
                Body::Value(AmqpValue(Value::Long(5))),
                serde_amqp::to_vec(&Value::Long(5)).unwrap(),
            ),
            (
                Body::Sequence(vec![sequence.clone()].into()),
                serde_amqp::to_vec(&sequence.0).unwrap(),
            ),
            (Body::Empty, Vec::new()),
        ];
        for (body, expected) in cases {
            let name = format!("{body:?}");
            let mut decoder = MessageDecoder::new("hub", "0");
            decoder.append(&message(1, body)).unwrap();
            assert_eq!(only_row(&mut decoder).body.to_vec(), expected, "{name}");
        }
    }

    #[test]
    fn a_message_without_position_annotations_is_an_error_and_appends_nothing() {
        let mut decoder = MessageDecoder::new("hub", "0");
        let bare = Message::builder().body(Body::<Value>::Empty).build();
        let error = decoder.append(&bare).unwrap_err().to_string();
        assert!(error.contains("x-opt-sequence-number"), "{error}");
        assert!(decoder.is_empty());
        decoder.append(&message(9, Body::Empty)).unwrap();
        assert_eq!(decoder.finish().unwrap().num_rows(), 1);
    }
}
