//! One partition's receiver task: attach, receive, decode, cut batches, send downstream, reconnect.
//!
//! Flow control is the backpressure mechanism. The link runs in manual credit mode and credit is
//! (re)granted only while the task holds a reserved slot of the bounded downstream channel, so when
//! the consumer stalls the task stops granting, the service stops after the remaining credit (at most
//! `prefetch` events) and memory is bounded by `prefetch` events plus one batch being built plus the
//! channel's capacity. Credit is topped back up to `prefetch` once half of it is used.
//!
//! Transfers are requested pre-settled (`snd-settle-mode = settled`, what the SDKs call
//! settle-on-send): Event Hubs receivers never need dispositions, and it was the fastest mode measured
//! (stack-measurements.md). Position tracking makes reconnects exact: rows already decoded stay in the
//! batch being built, and every (re)attach starts strictly after the last decoded sequence number, so a
//! reconnect produces neither a gap nor a duplicate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fe2o3_amqp::Receiver;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp_types::definitions::{Fields, SenderSettleMode};
use fe2o3_amqp_types::messaging::{Body, Source};
use fe2o3_amqp_types::primitives::{Symbol, Value};
use hubroute_protocol::address::EntityAddress;
use hubroute_protocol::{EventPosition, link};
use serde_amqp::described::Described;
use serde_amqp::descriptor::Descriptor;
use tokio::sync::mpsc;
use tokio::sync::mpsc::OwnedPermit;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::connection::HubConnection;
use super::fault::{Fault, backoff};
use super::{MessageDecoder, OutOfRangePolicy, PartitionOutcome, SourceBatch, SourceConfig};
use crate::{Error, Result};

/// How long closing a connection may take before it is abandoned.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The source-wide count of reconnects after transient faults.
    pub(crate) reconnects: Arc<AtomicU64>,
}

/// How one connection's receive loop ended.
enum Ended {
    Outcome(PartitionOutcome),
    Fault(Fault),
}

impl PartitionReceiver {
    /// Runs until shutdown, lost ownership, a closed downstream or a fatal error.
    pub(crate) async fn run(mut self) -> Result<PartitionOutcome> {
        let mut decoder = MessageDecoder::new(self.event_hub.clone(), self.partition.clone());
        let mut last_sequence_number = None;
        let mut attempt = 0u32;
        loop {
            let mut received = false;
            let ended = self
                .connect_and_receive(&mut decoder, &mut last_sequence_number, &mut received)
                .await;
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

    async fn connect_and_receive(
        &mut self,
        decoder: &mut MessageDecoder,
        last_sequence_number: &mut Option<i64>,
        received: &mut bool,
    ) -> Ended {
        let connecting = HubConnection::open(&self.config, &self.event_hub);
        let mut hub = tokio::select! {
            () = self.shutdown.cancelled() => return Ended::Outcome(PartitionOutcome::Stopped),
            hub = connecting => match hub {
                Ok(hub) => hub,
                Err(error) => return Ended::Fault(Fault::from_error(error)),
            },
        };
        let ended = self
            .receive(&mut hub, decoder, last_sequence_number, received)
            .await;
        hub.close().await;
        ended
    }

    async fn attach(&self, hub: &mut HubConnection) -> Result<Receiver, Fault> {
        let address = EntityAddress::ConsumerPartition {
            hub: self.event_hub.clone(),
            consumer_group: self.config.consumer_group.clone(),
            partition: self.partition.clone(),
        };
        let filter = Described {
            descriptor: Descriptor::Code(link::SELECTOR_FILTER_CODE),
            value: Value::String(self.position.to_filter_expression()),
        };
        let source = Source::builder()
            .address(address.to_string())
            .add_to_filter(Symbol::from(link::SELECTOR_FILTER_KEY), filter)
            .build();
        let mut properties = Fields::new();
        if let Some(owner_level) = self.config.owner_level {
            properties.insert(Symbol::from(link::EPOCH), Value::Long(owner_level));
        }
        let name = format!(
            "hubroute-{}-{}",
            self.partition,
            uuid::Uuid::new_v4().simple()
        );
        Receiver::builder()
            .name(name.clone())
            .source(source)
            .target(name)
            .sender_settle_mode(SenderSettleMode::Settled)
            .credit_mode(CreditMode::Manual)
            .auto_accept(false)
            .properties(properties)
            .attach(&mut hub.session)
            .await
            .map_err(|error| Fault::from_attach(&self.partition, &error))
    }

    /// Sends the rows built so far downstream through `permit`.
    fn flush(
        &self,
        decoder: &mut MessageDecoder,
        last_sequence_number: Option<i64>,
        permit: OwnedPermit<SourceBatch>,
    ) -> Result<(), Fault> {
        let batch = decoder.finish().map_err(Fault::Fatal)?;
        permit.send(SourceBatch {
            partition: self.partition.clone(),
            batch,
            last_sequence_number: last_sequence_number.unwrap_or_default(),
            last_offset: decoder.last_offset().to_owned(),
        });
        Ok(())
    }

    /// On shutdown: hand over the partial batch if the channel has room right now, else drop it
    /// (it was never delivered, so no checkpoint covers it and it is read again next time).
    fn stop(
        &self,
        decoder: &mut MessageDecoder,
        last_sequence_number: Option<i64>,
        permit: Option<OwnedPermit<SourceBatch>>,
    ) -> Ended {
        if !decoder.is_empty() {
            let permit = permit.or_else(|| self.downstream.clone().try_reserve_owned().ok());
            if let Some(permit) = permit
                && let Err(fault) = self.flush(decoder, last_sequence_number, permit)
            {
                return Ended::Fault(fault);
            }
        }
        Ended::Outcome(PartitionOutcome::Stopped)
    }

    async fn receive(
        &mut self,
        hub: &mut HubConnection,
        decoder: &mut MessageDecoder,
        last_sequence_number: &mut Option<i64>,
        received: &mut bool,
    ) -> Ended {
        let mut receiver = match self.attach(hub).await {
            Ok(receiver) => receiver,
            Err(fault) => return Ended::Fault(fault),
        };
        let config = Arc::clone(&self.config);
        let prefetch = config.prefetch;
        let mut credit = 0u32;
        let mut permit: Option<OwnedPermit<SourceBatch>> = None;
        let mut deadline = (!decoder.is_empty()).then(|| Instant::now() + config.batch_linger);
        let ended = loop {
            if permit.is_none() {
                // No credit is granted until the downstream channel has room for the next batch.
                let reserve = self.downstream.clone().reserve_owned();
                tokio::select! {
                    () = self.shutdown.cancelled() => break self.stop(decoder, *last_sequence_number, None),
                    () = sleep_until(hub.renew_at.unwrap_or_else(Instant::now)), if hub.renew_at.is_some() => {
                        if let Err(error) = hub.put_token().await {
                            break Ended::Fault(Fault::from_error(error));
                        }
                        continue;
                    }
                    reserved = reserve => match reserved {
                        Ok(reserved) => permit = Some(reserved),
                        Err(_) => break Ended::Outcome(PartitionOutcome::DownstreamClosed),
                    },
                }
            }
            if credit <= prefetch / 2 {
                if receiver.set_credit(prefetch).await.is_err() {
                    // The link is gone; its detach error (e.g. `amqp:link:stolen`) surfaces on the next
                    // receive. A delivery still buffered there is dropped: the position has not moved
                    // past it, so the next attach reads it again.
                    let pending =
                        tokio::time::timeout(CLOSE_TIMEOUT, receiver.recv::<Body<Value>>()).await;
                    break Ended::Fault(match pending {
                        Ok(Err(error)) => Fault::from_recv(&self.partition, &error),
                        _ => Fault::Transient {
                            error: Error::Amqp {
                                partition: self.partition.clone(),
                                condition: "link-closed".to_owned(),
                                description: "the link closed while granting credit".to_owned(),
                            },
                            min_delay: Duration::ZERO,
                        },
                    });
                }
                credit = prefetch;
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break self.stop(decoder, *last_sequence_number, permit.take()),
                () = sleep_until(hub.renew_at.unwrap_or_else(Instant::now)), if hub.renew_at.is_some() => {
                    if let Err(error) = hub.put_token().await {
                        break Ended::Fault(Fault::from_error(error));
                    }
                }
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    deadline = None;
                    let permit = permit.take().expect("a permit is held while receiving");
                    if let Err(fault) = self.flush(decoder, *last_sequence_number, permit) {
                        break Ended::Fault(fault);
                    }
                }
                delivery = receiver.recv::<Body<Value>>() => {
                    let delivery = match delivery {
                        Ok(delivery) => delivery,
                        Err(error) => break Ended::Fault(Fault::from_recv(&self.partition, &error)),
                    };
                    credit = credit.saturating_sub(1);
                    let sequence_number = match decoder.append(delivery.message()) {
                        Ok(sequence_number) => sequence_number,
                        Err(error) => break Ended::Fault(Fault::Fatal(error)),
                    };
                    *received = true;
                    self.received.fetch_add(1, Ordering::Relaxed);
                    *last_sequence_number = Some(sequence_number);
                    self.position = EventPosition::after_sequence_number(sequence_number);
                    if deadline.is_none() {
                        deadline = Some(Instant::now() + config.batch_linger);
                    }
                    if decoder.len() >= config.batch_max_rows || decoder.body_bytes() >= config.batch_max_bytes {
                        deadline = None;
                        let permit = permit.take().expect("a permit is held while receiving");
                        if let Err(fault) = self.flush(decoder, *last_sequence_number, permit) {
                            break Ended::Fault(fault);
                        }
                    }
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, receiver.close()).await;
        ended
    }
}
