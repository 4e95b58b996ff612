//! `amqp_receive`: events/s from the in-process emulator through the Event Hubs source to a discarding
//! consumer, 500-byte JSON bodies over 4 partitions, 8192-row batches. Each iteration connects a new
//! source and reads every partition from the earliest event, so connection and attach time is included.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hubroute_emulator::{Emulator, EmulatorConfig, EventToPublish, PublishTarget};
use hubroute_engine::checkpoint::FileCheckpointStore;
use hubroute_engine::source::{EventHubSource, SourceConfig};
use hubroute_protocol::ConnectionString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const PARTITIONS: usize = 4;
const EVENTS_PER_PARTITION: usize = 10_000;

fn amqp_receive(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let checkpoint_dir = tempfile::tempdir().expect("temp dir");
    let emulator = runtime.block_on(async {
        let config = EmulatorConfig {
            amqp_listen: "127.0.0.1:0".parse().expect("valid address"),
            ..EmulatorConfig::default()
        };
        Emulator::start(config).await.expect("emulator starts")
    });
    for partition in 0..PARTITIONS {
        for n in 0..EVENTS_PER_PARTITION {
            let body = format!(
                r#"{{"deviceId":"pump-{}","temperature":{}.5,"pad":"{:0>440}"}}"#,
                n % 100,
                n % 40,
                n
            );
            let event = EventToPublish {
                body: body.into(),
                properties: Default::default(),
                application_properties: Vec::new(),
                message_annotations: Vec::new(),
            };
            emulator
                .publish(
                    "hub",
                    PublishTarget::Partition(partition.to_string()),
                    event,
                )
                .expect("publish");
        }
    }
    let connection_string = ConnectionString::parse(&emulator.connection_string("hub"))
        .expect("valid connection string");

    let mut group = c.benchmark_group("amqp_receive");
    group.sample_size(10);
    group.throughput(Throughput::Elements(
        (PARTITIONS * EVENTS_PER_PARTITION) as u64,
    ));
    group.bench_function("emulator_4_partitions_500b_json", |b| {
        b.to_async(&runtime).iter(|| async {
            let store = Arc::new(FileCheckpointStore::new(checkpoint_dir.path()));
            let source =
                EventHubSource::connect(SourceConfig::new(connection_string.clone()), store)
                    .await
                    .expect("source connects");
            let shutdown = CancellationToken::new();
            let mut readers = Vec::new();
            for partition in source.partitions() {
                let (sender, mut receiver) = mpsc::channel(8);
                let task = source.spawn(partition, sender, shutdown.clone());
                readers.push(tokio::spawn(async move {
                    let mut rows = 0;
                    while rows < EVENTS_PER_PARTITION {
                        rows += receiver
                            .recv()
                            .await
                            .expect("receiver running")
                            .batch
                            .num_rows();
                    }
                    (task, receiver)
                }));
            }
            let mut finished = Vec::new();
            for reader in readers {
                finished.push(reader.await.expect("reader"));
            }
            shutdown.cancel();
            for (task, _receiver) in finished {
                task.await.expect("no panic").expect("no error");
            }
        });
    });
    group.finish();
    runtime
        .block_on(emulator.shutdown())
        .expect("emulator stops");
}

criterion_group!(benches, amqp_receive);
criterion_main!(benches);
