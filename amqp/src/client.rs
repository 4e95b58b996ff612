//! A client connection with one session, driven by its owner's task: the engine's partition
//! receivers use it to read an Event Hubs partition.
//!
//! There are no background tasks and no channels. The owner calls [`ClientConnection::fill`] to read
//! (cancel-safe, so it sits in a `select!` beside timers and shutdown), drains
//! [`ClientConnection::next_event`] synchronously, and calls [`ClientConnection::flush`] to write
//! what the events queued (flows, heartbeats, requests) in one system call. A transfer's payload
//! comes out as a slice of the read buffer; only a message split over several frames is copied, to
//! join its parts. Per message this costs a frame header, a hand-decoded transfer and a few counter
//! updates, against fe2o3-amqp's per-frame hops through three tasks and an owned decode.
//!
//! Flow control follows part 2, section 2.6.7: the session's incoming window is topped up before it
//! runs out, and a receiving link gets credit only when its owner asks ([`ClientConnection::grant`]),
//! which is how the engine turns a full downstream queue into backpressure on the service.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fe2o3_amqp_types::definitions::{self, Role};
use fe2o3_amqp_types::performatives::{Attach, Begin, Close, Detach, Disposition, End, Open};
use fe2o3_amqp_types::primitives::{Binary, Symbol};
use fe2o3_amqp_types::sasl::{SaslCode, SaslInit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::frame::{AMQP_HEADER, FrameBuffer, MIN_MAX_FRAME_SIZE, SASL_HEADER, put_heartbeat};
use crate::performative::{
    FlowState, Performative, Sasl, TransferHeader, put_flow, put_performative, put_sasl,
    put_transfer,
};
use crate::transport::Stream;
use crate::{Error, Result};

/// The session's incoming window: transfers the peer may send before the next session flow. It is
/// restored once half of it is used.
const INCOMING_WINDOW: u32 = 65_536;
/// The outgoing window this side announces (it sends few transfers).
const OUTGOING_WINDOW: u32 = 2_048;

/// How to authenticate.
#[derive(Clone)]
pub enum SaslCredentials {
    /// SASL ANONYMOUS (Event Hubs then expects a CBS token).
    Anonymous,
    /// SASL PLAIN with a user name and password.
    Plain {
        /// The user name.
        username: String,
        /// The password (a key or token; never logged).
        password: String,
    },
}

impl std::fmt::Debug for SaslCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SaslCredentials::Anonymous => f.write_str("Anonymous"),
            SaslCredentials::Plain { username, .. } => f
                .debug_struct("Plain")
                .field("username", username)
                .field("password", &"***")
                .finish(),
        }
    }
}

/// What a client announces when it opens a connection.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The container id.
    pub container_id: String,
    /// The host name put in SASL init and Open (for virtual hosting and TLS).
    pub hostname: String,
    /// Authentication.
    pub sasl: SaslCredentials,
    /// The largest frame this side accepts.
    pub max_frame_size: u32,
    /// The idle timeout announced to the peer: it must send something at least this often.
    pub idle_timeout: Duration,
}

/// A complete delivery on a receiving link.
#[derive(Debug)]
pub struct Delivery {
    /// The local handle of the link it arrived on.
    pub handle: u32,
    /// Its delivery id.
    pub delivery_id: u32,
    /// Whether the sender settled it.
    pub settled: bool,
    /// The message format.
    pub message_format: u32,
    /// The encoded message.
    pub payload: Bytes,
}

/// Something the peer did.
#[derive(Debug)]
pub enum Event {
    /// A message arrived.
    Delivery(Delivery),
    /// The peer changed a link's flow state (its credit for our sending link, for example).
    Flow {
        /// The local handle.
        handle: u32,
    },
    /// The peer settled or changed the state of deliveries.
    Disposition(Disposition),
    /// The peer detached a link (it has been answered if it was not ours to detach).
    Detached {
        /// The local handle.
        handle: u32,
        /// Whether the link was closed rather than only detached.
        closed: bool,
        /// The peer's reason.
        error: Option<definitions::Error>,
    },
}

#[derive(Debug)]
struct Link {
    name: String,
    role: Role,
    remote_handle: Option<u32>,
    /// Deliveries sent (sender) or received (receiver) so far.
    delivery_count: u32,
    /// Receiver: credit outstanding. Sender: credit the peer granted.
    credit: u32,
    /// A message whose frames are still arriving.
    partial: Option<Partial>,
    detached: bool,
}

#[derive(Debug)]
struct Partial {
    delivery_id: u32,
    settled: bool,
    message_format: u32,
    payload: BytesMut,
}

/// A connection with one session (channel 0).
#[derive(Debug)]
pub struct ClientConnection {
    stream: Stream,
    frames: FrameBuffer,
    out: Vec<u8>,
    events: VecDeque<Event>,
    remote_max_frame_size: u32,
    /// Send a heartbeat when nothing was written for this long (half the peer's idle timeout).
    heartbeat_every: Option<Duration>,
    last_write: Instant,
    remote_channel: Option<u16>,
    next_outgoing_id: u32,
    next_incoming_id: u32,
    incoming_window: u32,
    remote_incoming_window: u32,
    next_delivery_id: u32,
    links: Vec<Link>,
    max_message_size: u64,
}

fn refused(what: &str, error: Option<definitions::Error>) -> Error {
    if let Some(redirect) = error.as_ref().and_then(crate::Redirect::from_error) {
        return Error::Redirected {
            what: what.to_owned(),
            redirect,
        };
    }
    Error::Refused {
        what: what.to_owned(),
        condition: error.as_ref().map(|e| condition_text(&e.condition)),
        description: error.and_then(|e| e.description),
    }
}

/// The symbolic name of an error condition.
pub fn condition_text(condition: &definitions::ErrorCondition) -> String {
    use definitions::ErrorCondition;
    let symbol = match condition {
        ErrorCondition::AmqpError(e) => Symbol::from(e),
        ErrorCondition::ConnectionError(e) => Symbol::from(e),
        ErrorCondition::SessionError(e) => Symbol::from(e),
        ErrorCondition::LinkError(e) => Symbol::from(e),
        ErrorCondition::Custom(symbol) => symbol.clone(),
    };
    symbol.0
}

impl ClientConnection {
    /// Runs SASL, Open and Begin on `stream`.
    pub async fn open(stream: Stream, config: &ClientConfig) -> Result<Self> {
        let mut connection = Self {
            stream,
            frames: FrameBuffer::new(config.max_frame_size.max(MIN_MAX_FRAME_SIZE)),
            out: Vec::with_capacity(4096),
            events: VecDeque::new(),
            remote_max_frame_size: MIN_MAX_FRAME_SIZE,
            heartbeat_every: None,
            last_write: Instant::now(),
            remote_channel: None,
            next_outgoing_id: 0,
            next_incoming_id: 0,
            incoming_window: INCOMING_WINDOW,
            remote_incoming_window: 0,
            next_delivery_id: 0,
            links: Vec::new(),
            max_message_size: u64::MAX,
        };
        connection.sasl(config).await?;
        connection.out.extend_from_slice(&AMQP_HEADER);
        let open = Open {
            container_id: config.container_id.clone(),
            hostname: Some(config.hostname.clone()),
            max_frame_size: config.max_frame_size.into(),
            channel_max: 0.into(),
            idle_time_out: Some(config.idle_timeout.as_millis() as u32),
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        put_performative(&mut connection.out, 0, &open);
        let begin = Begin {
            remote_channel: None,
            next_outgoing_id: 0,
            incoming_window: INCOMING_WINDOW,
            outgoing_window: OUTGOING_WINDOW,
            handle_max: 255.into(),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        put_performative(&mut connection.out, 0, &begin);
        connection.flush().await?;
        connection.expect_header(AMQP_HEADER).await?;
        let remote_open = match connection.next_performative().await? {
            Performative::Open(open) => open,
            Performative::Close(close) => return Err(refused("the connection", close.error)),
            other => return Err(Error::Protocol(format!("expected open, got {other:?}"))),
        };
        connection.remote_max_frame_size = remote_open.max_frame_size.0.max(MIN_MAX_FRAME_SIZE);
        connection.heartbeat_every = remote_open
            .idle_time_out
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(u64::from(ms) / 2));
        match connection.next_performative().await? {
            Performative::Begin(begin) => {
                connection.remote_channel = begin.remote_channel;
                connection.next_incoming_id = begin.next_outgoing_id;
                connection.remote_incoming_window = begin.incoming_window;
            }
            Performative::Close(close) => return Err(refused("the connection", close.error)),
            other => return Err(Error::Protocol(format!("expected begin, got {other:?}"))),
        }
        Ok(connection)
    }

    async fn sasl(&mut self, config: &ClientConfig) -> Result<()> {
        self.out.extend_from_slice(&SASL_HEADER);
        self.flush().await?;
        self.expect_header(SASL_HEADER).await?;
        let offered = match self.next_sasl().await? {
            Sasl::Mechanisms(mechanisms) => mechanisms.sasl_server_mechanisms.0,
            other => {
                return Err(Error::Protocol(format!(
                    "expected sasl-mechanisms, got {other:?}"
                )));
            }
        };
        let (mechanism, response) = match &config.sasl {
            SaslCredentials::Anonymous => ("ANONYMOUS", None),
            SaslCredentials::Plain { username, password } => {
                let mut response = vec![0];
                response.extend_from_slice(username.as_bytes());
                response.push(0);
                response.extend_from_slice(password.as_bytes());
                ("PLAIN", Some(Binary::from(response)))
            }
        };
        if !offered.iter().any(|m| m.0 == mechanism) {
            return Err(Error::Refused {
                what: "SASL".to_owned(),
                condition: None,
                description: Some(format!(
                    "the server does not offer {mechanism} (it offers {})",
                    offered
                        .iter()
                        .map(|m| m.0.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            });
        }
        let init = SaslInit {
            mechanism: Symbol::from(mechanism),
            initial_response: response,
            hostname: Some(config.hostname.clone()),
        };
        put_sasl(&mut self.out, &init);
        self.flush().await?;
        match self.next_sasl().await? {
            Sasl::Outcome(outcome) if outcome.code == SaslCode::Ok => Ok(()),
            Sasl::Outcome(outcome) => Err(Error::Refused {
                what: "SASL authentication".to_owned(),
                condition: Some(format!("{:?}", outcome.code)),
                description: outcome
                    .additional_data
                    .map(|data| String::from_utf8_lossy(&data).into_owned()),
            }),
            other => Err(Error::Protocol(format!(
                "expected sasl-outcome, got {other:?}"
            ))),
        }
    }

    async fn expect_header(&mut self, expected: [u8; 8]) -> Result<()> {
        loop {
            if let Some(header) = self.frames.next_protocol_header() {
                return if header == expected {
                    Ok(())
                } else {
                    Err(Error::Protocol(format!(
                        "the server answered protocol header {header:?}, not {expected:?}"
                    )))
                };
            }
            self.fill().await?;
        }
    }

    async fn next_sasl(&mut self) -> Result<Sasl> {
        loop {
            if let Some(frame) = self.frames.next_frame()? {
                return Sasl::decode(&frame);
            }
            self.fill().await?;
        }
    }

    async fn next_performative(&mut self) -> Result<Performative> {
        loop {
            if let Some(frame) = self.frames.next_frame()? {
                match Performative::decode(&frame)? {
                    Performative::Heartbeat => continue,
                    performative => return Ok(performative),
                }
            }
            self.fill().await?;
        }
    }

    /// Reads more bytes from the peer. Cancel-safe.
    pub async fn fill(&mut self) -> Result<()> {
        let read = self.stream.read_buf(self.frames.read_buffer()).await?;
        if read == 0 {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the peer closed the connection",
            )));
        }
        Ok(())
    }

    /// Writes every queued frame.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            // TLS keeps records it could not yet put on the socket until flushed.
            self.stream.flush().await?;
            self.out.clear();
            self.last_write = Instant::now();
        }
        Ok(())
    }

    /// When a heartbeat must go out if nothing else was written.
    pub fn heartbeat_due(&self) -> Option<Instant> {
        self.heartbeat_every.map(|every| self.last_write + every)
    }

    /// Queues a heartbeat (an empty frame).
    pub fn heartbeat(&mut self) {
        put_heartbeat(&mut self.out);
    }

    /// The largest message the peer accepts on the link attached last (`u64::MAX` when unlimited).
    pub fn max_message_size(&self) -> u64 {
        self.max_message_size
    }

    /// Attaches a link and waits for the peer's answer. Its handle is its index: links are never
    /// reused. A refusal (the peer's attach without a terminus, then a detach) is an error carrying
    /// the peer's condition.
    pub async fn attach(&mut self, mut attach: Attach) -> Result<(u32, Box<Attach>)> {
        let handle = self.links.len() as u32;
        attach.handle = handle.into();
        let name = attach.name.clone();
        let role = attach.role.clone();
        self.links.push(Link {
            name: name.clone(),
            role: role.clone(),
            remote_handle: None,
            delivery_count: attach.initial_delivery_count.unwrap_or(0),
            credit: 0,
            partial: None,
            detached: false,
        });
        put_performative(&mut self.out, 0, &attach);
        self.flush().await?;
        let remote = loop {
            let frame = loop {
                if let Some(frame) = self.frames.next_frame()? {
                    break frame;
                }
                self.fill().await?;
            };
            match Performative::decode(&frame)? {
                Performative::Attach(remote) if remote.name == name => break remote,
                other => self.handle(other)?,
            }
        };
        self.links[handle as usize].remote_handle = Some(remote.handle.0);
        self.max_message_size = remote
            .max_message_size
            .filter(|size| *size > 0)
            .unwrap_or(u64::MAX);
        if role == Role::Sender {
            // The peer's initial delivery count is for its receiving end; ours counts from zero.
            self.links[handle as usize].delivery_count = 0;
        } else {
            self.links[handle as usize].delivery_count = remote.initial_delivery_count.unwrap_or(0);
        }
        let terminus_missing = match role {
            Role::Receiver => remote.source.is_none(),
            Role::Sender => remote.target.is_none(),
        };
        if terminus_missing {
            // The peer refused: its detach with the reason follows.
            loop {
                while let Some(frame) = self.frames.next_frame()? {
                    let performative = Performative::decode(&frame)?;
                    self.handle(performative)?;
                }
                let detach = self.events.iter().position(|event| {
                    matches!(event, Event::Detached { handle: detached, .. } if *detached == handle)
                });
                if let Some(Event::Detached { error, .. }) =
                    detach.and_then(|index| self.events.remove(index))
                {
                    self.flush().await?;
                    return Err(refused(&format!("link `{name}`"), error));
                }
                self.fill().await?;
            }
        }
        Ok((handle, remote))
    }

    /// Grants `credit` to a receiving link (replacing what is left of its current credit).
    pub fn grant(&mut self, handle: u32, credit: u32) {
        let link = &mut self.links[handle as usize];
        link.credit = credit;
        let flow = FlowState {
            next_incoming_id: Some(self.next_incoming_id),
            incoming_window: self.incoming_window,
            next_outgoing_id: self.next_outgoing_id,
            outgoing_window: OUTGOING_WINDOW,
            handle: Some(handle),
            delivery_count: Some(link.delivery_count),
            link_credit: Some(credit),
            available: None,
            drain: false,
            echo: false,
        };
        put_flow(&mut self.out, 0, &flow);
    }

    /// The credit a link has: for a receiver, what is still outstanding; for a sender, what the
    /// peer granted and this side has not used.
    pub fn credit(&self, handle: u32) -> u32 {
        self.links[handle as usize].credit
    }

    /// Queues one message on a sending link (in as many frames as the peer's max frame size needs).
    /// Fails when the link has no credit.
    pub fn send(&mut self, handle: u32, payload: &[u8], settled: bool) -> Result<u32> {
        let link = &mut self.links[handle as usize];
        if link.credit == 0 {
            return Err(Error::Protocol(format!(
                "link `{}` has no credit to send",
                link.name
            )));
        }
        link.credit -= 1;
        link.delivery_count = link.delivery_count.wrapping_add(1);
        let delivery_id = self.next_delivery_id;
        self.next_delivery_id = self.next_delivery_id.wrapping_add(1);
        let tag = delivery_id.to_be_bytes();
        // Room for the frame header and the transfer's fields.
        let room = (self.remote_max_frame_size as usize)
            .saturating_sub(64)
            .max(1);
        let mut chunks = payload.chunks(room).peekable();
        if payload.is_empty() {
            self.put_transfer_frame(handle, delivery_id, &tag, settled, false, &[]);
        }
        while let Some(chunk) = chunks.next() {
            let more = chunks.peek().is_some();
            self.put_transfer_frame(handle, delivery_id, &tag, settled, more, chunk);
        }
        Ok(delivery_id)
    }

    fn put_transfer_frame(
        &mut self,
        handle: u32,
        delivery_id: u32,
        tag: &[u8],
        settled: bool,
        more: bool,
        chunk: &[u8],
    ) {
        let header = TransferHeader {
            handle,
            delivery_id,
            delivery_tag: tag,
            message_format: 0,
            settled,
            more,
        };
        put_transfer(&mut self.out, 0, header, chunk);
        self.next_outgoing_id = self.next_outgoing_id.wrapping_add(1);
        self.remote_incoming_window = self.remote_incoming_window.saturating_sub(1);
    }

    /// Queues a detach (`closed` closes the link for good).
    pub fn detach(&mut self, handle: u32, closed: bool, error: Option<definitions::Error>) {
        self.links[handle as usize].detached = true;
        let detach = Detach {
            handle: handle.into(),
            closed,
            error,
        };
        put_performative(&mut self.out, 0, &detach);
    }

    /// Closes the connection: sends end and close, then waits (until the caller's timeout) for the
    /// peer's close.
    pub async fn close(&mut self) -> Result<()> {
        put_performative(&mut self.out, 0, &End { error: None });
        put_performative(&mut self.out, 0, &Close { error: None });
        self.flush().await?;
        loop {
            let frame = loop {
                if let Some(frame) = self.frames.next_frame()? {
                    break frame;
                }
                self.fill().await?;
            };
            if let Performative::Close(_) = Performative::decode(&frame)? {
                return Ok(());
            }
        }
    }

    /// The next event from frames already read, or `None` when more must be read ([`fill`]).
    ///
    /// [`fill`]: ClientConnection::fill
    pub fn next_event(&mut self) -> Result<Option<Event>> {
        if let Some(event) = self.events.pop_front() {
            return Ok(Some(event));
        }
        while let Some(frame) = self.frames.next_frame()? {
            let performative = Performative::decode(&frame)?;
            self.handle(performative)?;
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    fn local_handle(&self, remote: u32) -> Result<u32> {
        self.links
            .iter()
            .position(|link| link.remote_handle == Some(remote) && !link.detached)
            .or_else(|| {
                self.links
                    .iter()
                    .position(|link| link.remote_handle == Some(remote))
            })
            .map(|index| index as u32)
            .ok_or_else(|| Error::Protocol(format!("a frame for unknown remote handle {remote}")))
    }

    fn handle(&mut self, performative: Performative) -> Result<()> {
        match performative {
            Performative::Transfer(transfer) => {
                self.next_incoming_id = self.next_incoming_id.wrapping_add(1);
                self.incoming_window = self.incoming_window.saturating_sub(1);
                if self.incoming_window <= INCOMING_WINDOW / 2 {
                    self.incoming_window = INCOMING_WINDOW;
                    let flow = FlowState {
                        next_incoming_id: Some(self.next_incoming_id),
                        incoming_window: self.incoming_window,
                        next_outgoing_id: self.next_outgoing_id,
                        outgoing_window: OUTGOING_WINDOW,
                        ..FlowState::default()
                    };
                    put_flow(&mut self.out, 0, &flow);
                }
                let handle = self.local_handle(transfer.handle)?;
                let link = &mut self.links[handle as usize];
                if link.detached {
                    return Ok(());
                }
                if transfer.aborted {
                    link.partial = None;
                    return Ok(());
                }
                let delivery = match (link.partial.take(), transfer.more) {
                    (None, false) => Delivery {
                        handle,
                        delivery_id: transfer.delivery_id.ok_or_else(|| {
                            Error::Protocol("a transfer without a delivery id".to_owned())
                        })?,
                        settled: transfer.settled.unwrap_or(false),
                        message_format: transfer.message_format.unwrap_or(0),
                        payload: transfer.payload,
                    },
                    (None, true) => {
                        let mut payload = BytesMut::with_capacity(transfer.payload.len() * 4);
                        payload.extend_from_slice(&transfer.payload);
                        link.partial = Some(Partial {
                            delivery_id: transfer.delivery_id.ok_or_else(|| {
                                Error::Protocol("a transfer without a delivery id".to_owned())
                            })?,
                            settled: transfer.settled.unwrap_or(false),
                            message_format: transfer.message_format.unwrap_or(0),
                            payload,
                        });
                        return Ok(());
                    }
                    (Some(mut partial), more) => {
                        if partial.payload.len() as u64 + transfer.payload.len() as u64
                            > u64::from(u32::MAX)
                        {
                            return Err(Error::Protocol(
                                "a multi-frame message beyond 4 GiB".to_owned(),
                            ));
                        }
                        partial.payload.extend_from_slice(&transfer.payload);
                        partial.settled |= transfer.settled.unwrap_or(false);
                        if more {
                            link.partial = Some(partial);
                            return Ok(());
                        }
                        Delivery {
                            handle,
                            delivery_id: partial.delivery_id,
                            settled: partial.settled,
                            message_format: partial.message_format,
                            payload: partial.payload.freeze(),
                        }
                    }
                };
                link.delivery_count = link.delivery_count.wrapping_add(1);
                link.credit = link.credit.saturating_sub(1);
                self.events.push_back(Event::Delivery(delivery));
            }
            Performative::Flow(flow) => {
                self.remote_incoming_window = flow
                    .next_incoming_id
                    .unwrap_or(0)
                    .wrapping_add(flow.incoming_window)
                    .wrapping_sub(self.next_outgoing_id);
                if let Some(remote) = flow.handle {
                    let handle = self.local_handle(remote.0)?;
                    let link = &mut self.links[handle as usize];
                    if link.role == Role::Sender {
                        // Part 2, 2.6.7: credit = receiver's delivery-count + link-credit - ours.
                        let granted = flow
                            .delivery_count
                            .unwrap_or(0)
                            .wrapping_add(flow.link_credit.unwrap_or(0));
                        link.credit = granted.wrapping_sub(link.delivery_count);
                    }
                    self.events.push_back(Event::Flow { handle });
                }
            }
            Performative::Disposition(disposition) => {
                self.events.push_back(Event::Disposition(disposition));
            }
            Performative::Detach(detach) => {
                let handle = self.local_handle(detach.handle.0)?;
                let link = &mut self.links[handle as usize];
                link.partial = None;
                if !link.detached {
                    link.detached = true;
                    let answer = Detach {
                        handle: handle.into(),
                        closed: detach.closed,
                        error: None,
                    };
                    put_performative(&mut self.out, 0, &answer);
                }
                self.events.push_back(Event::Detached {
                    handle,
                    closed: detach.closed,
                    error: detach.error,
                });
            }
            Performative::End(end) => return Err(refused("the session", end.error)),
            Performative::Close(close) => {
                put_performative(&mut self.out, 0, &Close { error: None });
                return Err(refused("the connection", close.error));
            }
            Performative::Heartbeat => {}
            other @ (Performative::Open(_) | Performative::Begin(_) | Performative::Attach(_)) => {
                return Err(Error::Protocol(format!("unexpected {other:?}")));
            }
        }
        Ok(())
    }
}
