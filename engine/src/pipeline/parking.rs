//! Parking a dead endpoint and replaying its rows once it recovers.
//!
//! An endpoint that has failed continuously for `dead_after` (or, with `full_policy =
//! "dead_letter"`, whose queue is full) is *parked*: its unsettled tickets
//! that keep their source rows, and every row routed to it from then on, are written in partition
//! order to the dead-letter store as parked records ([`DeadLetterStore::write_parked`]) and settled
//! in the [`Ledger`](super::ledger::Ledger) at once, so the partition's checkpoint moves on for the
//! other endpoints. A replay task per endpoint then probes the endpoint ([`hubroute_sinks::probe`]:
//! one cheap request that stores nothing, such as a `HEAD` to a webhook or a table lookup in
//! PostgreSQL), again and again with a capped backoff while it is down. Once a probe passes, the
//! task replays every parked object in order, in groups of up to 8 192 rows, each group through a
//! fresh instance of the endpoint's own sink whose input closes after the group (so a file sink
//! uploads at once instead of after its file age). Each object is one ticket of its group, moved
//! aside as soon as its ack arrives; the endpoint goes back to live delivery when none is left.
//! A probe is a hint, not a promise: when the sink fails, or no ack arrives for `stall_after` plus
//! the sink's own buffering time ([`SinkConfig::max_hold`]), the replay sink is dropped and the
//! task probes again (objects not acked stay parked, so they may reach the endpoint twice: at least
//! once, as everywhere). A slow endpoint that acks steadily is never given up on, and whatever was
//! acked before a give-up is not replayed again. The endpoint's gate is held while rows are parked and while the
//! replay task decides it has caught up, so no row is parked after the replay task's last look.
//!
//! Parked objects are stored per partition, and an instance replays only those of the partitions it
//! owns: with several instances sharing a hub, each replays its own partitions' rows. They survive a
//! restart and a change of owner: before a partition starts, an endpoint with parked objects of it
//! is parked, so the partition's new rows queue up behind the old ones.
//!
//! Tickets of sinks that hand failed rows back ([`hubroute_sinks::Sink::reports_failed_rows`], the
//! file sinks) keep no copy of their rows, so the engine cannot park them itself. Parking raises
//! such a sink's [`Surrender`](hubroute_sinks::Surrender) flag instead: the sink closes its open
//! files and, rather than retrying their uploads, hands every row back in acks marked
//! `surrendered`, which are parked like any other rows (and re-park the endpoint if it went live
//! meanwhile). Replay waits (up to `stall_after`) until the live sink holds no ticket, so the
//! handed-back rows are parked before it lists what to replay. The flag is lowered when the
//! endpoint is live again. A ticket still waiting for room in the endpoint's full queue is parked
//! by its router, from the rows it holds.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use hubroute_message::MessageColumns;
use hubroute_sinks::{Ack, DeadLetter, ParkedObject, SinkBatch, SinkConfig, Ticket, drive_sink};
use object_store::path::Path;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::ledger::InFlight;
use super::metrics::endpoint_labels;
use super::{ACK_QUEUE, DEAD_LETTER_MAX_BACKOFF, Shared, lock, renumbered};
use crate::{Error, Result};

/// Why a dead endpoint's rows were parked.
pub(super) const DEAD: &str = "dead (failing for longer than `dead_after`)";
/// Why an endpoint is parked when a partition starts.
const EARLIER_RUN: &str = "rows parked by an earlier run or owner are still to replay";
/// Why an endpoint that had gone live again is parked once more.
const HANDED_BACK: &str = "its sink handed back rows it held while the endpoint was parked";
/// How often replay looks whether the live sink still holds tickets of the endpoint.
const HAND_BACK_POLL: Duration = Duration::from_millis(50);
/// Rows replayed through one sink instance: a group is closed once it holds this many.
const REPLAY_GROUP_ROWS: usize = 8192;
/// How often a replay task looks whether its endpoint is parked.
const REPLAY_POLL: Duration = Duration::from_secs(1);
/// The wait after the first failed probe (or failed replay) of a parked endpoint; it doubles with
/// every further failure, up to [`PROBE_MAX_BACKOFF`].
const PROBE_FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two probes of an endpoint that stays down: it bounds how long a
/// recovered endpoint waits for its parked rows.
const PROBE_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Whether an endpoint is live or parked, and the gate between parking rows and catching up.
#[derive(Debug)]
pub(super) struct Parking {
    /// Read by routers once per batch and endpoint: a plain load on the hot path.
    parked: AtomicBool,
    /// The same, for routers waiting on a full queue: parking wakes them (their tickets are
    /// parked, so they stop waiting).
    changed: watch::Sender<bool>,
    /// Held while parked rows are written and while the replay task checks that none is left.
    gate: tokio::sync::Mutex<()>,
    /// Why the endpoint was parked, for the parked records.
    why: Mutex<&'static str>,
}

impl Default for Parking {
    fn default() -> Self {
        Self {
            parked: AtomicBool::new(false),
            changed: watch::Sender::new(false),
            gate: tokio::sync::Mutex::default(),
            why: Mutex::new(DEAD),
        }
    }
}

impl Parking {
    pub(super) fn is_parked(&self) -> bool {
        self.parked.load(Ordering::Acquire)
    }

    fn set(&self, parked: bool) {
        self.parked.store(parked, Ordering::Release);
        self.changed.send_replace(parked);
    }

    /// Completes once the endpoint is parked.
    pub(super) async fn parked(&self) {
        let mut changed = self.changed.subscribe();
        let _ = changed.wait_for(|parked| *parked).await;
    }
}

impl Shared {
    /// Parks endpoint `endpoint` if it is live, because it is dead or (`why`) its queue is full:
    /// from now on its rows go to the dead-letter store, and its unsettled tickets that can be
    /// rebuilt are parked and settled now.
    pub(super) async fn park(&self, endpoint: usize, why: &'static str) {
        let _gate = self.endpoints[endpoint].parking.gate.lock().await;
        self.park_locked(endpoint, why).await;
    }

    /// [`Self::park`], with the endpoint's gate held by the caller.
    async fn park_locked(&self, endpoint: usize, why: &'static str) {
        let state = &self.endpoints[endpoint];
        if state.parking.is_parked() {
            return;
        }
        *lock(&state.parking.why) = why;
        state.parking.set(true);
        if let Some(surrender) = &state.surrender {
            surrender.surrender();
        }
        let reason = self.park_reason(endpoint);
        tracing::warn!(endpoint = %state.name, %reason, "parking the endpoint's rows in the dead-letter store until it catches up");
        for (_, entry) in self.ledger.take_parkable(endpoint) {
            self.park_entry(&entry, &reason).await;
        }
    }

    /// Parks `rows`, handed back by the surrendered sink of `entry`'s endpoint (the caller releases
    /// the entry). An endpoint that went live meanwhile is parked again, so that replay finds them.
    pub(super) async fn park_handed_back(&self, entry: &InFlight, rows: &RecordBatch) {
        let endpoint = entry.endpoint;
        let _gate = self.endpoints[endpoint].parking.gate.lock().await;
        self.park_locked(endpoint, HANDED_BACK).await;
        let reason = self.park_reason(endpoint);
        let partition = &self.partitions[entry.partition].id;
        self.store_parked(endpoint, partition, rows, &reason).await;
    }

    /// Parks the rows of an unsettled ticket's `entry` (taken from the ledger) and settles it.
    async fn park_entry(&self, entry: &InFlight, reason: &str) {
        if let Some(source) = &entry.source {
            match entry.table.rows_for(entry.endpoint, source, &entry.indices) {
                Ok(rows) => {
                    let partition = &self.partitions[entry.partition].id;
                    self.store_parked(entry.endpoint, partition, &rows, reason)
                        .await;
                }
                Err(error) => {
                    let endpoint = &self.endpoints[entry.endpoint].name;
                    tracing::error!(%endpoint, %error, "cannot rebuild rows to park them");
                }
            }
        }
        self.ledger.release(entry);
        self.update_uncommitted(entry.partition);
    }

    /// Parks `rows`, the rows of `ticket` that did not fit the endpoint's queue (full, or the
    /// router was waiting for room when the endpoint was parked), if the ledger still holds the
    /// ticket (parking the endpoint may have parked it already).
    pub(super) async fn park_rows_of(&self, endpoint: usize, ticket: Ticket, rows: &RecordBatch) {
        let _gate = self.endpoints[endpoint].parking.gate.lock().await;
        if let Some(entry) = self.ledger.take(ticket) {
            let reason = self.park_reason(endpoint);
            let partition = &self.partitions[entry.partition].id;
            self.store_parked(endpoint, partition, rows, &reason).await;
            self.ledger.release(&entry);
            self.update_uncommitted(entry.partition);
        }
    }

    /// Parks `rows` of a routed batch if `endpoint` is parked; false when it is live (the caller
    /// queues them).
    pub(super) async fn park_if_parked(
        &self,
        endpoint: usize,
        partition: &str,
        rows: &RecordBatch,
    ) -> bool {
        let parking = &self.endpoints[endpoint].parking;
        if !parking.is_parked() {
            return false;
        }
        let _gate = parking.gate.lock().await;
        if !parking.is_parked() {
            return false;
        }
        let reason = self.park_reason(endpoint);
        self.store_parked(endpoint, partition, rows, &reason).await;
        true
    }

    fn park_reason(&self, endpoint: usize) -> String {
        let state = &self.endpoints[endpoint];
        let why = *lock(&state.parking.why);
        let health = lock(&state.health);
        format!(
            "parked: endpoint `{}`: {why} (last error: {})",
            state.name,
            health.last_error().unwrap_or("none")
        )
    }

    /// Writes parked records of `rows`, retrying until the store takes them: the rows are settled
    /// (and the checkpoint may pass them) only once they are stored.
    async fn store_parked(
        &self,
        endpoint: usize,
        partition: &str,
        rows: &RecordBatch,
        reason: &str,
    ) {
        let name = &self.endpoints[endpoint].name;
        let records = match DeadLetter::parked_rows(name, rows, reason) {
            Ok(records) => records,
            Err(error) => {
                tracing::error!(endpoint = %name, %partition, %error, "cannot describe rows to park");
                return;
            }
        };
        let mut backoff = Duration::from_millis(100);
        while let Err(error) = self.dead_letters.write_parked(&records).await {
            tracing::error!(endpoint = %name, %error, retry_in = ?backoff, "parking rows failed");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(DEAD_LETTER_MAX_BACKOFF);
        }
        let labels = endpoint_labels(name);
        self.metrics
            .endpoint_parked_rows
            .get_or_create(&labels)
            .inc_by(rows.num_rows() as u64);
        let bytes = MessageColumns::try_new(rows).map_or(0, |columns| {
            let offsets = columns.body.value_offsets();
            offsets[offsets.len() - 1] - offsets[0]
        });
        self.metrics
            .endpoint_parked_bytes
            .get_or_create(&labels)
            .inc_by(bytes as u64);
    }

    /// Probes `endpoint` once: true when it can take writes. Counted by outcome; a failed probe
    /// is recorded in the endpoint's health, so the status page shows why it is still parked.
    async fn probe(&self, endpoint: usize, config: &SinkConfig) -> bool {
        let state = &self.endpoints[endpoint];
        let outcome = (self.probe_sink)(config.clone()).await;
        let mut labels = endpoint_labels(&state.name);
        labels.push((
            "outcome",
            if outcome.is_ok() { "up" } else { "down" }.to_owned(),
        ));
        self.metrics.endpoint_probes.get_or_create(&labels).inc();
        match outcome {
            Ok(()) => {
                tracing::info!(endpoint = %state.name, "the parked endpoint answers its probe: replaying its parked rows");
                true
            }
            Err(error) => {
                tracing::warn!(endpoint = %state.name, %error, "the parked endpoint is still down");
                lock(&state.health).record_failure(Instant::now(), &error.to_string());
                false
            }
        }
    }

    /// Replays the parked objects of `endpoint` in order, in groups of up to [`REPLAY_GROUP_ROWS`]
    /// rows, until none is left; then the endpoint is live again. Each group goes through a fresh
    /// instance of the endpoint's sink whose input is closed after the group, so the sink delivers
    /// it at once (a file sink uploads its file) rather than after its linger or file age: parked
    /// objects hold the rows of one routed batch each, often a handful, and waiting a file age
    /// (300 s by default) per object would never catch up.
    async fn replay(
        &self,
        endpoint: usize,
        config: &SinkConfig,
        stop: &CancellationToken,
    ) -> Result<()> {
        let state = &self.endpoints[endpoint];
        let sink_error = |source| Error::Sink {
            endpoint: state.name.clone(),
            source: Box::new(source),
        };
        let labels = endpoint_labels(&state.name);
        self.wait_for_hand_back(endpoint, stop).await;
        loop {
            let objects = self.owned_parked(endpoint).await.map_err(sink_error)?;
            self.metrics
                .endpoint_parked_objects
                .get_or_create(&labels)
                .set(objects.len() as i64);
            if objects.is_empty() {
                let _gate = state.parking.gate.lock().await;
                if self
                    .owned_parked(endpoint)
                    .await
                    .map_err(sink_error)?
                    .is_empty()
                {
                    if let Some(surrender) = &state.surrender {
                        surrender.resume();
                    }
                    state.parking.set(false);
                    lock(&state.health).record_success(Instant::now());
                    tracing::info!(endpoint = %state.name, "every parked row is replayed: the endpoint is live again");
                    return Ok(());
                }
                continue;
            }
            let mut objects = objects.into_iter().peekable();
            while objects.peek().is_some() {
                let mut group = Vec::new();
                let mut rows = 0;
                while rows < REPLAY_GROUP_ROWS
                    && let Some(ParkedObject { path, .. }) = objects.next()
                {
                    // Gone: replayed by the instance that owned its partition a moment ago.
                    let read = self.dead_letters.read_if_present(&path).await;
                    let Some(records) = read.map_err(sink_error)? else {
                        continue;
                    };
                    let batch = DeadLetter::to_batch(&records).map_err(sink_error)?;
                    if batch.num_rows() == 0 {
                        self.move_aside_replayed(&path).await.map_err(sink_error)?;
                        continue;
                    }
                    rows += batch.num_rows();
                    group.push((path, batch));
                }
                if !group.is_empty() && !self.replay_group(endpoint, config, &group, stop).await? {
                    return Ok(());
                }
            }
        }
    }

    /// Delivers `group` (parked objects and their rows) through a fresh sink of `endpoint` whose
    /// input closes right after it, one ticket per object, moving each object aside once its ack
    /// arrives. Returns once every object is acked (`true`), or the engine is stopping (`false`).
    /// No ack for `stall_after` plus the sink's linger or file age is an error.
    async fn replay_group(
        &self,
        endpoint: usize,
        config: &SinkConfig,
        group: &[(Path, RecordBatch)],
        stop: &CancellationToken,
    ) -> Result<bool> {
        let state = &self.endpoints[endpoint];
        let sink_error = |source| Error::Sink {
            endpoint: state.name.clone(),
            source: Box::new(source),
        };
        let (acks, mut ack_receiver) = mpsc::channel(ACK_QUEUE);
        let sink = (self.build_sink)(config.clone(), acks).map_err(sink_error)?;
        // Room for the whole group, so it is queued at once and the input closes behind it.
        let (queue, batches) = mpsc::channel(group.len().max(1));
        for (ticket, (_, batch)) in group.iter().enumerate() {
            let ticket = SinkBatch {
                ticket: ticket as Ticket,
                batch: batch.clone(),
            };
            queue
                .try_send(ticket)
                .expect("the queue has room for the group");
        }
        drop(queue);
        let driver = tokio::spawn(drive_sink(sink, batches));
        let mut waiting: BTreeSet<usize> = (0..group.len()).collect();
        let commit_within = self.stall_after + config.max_hold();
        while !waiting.is_empty() {
            let ack = tokio::select! {
                () = stop.cancelled() => {
                    driver.abort();
                    return Ok(false);
                }
                () = tokio::time::sleep(commit_within) => {
                    driver.abort();
                    return Err(Error::EndpointStopped {
                        endpoint: state.name.clone(),
                        problem: format!("no replayed rows were committed for {commit_within:?} (stall_after plus the sink's linger or file age); the rest stay parked"),
                    });
                }
                ack = ack_receiver.recv() => ack,
            };
            let Some(ack) = ack else {
                break;
            };
            let Some(index) = usize::try_from(ack.ticket)
                .ok()
                .filter(|index| waiting.remove(index))
            else {
                continue;
            };
            let (path, batch) = &group[index];
            self.settle_replayed(endpoint, batch, ack).await;
            self.move_aside_replayed(path).await.map_err(sink_error)?;
        }
        match driver.await {
            Ok(Ok(())) if waiting.is_empty() => Ok(true),
            Ok(Ok(())) => Err(Error::EndpointStopped {
                endpoint: state.name.clone(),
                problem: "its replay sink ended without acknowledging every replayed row"
                    .to_owned(),
            }),
            Ok(Err(error)) => Err(sink_error(error)),
            Err(join) => Err(Error::EndpointStopped {
                endpoint: state.name.clone(),
                problem: format!("its replay sink panicked: {join}"),
            }),
        }
    }

    /// Applies the ack of one replayed object: dead-letters its permanently failed rows, counts
    /// what was delivered.
    async fn settle_replayed(&self, endpoint: usize, batch: &RecordBatch, ack: Ack) {
        let state = &self.endpoints[endpoint];
        if !ack.failed.is_empty() {
            let (rows, failed) = match ack.failed_rows {
                Some(rows) => (rows, renumbered(&ack.failed)),
                None => (batch.clone(), ack.failed.clone()),
            };
            self.dead_letter(&state.name, &rows, &failed).await;
        }
        let delivered = batch.num_rows().saturating_sub(ack.failed.len());
        if delivered > 0 {
            lock(&state.health).record_success(Instant::now());
        }
        self.metrics
            .endpoint_replayed_rows
            .get_or_create(&endpoint_labels(&state.name))
            .inc_by(delivered as u64);
    }

    /// Moves a replayed object aside; one already gone was replayed by another instance.
    async fn move_aside_replayed(&self, path: &Path) -> hubroute_sinks::Result<()> {
        match self.dead_letters.move_aside(path).await {
            Err(error) if error.is_not_found() => Ok(()),
            moved => moved.map(drop),
        }
    }

    /// Waits, up to `stall_after`, until the live sink of `endpoint` holds none of its tickets: a
    /// surrendered sink hands its rows back within moments, and they are parked before replay
    /// lists the parked objects, so that they are replayed in order with the rest.
    async fn wait_for_hand_back(&self, endpoint: usize, stop: &CancellationToken) {
        let started = tokio::time::Instant::now();
        while self.ledger.unsettled_tickets_of(endpoint) > 0
            && started.elapsed() < self.stall_after
            && !stop.is_cancelled()
        {
            tokio::time::sleep(HAND_BACK_POLL).await;
        }
    }

    /// Parks every live endpoint that has parked rows of `partition` (left by an earlier run, or by
    /// the instance that owned the partition before this one), before the partition's router
    /// starts: its new rows then queue up behind the old ones, which this instance replays. An
    /// error (the store cannot be listed) means the partition must not start yet.
    pub(super) async fn park_for_partition(&self, partition: &str) -> Result<()> {
        for (endpoint, state) in self.endpoints.iter().enumerate() {
            if state.parking.is_parked() {
                continue;
            }
            let parked = self
                .dead_letters
                .parked_in(&state.name, partition)
                .await
                .map_err(|e| Error::DeadLetters(Box::new(e)))?;
            if !parked.is_empty() {
                tracing::info!(endpoint = %state.name, %partition, objects = parked.len(), "parked rows from an earlier run or owner: replaying them before live delivery");
                self.park(endpoint, EARLIER_RUN).await;
            }
        }
        Ok(())
    }

    /// The parked objects of `endpoint` in the partitions this instance owns, in partition order:
    /// those of other partitions are their owners' to replay.
    async fn owned_parked(&self, endpoint: usize) -> hubroute_sinks::Result<Vec<ParkedObject>> {
        let mut objects = self
            .dead_letters
            .parked(&self.endpoints[endpoint].name)
            .await?;
        let owned = self.ownership.watch().borrow().clone();
        objects.retain(|object| owned.contains(&object.partition));
        Ok(objects)
    }
}

/// Replays `endpoint`'s parked rows whenever it is parked, until `stop`: probes it until it is up,
/// replays, and after a failed probe or replay waits (backing off) and probes again.
pub(super) async fn replay_task(
    shared: Arc<Shared>,
    endpoint: usize,
    config: SinkConfig,
    stop: CancellationToken,
) {
    let parking = &shared.endpoints[endpoint].parking;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(REPLAY_POLL) => {}
        }
        let mut backoff = PROBE_FIRST_BACKOFF;
        while parking.is_parked() {
            let up = tokio::select! {
                () = stop.cancelled() => return,
                up = shared.probe(endpoint, &config) => up,
            };
            if up {
                match shared.replay(endpoint, &config, &stop).await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(endpoint = %shared.endpoints[endpoint].name, %error, retry_in = ?backoff, "replaying parked rows failed; probing again");
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(PROBE_MAX_BACKOFF);
        }
    }
}
