//! Configuration of the Parquet sink, with IoT Hub's storage-endpoint defaults (300 s / 300 MB)
//! and its blob naming without the partition (`{iothub}/{YYYY}/{MM}/{DD}/{HH}/{mm}`): one file
//! holds the rows of every partition.

use std::time::Duration;

use serde::Deserialize;

use crate::{ObjectStoreConfig, RetryPolicy};

/// A Parquet-on-object-storage endpoint.
///
/// ```toml
/// type = "parquet"
/// name = "lake"
/// store = { kind = "local", root = "/var/lib/hubroute/lake" }
/// path_template = "{iothub}/{YYYY}/{MM}/{DD}/{HH}/{mm}"
/// max_file_age = "300s"
/// max_file_bytes = 314572800
/// compression = "zstd"
/// columns = [{ name = "temperature", path = "$.temperature", type = "float64" }]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// The endpoint name (routes name it; `{endpoint}` in the template).
    pub name: String,
    /// Where files go (default: local directory `hubroute-data`).
    #[serde(default)]
    pub store: ObjectStoreConfig,
    /// Object path of a file, without extension. Tokens: `{iothub}` `{partition}` `{YYYY}` `{MM}`
    /// `{DD}` `{HH}` `{mm}` (UTC time the file was opened) and `{endpoint}`. Without
    /// `{partition}` (the default) a file holds the rows of every partition and the sink appends
    /// `-{random}.parquet`; with it every partition has its own files (IoT Hub's storage layout,
    /// one open file per partition: more memory and more, smaller files) and the sink appends
    /// `-{first sequence number}-{random}.parquet`. Two files never collide.
    #[serde(default = "default_path_template")]
    pub path_template: String,
    /// Value of `{iothub}`; default: the event hub name of the file's messages.
    #[serde(default)]
    pub iothub: Option<String>,
    /// A file is closed and uploaded at most this long after its first row (IoT Hub's
    /// `batchFrequencyInSeconds`, default 300 s; any duration is accepted).
    #[serde(default = "default_max_file_age", with = "humantime_serde")]
    pub max_file_age: Duration,
    /// A file is closed once its encoded size reaches this many bytes (IoT Hub's
    /// `maxChunkSizeInBytes`, default 300 MiB).
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// The memory all open files and uploads in flight of this endpoint may hold together (default
    /// 32 MiB). Over it, a write waits for an upload or closes the largest open file early, so with
    /// many partitions active files are smaller than `max_file_bytes` and memory does not grow with
    /// the partition count.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: u64,
    /// Write a schema-only file when nothing arrived during `max_file_age` (for each partition when
    /// the template names `{partition}`), as IoT Hub does (default false).
    #[serde(default)]
    pub write_empty_files: bool,
    /// Column compression (default zstd).
    #[serde(default)]
    pub compression: Compression,
    /// Typed columns extracted from JSON bodies, appended after the message columns.
    #[serde(default)]
    pub columns: Vec<TypedColumn>,
    /// Uploads in flight at once; `write` waits when all are busy (default 4).
    #[serde(default = "default_max_concurrent_uploads")]
    pub max_concurrent_uploads: usize,
    /// Backoff for failed uploads.
    #[serde(default)]
    pub retry: RetryPolicy,
}

/// Parquet column compression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Zstandard level 1 (fast) on the body, Snappy on the other columns.
    #[default]
    Zstd,
    /// Snappy.
    Snappy,
    /// No compression.
    None,
}

/// One typed column computed from the JSON body of each message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypedColumn {
    /// Column name; must not clash with a message column.
    pub name: String,
    /// JSON path into the body, such as `$.a.b[2].c` (see "JSON paths" in docs/configuration.md).
    pub path: String,
    /// Arrow type of the column.
    #[serde(rename = "type")]
    pub data_type: TypedColumnType,
}

/// Arrow types a typed column can have. A body that is not JSON, a missing path or a value of
/// another JSON type gives null (`utf8` accepts any value, non-strings as JSON text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypedColumnType {
    /// `Utf8`.
    Utf8,
    /// `Int64` (JSON integers).
    Int64,
    /// `Float64` (any JSON number).
    Float64,
    /// `Boolean`.
    Boolean,
    /// `Timestamp(ms, UTC)` from an RFC 3339 string or epoch milliseconds.
    Timestamp,
}

fn default_path_template() -> String {
    "{iothub}/{YYYY}/{MM}/{DD}/{HH}/{mm}".to_owned()
}

fn default_max_file_age() -> Duration {
    Duration::from_secs(300)
}

fn default_max_file_bytes() -> u64 {
    314_572_800
}

fn default_max_buffered_bytes() -> u64 {
    32 * 1024 * 1024
}

fn default_max_concurrent_uploads() -> usize {
    4
}

impl ParquetSinkConfig {
    /// A configuration with every default, writing to `store`.
    pub fn new(name: impl Into<String>, store: ObjectStoreConfig) -> Self {
        Self {
            name: name.into(),
            store,
            path_template: default_path_template(),
            iothub: None,
            max_file_age: default_max_file_age(),
            max_file_bytes: default_max_file_bytes(),
            write_empty_files: false,
            compression: Compression::default(),
            columns: Vec::new(),
            max_buffered_bytes: default_max_buffered_bytes(),
            max_concurrent_uploads: default_max_concurrent_uploads(),
            retry: RetryPolicy::default(),
        }
    }
}
