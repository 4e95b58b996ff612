//! Consumer links: `<hub>/ConsumerGroups/<cg>/Partitions/<id>` with Event Hubs start positions.
//!
//! The link task reads stored events in order from the resolved start and sends them. fe2o3-amqp's
//! `Sender` waits for link credit before each transfer, so the emulator never sends beyond the credit the
//! consumer granted. Deliveries are pre-settled, as Event Hubs sends them. While caught up, the task
//! waits on the partition's append signal, the consumer's detach, or eviction by a stronger owner.

use std::sync::Arc;

use fe2o3_amqp::link::Sender;
use fe2o3_amqp_types::definitions::{Error as AmqpError, ErrorCondition};
use fe2o3_amqp_types::messaging::message::__private::Deserializable;
use fe2o3_amqp_types::messaging::{Body, Message};
use fe2o3_amqp_types::primitives::{Symbol, Value};
use hubroute_protocol::{EventPosition, conditions};

use crate::store::{Hub, Partition, PositionError};

/// Events copied out of the partition per read.
const READ_CHUNK: usize = 256;

/// A link error with an Event Hubs condition symbol.
pub(crate) fn link_error(condition: &str, description: impl Into<String>) -> AmqpError {
    AmqpError::new(
        ErrorCondition::Custom(Symbol::from(condition)),
        Some(description.into()),
        None,
    )
}

/// Completes when a token valid until `until` (Unix seconds) expires; never for `None`.
pub(crate) async fn token_expiry(until: Option<i64>) {
    match until {
        Some(until) => {
            let left = until.saturating_sub(chrono::Utc::now().timestamp()).max(0);
            tokio::time::sleep(std::time::Duration::from_secs(left.unsigned_abs())).await;
        }
        None => std::future::pending().await,
    }
}

/// Everything a consumer link needs, resolved at attach time.
pub(crate) struct ConsumerLink {
    pub(crate) hub: Arc<Hub>,
    pub(crate) partition: Arc<Partition>,
    pub(crate) consumer_group: String,
    pub(crate) position: EventPosition,
    pub(crate) epoch: Option<i64>,
    /// The connection's credentials: the link ends when its token expires unrenewed.
    pub(crate) auth: Arc<std::sync::Mutex<super::auth::ConnectionAuth>>,
    /// The entity path the link reads, as tokens name it.
    pub(crate) entity: String,
}

impl ConsumerLink {
    /// Runs the link until the consumer detaches, the connection drops or a stronger owner takes over.
    pub(crate) async fn run(self, mut sender: Sender) {
        let description = format!(
            "partition {} of {} in consumer group {}",
            self.partition.id, self.hub.config.name, self.consumer_group
        );
        let admitted =
            self.hub
                .with_receivers(&self.consumer_group, &self.partition.id, |registry| {
                    registry.admit(self.epoch, &description)
                });
        let (receiver_id, mut evicted) = match admitted {
            Ok(admitted) => admitted,
            Err(crate::store::AdmissionError::Excluded(reason)) => {
                let _ = sender
                    .close_with_error(link_error(conditions::LINK_STOLEN, reason))
                    .await;
                return;
            }
            Err(crate::store::AdmissionError::TooMany(reason)) => {
                let _ = sender
                    .close_with_error(link_error(conditions::RESOURCE_LIMIT_EXCEEDED, reason))
                    .await;
                return;
            }
        };
        let outcome = self.stream(&mut sender, &mut evicted).await;
        self.hub
            .with_receivers(&self.consumer_group, &self.partition.id, |registry| {
                registry.release(receiver_id);
            });
        if let Some(error) = outcome {
            let _ = sender.close_with_error(error).await;
        } else {
            let _ = sender.close().await;
        }
    }

    fn authorized_until(&self) -> Option<i64> {
        self.auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .authorized_until(&self.entity)
    }

    /// Streams events; returns the error to close the link with, if any.
    async fn stream(
        &self,
        sender: &mut Sender,
        evicted: &mut tokio::sync::oneshot::Receiver<String>,
    ) -> Option<AmqpError> {
        let mut next = match self.partition.resolve(&self.position) {
            Ok(next) => next,
            Err(PositionError::OutOfRange(reason)) => {
                return Some(link_error(conditions::ARGUMENT_OUT_OF_RANGE, reason));
            }
        };
        let mut appended = self.partition.subscribe();
        loop {
            let authorized_until = self.authorized_until();
            if authorized_until.is_some_and(|until| until <= chrono::Utc::now().timestamp()) {
                break Some(link_error(
                    conditions::UNAUTHORIZED_ACCESS,
                    format!(
                        "the token for `{}` expired; put a new one on $cbs before expiry",
                        self.entity
                    ),
                ));
            }
            let events = self.partition.read_from(next, READ_CHUNK);
            if events.is_empty() {
                tokio::select! {
                    () = token_expiry(authorized_until) => continue,
                    changed = appended.changed() => {
                        if changed.is_err() {
                            break None;
                        }
                    }
                    reason = &mut *evicted => {
                        break Some(link_error(conditions::LINK_STOLEN, reason.unwrap_or_default()));
                    }
                    _ = sender.on_detach() => break None,
                }
                continue;
            }
            if let Ok(reason) = evicted.try_recv() {
                break Some(link_error(conditions::LINK_STOLEN, reason));
            }
            let mut failed = false;
            for event in events {
                let Ok(Deserializable(message)) =
                    serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(&event.encoded)
                else {
                    tracing::error!(
                        sequence_number = event.sequence_number,
                        "stored event does not decode"
                    );
                    continue;
                };
                next = event.sequence_number + 1;
                // Batchable transfers are encoded with all their fields, which the Python SDK needs.
                // Deliveries are pre-settled, so there is no outcome to wait for.
                match sender.send_batchable(message).await {
                    Ok(_settled) => {}
                    Err(error) => {
                        tracing::debug!(%error, "consumer link ended while sending");
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                break None;
            }
        }
    }
}
