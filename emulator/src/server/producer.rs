//! Producer links: `<hub>` (the emulator picks the partition) and `<hub>/Partitions/<id>`.
//!
//! A delivery is one event, or an Event Hubs batch (message format `0x80013700`) whose data sections
//! each hold one encoded event; a batch lands in a single partition and is stored all or nothing, as
//! on the service. Deliveries are accepted once stored and rejected with an Event Hubs condition
//! otherwise (`amqp:link:message-size-exceeded` for an event over the limit).

use std::sync::Arc;

use fe2o3_amqp::link::Receiver;
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::message::__private::Deserializable;
use fe2o3_amqp_types::messaging::{Body, Message};
use fe2o3_amqp_types::primitives::{Symbol, Value};
use hubroute_protocol::{annotations, conditions};

use super::consumer::{link_error, token_expiry};
use crate::Error;
use crate::store::{Hub, Partition};

/// Message format of an Event Hubs batch.
const BATCH_FORMAT: u32 = 0x8001_3700;

/// A producer link's destination.
pub(crate) struct ProducerLink {
    pub(crate) hub: Arc<Hub>,
    /// `Some` for `<hub>/Partitions/<id>`.
    pub(crate) partition: Option<Arc<Partition>>,
    pub(crate) max_message_bytes: usize,
    /// The connection's credentials: the link ends when its token expires unrenewed.
    pub(crate) auth: Arc<std::sync::Mutex<super::auth::ConnectionAuth>>,
    /// The entity path the link sends to, as tokens name it.
    pub(crate) entity: String,
}

fn partition_key(message: &Message<Body<Value>>) -> Option<String> {
    let annotations = message.message_annotations.as_ref()?;
    match annotations
        .0
        .get(&OwnedKey::Symbol(Symbol::from(annotations::PARTITION_KEY)))
    {
        Some(Value::String(key)) => Some(key.clone()),
        Some(Value::Symbol(key)) => Some(key.to_string()),
        _ => None,
    }
}

/// Unpacks a batch delivery into its events; a plain delivery is one event.
fn events_of(
    format: Option<u32>,
    message: Message<Body<Value>>,
) -> Result<Vec<Message<Body<Value>>>, String> {
    if format != Some(BATCH_FORMAT) {
        return Ok(vec![message]);
    }
    let Body::Data(sections) = message.body else {
        return Err("a batch message must carry its events in data sections".to_owned());
    };
    sections
        .into_iter()
        .map(|section| {
            serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(&section.0)
                .map(|Deserializable(event)| event)
                .map_err(|error| format!("an event in the batch does not decode: {error}"))
        })
        .collect()
}

impl ProducerLink {
    /// Stores the events of one delivery in one partition, all or none (a batch is atomic).
    fn store(&self, events: Vec<Message<Body<Value>>>) -> Result<(), (&'static str, String)> {
        let key = events.first().and_then(partition_key);
        let partition = match (&self.partition, &key) {
            (Some(partition), _) => partition,
            (None, Some(key)) => self.hub.partition_for_key(key),
            (None, None) => self.hub.next_round_robin(),
        };
        let keyed = events
            .into_iter()
            .map(|event| {
                let event_key = partition_key(&event).or_else(|| key.clone());
                (event, event_key)
            })
            .collect();
        partition
            .append_all(keyed, self.max_message_bytes)
            .map(drop)
            .map_err(|error| match error {
                Error::MessageTooLarge { .. } => {
                    (conditions::MESSAGE_SIZE_EXCEEDED, error.to_string())
                }
                other => ("amqp:internal-error", other.to_string()),
            })
    }

    fn authorized_until(&self) -> Option<i64> {
        self.auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .authorized_until(&self.entity)
    }

    /// Receives and stores until the producer detaches. Detaches it, as Event Hubs does, when its
    /// token expires unrenewed (`amqp:unauthorized-access`) or when the hub's producers are told to
    /// go ([`crate::RunningEmulator::detach_producers`], `amqp:link:detach-forced`).
    pub(crate) async fn run(self, mut receiver: Receiver) {
        let mut detaches = self.hub.producer_detaches();
        detaches.mark_unchanged();
        loop {
            let authorized_until = self.authorized_until();
            if authorized_until.is_some_and(|until| until <= chrono::Utc::now().timestamp()) {
                let error = link_error(
                    conditions::UNAUTHORIZED_ACCESS,
                    format!(
                        "the token for `{}` expired; put a new one on $cbs before expiry",
                        self.entity
                    ),
                );
                let _ = receiver.close_with_error(error).await;
                return;
            }
            let delivery = tokio::select! {
                () = token_expiry(authorized_until) => continue,
                delivery = receiver.recv::<Body<Value>>() => match delivery {
                    Ok(delivery) => delivery,
                    Err(error) => {
                        tracing::debug!(%error, "producer link ended");
                        break;
                    }
                },
                _ = detaches.changed() => {
                    let error = link_error(
                        "amqp:link:detach-forced",
                        "the link was force-detached by the service".to_owned(),
                    );
                    let _ = receiver.close_with_error(error).await;
                    return;
                }
            };
            let format = *delivery.message_format();
            let stored = events_of(format, delivery.message().clone())
                .map_err(|problem| (conditions::ARGUMENT_ERROR, problem))
                .and_then(|events| self.store(events));
            let settled = match stored {
                Ok(()) => receiver.accept(&delivery).await,
                Err((condition, problem)) => {
                    receiver
                        .reject(&delivery, link_error(condition, problem))
                        .await
                }
            };
            if settled.is_err() {
                break;
            }
        }
        let _ = receiver.close().await;
    }
}
