//! Producer links: `<hub>` (the emulator picks the partition) and `<hub>/Partitions/<id>`.
//!
//! A delivery is one event, or an Event Hubs batch (message format `0x80013700`) whose data sections
//! each hold one encoded event; a batch lands in a single partition and is stored all or nothing, as
//! on the service. Events are stored as sent, with their `x-opt-*` annotations stamped in place
//! (nothing else is re-encoded). A delivery is accepted once stored and rejected with an Event Hubs
//! condition otherwise. A producer link ends when its token lapses unrenewed, or when a test forces
//! it off (`RunningEmulator::detach_producers`, as the service does on maintenance).

use std::sync::Arc;

use hubroute_amqp::codec::Value;
use hubroute_amqp::message::{Body, MessageView, entries};
use hubroute_amqp::performative::BATCH_MESSAGE_FORMAT;
use hubroute_protocol::{annotations, conditions};

use super::consumer::{LinkId, Wake};
use crate::Error;
use crate::store::{Hub, Incoming, Partition};

/// A producer link's destination.
#[derive(Debug)]
pub(crate) struct Producer {
    pub(crate) hub: Arc<Hub>,
    /// `Some` for `<hub>/Partitions/<id>`.
    pub(crate) partition: Option<Arc<Partition>>,
    pub(crate) max_message_bytes: usize,
    /// The entity path, as tokens name it: the link ends when its token lapses unrenewed.
    pub(crate) entity: String,
}

/// The `x-opt-partition-key` annotation of a message.
fn partition_key<'a>(view: &MessageView<'a>) -> Option<&'a str> {
    let annotations = view.message_annotations?;
    entries(annotations).find_map(|entry| match entry {
        Ok((Value::Symbol(annotations::PARTITION_KEY), value)) => value.as_text(),
        _ => None,
    })
}

fn malformed(problem: impl std::fmt::Display) -> (&'static str, String) {
    (conditions::ARGUMENT_ERROR, problem.to_string())
}

impl Producer {
    /// Stores one delivery; on failure, the condition and description to reject it with.
    pub(crate) fn store(
        &self,
        message_format: u32,
        payload: &[u8],
    ) -> Result<(), (&'static str, String)> {
        let envelope = MessageView::parse(payload)
            .map_err(|error| malformed(format!("the message is not well-formed AMQP: {error}")))?;
        let envelope_key = partition_key(&envelope);
        let partition = match (&self.partition, envelope_key) {
            (Some(partition), _) => partition,
            (None, Some(key)) => self.hub.partition_for_key(key),
            (None, None) => self.hub.next_round_robin(),
        };
        // Each event is parsed once here; storing it reuses what the parse found.
        let events: Vec<Incoming<'_>> = if message_format == BATCH_MESSAGE_FORMAT {
            let Body::Data(sections) = envelope.body else {
                return Err(malformed(
                    "a batch message must carry its events in data sections",
                ));
            };
            sections
                .iter()
                .map(|event| {
                    let view = MessageView::parse(event).map_err(|error| {
                        malformed(format!("an event in the batch does not decode: {error}"))
                    })?;
                    let partition_key = partition_key(&view).or(envelope_key);
                    Ok(Incoming {
                        message: event,
                        view,
                        partition_key,
                    })
                })
                .collect::<Result<_, _>>()?
        } else {
            vec![Incoming {
                message: payload,
                partition_key: envelope_key,
                view: envelope,
            }]
        };
        // A batch is stored whole or refused whole, as Event Hubs does.
        partition
            .append_all(&events, self.max_message_bytes)
            .map(|_| ())
            .map_err(|error| match error {
                Error::MessageTooLarge { .. } => {
                    (conditions::MESSAGE_SIZE_EXCEEDED, error.to_string())
                }
                other => ("amqp:internal-error", other.to_string()),
            })
    }
}

/// Waits for [`Hub::detach_producers`] and asks the connection to force-detach `link`.
pub(crate) async fn watch_forced_detach(
    mut detaches: tokio::sync::watch::Receiver<u64>,
    link: LinkId,
    wake: tokio::sync::mpsc::Sender<Wake>,
) {
    if detaches.changed().await.is_ok() {
        let _ = wake
            .send(Wake::Detach(
                link,
                conditions::DETACH_FORCED,
                "the service detached the link (maintenance); attach again".to_owned(),
            ))
            .await;
    }
}
