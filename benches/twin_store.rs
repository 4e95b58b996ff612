//! `twin_store`: the engine's twin store with 100 000 devices, each with a typical 1 KB twin
//! (tags, desired and reported properties with their `$metadata`, as the twin query returns it).
//!
//! Memory: the growth of the process's resident set while the store loads every twin, per device,
//! against a baseline measured in the same run: the same twins held as plain boxed JSON strings
//! (the twins' own size, with the allocator's overhead for one allocation each). The ratio is the
//! store's overhead (keys, hash map, versions). The store's own estimate (the `hubroute_twins_bytes`
//! metric) is printed beside it.
//!
//! Throughput: `attach` of batches of 1 000 telemetry rows from random devices (dictionary column,
//! one copy of each distinct twin per batch), with `Throughput::Elements` so results read as rows/s.

use std::hint::black_box;

use arrow::record_batch::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hubroute_engine::twins::TwinStore;
use hubroute_message::{Message, MessageBatchBuilder};

const DEVICES: usize = 100_000;
const BATCH_ROWS: usize = 1_000;

/// A typical device twin of about 1 KB, as the twin query returns it.
fn twin(device: usize) -> String {
    let at = "2024-05-01T10:00:00.0000000Z";
    serde_json::json!({
        "deviceId": format!("device-{device:06}"),
        "etag": "AAAAAAAAAAc=",
        "deviceEtag": "NTk2MjE1OTQ2",
        "status": "enabled",
        "statusUpdateTime": "0001-01-01T00:00:00Z",
        "connectionState": "Disconnected",
        "lastActivityTime": "0001-01-01T00:00:00Z",
        "cloudToDeviceMessageCount": 0,
        "authenticationType": "sas",
        "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
        "modelId": "",
        "version": 7 + device % 5,
        "tags": {
            "site": format!("plant-{}", device % 7 + 1),
            "line": format!("line-{}", device % 3 + 1),
            "building": 40 + device % 4,
            "customer": "contoso",
            "model": "TX-4000"
        },
        "properties": {
            "desired": {
                "telemetryConfig": {"sendFrequency": "5m", "batch": true},
                "thresholds": {"temperature": 30.5, "vibration": 0.02},
                "$metadata": {
                    "$lastUpdated": at, "$lastUpdatedVersion": 4,
                    "telemetryConfig": {"$lastUpdated": at, "$lastUpdatedVersion": 4},
                    "thresholds": {"$lastUpdated": at, "$lastUpdatedVersion": 4}
                },
                "$version": 4
            },
            "reported": {
                "firmware": {"version": format!("1.{}.{}", device % 5, device % 11)},
                "battery": {"level": device % 100},
                "network": {"rssi": -60 - (device % 30) as i64},
                "$metadata": {
                    "$lastUpdated": at,
                    "firmware": {"$lastUpdated": at},
                    "battery": {"$lastUpdated": at},
                    "network": {"$lastUpdated": at}
                },
                "$version": 12
            }
        },
        "capabilities": {"iotEdge": false}
    })
    .to_string()
}

fn loaded_store() -> (TwinStore, usize) {
    let mut store = TwinStore::default();
    let mut json_bytes = 0;
    for device in 0..DEVICES {
        let json = twin(device);
        json_bytes += json.len();
        store
            .insert_json(&format!("device-{device:06}"), None, &json)
            .expect("a twin loads");
    }
    (store, json_bytes)
}

/// The process's resident set, from `/proc/self/statm` (Linux).
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm (Linux)");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn report_memory() {
    let start = resident_bytes();
    let baseline: Vec<Box<str>> = (0..DEVICES).map(|d| twin(d).into_boxed_str()).collect();
    let json_bytes: usize = baseline.iter().map(|t| t.len()).sum();
    let after_baseline = resident_bytes();
    let (store, _) = loaded_store();
    let after_store = resident_bytes();
    #[expect(clippy::cast_precision_loss, reason = "ratios for a report")]
    {
        let per = |bytes: usize| bytes as f64 / DEVICES as f64;
        let twin_json = per(json_bytes);
        let plain = per(after_baseline - start);
        let held = per(after_store - after_baseline);
        println!(
            "twin_store/memory: {DEVICES} devices, twin JSON {twin_json:.0} B each; resident growth \
             per device: store {held:.0} B, the same twins as plain strings {plain:.0} B; store \
             overhead {:.1} % of the twins' size ({:.2}x the plain strings); the store's estimate \
             {:.0} B per device",
            (held - twin_json) / twin_json * 100.0,
            held / plain,
            per(store.estimated_bytes()),
        );
    }
    black_box((baseline, store));
}

fn batch(seed: usize) -> RecordBatch {
    let messages: Vec<Message> = (0..BATCH_ROWS)
        .map(|n| {
            let device = (n * 7919 + seed * 104_729) % DEVICES;
            let mut message = Message::telemetry(r#"{"temperature":21.5}"#);
            message.sequence_number = i64::try_from(n).unwrap_or(0);
            message.system.connection_device_id = Some(format!("device-{device:06}"));
            message
        })
        .collect();
    MessageBatchBuilder::batch_of(&messages).expect("a batch builds")
}

fn twin_store(c: &mut Criterion) {
    report_memory();
    let (mut store, _) = loaded_store();
    let batches: Vec<RecordBatch> = (0..8).map(batch).collect();
    let mut group = c.benchmark_group("twin_store");
    group.throughput(Throughput::Elements(BATCH_ROWS as u64));
    let mut next = 0;
    group.bench_function("attach_1000_rows_of_100000_devices", |b| {
        b.iter(|| {
            next = (next + 1) % batches.len();
            black_box(store.attach_twins(&batches[next]).expect("attach"))
        });
    });
    group.finish();
}

criterion_group!(benches, twin_store);
criterion_main!(benches);
