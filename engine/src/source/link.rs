//! The data plane of one partition: an AMQP connection of its own (TLS or plain, SASL ANONYMOUS),
//! claims-based security on `$cbs` with renewal, and one receiving link with the Event Hubs start
//! filter and owner level, all on `hubroute_amqp`'s single-task client.
//!
//! One connection per partition keeps faults (a stolen link, a dropped connection) and reconnects
//! per partition and lets partitions decode on different cores. The link's deliveries are requested
//! pre-settled (what the SDKs call settle-on-send): Event Hubs receivers never send dispositions.
//! A renewed token goes out on the same `$cbs` link pair; its answer arrives among the deliveries
//! and is checked there, so renewal never pauses reading.

use std::time::Duration;

use bytes::Bytes;
use fe2o3_amqp_types::definitions::{ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp_types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp_types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties, Source, Target,
    TargetArchetype,
};
use fe2o3_amqp_types::performatives::Attach;
use fe2o3_amqp_types::primitives::{SimpleValue, Symbol, Timestamp, Value};
use hubroute_amqp::{ClientConfig, ClientConnection, Event, SaslCredentials};
use hubroute_protocol::address::EntityAddress;
use hubroute_protocol::{EventPosition, cbs, link, management};
use serde_amqp::described::Described;
use serde_amqp::descriptor::Descriptor;
use tokio::time::Instant;

use super::SourceConfig;
use super::credentials::{Credentials, connect_error};
use super::fault::Fault;
use crate::Error;

/// How long opening the transport, SASL, the AMQP handshake, the first token and the attach may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// The idle timeout announced to the service: it must send at least a heartbeat this often.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest frame accepted (Event Hubs sends at most 256 KiB).
const MAX_FRAME_SIZE: u32 = 1024 * 1024;

/// What arrived for the partition.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// An event, as encoded by the service.
    Event(Bytes),
}

/// The `$cbs` request/response link pair.
#[derive(Debug)]
struct Cbs {
    sender: u32,
    receiver: u32,
    reply_to: String,
}

/// A connected, authorised partition receiver.
#[derive(Debug)]
pub(crate) struct PartitionLink {
    connection: ClientConnection,
    credentials: Credentials,
    audience: String,
    partition: String,
    cbs: Cbs,
    data: u32,
    /// When the token must be renewed; `None` for a given signature.
    pub(crate) renew_at: Option<Instant>,
}

fn wire_fault(partition: &str, error: &hubroute_amqp::Error) -> Fault {
    Fault::from_wire(partition, error)
}

impl PartitionLink {
    /// Connects, authorises and attaches to `partition` at `position`.
    pub(crate) async fn open(
        config: &SourceConfig,
        event_hub: &str,
        partition: &str,
        position: &EventPosition,
    ) -> Result<Self, Fault> {
        let opening = Self::connect(config, event_hub, partition, position);
        match tokio::time::timeout(OPEN_TIMEOUT, opening).await {
            Ok(result) => result,
            Err(_) => Err(Fault::from_error(connect_error(
                config,
                format!("no AMQP handshake and attach within {OPEN_TIMEOUT:?}"),
            ))),
        }
    }

    async fn connect(
        config: &SourceConfig,
        event_hub: &str,
        partition: &str,
        position: &EventPosition,
    ) -> Result<Self, Fault> {
        let connection_string = config.event_hubs().map_err(Fault::from_error)?;
        let credentials = Credentials::new(config).map_err(Fault::from_error)?;
        let stream = super::transport::open_stream(connection_string, config)
            .await
            .map_err(Fault::from_error)?;
        let client = ClientConfig {
            container_id: format!("hubroute-{}", uuid::Uuid::new_v4().simple()),
            hostname: connection_string.host.clone(),
            sasl: SaslCredentials::Anonymous,
            max_frame_size: MAX_FRAME_SIZE,
            idle_timeout: IDLE_TIMEOUT,
        };
        let mut connection = ClientConnection::open(stream, &client)
            .await
            .map_err(|error| match error {
                hubroute_amqp::Error::Refused { .. } => wire_fault(partition, &error),
                other => {
                    Fault::from_error(connect_error(config, format!("AMQP open failed: {other}")))
                }
            })?;
        let reply_to = format!("cbs-{}", uuid::Uuid::new_v4().simple());
        let (sender, _) = connection
            .attach(request_link(&reply_to, Role::Sender))
            .await
            .map_err(|error| wire_fault(partition, &error))?;
        let (receiver, _) = connection
            .attach(request_link(&reply_to, Role::Receiver))
            .await
            .map_err(|error| wire_fault(partition, &error))?;
        connection.grant(receiver, 8);
        let mut link = Self {
            connection,
            credentials,
            audience: connection_string.audience(event_hub),
            partition: partition.to_owned(),
            cbs: Cbs {
                sender,
                receiver,
                reply_to,
            },
            data: u32::MAX,
            renew_at: None,
        };
        link.put_token().await?;
        let address = EntityAddress::ConsumerPartition {
            hub: event_hub.to_owned(),
            consumer_group: config.consumer_group.clone(),
            partition: partition.to_owned(),
        };
        let name = format!("hubroute-{partition}-{}", uuid::Uuid::new_v4().simple());
        let (data, _) = link
            .connection
            .attach(receive_link(
                &name,
                &address.to_string(),
                position,
                config.owner_level,
            ))
            .await
            .map_err(|error| wire_fault(partition, &error))?;
        link.data = data;
        Ok(link)
    }

    /// Sends a token and waits for the service's answer (at connect time, before the partition
    /// link exists, so every event read meanwhile is a control event).
    async fn put_token(&mut self) -> Result<(), Fault> {
        loop {
            self.drain_control()?;
            if self.try_send_token()? {
                break;
            }
            self.fill().await?;
        }
        self.flush().await?;
        loop {
            while let Some(event) = self
                .connection
                .next_event()
                .map_err(|error| wire_fault(&self.partition, &error))?
            {
                if let Event::Delivery(delivery) = &event
                    && delivery.handle == self.cbs.receiver
                {
                    return self.check_token_answer(&delivery.payload);
                }
                self.check_control(event)?;
            }
            self.fill().await?;
        }
    }

    fn drain_control(&mut self) -> Result<(), Fault> {
        while let Some(event) = self
            .connection
            .next_event()
            .map_err(|error| wire_fault(&self.partition, &error))?
        {
            self.check_control(event)?;
        }
        Ok(())
    }

    /// Queues a put-token request if the service granted credit on `$cbs`; false if it has not yet.
    fn try_send_token(&mut self) -> Result<bool, Fault> {
        if self.connection.credit(self.cbs.sender) == 0 {
            return Ok(false);
        }
        let (token, renew_at) = self
            .credentials
            .token(&self.audience)
            .map_err(Fault::from_error)?;
        let request = Message {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(Properties {
                message_id: Some(MessageId::String(uuid::Uuid::new_v4().to_string())),
                reply_to: Some(self.cbs.reply_to.clone()),
                ..Properties::default()
            }),
            application_properties: Some(
                ApplicationProperties::builder()
                    .insert(management::OPERATION, cbs::PUT_TOKEN)
                    .insert(management::TYPE, cbs::SAS_TOKEN_TYPE)
                    .insert(management::NAME, self.audience.as_str())
                    .insert(
                        cbs::EXPIRATION,
                        SimpleValue::Timestamp(Timestamp::from_milliseconds(
                            token.expiry.saturating_mul(1000),
                        )),
                    )
                    .build(),
            ),
            body: AmqpValue(token.as_str().to_owned()),
            footer: None,
        };
        let payload = serde_amqp::to_vec(&Serializable(request))
            .expect("a put-token request always serialises");
        self.connection
            .send(self.cbs.sender, &payload, false)
            .map_err(|error| wire_fault(&self.partition, &error))?;
        self.renew_at = renew_at;
        Ok(true)
    }

    /// Renews the token; the answer is checked when it arrives (see [`PartitionLink::next`]). With
    /// no credit on `$cbs` yet, it tries again a second later.
    pub(crate) async fn renew(&mut self) -> Result<(), Fault> {
        if !self.try_send_token()? {
            self.renew_at = Some(Instant::now() + Duration::from_secs(1));
        }
        self.flush().await
    }

    fn check_token_answer(&self, payload: &[u8]) -> Result<(), Fault> {
        let unauthorized = |problem: String| {
            Fault::Fatal(Error::Unauthorized {
                audience: self.audience.clone(),
                problem,
            })
        };
        let Deserializable(answer): Deserializable<Message<Body<Value>>> =
            serde_amqp::from_slice(payload).map_err(|error| {
                unauthorized(format!("an undecodable put-token answer: {error}"))
            })?;
        let properties = answer.application_properties.unwrap_or_default();
        let field = |names: [&str; 2]| names.iter().find_map(|name| properties.0.get(*name));
        let status = match field([management::STATUS_CODE, "statusCode"]) {
            Some(SimpleValue::Int(code)) => i64::from(*code),
            Some(SimpleValue::Long(code)) => *code,
            Some(SimpleValue::Uint(code)) => i64::from(*code),
            other => return Err(unauthorized(format!("put-token answered status {other:?}"))),
        };
        if matches!(status, 200 | 202) {
            return Ok(());
        }
        let description = match field([management::STATUS_DESCRIPTION, "statusDescription"]) {
            Some(SimpleValue::String(text)) => format!(" ({text})"),
            _ => String::new(),
        };
        Err(unauthorized(format!(
            "put-token returned status {status}{description}"
        )))
    }

    /// Handles an event that is not a data delivery.
    fn check_control(&mut self, event: Event) -> Result<(), Fault> {
        match event {
            Event::Detached { handle, error, .. } => Err(match error {
                Some(error) => Fault::from_amqp(&self.partition, &error),
                None => Fault::from_wire(
                    &self.partition,
                    &hubroute_amqp::Error::Refused {
                        what: if handle == self.data {
                            "the partition link".to_owned()
                        } else {
                            "the $cbs link".to_owned()
                        },
                        condition: None,
                        description: Some("detached by the service".to_owned()),
                    },
                ),
            }),
            Event::Delivery(delivery) if delivery.handle == self.cbs.receiver => {
                self.connection.grant(self.cbs.receiver, 8);
                self.check_token_answer(&delivery.payload)
            }
            Event::Delivery(_) | Event::Flow { .. } | Event::Disposition(_) => Ok(()),
        }
    }

    /// The next event already read, or `None` when [`PartitionLink::fill`] must read more.
    pub(crate) fn next(&mut self) -> Result<Option<Incoming>, Fault> {
        while let Some(event) = self
            .connection
            .next_event()
            .map_err(|error| wire_fault(&self.partition, &error))?
        {
            match event {
                Event::Delivery(delivery) if delivery.handle == self.data => {
                    return Ok(Some(Incoming::Event(delivery.payload)));
                }
                other => self.check_control(other)?,
            }
        }
        Ok(None)
    }

    /// Reads more from the service. Cancel-safe.
    pub(crate) async fn fill(&mut self) -> Result<(), Fault> {
        self.connection
            .fill()
            .await
            .map_err(|error| wire_fault(&self.partition, &error))
    }

    /// Writes what is queued (credit, heartbeats, token requests).
    pub(crate) async fn flush(&mut self) -> Result<(), Fault> {
        self.connection
            .flush()
            .await
            .map_err(|error| wire_fault(&self.partition, &error))
    }

    /// Events the service may still send before this side grants more.
    pub(crate) fn outstanding_credit(&self) -> u32 {
        self.connection.credit(self.data)
    }

    /// Grants `credit` events (replacing what is outstanding).
    pub(crate) fn grant(&mut self, credit: u32) {
        self.connection.grant(self.data, credit);
    }

    /// When a heartbeat must be sent if nothing else is.
    pub(crate) fn heartbeat_due(&self) -> Option<Instant> {
        self.connection.heartbeat_due()
    }

    /// Queues a heartbeat.
    pub(crate) fn heartbeat(&mut self) {
        self.connection.heartbeat();
    }

    /// Detaches and closes politely, giving up after a while: errors are irrelevant at that point
    /// and a dead peer must not stall a reconnect.
    pub(crate) async fn close(mut self) {
        let closing = async {
            self.connection.detach(self.data, true, None);
            let _ = self.connection.close().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
    }
}

/// One end of the `$cbs` request/response pair.
fn request_link(reply_to: &str, role: Role) -> Attach {
    let node = Some(cbs::NODE.to_owned());
    let client = Some(reply_to.to_owned());
    let sender = role == Role::Sender;
    let (source, target) = if sender {
        (client, node)
    } else {
        (node, client)
    };
    Attach {
        name: format!("{reply_to}-{}", if sender { "tx" } else { "rx" }),
        handle: 0.into(),
        role,
        snd_settle_mode: SenderSettleMode::Unsettled,
        rcv_settle_mode: ReceiverSettleMode::First,
        source: Some(Box::new(Source {
            address: source,
            ..Source::default()
        })),
        target: Some(Box::new(TargetArchetype::Target(Target {
            address: target,
            ..Target::default()
        }))),
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: sender.then_some(0),
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}

/// The receiving link of a partition: its address, the start filter and the owner level.
fn receive_link(
    name: &str,
    address: &str,
    position: &EventPosition,
    owner_level: Option<i64>,
) -> Attach {
    let filter = Described {
        descriptor: Descriptor::Code(link::SELECTOR_FILTER_CODE),
        value: Value::String(position.to_filter_expression()),
    };
    let source = Source::builder()
        .address(address.to_owned())
        .add_to_filter(Symbol::from(link::SELECTOR_FILTER_KEY), filter)
        .build();
    let properties = owner_level.map(|level| {
        let mut fields = fe2o3_amqp_types::definitions::Fields::new();
        fields.insert(Symbol::from(link::EPOCH), Value::Long(level));
        fields
    });
    Attach {
        name: name.to_owned(),
        handle: 0.into(),
        role: Role::Receiver,
        snd_settle_mode: SenderSettleMode::Settled,
        rcv_settle_mode: ReceiverSettleMode::First,
        source: Some(Box::new(source)),
        target: Some(Box::new(TargetArchetype::Target(Target {
            address: Some(name.to_owned()),
            ..Target::default()
        }))),
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: None,
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties,
    }
}
