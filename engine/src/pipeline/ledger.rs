//! The ledger: the one owner of tickets, in-flight entries and progress, so "when does a checkpoint
//! move" lives in this file.
//!
//! A routed source batch opens one entry in its partition's [`PartitionProgress`] and one ticket
//! per endpoint that receives rows of it. A ticket is *settled* when its sink acked it (committed,
//! or permanently failed rows written to the dead-letter store) or when its rows were parked in the
//! dead-letter store; only then does the ledger release it from its partition's progress. The
//! partition's checkpoint is the end of the longest prefix of batches with no ticket left, and every
//! endpoint's own position the end of the longest prefix with no ticket of that endpoint left; both
//! are written together by the housekeeping task. A parked endpoint's rows are settled as soon as
//! they are stored, so a dead endpoint never holds back the others' checkpoint.
//!
//! One `std::sync::Mutex` per partition and one for the in-flight map, each held for a map or
//! deque operation per ticket, never across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::TimestampMillisecondArray;
use arrow::record_batch::RecordBatch;
use hubroute_sinks::Ticket;
use tokio::time::Instant;

use super::lock;
use crate::progress::{BatchId, PartitionProgress, Position, Progress};
use crate::routing::RoutingTable;

/// A ticket between routing and its settlement: where its rows came from, for the checkpoint,
/// commit latency, dead letters and parking.
#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) partition: usize,
    pub(super) batch: BatchId,
    pub(super) endpoint: usize,
    /// The source row of each of the ticket's rows, in order.
    pub(super) indices: Vec<u32>,
    /// The source batch's enqueued times (its buffer is shared, the rows are not): commit latency.
    pub(super) enqueued: TimestampMillisecondArray,
    /// The source batch (shared by every ticket of the batch, not copied), to rebuild the rows of
    /// a failure for the dead-letter store, or to park them. `None` for sinks that hand failed rows
    /// back in the ack, which is what keeps a file sink's open files from pinning every source
    /// batch in memory (such tickets are not parked: they settle when the file does).
    pub(super) source: Option<RecordBatch>,
    pub(super) table: Arc<RoutingTable>,
    /// Tokio's clock, so stall detection is testable on a paused clock.
    pub(super) routed_at: Instant,
}

/// Tickets, in-flight entries and per-partition progress of the running engine.
#[derive(Debug)]
pub(super) struct Ledger {
    next_ticket: AtomicU64,
    in_flight: Mutex<HashMap<Ticket, InFlight>>,
    /// By partition index.
    partitions: Vec<Mutex<PartitionProgress>>,
    endpoints: usize,
}

impl Ledger {
    pub(super) fn new(partitions: usize, endpoints: usize) -> Self {
        Self {
            next_ticket: AtomicU64::new(0),
            in_flight: Mutex::new(HashMap::new()),
            partitions: (0..partitions)
                .map(|_| Mutex::new(PartitionProgress::default()))
                .collect(),
            endpoints,
        }
    }

    /// Starts a new period of `partition` whose endpoints had settled up to `floors` (by endpoint
    /// index). Refused (false) while rows of its previous period are unsettled: a partition won
    /// back restarts only once nothing from the old period can move its checkpoint.
    pub(super) fn restart(&self, partition: usize, floors: Vec<Option<i64>>) -> bool {
        let mut progress = lock(&self.partitions[partition]);
        if progress.in_flight() > 0 {
            return false;
        }
        *progress = PartitionProgress::resuming(floors);
        true
    }

    /// Whether rows of `partition` are unsettled.
    pub(super) fn is_settled(&self, partition: usize) -> bool {
        lock(&self.partitions[partition]).in_flight() == 0
    }

    /// Opens a routed batch of `partition` ending at `last`, with a ticket for each of `endpoints`.
    pub(super) fn open(&self, partition: usize, last: Position, endpoints: Vec<usize>) -> BatchId {
        lock(&self.partitions[partition]).push(last, endpoints)
    }

    /// Issues the ticket of one endpoint's rows of an opened batch.
    pub(super) fn issue(&self, entry: InFlight) -> Ticket {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        lock(&self.in_flight).insert(ticket, entry);
        ticket
    }

    /// Takes `ticket`'s entry to settle it (`None` for an unknown or already settled ticket: an
    /// ack of rows that were parked meanwhile). The caller stores its failed rows, then calls
    /// [`Self::release`].
    pub(super) fn take(&self, ticket: Ticket) -> Option<InFlight> {
        lock(&self.in_flight).remove(&ticket)
    }

    /// Takes every entry of `endpoint` that can be rebuilt for parking (those that keep their
    /// source batch), in partition order, to park them.
    pub(super) fn take_parkable(&self, endpoint: usize) -> Vec<(Ticket, InFlight)> {
        let mut taken: Vec<(Ticket, InFlight)> = {
            let mut in_flight = lock(&self.in_flight);
            let tickets: Vec<Ticket> = in_flight
                .iter()
                .filter(|(_, e)| e.endpoint == endpoint && e.source.is_some())
                .map(|(t, _)| *t)
                .collect();
            tickets
                .into_iter()
                .filter_map(|t| in_flight.remove(&t).map(|e| (t, e)))
                .collect()
        };
        taken.sort_by_key(|(_, e)| (e.partition, e.batch));
        taken
    }

    /// Releases a settled entry from its partition's progress.
    pub(super) fn release(&self, entry: &InFlight) {
        if !lock(&self.partitions[entry.partition]).ack(entry.batch, entry.endpoint) {
            tracing::warn!(
                partition = entry.partition,
                endpoint = entry.endpoint,
                "a ticket was settled twice (a bug); ignored"
            );
        }
    }

    /// Batches of `partition` with unsettled tickets.
    pub(super) fn unsettled_batches(&self, partition: usize) -> usize {
        lock(&self.partitions[partition]).in_flight()
    }

    /// Tickets not yet settled, over every partition.
    pub(super) fn unsettled_tickets(&self) -> usize {
        lock(&self.in_flight).len()
    }

    /// Tickets of `endpoint` not settled yet.
    pub(super) fn unsettled_tickets_of(&self, endpoint: usize) -> usize {
        lock(&self.in_flight)
            .values()
            .filter(|entry| entry.endpoint == endpoint)
            .count()
    }

    /// The sequence number of `partition`'s committed position.
    pub(super) fn committed(&self, partition: usize) -> Option<i64> {
        lock(&self.partitions[partition])
            .committed()
            .map(|c| c.sequence_number)
    }

    /// The progress of `partition` if it moved since it was last taken.
    pub(super) fn take_checkpoint(&self, partition: usize) -> Option<Progress> {
        lock(&self.partitions[partition]).take_checkpoint(self.endpoints)
    }

    /// Offers `partition`'s progress again, after saving it failed.
    pub(super) fn restore_checkpoint(&self, partition: usize) {
        lock(&self.partitions[partition]).restore_checkpoint();
    }

    /// When each endpoint's oldest unsettled ticket was routed.
    pub(super) fn oldest_by_endpoint(&self) -> HashMap<usize, Instant> {
        let mut oldest: HashMap<usize, Instant> = HashMap::new();
        for entry in lock(&self.in_flight).values() {
            oldest
                .entry(entry.endpoint)
                .and_modify(|t| *t = (*t).min(entry.routed_at))
                .or_insert(entry.routed_at);
        }
        oldest
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use hubroute_message::{Message, MessageBatchBuilder};

    use super::*;
    use crate::config::LoadedConfig;

    const CONFIG: &str = r#"
[source]
connection_string = "Endpoint=sb://127.0.0.1:5673/;SharedAccessKeyName=R;SharedAccessKey=c2VjcmV0;EntityPath=hub"
[[endpoints]]
sink = { type = "webhook", name = "hook", url = "http://127.0.0.1:1/a" }
[[endpoints]]
sink = { type = "webhook", name = "other", url = "http://127.0.0.1:1/b" }
[[routes]]
name = "all"
condition = "true"
endpoint = "hook"
"#;

    const HOOK: usize = 0;
    const OTHER: usize = 1;

    fn table() -> Arc<RoutingTable> {
        let loaded = LoadedConfig::parse(Path::new("t.toml"), CONFIG).expect("valid config");
        Arc::new(RoutingTable::compile(&loaded).expect("compiles"))
    }

    /// A source batch of partition rows `first..first + rows`.
    fn source(first: i64, rows: i64) -> RecordBatch {
        let messages: Vec<Message> = (first..first + rows)
            .map(|sequence_number| {
                let mut message = Message::telemetry("{}");
                message.sequence_number = sequence_number;
                message
            })
            .collect();
        MessageBatchBuilder::batch_of(&messages).expect("a batch")
    }

    /// Opens the batch `first..first + rows` of `partition` with a ticket for each of `endpoints`.
    fn route(
        ledger: &Ledger,
        table: &Arc<RoutingTable>,
        partition: usize,
        first: i64,
        rows: i64,
        endpoints: &[usize],
    ) -> Vec<Ticket> {
        let batch = source(first, rows);
        let last = Position {
            sequence_number: first + rows - 1,
            offset: (first + rows - 1).to_string(),
        };
        let id = ledger.open(partition, last, endpoints.to_vec());
        let enqueued = hubroute_message::MessageColumns::try_new(&batch)
            .expect("message schema")
            .enqueued_time
            .clone();
        endpoints
            .iter()
            .map(|&endpoint| {
                ledger.issue(InFlight {
                    partition,
                    batch: id,
                    endpoint,
                    indices: (0..u32::try_from(rows).expect("small")).collect(),
                    enqueued: enqueued.clone(),
                    source: Some(batch.clone()),
                    table: Arc::clone(table),
                    routed_at: Instant::now(),
                })
            })
            .collect()
    }

    fn settle(ledger: &Ledger, ticket: Ticket) {
        let entry = ledger.take(ticket).expect("an unsettled ticket");
        ledger.release(&entry);
    }

    #[tokio::test(start_paused = true)]
    async fn each_endpoint_keeps_its_own_position_and_the_checkpoint_is_their_minimum() {
        let (ledger, table) = (Ledger::new(1, 2), table());
        let first = route(&ledger, &table, 0, 0, 10, &[HOOK, OTHER]);
        let second = route(&ledger, &table, 0, 10, 10, &[HOOK, OTHER]);
        tokio::time::advance(Duration::from_secs(30)).await;
        let third = route(&ledger, &table, 0, 20, 10, &[OTHER]);
        // The other endpoint commits everything; the hook nothing yet.
        for ticket in [first[1], second[1], third[0]] {
            settle(&ledger, ticket);
        }
        let progress = ledger.take_checkpoint(0).expect("moved");
        assert_eq!(
            progress.partition, None,
            "the hook holds back the partition"
        );
        assert_eq!(progress.endpoints, [None, Some(29)]);
        // Stall detection sees the hook's oldest ticket, routed 30 s ago on the paused clock.
        let oldest = ledger.oldest_by_endpoint();
        assert_eq!(oldest[&HOOK].elapsed(), Duration::from_secs(30));
        assert!(!oldest.contains_key(&OTHER));
        settle(&ledger, first[0]);
        let progress = ledger.take_checkpoint(0).expect("moved");
        assert_eq!(progress.partition.map(|p| p.sequence_number), Some(9));
        assert_eq!(progress.endpoints, [Some(9), Some(29)]);
        assert_eq!(ledger.take_checkpoint(0), None, "nothing moved since");
        assert!(ledger.take(first[0]).is_none(), "settled once");
        settle(&ledger, second[0]);
        assert_eq!(ledger.committed(0), Some(29));
        assert!(ledger.is_settled(0));
    }

    #[tokio::test(start_paused = true)]
    async fn parking_settles_a_dead_endpoints_tickets_so_the_checkpoint_moves_on() {
        let (ledger, table) = (Ledger::new(2, 2), table());
        let a = route(&ledger, &table, 0, 0, 5, &[HOOK, OTHER]);
        let b = route(&ledger, &table, 1, 0, 5, &[HOOK]);
        let c = route(&ledger, &table, 0, 5, 5, &[HOOK, OTHER]);
        settle(&ledger, a[1]);
        settle(&ledger, c[1]);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(ledger.committed(0), None, "the dead hook pins partition 0");
        // Parking takes the hook's tickets in partition order; the caller stores their rows,
        // then releases them.
        let parked = ledger.take_parkable(HOOK);
        let order: Vec<Ticket> = parked.iter().map(|(t, _)| *t).collect();
        assert_eq!(order, [a[0], c[0], b[0]]);
        for (_, entry) in &parked {
            assert_eq!(entry.source.as_ref().map(RecordBatch::num_rows), Some(5));
            ledger.release(entry);
        }
        assert_eq!(ledger.committed(0), Some(9));
        assert_eq!(ledger.committed(1), Some(4));
        assert!(ledger.take_parkable(HOOK).is_empty());
        assert!(
            ledger.take(a[0]).is_none(),
            "a late ack of parked rows finds nothing to settle"
        );
        assert_eq!(ledger.unsettled_tickets(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_partition_keeps_the_positions_its_endpoints_had_settled() {
        let (ledger, table) = (Ledger::new(1, 2), table());
        let before = route(&ledger, &table, 0, 0, 10, &[HOOK]);
        assert!(
            !ledger.restart(0, vec![None, None]),
            "not while rows of the previous period are unsettled"
        );
        settle(&ledger, before[0]);
        // After a restart from checkpoint 9, the other endpoint had settled up to 40 already.
        assert!(ledger.restart(0, vec![Some(9), Some(40)]));
        assert_eq!(ledger.committed(0), None, "a new period");
        let again = route(&ledger, &table, 0, 10, 10, &[HOOK]);
        settle(&ledger, again[0]);
        let progress = ledger.take_checkpoint(0).expect("moved");
        assert_eq!(progress.partition.map(|p| p.sequence_number), Some(19));
        assert_eq!(
            progress.endpoints,
            [Some(19), Some(40)],
            "a floor ahead of the partition is kept, not forgotten"
        );
    }
}
