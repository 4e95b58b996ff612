//! The router: one task per owned partition that takes source batches from the partition's bounded
//! channel, routes each on the blocking pool and hands every endpoint its rows.
//!
//! Per batch it stores malformed events as dead letters, waits for the twins, takes the routing
//! table once (so a reload applies between batches), routes, drops rows an endpoint had settled
//! before a restart, stores a parked endpoint's rows in the dead-letter store, opens the batch in
//! the [`Ledger`](super::ledger::Ledger) and sends one ticket per live endpoint into its queue.
//! A full queue blocks the router (`full_policy = "block"`), which stops it taking batches, which
//! stops the receiver granting AMQP credit; or parks the endpoint (`"dead_letter"`).

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use hubroute_message::MessageColumns;
use hubroute_sinks::{DeadLetter, MALFORMED_SINK, SinkBatch};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::ledger::InFlight;
use super::metrics::{partition_labels, route_labels};
use crate::config::FullPolicy;
use crate::progress::Position;
use crate::source::{PartitionOutcome, SourceBatch};
use crate::{Error, Result};

/// Why rows of a `full_policy = "dead_letter"` endpoint were parked.
const QUEUE_FULL: &str = "endpoint queue full (full_policy = \"dead_letter\")";

/// The router of one partition.
#[derive(Debug)]
pub(super) struct Router {
    pub(super) shared: Arc<Shared>,
    /// The partition's index in `Shared::partitions` and in the ledger.
    pub(super) partition: usize,
    /// The positions its endpoints had settled before this period (see [`Floors`]).
    pub(super) floors: Floors,
    /// One sender per endpoint queue, by endpoint index. Routers hold the last senders: when every
    /// router has ended, the sinks see their input close and flush.
    pub(super) queues: Vec<mpsc::Sender<SinkBatch>>,
    /// Cancelled (stopping the engine) when routing fails.
    pub(super) shutdown: CancellationToken,
}

impl Router {
    /// Routes the batches of `batches` until its receiver ends, then reports how the receiver
    /// ended.
    pub(super) async fn run(
        mut self,
        mut batches: mpsc::Receiver<SourceBatch>,
        receiver: JoinHandle<Result<PartitionOutcome>>,
    ) {
        let shared = Arc::clone(&self.shared);
        let id = shared.partitions[self.partition].id.clone();
        while let Some(batch) = batches.recv().await {
            if let Err(error) = self.route_batch(batch).await {
                shared.fail(&format!("router of partition {id}"), error, &self.shutdown);
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
            Ok(Err(error)) => {
                shared.fail(
                    &format!("receiver of partition {id}"),
                    error,
                    &self.shutdown,
                );
            }
            Err(join) => shared.fail(
                &format!("receiver of partition {id}"),
                Error::EndpointStopped {
                    endpoint: "receiver".to_owned(),
                    problem: format!("the receiver task panicked: {join}"),
                },
                &self.shutdown,
            ),
        }
    }

    /// Routes one source batch and hands its rows to the endpoint queues.
    async fn route_batch(&mut self, mut source: SourceBatch) -> Result<()> {
        let shared = &self.shared;
        let partition = self.partition;
        if !source.malformed.is_empty() {
            let records: Vec<DeadLetter> = source
                .malformed
                .iter()
                .map(|event| {
                    DeadLetter::malformed_event(
                        shared.source.event_hub(),
                        &source.partition,
                        event.sequence_number,
                        &event.problem,
                        &event.payload,
                    )
                })
                .collect();
            shared.store_dead_letters(MALFORMED_SINK, &records).await;
        }
        shared.twins.wait_ready().await?; // twins: routing waits until twins are loaded
        let table = shared.routes.table();
        let rows = source.batch.num_rows() as u64;
        let batch = source.batch.clone();
        let routing = Arc::clone(&table);
        let twins = shared.twins.clone();
        // Only batches of a restarted partition pay for this, until it passed every floor.
        let skip = if self.floors.is_active() {
            let first = MessageColumns::try_new(&source.batch)?
                .sequence_number
                .iter()
                .flatten()
                .next()
                .unwrap_or(source.last_sequence_number);
            let skip = self.floors.for_batch(first);
            self.floors.passed(source.last_sequence_number);
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

        let metrics = &shared.metrics;
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
            if !shared
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
        let batch_id = shared.ledger.open(
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
            let ticket = shared.ledger.issue(InFlight {
                partition,
                batch: batch_id,
                endpoint,
                indices,
                enqueued: enqueued.clone(),
                source: (!shared.endpoints[endpoint].reports_failed_rows)
                    .then(|| source.batch.clone()),
                table: Arc::clone(&table),
                routed_at: tokio::time::Instant::now(),
            });
            let state = &shared.endpoints[endpoint];
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
                // ticket's rows are parked instead, from the batch in hand (a file sink's ticket
                // keeps no copy of its rows to rebuild them from).
                FullPolicy::Block => tokio::select! {
                    room = self.queues[endpoint].reserve() => room.map_err(|_| stopped("its sink task ended"))?.send(item),
                    () = state.parking.parked() => shared.park_rows_of(endpoint, ticket, &item.batch).await,
                },
                FullPolicy::DeadLetter => match self.queues[endpoint].try_send(item) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return Err(stopped("its sink task ended"));
                    }
                    // Parked, not failed: the endpoint's queued rows are parked too, so the
                    // checkpoint moves on, and everything is replayed once the queue drains.
                    Err(mpsc::error::TrySendError::Full(item)) => {
                        shared.park(endpoint, QUEUE_FULL).await;
                        shared.park_rows_of(endpoint, ticket, &item.batch).await;
                    }
                },
            }
        }
        shared.update_uncommitted(partition);
        Ok(())
    }
}

/// The positions a restarted partition's endpoints had settled, while some is ahead of the
/// routed rows; empty (and free) once the partition has passed every one of them.
#[derive(Debug, Clone)]
pub(super) struct Floors(Option<Arc<[Option<i64>]>>);

impl Floors {
    /// Floors by endpoint index (`None`: the endpoint resumes from the checkpoint).
    pub(super) fn new(floors: Vec<Option<i64>>) -> Self {
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
