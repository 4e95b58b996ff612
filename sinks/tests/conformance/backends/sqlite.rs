//! The SQLite sink on a database file. A fault is another connection holding the database's write
//! lock, taken before [`Backend::set`] returns: a stall holds it until released, `FailNext(n)` until
//! the sink has been refused `n` times (it sees `SQLITE_BUSY` and retries), then lets go.
//!
//! SQLite tells no other connection that a writer was refused, so the lock holder counts the
//! refusals the sink reports itself: its `database write failed; retrying` warnings, seen by a
//! tracing layer installed for the test ([`Refusals`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hubroute_sinks::{AckSender, Sink, SqliteSink, SqliteSinkConfig, TableConfig};
use rusqlite::Connection;
use tracing_subscriber::layer::SubscriberExt as _;

use super::quick_retry;
use crate::contract::{Harness, RowKey, conformance};
use crate::faults::{Backend, Fault};

/// The sink's name, which its warnings carry.
const SINK: &str = "local";

/// Counts the writes the sink reports refused: its `database write failed; retrying` warnings.
#[derive(Debug, Clone, Default)]
struct Refusals(Arc<AtomicUsize>);

impl Refusals {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Refusals {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() != tracing::Level::WARN {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.sink == SINK && fields.message == "database write failed; retrying" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The fields of an event that tell a refused write.
#[derive(Default)]
struct Fields {
    sink: String,
    message: String,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "sink" => self.sink = format!("{value:?}"),
            "message" => self.message = format!("{value:?}"),
            _ => {}
        }
    }
}

/// How long `FailNext` holds the lock at most while waiting for the sink's refusals.
const GIVE_UP: Duration = Duration::from_secs(30);

/// A fault for the lock holder, and where to say it is in force.
type Command = (Fault, SyncSender<()>);

/// A backend whose faults a thread enforces on the database at `path` by holding its write lock.
fn lock_holder(path: PathBuf, refusals: Refusals) -> Arc<Backend> {
    let (commands, received) = sync_channel::<Command>(0);
    let backend = Backend::enforced_by(move |fault| {
        let (done, in_force) = sync_channel(0);
        commands.send((fault, done)).unwrap();
        in_force.recv().unwrap();
    });
    let weak = Arc::downgrade(&backend);
    std::thread::spawn(move || hold_locks(&path, &refusals, &received, &weak));
    backend
}

/// The lock holder's loop: takes or releases the lock on command and, while `FailNext` holds it,
/// counts the sink's refusals against it, letting go once they are all spent (or after
/// [`GIVE_UP`], leaving the failures unspent for the check to report). Ends with the backend.
fn hold_locks(
    path: &Path,
    refusals: &Refusals,
    commands: &Receiver<Command>,
    backend: &Weak<Backend>,
) {
    let mut holding: Option<Connection> = None;
    let mut counted = 0;
    let mut held_since = Instant::now();
    loop {
        match commands.recv_timeout(Duration::from_millis(2)) {
            Ok((fault, done)) => {
                if fault == Fault::None {
                    release(&mut holding);
                } else if holding.is_none() {
                    let connection = Connection::open(path).unwrap();
                    connection.busy_timeout(Duration::from_secs(10)).unwrap();
                    connection.execute_batch("BEGIN IMMEDIATE").unwrap();
                    holding = Some(connection);
                    counted = refusals.count();
                    held_since = Instant::now();
                }
                done.send(()).unwrap();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(backend) = backend.upgrade() else {
            return;
        };
        if holding.is_some() && matches!(backend.fault(), Fault::FailNext(_)) {
            while counted < refusals.count() && backend.failed_one() {
                counted += 1;
            }
            if backend.fault() == Fault::None || held_since.elapsed() > GIVE_UP {
                release(&mut holding);
            }
        }
    }
}

fn release(holding: &mut Option<Connection>) {
    if let Some(connection) = holding.take() {
        connection.execute_batch("COMMIT").unwrap();
    }
}

struct SqliteHarness {
    dir: tempfile::TempDir,
    backend: Arc<Backend>,
}

impl SqliteHarness {
    fn new(refusals: Refusals) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let backend = lock_holder(dir.path().join("messages.db"), refusals);
        Self { dir, backend }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("messages.db")
    }
}

#[async_trait]
impl Harness for SqliteHarness {
    async fn build(&mut self, acks: AckSender) -> Box<dyn Sink> {
        let mut config = SqliteSinkConfig::new(SINK, self.path(), TableConfig::new("messages"));
        config.batch_max_rows = 40;
        config.linger = Duration::from_secs(600);
        config.busy_timeout = Duration::from_millis(20);
        config.retry = quick_retry();
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
    let refusals = Refusals::default();
    // The runtime is this thread's, so the sink's warnings are seen here.
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(refusals.clone()));
    conformance(async || SqliteHarness::new(refusals.clone())).await;
}
