//! Publishing to AMQP 1.0 entities: `type = "eventhubs"` (an event hub, as IoT Hub's Event Hubs
//! endpoint) and `type = "servicebus"` (a Service Bus queue or topic, as IoT Hub's Service Bus
//! endpoints, or any AMQP 1.0 broker's queue).
//!
//! Both are one [`AmqpSink`]: `write` encodes each row into the message IoT Hub would publish
//! (`encode`, on the caller's task: CPU work stays off the I/O task) and hands the ticket to the
//! `publisher` task, which owns the connection (`connection`), packs batches, keeps deliveries
//! unsettled until the peer's outcome and acks tickets. A row is committed when the delivery holding
//! it is `accepted`. The sink is not idempotent: after a lost outcome or a replay, the target
//! receives a message again (Event Hubs and IoT Hub's Service Bus endpoints have no deduplication),
//! so consumers dedupe on `message-id`, as behind IoT Hub.

mod config;
mod connection;
mod encode;
mod publisher;

use std::sync::Arc;

use async_trait::async_trait;
use hubroute_message::MessageColumns;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use config::{
    EventHubsSinkConfig, PartitionKey, ServiceBusSinkConfig, SystemPropertyPlacement,
};

use self::config::Target;
use self::connection::{Failure, Link};
use self::encode::{Encoder, Mapping, decode};
use self::publisher::{Command, Event, Payload, Publisher};
use crate::{AckSender, Error, FlushReason, Result, Sink, SinkBatch};

/// Publishes routed messages to an event hub, a Service Bus entity or an AMQP 1.0 queue. See the
/// module documentation.
#[derive(Debug)]
pub struct AmqpSink {
    name: String,
    /// `amqp[s]://host:port/address`, for errors.
    target: String,
    mapping: Mapping,
    encoder: Encoder,
    batch_format: bool,
    /// Bounded to one ticket: `write` waits while the publisher is busy (backpressure).
    commands: mpsc::Sender<Command>,
    /// The publisher; `None` once its result has been taken.
    task: Option<JoinHandle<Result<()>>>,
}

impl AmqpSink {
    /// Validates `config` and starts the publisher (it connects when the first batch arrives).
    /// Must be called inside a Tokio runtime.
    pub fn event_hubs(config: &EventHubsSinkConfig, acks: AckSender) -> Result<Self> {
        Ok(Self::start(config.target()?, acks))
    }

    /// Validates `config` and starts the publisher (it connects when the first batch arrives).
    /// Must be called inside a Tokio runtime.
    pub fn service_bus(config: &ServiceBusSinkConfig, acks: AckSender) -> Result<Self> {
        Ok(Self::start(config.target()?, acks))
    }

    /// Whether the event hub takes messages (see [`crate::probe`] and [`probe`]).
    pub(crate) async fn probe_event_hubs(config: &EventHubsSinkConfig) -> Result<()> {
        probe(&config.target()?).await
    }

    /// Whether the Service Bus entity or queue takes messages (see [`crate::probe`] and [`probe`]).
    pub(crate) async fn probe_service_bus(config: &ServiceBusSinkConfig) -> Result<()> {
        probe(&config.target()?).await
    }

    fn start(target: Target, acks: AckSender) -> Self {
        let (commands, input) = mpsc::channel(1);
        let mapping = Mapping::of(&target);
        let name = target.sink.clone();
        let described = target.describe();
        let batch_format = target.batch_format;
        let task = tokio::spawn(Publisher::new(Arc::new(target), input, acks).run());
        Self {
            name,
            target: described,
            mapping,
            encoder: Encoder::default(),
            batch_format,
            commands,
            task: Some(task),
        }
    }

    /// The error that stopped the publisher (it only stops early on a fatal error).
    async fn failure(&mut self) -> Error {
        let stopped = || Error::Amqp {
            sink: self.name.clone(),
            target: self.target.clone(),
            operation: "publishing",
            problem: "the publisher has stopped".to_owned(),
            retryable: false,
        };
        match self.task.take() {
            Some(task) => match task.await {
                Ok(Err(error)) => error,
                Ok(Ok(())) => stopped(),
                Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                Err(_) => stopped(),
            },
            None => stopped(),
        }
    }
}

/// Opens a connection to `target` as the publisher does (TLS, SASL, a CBS token for Event Hubs
/// and Service Bus), attaches a sender link to the entity, gives the peer a moment to refuse it
/// and closes it all again: no message is sent. A refused credential or an unknown entity is reported as such (not retryable), anything
/// else (connection refused, timeouts, a busy server) as retryable.
async fn probe(target: &Target) -> Result<()> {
    match Link::probe(target).await {
        Ok(()) => Ok(()),
        Err(Failure::Fatal { operation, problem }) => Err(Error::Amqp {
            sink: target.sink.clone(),
            target: target.describe(),
            operation,
            problem,
            retryable: false,
        }),
        Err(Failure::Transient { problem, .. }) => Err(Error::Amqp {
            sink: target.sink.clone(),
            target: target.describe(),
            operation: "probe (connect, authenticate, attach the sender)",
            problem,
            retryable: true,
        }),
    }
}

#[async_trait]
impl Sink for AmqpSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn idempotent(&self) -> bool {
        false
    }

    async fn write(&mut self, batch: SinkBatch) -> Result<()> {
        let SinkBatch { ticket, batch } = batch;
        let view = MessageColumns::try_new(&batch)?;
        let events = (0..view.len())
            .map(|row| {
                let key = self.mapping.partition_key(&view, row);
                let mut encoded = Vec::with_capacity(256 + view.body.value(row).len());
                self.mapping
                    .encode(&mut self.encoder, &view, row, key.as_deref(), &mut encoded);
                let payload = if self.batch_format {
                    Payload::Section(encoded)
                } else {
                    Payload::Message(Box::new(decode(&encoded)))
                };
                Event {
                    ticket,
                    row,
                    key,
                    payload,
                }
            })
            .collect();
        if self
            .commands
            .send(Command::Publish { ticket, events })
            .await
            .is_err()
        {
            return Err(self.failure().await);
        }
        Ok(())
    }

    fn flush_deadline(&self) -> Option<Instant> {
        None
    }

    async fn flush(&mut self, reason: FlushReason) -> Result<()> {
        if reason == FlushReason::Deadline {
            return Ok(());
        }
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Shutdown(reply)).await.is_err() || done.await.is_err() {
            return Err(self.failure().await);
        }
        match self.task.take() {
            Some(task) => match task.await {
                Ok(result) => result,
                Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                Err(_) => Ok(()),
            },
            None => Ok(()),
        }
    }

    async fn stopped(&mut self) -> Error {
        match self.task.as_mut() {
            Some(task) => {
                let outcome = task.await;
                self.task = None;
                match outcome {
                    Ok(Err(error)) => error,
                    Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                    Ok(Ok(())) | Err(_) => std::future::pending().await,
                }
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests;
