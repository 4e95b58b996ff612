//! IoT Hub's storage record and the two file encodings that carry it.
//!
//! Every message becomes one record of IoT Hub's schema `Microsoft.Azure.Devices.Message`:
//!
//! | field | value |
//! |---|---|
//! | `EnqueuedTimeUtc` | IoT Hub's enqueued time (`iothub-enqueuedtime`, else the event hub's), ISO 8601 UTC with 7 fractional digits: `2019-05-10T06:06:32.7220000Z` |
//! | `Properties` | application properties (enrichments included) as strings; a property whose AMQP value is null has no string and is left out |
//! | `SystemProperties` | the system properties present, under IoT Hub's storage names: `messageId`, `correlationId`, `userId`, `connectionDeviceId`, `connectionModuleId`, `connectionAuthMethod`, `connectionDeviceGenerationId`, `contentType`, `contentEncoding`, `enqueuedTime`, `dt-dataschema`, `dt-subject` |
//! | `Body` | the body bytes (Avro); in JSON, the body itself when `contentType` is `application/json` and `contentEncoding` is `utf-8` (both case-insensitive) and it parses as JSON, else its base64 |
//!
//! Avro files are written by the `apache-avro` crate, record by record through serde, except the
//! file header, which we assemble (from datums `apache-avro` encodes) for byte fidelity:
//! `apache-avro` omits `avro.codec` when it is `null` and writes the schema in its own canonical
//! form, while IoT Hub's files carry `avro.codec` = `null` (or `deflate`) first and then its schema
//! text exactly as below. Readers parse either, but a job that fingerprints the header (or a
//! byte-for-byte comparison) sees IoT Hub's.

use std::sync::LazyLock;

use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{Codec, DeflateSettings, Schema, Writer};
use arrow::array::{Array, AsArray, MapArray, StringArray};
use base64::Engine as _;
use chrono::{DateTime, Datelike, Timelike};
use hubroute_message::MessageColumns;
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};

use super::StorageEncoding;

/// IoT Hub's record schema, exactly as its files embed it in `avro.schema`.
pub(crate) const SCHEMA_JSON: &str = r#"{"type":"record","name":"Message","namespace":"Microsoft.Azure.Devices","fields":[{"name":"EnqueuedTimeUtc","type":"string"},{"name":"Properties","type":{"type":"map","values":"string"}},{"name":"SystemProperties","type":{"type":"map","values":"string"}},{"name":"Body","type":["null","bytes"]}]}"#;

/// IoT Hub's schema, parsed once: the writer's schema, and the reader's in `reader.rs`.
pub(crate) static SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(SCHEMA_JSON).expect("IoT Hub's schema parses"));

/// Avro block size: Avro's Java default sync interval, which readers and splitters expect.
const AVRO_BLOCK_BYTES: usize = 64_000;

/// The object container magic.
const AVRO_MAGIC: &[u8; 4] = b"Obj\x01";

/// One file being encoded, in memory.
pub(crate) enum FileEncoder {
    /// An Avro object container (null or deflate codec).
    Avro(Box<Writer<'static, Vec<u8>>>),
    /// JSON lines.
    Json(Vec<u8>),
}

impl std::fmt::Debug for FileEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Avro(writer) => write!(f, "FileEncoder::Avro({} bytes)", writer.get_ref().len()),
            Self::Json(buffer) => write!(f, "FileEncoder::Json({} bytes)", buffer.len()),
        }
    }
}

impl FileEncoder {
    /// An empty file of `encoding`: an Avro file starts with its header. `capacity` is the size
    /// the file is expected to reach (the partition's previous file), reserved up front so that a
    /// large file is not copied as its buffer grows.
    pub(crate) fn new(
        encoding: StorageEncoding,
        capacity: usize,
    ) -> Result<Self, apache_avro::Error> {
        let codec = match encoding {
            StorageEncoding::Avro => Codec::Null,
            StorageEncoding::AvroDeflate => Codec::Deflate(DeflateSettings::default()),
            StorageEncoding::Json => return Ok(Self::Json(Vec::with_capacity(capacity))),
        };
        let marker: [u8; 16] = rand::random();
        let mut header = avro_header(codec, &marker)?;
        header.reserve(capacity);
        let writer = Writer::builder()
            .schema(&SCHEMA)
            .writer(header)
            .codec(codec)
            .marker(marker)
            .has_header(true)
            .block_size(AVRO_BLOCK_BYTES)
            .build()?;
        Ok(Self::Avro(Box::new(writer)))
    }

    /// Appends every row of `batch` (a message batch) as one record.
    pub(crate) fn append(&mut self, batch: &MessageColumns<'_>) -> Result<(), apache_avro::Error> {
        let mut time = TimeText::default();
        for row in 0..batch.len() {
            let record = Record::of(batch, row, &mut time);
            match self {
                Self::Avro(writer) => {
                    writer.append_ser(&record)?;
                }
                Self::Json(buffer) => record.write_json(buffer),
            }
        }
        Ok(())
    }

    /// An upper bound of the file's size so far. An Avro writer holds the block it is filling
    /// (written out once it reaches [`AVRO_BLOCK_BYTES`]) where we cannot measure it, so a whole
    /// block is counted for it: Avro files roll up to one block early.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Avro(writer) => writer.get_ref().len() + AVRO_BLOCK_BYTES,
            Self::Json(buffer) => buffer.len(),
        }
    }

    /// The finished file.
    pub(crate) fn finish(self) -> Result<Vec<u8>, apache_avro::Error> {
        match self {
            Self::Avro(writer) => writer.into_inner(),
            Self::Json(buffer) => Ok(buffer),
        }
    }
}

/// The object container header as IoT Hub writes it: magic, the metadata map with `avro.codec`
/// then `avro.schema` in one block, and the sync marker.
fn avro_header(codec: Codec, marker: &[u8; 16]) -> Result<Vec<u8>, apache_avro::Error> {
    let codec_name: &str = codec.into();
    let metadata = Metadata([
        ("avro.codec", codec_name.as_bytes()),
        ("avro.schema", SCHEMA_JSON.as_bytes()),
    ]);
    let map_schema = Schema::map(Schema::Bytes).build();
    let mut header = AVRO_MAGIC.to_vec();
    header.extend(
        GenericDatumWriter::builder(&map_schema)
            .build()?
            .write_ser_to_vec(&metadata)?,
    );
    header.extend_from_slice(marker);
    Ok(header)
}

/// File metadata entries, serialized in this order.
struct Metadata<'a>([(&'a str, &'a [u8]); 2]);

impl Serialize for Metadata<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, serde_bytes::Bytes::new(value))?;
        }
        map.end()
    }
}

/// `2019-05-10T06:06:32.7220000Z`: IoT Hub's timestamp text, formatted without allocating.
#[derive(Debug, Default)]
struct TimeText {
    buffer: [u8; 28],
    /// Milliseconds of the text in `buffer`, to reuse it for the next row with the same time.
    millis: Option<i64>,
    /// Text for years outside 0..=9999, which do not fit the fixed layout.
    unusual: String,
}

impl TimeText {
    fn format(&mut self, millis: i64) -> &str {
        if self.millis != Some(millis) {
            self.millis = Some(millis);
            self.unusual.clear();
            let time = DateTime::from_timestamp_millis(millis).unwrap_or_default();
            let year = time.year();
            if (0..=9999).contains(&year) {
                let digits = |out: &mut [u8], value: u32| {
                    let mut value = value;
                    for slot in out.iter_mut().rev() {
                        *slot = b'0' + u8::try_from(value % 10).expect("a digit");
                        value /= 10;
                    }
                };
                let b = &mut self.buffer;
                digits(&mut b[0..4], year.unsigned_abs());
                b[4] = b'-';
                digits(&mut b[5..7], time.month());
                b[7] = b'-';
                digits(&mut b[8..10], time.day());
                b[10] = b'T';
                digits(&mut b[11..13], time.hour());
                b[13] = b':';
                digits(&mut b[14..16], time.minute());
                b[16] = b':';
                digits(&mut b[17..19], time.second());
                b[19] = b'.';
                digits(&mut b[20..23], time.timestamp_subsec_millis());
                b[23..27].copy_from_slice(b"0000");
                b[27] = b'Z';
            } else {
                self.unusual = format!("{}0000Z", time.format("%Y-%m-%dT%H:%M:%S%.3f"));
            }
        }
        if self.unusual.is_empty() {
            std::str::from_utf8(&self.buffer).expect("ASCII digits")
        } else {
            &self.unusual
        }
    }
}

/// The application properties of one row, as `Properties`.
struct Properties<'a> {
    map: &'a MapArray,
    row: usize,
}

impl Serialize for Properties<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let offsets = self.map.value_offsets();
        let (start, end) = (
            usize::try_from(offsets[self.row]).expect("offsets are non-negative"),
            usize::try_from(offsets[self.row + 1]).expect("offsets are non-negative"),
        );
        let keys = self.map.keys().as_string::<i32>();
        let values = self.map.values().as_string::<i32>();
        let present = (start..end).filter(|&i| values.is_valid(i)).count();
        let mut map = serializer.serialize_map(Some(present))?;
        for i in (start..end).filter(|&i| values.is_valid(i)) {
            map.serialize_entry(keys.value(i), values.value(i))?;
        }
        map.end()
    }
}

/// IoT Hub's storage names of the system properties, in the order its files list them.
const SYSTEM_PROPERTY_COUNT: usize = 12;

/// The system properties of one row, as `SystemProperties`.
struct SystemProperties<'a> {
    entries: [(&'static str, &'a str); SYSTEM_PROPERTY_COUNT],
    len: usize,
}

impl<'a> SystemProperties<'a> {
    fn push(&mut self, name: &'static str, value: Option<&'a str>) {
        if let Some(value) = value {
            self.entries[self.len] = (name, value);
            self.len += 1;
        }
    }
}

impl Serialize for SystemProperties<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for (name, value) in &self.entries[..self.len] {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// One message as IoT Hub's storage record.
struct Record<'a> {
    enqueued_time_utc: &'a str,
    properties: Properties<'a>,
    system_properties: SystemProperties<'a>,
    body: &'a [u8],
    /// `contentType` is `application/json` and `contentEncoding` is `utf-8`.
    json_body: bool,
}

fn text(array: &StringArray, row: usize) -> Option<&str> {
    array.is_valid(row).then(|| array.value(row))
}

impl<'a> Record<'a> {
    fn of(batch: &MessageColumns<'a>, row: usize, time: &'a mut TimeText) -> Self {
        let iothub_time = batch
            .iothub_enqueued_time
            .is_valid(row)
            .then(|| batch.iothub_enqueued_time.value(row));
        let enqueued = time.format(iothub_time.unwrap_or(batch.enqueued_time.value(row)));
        let content_type = text(batch.content_type, row);
        let content_encoding = text(batch.content_encoding, row);
        let user_id = batch
            .user_id
            .is_valid(row)
            .then(|| std::str::from_utf8(batch.user_id.value(row)).ok())
            .flatten();
        let mut system = SystemProperties {
            entries: [("", ""); SYSTEM_PROPERTY_COUNT],
            len: 0,
        };
        system.push("messageId", text(batch.message_id, row));
        system.push("correlationId", text(batch.correlation_id, row));
        system.push("userId", user_id);
        system.push("connectionDeviceId", text(batch.connection_device_id, row));
        system.push("connectionModuleId", text(batch.connection_module_id, row));
        system.push(
            "connectionAuthMethod",
            text(batch.connection_auth_method, row),
        );
        system.push(
            "connectionDeviceGenerationId",
            text(batch.connection_auth_generation_id, row),
        );
        system.push("contentType", content_type);
        system.push("contentEncoding", content_encoding);
        system.push("enqueuedTime", iothub_time.map(|_| enqueued));
        system.push("dt-dataschema", text(batch.dt_dataschema, row));
        system.push("dt-subject", text(batch.dt_subject, row));
        Self {
            enqueued_time_utc: enqueued,
            properties: Properties {
                map: batch.application_properties,
                row,
            },
            system_properties: system,
            body: batch.body.value(row),
            json_body: content_type.is_some_and(|t| t.eq_ignore_ascii_case("application/json"))
                && content_encoding.is_some_and(|e| e.eq_ignore_ascii_case("utf-8")),
        }
    }

    /// Appends the record as one line of JSON.
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"EnqueuedTimeUtc\":\"");
        out.extend_from_slice(self.enqueued_time_utc.as_bytes());
        out.extend_from_slice(b"\",\"Properties\":");
        serde_json::to_writer(&mut *out, &self.properties).expect("writing to a Vec");
        out.extend_from_slice(b",\"SystemProperties\":");
        serde_json::to_writer(&mut *out, &self.system_properties).expect("writing to a Vec");
        out.extend_from_slice(b",\"Body\":");
        if self.json_body && is_json(self.body) {
            // Raw line breaks can only be whitespace between tokens in valid JSON; a space keeps
            // the record on one line without changing its value.
            out.extend(self.body.iter().map(|&b| match b {
                b'\n' | b'\r' => b' ',
                other => other,
            }));
        } else {
            out.push(b'"');
            let start = out.len();
            let encoded = base64::encoded_len(self.body.len(), true).expect("a body fits memory");
            out.resize(start + encoded, 0);
            base64::engine::general_purpose::STANDARD
                .encode_slice(self.body, &mut out[start..])
                .expect("the buffer has the encoded length");
            out.push(b'"');
        }
        out.extend_from_slice(b"}\n");
    }
}

fn is_json(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

impl Serialize for Record<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut record = serializer.serialize_struct("Message", 4)?;
        record.serialize_field("EnqueuedTimeUtc", self.enqueued_time_utc)?;
        record.serialize_field("Properties", &self.properties)?;
        record.serialize_field("SystemProperties", &self.system_properties)?;
        record.serialize_field("Body", &Some(serde_bytes::Bytes::new(self.body)))?;
        record.end()
    }
}
