//! `eventhubs_publish`: events/s through the eventhubs sink (encoding, batch-format packing,
//! unsettled deliveries, acks) into the in-process emulator's event hub over loopback AMQP, with
//! ~500-byte JSON messages carrying IoT Hub system properties. Two cases: keyed by device id (100
//! devices, the default: one batch per device per ticket) and without a key (the largest batches).

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hubroute_emulator::{Emulator, EmulatorConfig, HubConfig, Retention};
use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder};
use hubroute_protocol::ConnectionString;
use hubroute_sinks::{AmqpSink, EventHubsSinkConfig, PartitionKey};

mod support;

const ROWS: usize = 32_768;
const BATCH_ROWS: usize = 4_096;
const DEVICES: usize = 100;

/// `ROWS` telemetry messages from `DEVICES` devices, as the source decodes IoT Hub's events.
fn input() -> Vec<arrow::record_batch::RecordBatch> {
    (0..ROWS / BATCH_ROWS)
        .map(|b| {
            let messages: Vec<Message> = (0..BATCH_ROWS)
                .map(|i| {
                    let n = b * BATCH_ROWS + i;
                    let device = format!("pump-{:03}", n % DEVICES);
                    let mut m = Message::telemetry(format!(
                        r#"{{"deviceId":"{device}","temperature":{}.5,"pad":"{:0>420}"}}"#,
                        n % 40,
                        n
                    ));
                    m.sequence_number = i64::try_from(n).expect("small");
                    m.system.message_id = Some(format!("{device}-{n}"));
                    m.system.content_type = Some("application/json".into());
                    m.system.content_encoding = Some("utf-8".into());
                    m.system.connection_device_id = Some(device);
                    m.system.iothub_enqueued_time = Some(m.enqueued_time);
                    m.application_properties =
                        vec![("severity".into(), AppPropertyValue::from("low"))];
                    m
                })
                .collect();
            MessageBatchBuilder::batch_of(&messages).expect("valid batch")
        })
        .collect()
}

fn eventhubs_publish(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let emulator = runtime
        .block_on(Emulator::start(EmulatorConfig {
            amqp_listen: "127.0.0.1:0".parse().expect("address"),
            hubs: vec![HubConfig::new("target", 4)],
            retention: Retention {
                max_events: 200_000,
                max_bytes: 128 << 20,
            },
            ..EmulatorConfig::default()
        }))
        .expect("emulator");
    let connection_string =
        ConnectionString::parse(&emulator.connection_string("target")).expect("valid");
    let input = input();
    let mut group = c.benchmark_group("eventhubs_publish");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    for (name, key) in [
        ("keyed_by_device_100_devices", PartitionKey::DeviceId),
        ("no_partition_key", PartitionKey::None),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
                let mut config = EventHubsSinkConfig::new("bench", connection_string.clone());
                config.partition_key = key.clone();
                let mut sink = AmqpSink::event_hubs(&config, tx).expect("sink");
                support::write_flush_ack(&mut sink, &mut rx, &input).await;
            });
        });
    }
    group.finish();
    runtime.block_on(emulator.shutdown()).expect("shutdown");
}

criterion_group!(benches, eventhubs_publish);
criterion_main!(benches);
