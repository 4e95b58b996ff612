//! `parquet_sink`: rows/s through the Parquet sink (encode with zstd, upload to a local directory,
//! ack), with 500-byte JSON messages in 8192-row batches from one partition.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hubroute_sinks::{ObjectStoreConfig, ParquetSink, ParquetSinkConfig};

mod support;

const ROWS: usize = 65_536;
const BATCH_ROWS: usize = 8_192;

fn parquet_sink(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let input = support::telemetry_batches(ROWS, BATCH_ROWS);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("parquet_sink");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("zstd_local_fs", |b| {
        b.to_async(&runtime).iter(|| async {
            let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
            let mut config = ParquetSinkConfig::new(
                "bench",
                ObjectStoreConfig::Local {
                    root: dir.path().to_owned(),
                },
            );
            config.max_file_bytes = 16 * 1024 * 1024;
            let mut sink = ParquetSink::new(config, tx).expect("sink");
            support::write_flush_ack(&mut sink, &mut rx, &input).await;
        });
    });
    group.finish();
}

criterion_group!(benches, parquet_sink);
criterion_main!(benches);
