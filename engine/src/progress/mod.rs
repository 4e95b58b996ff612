//! Checkpoint advancement for one partition under at-least-once delivery.
//!
//! Every source batch is split into tickets, one per endpoint that receives some of its rows; a
//! sink acks a ticket once those rows are committed or dead-lettered. Acks arrive in any order
//! (endpoints run independently), but a checkpoint is a single position in the partition, so it
//! may only move past a batch when that batch and every batch before it have no ticket left.
//! A `VecDeque` in partition order makes that a pop from the front: O(1) per batch.

use std::collections::VecDeque;

/// Identifies a batch pushed into a [`PartitionProgress`]; increasing in partition order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(u64);

/// A position the partition's checkpoint may be written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Sequence number of the last event covered.
    pub sequence_number: i64,
    /// Its offset.
    pub offset: String,
}

#[derive(Debug)]
struct PendingBatch {
    id: BatchId,
    last: Position,
    /// Tickets not yet acked; the batch is done at zero.
    outstanding: usize,
}

/// Tracks the batches of one partition between routing and commit.
#[derive(Debug, Default)]
pub struct PartitionProgress {
    pending: VecDeque<PendingBatch>,
    next_id: u64,
    committed: Option<Position>,
    /// Whether `committed` moved since the last [`Self::take_checkpoint`].
    dirty: bool,
}

impl PartitionProgress {
    /// Starts tracking a batch ending at `last` that was handed to `tickets` endpoints (0 when
    /// no endpoint wants any of its rows: it is done at once).
    pub fn push(&mut self, last: Position, tickets: usize) -> BatchId {
        let id = BatchId(self.next_id);
        self.next_id += 1;
        self.pending.push_back(PendingBatch {
            id,
            last,
            outstanding: tickets,
        });
        self.advance();
        id
    }

    /// Records one acked ticket of `batch`. Returns false for an ack that matches no outstanding
    /// ticket (a duplicate or unknown ack, which is a bug in the caller worth logging).
    pub fn ack(&mut self, batch: BatchId) -> bool {
        let Some(front) = self.pending.front() else {
            return false;
        };
        let Some(index) = batch
            .0
            .checked_sub(front.id.0)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return false;
        };
        match self.pending.get_mut(index) {
            Some(pending) if pending.outstanding > 0 => {
                pending.outstanding -= 1;
                self.advance();
                true
            }
            _ => false,
        }
    }

    /// Batches still waiting for acks.
    pub(crate) fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The furthest position below which every row is acked by every endpoint it was routed to.
    pub fn committed(&self) -> Option<&Position> {
        self.committed.as_ref()
    }

    /// The committed position if it moved since the last call: what a periodic writer saves.
    pub(crate) fn take_checkpoint(&mut self) -> Option<Position> {
        if self.dirty {
            self.dirty = false;
            self.committed.clone()
        } else {
            None
        }
    }

    /// Marks the committed position as not yet saved again, after saving `failed` did not work.
    /// A newer committed position wins: it is the one the next call to `take_checkpoint` returns.
    pub(crate) fn restore_checkpoint(&mut self, failed: Position) {
        self.committed.get_or_insert(failed);
        self.dirty = true;
    }

    fn advance(&mut self) {
        while self.pending.front().is_some_and(|b| b.outstanding == 0) {
            if let Some(done) = self.pending.pop_front() {
                self.committed = Some(done.last);
                self.dirty = true;
            }
        }
    }
}

#[cfg(test)]
mod tests;
