//! The publisher task behind both AMQP sinks: packs encoded messages into deliveries, keeps up to
//! `max_in_flight` of them unsettled on one sender link, and turns outcomes into acks.
//!
//! * **Packing.** Each ticket's messages are grouped by partition key (all messages of a batch
//!   delivery share one key, which Event Hubs hashes to a partition), keeping their order within a
//!   key, and packed into batch deliveries (message format `0x80013700`, one data section per
//!   encoded message) up to the link's `max-message-size`. Without the batch format every message
//!   is a delivery of its own.
//! * **Outcomes.** A row is committed only when the delivery holding it is `accepted`. `rejected`
//!   with a condition that says the message itself is bad splits a batch in halves until the bad
//!   messages stand alone; those are failed rows (dead-lettered with the condition). Throttling
//!   and transient conditions, `released` and `modified` resend after a backoff; a refusal of the
//!   entity or the credentials reconnects, and the reconnect decides whether it is fatal.
//! * **Faults.** A lost link or connection, or a delivery unsettled for `send_timeout`, puts every
//!   unsettled delivery back at the head of the queue, in order, and reconnects after a capped
//!   exponential backoff: at-least-once, never a silent drop. Deliveries already accepted by a peer
//!   whose outcome was lost are sent again (duplicates, never gaps).
//! * **Size.** A delivery larger than the link allows is split; a single message that can never
//!   fit fails its row with the sizes in the reason, before anything is sent.
//! * **Backpressure.** New work is taken from the bounded command channel only when every packed
//!   delivery is on the wire, so memory is one ticket being packed, one waiting in the channel and
//!   `max_in_flight` deliveries.
//!
//! The task owns all of its state; nothing is shared, so there are no locks.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::link::SendError;
use fe2o3_amqp::link::delivery::{DeliveryFut, Sendable};
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::{Batch, Data, Message, MessageAnnotations, Outcome};
use fe2o3_amqp_types::primitives::{Symbol, Value};
use hubroute_protocol::{annotations, conditions};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};

use super::config::Target;
use super::connection::{Failure, Link, SERVER_BUSY_BACKOFF, condition_name, describe_error, lost};
use crate::{Ack, AckSender, Error, FailedRow, Result, Ticket};

/// Message format of a batch delivery: each data section is one encoded message.
pub(crate) const BATCH_FORMAT: u32 = 0x8001_3700;
/// The limit assumed before a link has told its own (Event Hubs Standard: 1 MiB).
const DEFAULT_MAX_MESSAGE_SIZE: u64 = 1024 * 1024;
/// The default size of packed batches: one 256 KiB AMQP frame (Event Hubs' and Service Bus's max
/// frame size) less room for the frame and transfer headers, so a batch is one transfer frame.
/// Multi-frame deliveries measured 3x slower end to end with the emulator (`eventhubs_publish`).
const DEFAULT_BATCH_BYTES: u64 = 255 * 1024;
/// Upper bound of a batch delivery's bytes besides its data sections: the message-annotations
/// section carrying `x-opt-partition-key` (descriptor, map header, key symbol, value header).
const BATCH_ENVELOPE_BYTES: u64 = 48;

/// One encoded message of a row.
#[derive(Debug)]
pub(crate) enum Payload {
    /// Encoded bytes, to become one data section of a batch delivery.
    Section(Vec<u8>),
    /// A message sent as a delivery of its own.
    Message(Box<Message<Data>>),
}

/// A row's message on its way to the publisher.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) ticket: Ticket,
    pub(crate) row: usize,
    pub(crate) key: Option<String>,
    pub(crate) payload: Payload,
}

/// What the sink asks of its publisher.
#[derive(Debug)]
pub(crate) enum Command {
    /// Deliver every event of a ticket (an empty list is acked at once).
    Publish { ticket: Ticket, events: Vec<Event> },
    /// Settle everything written so far, close the connection, answer and stop.
    Shutdown(oneshot::Sender<()>),
}

/// The encoded size of a data section holding `len` bytes: descriptor, binary header, bytes.
fn section_bytes(len: usize) -> u64 {
    let header = if len < 255 { 3 + 2 } else { 3 + 5 };
    header + len as u64
}

#[derive(Debug)]
enum Wire {
    Batch {
        sendable: Box<Sendable<Batch<Data>>>,
        /// Encoded size, exact for the sections and an upper bound for the envelope.
        size: u64,
    },
    Single(Box<Sendable<Data>>),
}

/// One delivery: the rows it settles and what goes on the wire.
#[derive(Debug)]
struct Delivery {
    rows: Vec<(Ticket, usize)>,
    wire: Wire,
}

impl Delivery {
    fn batch(key: Option<String>, rows: Vec<(Ticket, usize)>, sections: Vec<Data>) -> Self {
        let size = BATCH_ENVELOPE_BYTES
            + key.as_ref().map_or(0, |k| k.len() as u64)
            + sections
                .iter()
                .map(|s| section_bytes(s.0.len()))
                .sum::<u64>();
        let message_annotations = key.map(|key| {
            let mut map = fe2o3_amqp_types::primitives::OrderedMap::new();
            map.insert(
                OwnedKey::Symbol(Symbol::from(annotations::PARTITION_KEY)),
                Value::String(key),
            );
            MessageAnnotations(map)
        });
        let message = Message {
            header: None,
            delivery_annotations: None,
            message_annotations,
            properties: None,
            application_properties: None,
            body: Batch::new(sections),
            footer: None,
        };
        Self {
            rows,
            wire: Wire::Batch {
                sendable: Box::new(Sendable {
                    message,
                    message_format: BATCH_FORMAT,
                    settled: None,
                }),
                size,
            },
        }
    }

    fn single(row: (Ticket, usize), message: Message<Data>) -> Self {
        Self {
            rows: vec![row],
            wire: Wire::Single(Box::new(Sendable {
                message,
                message_format: 0,
                settled: None,
            })),
        }
    }

    /// The size known before sending (batches only; a single message is measured by the link).
    fn known_size(&self) -> Option<u64> {
        match &self.wire {
            Wire::Batch { size, .. } => Some(*size),
            Wire::Single(_) => None,
        }
    }

    /// Two deliveries with the first and second half of the rows; `None` for a single row.
    fn split(self) -> Result<(Self, Self), Self> {
        if self.rows.len() < 2 {
            return Err(self);
        }
        let Wire::Batch { sendable, .. } = self.wire else {
            return Err(self);
        };
        let key = partition_key_of(&sendable.message);
        let mut sections = sendable.message.body.into_inner();
        let mut rows = self.rows;
        let half = rows.len() / 2;
        let second_sections = sections.split_off(half);
        let second_rows = rows.split_off(half);
        Ok((
            Self::batch(key.clone(), rows, sections),
            Self::batch(key, second_rows, second_sections),
        ))
    }

    async fn send(
        &self,
        link: &mut Link,
    ) -> std::result::Result<DeliveryFut<std::result::Result<Outcome, SendError>>, SendError> {
        match &self.wire {
            Wire::Batch { sendable, .. } => link.sender.send_batchable_ref(&**sendable).await,
            Wire::Single(sendable) => link.sender.send_batchable_ref(&**sendable).await,
        }
    }
}

fn partition_key_of(message: &Message<Batch<Data>>) -> Option<String> {
    match message
        .message_annotations
        .as_ref()?
        .0
        .get(&OwnedKey::Symbol(Symbol::from(annotations::PARTITION_KEY)))
    {
        Some(Value::String(key)) => Some(key.clone()),
        _ => None,
    }
}

type OutcomeFuture = Pin<Box<DeliveryFut<std::result::Result<Outcome, SendError>>>>;

struct InFlight {
    delivery: Delivery,
    outcome: OutcomeFuture,
    sent_at: Instant,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("rows", &self.delivery.rows.len())
            .field("sent_at", &self.sent_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct TicketState {
    /// Rows not yet committed or failed.
    remaining: usize,
    failed: Vec<FailedRow>,
}

/// What a rejection means for the rejected delivery.
#[derive(Debug, PartialEq, Eq)]
enum Rejection {
    /// Send it again after at least this long.
    Retry(Duration),
    /// The entity or the credentials are refused: reconnect; opening decides whether it is fatal.
    Reconnect,
    /// The message itself is refused: bisect, then fail the row.
    Message,
}

fn rejection(condition: &str) -> Rejection {
    match condition {
        conditions::SERVER_BUSY => Rejection::Retry(SERVER_BUSY_BACKOFF),
        conditions::TIMEOUT
        | "com.microsoft:operation-cancelled"
        | "com.microsoft:container-close"
        | conditions::RESOURCE_LIMIT_EXCEEDED
        | "amqp:internal-error" => Rejection::Retry(Duration::ZERO),
        conditions::UNAUTHORIZED_ACCESS
        | conditions::AUTH_FAILED
        | conditions::NOT_FOUND
        | "com.microsoft:entity-disabled" => Rejection::Reconnect,
        _ => Rejection::Message,
    }
}

/// The publisher task. See the module documentation.
#[derive(Debug)]
pub(crate) struct Publisher {
    target: Arc<Target>,
    commands: mpsc::Receiver<Command>,
    acks: AckSender,
    tickets: HashMap<Ticket, TicketState>,
    /// Packed deliveries not on the wire yet (or to be sent again), in order.
    queue: VecDeque<Delivery>,
    /// Deliveries sent and unsettled, oldest first.
    in_flight: VecDeque<InFlight>,
    link: Option<Link>,
    /// Whether the current link has had a delivery accepted: a refusal on a fresh link is how a
    /// peer refuses the attach, and is fatal.
    proven: bool,
    /// Nothing is sent and no connection opened before this instant (backoff).
    paused_until: Option<Instant>,
    /// Consecutive failures since the last accepted delivery, for the backoff.
    failures: u32,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Publisher {
    pub(crate) fn new(
        target: Arc<Target>,
        commands: mpsc::Receiver<Command>,
        acks: AckSender,
    ) -> Self {
        Self {
            target,
            commands,
            acks,
            tickets: HashMap::new(),
            queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            link: None,
            proven: false,
            paused_until: None,
            failures: 0,
            shutdown: None,
        }
    }

    fn fatal(&self, operation: &'static str, problem: String) -> Error {
        Error::Amqp {
            sink: self.target.sink.clone(),
            target: self.target.describe(),
            operation,
            problem,
            retryable: false,
        }
    }

    /// Runs until shut down or the input closes; an error is fatal for the sink.
    pub(crate) async fn run(mut self) -> Result<()> {
        let result = self.serve().await;
        if let Some(link) = self.link.take() {
            link.close().await;
        }
        if let Some(reply) = self.shutdown.take() {
            let _ = reply.send(());
        }
        result
    }

    async fn serve(&mut self) -> Result<()> {
        let mut input_open = true;
        loop {
            self.pump().await?;
            if self.tickets.is_empty() && (self.shutdown.is_some() || !input_open) {
                return Ok(());
            }
            let accepting = input_open && self.shutdown.is_none() && self.queue.is_empty();
            let timeout_at = self
                .in_flight
                .front()
                .map(|f| f.sent_at + self.target.common.send_timeout);
            let resume_at = self.paused_until.filter(|_| !self.queue.is_empty());
            let renew_at = self.link.as_ref().and_then(|link| link.renew_at);
            tokio::select! {
                outcome = front_outcome(&mut self.in_flight), if !self.in_flight.is_empty() => {
                    let delivery = self.in_flight.pop_front().expect("guarded").delivery;
                    self.on_outcome(delivery, outcome).await?;
                }
                () = sleep_until_some(timeout_at), if timeout_at.is_some() => {
                    let problem = format!(
                        "no outcome within send_timeout ({:?})",
                        self.target.common.send_timeout
                    );
                    self.lose(None, Failure::Transient { problem, min_delay: Duration::ZERO })
                        .await?;
                }
                () = sleep_until_some(resume_at), if resume_at.is_some() => {
                    self.paused_until = None;
                }
                () = sleep_until_some(renew_at), if renew_at.is_some() => self.renew().await?,
                command = self.commands.recv(), if accepting => match command {
                    Some(Command::Publish { ticket, events }) => self.accept(ticket, events).await?,
                    Some(Command::Shutdown(reply)) => self.shutdown = Some(reply),
                    None => input_open = false,
                },
            }
        }
    }

    /// Connects if needed and sends queued deliveries while the in-flight window has room.
    async fn pump(&mut self) -> Result<()> {
        if self.queue.is_empty() || self.paused_until.is_some_and(|t| t > Instant::now()) {
            return Ok(());
        }
        self.paused_until = None;
        if self.link.is_none() {
            match Link::open(&self.target).await {
                Ok(link) => {
                    if self.failures > 0 {
                        tracing::info!(sink = %self.target.sink, target = %self.target.describe(),
                            "reconnected; sending again what was unsettled");
                    }
                    self.link = Some(link);
                    self.proven = false;
                }
                Err(Failure::Fatal { operation, problem }) => {
                    return Err(self.fatal(operation, problem));
                }
                Err(failure) => {
                    self.backoff(failure);
                    return Ok(());
                }
            }
        }
        while self.in_flight.len() < self.target.common.max_in_flight {
            let Some(delivery) = self.queue.pop_front() else {
                break;
            };
            let limit = self.limit();
            if let Some(size) = delivery.known_size()
                && size > limit
            {
                self.too_large(delivery, size, limit).await?;
                continue;
            }
            let link = self.link.as_mut().expect("connected above");
            let timeout = self.target.common.send_timeout;
            let Ok(sent) = tokio::time::timeout(timeout, delivery.send(link)).await else {
                let problem = format!("no link credit to send within send_timeout ({timeout:?})");
                self.lose(
                    Some(delivery),
                    Failure::Transient {
                        problem,
                        min_delay: Duration::ZERO,
                    },
                )
                .await?;
                break;
            };
            match sent {
                Ok(outcome) => self.in_flight.push_back(InFlight {
                    delivery,
                    outcome: Box::pin(outcome),
                    sent_at: Instant::now(),
                }),
                Err(SendError::MessageSizeExceeded(exceeded)) => {
                    self.too_large(delivery, exceeded.size, exceeded.max_size)
                        .await?;
                }
                Err(error) => {
                    let failure = lost(&error, self.proven);
                    self.lose(Some(delivery), failure).await?;
                    break;
                }
            }
        }
        Ok(())
    }

    /// The largest delivery allowed now: the link's and the configured limits.
    fn limit(&self) -> u64 {
        let link = self
            .link
            .as_ref()
            .and_then(|link| link.max_message_size)
            .unwrap_or(u64::MAX);
        let configured = self.target.common.max_message_size.unwrap_or(u64::MAX);
        match link.min(configured) {
            u64::MAX => DEFAULT_MAX_MESSAGE_SIZE,
            limit => limit,
        }
    }

    /// How large packed batches get: the configured `max_message_size` (default one frame,
    /// [`DEFAULT_BATCH_BYTES`]) within the link's limit. A link that allows far more (Service Bus
    /// Premium: 100 MB) does not make every batch that large, which also bounds the memory of
    /// `max_in_flight` deliveries. A single larger message still goes alone, up to the link's limit.
    fn batch_target(&self) -> u64 {
        self.target
            .common
            .max_message_size
            .unwrap_or(DEFAULT_BATCH_BYTES)
            .min(self.limit())
    }

    /// Splits an over-size delivery, or fails its one row.
    async fn too_large(&mut self, delivery: Delivery, size: u64, limit: u64) -> Result<()> {
        match delivery.split() {
            Ok((first, second)) => {
                self.queue.push_front(second);
                self.queue.push_front(first);
                Ok(())
            }
            Err(single) => {
                let reason = format!(
                    "amqp:link:message-size-exceeded: the message is {size} bytes encoded; {} \
                     accepts at most {limit} bytes per message (the link's max-message-size)",
                    self.target.describe()
                );
                tracing::warn!(sink = %self.target.sink, %reason, "dead-lettering an over-size message");
                self.settle(&single.rows, Some(&reason)).await
            }
        }
    }

    async fn on_outcome(
        &mut self,
        delivery: Delivery,
        outcome: std::result::Result<Outcome, SendError>,
    ) -> Result<()> {
        match outcome {
            Ok(Outcome::Accepted(_)) => {
                self.failures = 0;
                self.proven = true;
                self.settle(&delivery.rows, None).await
            }
            Ok(Outcome::Rejected(rejected)) => {
                let (condition, reason) = rejected.error.as_ref().map_or_else(
                    || (String::new(), "rejected without an error".to_owned()),
                    |error| (condition_name(&error.condition), describe_error(error)),
                );
                match rejection(&condition) {
                    Rejection::Retry(min_delay) => {
                        self.queue.push_front(delivery);
                        self.backoff(Failure::Transient {
                            problem: format!("a delivery was rejected ({reason}); retrying"),
                            min_delay,
                        });
                        Ok(())
                    }
                    Rejection::Reconnect if !self.proven => {
                        Err(self.fatal("sending the first delivery", reason))
                    }
                    Rejection::Reconnect => {
                        self.lose(
                            Some(delivery),
                            Failure::Transient {
                                problem: format!("a delivery was rejected ({reason})"),
                                min_delay: Duration::ZERO,
                            },
                        )
                        .await
                    }
                    Rejection::Message => match delivery.split() {
                        Ok((first, second)) => {
                            self.queue.push_front(second);
                            self.queue.push_front(first);
                            Ok(())
                        }
                        Err(single) => {
                            let reason =
                                format!("rejected by {}: {reason}", self.target.describe());
                            tracing::warn!(sink = %self.target.sink, %reason, "dead-lettering a rejected message");
                            self.settle(&single.rows, Some(&reason)).await
                        }
                    },
                }
            }
            Ok(Outcome::Released(_) | Outcome::Modified(_)) => {
                self.queue.push_front(delivery);
                self.backoff(Failure::Transient {
                    problem: "a delivery was released unprocessed; retrying".to_owned(),
                    min_delay: Duration::ZERO,
                });
                Ok(())
            }
            Err(error) => {
                let failure = lost(&error, self.proven);
                self.lose(Some(delivery), failure).await
            }
        }
    }

    /// The connection is gone (or must go): every unsettled delivery is queued again ahead of the
    /// rest, `first` (the one that noticed) ahead of all, in the original order. A fatal failure
    /// stops the sink instead.
    async fn lose(&mut self, first: Option<Delivery>, failure: Failure) -> Result<()> {
        let mut resend: VecDeque<Delivery> = first.into_iter().collect();
        resend.extend(self.in_flight.drain(..).map(|f| f.delivery));
        resend.extend(self.queue.drain(..));
        self.queue = resend;
        if let Some(link) = self.link.take() {
            tokio::spawn(link.close());
        }
        if let Failure::Fatal { operation, problem } = failure {
            return Err(self.fatal(operation, problem));
        }
        self.backoff(failure);
        Ok(())
    }

    /// Pauses sending after a transient failure (a fatal one never gets here).
    fn backoff(&mut self, failure: Failure) {
        let (problem, min_delay) = match failure {
            Failure::Transient { problem, min_delay } => (problem, min_delay),
            Failure::Fatal { operation, problem } => {
                (format!("{operation}: {problem}"), Duration::ZERO)
            }
        };
        let delay = self
            .target
            .common
            .retry
            .delay(self.failures, None)
            .max(min_delay);
        self.failures = self.failures.saturating_add(1);
        self.paused_until = Some(Instant::now() + delay);
        tracing::warn!(
            sink = %self.target.sink,
            target = %self.target.describe(),
            %problem,
            ?delay,
            unsettled = self.queue.len(),
            "AMQP delivery failed; retrying"
        );
    }

    async fn renew(&mut self) -> Result<()> {
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        match link.renew_token(&self.target).await {
            Ok(()) => Ok(()),
            Err(Failure::Fatal { operation, problem }) => Err(self.fatal(operation, problem)),
            Err(failure) => self.lose(None, failure).await,
        }
    }

    /// Registers a ticket and packs its events.
    async fn accept(&mut self, ticket: Ticket, events: Vec<Event>) -> Result<()> {
        if events.is_empty() {
            return self.send_ack(ticket, Vec::new()).await;
        }
        self.tickets.insert(
            ticket,
            TicketState {
                remaining: events.len(),
                failed: Vec::new(),
            },
        );
        let mut groups: Vec<(Option<String>, Vec<Event>)> = Vec::new();
        let mut index: HashMap<Option<String>, usize> = HashMap::new();
        for event in events {
            let slot = match index.get(&event.key) {
                Some(&slot) => slot,
                None => {
                    groups.push((event.key.clone(), Vec::new()));
                    index.insert(event.key.clone(), groups.len() - 1);
                    groups.len() - 1
                }
            };
            groups[slot].1.push(event);
        }
        let limit = self.batch_target();
        for (key, events) in groups {
            let mut rows = Vec::new();
            let mut sections = Vec::new();
            let mut size = BATCH_ENVELOPE_BYTES + key.as_ref().map_or(0, |k| k.len() as u64);
            for event in events {
                match event.payload {
                    Payload::Message(message) => self
                        .queue
                        .push_back(Delivery::single((event.ticket, event.row), *message)),
                    Payload::Section(bytes) => {
                        let added = section_bytes(bytes.len());
                        if !rows.is_empty() && size + added > limit {
                            self.queue.push_back(Delivery::batch(
                                key.clone(),
                                std::mem::take(&mut rows),
                                std::mem::take(&mut sections),
                            ));
                            size =
                                BATCH_ENVELOPE_BYTES + key.as_ref().map_or(0, |k| k.len() as u64);
                        }
                        size += added;
                        rows.push((event.ticket, event.row));
                        sections.push(Data(bytes.into()));
                    }
                }
            }
            if !rows.is_empty() {
                self.queue.push_back(Delivery::batch(key, rows, sections));
            }
        }
        Ok(())
    }

    /// Marks `rows` committed (`failure` is `None`) or failed, acking tickets that are complete.
    async fn settle(&mut self, rows: &[(Ticket, usize)], failure: Option<&str>) -> Result<()> {
        for &(ticket, row) in rows {
            let Some(state) = self.tickets.get_mut(&ticket) else {
                continue;
            };
            if let Some(error) = failure {
                state.failed.push(FailedRow {
                    row,
                    error: error.to_owned(),
                });
            }
            state.remaining -= 1;
            if state.remaining == 0 {
                let mut done = self.tickets.remove(&ticket).unwrap_or_default();
                done.failed.sort_by_key(|f| f.row);
                self.send_ack(ticket, done.failed).await?;
            }
        }
        Ok(())
    }

    async fn send_ack(&self, ticket: Ticket, failed: Vec<FailedRow>) -> Result<()> {
        self.acks
            .send(Ack {
                ticket,
                failed,
                failed_rows: None,
                surrendered: false,
            })
            .await
            .map_err(|_| Error::AcksClosed {
                sink: self.target.sink.clone(),
            })
    }
}

/// The outcome of the oldest in-flight delivery. Cancel-safe: it only polls a pinned future.
fn front_outcome(
    in_flight: &mut VecDeque<InFlight>,
) -> impl Future<Output = std::result::Result<Outcome, SendError>> + '_ {
    std::future::poll_fn(move |cx| match in_flight.front_mut() {
        Some(front) => front.outcome.as_mut().poll(cx),
        None => std::task::Poll::Pending,
    })
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_classified() {
        let cases = [
            (
                "com.microsoft:server-busy",
                Rejection::Retry(SERVER_BUSY_BACKOFF),
            ),
            ("com.microsoft:timeout", Rejection::Retry(Duration::ZERO)),
            (
                "amqp:resource-limit-exceeded",
                Rejection::Retry(Duration::ZERO),
            ),
            ("amqp:unauthorized-access", Rejection::Reconnect),
            ("amqp:not-found", Rejection::Reconnect),
            ("amqp:link:message-size-exceeded", Rejection::Message),
            ("com.microsoft:argument-error", Rejection::Message),
            ("amqp:decode-error", Rejection::Message),
            ("x-vendor:anything-else", Rejection::Message),
        ];
        for (condition, expected) in cases {
            assert_eq!(rejection(condition), expected, "{condition}");
        }
    }

    #[test]
    fn section_sizes_match_the_encoding() {
        for len in [0, 1, 254, 255, 256, 70_000] {
            let encoded = serde_amqp::to_vec(&Data(vec![7u8; len].into())).unwrap();
            assert_eq!(section_bytes(len), encoded.len() as u64, "{len} bytes");
        }
    }

    #[test]
    fn a_batch_splits_in_halves_keeping_order_and_key() {
        let rows: Vec<(Ticket, usize)> = (0..5).map(|r| (1, r)).collect();
        let sections = (0..5u8).map(|i| Data(vec![i; 10].into())).collect();
        let delivery = Delivery::batch(Some("k".into()), rows, sections);
        let (first, second) = delivery.split().expect("five rows split");
        assert_eq!(first.rows, [(1, 0), (1, 1)]);
        assert_eq!(second.rows, [(1, 2), (1, 3), (1, 4)]);
        for half in [&first, &second] {
            let Wire::Batch { sendable, .. } = &half.wire else {
                panic!("a batch")
            };
            assert_eq!(partition_key_of(&sendable.message).as_deref(), Some("k"));
            assert_eq!(sendable.message_format, BATCH_FORMAT);
        }
        let single = Delivery::batch(None, vec![(1, 0)], vec![Data(vec![0].into())]);
        assert!(single.split().is_err(), "one row cannot split");
    }

    #[test]
    fn the_envelope_bound_covers_the_encoded_batch() {
        let key = "k".repeat(128);
        let sections: Vec<Data> = (0..3).map(|_| Data(vec![1u8; 300].into())).collect();
        let delivery = Delivery::batch(Some(key), vec![(0, 0), (0, 1), (0, 2)], sections);
        let Wire::Batch { sendable, size } = &delivery.wire else {
            panic!("a batch")
        };
        let encoded = serde_amqp::to_vec(
            &fe2o3_amqp_types::messaging::message::__private::Serializable(&sendable.message),
        )
        .unwrap();
        assert!(
            encoded.len() as u64 <= *size,
            "{} encoded bytes, {size} estimated",
            encoded.len()
        );
        assert!(*size - encoded.len() as u64 <= BATCH_ENVELOPE_BYTES);
    }
}
