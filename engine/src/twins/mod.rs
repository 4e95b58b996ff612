//! Device and module twins for `$twin` conditions and enrichments: loaded from IoT Hub's service
//! API, kept current from the stream, persisted beside the checkpoints, and attached to every batch
//! before it is routed.
//!
//! ```text
//!  start ─► snapshot fresh? ──yes──► restore ─────────────┐
//!              │ no (absent, stale, corrupt: logged)       │
//!              ▼                                           ▼
//!       POST /devices/query (devices, then modules)   ready: routers attach twins and route
//!       paged by x-ms-continuation; retried with            │ twinChangeEvents / deviceLifecycleEvents
//!       backoff (429: Retry-After) while routers wait      │ rows patch the store in stream order
//!                                                          ▼
//!  every `refresh`: full query again, merged by version (a twin an event created, changed or
//!  deleted while it ran keeps the event's state); every `snapshot_interval`: snapshot
//! ```
//!
//! `Twins` is the pipeline's handle. Its contract: `Twins::wait_ready` resolves once twins are
//! loaded (or at once when `start_without_twins` is set and the service is unreachable, or when no
//! `[twins]` section exists), and fails only for errors retrying cannot fix (refused credentials);
//! `Twins::attach` is CPU work for the blocking pool, called once per batch in each partition's
//! order, and never performs I/O. Everything that talks to the service runs on one background task.
//!
//! A snapshot older than `refresh` is stale and falls back to a full query. A snapshot whose
//! position is behind where a partition resumes (a crash after checkpoints moved past the last
//! snapshot) may have missed twin events: the first batch of that partition reveals the gap, and a
//! full query starts at once; until it completes, routing uses the snapshot, which is younger than
//! IoT Hub's own five-minute bound on twin lag in routing.

mod client;
mod metrics;
mod snapshot;
mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arrow::array::{Array, RecordBatch};
use hubroute_message::MessageColumns;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) use metrics::TwinMetrics;
pub use store::TwinStore;

use self::client::{RequestFailure, ServiceClient};
use self::store::{Twin, TwinId};
use crate::config::{EngineConfig, TwinsConfig};
use crate::source::SourceConnectionString;
use crate::{Error, Result};

/// First backoff after a failed request; doubled up to `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How often the snapshot's position sidecar is brought up to date.
const POSITIONS_INTERVAL: Duration = Duration::from_secs(5);
/// Twins read one by one per second at most (patches for unknown twins, unknown devices).
const FETCHES_PER_TICK: usize = 50;
/// Twins waiting to be read one by one at most; beyond it the next full query brings them.
const MAX_MISSING: usize = 10_000;

/// Where the twin store is in its start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Readiness {
    /// Loading; routers wait.
    Loading,
    /// Loaded.
    Loaded,
    /// The service is unreachable and `start_without_twins` is set: routing goes on without twins.
    WithoutTwins,
    /// Loading failed for good (e.g. refused credentials).
    Failed(String),
}

/// The twin store of a running engine (a no-op without a `[twins]` section). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Twins {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    config: TwinsConfig,
    client: ServiceClient,
    state: Mutex<TwinStore>,
    metrics: TwinMetrics,
    readiness: watch::Sender<Readiness>,
    snapshot_path: Option<PathBuf>,
    /// Unix ms of the last completed full query.
    queried_at_ms: AtomicI64,
    /// The change counter the last written snapshot reflects.
    snapshot_changes: AtomicU64,
    /// The last written snapshot's generation and the positions last recorded for it.
    snapshot_written: Mutex<Option<(String, BTreeMap<String, i64>)>>,
    /// Positions of a restored snapshot, until each partition's first batch has been checked.
    restored_positions: Mutex<BTreeMap<String, i64>>,
    /// Partitions whose first batch of this run has been seen.
    seen_partitions: Mutex<HashSet<String>>,
    /// Twins to read one by one, with when they were last asked for.
    missing: Mutex<HashMap<TwinId, Option<Instant>>>,
    /// Wakes the background task for an immediate full query.
    resync_now: Notify,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Twins {
    /// Starts loading twins in the background (nothing without `[twins]`, but a warning for every
    /// route and enrichment that reads `$twin`). The snapshot lives under the checkpoint
    /// directory, named after the hub and the source's event hub and consumer group.
    pub(crate) fn start(engine: &EngineConfig, metrics: TwinMetrics) -> Result<Self> {
        let Some(config) = engine.twins.as_ref() else {
            for reader in engine.twin_readers() {
                tracing::warn!(%reader, "reads $twin, but there is no [twins] section: $twin is undefined for every message");
            }
            return Ok(Self::default());
        };
        let source = &engine.source;
        let checkpoint_dir = engine.checkpoint.dir.as_path();
        let client = ServiceClient::new(config, metrics.clone())?;
        // What keys the snapshot: the event hub, or for an IoT hub's own connection string (whose
        // event hub is known only after the redirect) the hub's host name.
        let event_hub = source
            .event_hub
            .clone()
            .or_else(|| match &source.connection_string {
                SourceConnectionString::EventHubs(events) => events.entity_path.clone(),
                SourceConnectionString::IotHub(hub) => Some(hub.host_name.clone()),
            })
            .unwrap_or_default();
        let snapshot_path = config.snapshot.then(|| {
            snapshot::path(
                checkpoint_dir,
                &config.service_connection_string.host_name,
                &event_hub,
                &source.consumer_group,
            )
        });
        let (readiness, _) = watch::channel(Readiness::Loading);
        let inner = Arc::new(Inner {
            config: config.clone(),
            client,
            state: Mutex::new(TwinStore::reading_updates_as(config.update_events)),
            metrics,
            readiness,
            snapshot_path,
            queried_at_ms: AtomicI64::new(0),
            snapshot_changes: AtomicU64::new(0),
            snapshot_written: Mutex::default(),
            restored_positions: Mutex::default(),
            seen_partitions: Mutex::default(),
            missing: Mutex::default(),
            resync_now: Notify::new(),
            stop: CancellationToken::new(),
            task: Mutex::default(),
        });
        inner.metrics.set_loaded(false);
        let task = tokio::spawn(Arc::clone(&inner).maintain());
        *lock(&inner.task) = Some(task);
        Ok(Self { inner: Some(inner) })
    }

    /// Resolves when routing may start: twins are loaded, or routing may go on without them.
    /// Fails when loading failed for good.
    pub(crate) async fn wait_ready(&self) -> Result<()> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let mut readiness = inner.readiness.subscribe();
        let ready = readiness
            .wait_for(|r| *r != Readiness::Loading)
            .await
            .map(|r| r.clone());
        match ready {
            Ok(Readiness::Failed(problem)) => Err(Error::TwinService {
                host: inner.client.host().to_owned(),
                problem,
            }),
            Ok(_) => Ok(()),
            Err(_) => Err(Error::TwinService {
                host: inner.client.host().to_owned(),
                problem: "the twin store stopped".to_owned(),
            }),
        }
    }

    /// Attaches the twin of each row's device (or module, by `connectionModuleId`) to `batch`,
    /// applying the batch's twin change and lifecycle events in order. CPU only: run it on the
    /// blocking pool. Without `[twins]` the batch is returned as it is.
    pub(crate) fn attach(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let Some(inner) = &self.inner else {
            return Ok(batch);
        };
        if batch.num_rows() == 0 {
            return Ok(batch);
        }
        inner.check_resume_gap(&batch)?;
        let mut state = lock(&inner.state);
        let (batch, applied, missing) = state.attach(&batch)?;
        inner.metrics.set_held(state.len(), state.estimated_bytes());
        let unknown_devices = unknown_devices(&batch, &state);
        drop(state);
        inner
            .metrics
            .patches(applied.applied, applied.stale, applied.unknown);
        if !missing.is_empty() || !unknown_devices.is_empty() {
            let mut queue = lock(&inner.missing);
            for id in missing.into_iter().chain(unknown_devices) {
                if queue.len() >= MAX_MISSING {
                    break;
                }
                queue.entry(id).or_insert(None);
            }
        }
        Ok(batch)
    }

    /// Stops the background task and writes a last snapshot.
    pub(crate) async fn shutdown(&self) {
        let Some(inner) = &self.inner else {
            return;
        };
        inner.stop.cancel();
        let task = lock(&inner.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        if *inner.readiness.borrow() == Readiness::Loaded {
            inner.write_snapshot(true).await;
        }
    }
}

/// Devices (and modules) of telemetry rows that have no twin: created after the last full query
/// and not announced by a lifecycle event in this stream. They are read one by one.
fn unknown_devices(batch: &RecordBatch, state: &TwinStore) -> Vec<TwinId> {
    let Ok(columns) = MessageColumns::try_new(batch) else {
        return Vec::new();
    };
    let devices = columns.connection_device_id;
    let modules = columns.connection_module_id;
    let mut unknown: Vec<TwinId> = Vec::new();
    for row in 0..batch.num_rows() {
        if columns.twin.is_valid(row) || devices.is_null(row) {
            continue;
        }
        let device = devices.value(row);
        let module = modules.is_valid(row).then(|| modules.value(row));
        if state.get(device, module).is_none()
            && !unknown
                .iter()
                .any(|id| id.device == device && id.module.as_deref() == module)
        {
            unknown.push(TwinId {
                device: device.to_owned(),
                module: module.map(str::to_owned),
            });
        }
    }
    unknown
}

impl Inner {
    fn set_readiness(&self, readiness: Readiness) {
        self.metrics
            .set_loaded(matches!(readiness, Readiness::Loaded));
        self.readiness.send_replace(readiness);
    }

    /// On the first batch of a partition after a snapshot was restored: a gap between the
    /// snapshot's position and where the partition resumed means missed events; query again.
    fn check_resume_gap(&self, batch: &RecordBatch) -> Result<()> {
        let columns = MessageColumns::try_new(batch)?;
        let partition = columns.partition.value(0);
        if !lock(&self.seen_partitions).insert(partition.to_owned()) {
            return Ok(());
        }
        let Some(position) = lock(&self.restored_positions).remove(partition) else {
            return Ok(());
        };
        let first = columns.sequence_number.value(0);
        if first > position + 1 {
            tracing::warn!(
                partition,
                snapshot_position = position,
                resumed_at = first,
                "the twin snapshot is behind where this partition resumes (events in between \
                 were checkpointed before the snapshot was written): querying every twin again"
            );
            self.resync_now.notify_one();
        }
        Ok(())
    }

    /// The background task: initial load, then periodic full queries, single twin reads and
    /// snapshots until stopped.
    async fn maintain(self: Arc<Self>) {
        let mut next_resync = tokio::time::Instant::now();
        if let Some(queried_at_ms) = self.restore_snapshot().await {
            let age = Duration::from_millis(
                u64::try_from(chrono::Utc::now().timestamp_millis() - queried_at_ms).unwrap_or(0),
            );
            next_resync += self.config.refresh.saturating_sub(age);
        } else if self.initial_load().await {
            next_resync = tokio::time::Instant::now() + self.config.refresh;
        } else {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_snapshot = Instant::now();
        let mut last_positions = Instant::now();
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep_until(next_resync) => {
                    self.resync().await;
                    next_resync = tokio::time::Instant::now() + self.config.refresh;
                }
                () = self.resync_now.notified() => {
                    self.resync().await;
                    next_resync = tokio::time::Instant::now() + self.config.refresh;
                }
                _ = tick.tick() => {
                    self.fetch_missing().await;
                    if last_snapshot.elapsed() >= self.config.snapshot_interval {
                        self.write_snapshot(true).await;
                        last_snapshot = Instant::now();
                        last_positions = last_snapshot;
                    } else if last_positions.elapsed() >= POSITIONS_INTERVAL {
                        self.write_snapshot(false).await;
                        last_positions = Instant::now();
                    }
                }
            }
        }
    }

    /// Restores a fresh snapshot; `Some(queried_at_ms)` when it did.
    async fn restore_snapshot(&self) -> Option<i64> {
        let path = self.snapshot_path.clone()?;
        let hub = self.client.host().to_owned();
        let read_path = path.clone();
        let read = tokio::task::spawn_blocking(move || snapshot::read(&read_path, &hub))
            .await
            .unwrap_or_else(|join| Err(format!("reading it panicked: {join}")));
        let snapshot = match read {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => {
                tracing::info!(path = %path.display(), "no twin snapshot yet: querying every twin");
                return None;
            }
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "the twin snapshot is corrupt or unusable: querying every twin");
                return None;
            }
        };
        let age_ms = chrono::Utc::now().timestamp_millis() - snapshot.queried_at_ms;
        let refresh_ms = i64::try_from(self.config.refresh.as_millis()).unwrap_or(i64::MAX);
        if age_ms > refresh_ms {
            tracing::warn!(
                path = %path.display(),
                age = ?Duration::from_millis(u64::try_from(age_ms).unwrap_or(0)),
                refresh = ?self.config.refresh,
                "the twin snapshot is stale (its last full query is older than twins.refresh): \
                 querying every twin"
            );
            return None;
        }
        let count = snapshot.twins.len();
        {
            let mut state = lock(&self.state);
            state.restore(snapshot.twins, snapshot.positions.clone());
            self.metrics.set_held(state.len(), state.estimated_bytes());
            self.snapshot_changes
                .store(state.changes(), Ordering::Relaxed);
        }
        *lock(&self.snapshot_written) = Some((snapshot.generation, snapshot.positions.clone()));
        *lock(&self.restored_positions) = snapshot.positions;
        self.queried_at_ms
            .store(snapshot.queried_at_ms, Ordering::Relaxed);
        self.metrics.restored(snapshot.queried_at_ms);
        tracing::info!(path = %path.display(), twins = count, "twins restored from the snapshot; no full query needed");
        self.set_readiness(Readiness::Loaded);
        Some(snapshot.queried_at_ms)
    }

    /// Queries every twin until it succeeds; `false` when stopped or failed for good.
    async fn initial_load(&self) -> bool {
        let mut backoff = FIRST_BACKOFF;
        loop {
            lock(&self.state).begin_resync();
            let started = Instant::now();
            match self.client.all_twins(self.config.modules).await {
                Ok(twins) => {
                    self.merge(twins, started);
                    self.set_readiness(Readiness::Loaded);
                    tracing::info!(twins = self.metrics.held(), elapsed = ?started.elapsed(), "every twin loaded; routing starts");
                    return true;
                }
                Err(failure) if failure.retryable => {
                    self.metrics.resync_failed();
                    let wait = self.wait_after(&failure, backoff);
                    if self.config.start_without_twins
                        && *self.readiness.borrow() == Readiness::Loading
                    {
                        tracing::warn!(problem = %failure.problem, "the IoT Hub service API is unreachable and start_without_twins is set: routing WITHOUT twins ($twin paths are undefined) until they load");
                        self.set_readiness(Readiness::WithoutTwins);
                    } else {
                        tracing::warn!(problem = %failure.problem, retry_in = ?wait, "loading twins failed; routing waits for them");
                    }
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    tokio::select! {
                        () = self.stop.cancelled() => return false,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                Err(failure) => {
                    self.metrics.resync_failed();
                    let error = failure.into_error(self.client.host());
                    tracing::error!(%error, "loading twins failed and retrying cannot help");
                    self.set_readiness(Readiness::Failed(error.to_string()));
                    return false;
                }
            }
        }
    }

    /// How long to wait after `failure`: the service's `Retry-After` if it sent one, else `backoff`.
    fn wait_after(&self, failure: &RequestFailure, backoff: Duration) -> Duration {
        failure
            .retry_after
            .unwrap_or(backoff)
            .min(self.config.max_backoff.max(backoff))
    }

    /// One periodic full query; on failure the held twins stay and the query is tried again
    /// after backoff (within this call, so that `refresh` counts from a success).
    async fn resync(&self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            lock(&self.state).begin_resync();
            let started = Instant::now();
            match self.client.all_twins(self.config.modules).await {
                Ok(twins) => {
                    self.merge(twins, started);
                    tracing::debug!(twins = self.metrics.held(), elapsed = ?started.elapsed(), "twins queried again");
                    if *self.readiness.borrow() != Readiness::Loaded {
                        tracing::info!("every twin loaded; routing now sees twins");
                        self.set_readiness(Readiness::Loaded);
                    }
                    return;
                }
                Err(failure) => {
                    self.metrics.resync_failed();
                    let wait = self.wait_after(&failure, backoff);
                    tracing::warn!(problem = %failure.problem, retry_in = ?wait, "querying twins again failed; routing keeps the twins it has");
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    fn merge(&self, twins: Vec<(TwinId, Twin)>, started: Instant) {
        let mut state = lock(&self.state);
        state.finish_resync(twins);
        self.metrics.set_held(state.len(), state.estimated_bytes());
        drop(state);
        let now = chrono::Utc::now();
        let started_ms =
            now.timestamp_millis() - i64::try_from(started.elapsed().as_millis()).unwrap_or(0);
        self.queried_at_ms.store(started_ms, Ordering::Relaxed);
        self.metrics.resync_done(started_ms);
        lock(&self.missing).clear();
    }

    /// Reads, one by one, twins the stream showed to exist but the store lacks. Each is asked for
    /// at most once per `refresh`; the next full query settles the rest.
    async fn fetch_missing(&self) {
        if *self.readiness.borrow() != Readiness::Loaded {
            return;
        }
        let due: Vec<TwinId> = {
            let mut missing = lock(&self.missing);
            let now = Instant::now();
            missing.retain(|_, asked| {
                asked.is_none_or(|at| now.duration_since(at) < self.config.refresh)
            });
            let due: Vec<TwinId> = missing
                .iter()
                .filter(|(_, asked)| asked.is_none())
                .take(FETCHES_PER_TICK)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &due {
                missing.insert(id.clone(), Some(now));
            }
            due
        };
        for id in due {
            match self.client.twin(&id).await {
                Ok(Some(twin)) => {
                    let mut state = lock(&self.state);
                    let newer_held = state
                        .get(&id.device, id.module.as_deref())
                        .is_some_and(|held| held.version >= twin.version);
                    if !newer_held {
                        state.insert(&id, twin);
                        self.metrics.set_held(state.len(), state.estimated_bytes());
                    }
                }
                Ok(None) => {
                    tracing::debug!(twin = %id, "a twin seen in the stream does not exist (any more)");
                }
                Err(failure) => {
                    tracing::debug!(twin = %id, problem = %failure.problem, "reading one twin failed; the next full query will bring it");
                    return;
                }
            }
        }
    }

    /// Brings the snapshot up to date: rewrites it when twins changed since it was written (only
    /// if `twins_too`), else records the current positions in its sidecar.
    async fn write_snapshot(&self, twins_too: bool) {
        let Some(path) = self.snapshot_path.clone() else {
            return;
        };
        let written = lock(&self.snapshot_written).clone();
        let work = {
            let state = lock(&self.state);
            let unchanged = state.changes() == self.snapshot_changes.load(Ordering::Relaxed);
            match written {
                Some((generation, positions)) if unchanged => {
                    if positions == *state.positions() {
                        return;
                    }
                    let bytes = snapshot::encode_positions(&generation, state.positions());
                    (
                        snapshot::sidecar_path(&path),
                        bytes,
                        generation,
                        state.positions().clone(),
                        state.changes(),
                    )
                }
                _ if !twins_too => return,
                _ => {
                    let generation = uuid::Uuid::new_v4().simple().to_string();
                    let queried = self.queried_at_ms.load(Ordering::Relaxed);
                    let bytes = snapshot::encode(self.client.host(), &generation, queried, &state);
                    (
                        path.clone(),
                        bytes,
                        generation,
                        state.positions().clone(),
                        state.changes(),
                    )
                }
            }
        };
        let (target, bytes, generation, positions, changes) = work;
        let file = target.clone();
        let outcome = tokio::task::spawn_blocking(move || snapshot::write(&file, &bytes)).await;
        match outcome {
            Ok(Ok(())) => {
                self.snapshot_changes.store(changes, Ordering::Relaxed);
                *lock(&self.snapshot_written) = Some((generation, positions));
                tracing::debug!(path = %target.display(), "twin snapshot brought up to date");
            }
            Ok(Err(error)) => {
                tracing::warn!(path = %target.display(), %error, "writing the twin snapshot failed; retrying at the next interval");
            }
            Err(join) => tracing::warn!(%join, "writing the twin snapshot panicked"),
        }
    }
}

#[cfg(test)]
mod tests;
