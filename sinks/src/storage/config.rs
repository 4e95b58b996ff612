//! Configuration of the storage sink, named and bounded like IoT Hub's storage endpoint
//! (`encoding`, `fileNameFormat`, `batchFrequencyInSeconds`, `maxChunkSizeInBytes`).
//!
//! IoT Hub's ranges and the file name rules are checked while the configuration file is parsed, so
//! `hubroute check` reports a bad value at its line without touching the store. The Rust API
//! ([`StorageSinkConfig::new`] and field assignment) accepts any positive duration and size, for
//! tests and embedders that need files faster or smaller than IoT Hub allows.

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::name::FileNameFormat;
use crate::{ObjectStoreConfig, RetryPolicy};

/// The least `max_buffered_bytes` a configuration file may set.
const MIN_BUFFERED_BYTES: u64 = 1024 * 1024;

/// IoT Hub's `batchFrequencyInSeconds` range.
pub(crate) const BATCH_FREQUENCY_SECONDS: RangeInclusive<u64> = 60..=720;

/// IoT Hub's `maxChunkSizeInBytes` range: 10 MiB to 500 MiB.
pub(crate) const MAX_CHUNK_BYTES: RangeInclusive<u64> = 10_485_760..=524_288_000;

/// An IoT Hub storage endpoint: Avro, Avro Deflate or JSON-lines files on an object store, in
/// IoT Hub's record layout and blob names.
///
/// ```toml
/// type = "storage"
/// name = "archive"
/// store = { kind = "azure", container = "telemetry" }
/// encoding = "avro"                       # "avro" | "avro_deflate" | "json"
/// file_name_format = "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}"
/// batch_frequency = 300                   # seconds, 60 to 720 (or "5m")
/// max_chunk_bytes = 314572800             # 10 MiB to 500 MiB
/// max_buffered_bytes = 268435456          # memory of open files and uploads
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSinkConfig {
    /// The endpoint name (routes name it).
    pub name: String,
    /// Where files go (default: local directory `hubroute-data`); IoT Hub's `containerName` is the
    /// Azure store's `container`.
    #[serde(default)]
    pub store: ObjectStoreConfig,
    /// File format (default `avro`). IoT Hub's spellings `Avro`, `AvroDeflate` and `JSON` are
    /// accepted too.
    #[serde(default)]
    pub encoding: StorageEncoding,
    /// Blob name of a file, IoT Hub's `fileNameFormat`: every one of `{iothub}` `{partition}`
    /// `{YYYY}` `{MM}` `{DD}` `{HH}` `{mm}` must appear, in any order, with any literal text between
    /// and after them (such as an extension: `….avro`). Nothing is appended: the default gives
    /// names like `myhub/0/2026/03/07/09/05`, as IoT Hub's default does. The time is the UTC
    /// start of the file's batch window.
    #[serde(
        default = "default_file_name_format",
        deserialize_with = "file_name_format"
    )]
    pub file_name_format: String,
    /// Value of `{iothub}`; default: the event hub name of the file's messages. Set it to the IoT
    /// hub's name to keep the blob names a migrated hub wrote.
    #[serde(default)]
    pub iothub: Option<String>,
    /// A file is written at most this long after its window opened (IoT Hub's
    /// `batchFrequencyInSeconds`): seconds as an integer, or a duration such as `"5m"`; 60 s to
    /// 720 s, default 300 s.
    #[serde(
        default = "default_batch_frequency",
        deserialize_with = "batch_frequency"
    )]
    pub batch_frequency: Duration,
    /// A file is written once it holds this many bytes (IoT Hub's `maxChunkSizeInBytes`); 10 MiB
    /// (10 485 760) to 500 MiB (524 288 000), default 300 MiB. A file can exceed it by one
    /// batch; an Avro Deflate file counts the block it is filling (up to 64 kB) uncompressed.
    #[serde(
        default = "default_max_chunk_bytes",
        deserialize_with = "max_chunk_bytes"
    )]
    pub max_chunk_bytes: u64,
    /// Write a file with no records for a partition that received nothing during a whole
    /// `batch_frequency`, as IoT Hub does (default true). An empty Avro file is a valid Avro file
    /// (header, no blocks); an empty JSON file has zero bytes.
    #[serde(default = "default_write_empty_files")]
    pub write_empty_files: bool,
    /// The memory all open files (encoded bytes and the rows they keep until committed) and the
    /// files being uploaded may hold together (default 256 MiB). Over it, a write waits for an
    /// upload or closes the largest open file early, so with many partitions active files are
    /// smaller than `max_chunk_bytes` and memory does not grow with the partition count.
    #[serde(
        default = "default_max_buffered_bytes",
        deserialize_with = "max_buffered_bytes"
    )]
    pub max_buffered_bytes: u64,
    /// Uploads in flight at once; `write` waits when all are busy (default 4).
    #[serde(default = "default_max_concurrent_uploads")]
    pub max_concurrent_uploads: usize,
    /// Backoff for failed uploads.
    #[serde(default)]
    pub retry: RetryPolicy,
}

/// The file format of a storage endpoint, IoT Hub's `encoding`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageEncoding {
    /// An Avro object container file, uncompressed (`avro.codec` = `null`).
    #[default]
    #[serde(alias = "Avro")]
    Avro,
    /// An Avro object container file with deflate-compressed blocks (`avro.codec` = `deflate`).
    #[serde(alias = "AvroDeflate")]
    AvroDeflate,
    /// One JSON record per line.
    #[serde(alias = "JSON")]
    Json,
}

fn default_file_name_format() -> String {
    "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}".to_owned()
}

fn default_batch_frequency() -> Duration {
    Duration::from_secs(300)
}

fn default_max_chunk_bytes() -> u64 {
    314_572_800
}

fn default_write_empty_files() -> bool {
    true
}

fn default_max_buffered_bytes() -> u64 {
    256 * 1024 * 1024
}

fn default_max_concurrent_uploads() -> usize {
    4
}

fn file_name_format<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let format = String::deserialize(deserializer)?;
    FileNameFormat::parse(&format).map_err(serde::de::Error::custom)?;
    Ok(format)
}

fn batch_frequency<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Integer(u64),
        Text(String),
    }
    let frequency = match Seconds::deserialize(deserializer)? {
        Seconds::Integer(seconds) => Duration::from_secs(seconds),
        Seconds::Text(text) => humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "batch_frequency `{text}` is not a duration ({e}); write seconds (300) or e.g. \"5m\""
            ))
        })?,
    };
    let seconds = frequency.as_secs();
    if frequency.subsec_nanos() != 0 || !BATCH_FREQUENCY_SECONDS.contains(&seconds) {
        return Err(serde::de::Error::custom(format!(
            "batch_frequency must be a whole number of seconds from {} to {} (IoT Hub's \
             batchFrequencyInSeconds); got {frequency:?}",
            BATCH_FREQUENCY_SECONDS.start(),
            BATCH_FREQUENCY_SECONDS.end()
        )));
    }
    Ok(frequency)
}

fn max_chunk_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let bytes = u64::deserialize(deserializer)?;
    if !MAX_CHUNK_BYTES.contains(&bytes) {
        return Err(serde::de::Error::custom(format!(
            "max_chunk_bytes must be from {} (10 MiB) to {} (500 MiB) (IoT Hub's \
             maxChunkSizeInBytes); got {bytes}",
            MAX_CHUNK_BYTES.start(),
            MAX_CHUNK_BYTES.end()
        )));
    }
    Ok(bytes)
}

fn max_buffered_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let bytes = u64::deserialize(deserializer)?;
    if bytes < MIN_BUFFERED_BYTES {
        return Err(serde::de::Error::custom(format!(
            "max_buffered_bytes must be at least {MIN_BUFFERED_BYTES} (1 MiB): it holds the open \
             files of every partition; got {bytes}"
        )));
    }
    Ok(bytes)
}

impl StorageSinkConfig {
    /// A configuration with IoT Hub's defaults, writing to `store`.
    pub fn new(name: impl Into<String>, store: ObjectStoreConfig) -> Self {
        Self {
            name: name.into(),
            store,
            encoding: StorageEncoding::default(),
            file_name_format: default_file_name_format(),
            iothub: None,
            batch_frequency: default_batch_frequency(),
            max_chunk_bytes: default_max_chunk_bytes(),
            write_empty_files: default_write_empty_files(),
            max_buffered_bytes: default_max_buffered_bytes(),
            max_concurrent_uploads: default_max_concurrent_uploads(),
            retry: RetryPolicy::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(fields: &str) -> Result<StorageSinkConfig, String> {
        let json = format!(r#"{{"name":"archive"{fields}}}"#);
        serde_json::from_str(&json).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_iot_hubs() {
        let config = parse("").unwrap();
        assert_eq!(
            config,
            StorageSinkConfig::new("archive", ObjectStoreConfig::default())
        );
        assert_eq!(config.encoding, StorageEncoding::Avro);
        assert_eq!(config.batch_frequency, Duration::from_secs(300));
        assert_eq!(config.max_chunk_bytes, 300 * 1024 * 1024);
        assert_eq!(
            config.file_name_format,
            "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}"
        );
        assert!(config.write_empty_files);
    }

    #[test]
    fn settings_are_checked_against_iot_hubs_rules() {
        let cases = [
            (r#","encoding":"avro_deflate""#, Ok(())),
            (r#","encoding":"AvroDeflate""#, Ok(())),
            (r#","encoding":"JSON""#, Ok(())),
            (r#","encoding":"csv""#, Err("unknown variant `csv`")),
            (r#","batch_frequency":60"#, Ok(())),
            (r#","batch_frequency":720"#, Ok(())),
            (r#","batch_frequency":"12m""#, Ok(())),
            (r#","batch_frequency":59"#, Err("from 60 to 720")),
            (r#","batch_frequency":721"#, Err("from 60 to 720")),
            (
                r#","batch_frequency":"90.5s""#,
                Err("whole number of seconds"),
            ),
            (r#","batch_frequency":"soon""#, Err("is not a duration")),
            (r#","max_chunk_bytes":10485760"#, Ok(())),
            (r#","max_chunk_bytes":524288000"#, Ok(())),
            (r#","max_chunk_bytes":10485759"#, Err("maxChunkSizeInBytes")),
            (
                r#","max_chunk_bytes":524288001"#,
                Err("maxChunkSizeInBytes"),
            ),
            (
                r#","file_name_format":"{partition}/{iothub}/{YYYY}-{MM}-{DD}/{HH}{mm}.avro""#,
                Ok(()),
            ),
            (
                r#","file_name_format":"{iothub}/{YYYY}/{MM}/{DD}/{HH}/{mm}""#,
                Err("{partition}"),
            ),
            (r#","max_buffered_bytes":1048576"#, Ok(())),
            (r#","max_buffered_bytes":1048575"#, Err("at least 1048576")),
            (r#","typo":1"#, Err("unknown field `typo`")),
        ];
        for (fields, expected) in cases {
            match (parse(fields), expected) {
                (Ok(_), Ok(())) => {}
                (Err(error), Err(wanted)) => assert!(error.contains(wanted), "{fields}: {error}"),
                (parsed, expected) => panic!("{fields}: {parsed:?}, expected {expected:?}"),
            }
        }
    }
}
