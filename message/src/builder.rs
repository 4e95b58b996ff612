//! Appends messages to Arrow builders and finishes them into a message `RecordBatch`.
//!
//! The source decodes each AMQP transfer straight into a [`MessageRef`] of borrowed slices and appends
//! it here, so decoding allocates nothing per message beyond the bytes copied into the column buffers.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BinaryBuilder, Int64Builder, MapBuilder, MapFieldNames, StringBuilder,
    StringDictionaryBuilder, TimestampMillisecondBuilder,
};
use arrow::buffer::{Buffer, OffsetBuffer};
use arrow::datatypes::Int32Type;
use arrow::record_batch::RecordBatch;

use crate::body_buffers::{BodyBuffers, lend};
use crate::{AppPropertyValue, Message, Result, message_schema};

/// One message as borrowed slices; the fast path into [`MessageBatchBuilder::append`].
///
/// Timestamps are milliseconds since the Unix epoch. Application properties are
/// `(name, canonical string value, AMQP type name if not a string)`; see
/// [`AppPropertyValue`] for the conversion.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageRef<'a> {
    /// Event hub name.
    pub event_hub: &'a str,
    /// Partition id.
    pub partition: &'a str,
    /// `x-opt-sequence-number`.
    pub sequence_number: i64,
    /// `x-opt-offset`.
    pub offset: &'a str,
    /// `x-opt-enqueued-time`, ms since epoch.
    pub enqueued_time_ms: i64,
    /// `x-opt-partition-key`.
    pub partition_key: Option<&'a str>,
    /// `message-id`.
    pub message_id: Option<&'a str>,
    /// `correlation-id`.
    pub correlation_id: Option<&'a str>,
    /// `user-id`.
    pub user_id: Option<&'a [u8]>,
    /// `content-type`.
    pub content_type: Option<&'a str>,
    /// `content-encoding`.
    pub content_encoding: Option<&'a str>,
    /// `iothub-enqueuedtime`, ms since epoch.
    pub iothub_enqueued_time_ms: Option<i64>,
    /// `iothub-connection-device-id`.
    pub connection_device_id: Option<&'a str>,
    /// `iothub-connection-module-id`.
    pub connection_module_id: Option<&'a str>,
    /// `iothub-connection-auth-method`.
    pub connection_auth_method: Option<&'a str>,
    /// `iothub-connection-auth-generation-id`.
    pub connection_auth_generation_id: Option<&'a str>,
    /// `iothub-message-source`.
    pub message_source: Option<&'a str>,
    /// `dt-dataschema`.
    pub dt_dataschema: Option<&'a str>,
    /// `dt-subject`.
    pub dt_subject: Option<&'a str>,
    /// Body bytes.
    pub body: &'a [u8],
    /// Twin JSON.
    pub twin: Option<&'a str>,
}

impl<'a> From<&'a Message> for MessageRef<'a> {
    /// Every field of `message` but its application properties, which
    /// [`MessageBatchBuilder::append_message`] appends first.
    fn from(message: &'a Message) -> Self {
        let system = &message.system;
        Self {
            event_hub: &message.event_hub,
            partition: &message.partition,
            sequence_number: message.sequence_number,
            offset: &message.offset,
            enqueued_time_ms: message.enqueued_time.timestamp_millis(),
            partition_key: message.partition_key.as_deref(),
            message_id: system.message_id.as_deref(),
            correlation_id: system.correlation_id.as_deref(),
            user_id: system.user_id.as_deref(),
            content_type: system.content_type.as_deref(),
            content_encoding: system.content_encoding.as_deref(),
            iothub_enqueued_time_ms: system.iothub_enqueued_time.map(|t| t.timestamp_millis()),
            connection_device_id: system.connection_device_id.as_deref(),
            connection_module_id: system.connection_module_id.as_deref(),
            connection_auth_method: system.connection_auth_method.as_deref(),
            connection_auth_generation_id: system.connection_device_generation_id.as_deref(),
            message_source: system.message_source.as_deref(),
            dt_dataschema: system.dt_dataschema.as_deref(),
            dt_subject: system.dt_subject.as_deref(),
            body: &message.body,
            twin: message.twin.as_deref(),
        }
    }
}

/// Builds message batches row by row.
///
/// Application properties are appended between [`MessageBatchBuilder::append`] calls with
/// [`MessageBatchBuilder::append_application_property`]; `append` then closes the row. A builder is
/// reusable: [`MessageBatchBuilder::finish`] resets it.
pub struct MessageBatchBuilder {
    event_hub: StringBuilder,
    partition: StringBuilder,
    sequence_number: Int64Builder,
    offset: StringBuilder,
    enqueued_time: TimestampMillisecondBuilder,
    partition_key: StringBuilder,
    message_id: StringBuilder,
    correlation_id: StringBuilder,
    user_id: BinaryBuilder,
    content_type: StringBuilder,
    content_encoding: StringBuilder,
    iothub_enqueued_time: TimestampMillisecondBuilder,
    connection_device_id: StringBuilder,
    connection_module_id: StringBuilder,
    connection_auth_method: StringBuilder,
    connection_auth_generation_id: StringBuilder,
    message_source: StringBuilder,
    dt_dataschema: StringBuilder,
    dt_subject: StringBuilder,
    application_properties: MapBuilder<StringBuilder, StringBuilder>,
    application_property_types: MapBuilder<StringBuilder, StringBuilder>,
    /// The body column's values and offsets, built by hand so the values buffer can come from a
    /// caller's [`BodyBuffers`].
    body_values: Vec<u8>,
    body_offsets: Vec<i32>,
    body_buffers: Option<Arc<dyn BodyBuffers>>,
    /// Deduplicates twin texts: rows of one device share one dictionary value.
    twin: StringDictionaryBuilder<Int32Type>,
    rows: usize,
    body_bytes: usize,
}

impl std::fmt::Debug for MessageBatchBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageBatchBuilder")
            .field("rows", &self.rows)
            .field("body_bytes", &self.body_bytes)
            .finish_non_exhaustive()
    }
}

/// A builder of the schema's string map columns (`application_properties`,
/// `application_property_types`), for callers that rewrite one of them in place.
pub fn string_map_builder() -> MapBuilder<StringBuilder, StringBuilder> {
    let names = MapFieldNames {
        entry: "entries".to_owned(),
        key: "key".to_owned(),
        value: "value".to_owned(),
    };
    MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new())
}

impl Default for MessageBatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl MessageBatchBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self {
            event_hub: StringBuilder::new(),
            partition: StringBuilder::new(),
            sequence_number: Int64Builder::new(),
            offset: StringBuilder::new(),
            enqueued_time: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            partition_key: StringBuilder::new(),
            message_id: StringBuilder::new(),
            correlation_id: StringBuilder::new(),
            user_id: BinaryBuilder::new(),
            content_type: StringBuilder::new(),
            content_encoding: StringBuilder::new(),
            iothub_enqueued_time: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            connection_device_id: StringBuilder::new(),
            connection_module_id: StringBuilder::new(),
            connection_auth_method: StringBuilder::new(),
            connection_auth_generation_id: StringBuilder::new(),
            message_source: StringBuilder::new(),
            dt_dataschema: StringBuilder::new(),
            dt_subject: StringBuilder::new(),
            application_properties: string_map_builder(),
            application_property_types: string_map_builder(),
            body_values: Vec::new(),
            body_offsets: vec![0],
            body_buffers: None,
            twin: StringDictionaryBuilder::new(),
            rows: 0,
            body_bytes: 0,
        }
    }

    /// An empty builder whose body buffers come from `buffers` and go back to them once every
    /// array referring to them is dropped.
    pub fn with_body_buffers(buffers: Arc<dyn BodyBuffers>) -> Self {
        Self {
            body_buffers: Some(buffers),
            ..Self::new()
        }
    }

    /// Rows appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row has been appended since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Body bytes appended since the last finish: lets callers cut batches by size.
    pub fn body_bytes(&self) -> usize {
        self.body_bytes
    }

    /// Adds one application property to the row being built. `type_name` is `None` for AMQP strings.
    pub fn append_application_property(
        &mut self,
        name: &str,
        value: Option<&str>,
        type_name: Option<&str>,
    ) {
        self.application_properties.keys().append_value(name);
        self.application_properties.values().append_option(value);
        if let Some(type_name) = type_name {
            self.application_property_types.keys().append_value(name);
            self.application_property_types
                .values()
                .append_value(type_name);
        }
    }

    /// Closes the row: appends every other column from `message`.
    pub fn append(&mut self, message: &MessageRef<'_>) {
        self.event_hub.append_value(message.event_hub);
        self.partition.append_value(message.partition);
        self.sequence_number.append_value(message.sequence_number);
        self.offset.append_value(message.offset);
        self.enqueued_time.append_value(message.enqueued_time_ms);
        self.partition_key.append_option(message.partition_key);
        self.message_id.append_option(message.message_id);
        self.correlation_id.append_option(message.correlation_id);
        self.user_id.append_option(message.user_id);
        self.content_type.append_option(message.content_type);
        self.content_encoding
            .append_option(message.content_encoding);
        self.iothub_enqueued_time
            .append_option(message.iothub_enqueued_time_ms);
        self.connection_device_id
            .append_option(message.connection_device_id);
        self.connection_module_id
            .append_option(message.connection_module_id);
        self.connection_auth_method
            .append_option(message.connection_auth_method);
        self.connection_auth_generation_id
            .append_option(message.connection_auth_generation_id);
        self.message_source.append_option(message.message_source);
        self.dt_dataschema.append_option(message.dt_dataschema);
        self.dt_subject.append_option(message.dt_subject);
        self.application_properties
            .append(true)
            .expect("map keys and values are appended in pairs");
        self.application_property_types
            .append(true)
            .expect("map keys and values are appended in pairs");
        self.body_values.extend_from_slice(message.body);
        self.body_offsets.push(
            i32::try_from(self.body_values.len())
                .expect("a batch's bodies stay below 2 GiB (batch_max_bytes)"),
        );
        self.twin.append_option(message.twin);
        self.rows += 1;
        self.body_bytes += message.body.len();
    }

    /// Appends an owned [`Message`] (application properties included).
    pub fn append_message(&mut self, message: &Message) {
        for (name, value) in &message.application_properties {
            let canonical = value.canonical_string();
            self.append_application_property(name, canonical.as_deref(), value.type_name());
        }
        self.append(&MessageRef::from(message));
    }

    /// Finishes the rows appended so far into a batch and resets the builder.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_hub.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.sequence_number.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.enqueued_time.finish()),
            Arc::new(self.partition_key.finish()),
            Arc::new(self.message_id.finish()),
            Arc::new(self.correlation_id.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.content_type.finish()),
            Arc::new(self.content_encoding.finish()),
            Arc::new(self.iothub_enqueued_time.finish()),
            Arc::new(self.connection_device_id.finish()),
            Arc::new(self.connection_module_id.finish()),
            Arc::new(self.connection_auth_method.finish()),
            Arc::new(self.connection_auth_generation_id.finish()),
            Arc::new(self.message_source.finish()),
            Arc::new(self.dt_dataschema.finish()),
            Arc::new(self.dt_subject.finish()),
            Arc::new(self.application_properties.finish()),
            Arc::new(self.application_property_types.finish()),
            Arc::new(self.finish_body()),
            Arc::new(self.twin.finish()),
        ];
        self.rows = 0;
        self.body_bytes = 0;
        // The builders produce non-nullable map fields while the schema declares the map column
        // itself non-nullable; `try_new` checks both agree.
        Ok(RecordBatch::try_new(message_schema(), columns)?)
    }

    /// The body column; readies the next batch's body buffer, sized like this one's (the next batch
    /// is probably alike) so it is reserved once instead of grown by doubling, each growth copying
    /// everything appended so far.
    fn finish_body(&mut self) -> BinaryArray {
        let mut next_offsets = Vec::with_capacity(self.rows + 1);
        next_offsets.push(0);
        let offsets = std::mem::replace(&mut self.body_offsets, next_offsets);
        let values = std::mem::take(&mut self.body_values);
        let (values, next_values) = match &self.body_buffers {
            Some(buffers) => (lend(buffers, values), buffers.take(self.body_bytes)),
            None => (
                Buffer::from_vec(values),
                Vec::with_capacity(self.body_bytes),
            ),
        };
        self.body_values = next_values;
        BinaryArray::new(OffsetBuffer::new(offsets.into()), values, None)
    }

    /// Convenience: a batch from owned messages.
    pub fn batch_of(messages: &[Message]) -> Result<RecordBatch> {
        let mut builder = Self::new();
        for message in messages {
            builder.append_message(message);
        }
        builder.finish()
    }
}

/// Reconstructs the wire value of an application property from its canonical string and type name,
/// the inverse of [`AppPropertyValue::canonical_string`] for the lossless variants.
pub(crate) fn app_property_from_parts(
    value: Option<&str>,
    type_name: Option<&str>,
) -> AppPropertyValue {
    use base64::Engine as _;
    let Some(value) = value else {
        return AppPropertyValue::Null;
    };
    let parsed = match type_name {
        None => Some(AppPropertyValue::String(value.to_owned())),
        Some("boolean") => value.parse().ok().map(AppPropertyValue::Bool),
        Some("long") => value.parse().ok().map(AppPropertyValue::Long),
        Some("ulong") => value.parse().ok().map(AppPropertyValue::ULong),
        Some("double") => value.parse().ok().map(AppPropertyValue::Double),
        Some("timestamp") => chrono::DateTime::parse_from_rfc3339(value)
            .ok()
            .map(|t| AppPropertyValue::Timestamp(t.timestamp_millis())),
        Some("uuid") => {
            let hex: String = value.chars().filter(|c| *c != '-').collect();
            (hex.len() == 32)
                .then(|| {
                    let mut bytes = [0u8; 16];
                    for (i, byte) in bytes.iter_mut().enumerate() {
                        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
                    }
                    Some(AppPropertyValue::Uuid(bytes))
                })
                .flatten()
        }
        Some("binary") => base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()
            .map(AppPropertyValue::Binary),
        Some(_) => None,
    };
    parsed.unwrap_or_else(|| AppPropertyValue::Other {
        type_name: type_name.unwrap_or("string").to_owned(),
        rendered: value.to_owned(),
    })
}
