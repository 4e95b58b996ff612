//! Settling tickets: one ack collector task per endpoint drains its sink's acks, writes permanently
//! failed rows to the dead-letter store, updates the endpoint's metrics and health, and releases
//! the ticket in the [`Ledger`](super::ledger::Ledger), which is what lets a checkpoint move.
//!
//! Failed rows are stored before the ticket is released, retrying until the store takes them: the
//! checkpoint never passes a row that is neither committed nor dead-lettered. Rows a surrendered
//! sink hands back ([`Ack::surrendered`]) are parked instead (see `parking`).

use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use hubroute_sinks::{Ack, DeadLetter, FailedRow};
use tokio::sync::mpsc;

use super::ledger::InFlight;
use super::metrics::{self, endpoint_labels};
use super::{DEAD_LETTER_MAX_BACKOFF, Shared, lock, now};

/// Drains the acks of one endpoint until its sink is gone.
pub(super) async fn collect_acks(shared: Arc<Shared>, mut acks: mpsc::Receiver<Ack>) {
    while let Some(ack) = acks.recv().await {
        shared.settle(ack).await;
    }
}

/// `failed` numbered by position (row `i` of the rows a sink handed back is `failed[i]`).
pub(super) fn renumbered(failed: &[FailedRow]) -> Vec<FailedRow> {
    failed
        .iter()
        .enumerate()
        .map(|(row, failure)| FailedRow {
            row,
            error: failure.error.clone(),
        })
        .collect()
}

impl Shared {
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
        if failed > 0 && ack.surrendered {
            match ack.failed_rows {
                Some(rows) => self.park_handed_back(&in_flight, &rows).await,
                None => {
                    tracing::error!(endpoint = %endpoint.name, "the sink handed rows back without their data (a sink bug)");
                }
            }
        } else if failed > 0 {
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
        if !ack.surrendered {
            let mut health = lock(&endpoint.health);
            let now = now();
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
    pub(super) async fn dead_letter(
        &self,
        endpoint: &str,
        rows: &RecordBatch,
        failed: &[FailedRow],
    ) {
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
    pub(super) async fn store_dead_letters(&self, endpoint: &str, records: &[DeadLetter]) {
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
}
