//! An encoded AMQP message → one row of a message batch, read in place.
//!
//! [`MessageDecoder::append`] takes a transfer's payload as it came off the wire and walks it once
//! with `hubroute_amqp`'s zero-copy reader: strings, binaries and the body are borrowed from the
//! payload and copied once, into the Arrow buffers. Values that need rendering (numeric message ids,
//! non-string application properties) go through scratch buffers the decoder reuses, and a message's
//! application properties wait on the stack until all are checked, so steady-state decoding of
//! messages with up to 16 of them allocates nothing of its own.
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
//! symbol becomes its UTF-8 bytes, holding binary becomes those bytes, holding anything else becomes
//! the AMQP encoding of the value; `amqp-sequence` sections become the AMQP encoding of each
//! section's list, concatenated. An absent body, or an `amqp-value` of null (how an empty body is
//! usually encoded), is empty.
//!
//! A message that is not well-formed AMQP, or lacks the `x-opt-*` position annotations, appends
//! nothing and comes back as a [`Malformed`] with whatever position it carries, so the receiver can
//! set it aside (dead-letter it) and keep the partition flowing.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use base64::Engine as _;
use bytes::Bytes;
use fe2o3_amqp_types::primitives::SimpleValue;
use hubroute_amqp::codec::{Compound, Value};
use hubroute_amqp::message::{Body, MessageView, Properties};
use hubroute_message::{BodyBuffers, MessageBatchBuilder, MessageRef};
use hubroute_protocol::annotations as keys;
use smallvec::SmallVec;

use crate::{Error, Result};

/// A message the decoder could not turn into a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// Its `x-opt-sequence-number`, when that much could be read.
    pub(crate) sequence_number: Option<i64>,
    /// What is wrong with it.
    pub(crate) problem: String,
    /// The message as received.
    pub(crate) payload: Bytes,
}

/// Decodes the AMQP messages of one partition into message batches.
#[derive(Debug)]
pub struct MessageDecoder {
    event_hub: String,
    partition: String,
    builder: MessageBatchBuilder,
    scratch: Scratch,
}

/// Application properties a message can carry before reading them spills onto the heap.
const INLINE_PROPERTIES: usize = 16;

/// An application property value read and checked, not yet in the builder.
enum PendingValue<'a> {
    /// A string or symbol, borrowed from the message.
    Text(&'a str),
    /// Any other type: its rendering's range in `Scratch::value` (`None` for a null), and its type.
    Rendered {
        text: Option<std::ops::Range<usize>>,
        type_name: &'static str,
    },
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

/// What a problem in a message is called, and the position it carried if any.
struct Problem {
    sequence_number: Option<i64>,
    problem: String,
}

impl From<hubroute_amqp::Error> for Problem {
    fn from(error: hubroute_amqp::Error) -> Self {
        Problem {
            sequence_number: None,
            problem: error.to_string(),
        }
    }
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

    /// A decoder whose batches take their body buffers from `buffers` and give them back when
    /// dropped.
    pub fn with_body_buffers(
        event_hub: impl Into<String>,
        partition: impl Into<String>,
        buffers: Arc<dyn BodyBuffers>,
    ) -> Self {
        Self {
            builder: MessageBatchBuilder::with_body_buffers(buffers),
            ..Self::new(event_hub, partition)
        }
    }

    /// Appends the encoded `message` as one row and returns its sequence number. A malformed
    /// message appends nothing and is returned whole, with the reason.
    pub fn append(&mut self, message: &Bytes) -> std::result::Result<i64, Malformed> {
        self.scratch
            .append(&mut self.builder, &self.event_hub, &self.partition, message)
            .map_err(|problem| Malformed {
                sequence_number: problem.sequence_number,
                problem: problem.problem,
                payload: message.clone(),
            })
    }

    /// The offset of the row appended last (empty before the first).
    pub(crate) fn last_offset(&self) -> &str {
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
    pub(crate) fn body_bytes(&self) -> usize {
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

fn message_id_text<'a>(id: Option<Value<'a>>, buffer: &'a mut String) -> Option<&'a str> {
    buffer.clear();
    match id? {
        Value::String(s) | Value::Symbol(s) => return Some(s),
        Value::Ulong(n) => write!(buffer, "{n}").expect("writing to a String cannot fail"),
        Value::Uuid(uuid) => write_uuid(buffer, &uuid),
        Value::Binary(bytes) => {
            base64::engine::general_purpose::STANDARD.encode_string(bytes, buffer);
        }
        _ => return None,
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

/// An application property's value as the row will hold it: a string stays borrowed, any other
/// type is rendered by appending it to `buffer`. `encoded` is the value's encoding, for the rare
/// types rendered through `serde_amqp`.
fn read_property<'a>(value: Value<'a>, encoded: &[u8], buffer: &mut String) -> PendingValue<'a> {
    if let Value::String(text) | Value::Symbol(text) = value {
        return PendingValue::Text(text);
    }
    let start = buffer.len();
    let (present, type_name) = render_property(value, encoded, buffer);
    PendingValue::Rendered {
        text: present.then_some(start..buffer.len()),
        type_name,
    }
}

/// Renders an application property that is not a string by appending it to `buffer`; returns `(has
/// value, type name)`.
fn render_property(value: Value<'_>, encoded: &[u8], buffer: &mut String) -> (bool, &'static str) {
    let mut put = |args: std::fmt::Arguments<'_>| {
        buffer
            .write_fmt(args)
            .expect("writing to a String cannot fail");
    };
    let type_name = match value {
        Value::Null => return (false, "null"),
        Value::String(_) | Value::Symbol(_) => unreachable!("strings are kept, not rendered"),
        Value::Bool(b) => {
            put(format_args!("{b}"));
            "boolean"
        }
        Value::Byte(v) => {
            put(format_args!("{v}"));
            "long"
        }
        Value::Short(v) => {
            put(format_args!("{v}"));
            "long"
        }
        Value::Int(v) => {
            put(format_args!("{v}"));
            "long"
        }
        Value::Long(v) => {
            put(format_args!("{v}"));
            "long"
        }
        Value::Ubyte(v) => {
            put(format_args!("{v}"));
            "ulong"
        }
        Value::Ushort(v) => {
            put(format_args!("{v}"));
            "ulong"
        }
        Value::Uint(v) => {
            put(format_args!("{v}"));
            "ulong"
        }
        Value::Ulong(v) => {
            put(format_args!("{v}"));
            "ulong"
        }
        Value::Float(v) => {
            put(format_args!("{v}"));
            "double"
        }
        Value::Double(v) => {
            put(format_args!("{v}"));
            "double"
        }
        Value::Timestamp(t) => {
            match chrono::DateTime::from_timestamp_millis(t) {
                Some(time) => put(format_args!("{}", time.format("%Y-%m-%dT%H:%M:%S%.3fZ"))),
                None => put(format_args!("{t}")),
            }
            "timestamp"
        }
        Value::Uuid(uuid) => {
            write_uuid(buffer, &uuid);
            "uuid"
        }
        Value::Binary(bytes) => {
            base64::engine::general_purpose::STANDARD.encode_string(bytes, buffer);
            "binary"
        }
        Value::Char(c) => {
            put(format_args!("{c}"));
            "char"
        }
        Value::Decimal32(_)
        | Value::Decimal64(_)
        | Value::Decimal128(_)
        | Value::Described(..)
        | Value::List(_)
        | Value::Map(_)
        | Value::Array(_) => match serde_amqp::from_slice::<SimpleValue>(encoded) {
            // Rare: keep the rendering the owned AMQP types give them (checked by `check_property`).
            Ok(SimpleValue::Decimal32(d)) => {
                put(format_args!("{d:?}"));
                "decimal32"
            }
            Ok(SimpleValue::Decimal64(d)) => {
                put(format_args!("{d:?}"));
                "decimal64"
            }
            Ok(SimpleValue::Decimal128(d)) => {
                put(format_args!("{d:?}"));
                "decimal128"
            }
            Ok(other) => {
                put(format_args!("{other:?}"));
                "described"
            }
            Err(_) => return (false, "null"),
        },
    };
    (true, type_name)
}

/// Whether an application property value can be rendered: AMQP allows only simple types there.
fn check_property(value: Value<'_>, encoded: &[u8]) -> std::result::Result<(), String> {
    match value {
        Value::List(_) | Value::Map(_) | Value::Array(_) => Err(
            "application property values must be simple AMQP types, not a list, map or array"
                .to_owned(),
        ),
        Value::Decimal32(_) | Value::Decimal64(_) | Value::Decimal128(_) | Value::Described(..) => {
            serde_amqp::from_slice::<SimpleValue>(encoded)
                .map(|_| ())
                .map_err(|error| format!("an application property value: {error}"))
        }
        _ => Ok(()),
    }
}

/// Calls `each(name, value, encoded value)` for every application property, failing on a key that
/// is not a string.
fn for_each_property<'a>(
    map: Compound<'a>,
    mut each: impl FnMut(&'a str, Value<'a>, &'a [u8]) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let mut reader = map.reader();
    for _ in 0..map.count / 2 {
        let name = match reader.read_value().map_err(|e| e.to_string())? {
            Value::String(name) => name,
            other => {
                return Err(format!(
                    "an application property key is {other:?}, not a string"
                ));
            }
        };
        let start = reader.position();
        let value = reader.read_value().map_err(|e| e.to_string())?;
        each(name, value, &map.body[start..reader.position()])?;
    }
    Ok(())
}

fn text(value: Value<'_>) -> Option<&str> {
    value.as_text()
}

/// The message annotations a row reads.
#[derive(Debug, Clone, Copy)]
enum Annotation {
    SequenceNumber,
    Offset,
    EnqueuedTime,
    IothubEnqueuedTime,
    PartitionKey,
    ConnectionDeviceId,
    ConnectionModuleId,
    ConnectionAuthMethod,
    ConnectionAuthGenerationId,
    MessageSource,
    DtDataschema,
    DtSubject,
}

const ANNOTATIONS: [(&str, Annotation); 12] = [
    (keys::SEQUENCE_NUMBER, Annotation::SequenceNumber),
    (keys::OFFSET, Annotation::Offset),
    (keys::ENQUEUED_TIME, Annotation::EnqueuedTime),
    (keys::IOTHUB_ENQUEUED_TIME, Annotation::IothubEnqueuedTime),
    (keys::PARTITION_KEY, Annotation::PartitionKey),
    (keys::CONNECTION_DEVICE_ID, Annotation::ConnectionDeviceId),
    (keys::CONNECTION_MODULE_ID, Annotation::ConnectionModuleId),
    (
        keys::CONNECTION_AUTH_METHOD,
        Annotation::ConnectionAuthMethod,
    ),
    (
        keys::CONNECTION_AUTH_GENERATION_ID,
        Annotation::ConnectionAuthGenerationId,
    ),
    (keys::MESSAGE_SOURCE, Annotation::MessageSource),
    (keys::DT_DATASCHEMA, Annotation::DtDataschema),
    (keys::DT_SUBJECT, Annotation::DtSubject),
];

impl Scratch {
    fn append(
        &mut self,
        builder: &mut MessageBatchBuilder,
        event_hub: &str,
        partition: &str,
        message: &[u8],
    ) -> std::result::Result<i64, Problem> {
        let view = MessageView::parse(message)?;
        let mut row = MessageRef {
            event_hub,
            partition,
            ..MessageRef::default()
        };
        let (mut sequence_number, mut offset_seen, mut enqueued_time) = (None, false, None);
        self.offset.clear();
        if let Some(annotations) = view.message_annotations {
            let mut reader = annotations.reader();
            for _ in 0..annotations.count / 2 {
                // Keys are compared as bytes (every known key is ASCII); a value is decoded only
                // under a key the row needs.
                let key = match reader.read_symbol_bytes()? {
                    Some(key) => ANNOTATIONS.iter().find(|(name, _)| name.as_bytes() == key),
                    None => None,
                };
                let Some((_, annotation)) = key else {
                    reader.skip()?;
                    continue;
                };
                let value = reader.read_value()?;
                match annotation {
                    Annotation::SequenceNumber => {
                        sequence_number = match value {
                            Value::Long(n) => Some(n),
                            Value::Int(n) => Some(i64::from(n)),
                            _ => None,
                        };
                    }
                    Annotation::Offset => {
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
                    Annotation::EnqueuedTime => {
                        if let Value::Timestamp(t) = value {
                            enqueued_time = Some(t);
                        }
                    }
                    Annotation::IothubEnqueuedTime => {
                        if let Value::Timestamp(t) = value {
                            row.iothub_enqueued_time_ms = Some(t);
                        }
                    }
                    Annotation::PartitionKey => row.partition_key = text(value),
                    Annotation::ConnectionDeviceId => row.connection_device_id = text(value),
                    Annotation::ConnectionModuleId => row.connection_module_id = text(value),
                    Annotation::ConnectionAuthMethod => row.connection_auth_method = text(value),
                    Annotation::ConnectionAuthGenerationId => {
                        row.connection_auth_generation_id = text(value);
                    }
                    Annotation::MessageSource => row.message_source = text(value),
                    Annotation::DtDataschema => row.dt_dataschema = text(value),
                    Annotation::DtSubject => row.dt_subject = text(value),
                }
            }
        }
        let problem = |problem: String| Problem {
            sequence_number,
            problem,
        };
        let missing = |what: &str| problem(format!("the message has no {what} annotation"));
        row.sequence_number =
            sequence_number.ok_or_else(|| missing("x-opt-sequence-number (long)"))?;
        if !offset_seen {
            return Err(missing("x-opt-offset (string)"));
        }
        row.enqueued_time_ms =
            enqueued_time.ok_or_else(|| missing("x-opt-enqueued-time (timestamp)"))?;
        row.offset = &self.offset;

        if let Some(properties) = view.properties {
            let properties = Properties::read(properties).map_err(|e| problem(e.to_string()))?;
            row.message_id = message_id_text(properties.message_id, &mut self.message_id);
            row.correlation_id =
                message_id_text(properties.correlation_id, &mut self.correlation_id);
            row.user_id = properties.user_id;
            row.content_type = properties.content_type;
            row.content_encoding = properties.content_encoding;
        }

        self.body.clear();
        row.body = match view.body {
            Body::Data(sections) if sections.len() == 1 => {
                sections.iter().next().unwrap_or_default()
            }
            Body::Data(sections) | Body::Sequence(sections) => {
                for section in sections.iter() {
                    self.body.extend_from_slice(section);
                }
                &self.body
            }
            Body::Value { value, encoded } => match value {
                Value::Null => &[],
                Value::String(s) | Value::Symbol(s) => s.as_bytes(),
                Value::Binary(b) => b,
                _ => encoded,
            },
            Body::Empty => &[],
        };
        // Application properties go into the builder before `append` closes the row, but a failure
        // must leave the builder untouched: read and check them all first, in one pass, keeping
        // strings borrowed from the message and other values rendered one after another into
        // `self.value`.
        if let Some(properties) = view.application_properties {
            self.value.clear();
            let mut pending = SmallVec::<[(&str, PendingValue<'_>); INLINE_PROPERTIES]>::new();
            for_each_property(properties, |name, value, encoded| {
                check_property(value, encoded)?;
                pending.push((name, read_property(value, encoded, &mut self.value)));
                Ok(())
            })
            .map_err(problem)?;
            for (name, value) in pending {
                match value {
                    PendingValue::Text(text) => {
                        builder.append_application_property(name, Some(text), None);
                    }
                    PendingValue::Rendered { text, type_name } => builder
                        .append_application_property(
                            name,
                            text.map(|range| &self.value[range]),
                            Some(type_name),
                        ),
                }
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
    use fe2o3_amqp_types::messaging::message::__private::Serializable;
    use fe2o3_amqp_types::messaging::{Body, Message, MessageId};
    use fe2o3_amqp_types::primitives::Value;

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

    fn encoded(message: &Message<Body<Value>>) -> Bytes {
        Bytes::from(serde_amqp::to_vec(&Serializable(message)).unwrap())
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
        assert_eq!(decoder.append(&encoded(&message)).unwrap(), 42);
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
    fn batches_in_reused_body_buffers_keep_their_own_bodies() {
        use arrow::array::AsArray;

        let budget = crate::source::memory::MemoryBudget::new(64 * 1024 * 1024);
        let mut decoder = MessageDecoder::with_body_buffers("hub", "0", budget.body_buffers());
        let body = |n: i64| vec![u8::try_from(n).unwrap(); 300_000];
        let mut batch_from = |first: i64| {
            for n in first..first + 4 {
                let data = Body::Data(vec![Data(Binary::from(body(n)))].into());
                decoder.append(&encoded(&message(n, data))).unwrap();
            }
            decoder.finish().unwrap()
        };
        let values_of = |batch: &RecordBatch| {
            let bodies = batch.column_by_name("body").unwrap().as_binary::<i32>();
            (
                bodies.values().as_ptr(),
                bodies
                    .iter()
                    .map(|b| b.unwrap().to_vec())
                    .collect::<Vec<_>>(),
            )
        };
        let expected = |first: i64| (first..first + 4).map(body).collect::<Vec<_>>();

        let first = batch_from(0);
        let second = batch_from(4);
        let (first_buffer, first_bodies) = values_of(&first);
        drop(first);
        // The third batch was given its buffer when the second finished, before the first was
        // dropped; the fourth gets the first's.
        let third = batch_from(8);
        let fourth = batch_from(12);
        let (fourth_buffer, fourth_bodies) = values_of(&fourth);
        assert_eq!(
            fourth_buffer, first_buffer,
            "the first batch's buffer is reused"
        );
        assert_eq!(first_bodies, expected(0));
        assert_eq!(values_of(&second).1, expected(4));
        assert_eq!(values_of(&third).1, expected(8));
        assert_eq!(fourth_bodies, expected(12));
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
            decoder.append(&encoded(&message)).unwrap();
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
        decoder.append(&encoded(&message)).unwrap();
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
    fn a_property_failing_after_good_ones_leaves_the_batch_untouched() {
        let with_properties = |third: &str| {
            let mut properties = OrderedMap::new();
            properties.insert("a".to_owned(), SimpleValue::String("x".into()));
            properties.insert("b".to_owned(), SimpleValue::Int(5));
            properties.insert("c".to_owned(), SimpleValue::String(third.into()));
            let mut message = message(5, Body::Empty);
            message.application_properties = Some(ApplicationProperties(properties));
            encoded(&message).to_vec()
        };
        // The third value's bytes made invalid UTF-8: the first two were read and rendered already.
        let mut bad = with_properties("zzzz");
        let at = bad
            .windows(4)
            .position(|window| window == b"zzzz")
            .expect("the third value in the encoding");
        bad[at..at + 2].copy_from_slice(&[0xff, 0xfe]);
        let mut decoder = MessageDecoder::new("hub", "0");
        let malformed = decoder.append(&Bytes::from(bad)).unwrap_err();
        assert_eq!(malformed.sequence_number, Some(5));
        assert!(decoder.is_empty());
        decoder.append(&Bytes::from(with_properties("ok"))).unwrap();
        let row = only_row(&mut decoder);
        assert_eq!(
            row.application_properties,
            vec![
                ("a".to_owned(), AppPropertyValue::String("x".into())),
                ("b".to_owned(), AppPropertyValue::Long(5)),
                ("c".to_owned(), AppPropertyValue::String("ok".into())),
            ]
        );
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
            decoder.append(&encoded(&message(1, body))).unwrap();
            assert_eq!(only_row(&mut decoder).body.to_vec(), expected, "{name}");
        }
    }

    #[test]
    fn a_message_without_position_annotations_is_an_error_and_appends_nothing() {
        let mut decoder = MessageDecoder::new("hub", "0");
        let bare = Message::builder().body(Body::<Value>::Empty).build();
        let error = decoder.append(&encoded(&bare)).unwrap_err().problem;
        assert!(error.contains("x-opt-sequence-number"), "{error}");
        assert!(decoder.is_empty());
        decoder.append(&encoded(&message(9, Body::Empty))).unwrap();
        assert_eq!(decoder.finish().unwrap().num_rows(), 1);
    }
}
