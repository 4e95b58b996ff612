//! The one Arrow schema every layer of hubroute agrees on: a batch of IoT Hub / Event Hubs messages.
//!
//! The source decodes AMQP messages into this schema, the route evaluator (`hubroute-queries`) reads it,
//! and every sink writes it. Keeping it in a crate of its own, with no I/O and no protocol knowledge,
//! lets `queries` and `sinks` share it without depending on each other or on the engine.
//!
//! One row is one message. Column order is fixed and documented in [`columns`]; readers look columns up
//! by the constants there, never by position, so adding a trailing column is not a breaking change.
//!
//! Application properties are kept as a map from name to the value's canonical string (IoT Hub treats
//! them as strings in route conditions). Values that were not AMQP strings on the wire are recorded,
//! name → AMQP type name, in a second map so that sinks can keep them faithfully; see
//! [`AppPropertyValue`] for the conversion.

mod body_buffers;
mod builder;
mod columns_view;
mod message;

pub use body_buffers::BodyBuffers;
pub use builder::{MessageBatchBuilder, MessageRef, string_map_builder};
pub use columns_view::{MessageColumns, TwinColumn};
pub use message::{AppPropertyValue, Message, SystemProperties};

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// Errors from reading a batch that does not have the message schema.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A column the message schema requires is absent or has another type.
    #[error(
        "record batch is not a message batch: column `{column}` {problem}; build batches with MessageBatchBuilder"
    )]
    NotAMessageBatch {
        /// The column name from [`columns`].
        column: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// Arrow refused to assemble the batch (a bug in the builder if it ever happens).
    #[error("assembling a message batch failed: {source}")]
    Arrow {
        /// The Arrow error.
        #[from]
        source: arrow::error::ArrowError,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Column names of the message schema, in schema order.
pub mod columns {
    /// Event hub (entity) name the message was read from. Part of the idempotency key.
    pub const EVENT_HUB: &str = "event_hub";
    /// Partition id (Event Hubs partition ids are strings). Part of the idempotency key.
    pub const PARTITION: &str = "partition";
    /// `x-opt-sequence-number`: strictly increasing per partition. Part of the idempotency key.
    pub const SEQUENCE_NUMBER: &str = "sequence_number";
    /// `x-opt-offset`: opaque position string.
    pub const OFFSET: &str = "offset";
    /// `x-opt-enqueued-time`: when the event hub accepted the event.
    pub const ENQUEUED_TIME: &str = "enqueued_time";
    /// `x-opt-partition-key`.
    pub const PARTITION_KEY: &str = "partition_key";
    /// AMQP `message-id` (`$messageId`), converted to a string.
    pub const MESSAGE_ID: &str = "message_id";
    /// AMQP `correlation-id` (`$correlationId`), converted to a string.
    pub const CORRELATION_ID: &str = "correlation_id";
    /// AMQP `user-id` (`$userId`), raw bytes.
    pub const USER_ID: &str = "user_id";
    /// AMQP `content-type` (`$contentType`).
    pub const CONTENT_TYPE: &str = "content_type";
    /// AMQP `content-encoding` (`$contentEncoding`).
    pub const CONTENT_ENCODING: &str = "content_encoding";
    /// `iothub-enqueuedtime` (`$enqueuedTime`): when IoT Hub accepted the device message.
    pub const IOTHUB_ENQUEUED_TIME: &str = "iothub_enqueued_time";
    /// `iothub-connection-device-id` (`$connectionDeviceId`).
    pub const CONNECTION_DEVICE_ID: &str = "connection_device_id";
    /// `iothub-connection-module-id` (`$connectionModuleId`).
    pub const CONNECTION_MODULE_ID: &str = "connection_module_id";
    /// `iothub-connection-auth-method` (`$connectionAuthMethod`).
    pub const CONNECTION_AUTH_METHOD: &str = "connection_auth_method";
    /// `iothub-connection-auth-generation-id` (`$connectionDeviceGenerationId`).
    pub const CONNECTION_AUTH_GENERATION_ID: &str = "connection_auth_generation_id";
    /// `iothub-message-source`: `Telemetry`, `twinChangeEvents`, `deviceLifecycleEvents`, ...
    pub const MESSAGE_SOURCE: &str = "message_source";
    /// `dt-dataschema` (`$dt-dataschema`).
    pub const DT_DATASCHEMA: &str = "dt_dataschema";
    /// `dt-subject` (`$dt-subject`).
    pub const DT_SUBJECT: &str = "dt_subject";
    /// Application properties: map of name → canonical string value.
    pub const APPLICATION_PROPERTIES: &str = "application_properties";
    /// AMQP type names of application properties whose wire type was not `string`.
    pub const APPLICATION_PROPERTY_TYPES: &str = "application_property_types";
    /// The message body, raw bytes as sent by the device.
    pub const BODY: &str = "body";
    /// The device (or module) twin as JSON text, when the engine knows it; used by `$twin` queries.
    /// Dictionary-encoded ([`twin_type`](crate::twin_type)): a batch holds each distinct twin once
    /// and one small key per row, so attaching twins copies no JSON per row.
    pub const TWIN: &str = "twin";
}

fn string_map_type() -> DataType {
    let entries = Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, true),
    ]);
    DataType::Map(
        Arc::new(Field::new("entries", DataType::Struct(entries), false)),
        false,
    )
}

/// The Arrow type of the millisecond UTC timestamps in the schema.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The Arrow type of the `twin` column: dictionary keys (`Int32`) into distinct twin JSON texts.
pub fn twin_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    use columns::*;
    let utf8 = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        utf8(EVENT_HUB, false),
        utf8(PARTITION, false),
        Field::new(SEQUENCE_NUMBER, DataType::Int64, false),
        utf8(OFFSET, false),
        Field::new(ENQUEUED_TIME, timestamp_type(), false),
        utf8(PARTITION_KEY, true),
        utf8(MESSAGE_ID, true),
        utf8(CORRELATION_ID, true),
        Field::new(USER_ID, DataType::Binary, true),
        utf8(CONTENT_TYPE, true),
        utf8(CONTENT_ENCODING, true),
        Field::new(IOTHUB_ENQUEUED_TIME, timestamp_type(), true),
        utf8(CONNECTION_DEVICE_ID, true),
        utf8(CONNECTION_MODULE_ID, true),
        utf8(CONNECTION_AUTH_METHOD, true),
        utf8(CONNECTION_AUTH_GENERATION_ID, true),
        utf8(MESSAGE_SOURCE, true),
        utf8(DT_DATASCHEMA, true),
        utf8(DT_SUBJECT, true),
        Field::new(APPLICATION_PROPERTIES, string_map_type(), false),
        Field::new(APPLICATION_PROPERTY_TYPES, string_map_type(), false),
        Field::new(BODY, DataType::Binary, false),
        Field::new(TWIN, twin_type(), true),
    ]))
});

/// The message batch schema (shared, cheap to clone).
pub fn message_schema() -> SchemaRef {
    Arc::clone(&SCHEMA)
}
