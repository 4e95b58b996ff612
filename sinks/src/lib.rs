//! Destinations for routed messages: Parquet on object storage, IoT Hub's storage-endpoint files
//! (Avro, Avro Deflate, JSON), PostgreSQL, SQLite, webhooks, event hubs and Service Bus (or any AMQP
//! 1.0 queue), and the dead-letter store, all behind one [`Sink`] contract.
//!
//! This crate knows nothing of route conditions or of the source: it receives Arrow batches of the
//! message schema (`hubroute-message`) and reports, per ticket, when rows are committed. The AMQP
//! sinks publish with the Event Hubs vocabulary of `hubroute-protocol`.

mod amqp;
mod config;
mod dead_letter;
mod error;
mod json_path;
mod object_files;
mod object_store_config;
mod parquet;
mod postgres;
mod sink;
mod sqlite;
mod storage;
mod table;
mod webhook;

pub use amqp::{
    AmqpSink, EventHubsSinkConfig, PartitionKey, ServiceBusSinkConfig, SystemPropertyPlacement,
};
pub use config::{SinkConfig, build_sink, probe};
pub use dead_letter::{
    DeadLetter, DeadLetterConfig, DeadLetterProperty, DeadLetterStore, MALFORMED_SINK,
    ParkedObject, StoredObject,
};
pub use error::{Error, Result};
pub use object_store_config::{ObjectStoreConfig, Secret};
pub use parquet::{
    Compression, ParquetSink, ParquetSinkConfig, TypedColumn, TypedColumnType, read_parquet_file,
};
pub use postgres::{PostgresSink, PostgresSinkConfig, SslMode};
pub(crate) use sink::AckLedger;
pub use sink::{
    Ack, AckSender, FailedRow, FlushReason, RetryPolicy, Sink, SinkBatch, Surrender, Ticket,
    drive_sink,
};
pub use sqlite::{SqliteSink, SqliteSinkConfig};
pub use storage::{
    StorageEncoding, StorageSink, StorageSinkConfig, is_avro, read_storage_file,
    storage_json_record,
};
pub use table::{ColumnMapping, SqlType, TableConfig, TableSink};
pub use webhook::{SignatureConfig, WebhookFormat, WebhookSink, WebhookSinkConfig};
