//! Producer links: `<hub>` (the emulator picks the partition) and `<hub>/Partitions/<id>`.
//!
//! A delivery is one event, or an Event Hubs batch (message format `0x80013700`) whose data sections
//! each hold one encoded event; a batch lands in a single partition, as on the service. Deliveries are
//! accepted once stored and rejected with an Event Hubs condition otherwise.

use std::sync::Arc;

use fe2o3_amqp::link::Receiver;
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::message::__private::Deserializable;
use fe2o3_amqp_types::messaging::{Body, Message};
use fe2o3_amqp_types::primitives::{Symbol, Value};
use hubroute_protocol::{annotations, conditions};

use super::consumer::link_error;
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
    fn store(&self, events: Vec<Message<Body<Value>>>) -> Result<(), (&'static str, String)> {
        let key = events.first().and_then(partition_key);
        let partition = match (&self.partition, &key) {
            (Some(partition), _) => partition,
            (None, Some(key)) => self.hub.partition_for_key(key),
            (None, None) => self.hub.next_round_robin(),
        };
        for event in events {
            let key = partition_key(&event).or_else(|| key.clone());
            partition
                .append(event, key.as_deref(), self.max_message_bytes)
                .map_err(|error| match error {
                    Error::MessageTooLarge { .. } => {
                        (conditions::MESSAGE_SIZE_EXCEEDED, error.to_string())
                    }
                    other => ("amqp:internal-error", other.to_string()),
                })?;
        }
        Ok(())
    }

    /// Receives and stores until the producer detaches.
    pub(crate) async fn run(self, mut receiver: Receiver) {
        loop {
            let delivery = match receiver.recv::<Body<Value>>().await {
                Ok(delivery) => delivery,
                Err(error) => {
                    tracing::debug!(%error, "producer link ended");
                    break;
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
