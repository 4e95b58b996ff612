//! Tests of the SQLite sink on database files in a temporary directory.

use std::time::Duration;

use hubroute_message::{Message, MessageBatchBuilder};
use tokio::sync::mpsc;

use super::*;
use crate::{Ack, ColumnMapping, FlushReason, Sink, SinkBatch, TableConfig};

fn config(path: &std::path::Path, table: TableConfig) -> SqliteSinkConfig {
    let mut config = SqliteSinkConfig::new("lite", path, table);
    config.linger = Duration::from_millis(10);
    config.busy_timeout = Duration::from_millis(50);
    config.retry = crate::RetryPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    };
    config
}

fn batch(ticket: u64, partition: &str, sequence_numbers: std::ops::Range<i64>) -> SinkBatch {
    let messages: Vec<Message> = sequence_numbers
        .map(|n| {
            let mut message = Message::telemetry(format!(r#"{{"n":{n}}}"#));
            message.partition = partition.into();
            message.sequence_number = n;
            message
        })
        .collect();
    SinkBatch {
        ticket,
        batch: MessageBatchBuilder::batch_of(&messages).unwrap(),
    }
}

async fn run(config: SqliteSinkConfig, batches: Vec<SinkBatch>) -> Vec<Ack> {
    let (acks, mut received) = mpsc::channel(64);
    let mut sink = SqliteSink::new(config, acks).unwrap();
    let tickets = batches.len();
    for batch in batches {
        sink.write(batch).await.unwrap();
    }
    sink.flush(FlushReason::Shutdown).await.unwrap();
    let mut all: Vec<Ack> = std::iter::from_fn(|| received.try_recv().ok()).collect();
    assert_eq!(all.len(), tickets, "one ack per ticket: {all:?}");
    all.sort_by_key(|a| a.ticket);
    all
}

fn count(path: &std::path::Path, table: &str) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| {
            r.get(0)
        })
        .unwrap()
}

#[tokio::test]
async fn default_table_in_wal_mode_absorbs_replayed_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let acks = run(
        config(&path, TableConfig::new("messages")),
        vec![batch(1, "0", 0..40), batch(2, "1", 0..10)],
    )
    .await;
    assert!(acks.iter().all(|a| a.failed.is_empty()), "{acks:?}");
    assert_eq!(count(&path, "messages"), 50);

    let acks = run(
        config(&path, TableConfig::new("messages")),
        vec![batch(3, "0", 30..45)],
    )
    .await;
    assert!(acks[0].failed.is_empty());
    assert_eq!(count(&path, "messages"), 55);

    let connection = Connection::open(&path).unwrap();
    let mode: String = connection
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let (body, time): (i64, String) = connection
        .query_row(
            "SELECT json_extract(body_json, '$.n'), enqueued_time FROM messages \
             WHERE partition = '0' AND sequence_number = 44",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(body, 44);
    assert!(time.ends_with('Z') && time.len() == 24, "{time}");
}

#[tokio::test]
async fn a_constraint_violation_fails_only_its_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE readings (event_hub TEXT NOT NULL, partition TEXT NOT NULL, \
             sequence_number INTEGER NOT NULL, n INTEGER NOT NULL CHECK (n <> 3), \
             UNIQUE (event_hub, partition, sequence_number))",
        )
        .unwrap();
    let table = TableConfig {
        name: "readings".into(),
        create: false,
        columns: vec![ColumnMapping {
            name: "n".into(),
            source: "$.n".into(),
            sql_type: SqlType::Bigint,
        }],
    };
    let acks = run(config(&path, table), vec![batch(5, "0", 0..6)]).await;
    let failed: Vec<(usize, &str)> = acks[0]
        .failed
        .iter()
        .map(|f| (f.row, f.error.split(' ').next().unwrap()))
        .collect();
    assert_eq!(failed, [(3, "SQLITE_CONSTRAINT_CHECK")], "{acks:?}");
    assert_eq!(count(&path, "readings"), 5);
}

#[tokio::test]
async fn a_locked_database_is_retried_until_the_lock_goes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    run(
        config(&path, TableConfig::new("m")),
        vec![batch(1, "0", 0..1)],
    )
    .await;

    let locker = Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (acks, mut received) = mpsc::channel(8);
    let mut sink = SqliteSink::new(config(&path, TableConfig::new("m")), acks).unwrap();
    sink.write(batch(2, "0", 1..5)).await.unwrap();
    sink.flush(FlushReason::Deadline).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        received.try_recv().is_err(),
        "acked while the database was locked"
    );
    locker.execute_batch("COMMIT").unwrap();
    sink.flush(FlushReason::Shutdown).await.unwrap();
    assert_eq!(received.recv().await.unwrap(), Ack::committed(2));
    assert_eq!(count(&path, "m"), 5);
}

#[tokio::test]
async fn a_missing_table_stops_the_sink_with_a_permanent_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let mut table = TableConfig::new("absent");
    table.create = false;
    let (acks, _received) = mpsc::channel(8);
    let mut sink = SqliteSink::new(config(&path, table), acks).unwrap();
    sink.write(batch(1, "0", 0..2)).await.unwrap();
    let error = sink.flush(FlushReason::Shutdown).await.unwrap_err();
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("no such table"), "{error}");
}

#[tokio::test]
async fn the_probe_checks_the_table_without_creating_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let with_create = |create: bool| {
        let mut table = TableConfig::new("messages");
        table.create = create;
        config(&path, table)
    };
    probe(&with_create(true)).await.unwrap();
    assert!(!path.exists(), "the probe creates nothing");
    let error = probe(&with_create(false)).await.unwrap_err().to_string();
    assert!(
        error.contains("database probe failed")
            && error.contains("create it or set `create = true`"),
        "{error}"
    );

    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE other (x)")
        .unwrap();
    probe(&with_create(true)).await.unwrap();
    let error = probe(&with_create(false)).await.unwrap_err().to_string();
    assert!(
        error.contains("table \"messages\" does not exist; create it or set `create = true`"),
        "{error}"
    );
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE messages (x)")
        .unwrap();
    probe(&with_create(false)).await.unwrap();

    let missing = config(&dir.path().join("gone/m.db"), TableConfig::new("messages"));
    let error = probe(&missing).await.unwrap_err().to_string();
    assert!(
        error.contains("(SQLITE_CANTOPEN)") && error.contains("gone does not exist"),
        "{error}"
    );
}
