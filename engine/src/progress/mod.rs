//! Checkpoint advancement for one partition under at-least-once delivery, per endpoint.
//!
//! Every source batch is split into tickets, one per endpoint that receives some of its rows; a
//! sink acks a ticket once those rows are committed, dead-lettered or parked. Acks arrive in any
//! order (endpoints run independently), but a checkpoint is a single position in the partition, so
//! it may only move past a batch when that batch and every batch before it have no ticket left.
//! A `VecDeque` in partition order makes that a pop from the front: O(1) per batch.
//!
//! Each endpoint also has its own position: the end of the longest prefix of batches in which it
//! has no ticket left. It is at or ahead of the partition's checkpoint; stored beside it, it lets a
//! restarted engine skip, for that endpoint only, the rows the endpoint had already settled. A
//! position read back at start is a floor: an endpoint's position never moves below it.

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
    /// Endpoints whose ticket of this batch is not yet acked; the batch is done when empty.
    outstanding: Vec<usize>,
}

/// What a periodic writer saves for a partition: its checkpoint and every endpoint's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The partition's checkpoint (`None` until a batch of this period is done).
    pub partition: Option<Position>,
    /// Per endpoint (by index), the sequence number of the last row it has settled, if known.
    pub endpoints: Vec<Option<i64>>,
}

/// Tracks the batches of one partition between routing and commit.
#[derive(Debug, Default)]
pub struct PartitionProgress {
    pending: VecDeque<PendingBatch>,
    next_id: u64,
    committed: Option<Position>,
    /// Per endpoint, the position read back at start (see the module documentation).
    floors: Vec<Option<i64>>,
    /// Whether anything moved since the last [`Self::take_checkpoint`].
    dirty: bool,
}

impl PartitionProgress {
    /// Progress of a partition whose endpoints had settled up to `floors` (by endpoint index)
    /// before a restart.
    pub fn resuming(floors: Vec<Option<i64>>) -> Self {
        Self {
            floors,
            ..Self::default()
        }
    }

    /// Starts tracking a batch ending at `last` that was handed to `endpoints` (empty when no
    /// endpoint wants any of its rows: it is done at once).
    pub fn push(&mut self, last: Position, endpoints: Vec<usize>) -> BatchId {
        let id = BatchId(self.next_id);
        self.next_id += 1;
        self.pending.push_back(PendingBatch {
            id,
            last,
            outstanding: endpoints,
        });
        self.dirty = true;
        self.advance();
        id
    }

    /// Records the acked ticket of `endpoint` in `batch`. Returns false for an ack that matches no
    /// outstanding ticket (a duplicate or unknown ack, which is a bug in the caller worth logging).
    pub fn ack(&mut self, batch: BatchId, endpoint: usize) -> bool {
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
        let Some(pending) = self.pending.get_mut(index) else {
            return false;
        };
        let Some(slot) = pending.outstanding.iter().position(|e| *e == endpoint) else {
            return false;
        };
        pending.outstanding.swap_remove(slot);
        self.dirty = true;
        self.advance();
        true
    }

    /// Batches still waiting for acks.
    pub(crate) fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The furthest position below which every row is acked by every endpoint it was routed to.
    pub fn committed(&self) -> Option<&Position> {
        self.committed.as_ref()
    }

    /// The sequence number of the last row `endpoint` has settled: the end of the batch before
    /// the first one with a ticket of it outstanding, never below its floor.
    pub fn endpoint_position(&self, endpoint: usize) -> Option<i64> {
        let newest = self
            .pending
            .back()
            .map(|b| &b.last)
            .or(self.committed.as_ref());
        let settled = match self
            .pending
            .iter()
            .position(|b| b.outstanding.contains(&endpoint))
        {
            Some(0) => self.committed.as_ref(),
            Some(i) => Some(&self.pending[i - 1].last),
            None => newest,
        }
        .map(|p| p.sequence_number);
        let floor = self.floors.get(endpoint).copied().flatten();
        settled.max(floor)
    }

    /// The progress of `endpoints` endpoints if anything moved since the last call: what a
    /// periodic writer saves.
    pub fn take_checkpoint(&mut self, endpoints: usize) -> Option<Progress> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(Progress {
            partition: self.committed.clone(),
            endpoints: (0..endpoints).map(|e| self.endpoint_position(e)).collect(),
        })
    }

    /// Offers the progress again at the next [`Self::take_checkpoint`], after saving it did not
    /// work. Positions only move forward, so the next call returns these or newer ones.
    pub(crate) fn restore_checkpoint(&mut self) {
        self.dirty = true;
    }

    fn advance(&mut self) {
        while self
            .pending
            .front()
            .is_some_and(|b| b.outstanding.is_empty())
        {
            if let Some(done) = self.pending.pop_front() {
                self.committed = Some(done.last);
            }
        }
    }
}

#[cfg(test)]
mod tests;
