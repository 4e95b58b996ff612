//! The dead-letter store: rows a sink reported as permanently failed, kept as JSON Lines on an object
//! store with everything needed to understand and replay them.
//!
//! Each [`DeadLetterStore::write`] call puts one object,
//! `<prefix>/<sink>/<YYYY>/<MM>/<DD>/<HH>/<unix ms>-<uuid>.jsonl`, with one [`DeadLetter`] per line.
//! A `put` is atomic on every backend, so a reader never sees a partial file, and the engine may
//! advance its checkpoint past failed rows once `write` returned. JSON Lines (not Parquet) because dead
//! letters are few, read by people and by `jq`, and appended in small groups.
//!
//! Replay: [`DeadLetterStore::read_all`] returns the records; [`DeadLetter::to_batch`] rebuilds a
//! message batch (original positions, properties and body) to feed back through a sink.
//!
//! *Parked* rows are the rows of an endpoint that was dead (failing for longer than `dead_after`),
//! stored so that the partition's checkpoint can move on and replayed automatically once the
//! endpoint recovers. They live apart from permanently failed rows, one object per routed batch,
//! named so that a listing is in partition order:
//! `<prefix>/<sink>/parked/<partition>/<first sequence number, 20 digits>-<uuid>.jsonl`. A replayed
//! object is moved aside to `<prefix>/<sink>/replayed/…` (same rest of the name), not deleted;
//! [`DeadLetterStore::read_all`] skips what was replayed. Permanently failed rows are replayed the
//! same way, but only on an operator's request (`hubroute dead-letters replay --failed`).

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::record_batch::RecordBatch;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use futures::TryStreamExt as _;
use hubroute_message::{
    Message, MessageBatchBuilder, MessageColumns, MessageRef, SystemProperties,
};
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt as _};
use serde::{Deserialize, Serialize};

use crate::{Error, FailedRow, ObjectStoreConfig, Result};

/// Where dead letters go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// The object store (default: local directory `hubroute-data`).
    #[serde(default)]
    pub store: ObjectStoreConfig,
    /// Path prefix inside the store (default `dead-letters`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

fn default_prefix() -> String {
    "dead-letters".to_owned()
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        Self {
            store: ObjectStoreConfig::default(),
            prefix: default_prefix(),
        }
    }
}

/// One application property as stored in the batch: canonical value and AMQP type name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterProperty {
    /// Property name.
    pub name: String,
    /// Canonical string value (`None` for AMQP null).
    pub value: Option<String>,
    /// AMQP type name when not a string.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
}

/// One permanently failed message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeadLetter {
    /// The endpoint that rejected it.
    pub sink: String,
    /// The route that sent it there, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// What the destination said.
    pub error: String,
    /// When it was dead-lettered.
    pub failed_at: DateTime<Utc>,
    /// Original position: event hub.
    pub event_hub: String,
    /// Original position: partition.
    pub partition: String,
    /// Original position: sequence number.
    pub sequence_number: i64,
    /// Original position: offset.
    pub offset: String,
    /// `x-opt-enqueued-time`.
    pub enqueued_time: DateTime<Utc>,
    /// `x-opt-partition-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    /// IoT Hub system properties.
    pub system_properties: SystemProperties,
    /// Application properties in wire order.
    pub properties: Vec<DeadLetterProperty>,
    /// The body, standard base64.
    pub body: String,
    /// Twin JSON, when the engine knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin: Option<String>,
    /// Parked (the endpoint was dead; replayed automatically) rather than permanently failed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parked: bool,
}

/// The `sink` of dead letters the source set aside: events that are not well-formed AMQP messages
/// (or lack the Event Hubs position annotations), so no endpoint ever saw them.
pub const MALFORMED_SINK: &str = "_source";

impl DeadLetter {
    /// A dead letter for an event the source could not decode. `message` is the encoded AMQP
    /// message as received (base64 in `body`); its position is what the stream said or implied.
    pub fn malformed_event(
        event_hub: &str,
        partition: &str,
        sequence_number: Option<i64>,
        problem: &str,
        message: &[u8],
    ) -> Self {
        let now = Utc::now();
        Self {
            sink: MALFORMED_SINK.to_owned(),
            route: None,
            error: format!(
                "malformed AMQP message (the body is the whole encoded message): {problem}"
            ),
            failed_at: now,
            event_hub: event_hub.to_owned(),
            partition: partition.to_owned(),
            sequence_number: sequence_number.unwrap_or(-1),
            offset: String::new(),
            enqueued_time: now,
            partition_key: None,
            system_properties: SystemProperties::default(),
            properties: Vec::new(),
            body: base64::engine::general_purpose::STANDARD.encode(message),
            twin: None,
            parked: false,
        }
    }

    /// Dead letters for the `failed` rows of `batch` (message schema).
    pub fn from_failed_rows(
        sink: &str,
        route: Option<&str>,
        batch: &RecordBatch,
        failed: &[FailedRow],
    ) -> Result<Vec<Self>> {
        let view = MessageColumns::try_new(batch)?;
        let failed_at = Utc::now();
        failed
            .iter()
            .map(|failure| {
                if failure.row >= view.len() {
                    return Err(Error::Config {
                        sink: sink.to_owned(),
                        problem: format!(
                            "failed row {} is outside a batch of {} rows (a sink bug)",
                            failure.row,
                            view.len()
                        ),
                    });
                }
                let message = view.message(failure.row);
                let types = property_types(&view, failure.row);
                let properties = view
                    .application_properties_of(failure.row)
                    .map(|(name, value)| DeadLetterProperty {
                        name: name.to_owned(),
                        value: value.map(str::to_owned),
                        type_name: types
                            .iter()
                            .find(|(typed, _)| typed == name)
                            .map(|(_, t)| t.clone()),
                    })
                    .collect();
                Ok(Self {
                    sink: sink.to_owned(),
                    route: route.map(str::to_owned),
                    error: failure.error.clone(),
                    failed_at,
                    event_hub: message.event_hub,
                    partition: message.partition,
                    sequence_number: message.sequence_number,
                    offset: message.offset,
                    enqueued_time: message.enqueued_time,
                    partition_key: message.partition_key,
                    system_properties: message.system,
                    properties,
                    body: base64::engine::general_purpose::STANDARD.encode(&message.body),
                    twin: message.twin,
                    parked: false,
                })
            })
            .collect()
    }

    /// Parked records of every row of `batch` (message schema), for endpoint `sink`.
    pub fn parked_rows(sink: &str, batch: &RecordBatch, reason: &str) -> Result<Vec<Self>> {
        let failed: Vec<FailedRow> = (0..batch.num_rows())
            .map(|row| FailedRow {
                row,
                error: reason.to_owned(),
            })
            .collect();
        let mut records = Self::from_failed_rows(sink, None, batch, &failed)?;
        for record in &mut records {
            record.parked = true;
        }
        Ok(records)
    }

    /// Rebuilds a message batch from dead letters, for replay.
    pub fn to_batch(records: &[Self]) -> Result<RecordBatch> {
        let mut builder = MessageBatchBuilder::new();
        for record in records {
            let body = base64::engine::general_purpose::STANDARD
                .decode(&record.body)
                .map_err(|e| Error::Config {
                    sink: record.sink.clone(),
                    problem: format!(
                        "dead letter {}/{}/{} has a body that is not base64: {e}",
                        record.event_hub, record.partition, record.sequence_number
                    ),
                })?;
            for property in &record.properties {
                builder.append_application_property(
                    &property.name,
                    property.value.as_deref(),
                    property.type_name.as_deref(),
                );
            }
            let message = Message {
                event_hub: record.event_hub.clone(),
                partition: record.partition.clone(),
                sequence_number: record.sequence_number,
                offset: record.offset.clone(),
                enqueued_time: record.enqueued_time,
                partition_key: record.partition_key.clone(),
                system: record.system_properties.clone(),
                // Appended above as stored: canonical value and AMQP type name.
                application_properties: Vec::new(),
                body: body.into(),
                twin: record.twin.clone(),
            };
            builder.append(&MessageRef::from(&message));
        }
        Ok(builder.finish()?)
    }
}

/// `(name, AMQP type name)` of the non-string application properties of `row`.
fn property_types(view: &MessageColumns<'_>, row: usize) -> Vec<(String, String)> {
    let entries = view.application_property_types.value(row);
    let names = entries.column(0).as_string::<i32>();
    let types = entries.column(1).as_string::<i32>();
    (0..names.len())
        .map(|i| (names.value(i).to_owned(), types.value(i).to_owned()))
        .collect()
}

/// One object of the dead-letter store that is still to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Where it is.
    pub path: Path,
    /// The endpoint its records are for (`_source` for malformed events).
    pub sink: String,
    /// Parked rows (replayed automatically) rather than permanently failed ones.
    pub parked: bool,
}

/// One object of parked rows: `<prefix>/<sink>/parked/<partition>/<first sequence number>-….jsonl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedObject {
    /// The partition its rows are of.
    pub partition: String,
    /// Where it is.
    pub path: Path,
}

/// Writes and reads dead letters. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DeadLetterStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl DeadLetterStore {
    /// Builds the store from `config`.
    pub fn new(config: &DeadLetterConfig) -> Result<Self> {
        let store = config.store.build("dead-letters")?;
        Ok(Self::with_store(store, &config.prefix))
    }

    /// Uses an existing object store, under `prefix`.
    pub fn with_store(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self {
            store,
            prefix: Path::from(prefix),
        }
    }

    /// Stores `records` in one new object; returns its path (`None` when there is nothing to
    /// write). A retryable error ([`Error::is_retryable`]) can be retried with the same records.
    pub async fn write(&self, records: &[DeadLetter]) -> Result<Option<Path>> {
        let Some(first) = records.first() else {
            return Ok(None);
        };
        let now = Utc::now();
        let path = self.prefix.clone().join(first.sink.as_str()).join(format!(
            "{:04}/{:02}/{:02}/{:02}/{}-{}.jsonl",
            now.year(),
            now.month(),
            now.day(),
            now.hour(),
            now.timestamp_millis(),
            uuid::Uuid::new_v4().simple()
        ));
        let path = Path::parse(path.as_ref()).map_err(|e| Error::Config {
            sink: first.sink.clone(),
            problem: format!("dead-letter path `{path}` is invalid: {e}"),
        })?;
        self.put_records(&path, records).await?;
        tracing::warn!(
            sink = %first.sink,
            %path,
            count = records.len(),
            failed_at = %now.to_rfc3339_opts(SecondsFormat::Millis, true),
            "dead-lettered messages"
        );
        Ok(Some(path))
    }

    /// Stores the parked `records` of one partition of endpoint `sink` (in partition order) in one
    /// new object named after the first one's position; returns its path (`None` when empty).
    pub async fn write_parked(&self, records: &[DeadLetter]) -> Result<Option<Path>> {
        let Some(first) = records.first() else {
            return Ok(None);
        };
        let path = self
            .parked_folder(&first.sink)
            .join(first.partition.as_str())
            .join(format!(
                "{:020}-{}.jsonl",
                first.sequence_number.max(0),
                uuid::Uuid::new_v4().simple()
            ));
        self.put_records(&path, records).await?;
        Ok(Some(path))
    }

    fn parked_folder(&self, sink: &str) -> Path {
        self.prefix.clone().join(sink).join("parked")
    }

    /// The parked objects of endpoint `sink` still to replay, of every partition, in partition
    /// order (each partition's in sequence order).
    pub async fn parked(&self, sink: &str) -> Result<Vec<ParkedObject>> {
        self.list_parked(self.parked_folder(sink)).await
    }

    /// The parked objects of endpoint `sink` and partition `partition` still to replay, in
    /// sequence order.
    pub async fn parked_in(&self, sink: &str, partition: &str) -> Result<Vec<ParkedObject>> {
        self.list_parked(self.parked_folder(sink).join(partition))
            .await
    }

    async fn list_parked(&self, folder: Path) -> Result<Vec<ParkedObject>> {
        let mut objects: Vec<Path> = self
            .store
            .list(Some(&folder))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| self.object_error("list", &folder, e))?;
        objects.sort();
        let parked = self.prefix.parts().count() + 2;
        Ok(objects
            .into_iter()
            .filter_map(|path| {
                let partition = path.parts().nth(parked)?.as_ref().to_owned();
                Some(ParkedObject { partition, path })
            })
            .collect())
    }

    /// The records of one object.
    pub async fn read(&self, path: &Path) -> Result<Vec<DeadLetter>> {
        let read = self.store.get(path).await;
        let bytes = match read {
            Ok(result) => result.bytes().await,
            Err(e) => Err(e),
        }
        .map_err(|e| self.object_error("read", path, e))?;
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|line| {
                serde_json::from_slice(line).map_err(|source| Error::Json {
                    what: format!("dead letter in `{path}`"),
                    source,
                })
            })
            .collect()
    }

    /// The records of one object, or `None` when it is gone: an object listed a moment ago can be
    /// moved aside by a running engine's replay, or purged, before it is read.
    pub async fn read_if_present(&self, path: &Path) -> Result<Option<Vec<DeadLetter>>> {
        match self.read(path).await {
            Err(error) if error.is_not_found() => Ok(None),
            read => read.map(Some),
        }
    }

    /// Moves a replayed object aside (`<prefix>/<sink>/…` to `<prefix>/<sink>/replayed/…`),
    /// keeping it.
    pub async fn move_aside(&self, path: &Path) -> Result<Path> {
        let mut rest = path
            .prefix_match(&self.prefix)
            .ok_or_else(|| Error::Config {
                sink: "dead-letters".to_owned(),
                problem: format!("`{path}` is not under the prefix `{}`", self.prefix),
            })?;
        let sink = rest.next().ok_or_else(|| Error::Config {
            sink: "dead-letters".to_owned(),
            problem: format!("`{path}` names no endpoint"),
        })?;
        let target = Path::from_iter(
            self.prefix
                .parts()
                .chain([sink, PathPart::from("replayed")])
                .chain(rest),
        );
        self.store
            .rename(path, &target)
            .await
            .map_err(|e| self.object_error("rename", path, e))?;
        Ok(target)
    }

    /// Every object still to replay (not moved aside), of endpoint `sink` or of all, in order.
    pub async fn objects(&self, sink: Option<&str>) -> Result<Vec<StoredObject>> {
        let folder = match sink {
            Some(sink) => self.prefix.clone().join(sink),
            None => self.prefix.clone(),
        };
        let mut objects: Vec<Path> = self
            .store
            .list(Some(&folder))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| self.object_error("list", &folder, e))?;
        objects.sort();
        Ok(objects
            .into_iter()
            .filter(|path| !self.is_replayed(path))
            .filter_map(|path| {
                let (sink, parked) = {
                    let mut rest = path.prefix_match(&self.prefix)?;
                    let sink = rest.next()?.as_ref().to_owned();
                    (sink, rest.next().is_some_and(|p| p.as_ref() == "parked"))
                };
                Some(StoredObject { path, sink, parked })
            })
            .collect())
    }

    /// Stores `records` in a new object beside `path` (same folder, a name sorting right after
    /// it): what is left of an object replayed in part.
    pub async fn write_beside(&self, path: &Path, records: &[DeadLetter]) -> Result<Path> {
        let name = path.filename().unwrap_or("object.jsonl");
        let stem = name.strip_suffix(".jsonl").unwrap_or(name);
        let parts: Vec<PathPart<'_>> = path.parts().collect();
        let folder = Path::from_iter(parts[..parts.len().saturating_sub(1)].iter().cloned());
        let target = folder.join(format!("{stem}-{}.jsonl", uuid::Uuid::new_v4().simple()));
        self.put_records(&target, records).await?;
        Ok(target)
    }

    /// Deletes one object for good.
    pub async fn delete(&self, path: &Path) -> Result<()> {
        self.store
            .delete(path)
            .await
            .map_err(|e| self.object_error("delete", path, e))
    }

    /// Every object under the prefix (or endpoint `sink`), replayed ones included: what `purge`
    /// deletes.
    pub async fn all_objects(&self, sink: Option<&str>) -> Result<Vec<Path>> {
        let folder = match sink {
            Some(sink) => self.prefix.clone().join(sink),
            None => self.prefix.clone(),
        };
        self.store
            .list(Some(&folder))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| self.object_error("list", &folder, e))
    }

    fn object_error(
        &self,
        operation: &'static str,
        path: &Path,
        source: object_store::Error,
    ) -> Error {
        Error::ObjectStore {
            sink: "dead-letters".to_owned(),
            operation,
            path: path.to_string(),
            source: Box::new(source),
        }
    }

    async fn put_records(&self, path: &Path, records: &[DeadLetter]) -> Result<()> {
        let mut body = Vec::new();
        for record in records {
            serde_json::to_writer(&mut body, record).map_err(|source| Error::Json {
                what: format!("dead letter for sink `{}`", record.sink),
                source,
            })?;
            body.push(b'\n');
        }
        self.store
            .put(path, Bytes::from(body).into())
            .await
            .map_err(|source| Error::ObjectStore {
                sink: records.first().map_or_else(String::new, |r| r.sink.clone()),
                operation: "upload",
                path: path.to_string(),
                source: Box::new(source),
            })?;
        Ok(())
    }

    /// Whether `path` is `<prefix>/<sink>/replayed/…`.
    fn is_replayed(&self, path: &Path) -> bool {
        path.prefix_match(&self.prefix)
            .and_then(|mut rest| rest.nth(1))
            .is_some_and(|part| part.as_ref() == "replayed")
    }

    /// Every dead letter under the prefix (parked or failed, not yet replayed), oldest object
    /// first within each endpoint. Objects moved aside while this reads are left out.
    pub async fn read_all(&self) -> Result<Vec<DeadLetter>> {
        let mut objects: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| self.object_error("list", &self.prefix, e))?;
        objects.retain(|o| !self.is_replayed(o));
        objects.sort();
        let mut records = Vec::new();
        for object in objects {
            records.extend(self.read_if_present(&object).await?.unwrap_or_default());
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use hubroute_message::{AppPropertyValue, Message};

    use super::*;

    /// A store under `root` with the prefix `dl`.
    fn local_store(root: &std::path::Path) -> DeadLetterStore {
        DeadLetterStore::new(&DeadLetterConfig {
            store: ObjectStoreConfig::Local {
                root: root.to_owned(),
            },
            prefix: "dl".into(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn failed_rows_round_trip_through_the_store_and_replay_as_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = local_store(dir.path());
        let mut messages: Vec<Message> = (0..3)
            .map(|i| {
                let mut m = Message::telemetry(vec![0xff, i]);
                m.sequence_number = i64::from(i);
                m.enqueued_time = DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
                m
            })
            .collect();
        messages[2].application_properties = vec![
            ("n".into(), AppPropertyValue::Long(5)),
            ("s".into(), AppPropertyValue::from("x")),
        ];
        let batch = MessageBatchBuilder::batch_of(&messages).unwrap();
        let failed = [
            FailedRow {
                row: 0,
                error: "HTTP 400: bad".into(),
            },
            FailedRow {
                row: 2,
                error: "HTTP 400: bad".into(),
            },
        ];
        let records = DeadLetter::from_failed_rows("hook", Some("r1"), &batch, &failed).unwrap();
        let path = store.write(&records).await.unwrap().unwrap();
        assert!(path.as_ref().starts_with("dl/hook/"), "{path}");
        assert_eq!(store.write(&[]).await.unwrap(), None);

        let mut read = store.read_all().await.unwrap();
        assert!(read.iter().all(|r| r.failed_at <= Utc::now()));
        for (r, expected) in read.iter_mut().zip(&records) {
            r.failed_at = expected.failed_at;
        }
        assert_eq!(read, records);
        assert_eq!(read[1].sequence_number, 2);
        assert_eq!(read[1].route.as_deref(), Some("r1"));

        let replay = DeadLetter::to_batch(&read).unwrap();
        let view = MessageColumns::try_new(&replay).unwrap();
        assert_eq!(view.message(0), messages[0]);
        assert_eq!(view.message(1), messages[2]);
    }

    #[tokio::test]
    async fn an_object_moved_aside_after_it_was_listed_reads_as_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = local_store(dir.path());
        let batch = MessageBatchBuilder::batch_of(&[Message::telemetry("x")]).unwrap();
        let failed = [FailedRow {
            row: 0,
            error: "HTTP 400: bad".into(),
        }];
        let records = DeadLetter::from_failed_rows("hook", None, &batch, &failed).unwrap();
        let listed = store.write(&records).await.unwrap().unwrap();
        assert_eq!(
            store
                .read_if_present(&listed)
                .await
                .unwrap()
                .map(|r| r.len()),
            Some(1)
        );
        store.move_aside(&listed).await.unwrap();
        assert_eq!(store.read_if_present(&listed).await.unwrap(), None);
        assert!(
            store.read(&listed).await.is_err(),
            "`read` still reports it"
        );
        assert!(store.read_all().await.unwrap().is_empty());
    }

    #[test]
    fn a_row_outside_the_batch_is_reported() {
        let batch = MessageBatchBuilder::batch_of(&[Message::telemetry("x")]).unwrap();
        let failed = [FailedRow {
            row: 5,
            error: "e".into(),
        }];
        let error = DeadLetter::from_failed_rows("s", None, &batch, &failed)
            .unwrap_err()
            .to_string();
        assert!(error.contains("outside"), "{error}");
    }
}
