//! `sqlite_sink`: rows/s through the SQLite sink (prepared `INSERT ... ON CONFLICT DO NOTHING` per
//! row, one WAL transaction per batch, ack) with 500-byte JSON messages in 8192-row batches, default
//! columns. Each iteration writes into a fresh database file, outside of which nothing is timed.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hubroute_sinks::{SqliteSink, SqliteSinkConfig, TableConfig};

mod support;

const ROWS: usize = 65_536;
const BATCH_ROWS: usize = 8_192;

async fn load(input: &[arrow::record_batch::RecordBatch], path: std::path::PathBuf) -> Duration {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let mut config = SqliteSinkConfig::new("bench", path, TableConfig::new("messages"));
    config.batch_max_rows = 16_384;
    let mut sink = SqliteSink::new(config, tx).expect("sink");
    let start = Instant::now();
    support::write_flush_ack(&mut sink, &mut rx, input).await;
    start.elapsed()
}

fn sqlite_sink(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let input = support::telemetry_batches(ROWS, BATCH_ROWS);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("sqlite_sink");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("wal_default_columns", |b| {
        b.to_async(&runtime).iter_custom(|iterations| {
            let (input, dir) = (&input, &dir);
            async move {
                let mut total = Duration::ZERO;
                for i in 0..iterations {
                    let path = dir.path().join(format!("bench-{i}.db"));
                    total += load(input, path.clone()).await;
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                    }
                }
                total
            }
        });
    });
    group.finish();
}

criterion_group!(benches, sqlite_sink);
criterion_main!(benches);
