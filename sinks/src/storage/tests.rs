//! Unit tests of the storage sink: every field of every record read back by independent readers
//! (Python's fastavro for Avro and Avro Deflate, Python's json for JSON lines) on local disk and
//! on Azurite, IoT Hub's exact Avro header, blob names against the format, numbered names instead
//! of overwrites, rolling by size, time and memory budget, empty files, and permanent upload
//! failures (the rows handed back).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use chrono::{TimeZone, Timelike};
use futures::TryStreamExt as _;
use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder, SystemProperties};
use object_store::memory::InMemory;
use object_store::{ObjectStoreExt as _, PutPayload};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::*;
use crate::{Ack, ObjectStoreConfig};

/// IoT Hub's schema as its files carry it (`MicrosoftDocs/azure-docs#11269`), written out here
/// independently of the sink's constant.
const IOT_HUB_SCHEMA: &str = r#"{"type":"record","name":"Message","namespace":"Microsoft.Azure.Devices","fields":[{"name":"EnqueuedTimeUtc","type":"string"},{"name":"Properties","type":{"type":"map","values":"string"}},{"name":"SystemProperties","type":{"type":"map","values":"string"}},{"name":"Body","type":["null","bytes"]}]}"#;

fn millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).unwrap()
}

/// Messages covering every field and every body rule, on `partition`.
fn varied_messages(partition: &str, first: i64) -> Vec<Message> {
    let base = |n: i64, body: &[u8]| {
        let mut m = Message::telemetry(body.to_vec());
        m.partition = partition.to_owned();
        m.sequence_number = first + n;
        m.offset = ((first + n) * 100).to_string();
        m.enqueued_time = millis(1_700_000_000_000 + n * 1_001);
        m
    };
    let full_system = SystemProperties {
        message_id: Some("msg-1".into()),
        correlation_id: Some("corr-1".into()),
        user_id: Some(b"plant-hub".to_vec()),
        content_type: Some("application/json".into()),
        content_encoding: Some("utf-8".into()),
        iothub_enqueued_time: Some(millis(1_654_109_018_051)),
        connection_device_id: Some("pump-7".into()),
        connection_module_id: Some("edge-agent".into()),
        connection_auth_method: Some(
            r#"{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#
                .into(),
        ),
        connection_device_generation_id: Some("636930642531278483".into()),
        message_source: Some("Telemetry".into()),
        dt_dataschema: Some("dtmi:com:example:Thermostat;1".into()),
        dt_subject: Some("thermostat1".into()),
    };
    let mut json_full = base(0, br#"{"temperature":21.5,"tags":["a","b"],"ok":true}"#);
    json_full.system = full_system;
    json_full.application_properties = vec![
        ("level".into(), AppPropertyValue::from("storage")),
        ("my IoT Hub".into(), AppPropertyValue::from("contoso")),
        ("count".into(), AppPropertyValue::Long(7)),
        ("alarm".into(), AppPropertyValue::Bool(false)),
        ("nothing".into(), AppPropertyValue::Null),
        (
            "ünïcode".into(),
            AppPropertyValue::from("wert \"quoted\"\n"),
        ),
    ];

    let mut json_case_insensitive = base(1, b"{\n  \"pretty\": [1,\r\n 2],\n  \"s\": \"x\"\n}\n");
    json_case_insensitive.system.content_type = Some("Application/JSON".into());
    json_case_insensitive.system.content_encoding = Some("UTF-8".into());
    json_case_insensitive.system.iothub_enqueued_time = Some(millis(1_654_109_018_999));
    json_case_insensitive.system.connection_device_id = Some("pump-8".into());

    let mut binary = base(2, &[0, 159, 146, 150, 255, b'\n', 1]);
    binary.system.content_type = Some("application/octet-stream".into());
    binary.system.iothub_enqueued_time = Some(millis(1_654_109_019_000));

    let mut invalid_json = base(3, b"{\"unterminated\": ");
    invalid_json.system.content_type = Some("application/json".into());
    invalid_json.system.content_encoding = Some("utf-8".into());
    invalid_json.system.iothub_enqueued_time = Some(millis(1_654_109_019_001));

    let mut json_without_encoding = base(4, br#"{"a":1}"#);
    json_without_encoding.system.content_type = Some("application/json".into());
    json_without_encoding.system.iothub_enqueued_time = Some(millis(1_654_109_019_002));

    // No IoT Hub enqueued time (an event hub that is not an IoT hub): the event hub's is used.
    let plain = base(5, b"plain text body");

    let empty_body = base(6, b"");

    vec![
        json_full,
        json_case_insensitive,
        binary,
        invalid_json,
        json_without_encoding,
        plain,
        empty_body,
    ]
}

/// `2019-05-10T06:06:32.7220000Z`, computed with chrono's formatter.
fn iot_hub_time(time: DateTime<Utc>) -> String {
    format!("{}0000Z", time.format("%Y-%m-%dT%H:%M:%S%.3f"))
}

/// The record IoT Hub writes for `message`, spelled out from the storage naming table; `body` as
/// the Python reader prints it (base64 for Avro; per the JSON rule for JSON).
fn expected_record(message: &Message, json_encoding: bool) -> Value {
    use base64::Engine as _;
    let s = &message.system;
    let mut system = serde_json::Map::new();
    let mut put = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            system.insert(key.to_owned(), Value::String(value));
        }
    };
    put("messageId", s.message_id.clone());
    put("correlationId", s.correlation_id.clone());
    put(
        "userId",
        s.user_id
            .as_ref()
            .map(|u| String::from_utf8(u.clone()).unwrap()),
    );
    put("connectionDeviceId", s.connection_device_id.clone());
    put("connectionModuleId", s.connection_module_id.clone());
    put("connectionAuthMethod", s.connection_auth_method.clone());
    put(
        "connectionDeviceGenerationId",
        s.connection_device_generation_id.clone(),
    );
    put("contentType", s.content_type.clone());
    put("contentEncoding", s.content_encoding.clone());
    put("enqueuedTime", s.iothub_enqueued_time.map(iot_hub_time));
    put("dt-dataschema", s.dt_dataschema.clone());
    put("dt-subject", s.dt_subject.clone());
    let properties: serde_json::Map<String, Value> = message
        .application_properties
        .iter()
        .filter_map(|(k, v)| v.canonical_string().map(|v| (k.clone(), Value::String(v))))
        .collect();
    let base64 = Value::String(base64::engine::general_purpose::STANDARD.encode(&message.body));
    let is_json = s
        .content_type
        .as_deref()
        .is_some_and(|t| t.to_lowercase() == "application/json")
        && s.content_encoding
            .as_deref()
            .is_some_and(|e| e.to_lowercase() == "utf-8");
    let body = if json_encoding && is_json {
        serde_json::from_slice(&message.body).unwrap_or(base64)
    } else {
        base64
    };
    json!({
        "EnqueuedTimeUtc": iot_hub_time(s.iothub_enqueued_time.unwrap_or(message.enqueued_time)),
        "Properties": properties,
        "SystemProperties": system,
        "Body": body,
    })
}

fn sink_batch(ticket: Ticket, messages: &[Message]) -> SinkBatch {
    SinkBatch {
        ticket,
        batch: MessageBatchBuilder::batch_of(messages).unwrap(),
    }
}

async fn acks_for(rx: &mut mpsc::Receiver<Ack>, count: usize) -> Vec<Ack> {
    let mut acks = Vec::new();
    while acks.len() < count {
        let ack = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("an ack within 20 s")
            .expect("the sink keeps the ack channel open");
        acks.push(ack);
    }
    acks.sort_by_key(|a| a.ticket);
    acks
}

async fn files(store: &dyn ObjectStore) -> Vec<(Path, Bytes)> {
    let mut metas: Vec<_> = store.list(None).try_collect().await.unwrap();
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    let mut out = Vec::new();
    for meta in metas {
        let bytes = store
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        out.push((meta.location, bytes));
    }
    out
}

fn python() -> PathBuf {
    std::env::var_os("HUBROUTE_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
        PathBuf::from,
    )
}

/// Reads files with `tests/e2e/python/read_storage_files.py` (fastavro or json).
fn read_with_python(encoding: &str, paths: &[PathBuf]) -> Vec<Value> {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/python/read_storage_files.py");
    let output = Command::new(python())
        .arg(script)
        .arg(encoding)
        .args(paths)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; run .ci/test (or python3 -m venv .venv && .venv/bin/pip \
                 install -r tests/e2e/python/requirements.txt)",
                python().display()
            )
        });
    assert!(
        output.status.success(),
        "the Python reader failed (install fastavro: .venv/bin/pip install -r \
         tests/e2e/python/requirements.txt): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&output.stdout).unwrap()
}

/// `myhub/<partition>/YYYY/MM/DD/HH/mm` with a window within `[before, after]`.
fn assert_default_name(name: &str, partition: &str, before: DateTime<Utc>, after: DateTime<Utc>) {
    let parts: Vec<&str> = name.split('/').collect();
    assert_eq!(parts.len(), 7, "{name}");
    assert_eq!(&parts[..2], ["myhub", partition], "{name}");
    let minute = Utc
        .with_ymd_and_hms(
            parts[2].parse().unwrap(),
            parts[3].parse().unwrap(),
            parts[4].parse().unwrap(),
            parts[5].parse().unwrap(),
            parts[6].parse().unwrap(),
            0,
        )
        .unwrap();
    assert_eq!(parts[2].len(), 4, "{name}");
    assert!(parts[3..].iter().all(|p| p.len() == 2), "{name}");
    let floor = |t: DateTime<Utc>| t.with_second(0).unwrap().with_nanosecond(0).unwrap();
    assert!(
        floor(before) <= minute && minute <= floor(after),
        "{name} is outside {before}..{after}"
    );
}

/// Writes varied messages on partitions 0 and 1 in `encoding` to `store_config`, reads every file
/// back with the Python reader and compares every field with what was sent.
async fn every_field_reads_back_as_sent(
    store_config: ObjectStoreConfig,
    encoding: StorageEncoding,
) {
    let mut config = StorageSinkConfig::new("archive", store_config.clone());
    config.encoding = encoding;
    config.iothub = Some("myhub".into());
    let (tx, mut rx) = mpsc::channel(16);
    let before = Utc::now();
    let mut sink = StorageSink::new(config, tx).unwrap();
    let zero = varied_messages("0", 0);
    let one = varied_messages("1", 100);
    let mut mixed = zero[4..].to_vec();
    mixed.extend(one.iter().cloned());
    sink.write(sink_batch(1, &zero[..4])).await.unwrap();
    sink.write(sink_batch(2, &mixed)).await.unwrap();
    sink.flush(FlushReason::Shutdown).await.unwrap();
    let acks = acks_for(&mut rx, 2).await;
    assert!(acks.iter().all(|a| a.failed.is_empty()), "{acks:?}");
    let after = Utc::now();

    let store = store_config.build("t").unwrap();
    let stored = files(store.as_ref()).await;
    assert_eq!(stored.len(), 2, "one file per partition");
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (i, (path, bytes)) in stored.iter().enumerate() {
        assert_default_name(path.as_ref(), &i.to_string(), before, after);
        let local = dir.path().join(i.to_string());
        std::fs::write(&local, bytes).unwrap();
        paths.push(local);
    }
    let json_encoding = encoding == StorageEncoding::Json;
    let read = read_with_python(if json_encoding { "json" } else { "avro" }, &paths);
    for (file, sent) in read.iter().zip([&zero, &one]) {
        let expected: Vec<Value> = sent
            .iter()
            .map(|m| expected_record(m, json_encoding))
            .collect();
        assert_eq!(
            file["records"].as_array().unwrap(),
            &expected,
            "{encoding:?}"
        );
        if !json_encoding {
            let codec = if encoding == StorageEncoding::Avro {
                "null"
            } else {
                "deflate"
            };
            assert_eq!(file["codec"], codec);
            assert_eq!(file["avro_codec"], codec);
            assert_eq!(file["schema_text"], IOT_HUB_SCHEMA);
            assert_eq!(file["schema_name"], "Microsoft.Azure.Devices.Message");
            assert_eq!(file["metadata_keys"], json!(["avro.codec", "avro.schema"]));
        }
    }
}

#[tokio::test]
async fn every_field_reads_back_as_sent_on_local_disk() {
    for encoding in [
        StorageEncoding::Avro,
        StorageEncoding::AvroDeflate,
        StorageEncoding::Json,
    ] {
        let dir = tempfile::tempdir().unwrap();
        every_field_reads_back_as_sent(
            ObjectStoreConfig::Local {
                root: dir.path().to_owned(),
            },
            encoding,
        )
        .await;
    }
}

/// Creates a container in the Azurite instance `.ci/test` starts, through the Azure SDK in the venv.
fn create_azurite_container(name: &str) {
    let script = format!(
        "from azure.eventhub.extensions.checkpointstoreblob._vendor.storage.blob import BlobServiceClient\n\
         c = BlobServiceClient.from_connection_string('DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;\
AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\
BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;')\n\
         c.create_container('{name}')\n"
    );
    let output = Command::new(python())
        .arg("-c")
        .arg(script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; run .ci/test", python().display()));
    assert!(
        output.status.success(),
        "cannot create container `{name}` in Azurite at 127.0.0.1:10000 (start it with .ci/test): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn every_field_reads_back_as_sent_on_azure_blob() {
    for encoding in [
        StorageEncoding::Avro,
        StorageEncoding::AvroDeflate,
        StorageEncoding::Json,
    ] {
        let container = format!("storage-{}", uuid::Uuid::new_v4().simple());
        create_azurite_container(&container);
        every_field_reads_back_as_sent(
            ObjectStoreConfig::Azure {
                account: None,
                container,
                access_key: None,
                use_emulator: true,
                endpoint: None,
            },
            encoding,
        )
        .await;
    }
}

#[tokio::test]
async fn the_avro_header_is_iot_hubs_byte_for_byte() {
    for (encoding, codec) in [
        (StorageEncoding::Avro, "null"),
        (StorageEncoding::AvroDeflate, "deflate"),
    ] {
        let bytes = FileEncoder::new(encoding, 0).unwrap().finish().unwrap();
        // Magic, then one metadata block of two entries (zig-zag varints: 2 -> 0x04), keys and
        // values as length-prefixed bytes, the end of the map (0x00), then the 16-byte marker.
        let mut expected = b"Obj\x01\x04".to_vec();
        for (key, value) in [("avro.codec", codec), ("avro.schema", IOT_HUB_SCHEMA)] {
            for text in [key, value] {
                let mut n = u64::try_from(text.len()).unwrap() << 1;
                while n >= 0x80 {
                    expected.push(u8::try_from(n & 0x7f).unwrap() | 0x80);
                    n >>= 7;
                }
                expected.push(u8::try_from(n).unwrap());
                expected.extend_from_slice(text.as_bytes());
            }
        }
        expected.push(0);
        assert_eq!(&bytes[..expected.len()], expected, "{encoding:?}");
        assert_eq!(
            bytes.len(),
            expected.len() + 16,
            "no block in an empty file"
        );
    }
}

#[tokio::test]
async fn a_name_already_taken_is_never_overwritten() {
    let store = Arc::new(InMemory::new());
    let mut config = StorageSinkConfig::new("archive", ObjectStoreConfig::default());
    config.iothub = Some("myhub".into());
    config.file_name_format = "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}.avro".into();
    let (tx, mut rx) = mpsc::channel(16);
    let mut sink = StorageSink::with_store(config, store.clone(), tx).unwrap();
    let now = Utc::now();
    // A file from an earlier run in this minute and the next (the test may cross a minute).
    let taken: Vec<String> = [now, now + chrono::Duration::minutes(1)]
        .iter()
        .map(|t| format!("myhub/0/{}.avro", t.format("%Y/%m/%d/%H/%M")))
        .collect();
    for name in &taken {
        store
            .put(
                &Path::from(name.as_str()),
                PutPayload::from_static(b"earlier"),
            )
            .await
            .unwrap();
    }
    // Two files of one partition within the minute, each closed by a shutdown flush.
    for ticket in 0..2 {
        sink.write(sink_batch(ticket, &varied_messages("0", 0)))
            .await
            .unwrap();
        sink.flush(FlushReason::Shutdown).await.unwrap();
    }
    acks_for(&mut rx, 2).await;
    let stored = files(store.as_ref()).await;
    assert_eq!(stored.len(), 4, "{stored:?}");
    for name in &taken {
        let earlier = stored.iter().find(|(p, _)| p.as_ref() == name).unwrap();
        assert_eq!(earlier.1.as_ref(), b"earlier", "{name} was overwritten");
    }
    let numbered: Vec<&str> = stored
        .iter()
        .map(|(p, _)| p.as_ref())
        .filter(|p| !taken.iter().any(|t| t == p))
        .collect();
    assert_eq!(numbered.len(), 2);
    for name in numbered {
        assert!(
            name.ends_with("_1.avro") || name.ends_with("_2.avro"),
            "{name} is not a numbered name"
        );
    }
}

#[tokio::test]
async fn files_roll_at_max_chunk_bytes_and_keep_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let mut config =
        StorageSinkConfig::new("archive", ObjectStoreConfig::Local { root: root.clone() });
    config.max_chunk_bytes = 2_000;
    config.encoding = StorageEncoding::AvroDeflate;
    let (tx, mut rx) = mpsc::channel(16);
    let mut sink = StorageSink::new(config, tx).unwrap();
    let mut sent = Vec::new();
    for ticket in 0..6 {
        let messages: Vec<Message> = (0..40)
            .map(|n| {
                let mut m = Message::telemetry(format!(
                    r#"{{"n":{},"pad":"{}"}}"#,
                    ticket * 40 + n,
                    "x".repeat(80)
                ));
                m.sequence_number = ticket * 40 + n;
                m
            })
            .collect();
        sent.extend(
            messages
                .iter()
                .map(|m| String::from_utf8(m.body.to_vec()).unwrap()),
        );
        sink.write(sink_batch(u64::try_from(ticket).unwrap(), &messages))
            .await
            .unwrap();
    }
    sink.flush(FlushReason::Shutdown).await.unwrap();
    let acks = acks_for(&mut rx, 6).await;
    assert!(acks.iter().all(|a| a.failed.is_empty()), "{acks:?}");
    let store = ObjectStoreConfig::Local { root: root.clone() }
        .build("t")
        .unwrap();
    let stored = files(store.as_ref()).await;
    assert!(
        stored.len() >= 3,
        "expected size rolls, got {} files",
        stored.len()
    );
    let paths: Vec<PathBuf> = stored.iter().map(|(p, _)| root.join(p.as_ref())).collect();
    use base64::Engine as _;
    let mut bodies: Vec<String> = read_with_python("avro", &paths)
        .iter()
        .flat_map(|f| f["records"].as_array().unwrap().clone())
        .map(|r| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(r["Body"].as_str().unwrap())
                    .unwrap(),
            )
            .unwrap()
        })
        .collect();
    bodies.sort();
    sent.sort();
    assert_eq!(bodies, sent, "every row exactly once across the chunks");
}

#[tokio::test(start_paused = true)]
async fn files_are_written_each_interval_and_empty_ones_for_quiet_partitions() {
    for write_empty_files in [true, false] {
        let store = Arc::new(InMemory::new());
        let mut config = StorageSinkConfig::new("archive", ObjectStoreConfig::default());
        config.batch_frequency = Duration::from_secs(60);
        config.write_empty_files = write_empty_files;
        config.encoding = StorageEncoding::Json;
        let (tx, mut rx) = mpsc::channel(16);
        let mut sink = StorageSink::with_store(config, store.clone(), tx).unwrap();
        assert_eq!(sink.flush_deadline(), None, "no partition seen yet");
        let start = Instant::now();
        sink.write(sink_batch(1, &varied_messages("0", 0)))
            .await
            .unwrap();
        assert_eq!(sink.flush_deadline(), Some(start + Duration::from_secs(60)));
        sink.flush(FlushReason::Deadline).await.unwrap();
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "acked before the interval ended");

        tokio::time::advance(Duration::from_secs(60)).await;
        sink.flush(FlushReason::Deadline).await.unwrap();
        assert_eq!(acks_for(&mut rx, 1).await[0].ticket, 1);
        let rolled = Instant::now();
        // Wait for the upload task to store the file before listing.
        while files(store.as_ref()).await.is_empty() {
            tokio::task::yield_now().await;
        }
        // A whole quiet interval later: an empty file, and again an interval after that.
        for interval in 1..=2 {
            let expected = write_empty_files.then(|| rolled + Duration::from_secs(60 * interval));
            assert_eq!(
                sink.flush_deadline(),
                expected,
                "write_empty_files {write_empty_files}"
            );
            tokio::time::advance(Duration::from_secs(60)).await;
            sink.flush(FlushReason::Deadline).await.unwrap();
        }
        sink.flush(FlushReason::Shutdown).await.unwrap();
        let stored = files(store.as_ref()).await;
        let sizes: Vec<usize> = stored.iter().map(|(_, b)| b.len()).collect();
        if write_empty_files {
            assert_eq!(sizes.len(), 3, "{stored:?}");
            assert_eq!(sizes.iter().filter(|&&s| s == 0).count(), 2, "{sizes:?}");
        } else {
            assert_eq!(sizes.len(), 1, "{stored:?}");
        }
        assert!(
            stored.iter().all(|(p, _)| p.as_ref().starts_with("hub/0/")),
            "{stored:?}"
        );
    }
}

#[tokio::test]
async fn an_empty_avro_file_is_a_valid_avro_file_without_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.avro");
    let bytes = FileEncoder::new(StorageEncoding::AvroDeflate, 0)
        .unwrap()
        .finish()
        .unwrap();
    std::fs::write(&path, bytes).unwrap();
    let read = read_with_python("avro", &[path]);
    assert_eq!(read[0]["records"], json!([]));
    assert_eq!(read[0]["codec"], "deflate");
}

/// Refuses every write as permission denied (a permanent error), or, when `busy`, answers every
/// request with a server error (retryable).
#[derive(Debug)]
struct DeniedStore {
    store: InMemory,
    busy: bool,
}

impl DeniedStore {
    fn refusal(&self, path: &Path) -> object_store::Error {
        if self.busy {
            object_store::Error::Generic {
                store: "DeniedStore",
                source: "503 Server Busy".into(),
            }
        } else {
            object_store::Error::PermissionDenied {
                path: path.to_string(),
                source: "the container forbids writes".into(),
            }
        }
    }
}

impl std::fmt::Display for DeniedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeniedStore")
    }
}

#[async_trait]
impl ObjectStore for DeniedStore {
    async fn put_opts(
        &self,
        path: &Path,
        _payload: PutPayload,
        _opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        Err(self.refusal(path))
    }
    async fn put_multipart_opts(
        &self,
        path: &Path,
        _opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        Err(self.refusal(path))
    }
    async fn get_opts(
        &self,
        path: &Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        if self.busy {
            return Err(self.refusal(path));
        }
        self.store.get_opts(path, options).await
    }
    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
        self.store.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.store.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.store.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.store.copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn a_permanent_upload_error_fails_every_row_of_the_file_and_hands_the_rows_back() {
    let (tx, mut rx) = mpsc::channel(16);
    let mut sink = StorageSink::with_store(
        StorageSinkConfig::new("archive", ObjectStoreConfig::default()),
        Arc::new(DeniedStore {
            store: InMemory::new(),
            busy: false,
        }),
        tx,
    )
    .unwrap();
    assert!(sink.reports_failed_rows());
    let first = sink_batch(4, &varied_messages("0", 0)[..3]);
    // Rows of two partitions, so each file holds a part of the ticket.
    let (zero, one) = (varied_messages("0", 10), varied_messages("1", 20));
    let mixed = sink_batch(5, &[one[0].clone(), zero[1].clone(), one[2].clone()]);
    let expected = [first.batch.clone(), mixed.batch.clone()];
    sink.write(first).await.unwrap();
    sink.write(mixed).await.unwrap();
    sink.flush(FlushReason::Shutdown).await.unwrap();
    let acks = acks_for(&mut rx, 2).await;
    for (ack, expected) in acks.iter().zip(expected) {
        assert_eq!(
            ack.failed.iter().map(|f| f.row).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(
            ack.failed
                .iter()
                .all(|f| f.error.contains("forbids writes")),
            "{:?}",
            ack.failed
        );
        assert_eq!(
            ack.failed_rows.as_ref(),
            Some(&expected),
            "ticket {}: the rows as written, in row order",
            ack.ticket
        );
    }
}

#[tokio::test]
async fn a_surrendered_sink_stops_retrying_and_hands_back_every_row_it_holds() {
    let (tx, mut rx) = mpsc::channel(16);
    let mut config = StorageSinkConfig::new("archive", ObjectStoreConfig::default());
    config.batch_frequency = Duration::from_secs(3600);
    // The surrender comes while the uploads wait before their first retry.
    config.retry.initial_backoff = Duration::from_secs(600);
    config.retry.max_backoff = Duration::from_secs(600);
    let sink = StorageSink::with_store(
        config,
        Arc::new(DeniedStore {
            store: InMemory::new(),
            busy: true,
        }),
        tx,
    )
    .unwrap();
    let surrender = sink.surrender().expect("a file sink can be surrendered");
    let (queue, batches) = mpsc::channel(4);
    let driver = tokio::spawn(crate::drive_sink(Box::new(sink), batches));
    let first = sink_batch(1, &varied_messages("0", 0)[..3]);
    let second = sink_batch(2, &varied_messages("1", 10)[..2]);
    let expected = [first.batch.clone(), second.batch.clone()];
    queue.send(first).await.unwrap();
    queue.send(second).await.unwrap();
    // Shutting down rolls both files; their uploads keep retrying the busy store.
    drop(queue);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "nothing is settled while retrying");
    surrender.surrender();
    let acks = acks_for(&mut rx, 2).await;
    for (ack, expected) in acks.iter().zip(expected) {
        assert!(ack.surrendered, "{ack:?}");
        assert_eq!(ack.failed_rows.as_ref(), Some(&expected));
        assert!(
            ack.failed
                .iter()
                .all(|f| f.error == crate::object_files::HANDED_BACK)
        );
    }
    tokio::time::timeout(Duration::from_secs(20), driver)
        .await
        .expect("the sink finishes once its uploads gave up")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn files_roll_early_to_stay_within_max_buffered_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let mut config =
        StorageSinkConfig::new("archive", ObjectStoreConfig::Local { root: root.clone() });
    config.file_name_format = "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}.avro".into();
    // Less than one batch: every batch rolls the file before it.
    config.max_buffered_bytes = 1;
    let (tx, mut rx) = mpsc::channel(16);
    let mut sink = StorageSink::new(config, tx).unwrap();
    let mut sent = Vec::new();
    for ticket in 0..3 {
        let messages = varied_messages("0", ticket * 100);
        sent.extend(messages.iter().map(|m| m.body.to_vec()));
        sink.write(sink_batch(u64::try_from(ticket).unwrap(), &messages))
            .await
            .unwrap();
    }
    sink.flush(FlushReason::Shutdown).await.unwrap();
    let acks = acks_for(&mut rx, 3).await;
    assert!(acks.iter().all(|a| a.failed.is_empty()), "{acks:?}");
    let store = ObjectStoreConfig::Local { root: root.clone() }
        .build("t")
        .unwrap();
    let stored = files(store.as_ref()).await;
    assert_eq!(stored.len(), 3, "one file per batch: {stored:?}");
    let paths: Vec<PathBuf> = stored.iter().map(|(p, _)| root.join(p.as_ref())).collect();
    use base64::Engine as _;
    let mut bodies: Vec<Vec<u8>> = read_with_python("avro", &paths)
        .iter()
        .flat_map(|f| f["records"].as_array().unwrap().clone())
        .map(|r| {
            base64::engine::general_purpose::STANDARD
                .decode(r["Body"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    bodies.sort();
    sent.sort();
    assert_eq!(bodies, sent, "every row exactly once");
}

#[test]
fn a_bad_file_name_format_is_a_configuration_error() {
    let (tx, _rx) = mpsc::channel(1);
    let mut config = StorageSinkConfig::new("archive", ObjectStoreConfig::default());
    config.file_name_format = "{iothub}/{YYYY}".into();
    let error = StorageSink::with_store(config, Arc::new(InMemory::new()), tx)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("sink `archive`") && error.contains("lacks {partition}"),
        "{error}"
    );
}

#[tokio::test]
async fn the_probe_asks_under_the_fixed_prefix_of_the_file_name_format() {
    let dir = tempfile::tempdir().unwrap();
    let local = StorageSinkConfig::new(
        "archive",
        ObjectStoreConfig::Local {
            root: dir.path().to_owned(),
        },
    );
    StorageSink::probe(&local).await.unwrap();

    let container = format!("probe-{}", uuid::Uuid::new_v4().simple());
    create_azurite_container(&container);
    let azure = |endpoint: String| {
        StorageSinkConfig::new(
            "archive",
            ObjectStoreConfig::Azure {
                account: Some("devstoreaccount1".to_owned()),
                container: container.clone(),
                access_key: Some(crate::Secret::new(
                    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
                )),
                use_emulator: false,
                endpoint: Some(endpoint),
            },
        )
    };
    StorageSink::probe(&azure("http://127.0.0.1:10000/devstoreaccount1".to_owned()))
        .await
        .unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = StorageSink::probe(&azure(format!(
        "http://127.0.0.1:{closed}/devstoreaccount1"
    )))
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("sink `archive`: object store probe (head) of `.hubroute-probe` failed"),
        "{error}"
    );
}
