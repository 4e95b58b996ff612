//! The running engine: [`RunningEngine::start`] wires a source, the routing table and the sinks
//! together and runs them as a few kinds of tasks, each in its own module with documented state.
//!
//! ```text
//!  BatchSource ──(bounded, 2)──► router ──(bounded, queue_capacity)──► endpoint sink
//!  (receiver task per   │  route + rows_for on             (drive_sink)        │
//!   owned partition)    │  the blocking pool                                   │ acks
//!                       │  parked endpoint ──► dead-letter store ◄── replay    ▼
//!                       ▼                      (parked rows)        task   ack collector
//!                    Ledger ◄──────────────────────────────────────────────── (dead-letters
//!                       │  tickets, in-flight entries, per-endpoint progress     failed rows)
//!                       ▼ every [checkpoint] interval and at shutdown (housekeeping)
//!                CheckpointStore: partition checkpoint + endpoint positions
//! ```
//!
//! Who owns what:
//!
//! * `batch_source.rs`: [`BatchSource`], the seam to the source. The pipeline knows partitions,
//!   checkpoint keys and a channel of [`SourceBatch`](crate::source::SourceBatch)es per partition,
//!   never AMQP; tests feed it from memory.
//! * `partitions.rs`: the supervisor, which starts a receiver and a router per owned partition and
//!   stops them as ownership changes.
//! * `router.rs`: the per-partition router (routing, skipping what endpoints settled before a
//!   restart, parking, queueing).
//! * `acks.rs`: the per-endpoint ack collector (dead letters, health, settling tickets).
//! * `ledger.rs`: the [`Ledger`], the one owner of tickets, in-flight entries and progress, so
//!   *when a checkpoint moves* is that file.
//! * `housekeeping.rs`: the one writer of checkpoints and endpoint positions; health refresh and
//!   lag polling.
//! * `parking.rs`: parking a dead endpoint and replaying its rows once it recovers.
//! * `reload.rs` (and `watch.rs`): [`Routes`] and the [`Reloader`] that swaps the routing table.
//! * `http.rs`, `status_page.rs`, `metrics.rs`: what an operator sees.
//!
//! [`Shared`] is the state those tasks have in common: endpoints, partitions, the ledger, metrics,
//! the dead-letter store and the routes. Each task's own state is in its own struct.
//!
//! Every queue is bounded, so a slow sink fills its queue, blocks the router of each partition that
//! routes to it, which stops taking batches from its channel, which stops the receiver granting
//! AMQP credit, until the endpoint recovers or is parked. A source batch becomes one ticket per
//! endpoint that receives rows of it; the partition's checkpoint moves past the batch only when
//! every ticket of it (and of every earlier batch) is settled — committed, dead-lettered or parked.
//! The routing table is read by routers once per batch, so a reload swaps it between batches, never
//! within one.

mod acks;
mod batch_source;
mod housekeeping;
mod http;
mod ledger;
mod metrics;
mod parking;
mod partitions;
mod reload;
mod router;
mod status_page;
#[cfg(test)]
mod tests;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hubroute_sinks::{
    Ack, AckSender, DeadLetterStore, Sink, SinkBatch, SinkConfig, Surrender, build_sink, drive_sink,
};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::checkpoint::{self, CheckpointStore, SelectedStore};
use crate::config::{FullPolicy, LoadedConfig};
use crate::health::{EndpointHealth, HealthPolicy, HealthStatus};
use crate::ownership::PartitionOwnership;
use crate::routing::RoutingTable;
use crate::source::{EventHubSource, SourceConfig};
use crate::twins::Twins;
use crate::{Error, Result};
use acks::{collect_acks, renumbered};
pub(crate) use batch_source::BatchSource;
use housekeeping::Housekeeping;
use ledger::Ledger;
pub use metrics::Metrics;
use metrics::partition_labels;
use parking::Parking;
pub use reload::Reloader;
use reload::Routes;

/// Source batches a router may hold per partition beyond the one it is routing.
const SOURCE_QUEUE: usize = 2;
/// Acks a sink may send before the collector drains them.
const ACK_QUEUE: usize = 256;
/// Cap of the backoff between attempts to write dead letters.
const DEAD_LETTER_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Builds an endpoint's sink from its configuration: [`build_sink`] in production; the pipeline's
/// tests swap in sinks they control. Called once per endpoint at start and once per replay of
/// parked rows, never per batch.
pub(crate) type SinkFactory =
    Arc<dyn Fn(SinkConfig, AckSender) -> hubroute_sinks::Result<Box<dyn Sink>> + Send + Sync>;

/// Asks whether a parked endpoint is up again: [`hubroute_sinks::probe`] in production; the
/// pipeline's tests ask the destinations they control.
pub(crate) type SinkProbe = Arc<
    dyn Fn(SinkConfig) -> std::pin::Pin<Box<dyn Future<Output = hubroute_sinks::Result<()>> + Send>>
        + Send
        + Sync,
>;

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
    /// The live sink's flag for handing back the rows it holds, raised while the endpoint is
    /// parked; `None` for sinks whose rows the engine keeps a copy of.
    surrender: Option<Surrender>,
}

/// One partition as the running engine sees it (its progress is in the [`Ledger`]).
#[derive(Debug)]
struct PartitionState {
    id: String,
    /// Read by this instance in the current ownership period: only then is its checkpoint written
    /// (`partitions::supervise` owns it).
    active: AtomicBool,
}

/// What every task of the engine and its HTTP server share. Task-specific state lives in the
/// task's own struct (`Router`, `Housekeeping`); the checkpoint store, for one, is not here: only
/// housekeeping writes it and only the supervisor reads endpoint positions from it.
pub(crate) struct Shared {
    /// The IoT hub's name, for `/routes`.
    hub_name: String,
    /// Partitions, checkpoint keys and source metrics (receivers are started by the supervisor).
    source: Arc<dyn BatchSource>,
    /// The configuration and routing table; a reload swaps them.
    routes: Routes,
    /// By endpoint index, in configuration order (the routing table's order).
    endpoints: Vec<EndpointState>,
    /// By partition index, in the source's order (the ledger's order).
    partitions: Vec<PartitionState>,
    /// Tickets, in-flight entries and progress: where checkpoints come from.
    ledger: Ledger,
    /// Every counter and gauge `/metrics` serves; updated by every task.
    metrics: Metrics,
    /// Permanently failed rows, malformed events and parked rows.
    dead_letters: DeadLetterStore,
    /// Builds a fresh sink for each replay of parked rows.
    build_sink: SinkFactory,
    /// Probes a parked endpoint before its rows are replayed.
    probe_sink: SinkProbe,
    /// Which partitions this instance reads; checkpoints are written only for owned ones.
    ownership: PartitionOwnership,
    /// Device twins attached to every batch before routing (a no-op without `[twins]`).
    twins: Twins,
    /// How long a batch may wait for its commit before its endpoint counts as failing.
    stall_after: Duration,
    /// The first fatal error, which stops the engine.
    fatal: Mutex<Option<Error>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("hub_name", &self.hub_name)
            .field("source", &self.source)
            .field("endpoints", &self.endpoints)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Now, on tokio's clock (the same as `std`'s unless a test paused it), so that endpoint health,
/// stalls and parking follow a paused clock in tests.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
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
        Self::start_with(
            loaded,
            Arc::new(build_sink),
            Arc::new(|config| Box::pin(async move { hubroute_sinks::probe(&config).await })),
            |config, checkpoints| async move {
                let source = EventHubSource::connect(config, checkpoints).await?;
                Ok(Arc::new(source) as Arc<dyn BatchSource>)
            },
        )
        .await
    }

    /// [`Self::start`] with the sinks built by `sinks`, parked endpoints probed by `probe`, and the
    /// source opened by `connect` (given
    /// the source settings and the checkpoint store the source resumes from), after the sinks are
    /// built and before the first partition starts.
    pub(crate) async fn start_with<F, C>(
        loaded: LoadedConfig,
        sinks: SinkFactory,
        probe: SinkProbe,
        connect: C,
    ) -> Result<Self>
    where
        C: FnOnce(SourceConfig, Arc<dyn CheckpointStore>) -> F,
        F: Future<Output = Result<Arc<dyn BatchSource>>>,
    {
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
        let mut sink_parts = Vec::new();
        let mut endpoints = Vec::new();
        let health_policy = HealthPolicy {
            dead_after: config.service.dead_after,
            ..HealthPolicy::default()
        };
        for endpoint in &config.endpoints {
            let (acks, ack_receiver) = mpsc::channel(ACK_QUEUE);
            let sink = sinks(endpoint.sink.clone(), acks).map_err(|source| Error::Sink {
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
                surrender: sink.surrender(),
            });
            queues.push(queue);
            sink_parts.push((sink, batches, ack_receiver));
        }

        let source = connect(config.source.clone(), Arc::clone(&checkpoints)).await?;
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
            hub_name: config.hub_name.clone(),
            source,
            routes: Routes::new(loaded.clone(), table),
            endpoints,
            partitions,
            ledger,
            metrics,
            dead_letters,
            build_sink: sinks,
            probe_sink: probe,
            ownership,
            twins,
            stall_after: config.service.stall_after,
            fatal: Mutex::new(None),
        });
        let shutdown = CancellationToken::new();
        let housekeeping = Arc::new(Housekeeping {
            shared: Arc::clone(&shared),
            checkpoints,
            checkpoint_interval: config.checkpoint.interval,
            lag_interval: config.service.lag_interval,
        });
        tokio::spawn(http::serve(listener, Arc::clone(&shared), shutdown.clone()));
        let task = tokio::spawn(run(
            housekeeping,
            queues,
            sink_parts,
            shutdown.clone(),
            config.service.drain_timeout,
        ));
        tracing::info!(
            event_hub = %shared.source.event_hub(),
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
        let now = now();
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

fn sink_kind(config: &SinkConfig) -> &'static str {
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
    Box<dyn Sink>,
    mpsc::Receiver<SinkBatch>,
    mpsc::Receiver<Ack>,
);

/// The engine's main task: starts every other task, waits for them and writes the last
/// checkpoints.
async fn run(
    housekeeping: Arc<Housekeeping>,
    queues: Vec<mpsc::Sender<SinkBatch>>,
    sinks: Vec<SinkParts>,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) -> Result<RunSummary> {
    let shared = Arc::clone(&housekeeping.shared);
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
    let running = shared.routes.config();
    for (index, endpoint) in running.config.endpoints.iter().enumerate() {
        replays.spawn(parking::replay_task(
            Arc::clone(&shared),
            index,
            endpoint.sink.clone(),
            replaying_done.clone(),
        ));
    }
    let supervisor = tokio::spawn(partitions::supervise(
        Arc::clone(&shared),
        Arc::clone(&housekeeping.checkpoints),
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
    let housekeeping_task = tokio::spawn(Arc::clone(&housekeeping).run(housekeeping_done.clone()));

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
    let _ = housekeeping_task.await;
    housekeeping.write_checkpoints().await;
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

    fn update_uncommitted(&self, partition: usize) {
        let state = &self.partitions[partition];
        let in_flight = self.ledger.unsettled_batches(partition);
        self.metrics
            .partition_uncommitted_batches
            .get_or_create(&partition_labels(&state.id))
            .set(in_flight as i64);
    }
}
