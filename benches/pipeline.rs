//! `pipeline`: events/s through everything the engine does after the AMQP link, with no AMQP: 8192-row
//! message batches of `hubroute simulate` telemetry go through the real `RoutingTable` with the end-to-end
//! benchmark's ten routes (`benches/e2e/routes.toml`), the rows of each endpoint are taken and
//! enriched (`rows_for`) and written to three real Parquet sinks on local disk, every ticket's ack
//! is awaited and the partition's checkpoint position is advanced through `PartitionProgress`.
//!
//! The tasks are the engine's: a router per partition (here one) routes on tokio's blocking pool
//! and queues each endpoint's rows on a bounded queue, each endpoint's `drive_sink` task writes
//! them (Parquet encodes on the blocking pool), and an ack collector advances the checkpoint, so
//! routing one batch overlaps encoding the previous ones as it does in `hubroute run`. Each
//! iteration ends with the sinks' shutdown flush (every file uploaded, every ack received), so the
//! figure includes committing, not only buffering.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hubroute_emulator::simulate::TelemetryGenerator;
use hubroute_engine::config::LoadedConfig;
use hubroute_engine::progress::{BatchId, PartitionProgress, Position};
use hubroute_engine::routing::RoutingTable;
use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder, SystemProperties};
use hubroute_sinks::{ObjectStoreConfig, ParquetSink, ParquetSinkConfig, SinkBatch, drive_sink};
use tokio::sync::mpsc;

const BATCH_ROWS: usize = 8192;
const BATCHES: usize = 8;
const ENDPOINTS: [&str; 3] = ["lake", "hot", "alerts"];
/// The endpoints' default `queue_capacity` (batches queued ahead of each sink).
const QUEUE_CAPACITY: usize = 16;

fn batches() -> Vec<RecordBatch> {
    let mut generator = TelemetryGenerator::new(0, NonZeroU32::new(100).expect("non-zero"));
    (0..BATCHES)
        .map(|b| {
            let messages: Vec<Message> = (0..BATCH_ROWS)
                .map(|i| {
                    let device = generator.next_message();
                    let mut message = Message::telemetry(device.body);
                    message.sequence_number = i64::try_from(b * BATCH_ROWS + i).expect("small");
                    message.system = SystemProperties {
                        message_id: Some(device.message_id),
                        content_type: Some("application/json".to_owned()),
                        content_encoding: Some("utf-8".to_owned()),
                        connection_device_id: Some(device.device_id),
                        ..message.system
                    };
                    message.application_properties = device
                        .properties
                        .into_iter()
                        .map(|(name, value)| (name.to_owned(), AppPropertyValue::String(value)))
                        .collect();
                    message
                })
                .collect();
            MessageBatchBuilder::batch_of(&messages).expect("valid batch")
        })
        .collect()
}

fn table(dir: &Path) -> RoutingTable {
    let config = format!(
        "hub_name = \"bench-hub\"\n\n[source]\nconnection_string = \"Endpoint=sb://127.0.0.1:1;\
         SharedAccessKeyName=k;SharedAccessKey=v;EntityPath=hub;UseDevelopmentEmulator=true\"\n\n{}\n{}",
        ENDPOINTS
            .iter()
            .map(|name| format!(
                "[[endpoints]]\nsink = {{ type = \"parquet\", name = \"{name}\", store = {{ kind = \
                 \"local\", root = \"{}\" }} }}\n",
                dir.join(name).display()
            ))
            .collect::<String>(),
        include_str!("e2e/routes.toml"),
    );
    let loaded =
        LoadedConfig::parse(&dir.join("bench.toml"), &config).expect("valid configuration");
    RoutingTable::compile(&loaded).expect("the routes compile")
}

fn pipeline(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let table = Arc::new(table(dir.path()));
    let input = batches();
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    group.throughput(Throughput::Elements((BATCHES * BATCH_ROWS) as u64));
    group.bench_function("10_routes_3_parquet_endpoints", |b| {
        b.to_async(&runtime).iter(|| {
            let table = Arc::clone(&table);
            let input = input.clone();
            let root = dir.path().to_owned();
            async move { run_once(&table, input, &root).await }
        });
    });
    group.finish();
}

/// One pass of every batch, shaped as the engine runs one partition: a router routes each batch on
/// the blocking pool and hands each endpoint its rows through a bounded queue (the endpoints'
/// default `queue_capacity`) drained by that endpoint's `drive_sink` task, while an ack collector
/// settles tickets and advances the partition's checkpoint position. The pass ends when every
/// sink has flushed at shutdown and every ticket is acked.
async fn run_once(table: &Arc<RoutingTable>, input: Vec<RecordBatch>, root: &Path) {
    let (acks, mut acked) = mpsc::channel(1024);
    let mut queues = Vec::new();
    let mut drivers = Vec::new();
    for name in ENDPOINTS {
        let store = ObjectStoreConfig::Local {
            root: root.join(name),
        };
        let sink = ParquetSink::new(ParquetSinkConfig::new(name, store), acks.clone())
            .expect("the sink builds");
        let (queue, batches) = mpsc::channel(QUEUE_CAPACITY);
        queues.push(queue);
        drivers.push(tokio::spawn(drive_sink(Box::new(sink), batches)));
    }
    drop(acks);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let collector = {
        let ledger = Arc::clone(&ledger);
        tokio::spawn(async move {
            while let Some(ack) = acked.recv().await {
                assert!(ack.failed.is_empty(), "no row fails");
                let mut ledger = ledger.lock().expect("not poisoned");
                let (id, endpoint) = ledger.tickets.remove(&ack.ticket).expect("a known ticket");
                assert!(ledger.progress.ack(id, endpoint));
            }
        })
    };
    let mut next_ticket = 0;
    let mut last = 0;
    for batch in input {
        let routing = Arc::clone(table);
        let (parts, end) = tokio::task::spawn_blocking(move || {
            let routed = routing.route(&batch).expect("routing succeeds");
            let end = batch.num_rows();
            let parts: Vec<(usize, RecordBatch)> = routed
                .rows
                .iter()
                .enumerate()
                .filter(|(_, rows)| !rows.is_empty())
                .map(|(endpoint, rows)| {
                    let rows = routing
                        .rows_for(endpoint, &batch, rows)
                        .expect("rows are taken");
                    (endpoint, rows)
                })
                .collect();
            (parts, end)
        })
        .await
        .expect("routing does not panic");
        last += end;
        let position = Position {
            sequence_number: i64::try_from(last - 1).expect("small"),
            offset: last.to_string(),
        };
        let mut sends = Vec::with_capacity(parts.len());
        {
            let mut ledger = ledger.lock().expect("not poisoned");
            let id = ledger.progress.push(
                position,
                parts.iter().map(|(endpoint, _)| *endpoint).collect(),
            );
            for (endpoint, rows) in parts {
                ledger.tickets.insert(next_ticket, (id, endpoint));
                sends.push((
                    endpoint,
                    SinkBatch {
                        ticket: next_ticket,
                        batch: rows,
                    },
                ));
                next_ticket += 1;
            }
        }
        for (endpoint, batch) in sends {
            queues[endpoint]
                .send(batch)
                .await
                .expect("the endpoint's driver runs");
        }
    }
    drop(queues);
    for driver in drivers {
        driver
            .await
            .expect("the driver does not panic")
            .expect("every file is committed");
    }
    collector.await.expect("the ack collector does not panic");
    let ledger = ledger.lock().expect("not poisoned");
    assert!(ledger.tickets.is_empty(), "every ticket was acked");
    assert_eq!(
        ledger.progress.committed().map(|p| p.sequence_number),
        Some(i64::try_from(last - 1).expect("small")),
        "the checkpoint reached the last event"
    );
}

/// Tickets in flight (ticket → batch and endpoint) and the partition's progress, shared by the
/// router and the ack collector as the engine's ledger is.
#[derive(Default)]
struct Ledger {
    tickets: HashMap<u64, (BatchId, usize)>,
    progress: PartitionProgress,
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
