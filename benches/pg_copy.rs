//! `pg_copy`: rows/s through the PostgreSQL sink (binary COPY into the staging table, then
//! `INSERT ... SELECT ... ON CONFLICT DO NOTHING`, commit, ack) with 500-byte JSON messages in
//! 8192-row batches, default columns. Needs PostgreSQL at 127.0.0.1:5432 (user postgres, database
//! `test`). Each iteration writes into a fresh table, dropped outside the timed section.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hubroute_sinks::{PostgresSink, PostgresSinkConfig, TableConfig};

mod support;

const ROWS: usize = 65_536;
const BATCH_ROWS: usize = 8_192;

async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        tokio_postgres::NoTls,
    )
    .await
    .expect(
        "PostgreSQL at 127.0.0.1:5432 (start PostgreSQL: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)",
    );
    tokio::spawn(connection);
    client
}

async fn load(input: &[arrow::record_batch::RecordBatch], table: &str) -> Duration {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let mut config = PostgresSinkConfig::new("bench", TableConfig::new(table));
    config.dbname = "test".into();
    config.batch_max_rows = 16_384;
    let mut sink = PostgresSink::new(config, tx).expect("sink");
    let start = Instant::now();
    support::write_flush_ack(&mut sink, &mut rx, input).await;
    start.elapsed()
}

fn pg_copy(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let input = support::telemetry_batches(ROWS, BATCH_ROWS);
    let admin = runtime.block_on(admin());
    let mut group = c.benchmark_group("pg_copy");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("staging_insert_on_conflict", |b| {
        b.to_async(&runtime).iter_custom(|iterations| {
            let (input, admin) = (&input, &admin);
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let table = format!("bench_pg_copy_{}", uuid::Uuid::new_v4().simple());
                    total += load(input, &table).await;
                    admin
                        .batch_execute(&format!("DROP TABLE \"{table}\""))
                        .await
                        .expect("drop");
                }
                total
            }
        });
    });
    group.finish();
}

criterion_group!(benches, pg_copy);
criterion_main!(benches);
