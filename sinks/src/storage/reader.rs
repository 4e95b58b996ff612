//! Reading IoT Hub storage-endpoint files back into message batches: the Avro (null or deflate
//! codec) and JSON-lines files that IoT Hub's storage endpoint archived, or that the storage sink
//! wrote. `hubroute route test --input` replays them through a configuration's routes.
//!
//! Avro files are read with IoT Hub's schema (the sink's [`super::record::SCHEMA`]) as the
//! reader schema, so a file written by another Avro library under the same schema reads the same,
//! and a file of another schema fails at its first record. Records become rows of the message
//! schema: `Properties` become application properties (strings), `SystemProperties` the system
//! properties under their storage names, `EnqueuedTimeUtc` the enqueued time. A storage record
//! does not say which route source a message came from, so every row counts as a device message.
//!
//! In JSON files `Body` is the body itself when `contentType` is `application/json` and
//! `contentEncoding` is `utf-8`, else its base64 (see the record module). With those properties a
//! JSON string is ambiguous: it is taken as base64 when it decodes to bytes that are not JSON (the
//! writer fell back to base64 for a body that did not parse), else as the JSON string itself.
//!
//! Every error names the file and the record (1-based) that could not be read.

use std::borrow::Cow;
use std::collections::HashMap;

use apache_avro::types::Value as AvroValue;
use arrow::record_batch::RecordBatch;
use base64::Engine as _;
use hubroute_message::{MessageBatchBuilder, MessageRef};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::record::SCHEMA;
use crate::{Error, Result};

/// The first bytes of an Avro object container file.
const AVRO_MAGIC: &[u8; 4] = b"Obj\x01";

/// A property's name and value, borrowed from the file where possible.
type Property<'a> = (Cow<'a, str>, Cow<'a, str>);

/// One record as this module reads it: IoT Hub's four fields, borrowed where possible.
#[derive(Debug, Default)]
struct StorageRecord<'a> {
    enqueued_time_utc: Cow<'a, str>,
    properties: Vec<Property<'a>>,
    system_properties: Vec<Property<'a>>,
    body: Cow<'a, [u8]>,
}

/// A JSON-lines record; unknown fields are refused so that other JSON is not taken for a record.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecord<'a> {
    #[serde(rename = "EnqueuedTimeUtc", borrow)]
    enqueued_time_utc: Cow<'a, str>,
    #[serde(rename = "Properties", default, borrow)]
    properties: HashMap<Cow<'a, str>, &'a RawValue>,
    #[serde(rename = "SystemProperties", default, borrow)]
    system_properties: HashMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(rename = "Body", default, borrow)]
    body: Option<&'a RawValue>,
}

/// Whether `bytes` start like an Avro object container file.
pub fn is_avro(bytes: &[u8]) -> bool {
    bytes.starts_with(AVRO_MAGIC)
}

/// Reads the IoT Hub storage file `bytes` (Avro or JSON lines, told apart by the Avro magic),
/// handing `emit` message batches of at most `batch_rows` rows; returns the number of records.
/// `file` names the file in errors.
pub fn read_storage_file(
    file: &str,
    bytes: &[u8],
    batch_rows: usize,
    mut emit: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<usize> {
    let mut batches = Batches::new(file, batch_rows.max(1));
    if is_avro(bytes) {
        let reader = apache_avro::Reader::builder(bytes)
            .reader_schema(&SCHEMA)
            .build()
            .map_err(|e| batches.error(0, format!("not a readable Avro file: {e}")))?;
        for (index, value) in reader.enumerate() {
            let value = value.map_err(|e| {
                batches.error(
                    index + 1,
                    format!(
                        "not a record of IoT Hub's schema (Microsoft.Azure.Devices.Message): {e}"
                    ),
                )
            })?;
            let record =
                avro_record(&value).map_err(|problem| batches.error(index + 1, problem))?;
            batches.append(&record, &mut emit)?;
        }
    } else {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| batches.error(0, format!("neither Avro nor UTF-8 JSON lines: {e}")))?;
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record = json_record(line).map_err(|problem| batches.error(index + 1, problem))?;
            batches.append(&record, &mut emit)?;
        }
    }
    batches.finish(&mut emit)
}

/// One IoT Hub storage JSON record (a line of a JSON file) as a one-row message batch, for
/// `hubroute route test --message`.
pub fn storage_json_record(file: &str, text: &str) -> Result<RecordBatch> {
    let mut batches = Batches::new(file, 1);
    let record = json_record(text.trim()).map_err(|problem| batches.error(1, problem))?;
    let mut out = None;
    batches.append(&record, &mut |batch| {
        out = Some(batch);
        Ok(())
    })?;
    out.ok_or_else(|| batches.error(1, "no record".to_owned()))
}

/// Accumulates rows and cuts batches.
struct Batches<'f> {
    file: &'f str,
    batch_rows: usize,
    builder: MessageBatchBuilder,
    records: usize,
}

impl<'f> Batches<'f> {
    fn new(file: &'f str, batch_rows: usize) -> Self {
        Self {
            file,
            batch_rows,
            builder: MessageBatchBuilder::new(),
            records: 0,
        }
    }

    fn error(&self, record: usize, problem: String) -> Error {
        Error::Archive {
            file: self.file.to_owned(),
            record,
            problem,
        }
    }

    fn append(
        &mut self,
        record: &StorageRecord<'_>,
        emit: &mut impl FnMut(RecordBatch) -> Result<()>,
    ) -> Result<()> {
        self.records += 1;
        let enqueued = parse_time(&record.enqueued_time_utc).ok_or_else(|| {
            self.error(
                self.records,
                format!(
                    "EnqueuedTimeUtc `{}` is not an ISO 8601 UTC time",
                    record.enqueued_time_utc
                ),
            )
        })?;
        let mut message = MessageRef {
            sequence_number: i64::try_from(self.records).unwrap_or(i64::MAX),
            enqueued_time_ms: enqueued,
            body: &record.body,
            ..MessageRef::default()
        };
        for (name, value) in &record.system_properties {
            let value = value.as_ref();
            match name.as_ref() {
                "messageId" => message.message_id = Some(value),
                "correlationId" => message.correlation_id = Some(value),
                "userId" => message.user_id = Some(value.as_bytes()),
                "connectionDeviceId" => message.connection_device_id = Some(value),
                "connectionModuleId" => message.connection_module_id = Some(value),
                "connectionAuthMethod" => message.connection_auth_method = Some(value),
                "connectionDeviceGenerationId" => {
                    message.connection_auth_generation_id = Some(value);
                }
                "contentType" => message.content_type = Some(value),
                "contentEncoding" => message.content_encoding = Some(value),
                "enqueuedTime" => {
                    message.iothub_enqueued_time_ms = Some(parse_time(value).ok_or_else(|| {
                        self.error(
                            self.records,
                            format!("SystemProperties.enqueuedTime `{value}` is not a time"),
                        )
                    })?);
                }
                "dt-dataschema" => message.dt_dataschema = Some(value),
                "dt-subject" => message.dt_subject = Some(value),
                // Properties IoT Hub may add later carry nothing a route condition reads.
                _ => {}
            }
        }
        for (name, value) in &record.properties {
            self.builder
                .append_application_property(name, Some(value), None);
        }
        self.builder.append(&message);
        if self.builder.len() >= self.batch_rows {
            emit(self.builder.finish()?)?;
        }
        Ok(())
    }

    fn finish(mut self, emit: &mut impl FnMut(RecordBatch) -> Result<()>) -> Result<usize> {
        if !self.builder.is_empty() {
            emit(self.builder.finish()?)?;
        }
        Ok(self.records)
    }
}

/// `2019-05-10T06:06:32.7220000Z` (any RFC 3339 time) as milliseconds since the epoch.
fn parse_time(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn avro_record(value: &AvroValue) -> Result<StorageRecord<'_>, String> {
    let AvroValue::Record(fields) = value else {
        return Err(format!("expected a record, found {value:?}"));
    };
    let mut record = StorageRecord::default();
    for (name, field) in fields {
        match (name.as_str(), field) {
            ("EnqueuedTimeUtc", AvroValue::String(time)) => {
                record.enqueued_time_utc = Cow::Borrowed(time);
            }
            ("Properties", AvroValue::Map(map)) => record.properties = avro_strings(name, map)?,
            ("SystemProperties", AvroValue::Map(map)) => {
                record.system_properties = avro_strings(name, map)?;
            }
            ("Body", AvroValue::Union(_, body)) => match body.as_ref() {
                AvroValue::Bytes(bytes) => record.body = Cow::Borrowed(bytes),
                AvroValue::Null => {}
                other => return Err(format!("Body is {other:?}, not bytes")),
            },
            (name, other) => return Err(format!("unexpected field {name} = {other:?}")),
        }
    }
    Ok(record)
}

fn avro_strings<'a>(
    field: &str,
    map: &'a HashMap<String, AvroValue>,
) -> Result<Vec<Property<'a>>, String> {
    map.iter()
        .map(|(key, value)| match value {
            AvroValue::String(s) => Ok((Cow::Borrowed(key.as_str()), Cow::Borrowed(s.as_str()))),
            other => Err(format!("{field}.{key} is {other:?}, not a string")),
        })
        .collect()
}

fn json_record(line: &str) -> Result<StorageRecord<'_>, String> {
    let parsed: JsonRecord<'_> = serde_json::from_str(line).map_err(|e| {
        format!(
            "not an IoT Hub storage JSON record ({{\"EnqueuedTimeUtc\", \"Properties\", \
             \"SystemProperties\", \"Body\"}}): {e}"
        )
    })?;
    let mut properties = Vec::with_capacity(parsed.properties.len());
    for (name, raw) in parsed.properties {
        // IoT Hub writes every property as a string; another JSON value is kept as its text.
        let text = raw.get();
        let value = serde_json::from_str::<Cow<'_, str>>(text).unwrap_or(Cow::Borrowed(text));
        properties.push((name, value));
    }
    let system = |name: &str| parsed.system_properties.get(name).map(AsRef::as_ref);
    let json_body = system("contentType")
        .is_some_and(|t| t.eq_ignore_ascii_case("application/json"))
        && system("contentEncoding").is_some_and(|e| e.eq_ignore_ascii_case("utf-8"));
    let body: Cow<'_, [u8]> = match parsed.body.map(RawValue::get) {
        None | Some("null") => Cow::Borrowed(&[]),
        Some(raw) if raw.starts_with('"') => {
            let text: String = serde_json::from_str(raw).map_err(|e| format!("Body: {e}"))?;
            let decoded = base64::engine::general_purpose::STANDARD.decode(&text);
            match decoded {
                Ok(bytes)
                    if !json_body
                        || serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() =>
                {
                    bytes.into()
                }
                Ok(_) => raw.as_bytes().into(),
                Err(_) if json_body => raw.as_bytes().into(),
                Err(e) => {
                    return Err(format!(
                        "Body is a string but not base64 ({e}), and contentType/contentEncoding \
                         are not application/json/utf-8"
                    ));
                }
            }
        }
        Some(raw) if json_body => raw.as_bytes().into(),
        Some(raw) => {
            return Err(format!(
                "Body is JSON ({}…) but the record's contentType/contentEncoding are not \
                 application/json/utf-8, so IoT Hub would have written base64",
                raw.chars().take(20).collect::<String>()
            ));
        }
    };
    Ok(StorageRecord {
        enqueued_time_utc: parsed.enqueued_time_utc,
        properties,
        system_properties: parsed.system_properties.into_iter().collect(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use hubroute_message::{Message, MessageColumns};

    use super::*;
    use crate::storage::StorageEncoding;
    use crate::storage::record::FileEncoder;

    fn messages() -> Vec<Message> {
        let mut json = Message::telemetry(&br#"{"t": 21.5, "s": "x"}"#[..]);
        json.system.content_type = Some("application/json".into());
        json.system.content_encoding = Some("utf-8".into());
        json.system.message_id = Some("m-json".into());
        json.system.connection_device_id = Some("d1".into());
        json.system.iothub_enqueued_time =
            chrono::DateTime::from_timestamp_millis(1_700_000_000_123);
        json.application_properties.push((
            "level".into(),
            hubroute_message::AppPropertyValue::String("high".into()),
        ));
        let mut binary = Message::telemetry(vec![0u8, 159, 146, 150, 10]);
        binary.system.message_id = Some("m-binary".into());
        binary.system.content_type = Some("application/octet-stream".into());
        let mut not_json = Message::telemetry(&b"not json"[..]);
        not_json.system.content_type = Some("application/json".into());
        not_json.system.content_encoding = Some("utf-8".into());
        not_json.system.message_id = Some("m-not-json".into());
        let mut string_body = Message::telemetry(&br#""just a string""#[..]);
        string_body.system.content_type = Some("application/json".into());
        string_body.system.content_encoding = Some("UTF-8".into());
        string_body.system.message_id = Some("m-string".into());
        vec![json, binary, not_json, string_body]
    }

    fn write(encoding: StorageEncoding, messages: &[Message]) -> Vec<u8> {
        let batch = MessageBatchBuilder::batch_of(messages).unwrap();
        let mut encoder = FileEncoder::new(encoding, 0).unwrap();
        encoder
            .append(&MessageColumns::try_new(&batch).unwrap())
            .unwrap();
        encoder.finish().unwrap()
    }

    fn read(bytes: &[u8], batch_rows: usize) -> (Vec<RecordBatch>, usize) {
        let mut batches = Vec::new();
        let records = read_storage_file("f", bytes, batch_rows, |b| {
            batches.push(b);
            Ok(())
        })
        .unwrap();
        (batches, records)
    }

    #[test]
    fn files_the_sink_writes_read_back_as_the_messages_routes_see() {
        let sent = messages();
        for encoding in [
            StorageEncoding::Avro,
            StorageEncoding::AvroDeflate,
            StorageEncoding::Json,
        ] {
            let (batches, records) = read(&write(encoding, &sent), 3);
            assert_eq!(records, sent.len(), "{encoding:?}");
            assert_eq!(
                batches
                    .iter()
                    .map(RecordBatch::num_rows)
                    .collect::<Vec<_>>(),
                [3, 1]
            );
            let rows: Vec<(String, Vec<u8>)> = batches
                .iter()
                .flat_map(|b| {
                    let c = MessageColumns::try_new(b).unwrap();
                    (0..b.num_rows())
                        .map(|r| (c.message_id.value(r).to_owned(), c.body.value(r).to_vec()))
                        .collect::<Vec<_>>()
                })
                .collect();
            let expected: Vec<(String, Vec<u8>)> = sent
                .iter()
                .map(|m| (m.system.message_id.clone().unwrap(), m.body.to_vec()))
                .collect();
            assert_eq!(rows, expected, "{encoding:?}");
            let first = MessageColumns::try_new(&batches[0]).unwrap();
            assert_eq!(first.connection_device_id.value(0), "d1");
            assert_eq!(first.iothub_enqueued_time.value(0), 1_700_000_000_123);
            assert_eq!(
                first.application_properties_of(0).collect::<Vec<_>>(),
                [("level", Some("high"))]
            );
        }
    }

    #[test]
    fn a_file_that_is_not_what_it_claims_names_the_file_and_record() {
        let good = String::from_utf8(write(StorageEncoding::Json, &messages()[..1])).unwrap();
        let cases = [
            (
                format!("{good}{{\"hello\": 1}}\n"),
                "bad.json: record 2: not an IoT Hub storage JSON record",
            ),
            (
                format!("{good}{good}not json\n"),
                "bad.json: record 3: not an IoT Hub storage JSON record",
            ),
            (
                good.replace("2023-11-14T22:13:20.1230000Z", "yesterday"),
                "bad.json: record 1: EnqueuedTimeUtc `yesterday` is not an ISO 8601 UTC time",
            ),
        ];
        for (text, expected) in cases {
            let error = read_storage_file("bad.json", text.as_bytes(), 10, |_| Ok(())).unwrap_err();
            assert!(error.to_string().starts_with(expected), "{error}");
        }
        let mut avro = write(StorageEncoding::Avro, &messages());
        let cut = avro.len() - 30;
        avro.truncate(cut);
        let error = read_storage_file("cut.avro", &avro, 10, |_| Ok(())).unwrap_err();
        assert!(
            error.to_string().starts_with("cut.avro: record "),
            "{error}"
        );
        let other_schema = apache_avro::Schema::parse_str(
            r#"{"type":"record","name":"Other","fields":[{"name":"x","type":"long"}]}"#,
        )
        .unwrap();
        let mut writer = apache_avro::Writer::new(&other_schema, Vec::new()).unwrap();
        writer
            .append_value(AvroValue::Record(vec![("x".into(), AvroValue::Long(1))]))
            .unwrap();
        let error = read_storage_file("other.avro", &writer.into_inner().unwrap(), 10, |_| Ok(()))
            .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("other.avro: record 1: not a record of IoT Hub's schema"),
            "{error}"
        );
    }

    #[test]
    fn the_empty_files_iot_hub_writes_for_quiet_windows_hold_no_records() {
        for encoding in [
            StorageEncoding::Avro,
            StorageEncoding::AvroDeflate,
            StorageEncoding::Json,
        ] {
            let (batches, records) = read(&write(encoding, &[]), 10);
            assert_eq!((batches.len(), records), (0, 0), "{encoding:?}");
        }
    }

    #[test]
    fn one_json_record_for_route_test() {
        let line = r#"{"EnqueuedTimeUtc":"2024-05-01T13:05:00.0000000Z","Properties":{"level":"high"},"SystemProperties":{"messageId":"m1","contentType":"application/json","contentEncoding":"utf-8"},"Body":{"t":30}}"#;
        let batch = storage_json_record("record.json", line).unwrap();
        let columns = MessageColumns::try_new(&batch).unwrap();
        assert_eq!(columns.body.value(0), br#"{"t":30}"#);
        assert!(storage_json_record("x.json", r#"{"event":{}}"#).is_err());
    }
}
