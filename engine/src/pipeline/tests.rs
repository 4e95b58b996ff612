//! The running pipeline on tokio's paused clock, without AMQP: batches come from an in-memory
//! [`BatchSource`] (a partition log that resumes after the stored checkpoint, as the AMQP source
//! does), the routing table is compiled from a small configuration, the `lake` endpoint is the real
//! Parquet sink on a temporary directory (not idempotent, so a duplicate shows), and the `hook`
//! endpoint is a test sink whose destination the test takes down and brings back.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder, MessageColumns};
use hubroute_sinks::{
    Ack, AckSender, DeadLetter, DeadLetterStore, FailedRow, FlushReason, Sink, SinkBatch,
    Surrender, build_sink,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::batch_source::RetainedRanges;
use super::{BatchSource, RunningEngine, SinkFactory, SinkProbe, lock};
use crate::checkpoint::{CheckpointKey, CheckpointStore, EndpointPositions};
use crate::config::LoadedConfig;
use crate::health::HealthStatus;
use crate::source::{PartitionOutcome, SourceBatch};
use crate::{Error, Result};

const PARTITION: &str = "0";
/// The endpoint indices, in configuration order.
const LAKE: usize = 0;
const HOOK: usize = 1;

fn config(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"
[source]
connection_string = "Endpoint=sb://127.0.0.1:5673/;SharedAccessKeyName=R;SharedAccessKey=c2VjcmV0;EntityPath=hub"

[checkpoint]
dir = "{dir}/checkpoints"
interval = "1s"

[dead_letters]
store = {{ kind = "local", root = "{dir}/dead-letters" }}

[service]
listen = "127.0.0.1:0"
stall_after = "30s"
dead_after = "10m"
drain_timeout = "5s"

[[endpoints]]
sink = {{ type = "parquet", name = "lake", store = {{ kind = "local", root = "{dir}/lake" }}, max_file_age = "1s" }}

[[endpoints]]
queue_capacity = 2
sink = {{ type = "webhook", name = "hook", url = "http://127.0.0.1:1/hook" }}

[[routes]]
name = "everything"
condition = "true"
endpoint = "lake"

[[routes]]
name = "hot"
condition = "level = 'hot'"
endpoint = "hook"
"#
    )
}

/// Every third event is hot (routed to the hook as well as the lake).
fn is_hot(sequence_number: i64) -> bool {
    sequence_number % 3 == 0
}

fn hot(sequence_numbers: std::ops::Range<i64>) -> Vec<i64> {
    sequence_numbers.filter(|s| is_hot(*s)).collect()
}

fn sequence_numbers(batch: &RecordBatch) -> Vec<i64> {
    MessageColumns::try_new(batch)
        .expect("message schema")
        .sequence_number
        .values()
        .to_vec()
}

/// Partition logs shared by every engine a test starts, as an event hub outlives its readers.
#[derive(Debug, Default)]
struct Log {
    batches: watch::Sender<Vec<RecordBatch>>,
}

impl Log {
    fn append(&self, sequence_numbers: std::ops::Range<i64>) {
        let messages: Vec<Message> = sequence_numbers
            .map(|sequence_number| {
                let mut message = Message::telemetry("{}");
                message.partition = PARTITION.to_owned();
                message.sequence_number = sequence_number;
                message.offset = (sequence_number * 100).to_string();
                let level = if is_hot(sequence_number) {
                    "hot"
                } else {
                    "cold"
                };
                message.application_properties =
                    vec![("level".to_owned(), AppPropertyValue::from(level))];
                message
            })
            .collect();
        let batch = MessageBatchBuilder::batch_of(&messages).expect("a batch");
        self.batches.send_modify(|log| log.push(batch));
    }
}

fn checkpoint_key(partition: &str) -> CheckpointKey {
    CheckpointKey {
        fully_qualified_namespace: "memory".to_owned(),
        event_hub: "hub".to_owned(),
        consumer_group: "$Default".to_owned(),
        partition: partition.to_owned(),
    }
}

/// A one-partition source reading [`Log`]: it resumes after the stored checkpoint and then follows
/// the log until stopped, as a caught-up AMQP receiver does.
#[derive(Debug)]
struct MemorySource {
    log: Arc<Log>,
    checkpoints: Arc<dyn CheckpointStore>,
    partitions: Vec<String>,
}

#[async_trait]
impl BatchSource for MemorySource {
    fn event_hub(&self) -> &str {
        "hub"
    }

    fn partitions(&self) -> &[String] {
        &self.partitions
    }

    fn checkpoint_key(&self, partition: &str) -> CheckpointKey {
        checkpoint_key(partition)
    }

    fn spawn(
        &self,
        partition: &str,
        downstream: mpsc::Sender<SourceBatch>,
        shutdown: CancellationToken,
    ) -> JoinHandle<Result<PartitionOutcome>> {
        let key = self.checkpoint_key(partition);
        let checkpoints = Arc::clone(&self.checkpoints);
        let mut log = self.log.batches.subscribe();
        tokio::spawn(async move {
            let after = checkpoints.load(&key).await?.map(|c| c.sequence_number);
            let mut sent = 0;
            loop {
                let unsent: Vec<RecordBatch> = log.borrow_and_update()[sent..].to_vec();
                sent += unsent.len();
                for batch in unsent {
                    let skip = sequence_numbers(&batch)
                        .iter()
                        .take_while(|s| after.is_some_and(|after| **s <= after))
                        .count();
                    if skip == batch.num_rows() {
                        continue;
                    }
                    let batch = batch.slice(skip, batch.num_rows() - skip);
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(PartitionOutcome::Stopped),
                        delivered = downstream.send(SourceBatch::unbudgeted(&key.partition, batch)) => {
                            if delivered.is_err() {
                                return Ok(PartitionOutcome::DownstreamClosed);
                            }
                        }
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(PartitionOutcome::Stopped),
                    _ = log.changed() => {}
                }
            }
        })
    }

    fn reconnects(&self) -> u64 {
        0
    }

    fn buffered_bytes(&self) -> u64 {
        0
    }

    async fn retained_sequence_numbers(&self) -> Result<RetainedRanges> {
        let log = self.log.batches.borrow();
        let first = log
            .first()
            .and_then(|b| sequence_numbers(b).first().copied());
        let last = log.last().and_then(|b| sequence_numbers(b).last().copied());
        Ok(vec![(PARTITION.to_owned(), first.zip(last))])
    }
}

/// The hook's destination: up or down, and what each sink instance delivered, in order
/// (instance 0 is the endpoint's live sink; later ones are built to replay parked rows).
#[derive(Debug, Clone, Default)]
struct Destination {
    up: Arc<watch::Sender<bool>>,
    /// The sink fails as a whole (an error from `write`, fatal for the engine).
    broken: Arc<AtomicBool>,
    /// The sink acks only when flushed, as a file sink does when its file closes: on shutdown, or
    /// [`FILE_AGE`] after the first row it holds.
    holds_until_flush: Arc<AtomicBool>,
    /// The sink behaves as a file sink does towards the engine (read at start): while the
    /// destination is down it keeps rows without blocking (open files, uploads retrying), the
    /// engine keeps no copy of them, and a raised [`Surrender`] flag makes it hand them back.
    file_like: Arc<AtomicBool>,
    /// The sink hands failed rows back, as the file sinks do, so the engine keeps no copy of the
    /// rows of its tickets. Read when the engine starts.
    reports_failed_rows: Arc<AtomicBool>,
    /// How long the destination takes per row written (milliseconds), as a webhook does.
    millis_per_row: Arc<AtomicU64>,
    instances: Arc<Mutex<usize>>,
    delivered: Arc<Mutex<Vec<Delivery>>>,
}

/// The rows one sink instance committed in one `write`.
#[derive(Debug)]
struct Delivery {
    instance: usize,
    rows: Vec<i64>,
}

impl Destination {
    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }

    /// Every row delivered by `instance`s matching `which`, in delivery order.
    fn rows(&self, which: impl Fn(usize) -> bool) -> Vec<i64> {
        lock(&self.delivered)
            .iter()
            .filter(|delivery| which(delivery.instance))
            .flat_map(|delivery| delivery.rows.iter().copied())
            .collect()
    }
}

/// A sink that, while its destination is down, retries inside `write` (so it holds its ticket
/// unacked and its queue fills, as a real sink retrying does), and commits once it is up.
#[derive(Debug)]
struct TestSink {
    instance: usize,
    destination: Destination,
    acks: AckSender,
    /// Tickets committed but not acked yet (only while the destination holds until flush).
    held: Vec<u64>,
    flush_at: Option<tokio::time::Instant>,
    /// Batches kept while the destination is down (only when file-like).
    pending: Vec<SinkBatch>,
    surrender: Surrender,
}

/// How often a file-like test sink holding rows looks whether its destination is back.
const PENDING_POLL: Duration = Duration::from_secs(1);

/// How long a holding test sink keeps its rows before it acks them, like a file's age.
const FILE_AGE: Duration = Duration::from_secs(300);

#[async_trait]
impl Sink for TestSink {
    fn name(&self) -> &str {
        "hook"
    }

    fn idempotent(&self) -> bool {
        false
    }

    fn reports_failed_rows(&self) -> bool {
        self.destination.file_like.load(Ordering::SeqCst)
            || self.destination.reports_failed_rows.load(Ordering::SeqCst)
    }

    fn surrender(&self) -> Option<Surrender> {
        let file_like = self.destination.file_like.load(Ordering::SeqCst);
        file_like.then(|| self.surrender.clone())
    }

    async fn write(&mut self, batch: SinkBatch) -> hubroute_sinks::Result<()> {
        if self.destination.broken.load(Ordering::SeqCst) {
            return Err(hubroute_sinks::Error::Config {
                sink: "hook".to_owned(),
                problem: "the test broke this sink".to_owned(),
            });
        }
        let holds = !*self.destination.up.borrow()
            || !self.pending.is_empty()
            || self.surrender.is_raised();
        if self.destination.file_like.load(Ordering::SeqCst) && holds {
            self.pending.push(batch);
            return Ok(());
        }
        let mut up = self.destination.up.subscribe();
        let _ = up.wait_for(|up| *up).await;
        let per_row = self.destination.millis_per_row.load(Ordering::SeqCst);
        let rows = batch.batch.num_rows() as u64;
        tokio::time::sleep(Duration::from_millis(per_row * rows)).await;
        lock(&self.destination.delivered).push(Delivery {
            instance: self.instance,
            rows: sequence_numbers(&batch.batch),
        });
        if self.destination.holds_until_flush.load(Ordering::SeqCst) {
            self.held.push(batch.ticket);
            self.flush_at
                .get_or_insert_with(|| tokio::time::Instant::now() + FILE_AGE);
        } else {
            let _ = self.acks.send(Ack::committed(batch.ticket)).await;
        }
        Ok(())
    }

    fn flush_deadline(&self) -> Option<tokio::time::Instant> {
        if self.pending.is_empty() {
            return self.flush_at;
        }
        let now = tokio::time::Instant::now();
        Some(if self.surrender.is_raised() {
            now
        } else {
            now + PENDING_POLL
        })
    }

    async fn flush(&mut self, _: FlushReason) -> hubroute_sinks::Result<()> {
        if self.surrender.is_raised() {
            for SinkBatch { ticket, batch } in std::mem::take(&mut self.pending) {
                let failed = (0..batch.num_rows())
                    .map(|row| FailedRow {
                        row,
                        error: "handed back".to_owned(),
                    })
                    .collect();
                let ack = Ack {
                    ticket,
                    failed,
                    failed_rows: Some(batch),
                    surrendered: true,
                };
                let _ = self.acks.send(ack).await;
            }
        } else if *self.destination.up.borrow() {
            for SinkBatch { ticket, batch } in std::mem::take(&mut self.pending) {
                lock(&self.destination.delivered).push(Delivery {
                    instance: self.instance,
                    rows: sequence_numbers(&batch),
                });
                let _ = self.acks.send(Ack::committed(ticket)).await;
            }
        }
        self.flush_at = None;
        for ticket in std::mem::take(&mut self.held) {
            let _ = self.acks.send(Ack::committed(ticket)).await;
        }
        Ok(())
    }
}

/// One test's directory, partition log and hook destination, shared by the engines it starts.
struct Harness {
    dir: tempfile::TempDir,
    log: Arc<Log>,
    hook: Destination,
    /// The checkpoint store the last engine was started with, to read what it wrote.
    checkpoints: Arc<Mutex<Option<Arc<dyn CheckpointStore>>>>,
}

impl Harness {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
            log: Arc::default(),
            hook: Destination::default(),
            checkpoints: Arc::default(),
        }
    }

    async fn start(&self) -> RunningEngine {
        let path = self.dir.path().join("hubroute.toml");
        let loaded = LoadedConfig::parse(&path, &config(self.dir.path())).expect("valid config");
        let hook = self.hook.clone();
        let sinks: SinkFactory = Arc::new(move |config, acks| {
            if config.name() != "hook" {
                return build_sink(config, acks);
            }
            let instance = {
                let mut instances = lock(&hook.instances);
                *instances += 1;
                *instances - 1
            };
            Ok(Box::new(TestSink {
                instance,
                destination: hook.clone(),
                acks,
                held: Vec::new(),
                flush_at: None,
                pending: Vec::new(),
                surrender: Surrender::default(),
            }))
        });
        let log = Arc::clone(&self.log);
        let stash = Arc::clone(&self.checkpoints);
        let destination = self.hook.clone();
        let probe: SinkProbe = Arc::new(move |config| {
            let up = config.name() != "hook" || *destination.up.borrow();
            Box::pin(async move {
                if up {
                    Ok(())
                } else {
                    Err(hubroute_sinks::Error::Config {
                        sink: "hook".to_owned(),
                        problem: "the test's destination is down".to_owned(),
                    })
                }
            })
        });
        RunningEngine::start_with(loaded, sinks, probe, move |_, checkpoints| async move {
            *lock(&stash) = Some(Arc::clone(&checkpoints));
            let source = MemorySource {
                log,
                checkpoints,
                partitions: vec![PARTITION.to_owned()],
            };
            Ok(Arc::new(source) as Arc<dyn BatchSource>)
        })
        .await
        .expect("the engine starts")
    }

    /// The dead-letter store of the test's configuration.
    fn dead_letters(&self) -> DeadLetterStore {
        let path = self.dir.path().join("hubroute.toml");
        let loaded = LoadedConfig::parse(&path, &config(self.dir.path())).expect("valid config");
        DeadLetterStore::new(&loaded.config.dead_letters).expect("a local dead-letter store")
    }

    fn store(&self) -> Arc<dyn CheckpointStore> {
        lock(&self.checkpoints)
            .clone()
            .expect("an engine was started")
    }

    /// The stored partition checkpoint's sequence number.
    async fn checkpoint(&self) -> Option<i64> {
        self.store()
            .load(&checkpoint_key(PARTITION))
            .await
            .expect("the checkpoint store reads")
            .map(|c| c.sequence_number)
    }

    /// The stored position of `endpoint`.
    async fn position(&self, endpoint: &str) -> Option<i64> {
        let positions: EndpointPositions = self
            .store()
            .load_endpoints(&checkpoint_key(PARTITION))
            .await
            .expect("the checkpoint store reads");
        positions.get(endpoint).copied()
    }

    /// Every row in the lake's Parquet files, sorted, duplicates kept.
    fn lake_rows(&self) -> Vec<i64> {
        fn visit(dir: &Path, rows: &mut Vec<i64>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    visit(&path, rows);
                } else if path.extension().is_some_and(|e| e == "parquet") {
                    let bytes = std::fs::read(&path).expect("a readable file");
                    hubroute_sinks::read_parquet_file("lake", bytes.into(), 1024, |batch| {
                        rows.extend(sequence_numbers(&batch));
                        Ok(())
                    })
                    .expect("a Parquet file of the sink");
                }
            }
        }
        let mut rows = Vec::new();
        visit(&self.dir.path().join("lake"), &mut rows);
        rows.sort_unstable();
        rows
    }
}

/// Waits, on the paused clock, until `check` holds (up to a minute of paused time).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("still not true after a minute: {what}");
}

/// Parks the hook, whose destination is down, after `dead_after`, then routes twenty batches while
/// it is parked: twenty parked objects of a hot row or so each (`hot(0..63)` in all), and the
/// checkpoint past them.
async fn park_the_hook_with_twenty_objects(harness: &Harness, engine: &RunningEngine) {
    harness.log.append(0..3);
    tokio::time::sleep(Duration::from_secs(11 * 60)).await;
    assert!(
        engine.shared.endpoints[HOOK].parking.is_parked(),
        "failing (stalled) for longer than dead_after"
    );
    for first in (3..63).step_by(3) {
        harness.log.append(first..first + 3);
    }
    eventually("the checkpoint moves past the parked rows", || async {
        harness.checkpoint().await == Some(62)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn rows_reach_their_endpoints_and_the_checkpoint_waits_for_every_endpoint() {
    let harness = Harness::new();
    let engine = harness.start().await;
    harness.log.append(0..10);
    eventually("the lake's position is stored", || async {
        harness.position("lake").await == Some(9)
    })
    .await;
    assert_eq!(harness.lake_rows(), (0..10).collect::<Vec<_>>());
    assert_eq!(
        harness.checkpoint().await,
        None,
        "the hook has not committed its rows: the partition checkpoint waits"
    );
    assert_eq!(harness.position("hook").await, None);

    harness.hook.set_up(true);
    eventually("the checkpoint covers the batch", || async {
        harness.checkpoint().await == Some(9)
    })
    .await;
    assert_eq!(harness.position("hook").await, Some(9));
    assert_eq!(
        harness.hook.rows(|_| true),
        hot(0..10),
        "only the hot rows reach the hook"
    );
    let summary = engine.shutdown().await.expect("a clean stop");
    assert_eq!(summary.events_routed, 10);
    assert_eq!(summary.committed, [(PARTITION.to_owned(), Some(9))]);
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_an_endpoint_skips_the_rows_it_had_committed() {
    let harness = Harness::new();
    let engine = harness.start().await;
    harness.log.append(0..10);
    eventually("the lake's position is stored", || async {
        harness.position("lake").await == Some(9)
    })
    .await;
    // The hook never committed: the engine stops with the partition checkpoint unwritten.
    engine
        .shutdown()
        .await
        .expect("a stop after the drain timeout");
    assert_eq!(harness.checkpoint().await, None);

    harness.hook.set_up(true);
    let engine = harness.start().await;
    harness.log.append(10..20);
    eventually("the checkpoint covers both batches", || async {
        harness.checkpoint().await == Some(19)
    })
    .await;
    assert_eq!(
        harness.lake_rows(),
        (0..20).collect::<Vec<_>>(),
        "the lake got the first batch once, although the partition was read again from its start"
    );
    assert_eq!(
        harness.hook.rows(|_| true),
        hot(0..20),
        "the hook got what it had not committed"
    );
    engine.shutdown().await.expect("a clean stop");
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_dead_for_dead_after_is_parked_and_replayed_in_order_once_it_recovers() {
    let harness = Harness::new();
    let engine = harness.start().await;
    let parked = || engine.shared.endpoints[HOOK].parking.is_parked();
    harness.log.append(0..10);
    eventually("the lake's position is stored", || async {
        harness.position("lake").await == Some(9)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(9 * 60)).await;
    assert!(!parked(), "not before dead_after");
    assert_eq!(harness.checkpoint().await, None);

    tokio::time::sleep(Duration::from_secs(2 * 60)).await;
    assert!(parked(), "failing (stalled) for longer than dead_after");
    let health = engine.endpoint_health();
    assert_eq!(health[HOOK], ("hook".to_owned(), HealthStatus::Dead));
    eventually("the checkpoint moves past the parked rows", || async {
        harness.checkpoint().await == Some(9)
    })
    .await;
    // While parked, the lake keeps committing and the checkpoint keeps moving.
    harness.log.append(10..20);
    eventually(
        "the checkpoint moves on while the hook is parked",
        || async { harness.checkpoint().await == Some(19) },
    )
    .await;
    assert_eq!(harness.lake_rows(), (0..20).collect::<Vec<_>>());
    assert!(harness.hook.rows(|_| true).is_empty());
    assert_eq!(
        engine.endpoint_health()[LAKE].1,
        HealthStatus::Healthy,
        "the lake is unaffected"
    );

    harness.hook.set_up(true);
    eventually("the hook is live again", || async { !parked() }).await;
    assert_eq!(
        harness.hook.rows(|instance| instance > 0),
        hot(0..20),
        "every parked row is replayed, in partition order"
    );
    harness.log.append(20..30);
    eventually("live delivery resumes", || async {
        harness.checkpoint().await == Some(29)
    })
    .await;
    let live: BTreeSet<i64> = harness
        .hook
        .rows(|instance| instance == 0)
        .into_iter()
        .collect();
    assert!(
        hot(20..30).iter().all(|row| live.contains(row)),
        "rows after the replay go to the live sink"
    );
    assert_ne!(engine.endpoint_health()[HOOK].1, HealthStatus::Dead);
    engine.shutdown().await.expect("a clean stop");
}

/// A sink that acks only when its file closes must not cost a file age per parked object: the
/// replay closes each group's sink input, so the sink delivers at once (the chaos suite's soak
/// found a parked Parquet endpoint replaying one small object per `max_file_age`).
#[tokio::test(start_paused = true)]
async fn parked_rows_of_a_sink_that_acks_when_its_file_closes_replay_without_waiting_a_file_age_each()
 {
    let harness = Harness::new();
    let engine = harness.start().await;
    let parked = || engine.shared.endpoints[HOOK].parking.is_parked();
    park_the_hook_with_twenty_objects(&harness, &engine).await;

    harness.hook.holds_until_flush.store(true, Ordering::SeqCst);
    harness.hook.set_up(true);
    let started = tokio::time::Instant::now();
    eventually("the hook is live again", || async { !parked() }).await;
    assert!(
        started.elapsed() < FILE_AGE,
        "replaying twenty objects took {:?}, a file age ({FILE_AGE:?}) or more",
        started.elapsed()
    );
    assert_eq!(
        harness.hook.rows(|instance| instance > 0),
        hot(0..63),
        "every parked row is replayed, in partition order"
    );
    engine.shutdown().await.expect("a clean stop");
}

/// A file sink keeps the rows it holds (open files, uploads retrying) and the engine keeps no copy
/// of them: parking raises the sink's surrender flag, the sink hands them back, and they are parked
/// like the rest, so the checkpoint moves past them while the endpoint is down; once it recovers
/// they are replayed in order with the rows parked after them.
#[tokio::test(start_paused = true)]
async fn a_parked_file_sink_hands_back_the_rows_it_holds_so_the_checkpoint_moves_past_them() {
    let harness = Harness::new();
    harness.hook.file_like.store(true, Ordering::SeqCst);
    let engine = harness.start().await;
    let parked = || engine.shared.endpoints[HOOK].parking.is_parked();
    harness.log.append(0..30);
    eventually("the lake's position is stored", || async {
        harness.position("lake").await == Some(29)
    })
    .await;
    assert_eq!(
        harness.checkpoint().await,
        None,
        "the sink holds the hook's rows"
    );
    tokio::time::sleep(Duration::from_secs(11 * 60)).await;
    assert!(parked(), "failing (stalled) for longer than dead_after");
    eventually(
        "the checkpoint moves past the rows the sink held",
        || async { harness.checkpoint().await == Some(29) },
    )
    .await;
    harness.log.append(30..60);
    eventually("the checkpoint moves on while parked", || async {
        harness.checkpoint().await == Some(59)
    })
    .await;
    assert!(harness.hook.rows(|_| true).is_empty());

    harness.hook.set_up(true);
    eventually("the hook is live again", || async { !parked() }).await;
    assert_eq!(
        harness.hook.rows(|instance| instance > 0),
        hot(0..60),
        "the handed-back rows are replayed first, then the rows parked after them"
    );
    assert!(
        harness.hook.rows(|instance| instance == 0).is_empty(),
        "the live sink delivered none of the rows it handed back"
    );
    harness.log.append(60..90);
    eventually("live delivery resumes", || async {
        harness.checkpoint().await == Some(89)
    })
    .await;
    assert_eq!(harness.hook.rows(|instance| instance == 0), hot(60..90));
    engine.shutdown().await.expect("a clean stop");
}

/// Parked rows outlive the engine that parked them and the ownership of their partition: before a
/// partition starts, an endpoint with parked rows of it is parked, and they are replayed before live
/// delivery; parked rows of a partition this instance does not own are left to its owner.
#[tokio::test(start_paused = true)]
async fn parked_rows_of_an_owned_partition_are_replayed_at_start_and_others_are_left_to_their_owner()
 {
    let harness = Harness::new();
    let store = harness.dead_letters();
    for partition in [PARTITION, "1"] {
        let rows = 0..3;
        let messages: Vec<Message> = rows
            .map(|sequence_number| {
                let mut message = Message::telemetry("{}");
                message.partition = partition.to_owned();
                message.sequence_number = sequence_number;
                message
            })
            .collect();
        let batch = MessageBatchBuilder::batch_of(&messages).expect("a batch");
        let records = DeadLetter::parked_rows("hook", &batch, "parked: an earlier run").unwrap();
        store.write_parked(&records).await.expect("stored");
    }
    harness.hook.set_up(true);
    let engine = harness.start().await;
    eventually("the owned partition's parked rows are replayed", || async {
        harness.hook.rows(|instance| instance > 0) == [0, 1, 2]
    })
    .await;
    eventually("the hook is live again", || async {
        !engine.shared.endpoints[HOOK].parking.is_parked()
    })
    .await;
    harness.log.append(3..13);
    eventually("the checkpoint covers the live rows", || async {
        harness.checkpoint().await == Some(12)
    })
    .await;
    assert_eq!(harness.hook.rows(|instance| instance == 0), hot(3..13));
    let left: Vec<String> = store
        .parked("hook")
        .await
        .unwrap()
        .into_iter()
        .map(|object| object.partition)
        .collect();
    assert_eq!(
        left,
        ["1"],
        "another partition's parked rows stay for its owner"
    );
    engine.shutdown().await.expect("a clean stop");
}

/// A router waiting for room in the full queue of an endpoint whose tickets keep no copy of their
/// rows (a file sink's) when the endpoint is parked must park the rows it holds: it used to settle
/// the ticket without them, and the chaos soak's blob endpoint lost a batch per partition.
#[tokio::test(start_paused = true)]
async fn rows_waiting_for_the_full_queue_of_a_file_sink_are_parked_when_it_is_parked() {
    let harness = Harness::new();
    harness
        .hook
        .reports_failed_rows
        .store(true, Ordering::SeqCst);
    let engine = harness.start().await;
    let parked = || engine.shared.endpoints[HOOK].parking.is_parked();
    // Ten batches with a hot row each: the hook's sink waits in `write` with the first, its queue
    // (capacity 2) holds the next two, and the router waits to queue the fourth.
    for first in (0..30).step_by(3) {
        harness.log.append(first..first + 3);
    }
    tokio::time::sleep(Duration::from_secs(11 * 60)).await;
    assert!(parked(), "failing (stalled) for longer than dead_after");

    // The tickets the sink holds settle when it delivers them; the others were parked.
    harness.hook.set_up(true);
    eventually("the hook is live again", || async { !parked() }).await;
    eventually("the checkpoint covers every batch", || async {
        harness.checkpoint().await == Some(29)
    })
    .await;
    let delivered: BTreeSet<i64> = harness.hook.rows(|_| true).into_iter().collect();
    assert_eq!(
        delivered,
        hot(0..30).into_iter().collect(),
        "every hot row reaches the hook: from the live sink or replayed"
    );
    engine.shutdown().await.expect("a clean stop");
}

/// A replay is given up only when no ack arrives for `stall_after` plus the sink's linger, not when
/// a whole group takes longer than that: a slow endpoint that commits steadily catches up (the
/// chaos soak's webhook never did: every group of many objects timed out and was replayed again).
#[tokio::test(start_paused = true)]
async fn a_slow_endpoint_that_commits_steadily_catches_up_on_its_parked_rows() {
    let harness = Harness::new();
    let engine = harness.start().await;
    let parked = || engine.shared.endpoints[HOOK].parking.is_parked();
    park_the_hook_with_twenty_objects(&harness, &engine).await;
    // 21 parked rows at 5 s each: 105 s in all, over three times stall_after (30 s); one object
    // (a hot row) takes 5 s.
    harness.hook.millis_per_row.store(5_000, Ordering::SeqCst);
    harness.hook.set_up(true);
    let started = tokio::time::Instant::now();
    while parked() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "still parked after 10 minutes: the replay never catches up"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        harness.hook.rows(|instance| instance > 0),
        hot(0..63),
        "every parked row is replayed once, in partition order"
    );
    engine.shutdown().await.expect("a clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_failing_sink_stops_the_engine_with_a_typed_fatal_error_and_no_checkpoint() {
    let harness = Harness::new();
    harness.hook.broken.store(true, Ordering::SeqCst);
    let engine = harness.start().await;
    harness.log.append(0..3);
    let stopped = tokio::time::timeout(Duration::from_secs(60), engine.wait())
        .await
        .expect("the engine stops by itself");
    match stopped {
        Err(Error::Fatal { component, source }) => {
            assert_eq!(component, "sink");
            assert!(
                matches!(*source, Error::Sink { ref endpoint, .. } if endpoint == "hook"),
                "the sink's error, typed: {source:?}"
            );
        }
        other => panic!("expected a fatal sink error, got {other:?}"),
    }
    assert_eq!(
        harness.checkpoint().await,
        None,
        "rows of the failed sink are never checkpointed"
    );
}
