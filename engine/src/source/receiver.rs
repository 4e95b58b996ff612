//! One partition's receiver task: connect, receive, decode, cut batches, send downstream, reconnect.
//!
//! Flow control is the backpressure mechanism. Credit is (re)granted only while the task holds a
//! reserved slot of the bounded downstream channel, so when the consumer stalls the task stops
//! granting, the service stops after the remaining credit (at most `prefetch` events). Memory is
//! bounded by bytes across partitions: the batch being built holds a reservation of the source's
//! `max_buffered_bytes` that grows with its rows; when the budget has no room the batch is cut
//! early, and the next one starts (and credit flows again) only once a first step of memory is
//! reserved. Credit is topped back up to `prefetch` once half of it is used.
//!
//! Each loop drains every frame already read before it reads again, decoding transfers straight
//! from the read buffer into the batch builder, and writes the credit it granted in one flush. A
//! malformed event is set aside with its position (the pipeline dead-letters it) and the partition
//! keeps flowing. Position tracking makes reconnects exact: rows already decoded stay in the batch
//! being built, and every (re)attach starts strictly after the last decoded sequence number, so a
//! reconnect produces neither a gap nor a duplicate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hubroute_protocol::EventPosition;
use tokio::sync::mpsc;
use tokio::sync::mpsc::OwnedPermit;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::decode::Malformed;
use super::fault::{Fault, backoff};
use super::link::{Incoming, PartitionLink};
use super::memory::{MemoryBudget, RESERVATION_STEP, Reservation};
use super::{MessageDecoder, OutOfRangePolicy, PartitionOutcome, SourceBatch, SourceConfig};
use crate::{Error, Result};

/// Everything a partition task needs; cheap to build per partition.
#[derive(Debug)]
pub(crate) struct PartitionReceiver {
    pub(crate) config: Arc<SourceConfig>,
    pub(crate) event_hub: String,
    pub(crate) partition: String,
    /// Where the next attach starts: the configured start or checkpoint at first, then strictly
    /// after the last decoded event.
    pub(crate) position: EventPosition,
    pub(crate) downstream: mpsc::Sender<SourceBatch>,
    pub(crate) shutdown: CancellationToken,
    /// The source-wide count of decoded events.
    pub(crate) received: Arc<AtomicU64>,
    /// The source-wide count of malformed events set aside.
    pub(crate) malformed: Arc<AtomicU64>,
    /// The source-wide count of reconnects after transient faults.
    pub(crate) reconnects: Arc<AtomicU64>,
    /// The source-wide `max_buffered_bytes`.
    pub(crate) memory: MemoryBudget,
}

/// What a row costs besides its body (ids, offsets, properties, Arrow offsets): an estimate that
/// keeps the budget honest for small bodies.
const ROW_OVERHEAD_BYTES: u64 = 192;

/// How one connection's receive loop ended.
enum Ended {
    Outcome(PartitionOutcome),
    Fault(Fault),
}

/// The batch being built: decoded rows plus malformed events set aside, and the last position.
struct Pending {
    decoder: MessageDecoder,
    malformed: Vec<Malformed>,
    last_sequence_number: Option<i64>,
    /// The batch's share of the source's memory budget.
    memory: Reservation,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.decoder.is_empty() && self.malformed.is_empty()
    }

    /// Estimated memory of the rows built so far.
    fn estimated_bytes(&self) -> u64 {
        let malformed: usize = self.malformed.iter().map(|m| m.payload.len()).sum();
        (self.decoder.body_bytes() + malformed) as u64
            + (self.decoder.len() + self.malformed.len()) as u64 * ROW_OVERHEAD_BYTES
    }
}

impl PartitionReceiver {
    /// Runs until shutdown, lost ownership, a closed downstream or a fatal error.
    pub(crate) async fn run(mut self) -> Result<PartitionOutcome> {
        let mut pending = Pending {
            decoder: MessageDecoder::with_body_buffers(
                self.event_hub.clone(),
                self.partition.clone(),
                self.memory.body_buffers(),
            ),
            malformed: Vec::new(),
            last_sequence_number: None,
            memory: self.memory.empty(),
        };
        let mut attempt = 0u32;
        loop {
            let mut received = false;
            let ended = self.connect_and_receive(&mut pending, &mut received).await;
            if received {
                attempt = 0;
            }
            match ended {
                Ended::Outcome(outcome) => return Ok(outcome),
                Ended::Fault(Fault::Fatal(error)) => return Err(error),
                Ended::Fault(Fault::Stolen { description }) => {
                    tracing::warn!(partition = %self.partition, %description, "partition ownership lost: link stolen");
                    return Ok(PartitionOutcome::OwnershipLost { description });
                }
                Ended::Fault(Fault::OutOfRange { description }) => match self.config.out_of_range {
                    OutOfRangePolicy::Fail => {
                        return Err(Error::PositionOutOfRange {
                            partition: self.partition.clone(),
                            position: self.position.to_filter_expression(),
                            description,
                        });
                    }
                    OutOfRangePolicy::Earliest => {
                        tracing::warn!(
                            partition = %self.partition,
                            position = %self.position.to_filter_expression(),
                            %description,
                            "start position out of range (older than retention?); restarting from the earliest event"
                        );
                        self.position = EventPosition::earliest();
                    }
                },
                Ended::Fault(Fault::Transient { error, min_delay }) => {
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                    attempt = attempt.saturating_add(1);
                    let delay = backoff(attempt, min_delay, self.config.max_backoff);
                    tracing::warn!(partition = %self.partition, %error, ?delay, attempt, "receiver failed; reconnecting");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return Ok(PartitionOutcome::Stopped),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn connect_and_receive(&mut self, pending: &mut Pending, received: &mut bool) -> Ended {
        let connecting = PartitionLink::open(
            &self.config,
            &self.event_hub,
            &self.partition,
            &self.position,
        );
        let mut link = tokio::select! {
            () = self.shutdown.cancelled() => return Ended::Outcome(PartitionOutcome::Stopped),
            link = connecting => match link {
                Ok(link) => link,
                Err(fault) => return Ended::Fault(fault),
            },
        };
        let ended = self.receive(&mut link, pending, received).await;
        link.close().await;
        ended
    }

    /// Sends what was built so far downstream through `permit`.
    fn flush(&self, pending: &mut Pending, permit: OwnedPermit<SourceBatch>) -> Result<(), Fault> {
        let batch = pending.decoder.finish().map_err(Fault::Fatal)?;
        permit.send(SourceBatch {
            partition: self.partition.clone(),
            batch,
            last_sequence_number: pending.last_sequence_number.unwrap_or_default(),
            last_offset: pending.decoder.last_offset().to_owned(),
            malformed: std::mem::take(&mut pending.malformed),
            _memory: pending.memory.take(),
        });
        Ok(())
    }

    /// On shutdown: hand over the partial batch if the channel has room right now, else drop it
    /// (it was never delivered, so no checkpoint covers it and it is read again next time).
    fn stop(&self, pending: &mut Pending, permit: Option<OwnedPermit<SourceBatch>>) -> Ended {
        if !pending.is_empty() {
            let permit = permit.or_else(|| self.downstream.clone().try_reserve_owned().ok());
            if let Some(permit) = permit
                && let Err(fault) = self.flush(pending, permit)
            {
                return Ended::Fault(fault);
            }
        }
        Ended::Outcome(PartitionOutcome::Stopped)
    }

    /// Decodes one event into the pending batch and moves the position past it.
    fn accept(&mut self, pending: &mut Pending, payload: &bytes::Bytes) {
        let sequence_number = match pending.decoder.append(payload) {
            Ok(sequence_number) => {
                self.received.fetch_add(1, Ordering::Relaxed);
                Some(sequence_number)
            }
            Err(malformed) => {
                // Event Hubs numbers a partition's events consecutively, so an event whose own
                // annotations cannot be read still has a known position.
                let sequence_number = malformed
                    .sequence_number
                    .or_else(|| pending.last_sequence_number.map(|last| last + 1));
                tracing::warn!(
                    partition = %self.partition,
                    sequence_number,
                    problem = %malformed.problem,
                    "a malformed event was set aside for the dead-letter store"
                );
                self.malformed.fetch_add(1, Ordering::Relaxed);
                pending.malformed.push(Malformed {
                    sequence_number,
                    ..malformed
                });
                sequence_number
            }
        };
        if let Some(sequence_number) = sequence_number {
            pending.last_sequence_number = Some(sequence_number);
            self.position = EventPosition::after_sequence_number(sequence_number);
        }
    }

    async fn receive(
        &mut self,
        link: &mut PartitionLink,
        pending: &mut Pending,
        received: &mut bool,
    ) -> Ended {
        let prefetch = self.config.prefetch;
        // A reserved slot of the downstream channel, kept between rounds until a batch is sent.
        let mut held: Option<OwnedPermit<SourceBatch>> = None;
        let mut deadline = (!pending.is_empty()).then(|| Instant::now() + self.config.batch_linger);
        loop {
            let permit = match held.take() {
                Some(permit) => permit,
                None => {
                    // No credit is granted until the downstream channel has room for the next
                    // batch and the memory budget has a first step for it.
                    let slot = self.downstream.clone().reserve_owned();
                    let shortfall = RESERVATION_STEP.saturating_sub(pending.memory.bytes());
                    let budget = self.memory.clone();
                    let reserve = async move {
                        let slot = slot.await?;
                        Ok::<_, mpsc::error::SendError<()>>((slot, budget.reserve(shortfall).await))
                    };
                    tokio::select! {
                        () = self.shutdown.cancelled() => return self.stop(pending, None),
                        () = sleep_until(link.renew_at.unwrap_or_else(Instant::now)), if link.renew_at.is_some() => {
                            if let Err(fault) = link.renew().await {
                                return Ended::Fault(fault);
                            }
                            continue;
                        }
                        () = sleep_until(link.heartbeat_due().unwrap_or_else(Instant::now)), if link.heartbeat_due().is_some() => {
                            link.heartbeat();
                            if let Err(fault) = link.flush().await {
                                return Ended::Fault(fault);
                            }
                            continue;
                        }
                        reserved = reserve => match reserved {
                            Ok((slot, memory)) => {
                                pending.memory.merge(memory);
                                slot
                            }
                            Err(_) => return Ended::Outcome(PartitionOutcome::DownstreamClosed),
                        },
                    }
                }
            };
            if link.outstanding_credit() <= prefetch / 2 {
                link.grant(prefetch);
            }
            let full = match self.take_events(link, pending, received, &mut deadline) {
                Ok(full) => full,
                Err(fault) => return Ended::Fault(fault),
            };
            // A full batch goes downstream at once, spending the permit.
            let permit = if full {
                deadline = None;
                if let Err(fault) = self.flush(pending, permit) {
                    return Ended::Fault(fault);
                }
                None
            } else {
                Some(permit)
            };
            if let Err(fault) = link.flush().await {
                return Ended::Fault(fault);
            }
            let Some(permit) = permit else {
                continue;
            };
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return self.stop(pending, Some(permit)),
                () = sleep_until(link.renew_at.unwrap_or_else(Instant::now)), if link.renew_at.is_some() => {
                    if let Err(fault) = link.renew().await {
                        return Ended::Fault(fault);
                    }
                    held = Some(permit);
                }
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    deadline = None;
                    if let Err(fault) = self.flush(pending, permit) {
                        return Ended::Fault(fault);
                    }
                }
                () = sleep_until(link.heartbeat_due().unwrap_or_else(Instant::now)), if link.heartbeat_due().is_some() => {
                    link.heartbeat();
                    held = Some(permit);
                }
                filled = link.fill() => {
                    if let Err(fault) = filled {
                        return Ended::Fault(fault);
                    }
                    held = Some(permit);
                }
            }
        }
    }

    /// Decodes the events already read into the pending batch, starting its linger `deadline` at
    /// the first; `true` when the batch must go now: it is full, or the memory budget cannot cover
    /// it (the events after it wait for the next round).
    fn take_events(
        &mut self,
        link: &mut PartitionLink,
        pending: &mut Pending,
        received: &mut bool,
        deadline: &mut Option<Instant>,
    ) -> Result<bool, Fault> {
        while let Some(Incoming::Event(payload)) = link.next()? {
            self.accept(pending, &payload);
            *received = true;
            deadline.get_or_insert_with(|| Instant::now() + self.config.batch_linger);
            let full = pending.decoder.len() >= self.config.batch_max_rows
                || pending.decoder.body_bytes() >= self.config.batch_max_bytes;
            if full
                || !pending
                    .memory
                    .cover(pending.estimated_bytes(), RESERVATION_STEP)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
