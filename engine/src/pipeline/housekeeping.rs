//! Housekeeping: the one task that writes checkpoints and endpoint positions, refreshes endpoint
//! health (and parks an endpoint that is dead), and polls the source for partition lag.
//!
//! Checkpoints are written only here (every `[checkpoint] interval`, and once more at shutdown),
//! from what the [`Ledger`](super::ledger::Ledger) says has settled, and only for partitions this
//! instance still owns. Health is refreshed every second and on every `/metrics` scrape; a stall
//! (a batch waiting longer than `stall_after` for its commit) counts as a failure, so an endpoint
//! whose sink retries silently still goes unhealthy, then dead after `dead_after`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::metrics::{endpoint_labels, partition_labels};
use super::{Shared, lock, now, parking};
use crate::checkpoint::{Checkpoint, CheckpointStore, EndpointPositions};
use crate::health::HealthStatus;

/// How often health, queue depths and stalls are refreshed.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// The housekeeping task's state.
#[derive(Debug)]
pub(super) struct Housekeeping {
    pub(super) shared: Arc<Shared>,
    /// Written only by this task: endpoint positions first, then the partition checkpoint.
    pub(super) checkpoints: Arc<dyn CheckpointStore>,
    /// `[checkpoint] interval`: how often settled progress is written.
    pub(super) checkpoint_interval: Duration,
    /// `[service] lag_interval`: how often the source is asked for the partitions' retained ranges.
    pub(super) lag_interval: Duration,
}

impl Housekeeping {
    /// Writes checkpoints every `checkpoint_interval`, refreshes endpoint health every second and
    /// partition lag every `lag_interval`, until `done`.
    pub(super) async fn run(self: Arc<Self>, done: CancellationToken) {
        let mut checkpoints = tokio::time::interval(self.checkpoint_interval);
        let mut refresh = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        let mut lag = tokio::time::interval(self.lag_interval);
        let mut lag_poll: Option<JoinHandle<()>> = None;
        loop {
            tokio::select! {
                () = done.cancelled() => break,
                _ = checkpoints.tick() => self.write_checkpoints().await,
                _ = refresh.tick() => self.shared.refresh_endpoints(),
                _ = lag.tick() => {
                    // One poll at a time: a slow service must not pile up connections.
                    if lag_poll.as_ref().is_none_or(JoinHandle::is_finished) {
                        lag_poll = Some(tokio::spawn(Arc::clone(&self.shared).refresh_lag()));
                    }
                }
            }
        }
        if let Some(poll) = lag_poll {
            poll.abort();
        }
    }

    /// Writes the progress of every partition that moved, for the partitions this instance still
    /// owns: the endpoint positions first, then the checkpoint, so a crash between the two leaves
    /// positions ahead of the checkpoint (true, and safe to skip by), never behind it.
    pub(super) async fn write_checkpoints(&self) {
        let shared = &self.shared;
        for (index, partition) in shared.partitions.iter().enumerate() {
            if !partition.active.load(Ordering::SeqCst) {
                continue;
            }
            let Some(progress) = shared.ledger.take_checkpoint(index) else {
                continue;
            };
            if !shared.ownership.may_checkpoint(&partition.id).await {
                shared.ledger.restore_checkpoint(index);
                continue;
            }
            let key = shared.source.checkpoint_key(&partition.id);
            let positions: EndpointPositions = shared
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
                        shared
                            .metrics
                            .partition_checkpoint_sequence_number
                            .get_or_create(&partition_labels(&partition.id))
                            .set(position.sequence_number);
                        tracing::debug!(partition = %partition.id, sequence_number = position.sequence_number, "checkpoint written");
                    }
                }
                Err(error) => {
                    tracing::warn!(partition = %partition.id, %error, "writing a checkpoint failed; retrying at the next interval");
                    shared.ledger.restore_checkpoint(index);
                }
            }
        }
    }
}

impl Shared {
    /// Refreshes queue depths, health, the reconnect count and the source's buffered bytes, marks
    /// endpoints whose oldest batch is stalled, and parks those that are dead. Also run on every
    /// `/metrics` scrape, so what a scrape reads is current.
    pub(super) fn refresh_endpoints(self: &Arc<Self>) {
        self.metrics
            .source_reconnects
            .set(i64::try_from(self.source.reconnects()).unwrap_or(i64::MAX));
        self.metrics
            .source_buffered_bytes
            .set(i64::try_from(self.source.buffered_bytes()).unwrap_or(i64::MAX));
        let now = now();
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
}
