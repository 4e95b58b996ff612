//! The source's memory budget: decoded events held between the AMQP link and the end of routing,
//! summed over every partition, stay within `[source] max_buffered_bytes`.
//!
//! A partition receiver holds a [`Reservation`] for the batch it is building and grows it as rows
//! arrive. When the budget has no room, the receiver cuts the batch early instead of growing it, and
//! it starts its next batch only once the budget has room again; meanwhile it grants no credit, so
//! backpressure still ends at AMQP flow control. The reservation travels with the finished batch and
//! returns to the budget when the router drops it. Without this, memory grows with the partition
//! count: every partition builds a batch of up to `batch_max_bytes` and has two more queued.
//!
//! Body buffers outlive their batch's reservation (sinks still encode the rows after routing), and
//! the budget keeps them for reuse ([`IdleBodyBuffers`]): allocated fresh, a multi-megabyte buffer
//! costs a page fault and a zeroed page per 4 KiB. An idle buffer holds budget for its capacity,
//! so the source's memory, reused buffers included, stays within `max_buffered_bytes`. Idle buffers
//! hold at most a quarter of the budget: that leaves room for partitions to start batches once the
//! batches in flight are routed (a receiver waiting for its first step is never starved by buffers
//! only a next batch would release), and it measured as the engine's peak RSS unchanged at 32
//! partitions, where half the budget added 16–20 MB.
//!
//! Permits are KiB, so a `u32` acquire covers any budget up to 4 TiB.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hubroute_message::BodyBuffers;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const KIB: u64 = 1024;

/// Memory a batch reserves at a time: the first step before its first row, then steps as it grows,
/// so the budget's semaphore is touched about once per this many bytes of events.
pub(crate) const RESERVATION_STEP: u64 = 256 * 1024;

/// The shared budget; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct MemoryBudget {
    semaphore: Arc<Semaphore>,
    total_kib: u32,
    body_buffers: Arc<IdleBodyBuffers>,
}

/// Body buffers of dropped batches, each holding budget for its capacity until a decoder takes it.
#[derive(Debug)]
struct IdleBodyBuffers {
    semaphore: Arc<Semaphore>,
    /// At most a quarter of the budget, and nothing when that is less than one step.
    max_kib: u32,
    idle: Mutex<Vec<(Vec<u8>, OwnedSemaphorePermit)>>,
}

/// Bytes of the budget held by one batch, returned when it is dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: MemoryBudget,
    permit: Option<OwnedSemaphorePermit>,
}

impl MemoryBudget {
    /// A budget of `bytes` (rounded down to whole KiB, at least 1 KiB).
    pub(crate) fn new(bytes: u64) -> Self {
        let total_kib = u32::try_from(bytes / KIB).unwrap_or(u32::MAX).max(1);
        let semaphore = Arc::new(Semaphore::new(total_kib as usize));
        let quarter = total_kib / 4;
        let body_buffers = Arc::new(IdleBodyBuffers {
            semaphore: Arc::clone(&semaphore),
            max_kib: if quarter >= kib_of(RESERVATION_STEP) {
                quarter
            } else {
                0
            },
            idle: Mutex::new(Vec::new()),
        });
        Self {
            semaphore,
            total_kib,
            body_buffers,
        }
    }

    /// Where the partitions' decoders take body buffers from and give them back.
    pub(crate) fn body_buffers(&self) -> Arc<dyn BodyBuffers> {
        Arc::clone(&self.body_buffers) as Arc<dyn BodyBuffers>
    }

    /// A reservation of nothing, to grow.
    pub(crate) fn empty(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            permit: None,
        }
    }

    /// Waits until `bytes` (at most the whole budget) are free and reserves them.
    pub(crate) async fn reserve(self, bytes: u64) -> Reservation {
        let kib = kib_of(bytes).min(self.total_kib);
        let permit = Arc::clone(&self.semaphore)
            .acquire_many_owned(kib)
            .await
            .expect("the budget's semaphore is never closed");
        Reservation {
            budget: self,
            permit: Some(permit),
        }
    }

    /// Bytes currently reserved by batches being built or routed and by idle body buffers.
    pub(crate) fn in_use_bytes(&self) -> u64 {
        u64::from(self.total_kib).saturating_sub(self.semaphore.available_permits() as u64) * KIB
    }
}

impl Reservation {
    /// Bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.permit
            .as_ref()
            .map_or(0, |permit| permit.num_permits() as u64 * KIB)
    }

    /// Makes the reservation cover `bytes`, taking up to `headroom` more when it must grow so that
    /// the next rows need no semaphore operation. Never waits: `false` means the budget has no room for
    /// `bytes` (or `bytes` exceeds the whole budget) and the batch should be cut.
    pub(crate) fn cover(&mut self, bytes: u64, headroom: u64) -> bool {
        let held = self.bytes();
        if bytes <= held {
            return true;
        }
        let total = u64::from(self.budget.total_kib) * KIB;
        if bytes > total {
            return false;
        }
        let with_headroom = (bytes + headroom).min(total);
        for wanted in [with_headroom, bytes] {
            let extra = kib_of(wanted - held);
            if let Ok(permit) = Arc::clone(&self.budget.semaphore).try_acquire_many_owned(extra) {
                self.absorb(permit);
                return true;
            }
        }
        false
    }

    /// Adds `other`'s bytes to this reservation.
    pub(crate) fn merge(&mut self, mut other: Reservation) {
        if let Some(permit) = other.permit.take() {
            self.absorb(permit);
        }
    }

    /// Moves the held bytes out, leaving this reservation empty.
    pub(crate) fn take(&mut self) -> Reservation {
        Reservation {
            budget: self.budget.clone(),
            permit: self.permit.take(),
        }
    }

    fn absorb(&mut self, permit: OwnedSemaphorePermit) {
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
    }
}

impl IdleBodyBuffers {
    fn idle(&self) -> MutexGuard<'_, Vec<(Vec<u8>, OwnedSemaphorePermit)>> {
        // Nothing panics while the lock is held; if something did, the list is still consistent.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn idle_kib(idle: &[(Vec<u8>, OwnedSemaphorePermit)]) -> u32 {
        idle.iter()
            .map(|(_, permit)| u32::try_from(permit.num_permits()).unwrap_or(u32::MAX))
            .sum()
    }
}

impl BodyBuffers for IdleBodyBuffers {
    fn take(&self, capacity: usize) -> Vec<u8> {
        let reused = {
            let mut idle = self.idle();
            let fitting = idle
                .iter()
                .position(|(buffer, _)| buffer.capacity() >= capacity);
            fitting.map(|index| idle.swap_remove(index))
        };
        // Dropping the permit returns the buffer's bytes to the budget: from here on the batch's
        // own reservation covers what it holds.
        reused.map_or_else(|| Vec::with_capacity(capacity), |(buffer, _permit)| buffer)
    }

    fn give_back(&self, buffer: Vec<u8>) {
        let kib = kib_of(buffer.capacity() as u64);
        let mut idle = self.idle();
        if kib == 0 || Self::idle_kib(&idle) + kib > self.max_kib {
            return;
        }
        // Fails when the budget has no room. Bytes released while receivers wait go to them first
        // (the semaphore is fair), so an idle buffer never takes what a receiver asked for.
        if let Ok(permit) = Arc::clone(&self.semaphore).try_acquire_many_owned(kib) {
            idle.push((buffer, permit));
        }
    }
}

fn kib_of(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(KIB)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn cover_grows_with_headroom_and_refuses_past_the_budget() {
        let budget = MemoryBudget::new(100 * KIB);
        let mut first = budget.empty();
        assert!(first.cover(10 * KIB, 20 * KIB));
        assert_eq!(first.bytes(), 30 * KIB, "grows by the headroom at once");
        assert!(first.cover(25 * KIB, 20 * KIB), "within what is held");
        assert_eq!(first.bytes(), 30 * KIB);

        let mut second = budget.empty();
        assert!(
            second.cover(60 * KIB, 20 * KIB),
            "headroom is taken only if there is room"
        );
        assert_eq!(second.bytes(), 60 * KIB);
        assert_eq!(budget.in_use_bytes(), 90 * KIB);
        assert!(!first.cover(41 * KIB, 0), "the budget is exhausted");
        assert!(!first.cover(101 * KIB, 0), "more than the whole budget");
        assert_eq!(first.bytes(), 30 * KIB, "a refused cover takes nothing");

        drop(second);
        assert_eq!(
            budget.in_use_bytes(),
            30 * KIB,
            "dropping returns the bytes"
        );
        assert!(first.cover(90 * KIB, 0));
    }

    #[test]
    fn take_and_merge_move_bytes_without_returning_them() {
        let budget = MemoryBudget::new(64 * KIB);
        let mut building = budget.empty();
        assert!(building.cover(40 * KIB, 0));
        let finished = building.take();
        assert_eq!((building.bytes(), finished.bytes()), (0, 40 * KIB));
        assert_eq!(budget.in_use_bytes(), 40 * KIB);
        building.merge(finished);
        assert_eq!(building.bytes(), 40 * KIB);
        assert_eq!(budget.in_use_bytes(), 40 * KIB);
    }

    #[tokio::test]
    async fn reserve_waits_for_room_and_is_capped_at_the_budget() {
        let budget = MemoryBudget::new(64 * KIB);
        let mut held = budget.empty();
        assert!(held.cover(64 * KIB, 0));
        let mut waiting = Box::pin(budget.clone().reserve(16 * KIB));
        let early = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await;
        assert!(early.is_err(), "no room until the batch is dropped");
        drop(held);
        let reserved = waiting.await;
        assert_eq!(reserved.bytes(), 16 * KIB);
        let whole = budget.clone().reserve(1 << 30);
        drop(reserved);
        assert_eq!(whole.await.bytes(), 64 * KIB, "capped at the whole budget");
    }

    #[test]
    fn idle_body_buffers_hold_budget_up_to_a_quarter_of_it_and_release_it_when_taken() {
        const MIB: u64 = 1024 * KIB;
        let budget = MemoryBudget::new(16 * MIB);
        let buffers = budget.body_buffers();
        let mib = |n: u64| Vec::<u8>::with_capacity(usize::try_from(n * MIB).unwrap());
        buffers.give_back(mib(3));
        assert_eq!(
            budget.in_use_bytes(),
            3 * MIB,
            "an idle buffer holds budget"
        );
        buffers.give_back(mib(1));
        buffers.give_back(mib(1));
        assert_eq!(
            budget.in_use_bytes(),
            4 * MIB,
            "idle buffers hold at most a quarter"
        );

        let taken = buffers.take(2 * MIB as usize);
        assert_eq!(
            taken.capacity(),
            3 * MIB as usize,
            "an idle buffer large enough is reused"
        );
        assert_eq!(budget.in_use_bytes(), MIB, "taking it returns its bytes");
        let fresh = buffers.take(2 * MIB as usize);
        assert_eq!(
            fresh.capacity(),
            2 * MIB as usize,
            "none left that is large enough"
        );
        assert_eq!(budget.in_use_bytes(), MIB);

        let mut batch = budget.empty();
        assert!(batch.cover(15 * MIB, 0));
        buffers.give_back(mib(1));
        assert_eq!(
            budget.in_use_bytes(),
            16 * MIB,
            "no room: the buffer is freed"
        );
        drop(batch);
        assert_eq!(budget.in_use_bytes(), MIB);
    }

    #[test]
    fn a_budget_smaller_than_four_steps_keeps_no_idle_buffers() {
        let budget = MemoryBudget::new(RESERVATION_STEP * 4 - KIB);
        budget
            .body_buffers()
            .give_back(Vec::with_capacity(64 * 1024));
        assert_eq!(budget.in_use_bytes(), 0);
    }

    #[tokio::test]
    async fn idle_body_buffers_never_take_budget_a_waiting_receiver_asked_for() {
        const MIB: u64 = 1024 * KIB;
        let budget = MemoryBudget::new(8 * MIB);
        let mut batch = budget.empty();
        assert!(batch.cover(8 * MIB, 0));
        let waiting = tokio::spawn(budget.clone().reserve(7 * MIB));
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(batch);
        budget
            .body_buffers()
            .give_back(Vec::with_capacity(usize::try_from(2 * MIB).unwrap()));
        let reservation = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting receiver gets its step")
            .unwrap();
        assert_eq!(reservation.bytes(), 7 * MIB);
        assert_eq!(
            budget.in_use_bytes(),
            7 * MIB,
            "the buffer did not fit in what was left"
        );
    }
}
