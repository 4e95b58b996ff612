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
//! An Avro record is encoded straight from the batch's columns into the block being filled, with no
//! value or serde tree per row: the record schema is fixed, so each datum is its four fields in
//! Avro's binary encoding (a string, two string maps written as one block of entries, a union
//! branch index and bytes). That made encoding ~5x cheaper than `apache-avro`'s schema-aware serde
//! writer (callgrind, `storage_avro`), which walks the schema per field and per map entry.
//! `apache-avro` stays the authority: its parser checks the schema text, its codec compresses Avro
//! Deflate blocks, it encodes the header's metadata map, and the unit tests check every datum we
//! write against its own encoding of the same record, byte for byte.
//!
//! The file header is assembled (from datums `apache-avro` encodes) for byte fidelity: IoT Hub's
//! files carry `avro.codec` = `null` (or `deflate`) first and then its schema text exactly as below,
//! where `apache-avro`'s writer omits a `null` codec and writes the schema in its own canonical
//! form. Readers parse either, but a job that fingerprints the header (or a byte-for-byte
//! comparison) sees IoT Hub's.

use std::sync::LazyLock;

use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{Codec, DeflateSettings, Schema};
use arrow::array::{Array, AsArray, MapArray, StringArray};
use base64::Engine as _;
use chrono::{DateTime, Datelike, Timelike};
use hubroute_message::MessageColumns;
use serde::ser::SerializeMap;
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
#[derive(Debug)]
pub(crate) enum FileEncoder {
    /// An Avro object container (null or deflate codec).
    Avro(AvroFile),
    /// JSON lines.
    Json(Vec<u8>),
}

/// An Avro object container being filled: the header and the finished blocks, and the block
/// being filled.
pub(crate) struct AvroFile {
    file: Vec<u8>,
    block: Vec<u8>,
    /// Records in `block`.
    records: i64,
    codec: Codec,
    marker: [u8; 16],
}

impl std::fmt::Debug for AvroFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroFile")
            .field("bytes", &(self.file.len() + self.block.len()))
            .field("records_in_block", &self.records)
            .finish_non_exhaustive()
    }
}

impl AvroFile {
    /// Appends row `row` of `batch` as one `Microsoft.Azure.Devices.Message` datum.
    fn append(&mut self, batch: &MessageColumns<'_>, row: usize, time: &mut TimeText) {
        let block = &mut self.block;
        let (enqueued, system) = SystemProperties::of(batch, row, time);
        put_avro_string(block, enqueued);
        let properties = Properties {
            map: batch.application_properties,
            row,
        };
        put_avro_map(block, properties.len(), properties.entries());
        let system_entries = system.entries[..system.len]
            .iter()
            .map(|&(name, value)| -> (&str, &str) { (name, value) });
        put_avro_map(block, system.len, system_entries);
        // `Body` is the union's second branch, `bytes`.
        put_avro_long(block, 1);
        put_avro_bytes(block, batch.body.value(row));
        self.records += 1;
    }

    /// Writes the block being filled out as a finished block (count, size, data, sync marker).
    fn finish_block(&mut self) -> Result<(), apache_avro::Error> {
        if self.records == 0 {
            return Ok(());
        }
        self.codec.compress(&mut self.block)?;
        put_avro_long(&mut self.file, self.records);
        put_avro_long(&mut self.file, self.block.len() as i64);
        self.file.extend_from_slice(&self.block);
        self.file.extend_from_slice(&self.marker);
        self.block.clear();
        self.records = 0;
        Ok(())
    }
}

/// Appends `n` in Avro's `long` encoding: zigzag, then a little-endian base-128 varint.
fn put_avro_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z > 0x7f {
        out.push((z & 0x7f) as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Appends Avro `bytes`: the length, then the bytes.
fn put_avro_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_avro_long(out, bytes.len() as i64);
    out.extend_from_slice(bytes);
}

fn put_avro_string(out: &mut Vec<u8>, text: &str) {
    put_avro_bytes(out, text.as_bytes());
}

/// Appends an Avro `map<string>` of `len` entries as one block (then the empty block that ends
/// it), as `apache-avro` writes a map of known length.
fn put_avro_map<'a>(
    out: &mut Vec<u8>,
    len: usize,
    entries: impl Iterator<Item = (&'a str, &'a str)>,
) {
    if len > 0 {
        put_avro_long(out, len as i64);
        for (key, value) in entries {
            put_avro_string(out, key);
            put_avro_string(out, value);
        }
    }
    out.push(0);
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
        let mut file = avro_header(codec, &marker)?;
        file.reserve(capacity);
        Ok(Self::Avro(AvroFile {
            file,
            block: Vec::with_capacity(AVRO_BLOCK_BYTES + 4096),
            records: 0,
            codec,
            marker,
        }))
    }

    /// Appends every row of `batch` (a message batch) as one record.
    pub(crate) fn append(&mut self, batch: &MessageColumns<'_>) -> Result<(), apache_avro::Error> {
        let mut time = TimeText::default();
        for row in 0..batch.len() {
            match self {
                Self::Avro(avro) => {
                    avro.append(batch, row, &mut time);
                    if avro.block.len() >= AVRO_BLOCK_BYTES {
                        avro.finish_block()?;
                    }
                }
                Self::Json(buffer) => Record::of(batch, row, &mut time).write_json(buffer),
            }
        }
        Ok(())
    }

    /// The file's size so far (for Avro Deflate, the block being filled counts uncompressed).
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Avro(avro) => avro.file.len() + avro.block.len(),
            Self::Json(buffer) => buffer.len(),
        }
    }

    /// The finished file.
    pub(crate) fn finish(self) -> Result<Vec<u8>, apache_avro::Error> {
        match self {
            Self::Avro(mut avro) => {
                avro.finish_block()?;
                Ok(avro.file)
            }
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

/// Writes `value` as decimal digits filling `out`, zero-padded.
fn digits(out: &mut [u8], value: u32) {
    let mut value = value;
    for slot in out.iter_mut().rev() {
        *slot = b'0' + u8::try_from(value % 10).expect("a digit");
        value /= 10;
    }
}

impl TimeText {
    fn format(&mut self, millis: i64) -> &str {
        let same_minute = self
            .millis
            .is_some_and(|last| last.div_euclid(60_000) == millis.div_euclid(60_000));
        if self.millis != Some(millis) && same_minute && self.unusual.is_empty() {
            // Rows of a batch are usually seconds apart: only the seconds and milliseconds change.
            self.millis = Some(millis);
            let in_minute = u32::try_from(millis.rem_euclid(60_000)).expect("below 60000");
            digits(&mut self.buffer[17..19], in_minute / 1000);
            digits(&mut self.buffer[20..23], in_minute % 1000);
        } else if self.millis != Some(millis) {
            self.millis = Some(millis);
            self.unusual.clear();
            let time = DateTime::from_timestamp_millis(millis).unwrap_or_default();
            let year = time.year();
            if (0..=9999).contains(&year) {
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

impl<'a> Properties<'a> {
    /// The row's entries in the map's arrays, null values included.
    fn range(&self) -> std::ops::Range<usize> {
        let offsets = self.map.value_offsets();
        usize::try_from(offsets[self.row]).expect("offsets are non-negative")
            ..usize::try_from(offsets[self.row + 1]).expect("offsets are non-negative")
    }

    /// Number of properties with a value (a null one has no string and is left out).
    fn len(&self) -> usize {
        let values = self.map.values();
        self.range().filter(|&i| values.is_valid(i)).count()
    }

    /// `(name, value)` of each property with a value.
    fn entries(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        let keys = self.map.keys().as_string::<i32>();
        let values = self.map.values().as_string::<i32>();
        self.range()
            .filter(|&i| values.is_valid(i))
            .map(|i| (keys.value(i), values.value(i)))
    }
}

impl Serialize for Properties<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (key, value) in self.entries() {
            map.serialize_entry(key, value)?;
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

    /// The `EnqueuedTimeUtc` text of row `row` (IoT Hub's enqueued time, else the event hub's)
    /// and its system properties present, under IoT Hub's storage names.
    fn of(batch: &MessageColumns<'a>, row: usize, time: &'a mut TimeText) -> (&'a str, Self) {
        let iothub_time = batch
            .iothub_enqueued_time
            .is_valid(row)
            .then(|| batch.iothub_enqueued_time.value(row));
        let enqueued = time.format(iothub_time.unwrap_or(batch.enqueued_time.value(row)));
        let user_id = batch
            .user_id
            .is_valid(row)
            .then(|| std::str::from_utf8(batch.user_id.value(row)).ok())
            .flatten();
        let mut system = Self {
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
        system.push("contentType", text(batch.content_type, row));
        system.push("contentEncoding", text(batch.content_encoding, row));
        system.push("enqueuedTime", iothub_time.map(|_| enqueued));
        system.push("dt-dataschema", text(batch.dt_dataschema, row));
        system.push("dt-subject", text(batch.dt_subject, row));
        (enqueued, system)
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

/// One message as IoT Hub's storage record, for a JSON line.
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
        let (enqueued, system) = SystemProperties::of(batch, row, time);
        let content_type = text(batch.content_type, row);
        let content_encoding = text(batch.content_encoding, row);
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use apache_avro::types::Value;
    use chrono::DateTime;
    use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder};

    use super::*;

    fn messages() -> Vec<Message> {
        let mut full = Message::telemetry("b".repeat(1000));
        full.enqueued_time = DateTime::from_timestamp_millis(1_700_000_000_001).unwrap();
        full.system.message_id = Some("m-1".into());
        full.system.user_id = Some(b"hub".to_vec());
        full.system.connection_device_id = Some("pump-é".into());
        full.system.iothub_enqueued_time = DateTime::from_timestamp_millis(1_654_109_018_051);
        full.application_properties = vec![
            ("level".into(), AppPropertyValue::from("storage")),
            ("gone".into(), AppPropertyValue::Null),
            ("n".into(), AppPropertyValue::Long(-3)),
        ];
        let mut bare = Message::telemetry(Vec::new());
        bare.enqueued_time = DateTime::from_timestamp_millis(0).unwrap();
        vec![full, bare]
    }

    fn map(entries: &[(&str, &str)]) -> Value {
        Value::Map(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                .collect::<HashMap<_, _>>(),
        )
    }

    fn record(time: &str, properties: Value, system: Value, body: &[u8]) -> Value {
        Value::Record(vec![
            ("EnqueuedTimeUtc".into(), Value::String(time.into())),
            ("Properties".into(), properties),
            ("SystemProperties".into(), system),
            (
                "Body".into(),
                Value::Union(1, Box::new(Value::Bytes(body.to_vec()))),
            ),
        ])
    }

    #[test]
    fn times_have_seven_fractional_digits_within_and_across_minutes() {
        let mut time = TimeText::default();
        for millis in [
            1_654_109_018_051,
            1_654_109_019_999,
            1_654_109_040_000,
            1_654_109_060_001,
            -1,
            -60_001,
            -60_000,
            253_402_300_800_000,
            253_402_300_800_001,
            1_654_109_060_002,
        ] {
            let expected = format!(
                "{}0000Z",
                DateTime::from_timestamp_millis(millis)
                    .unwrap()
                    .format("%Y-%m-%dT%H:%M:%S%.3f")
            );
            assert_eq!(time.format(millis), expected, "{millis}");
        }
    }

    /// `apache-avro`'s reader, with IoT Hub's schema, reads every datum back as the record written,
    /// across many blocks, with and without deflate.
    #[test]
    fn apache_avro_reads_back_every_record_as_written() {
        let schema = &*SCHEMA;
        let batch = MessageBatchBuilder::batch_of(&messages()).unwrap();
        let columns = MessageColumns::try_new(&batch).unwrap();
        let expected = [
            record(
                "2022-06-01T18:43:38.0510000Z",
                map(&[("level", "storage"), ("n", "-3")]),
                map(&[
                    ("messageId", "m-1"),
                    ("userId", "hub"),
                    ("connectionDeviceId", "pump-é"),
                    ("enqueuedTime", "2022-06-01T18:43:38.0510000Z"),
                ]),
                &[b'b'; 1000],
            ),
            record("1970-01-01T00:00:00.0000000Z", map(&[]), map(&[]), &[]),
        ];
        for encoding in [StorageEncoding::Avro, StorageEncoding::AvroDeflate] {
            let mut encoder = FileEncoder::new(encoding, 0).unwrap();
            for _ in 0..200 {
                encoder.append(&columns).unwrap();
            }
            let file = encoder.finish().unwrap();
            let reader = apache_avro::Reader::builder(&file[..])
                .reader_schema(schema)
                .build()
                .unwrap();
            let records: Vec<Value> = reader.collect::<Result<_, _>>().unwrap();
            assert_eq!(records.len(), 400, "{encoding:?}");
            for (i, read) in records.iter().enumerate() {
                assert_eq!(read, &expected[i % 2], "{encoding:?}, record {i}");
            }
            let blocks = file
                .windows(16)
                .filter(|w| *w == &file[file.len() - 16..])
                .count();
            if encoding == StorageEncoding::Avro {
                assert!(blocks > 3, "{blocks} sync markers: several blocks");
            }
        }
    }
}
