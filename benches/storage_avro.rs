//! `storage_avro`: rows/s through the storage sink (IoT Hub's Avro records, encoded with
//! apache-avro, uploaded to a local directory, acked), with 500-byte JSON messages carrying IoT
//! Hub's system properties, in 8192-row batches from 4 partitions. Avro Deflate and JSON lines are
//! measured in the same run as ratios against plain Avro.

use std::time::Duration;

use arrow::record_batch::RecordBatch;
use chrono::{TimeZone, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder};
use hubroute_sinks::{ObjectStoreConfig, StorageEncoding, StorageSink, StorageSinkConfig};

mod support;

const ROWS: usize = 65_536;
const BATCH_ROWS: usize = 8_192;
const PARTITIONS: usize = 4;

/// Device telemetry as IoT Hub delivers it: device id, auth method, generation id, enqueued time,
/// JSON content type, two application properties and a ~500-byte body.
fn iot_hub_batches() -> Vec<RecordBatch> {
    (0..ROWS / BATCH_ROWS)
        .map(|b| {
            let messages: Vec<Message> = (0..BATCH_ROWS)
                .map(|i| {
                    let n = b * BATCH_ROWS + i;
                    let mut m = Message::telemetry(format!(
                        r#"{{"deviceId":"pump-{}","temperature":{}.5,"pad":"{:0>440}"}}"#,
                        n % 100,
                        n % 40,
                        n
                    ));
                    m.partition = (b % PARTITIONS).to_string();
                    m.sequence_number = i64::try_from(n).expect("small");
                    m.system.connection_device_id = Some(format!("pump-{}", n % 100));
                    m.system.connection_auth_method = Some(
                        r#"{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#
                            .to_owned(),
                    );
                    m.system.connection_device_generation_id = Some("636930642531278483".to_owned());
                    m.system.content_type = Some("application/json".to_owned());
                    m.system.content_encoding = Some("utf-8".to_owned());
                    m.system.iothub_enqueued_time = Some(
                        Utc.timestamp_millis_opt(1_700_000_000_000 + i64::try_from(n).expect("small"))
                            .unwrap(),
                    );
                    m.application_properties = vec![
                        ("level".to_owned(), AppPropertyValue::from("storage")),
                        ("severity".to_owned(), AppPropertyValue::Long(3)),
                    ];
                    m
                })
                .collect();
            MessageBatchBuilder::batch_of(&messages).expect("valid batch")
        })
        .collect()
}

/// One pass: every batch through a fresh sink into `root`, flushed, every ack received.
async fn write_all(input: &[RecordBatch], root: &std::path::Path, encoding: StorageEncoding) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let mut config = StorageSinkConfig::new(
        "bench",
        ObjectStoreConfig::Local {
            root: root.to_owned(),
        },
    );
    config.encoding = encoding;
    let mut sink = StorageSink::new(config, tx).expect("sink");
    support::write_flush_ack(&mut sink, &mut rx, input).await;
}

fn storage_avro(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let input = iot_hub_batches();
    let mut group = c.benchmark_group("storage_avro");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for (label, encoding) in [
        ("avro_local_fs", StorageEncoding::Avro),
        ("avro_deflate_local_fs", StorageEncoding::AvroDeflate),
        ("json_local_fs", StorageEncoding::Json),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        group.bench_function(label, |b| {
            b.to_async(&runtime).iter_custom(|iterations| {
                let (input, dir) = (&input, &dir);
                async move {
                    let mut measured = Duration::ZERO;
                    for _ in 0..iterations {
                        let started = std::time::Instant::now();
                        write_all(input, dir.path(), encoding).await;
                        measured += started.elapsed();
                        // Outside the measurement: without it, gigabytes of finished files pile
                        // up as dirty pages and the run measures the disk's write-back instead.
                        for entry in std::fs::read_dir(dir.path()).expect("list") {
                            std::fs::remove_dir_all(entry.expect("entry").path()).expect("clean");
                        }
                    }
                    measured
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, storage_avro);
criterion_main!(benches);
