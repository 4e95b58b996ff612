//! The running engine: it wires the source, the routing table and the sinks together; the
//! at-least-once bookkeeping between them is the [`Ledger`]'s (`ledger.rs`), and parking dead
//! endpoints is `parking.rs`'s.
//!
//! ```text
//!  partition receiver ──(bounded, 2)──► router ──(bounded, queue_capacity)──► endpoint sink
//!   (AMQP credit only        │  route + rows_for on            (drive_sink)       │
//!    while there is room)    │  the blocking pool                                  │ acks
//!                            │  parked endpoint ──► dead-letter store ◄── replay    ▼
//!                            ▼                       (parked rows)       task   ack collector
//!                         Ledger ◄────────────────────────────────────────────── (dead-letters
//!                            │  tickets, in-flight entries, per-endpoint progress   failed rows)
//!                            ▼ periodically and at shutdown (housekeeping)
//!                     CheckpointStore: partition checkpoint + endpoint positions
//! ```
//!
//! Every queue is bounded, so a slow sink fills its queue, blocks the router of each partition that
//! routes to it, which stops asking its receiver for batches, which stops granting AMQP credit, until
//! the endpoint recovers or is parked. A source batch becomes one ticket per endpoint that receives
//! rows of it; the partition's checkpoint moves past the batch only when every ticket of it (and of
//! every earlier batch) is settled — committed, dead-lettered or parked. The routing table sits
//! behind a lock that routers read once per batch, so a reload swaps it between batches, never
//! within one.

mod http;
mod ledger;
mod metrics;
mod parking;
mod partitions;
mod status_page;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use hubroute_message::MessageColumns;
use hubroute_sinks::{
    Ack, DeadLetter, DeadLetterStore, FailedRow, MALFORMED_SINK, SinkBatch, build_sink, drive_sink,
};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::checkpoint::{self, Checkpoint, CheckpointStore, EndpointPositions, SelectedStore};
use crate::config::{FullPolicy, LoadedConfig};
use crate::health::{EndpointHealth, HealthPolicy, HealthStatus};
use crate::ownership::PartitionOwnership;
use crate::progress::Position;
use crate::routing::RoutingTable;
use crate::source::{EventHubSource, PartitionOutcome, SourceBatch};
use crate::twins::Twins;
use crate::{Error, Result};
use ledger::{InFlight, Ledger};
pub use metrics::Metrics;
use metrics::{endpoint_labels, partition_labels, route_labels};
use parking::Parking;

/// Source batches a router may hold per partition beyond the one it is routing.
const SOURCE_QUEUE: usize = 2;
/// Acks a sink may send before the collector drains them.
const ACK_QUEUE: usize = 256;
/// How often health, queue depths and stalls are refreshed.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// Why rows of a `full_policy = "dead_letter"` endpoint were parked.
const QUEUE_FULL: &str = "endpoint queue full (full_policy = \"dead_letter\")";
/// Cap of the backoff between attempts to write dead letters.
const DEAD_LETTER_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One endpoint as the running engine sees it.
#[derive(Debug)]
struct EndpointState {
    name: String,
    kind: &'static str,
    policy: FullPolicy,
    /// The sink returns failed rows in its acks: its tickets keep no copy of the source batch.
    reports_failed_rows: bool,
    /// Weak, so that the engine's own view never keeps the queue open at shutdown.
    queue: mpsc::WeakSender<SinkBatch>,
    health: Mutex<EndpointHealth>,
    /// Live or parked (see `parking`).
    parking: Parking,
}

/// One partition as the running engine sees it (its progress is in the [`Ledger`]).
#[derive(Debug)]
struct PartitionState {
    id: String,
    /// Read by this instance in the current ownership period: only then is its checkpoint written
    /// (`partitions::supervise` owns it).
    active: AtomicBool,
}

/// State shared by every task of the engine and its HTTP server.
#[derive(Debug)]
pub(crate) struct Shared {
    config_path: PathBuf,
    hub_name: String,
    event_hub: String,
    config: RwLock<LoadedConfig>,
    table: RwLock<Arc<RoutingTable>>,
    endpoints: Vec<EndpointState>,
    partitions: Vec<PartitionState>,
    /// Tickets, in-flight entries and progress: where checkpoints come from.
    ledger: Ledger,
    metrics: Metrics,
    dead_letters: DeadLetterStore,
    checkpoints: Arc<dyn CheckpointStore>,
    /// Which partitions this instance reads; checkpoints are written only for owned ones.
    ownership: PartitionOwnership,
    source: EventHubSource,
    /// Device twins attached to every batch before routing (a no-op without `[twins]`).
    twins: Twins,
    stall_after: Duration,
    /// The first fatal error, which stops the engine.
    fatal: Mutex<Option<Error>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a finished run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// Events read and routed.
    pub events_routed: u64,
    /// Per partition, the last sequence number every endpoint had committed when the engine stopped
    /// (`None` if none). The final checkpoint write was given these positions; whether the store
    /// took it (and whether this instance still owned the partition) is in the log and metrics.
    pub committed: Vec<(String, Option<i64>)>,
}

/// A started engine. Dropping it does not stop it; call [`RunningEngine::shutdown`].
#[derive(Debug)]
pub struct RunningEngine {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    http_addr: SocketAddr,
    task: JoinHandle<Result<RunSummary>>,
}

impl RunningEngine {
    /// Compiles every route, connects to the source, builds every sink and starts routing.
    /// Everything a user can get wrong (routes, sinks, credentials, the address to listen on) is
    /// reported here, before a single event is read.
    pub async fn start(loaded: LoadedConfig) -> Result<Self> {
        let table = RoutingTable::compile(&loaded)?;
        let config = &loaded.config;
        let dead_letters = DeadLetterStore::new(&config.dead_letters)
            .map_err(|e| Error::DeadLetters(Box::new(e)))?;
        let metrics = Metrics::default();
        let store = checkpoint::open(&config.checkpoint, &metrics.ownership().store_operations)?;
        let checkpoints = store.checkpoints();
        let listener = tokio::net::TcpListener::bind(config.service.listen)
            .await
            .map_err(|e| Error::Listen {
                address: config.service.listen,
                problem: e.to_string(),
            })?;
        let http_addr = listener.local_addr().map_err(|e| Error::Listen {
            address: config.service.listen,
            problem: e.to_string(),
        })?;

        let mut queues = Vec::new();
        let mut sinks = Vec::new();
        let mut endpoints = Vec::new();
        let health_policy = HealthPolicy {
            dead_after: config.service.dead_after,
            ..HealthPolicy::default()
        };
        for endpoint in &config.endpoints {
            let (acks, ack_receiver) = mpsc::channel(ACK_QUEUE);
            let sink = build_sink(endpoint.sink.clone(), acks).map_err(|source| Error::Sink {
                endpoint: endpoint.name().to_owned(),
                source: Box::new(source),
            })?;
            let (queue, batches) = mpsc::channel(endpoint.queue_capacity);
            endpoints.push(EndpointState {
                name: endpoint.name().to_owned(),
                kind: sink_kind(&endpoint.sink),
                policy: endpoint.full_policy,
                reports_failed_rows: sink.reports_failed_rows(),
                queue: queue.downgrade(),
                health: Mutex::new(EndpointHealth::new(health_policy)),
                parking: Parking::default(),
            });
            queues.push(queue);
            sinks.push((sink, batches, ack_receiver));
        }

        let source =
            EventHubSource::connect(config.source.clone(), Arc::clone(&checkpoints)).await?;
        let ownership = match store {
            SelectedStore::Files(_) => PartitionOwnership::single(
                source.partitions().to_vec(),
                metrics.ownership().clone(),
            ),
            SelectedStore::Shared(store) => {
                let keys = source
                    .partitions()
                    .iter()
                    .map(|p| source.checkpoint_key(p))
                    .collect();
                PartitionOwnership::shared(
                    store,
                    keys,
                    &config.checkpoint,
                    metrics.ownership().clone(),
                )
                .await?
            }
        };
        // twins: start loading device twins in the background; routers wait for them.
        let twins = Twins::start(config, metrics.twins().clone())?;
        let partitions = source
            .partitions()
            .iter()
            .map(|id| PartitionState {
                id: id.clone(),
                active: AtomicBool::new(false),
            })
            .collect::<Vec<_>>();
        let ledger = Ledger::new(partitions.len(), endpoints.len());
        let shared = Arc::new(Shared {
            config_path: loaded.path.clone(),
            hub_name: config.hub_name.clone(),
            event_hub: source.event_hub().to_owned(),
            table: RwLock::new(Arc::new(table)),
            endpoints,
            partitions,
            ledger,
            metrics,
            dead_letters,
            checkpoints,
            ownership,
            source,
            twins,
            stall_after: config.service.stall_after,
            fatal: Mutex::new(None),
            config: RwLock::new(loaded.clone()),
        });
        for endpoint in 0..shared.endpoints.len() {
            shared
                .resume_parking(&shared.dead_letters, endpoint)
                .await?;
        }
        let shutdown = CancellationToken::new();
        let drain_timeout = loaded.config.service.drain_timeout;
        let checkpoint_interval = loaded.config.checkpoint.interval;
        let lag_interval = loaded.config.service.lag_interval;
        tokio::spawn(http::serve(listener, Arc::clone(&shared), shutdown.clone()));
        let task = tokio::spawn(run(
            Arc::clone(&shared),
            queues,
            sinks,
            shutdown.clone(),
            drain_timeout,
            checkpoint_interval,
            lag_interval,
        ));
        tracing::info!(
            event_hub = %shared.event_hub,
            partitions = shared.partitions.len(),
            endpoints = shared.endpoints.len(),
            %http_addr,
            "hubroute engine started"
        );
        Ok(Self {
            shared,
            shutdown,
            http_addr,
            task,
        })
    }

    /// The address of the `/metrics`, `/healthz` and `/routes` server.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The engine's metrics (for a progress line).
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Endpoint names with their current health.
    pub fn endpoint_health(&self) -> Vec<(String, HealthStatus)> {
        let now = Instant::now();
        self.shared
            .endpoints
            .iter()
            .map(|e| (e.name.clone(), lock(&e.health).status(now)))
            .collect()
    }

    /// Per partition, the last sequence number every endpoint has committed (`None` for a partition
    /// with nothing committed yet): the position its next checkpoint will record.
    pub fn committed_positions(&self) -> Vec<(String, Option<i64>)> {
        self.shared.committed_positions()
    }

    /// Whether the engine stopped on its own (a fatal error, or every partition ended).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// A handle that reloads the configuration of this engine (for a signal or file watcher).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Stops reading, drains in-flight batches (up to the configured drain timeout), writes the
    /// final checkpoints and returns what the run did, or the error that stopped it.
    pub async fn shutdown(self) -> Result<RunSummary> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the engine stops by itself (a fatal error) or through a clone of its token.
    pub async fn wait(self) -> Result<RunSummary> {
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(Error::Panicked {
                component: "engine task",
                problem: join.to_string(),
            }),
        }
    }

    /// A token that stops the engine when cancelled (e.g. from a signal handler).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Reloads a running engine's configuration file.
#[derive(Debug, Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
}

impl Reloader {
    /// Re-reads the configuration file and, if it is valid and changes only routes, the fallback or
    /// enrichments, swaps the routing table between batches. On error the running table stays.
    pub fn reload(&self) -> Result<()> {
        let outcome = self.shared.reload();
        let label = if outcome.is_ok() {
            "applied"
        } else {
            "rejected"
        };
        self.shared
            .metrics
            .config_reloads
            .get_or_create(&vec![("outcome", label.to_owned())])
            .inc();
        outcome
    }

    /// The configuration file being watched.
    pub fn path(&self) -> &std::path::Path {
        &self.shared.config_path
    }
}

fn sink_kind(config: &hubroute_sinks::SinkConfig) -> &'static str {
    use hubroute_sinks::SinkConfig;
    match config {
        SinkConfig::Parquet(_) => "parquet",
        SinkConfig::Webhook(_) => "webhook",
        SinkConfig::Postgres(_) => "postgres",
        SinkConfig::Sqlite(_) => "sqlite",
        SinkConfig::Storage(_) => "storage",
        SinkConfig::EventHubs(_) => "eventhubs",
        SinkConfig::ServiceBus(_) => "servicebus",
    }
}

type SinkParts = (
    Box<dyn hubroute_sinks::Sink>,
    mpsc::Receiver<SinkBatch>,
    mpsc::Receiver<Ack>,
);

/// The engine's main task: starts every other task, waits for them and writes the last
/// checkpoints.
async fn run(
    shared: Arc<Shared>,
    queues: Vec<mpsc::Sender<SinkBatch>>,
    sinks: Vec<SinkParts>,
    shutdown: CancellationToken,
    drain_timeout: Duration,
    checkpoint_interval: Duration,
    lag_interval: Duration,
) -> Result<RunSummary> {
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut aborts: Vec<AbortHandle> = Vec::new();
    let mut sink_tasks = JoinSet::new();
    for (index, (sink, batches, acks)) in sinks.into_iter().enumerate() {
        let name = shared.endpoints[index].name.clone();
        let stop = shutdown.clone();
        let for_sink = Arc::clone(&shared);
        let span = tracing::info_span!("endpoint", endpoint = %name);
        aborts.push(
            sink_tasks.spawn(
                async move {
                    if let Err(error) = drive_sink(sink, batches).await {
                        let error = Error::Sink {
                            endpoint: name.clone(),
                            source: Box::new(error),
                        };
                        for_sink.fail("sink", error, &stop);
                    }
                }
                .instrument(span),
            ),
        );
        aborts.push(tasks.spawn(collect_acks(Arc::clone(&shared), acks)));
    }
    let replaying_done = CancellationToken::new();
    let mut replays = JoinSet::new();
    let sink_configs: Vec<hubroute_sinks::SinkConfig> = shared
        .config
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .config
        .endpoints
        .iter()
        .map(|e| e.sink.clone())
        .collect();
    for (index, config) in sink_configs.into_iter().enumerate() {
        replays.spawn(parking::replay_task(
            Arc::clone(&shared),
            index,
            config,
            replaying_done.clone(),
        ));
    }
    let supervisor = tokio::spawn(partitions::supervise(
        Arc::clone(&shared),
        queues.clone(),
        shutdown.clone(),
    ));
    aborts.push(supervisor.abort_handle());
    let balancing_done = CancellationToken::new();
    let balancing = tokio::spawn({
        let ownership = shared.ownership.clone();
        let (draining, done) = (shutdown.clone(), balancing_done.clone());
        async move { ownership.run(draining, done).await }
    });
    drop(queues);
    let housekeeping_done = CancellationToken::new();
    let housekeeping = tokio::spawn(housekeeping(
        Arc::clone(&shared),
        checkpoint_interval,
        lag_interval,
        housekeeping_done.clone(),
    ));

    let pipeline = async {
        let _ = supervisor.await;
        // Routers held the last queue senders: the sinks now see their input close and flush.
        while sink_tasks.join_next().await.is_some() {}
        while tasks.join_next().await.is_some() {}
    };
    tokio::pin!(pipeline);
    tokio::select! {
        () = &mut pipeline => {}
        () = shutdown.cancelled() => {
            tracing::info!(timeout = ?drain_timeout, "shutting down: draining in-flight batches");
            if tokio::time::timeout(drain_timeout, &mut pipeline).await.is_err() {
                let pending = shared.ledger.unsettled_tickets();
                tracing::warn!(
                    pending,
                    "drain timeout reached; uncommitted batches will be read again after a restart"
                );
                aborts.iter().for_each(AbortHandle::abort);
            }
        }
    }
    replaying_done.cancel();
    while replays.join_next().await.is_some() {}
    housekeeping_done.cancel();
    let _ = housekeeping.await;
    shared.write_checkpoints().await;
    // Claims are renewed until the last checkpoint is written, then handed to other instances.
    balancing_done.cancel();
    let _ = balancing.await;
    shared.ownership.release().await;
    shared.twins.shutdown().await; // twins: last snapshot, after the last checkpoints

    let summary = RunSummary {
        events_routed: shared.metrics.events_routed(),
        committed: shared.committed_positions(),
    };
    match lock(&shared.fatal).take() {
        Some(error) => Err(error),
        None => Ok(summary),
    }
}

/// Routes the batches of one partition until its receiver ends. `floors` (by endpoint) are the
/// positions the endpoints had settled before a restart: rows at or below its floor are not sent
/// to an endpoint again.
async fn route_partition(
    shared: Arc<Shared>,
    partition: usize,
    floors: Vec<Option<i64>>,
    mut batches: mpsc::Receiver<SourceBatch>,
    receiver: JoinHandle<Result<PartitionOutcome>>,
    queues: Vec<mpsc::Sender<SinkBatch>>,
    shutdown: CancellationToken,
) {
    let id = shared.partitions[partition].id.clone();
    let mut floors = Floors::new(floors);
    while let Some(batch) = batches.recv().await {
        if let Err(error) = shared
            .route_batch(partition, batch, &queues, &mut floors)
            .await
        {
            shared.fail(&format!("router of partition {id}"), error, &shutdown);
            break;
        }
    }
    drop(batches);
    match receiver.await {
        Ok(Ok(PartitionOutcome::Stopped | PartitionOutcome::DownstreamClosed)) => {}
        Ok(Ok(PartitionOutcome::OwnershipLost { description })) => {
            tracing::warn!(partition = %id, %description, "another reader took this partition");
            shared.ownership.link_stolen(&id);
        }
        Ok(Err(error)) => shared.fail(&format!("receiver of partition {id}"), error, &shutdown),
        Err(join) => shared.fail(
            &format!("receiver of partition {id}"),
            Error::EndpointStopped {
                endpoint: "receiver".to_owned(),
                problem: format!("the receiver task panicked: {join}"),
            },
            &shutdown,
        ),
    }
}

/// The positions a restarted partition's endpoints had settled, while some is ahead of the
/// routed rows; empty (and free) once the partition has passed every one of them.
#[derive(Debug, Clone)]
struct Floors(Option<Arc<[Option<i64>]>>);

impl Floors {
    fn new(floors: Vec<Option<i64>>) -> Self {
        Self(floors.iter().any(Option::is_some).then(|| floors.into()))
    }

    /// Whether some floor may still be ahead of the routed rows.
    fn is_active(&self) -> bool {
        self.0.is_some()
    }

    /// The floors that apply to a batch whose first row is `first`, if any does.
    fn for_batch(&self, first: i64) -> Option<Arc<[Option<i64>]>> {
        self.0
            .as_ref()
            .filter(|floors| floors.iter().flatten().any(|f| first <= *f))
            .cloned()
    }

    /// Forgets the floors once `last` passed them all.
    fn passed(&mut self, last: i64) {
        if self
            .0
            .as_ref()
            .is_some_and(|floors| floors.iter().flatten().all(|f| last >= *f))
        {
            self.0 = None;
        }
    }
}

/// Drops from `rows` (source row indices per endpoint) the rows at or below the endpoint's floor.
fn skip_settled(rows: &mut [Vec<u32>], floors: &[Option<i64>], batch: &RecordBatch) -> Result<()> {
    let columns = MessageColumns::try_new(batch)?;
    for (indices, floor) in rows.iter_mut().zip(floors) {
        if let Some(floor) = *floor {
            indices.retain(|&row| columns.sequence_number.value(row as usize) > floor);
        }
    }
    Ok(())
}

impl Shared {
    fn committed_positions(&self) -> Vec<(String, Option<i64>)> {
        self.partitions
            .iter()
            .enumerate()
            .map(|(index, p)| (p.id.clone(), self.ledger.committed(index)))
            .collect()
    }

    /// Records the first fatal error (the one the engine returns) and stops the engine.
    fn fail(&self, component: &str, source: Error, shutdown: &CancellationToken) {
        tracing::error!(%component, error = %source, "stopping the engine");
        lock(&self.fatal).get_or_insert(Error::Fatal {
            component: component.to_owned(),
            source: Box::new(source),
        });
        shutdown.cancel();
    }

    fn table(&self) -> Arc<RoutingTable> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Routes one source batch and hands its rows to the endpoint queues.
    async fn route_batch(
        self: &Arc<Self>,
        partition: usize,
        mut source: SourceBatch,
        queues: &[mpsc::Sender<SinkBatch>],
        floors: &mut Floors,
    ) -> Result<()> {
        if !source.malformed.is_empty() {
            let records: Vec<DeadLetter> = source
                .malformed
                .iter()
                .map(|event| {
                    DeadLetter::malformed_event(
                        &self.event_hub,
                        &source.partition,
                        event.sequence_number,
                        &event.problem,
                        &event.payload,
                    )
                })
                .collect();
            self.store_dead_letters(MALFORMED_SINK, &records).await;
        }
        self.twins.wait_ready().await?; // twins: routing waits until twins are loaded
        let table = self.table();
        let rows = source.batch.num_rows() as u64;
        let batch = source.batch.clone();
        let routing = Arc::clone(&table);
        let twins = self.twins.clone();
        // Only batches of a restarted partition pay for this, until it passed every floor.
        let skip = if floors.is_active() {
            let first = MessageColumns::try_new(&source.batch)?
                .sequence_number
                .iter()
                .flatten()
                .next()
                .unwrap_or(source.last_sequence_number);
            let skip = floors.for_batch(first);
            floors.passed(source.last_sequence_number);
            skip
        } else {
            None
        };
        let (batch, routed, parts) = tokio::task::spawn_blocking(move || -> Result<_> {
            let batch = twins.attach(batch)?; // twins: attach twins, apply twin events, then route
            let mut routed = routing.route(&batch)?;
            if let Some(floors) = skip {
                skip_settled(&mut routed.rows, &floors, &batch)?;
            }
            let parts = std::mem::take(&mut routed.rows)
                .into_iter()
                .enumerate()
                .filter(|(_, indices)| !indices.is_empty())
                .map(|(endpoint, indices)| {
                    let rows = routing.rows_for(endpoint, &batch, &indices)?;
                    Ok((endpoint, indices, rows))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((batch, routed, parts))
        })
        .await
        .map_err(|join| Error::Panicked {
            component: "router",
            problem: join.to_string(),
        })??;
        source.batch = batch; // twins: in-flight tickets keep the batch with its twins

        let metrics = &self.metrics;
        metrics.events_routed.inc_by(rows);
        metrics
            .partition_events
            .get_or_create(&partition_labels(&source.partition))
            .inc_by(rows);
        for (name, (matched, undefined)) in table
            .route_names()
            .zip(routed.matched.iter().zip(&routed.undefined))
        {
            metrics
                .route_matched
                .get_or_create(&route_labels(name))
                .inc_by(*matched as u64);
            metrics
                .route_undefined
                .get_or_create(&route_labels(name))
                .inc_by(*undefined as u64);
        }
        metrics.fallback_matched.inc_by(routed.fallback as u64);
        if let Ok(columns) = MessageColumns::try_new(&source.batch)
            && let Some(newest) = columns.enqueued_time.iter().flatten().max()
        {
            let age_ms = chrono::Utc::now().timestamp_millis() - newest;
            metrics
                .partition_lag_seconds
                .get_or_create(&partition_labels(&source.partition))
                .set(age_ms.max(0) as f64 / 1000.0);
        }

        // A parked endpoint's rows are stored before the batch opens: it holds no ticket of them.
        let mut live = Vec::with_capacity(parts.len());
        for (endpoint, indices, rows) in parts {
            if !self
                .park_if_parked(endpoint, &source.partition, &rows)
                .await
            {
                live.push((endpoint, indices, rows));
            }
        }
        let parts = live;
        let position = Position {
            sequence_number: source.last_sequence_number,
            offset: source.last_offset.clone(),
        };
        let batch_id = self.ledger.open(
            partition,
            position,
            parts.iter().map(|(endpoint, _, _)| *endpoint).collect(),
        );
        let enqueued = MessageColumns::try_new(&source.batch)
            .map(|columns| columns.enqueued_time.clone())
            .map_err(|error| Error::Decode {
                partition: source.partition.clone(),
                problem: error.to_string(),
            })?;
        for (endpoint, indices, rows) in parts {
            let ticket = self.ledger.issue(InFlight {
                partition,
                batch: batch_id,
                endpoint,
                indices,
                enqueued: enqueued.clone(),
                source: (!self.endpoints[endpoint].reports_failed_rows)
                    .then(|| source.batch.clone()),
                table: Arc::clone(&table),
                routed_at: tokio::time::Instant::now(),
            });
            let state = &self.endpoints[endpoint];
            let item = SinkBatch {
                ticket,
                batch: rows,
            };
            let stopped = |problem: &str| Error::EndpointStopped {
                endpoint: state.name.clone(),
                problem: problem.to_owned(),
            };
            match state.policy {
                // A full queue of an endpoint that gets parked meanwhile stops blocking: the
                // ticket's rows are parked instead.
                FullPolicy::Block => tokio::select! {
                    sent = queues[endpoint].send(item) => sent.map_err(|_| stopped("its sink task ended"))?,
                    () = state.parking.parked() => self.park_ticket(endpoint, ticket).await,
                },
                FullPolicy::DeadLetter => match queues[endpoint].try_send(item) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return Err(stopped("its sink task ended"));
                    }
                    // Parked, not failed: the endpoint's queued rows are parked too, so the
                    // checkpoint moves on, and everything is replayed once the queue drains.
                    Err(mpsc::error::TrySendError::Full(item)) => {
                        self.park(endpoint, QUEUE_FULL).await;
                        self.park_rows_of(endpoint, ticket, &item.batch).await;
                    }
                },
            }
        }
        self.update_uncommitted(partition);
        Ok(())
    }

    fn update_uncommitted(&self, partition: usize) {
        let state = &self.partitions[partition];
        let in_flight = self.ledger.unsettled_batches(partition);
        self.metrics
            .partition_uncommitted_batches
            .get_or_create(&partition_labels(&state.id))
            .set(in_flight as i64);
    }

    /// Applies one ack: dead-letters its failed rows, updates metrics and health, and releases the
    /// ticket from its partition's progress.
    async fn settle(&self, ack: Ack) {
        let Some(in_flight) = self.ledger.take(ack.ticket) else {
            tracing::debug!(
                ticket = ack.ticket,
                "an ack of rows settled otherwise (parked) was ignored"
            );
            return;
        };
        let endpoint = &self.endpoints[in_flight.endpoint];
        let labels = endpoint_labels(&endpoint.name);
        let total = in_flight.indices.len();
        let failed = ack.failed.len();
        if failed > 0 {
            let rows = match (ack.failed_rows, &in_flight.source) {
                (Some(rows), _) => Ok((rows, renumbered(&ack.failed))),
                (None, Some(source)) => in_flight
                    .table
                    .rows_for(in_flight.endpoint, source, &in_flight.indices)
                    .map(|rows| (rows, ack.failed.clone()))
                    .map_err(|error| error.to_string()),
                (None, None) => {
                    Err("the sink reported failed rows without their data (a sink bug)".to_owned())
                }
            };
            match rows {
                Ok((rows, failed)) => self.dead_letter(&endpoint.name, &rows, &failed).await,
                Err(error) => {
                    tracing::error!(endpoint = %endpoint.name, %error, "cannot rebuild failed rows for the dead-letter store");
                }
            }
            self.metrics
                .endpoint_failed
                .get_or_create(&labels)
                .inc_by(failed as u64);
            self.metrics
                .endpoint_dead_lettered
                .get_or_create(&labels)
                .inc_by(failed as u64);
        }
        let delivered = total - failed.min(total);
        self.metrics
            .endpoint_delivered
            .get_or_create(&labels)
            .inc_by(delivered as u64);
        if delivered > 0 {
            self.observe_commit_latency(&labels, &in_flight, &ack.failed);
        }
        {
            let mut health = lock(&endpoint.health);
            let now = Instant::now();
            match ack.failed.first() {
                Some(first) if delivered == 0 => health.record_failure(now, &first.error),
                _ => health.record_success(now),
            }
        }
        self.ledger.release(&in_flight);
        self.update_uncommitted(in_flight.partition);
    }

    fn observe_commit_latency(
        &self,
        labels: &metrics::Labels,
        in_flight: &InFlight,
        failed: &[FailedRow],
    ) {
        let histogram = self.metrics.endpoint_commit_latency.get_or_create(labels);
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut failed_rows: Vec<usize> = failed.iter().map(|f| f.row).collect();
        failed_rows.sort_unstable();
        for (row, &index) in in_flight.indices.iter().enumerate() {
            if failed_rows.binary_search(&row).is_ok() {
                continue;
            }
            let enqueued = in_flight.enqueued.value(index as usize);
            histogram.observe((now_ms - enqueued).max(0) as f64 / 1000.0);
        }
    }

    /// Writes dead letters, retrying until the store takes them: the checkpoint must not move past
    /// rows that are neither committed nor dead-lettered.
    async fn dead_letter(&self, endpoint: &str, rows: &RecordBatch, failed: &[FailedRow]) {
        let records = match DeadLetter::from_failed_rows(endpoint, None, rows, failed) {
            Ok(records) => records,
            Err(error) => {
                tracing::error!(%endpoint, %error, "cannot describe failed rows as dead letters");
                return;
            }
        };
        self.store_dead_letters(endpoint, &records).await;
    }

    /// Writes dead letters, retrying until the store takes them.
    async fn store_dead_letters(&self, endpoint: &str, records: &[DeadLetter]) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.dead_letters.write(records).await {
                Ok(_) => return,
                Err(error) => {
                    tracing::error!(%endpoint, %error, retry_in = ?backoff, "writing dead letters failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(DEAD_LETTER_MAX_BACKOFF);
                }
            }
        }
    }

    /// Writes the progress of every partition that moved, for the partitions this instance still
    /// owns: the endpoint positions first, then the checkpoint, so a crash between the two leaves
    /// positions ahead of the checkpoint (true, and safe to skip by), never behind it.
    async fn write_checkpoints(&self) {
        for (index, partition) in self.partitions.iter().enumerate() {
            if !partition.active.load(Ordering::SeqCst) {
                continue;
            }
            let Some(progress) = self.ledger.take_checkpoint(index) else {
                continue;
            };
            if !self.ownership.may_checkpoint(&partition.id).await {
                self.ledger.restore_checkpoint(index);
                continue;
            }
            let key = self.source.checkpoint_key(&partition.id);
            let positions: EndpointPositions = self
                .endpoints
                .iter()
                .zip(&progress.endpoints)
                .filter_map(|(e, p)| p.map(|p| (e.name.clone(), p)))
                .collect();
            let endpoints_saved = if positions.is_empty() {
                Ok(())
            } else {
                self.checkpoints.save_endpoints(&key, &positions).await
            };
            let saved = match endpoints_saved {
                Ok(()) => match &progress.partition {
                    None => Ok(()),
                    Some(position) => {
                        let checkpoint = Checkpoint {
                            key,
                            offset: position.offset.clone(),
                            sequence_number: position.sequence_number,
                        };
                        self.checkpoints.save(&checkpoint).await
                    }
                },
                Err(error) => Err(error),
            };
            match saved {
                Ok(()) => {
                    if let Some(position) = &progress.partition {
                        self.metrics
                            .partition_checkpoint_sequence_number
                            .get_or_create(&partition_labels(&partition.id))
                            .set(position.sequence_number);
                        tracing::debug!(partition = %partition.id, sequence_number = position.sequence_number, "checkpoint written");
                    }
                }
                Err(error) => {
                    tracing::warn!(partition = %partition.id, %error, "writing a checkpoint failed; retrying at the next interval");
                    self.ledger.restore_checkpoint(index);
                }
            }
        }
    }

    /// Refreshes queue depths, health, the reconnect count and the source's buffered bytes, and marks endpoints whose oldest
    /// batch is stalled.
    fn refresh_endpoints(self: &Arc<Self>) {
        self.metrics
            .source_reconnects
            .set(i64::try_from(self.source.reconnects()).unwrap_or(i64::MAX));
        self.metrics
            .source_buffered_bytes
            .set(i64::try_from(self.source.buffered_bytes()).unwrap_or(i64::MAX));
        let now = Instant::now();
        let oldest = self.ledger.oldest_by_endpoint();
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            let labels = endpoint_labels(&endpoint.name);
            let depth = endpoint
                .queue
                .upgrade()
                .map_or(0, |q| q.max_capacity() - q.capacity());
            self.metrics
                .endpoint_queue_depth
                .get_or_create(&labels)
                .set(depth as i64);
            let mut health = lock(&endpoint.health);
            if let Some(since) = oldest.get(&index)
                && since.elapsed() >= self.stall_after
            {
                health.record_failure(
                    now,
                    &format!(
                        "a batch has waited {:?} for a commit; the sink is retrying (see its log)",
                        since.elapsed()
                    ),
                );
            }
            let current = health.status(now);
            drop(health);
            let parked = endpoint.parking.is_parked();
            if current == HealthStatus::Dead && !parked {
                let shared = Arc::clone(self);
                tokio::spawn(async move { shared.park(index, parking::DEAD).await });
            }
            let mut state_labels = labels.clone();
            state_labels.push(("state", if parked { "parked" } else { "live" }.to_owned()));
            self.metrics
                .endpoint_state_seconds
                .get_or_create(&state_labels)
                .inc_by(HOUSEKEEPING_INTERVAL.as_secs_f64());
            for status in [
                HealthStatus::Unknown,
                HealthStatus::Healthy,
                HealthStatus::Degraded,
                HealthStatus::Unhealthy,
                HealthStatus::Dead,
            ] {
                let mut labels = labels.clone();
                labels.push(("status", status.as_str().to_owned()));
                self.metrics
                    .endpoint_health
                    .get_or_create(&labels)
                    .set(i64::from(status == current));
            }
        }
    }

    /// The positions each endpoint (by index) had settled in `partition` before this period, as
    /// stored beside its checkpoint. Unreadable positions only cost duplicates: they are logged
    /// and every endpoint resumes from the checkpoint.
    async fn endpoint_floors(&self, partition: &str) -> Vec<Option<i64>> {
        let key = self.source.checkpoint_key(partition);
        let stored = match self.checkpoints.load_endpoints(&key).await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(%partition, %error, "cannot read the endpoint positions; every endpoint resumes from the checkpoint");
                EndpointPositions::new()
            }
        };
        self.endpoints
            .iter()
            .map(|e| stored.get(&e.name).copied())
            .collect()
    }

    /// Reads each partition's retained range from the service and sets the lag in events: the
    /// last enqueued sequence number minus the last committed one (every retained event before
    /// the first commit).
    async fn refresh_lag(self: Arc<Self>) {
        let ranges = match self.source.retained_sequence_numbers().await {
            Ok(ranges) => ranges,
            Err(error) => {
                tracing::debug!(%error, "reading partition lag failed; retrying at the next interval");
                return;
            }
        };
        for (id, range) in ranges {
            let Some(index) = self.partitions.iter().position(|p| p.id == id) else {
                continue;
            };
            let committed = self.ledger.committed(index);
            let lag = match (range, committed) {
                (None, _) => 0,
                (Some((_, last)), Some(committed)) => (last - committed).max(0),
                (Some((begin, last)), None) => last - begin + 1,
            };
            self.metrics
                .partition_lag_events
                .get_or_create(&partition_labels(&id))
                .set(lag);
        }
    }

    fn reload(&self) -> Result<()> {
        let loaded = LoadedConfig::load(&self.config_path)?;
        let table = RoutingTable::compile(&loaded)?;
        let file = self.config_path.display().to_string();
        {
            let running = self.config.read().unwrap_or_else(PoisonError::into_inner);
            let (old, new) = (&running.config, &loaded.config);
            let unchanged = [
                (old.source == new.source, "the source"),
                (old.endpoints == new.endpoints, "the endpoints"),
                (old.checkpoint == new.checkpoint, "the checkpoint settings"),
                (
                    old.dead_letters == new.dead_letters,
                    "the dead-letter store",
                ),
                (old.service == new.service, "the service settings"),
                (old.twins == new.twins, "the twins settings"),
                (old.hub_name == new.hub_name, "hub_name"),
            ];
            if let Some((_, what)) = unchanged.iter().find(|(same, _)| !same) {
                return Err(Error::ReloadNeedsRestart { file, what });
            }
        }
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = loaded;
        tracing::info!(%file, "configuration reloaded: new routes apply from the next batch");
        Ok(())
    }
}

/// `failed` numbered by position (row `i` of the rows a sink handed back is `failed[i]`).
fn renumbered(failed: &[FailedRow]) -> Vec<FailedRow> {
    failed
        .iter()
        .enumerate()
        .map(|(row, failure)| FailedRow {
            row,
            error: failure.error.clone(),
        })
        .collect()
}

/// Drains the acks of one endpoint until its sink is gone.
async fn collect_acks(shared: Arc<Shared>, mut acks: mpsc::Receiver<Ack>) {
    while let Some(ack) = acks.recv().await {
        shared.settle(ack).await;
    }
}

/// Writes checkpoints every `interval`, refreshes endpoint health every second and partition lag
/// every `lag_interval`, until `done`.
async fn housekeeping(
    shared: Arc<Shared>,
    interval: Duration,
    lag_interval: Duration,
    done: CancellationToken,
) {
    let mut checkpoints = tokio::time::interval(interval);
    let mut refresh = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    let mut lag = tokio::time::interval(lag_interval);
    let mut lag_poll: Option<JoinHandle<()>> = None;
    loop {
        tokio::select! {
            () = done.cancelled() => break,
            _ = checkpoints.tick() => shared.write_checkpoints().await,
            _ = refresh.tick() => shared.refresh_endpoints(),
            _ = lag.tick() => {
                // One poll at a time: a slow service must not pile up connections.
                if lag_poll.as_ref().is_none_or(JoinHandle::is_finished) {
                    lag_poll = Some(tokio::spawn(Arc::clone(&shared).refresh_lag()));
                }
            }
        }
    }
    if let Some(poll) = lag_poll {
        poll.abort();
    }
}

#[cfg(test)]
mod tests {
    use hubroute_message::{Message, MessageBatchBuilder};

    use super::*;

    fn batch(sequence_numbers: std::ops::Range<i64>) -> RecordBatch {
        let messages: Vec<Message> = sequence_numbers
            .map(|sequence_number| {
                let mut message = Message::telemetry("{}");
                message.sequence_number = sequence_number;
                message
            })
            .collect();
        MessageBatchBuilder::batch_of(&messages).expect("a batch")
    }

    #[test]
    fn after_a_restart_each_endpoint_skips_the_rows_at_or_below_its_own_position() {
        let mut floors = Floors::new(vec![Some(12), None, Some(15)]);
        let source = batch(10..20);
        let skip = floors.for_batch(10).expect("floors ahead of the batch");
        floors.passed(19);
        let mut rows = vec![(0..10).collect(), (0..10).collect(), vec![1, 5, 6, 9]];
        skip_settled(&mut rows, &skip, &source).expect("message schema");
        assert_eq!(rows[0], (3..10).collect::<Vec<u32>>(), "13 and later");
        assert_eq!(rows[1].len(), 10, "no position: every row");
        assert_eq!(rows[2], [6, 9], "16 and later");
        assert!(
            floors.for_batch(20).is_none(),
            "once passed, floors cost nothing"
        );
        assert!(Floors::new(vec![None, None]).for_batch(0).is_none());
    }
}
