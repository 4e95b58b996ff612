//! End to end through the engine: simulated devices send to the emulator, the engine routes every
//! message to two storage endpoints (IoT Hub's Avro Deflate on Azurite, JSON lines on local disk),
//! and independent readers (Python's fastavro and json) read the files back. Every record is
//! compared with the message the simulator sent, and every blob name with IoT Hub's format.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::TryStreamExt as _;
use hubroute_emulator::simulate::{
    DeviceMessage, Rate, Simulation, SimulationConfig, SimulationTarget, StopAfter,
    TelemetryGenerator,
};
use hubroute_emulator::{Emulator, EmulatorConfig};
use hubroute_engine::config::LoadedConfig;
use hubroute_engine::pipeline::RunningEngine;
use hubroute_protocol::ConnectionString;
use hubroute_sinks::ObjectStoreConfig;
use serde_json::Value;

use crate::support::{create_azurite_container, run_python};

const EVENTS: u64 = 600;
const DEVICES: u32 = 20;

/// Copies every object of `store` into `dir`; returns `(blob name, local path)`.
async fn download(store: &ObjectStoreConfig, dir: &Path) -> Vec<(String, String)> {
    let store = store.build("download").unwrap();
    let objects: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut files = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        let bytes = crate::support::object_bytes(store.as_ref(), &object.location).await;
        let local = dir.join(i.to_string());
        std::fs::write(&local, bytes).unwrap();
        files.push((object.location.to_string(), local.display().to_string()));
    }
    files.sort();
    files
}

/// `plant-hub/<partition>/YYYY/MM/DD/HH/mm`, IoT Hub's default format with no extension.
fn assert_iot_hub_name(name: &str, partitions: &[String]) {
    let parts: Vec<&str> = name.split('/').collect();
    assert_eq!(parts.len(), 7, "{name}");
    assert_eq!(parts[0], "plant-hub", "{name}");
    assert!(partitions.iter().any(|p| p == parts[1]), "{name}");
    let digits = [4, 2, 2, 2, 2];
    for (part, width) in parts[2..].iter().zip(digits) {
        assert!(
            part.len() == width && part.bytes().all(|b| b.is_ascii_digit()),
            "{name}"
        );
    }
}

/// Checks one record against the message the simulator sent with its `messageId`.
fn assert_record_is_as_sent(record: &Value, sent: &DeviceMessage, json_body: bool) {
    let id = &sent.message_id;
    let system = &record["SystemProperties"];
    assert_eq!(system["contentType"], "application/json", "{id}");
    assert_eq!(system["contentEncoding"], "utf-8", "{id}");
    let mut properties: BTreeMap<String, Value> = sent
        .properties
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String(v.clone())))
        .collect();
    properties.insert("deviceId".into(), Value::String(sent.device_id.clone()));
    let read: BTreeMap<String, Value> =
        serde_json::from_value(record["Properties"].clone()).unwrap();
    assert_eq!(read, properties, "{id}");
    if json_body {
        let body: Value = serde_json::from_slice(&sent.body).unwrap();
        assert_eq!(record["Body"], body, "{id}: a JSON body stays JSON");
    } else {
        let body = base64::engine::general_purpose::STANDARD
            .decode(record["Body"].as_str().unwrap())
            .unwrap();
        assert_eq!(body, sent.body.as_ref(), "{id}");
    }
    let time = record["EnqueuedTimeUtc"].as_str().unwrap();
    assert!(
        time.len() == 28 && time.ends_with("0000Z") && time.as_bytes()[19] == b'.',
        "{id}: {time} has 7 fractional digits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_messages_land_in_iot_hub_storage_files_that_independent_readers_read_as_sent() {
    let emulator = Emulator::start(EmulatorConfig {
        amqp_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..EmulatorConfig::default()
    })
    .await
    .expect("the emulator starts");
    let dir = tempfile::tempdir().unwrap();
    let container = format!("e2e-storage-{}", uuid::Uuid::new_v4().simple());
    // `use_emulator = true` below: Azurite's well-known address.
    create_azurite_container("http://127.0.0.1:10000/devstoreaccount1", &container);
    let root = dir.path().display();
    let text = format!(
        r#"
[source]
connection_string = "{connection_string}"
batch_max_rows = 128
batch_linger = "10ms"

[checkpoint]
dir = "{root}/checkpoints"
interval = "200ms"

[dead_letters]
store = {{ kind = "local", root = "{root}" }}

[service]
listen = "127.0.0.1:0"

[[endpoints]]
sink = {{ type = "storage", name = "archive-avro", encoding = "AvroDeflate", iothub = "plant-hub", store = {{ kind = "azure", container = "{container}", use_emulator = true }} }}

[[endpoints]]
sink = {{ type = "storage", name = "archive-json", encoding = "json", iothub = "plant-hub", batch_frequency = "1m", store = {{ kind = "local", root = "{root}/json" }} }}

[[routes]]
name = "to-avro"
condition = "true"
endpoint = "archive-avro"

[[routes]]
name = "to-json"
condition = "true"
endpoint = "archive-json"
"#,
        connection_string = emulator.connection_string("hub"),
    );
    let path = dir.path().join("hubroute.toml");
    std::fs::write(&path, &text).unwrap();
    let loaded = LoadedConfig::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let engine = RunningEngine::start(loaded)
        .await
        .expect("the engine starts");
    let report = Simulation::new(SimulationConfig {
        target: SimulationTarget::Amqp {
            connection_string: ConnectionString::parse(&emulator.connection_string("hub")).unwrap(),
            partition: None,
        },
        devices: NonZeroU32::new(DEVICES).unwrap(),
        rate: Rate::Max,
        stop: StopAfter::Events(EVENTS),
        seed: 11,
        max_in_flight: 64,
        mix: Default::default(),
    })
    .run()
    .await
    .expect("the simulation runs");
    assert_eq!((report.sent, report.errors), (EVENTS, 0));
    // Files are written every minute at the earliest; the shutdown writes the rest and waits for
    // their acks, so every event is routed first.
    let started = Instant::now();
    loop {
        let metrics = reqwest::get(format!("http://{}/metrics", engine.http_addr()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let routed: u64 = metrics
            .lines()
            .find(|l| l.starts_with("hubroute_events_routed_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0);
        if routed == EVENTS {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "routed {routed} of {EVENTS}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let partitions: Vec<String> = engine
        .committed_positions()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let summary = engine.shutdown().await.expect("a clean shutdown");
    let checkpointed: u64 = summary
        .committed
        .iter()
        .filter_map(|(_, c)| *c)
        .map(|c| u64::try_from(c + 1).unwrap())
        .sum();
    assert_eq!(
        checkpointed, EVENTS,
        "every event committed once its file was uploaded"
    );

    let mut generator = TelemetryGenerator::new(11, NonZeroU32::new(DEVICES).unwrap());
    let sent: BTreeMap<String, DeviceMessage> = (0..EVENTS)
        .map(|_| {
            let m = generator.next_message();
            (m.message_id.clone(), m)
        })
        .collect();
    let stores = [
        (
            ObjectStoreConfig::Azure {
                account: None,
                container,
                access_key: None,
                use_emulator: true,
                endpoint: None,
            },
            "avro",
        ),
        (
            ObjectStoreConfig::Local {
                root: dir.path().join("json"),
            },
            "json",
        ),
    ];
    for (store, encoding) in stores {
        let local = tempfile::tempdir().unwrap();
        let files = download(&store, local.path()).await;
        assert!(!files.is_empty(), "{encoding}: no file");
        let mut args = vec![encoding];
        args.extend(files.iter().map(|(_, path)| path.as_str()));
        let read: Vec<Value> = serde_json::from_str(&run_python("read_storage_files.py", &args))
            .expect("the reader prints JSON");
        let mut seen = BTreeMap::new();
        for ((name, _), file) in files.iter().zip(&read) {
            assert_iot_hub_name(name, &partitions);
            if encoding == "avro" {
                assert_eq!(file["codec"], "deflate");
                assert_eq!(file["schema_name"], "Microsoft.Azure.Devices.Message");
            }
            for record in file["records"].as_array().unwrap() {
                let id = record["SystemProperties"]["messageId"].as_str().unwrap();
                let message = sent
                    .get(id)
                    .unwrap_or_else(|| panic!("{id} was never sent"));
                assert_record_is_as_sent(record, message, encoding == "json");
                *seen.entry(id.to_owned()).or_insert(0) += 1;
            }
        }
        assert_eq!(seen.len(), sent.len(), "{encoding}: every message stored");
        assert!(
            seen.values().all(|&n| n == 1),
            "{encoding}: no duplicate in a clean run"
        );
    }
    emulator.shutdown().await.unwrap();
}
