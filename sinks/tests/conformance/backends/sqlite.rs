//! The SQLite sink on a database file. Faults are another connection holding the write lock: a
//! stall holds it until released, a failure burst holds it briefly (the sink sees SQLITE_BUSY).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hubroute_sinks::{AckSender, RetryPolicy, Sink, SqliteSink, SqliteSinkConfig, TableConfig};
use rusqlite::Connection;

use crate::contract::{Harness, RowKey, conformance};
use crate::faults::{Backend, Fault};

struct SqliteHarness {
    dir: tempfile::TempDir,
    backend: Arc<Backend>,
}

impl SqliteHarness {
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("messages.db")
    }
}

/// Takes the database's write lock whenever the backend has a fault set.
fn spawn_locker(path: std::path::PathBuf, backend: Arc<Backend>) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(5));
            let fault = *backend.fault.lock().unwrap();
            if fault == Fault::None {
                if Arc::strong_count(&backend) == 1 {
                    return;
                }
                continue;
            }
            let locker = Connection::open(&path).unwrap();
            locker.execute_batch("BEGIN IMMEDIATE").unwrap();
            match fault {
                Fault::FailNext(_) => {
                    std::thread::sleep(Duration::from_millis(200));
                    backend.set(Fault::None);
                }
                _ => {
                    while *backend.fault.lock().unwrap() != Fault::None {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            locker.execute_batch("COMMIT").unwrap();
        }
    });
}

#[async_trait]
impl Harness for SqliteHarness {
    async fn build(&mut self, acks: AckSender) -> Box<dyn Sink> {
        let mut config = SqliteSinkConfig::new("local", self.path(), TableConfig::new("messages"));
        config.batch_max_rows = 40;
        config.linger = Duration::from_secs(600);
        config.busy_timeout = Duration::from_millis(20);
        config.retry = RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
        };
        Box::new(SqliteSink::new(config, acks).unwrap())
    }

    async fn stored(&mut self) -> Vec<RowKey> {
        let Ok(connection) = Connection::open(self.path()) else {
            return Vec::new();
        };
        let Ok(mut statement) =
            connection.prepare("SELECT event_hub, partition, sequence_number FROM messages")
        else {
            // Nothing was delivered yet, so the table was not created yet.
            return Vec::new();
        };
        statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn backend(&self) -> Arc<Backend> {
        Arc::clone(&self.backend)
    }
}

#[tokio::test]
async fn the_sqlite_sink_conforms() {
    conformance(async || {
        let harness = SqliteHarness {
            dir: tempfile::tempdir().unwrap(),
            backend: Backend::new(),
        };
        spawn_locker(harness.path(), Arc::clone(&harness.backend));
        harness
    })
    .await;
}
