//! One client connection, served by one task: the protocol headers, SASL, Open, then every frame of
//! every session and link, with the node or entity each link's address names.
//!
//! The task owns the socket and all connection state, so nothing is shared or locked per frame. Its
//! loop writes what the consumer links may send (stored events, already encoded, copied into one
//! write buffer and sent with one system call for many transfers), then waits for the first of: bytes
//! from the client, room on the socket, a watcher saying a partition grew, a token expiring, or
//! shutdown. Credit is honoured per link and the client's incoming window per session (part 2,
//! section 2.6.7), so the emulator never sends what the client did not ask for.
//!
//! Links that cannot be served are attached and then detached with the Event Hubs error condition,
//! which is how the service refuses them too. Every performative the emulator sends carries all of
//! its fields: the Python SDK's AMQP stack reads them by position.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp_types::definitions::{
    self, ErrorCondition, Fields, ReceiverSettleMode, Role, SenderSettleMode,
};
use fe2o3_amqp_types::messaging::{DeliveryState, FilterSet, TargetArchetype};
use fe2o3_amqp_types::performatives::{Attach, Begin, Close, Detach, Disposition, End, Open};
use fe2o3_amqp_types::primitives::{Array, Symbol, Value};
use fe2o3_amqp_types::sasl::{SaslCode, SaslMechanisms, SaslOutcome};
use hubroute_amqp::Stream;
use hubroute_amqp::frame::{AMQP_HEADER, Frame, FrameBuffer, SASL_HEADER, put_heartbeat};
use hubroute_amqp::performative::{
    FlowState, Performative, Sasl, Transfer, TransferHeader, put_flow, put_performative, put_sasl,
    put_transfer,
};
use hubroute_protocol::address::EntityAddress;
use hubroute_protocol::{EventPosition, conditions, link};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Shared;
use super::auth::{ConnectionAuth, MECHANISMS, authenticate};
use super::consumer::{Consumer, ConsumerRequest, LinkId, Wake};
use super::nodes::{Node, NodeContext};
use super::producer::{Producer, watch_forced_detach};

/// The largest frame the emulator accepts, as Event Hubs announces.
const MAX_FRAME_SIZE: u32 = 262_144;
/// Channels a client may use.
const CHANNEL_MAX: u16 = 1024;
/// Link handles per session.
const HANDLE_MAX: u32 = 1023;
/// The idle timeout announced: a client must send something this often.
const IDLE_TIMEOUT_MS: u32 = 240_000;
/// Transfers a client may send on a session before the emulator's next flow; topped up at half.
const INCOMING_WINDOW: u32 = 5_000;
/// Credit granted to a client's sending link (producer or request link); topped up at half.
const LINK_CREDIT: u32 = 300;
/// Stop adding transfers while this many bytes wait to be written.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// Events fetched from a partition per read.
const READ_CHUNK: usize = 256;
/// How long a response waits for the reply link its request names (a client attaches that link
/// concurrently with its request link, so a request can arrive first).
const REPLY_LINK_WAIT: Duration = Duration::from_secs(5);
/// How long the handshake (headers, SASL, Open) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Properties announced on Open, Begin and Attach.
fn product_properties() -> Fields {
    let mut properties = Fields::new();
    properties.insert(
        Symbol::from("product"),
        Value::String("hubroute-emulator".to_owned()),
    );
    properties
}

fn capabilities() -> Option<Array<Symbol>> {
    Some(Array::from(vec![Symbol::from(
        "com.microsoft:hubroute-emulator",
    )]))
}

fn amqp_error(condition: &str, description: impl Into<String>) -> definitions::Error {
    definitions::Error::new(
        ErrorCondition::Custom(Symbol::from(condition)),
        Some(description.into()),
        None,
    )
}

/// Why the connection ends.
#[derive(Debug)]
enum Ending {
    /// The client closed it, or went away.
    Peer,
    /// The emulator closes it, with this error (none on shutdown).
    Close(Option<definitions::Error>),
}

/// Bytes waiting for the socket.
#[derive(Debug, Default)]
struct Outgoing {
    bytes: Vec<u8>,
    written: usize,
}

impl Outgoing {
    fn pending(&self) -> &[u8] {
        &self.bytes[self.written..]
    }

    fn len(&self) -> usize {
        self.bytes.len() - self.written
    }

    fn advance(&mut self, n: usize) {
        self.written += n;
        if self.written == self.bytes.len() {
            self.bytes.clear();
            self.written = 0;
        } else if self.written > 1 << 20 {
            self.bytes.drain(..self.written);
            self.written = 0;
        }
    }
}

/// What a link does.
#[derive(Debug)]
enum LinkKind {
    /// Sends a partition's events.
    Consumer(Box<Consumer>),
    /// Receives events to store.
    Producer(Producer),
    /// Receives requests to a node.
    Requests(Node),
    /// Sends a node's responses; `address` is the client's receiving address (`reply-to`).
    Replies { node: Node, address: String },
    /// Attached only to be detached with an error; frames on it are ignored.
    Refused,
}

/// A message whose transfer frames are still arriving.
#[derive(Debug)]
struct Partial {
    delivery_id: u32,
    settled: bool,
    message_format: u32,
    /// The frames joined so far; empty for a delivery in one frame, read from its frame.
    payload: Vec<u8>,
}

#[derive(Debug)]
struct Link {
    id: LinkId,
    local_handle: u32,
    /// The emulator's role.
    role: Role,
    kind: LinkKind,
    /// Sender: deliveries sent. Receiver: deliveries received.
    delivery_count: u32,
    /// Sender: credit the client granted and not used. Receiver: credit granted and not used.
    credit: u32,
    /// Whether an emulator-initiated detach was sent (the client's detach is then the answer).
    detaching: bool,
    partial: Option<Partial>,
    /// A producer's watch for forced detaches; stopped with the link.
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl Link {
    /// The event hub entity a consumer or producer link uses, whose token must stay valid.
    fn entity(&self) -> Option<&str> {
        match &self.kind {
            LinkKind::Consumer(consumer) => Some(&consumer.entity),
            LinkKind::Producer(producer) => Some(&producer.entity),
            _ => None,
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
    }
}

/// A session's transfer accounting (part 2, section 2.5.6).
#[derive(Debug, Clone, Copy)]
struct Window {
    /// The emulator's channel for this session.
    local_channel: u16,
    next_outgoing_id: u32,
    next_delivery_id: u32,
    /// Transfers the client still accepts on this session.
    remote_incoming_window: u32,
    next_incoming_id: u32,
    incoming_window: u32,
}

#[derive(Debug)]
struct Session {
    window: Window,
    /// Links by the client's handle.
    links: HashMap<u32, Link>,
}

/// A response waiting for its reply link (or for credit on it).
#[derive(Debug)]
struct PendingReply {
    node: Node,
    reply_to: Option<String>,
    message: Vec<u8>,
    deadline: Instant,
}

/// Everything one connection knows.
struct Connection {
    shared: Arc<Shared>,
    auth: ConnectionAuth,
    remote_max_frame_size: u32,
    /// Send a heartbeat when nothing was written for this long (half the client's idle timeout).
    heartbeat_every: Option<Duration>,
    last_write: Instant,
    /// Sessions by the client's channel.
    sessions: HashMap<u16, Session>,
    next_link_id: LinkId,
    replies: Vec<PendingReply>,
    wake: mpsc::Sender<Wake>,
    /// Consumers with credit and events to send, by (channel, client handle).
    ready: Vec<(u16, u32)>,
}

/// Serves one accepted connection until it ends.
pub(crate) async fn serve(stream: Stream, peer: std::net::SocketAddr, shared: Arc<Shared>) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut frames = FrameBuffer::new(MAX_FRAME_SIZE);
    let mut out = Outgoing::default();
    let handshake = handshake(&mut reader, &mut writer, &mut frames, &shared);
    let (auth, open) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(done)) => done,
        Ok(Err(problem)) => {
            tracing::debug!(%peer, %problem, "AMQP handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "AMQP handshake timed out");
            return;
        }
    };
    let (wake, mut woken) = mpsc::channel(64);
    let mut connection = Connection {
        shared: Arc::clone(&shared),
        auth,
        remote_max_frame_size: open.max_frame_size.0.max(512),
        heartbeat_every: open
            .idle_time_out
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(u64::from(ms) / 2)),
        last_write: Instant::now(),
        sessions: HashMap::new(),
        next_link_id: 0,
        replies: Vec::new(),
        wake,
        ready: Vec::new(),
    };
    connection.answer_open(&mut out.bytes);
    // A client may pipeline its first frames (begin, attach) behind its open.
    let mut ending = connection.on_bytes(&mut frames, &mut out.bytes).err();
    let mut unflushed = false;
    while ending.is_none() {
        connection.produce(&mut out.bytes);
        let deadline = connection.next_deadline();
        let result = tokio::select! {
            read = reader.read_buf(frames.read_buffer()) => match read {
                Ok(0) | Err(_) => Err(Ending::Peer),
                Ok(_) => connection.on_bytes(&mut frames, &mut out.bytes),
            },
            // Write what is queued; once all is written, flush (TLS keeps records it could not yet
            // put on the socket until flushed).
            written = async {
                if out.len() > 0 {
                    writer.write(out.pending()).await.map(Some)
                } else {
                    writer.flush().await.map(|()| None)
                }
            }, if out.len() > 0 || unflushed => match written {
                Ok(Some(n)) => {
                    out.advance(n);
                    connection.last_write = Instant::now();
                    unflushed = true;
                    Ok(())
                }
                Ok(None) => {
                    unflushed = false;
                    Ok(())
                }
                Err(_) => Err(Ending::Peer),
            },
            Some(wake) = woken.recv() => {
                connection.on_wake(wake, &mut out.bytes);
                Ok(())
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                connection.on_timer(&mut out.bytes);
                Ok(())
            }
            () = shared.stopping.cancelled() => Err(Ending::Close(None)),
        };
        ending = result.err();
    }
    if let Some(Ending::Close(error)) = ending {
        put_performative(&mut out.bytes, 0, &Close { error });
    }
    // Whatever is queued (the answer to the client's close, or ours) goes out before the socket
    // closes, and a TLS stream ends with close_notify.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = writer.write_all(out.pending()).await;
        let _ = writer.shutdown().await;
    })
    .await;
    tracing::debug!(%peer, "connection ended");
}

/// Reads the next frame during the handshake.
async fn read_frame(
    reader: &mut ReadHalf<Stream>,
    frames: &mut FrameBuffer,
) -> Result<Frame, String> {
    loop {
        if let Some(frame) = frames.next_frame().map_err(|e| e.to_string())? {
            return Ok(frame);
        }
        if reader
            .read_buf(frames.read_buffer())
            .await
            .map_err(|e| e.to_string())?
            == 0
        {
            return Err("the client closed the connection".to_owned());
        }
    }
}

async fn read_header(
    reader: &mut ReadHalf<Stream>,
    frames: &mut FrameBuffer,
) -> Result<[u8; 8], String> {
    loop {
        if let Some(header) = frames.next_protocol_header() {
            return Ok(header);
        }
        if reader
            .read_buf(frames.read_buffer())
            .await
            .map_err(|e| e.to_string())?
            == 0
        {
            return Err("the client closed the connection".to_owned());
        }
    }
}

/// Protocol headers, SASL and the client's Open. An unsupported header is answered with the one the
/// emulator speaks (SASL first), then the connection is closed, as part 2, section 2.2 requires.
async fn handshake(
    reader: &mut ReadHalf<Stream>,
    writer: &mut WriteHalf<Stream>,
    frames: &mut FrameBuffer,
    shared: &Shared,
) -> Result<(ConnectionAuth, Box<Open>), String> {
    let header = read_header(reader, frames).await?;
    if header != SASL_HEADER {
        let _ = writer.write_all(&SASL_HEADER).await;
        return Err(format!(
            "protocol header {header:?}: SASL is required first"
        ));
    }
    let mut out = SASL_HEADER.to_vec();
    put_sasl(
        &mut out,
        &SaslMechanisms {
            sasl_server_mechanisms: Array::from(
                MECHANISMS
                    .iter()
                    .map(|m| Symbol::from(*m))
                    .collect::<Vec<_>>(),
            ),
        },
    );
    writer.write_all(&out).await.map_err(|e| e.to_string())?;
    let init = match Sasl::decode(&read_frame(reader, frames).await?).map_err(|e| e.to_string())? {
        Sasl::Init(init) => init,
        other => return Err(format!("expected sasl-init, got {other:?}")),
    };
    let mut auth = ConnectionAuth::default();
    let code = authenticate(
        &shared.key,
        shared.iot_hub.as_ref(),
        &mut auth,
        init.mechanism.as_str(),
        init.initial_response
            .as_ref()
            .map(|response| response.as_slice()),
    );
    let mut out = Vec::new();
    put_sasl(
        &mut out,
        &SaslOutcome {
            code: code.clone(),
            additional_data: None,
        },
    );
    writer.write_all(&out).await.map_err(|e| e.to_string())?;
    if code != SaslCode::Ok {
        return Err(format!("SASL {} refused", init.mechanism.as_str()));
    }
    let header = read_header(reader, frames).await?;
    writer
        .write_all(&AMQP_HEADER)
        .await
        .map_err(|e| e.to_string())?;
    if header != AMQP_HEADER {
        return Err(format!("protocol header {header:?} after SASL"));
    }
    match Performative::decode(&read_frame(reader, frames).await?).map_err(|e| e.to_string())? {
        Performative::Open(open) => Ok((auth, open)),
        other => Err(format!("expected open, got {other:?}")),
    }
}

/// Where the attach of a link leads.
enum Route {
    Node(Node),
    Consumer(ConsumerRequest),
    Producer(Producer),
    Refuse(&'static str, String),
    /// Detach with this error (the IoT hub's redirect to its built-in endpoint).
    Redirect(definitions::Error),
}

fn source_address(attach: &Attach) -> Option<String> {
    attach
        .source
        .as_ref()
        .and_then(|source| source.address.as_ref())
        .map(ToString::to_string)
}

fn target_address(attach: &Attach) -> Option<String> {
    match attach.target.as_deref() {
        Some(TargetArchetype::Target(target)) => target.address.as_ref().map(ToString::to_string),
        _ => None,
    }
}

fn epoch_of(properties: Option<&Fields>) -> Option<i64> {
    match properties?.get(&Symbol::from(link::EPOCH))? {
        Value::Long(epoch) => Some(*epoch),
        Value::Int(epoch) => Some(i64::from(*epoch)),
        _ => None,
    }
}

/// The start position from the selector filter; no filter means the start of the stream.
fn position_of(filter: Option<&FilterSet>) -> Result<EventPosition, String> {
    let Some(value) =
        filter.and_then(|filter| filter.get(&Symbol::from(link::SELECTOR_FILTER_KEY)))
    else {
        return Ok(EventPosition::earliest());
    };
    let expression = match value {
        Value::Described(described) => match &described.value {
            Value::String(expression) => expression.clone(),
            other => {
                return Err(format!(
                    "the selector filter value must be a string, not {other:?}"
                ));
            }
        },
        Value::String(expression) => expression.clone(),
        other => {
            return Err(format!(
                "the selector filter must be a described string, not {other:?}"
            ));
        }
    };
    EventPosition::parse_filter_expression(&expression).map_err(|error| error.to_string())
}

impl Connection {
    fn answer_open(&mut self, out: &mut Vec<u8>) {
        let open = Open {
            container_id: format!("hubroute-emulator-{}", uuid::Uuid::new_v4()),
            hostname: None,
            max_frame_size: MAX_FRAME_SIZE.into(),
            channel_max: CHANNEL_MAX.into(),
            idle_time_out: Some(IDLE_TIMEOUT_MS),
            outgoing_locales: Some(Array::from(vec![Symbol::from("en-US")])),
            incoming_locales: Some(Array::from(vec![Symbol::from("en-US")])),
            offered_capabilities: capabilities(),
            desired_capabilities: capabilities(),
            properties: Some(product_properties()),
        };
        put_performative(out, 0, &open);
    }

    fn nodes(&mut self) -> NodeContext<'_> {
        NodeContext {
            namespace: &self.shared.namespace,
            key: &self.shared.key,
            iot_hub: self.shared.iot_hub.as_ref(),
            auth: &mut self.auth,
        }
    }

    fn authorized(&self, entity: &str) -> bool {
        self.auth.authorizes(entity, chrono::Utc::now().timestamp())
    }

    /// Handles every complete frame read so far.
    fn on_bytes(&mut self, frames: &mut FrameBuffer, out: &mut Vec<u8>) -> Result<(), Ending> {
        loop {
            let frame = match frames.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(error) => {
                    return Err(Ending::Close(Some(amqp_error(
                        "amqp:connection:framing-error",
                        error.to_string(),
                    ))));
                }
            };
            let performative = Performative::decode(&frame).map_err(|error| {
                Ending::Close(Some(amqp_error("amqp:decode-error", error.to_string())))
            })?;
            tracing::trace!(channel = frame.channel, ?performative, "frame received");
            self.on_performative(frame.channel, performative, out)?;
        }
    }

    fn on_performative(
        &mut self,
        channel: u16,
        performative: Performative,
        out: &mut Vec<u8>,
    ) -> Result<(), Ending> {
        match performative {
            Performative::Heartbeat => Ok(()),
            Performative::Begin(begin) => {
                self.on_begin(channel, &begin, out);
                Ok(())
            }
            Performative::Close(_) => {
                put_performative(out, 0, &Close { error: None });
                Err(Ending::Peer)
            }
            Performative::Open(_) => Err(Ending::Close(Some(amqp_error(
                "amqp:illegal-state",
                "a second open",
            )))),
            other => {
                if !self.sessions.contains_key(&channel) {
                    return Err(Ending::Close(Some(amqp_error(
                        "amqp:connection:framing-error",
                        format!("a frame on channel {channel}, which has no session"),
                    ))));
                }
                match other {
                    Performative::End(_) => {
                        if let Some(session) = self.sessions.remove(&channel) {
                            put_performative(
                                out,
                                session.window.local_channel,
                                &End { error: None },
                            );
                        }
                        self.ready.retain(|(ready, _)| *ready != channel);
                    }
                    Performative::Attach(attach) => self.on_attach(channel, &attach, out),
                    Performative::Detach(detach) => self.on_detach(channel, &detach, out),
                    Performative::Flow(flow) => self.on_flow(channel, &flow, out),
                    Performative::Transfer(transfer) => self.on_transfer(channel, &transfer, out),
                    Performative::Disposition(_) => {}
                    _ => unreachable!("handled above"),
                }
                Ok(())
            }
        }
    }

    fn on_begin(&mut self, channel: u16, begin: &Begin, out: &mut Vec<u8>) {
        let local_channel = (0..CHANNEL_MAX)
            .find(|c| !self.sessions.values().any(|s| s.window.local_channel == *c))
            .unwrap_or(0);
        let session = Session {
            window: Window {
                local_channel,
                next_outgoing_id: 0,
                next_delivery_id: 0,
                remote_incoming_window: begin.incoming_window,
                next_incoming_id: begin.next_outgoing_id,
                incoming_window: INCOMING_WINDOW,
            },
            links: HashMap::new(),
        };
        let answer = Begin {
            remote_channel: Some(channel),
            next_outgoing_id: 0,
            incoming_window: INCOMING_WINDOW,
            outgoing_window: u32::MAX,
            handle_max: HANDLE_MAX.into(),
            offered_capabilities: capabilities(),
            desired_capabilities: capabilities(),
            properties: Some(product_properties()),
        };
        put_performative(out, local_channel, &answer);
        self.sessions.insert(channel, session);
    }

    /// Decides what an attaching link is.
    fn route(&self, attach: &Attach) -> Route {
        // The client's role: a client receiver reads from its source, a client sender writes to its
        // target.
        let client_receives = attach.role == Role::Receiver;
        let address = if client_receives {
            source_address(attach)
        } else {
            target_address(attach)
        }
        .unwrap_or_default();
        if client_receives && hubroute_protocol::iothub_amqp::is_built_in_endpoint(&address) {
            return match &self.shared.iot_hub {
                Some(hub) => match hub.attach(self.auth.hub.as_ref(), &address) {
                    Ok(redirect) => Route::Redirect(redirect),
                    Err((condition, description)) => Route::Refuse(condition, description),
                },
                None => Route::Refuse(
                    conditions::NOT_FOUND,
                    "this emulator serves no IoT hub (`messages/events`)".to_owned(),
                ),
            };
        }
        let Some(entity) = EntityAddress::parse(&address) else {
            return Route::Refuse(
                conditions::NOT_FOUND,
                format!("unknown address `{address}`"),
            );
        };
        match (&entity, client_receives) {
            (EntityAddress::Cbs, _) => Route::Node(Node::Cbs),
            (EntityAddress::Management, _) => Route::Node(Node::Management),
            (
                EntityAddress::ConsumerPartition {
                    hub,
                    consumer_group,
                    partition,
                },
                true,
            ) => {
                if !self.authorized(&entity.to_string()) {
                    return Route::Refuse(
                        conditions::UNAUTHORIZED_ACCESS,
                        format!(
                            "unauthorized access to `{address}`: put a SAS token on $cbs or use SASL PLAIN"
                        ),
                    );
                }
                let hub = match self.shared.namespace.hub(hub) {
                    Ok(hub) => Arc::clone(hub),
                    Err(error) => return Route::Refuse(conditions::NOT_FOUND, error.to_string()),
                };
                if !hub.config.has_consumer_group(consumer_group) {
                    return Route::Refuse(
                        conditions::NOT_FOUND,
                        format!(
                            "consumer group `{consumer_group}` does not exist in event hub `{}`",
                            hub.config.name
                        ),
                    );
                }
                let partition = match hub.partition(partition) {
                    Ok(partition) => Arc::clone(partition),
                    Err(error) => return Route::Refuse(conditions::NOT_FOUND, error.to_string()),
                };
                let filter = attach.source.as_ref().and_then(|s| s.filter.as_ref());
                let position = match position_of(filter) {
                    Ok(position) => position,
                    Err(problem) => return Route::Refuse(conditions::ARGUMENT_ERROR, problem),
                };
                Route::Consumer(ConsumerRequest {
                    hub,
                    partition,
                    consumer_group: consumer_group.clone(),
                    entity: entity.to_string(),
                    position,
                    epoch: epoch_of(attach.properties.as_ref()),
                })
            }
            (EntityAddress::EventHub { hub } | EntityAddress::Partition { hub, .. }, false) => {
                if !self.authorized(&entity.to_string()) {
                    return Route::Refuse(
                        conditions::UNAUTHORIZED_ACCESS,
                        format!(
                            "unauthorized access to `{address}`: put a SAS token on $cbs or use SASL PLAIN"
                        ),
                    );
                }
                let hub = match self.shared.namespace.hub(hub) {
                    Ok(hub) => Arc::clone(hub),
                    Err(error) => return Route::Refuse(conditions::NOT_FOUND, error.to_string()),
                };
                let partition = match &entity {
                    EntityAddress::Partition { partition, .. } => match hub.partition(partition) {
                        Ok(partition) => Some(Arc::clone(partition)),
                        Err(error) => {
                            return Route::Refuse(conditions::NOT_FOUND, error.to_string());
                        }
                    },
                    _ => None,
                };
                Route::Producer(Producer {
                    hub,
                    partition,
                    max_message_bytes: self.shared.max_message_bytes,
                    entity: entity.to_string(),
                })
            }
            (_, true) => Route::Refuse(
                conditions::NOT_FOUND,
                format!("`{address}` cannot be received from"),
            ),
            (_, false) => Route::Refuse(
                conditions::NOT_FOUND,
                format!("`{address}` cannot be sent to"),
            ),
        }
    }

    fn on_attach(&mut self, channel: u16, attach: &Attach, out: &mut Vec<u8>) {
        let remote_handle = attach.handle.0;
        let client_receives = attach.role == Role::Receiver;
        let id = self.next_link_id;
        self.next_link_id += 1;
        let mut refusal = None;
        let mut watcher = None;
        let kind = match self.route(attach) {
            Route::Node(node) if client_receives => LinkKind::Replies {
                node,
                address: target_address(attach).unwrap_or_default(),
            },
            Route::Node(node) => LinkKind::Requests(node),
            Route::Producer(producer) => {
                watcher = Some(tokio::spawn(watch_forced_detach(
                    producer.hub.producer_detaches(),
                    id,
                    self.wake.clone(),
                )));
                LinkKind::Producer(producer)
            }
            Route::Consumer(request) => match Consumer::admit(request, id, self.wake.clone()) {
                Ok(consumer) => LinkKind::Consumer(Box::new(consumer)),
                Err((condition, description)) => {
                    refusal = Some(amqp_error(condition, description));
                    LinkKind::Refused
                }
            },
            Route::Refuse(condition, description) => {
                refusal = Some(amqp_error(condition, description));
                LinkKind::Refused
            }
            Route::Redirect(redirect) => {
                refusal = Some(redirect);
                LinkKind::Refused
            }
        };
        let Some(session) = self.sessions.get_mut(&channel) else {
            return;
        };
        let local_handle = (0..=HANDLE_MAX)
            .find(|h| !session.links.values().any(|link| link.local_handle == *h))
            .unwrap_or(HANDLE_MAX);
        let role = if client_receives {
            Role::Sender
        } else {
            Role::Receiver
        };
        let answer = Attach {
            name: attach.name.clone(),
            handle: local_handle.into(),
            role: role.clone(),
            // Event Hubs sends events pre-settled and settles what it receives at once
            // (receiver-settle-mode first) even when a client asks otherwise; the Python SDK's
            // producer asks for `second` and would wait forever on the dispositions that produces.
            snd_settle_mode: if client_receives {
                SenderSettleMode::Settled
            } else {
                attach.snd_settle_mode.clone()
            },
            rcv_settle_mode: ReceiverSettleMode::First,
            source: attach.source.clone(),
            target: attach.target.clone(),
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: client_receives.then_some(0),
            max_message_size: Some(self.shared.max_message_bytes as u64),
            offered_capabilities: capabilities(),
            desired_capabilities: capabilities(),
            properties: Some(product_properties()),
        };
        let local_channel = session.window.local_channel;
        put_performative(out, local_channel, &answer);
        let mut link = Link {
            id,
            local_handle,
            role,
            kind,
            delivery_count: attach.initial_delivery_count.unwrap_or(0),
            credit: 0,
            detaching: false,
            partial: None,
            watcher,
        };
        if link.role == Role::Sender {
            link.delivery_count = 0;
        } else if !matches!(link.kind, LinkKind::Refused) {
            link.credit = LINK_CREDIT;
            put_flow(out, local_channel, &link_flow(session.window, &link));
        }
        if let Some(error) = refusal {
            tracing::debug!(%error, name = %attach.name, "refusing link");
            link.detaching = true;
            let detach = Detach {
                handle: local_handle.into(),
                closed: true,
                error: Some(error),
            };
            put_performative(out, local_channel, &detach);
        }
        session.links.insert(remote_handle, link);
    }

    fn on_detach(&mut self, channel: u16, detach: &Detach, out: &mut Vec<u8>) {
        let Some(session) = self.sessions.get_mut(&channel) else {
            return;
        };
        let Some(link) = session.links.remove(&detach.handle.0) else {
            return;
        };
        if !link.detaching {
            let answer = Detach {
                handle: link.local_handle.into(),
                closed: detach.closed,
                error: None,
            };
            put_performative(out, session.window.local_channel, &answer);
        }
        self.ready.retain(|key| *key != (channel, detach.handle.0));
    }

    fn on_flow(
        &mut self,
        channel: u16,
        flow: &fe2o3_amqp_types::performatives::Flow,
        out: &mut Vec<u8>,
    ) {
        let Some(session) = self.sessions.get_mut(&channel) else {
            return;
        };
        let window = &mut session.window;
        window.remote_incoming_window = flow
            .next_incoming_id
            .unwrap_or(0)
            .wrapping_add(flow.incoming_window)
            .wrapping_sub(window.next_outgoing_id);
        let window = *window;
        let Some(handle) = flow.handle.clone() else {
            if flow.echo {
                put_flow(out, window.local_channel, &session_flow(window));
            }
            return;
        };
        let Some(link) = session.links.get_mut(&handle.0) else {
            return;
        };
        if link.role == Role::Sender {
            link.credit = flow
                .delivery_count
                .unwrap_or(0)
                .wrapping_add(flow.link_credit.unwrap_or(0))
                .wrapping_sub(link.delivery_count);
            let key = (channel, handle.0);
            if matches!(link.kind, LinkKind::Consumer(_))
                && link.credit > 0
                && !link.detaching
                && !self.ready.contains(&key)
            {
                self.ready.push(key);
            }
            if flow.drain && !self.ready.contains(&key) {
                // Nothing to send now: use the credit up, as part 2, 2.6.7 asks of a drained sender.
                link.delivery_count = link.delivery_count.wrapping_add(link.credit);
                link.credit = 0;
                put_flow(out, window.local_channel, &link_flow(window, link));
            } else if flow.echo {
                put_flow(out, window.local_channel, &link_flow(window, link));
            }
        } else if flow.echo {
            put_flow(out, window.local_channel, &link_flow(window, link));
        }
    }

    fn on_transfer(&mut self, channel: u16, transfer: &Transfer, out: &mut Vec<u8>) {
        let Some(session) = self.sessions.get_mut(&channel) else {
            return;
        };
        let window = &mut session.window;
        window.next_incoming_id = window.next_incoming_id.wrapping_add(1);
        window.incoming_window = window.incoming_window.saturating_sub(1);
        if window.incoming_window <= INCOMING_WINDOW / 2 {
            window.incoming_window = INCOMING_WINDOW;
            put_flow(out, window.local_channel, &session_flow(*window));
        }
        let window = *window;
        let Some(link) = session.links.get_mut(&transfer.handle) else {
            return;
        };
        if transfer.aborted {
            link.partial = None;
            return;
        }
        // A delivery in one frame is read where it lies in the read buffer; only the frames of a
        // multi-frame delivery are joined.
        let partial = match link.partial.take() {
            Some(mut partial) => {
                partial.payload.extend_from_slice(&transfer.payload);
                partial.settled |= transfer.settled.unwrap_or(false);
                partial
            }
            None if transfer.more => Partial {
                delivery_id: transfer.delivery_id.unwrap_or(0),
                settled: transfer.settled.unwrap_or(false),
                message_format: transfer.message_format.unwrap_or(0),
                payload: transfer.payload.to_vec(),
            },
            None => Partial {
                delivery_id: transfer.delivery_id.unwrap_or(0),
                settled: transfer.settled.unwrap_or(false),
                message_format: transfer.message_format.unwrap_or(0),
                payload: Vec::new(),
            },
        };
        if transfer.more {
            link.partial = Some(partial);
            return;
        }
        let payload: &[u8] = if partial.payload.is_empty() {
            &transfer.payload
        } else {
            &partial.payload
        };
        link.delivery_count = link.delivery_count.wrapping_add(1);
        link.credit = link.credit.saturating_sub(1);
        if link.credit <= LINK_CREDIT / 2 && !matches!(link.kind, LinkKind::Refused) {
            link.credit = LINK_CREDIT;
            put_flow(out, window.local_channel, &link_flow(window, link));
        }
        let outcome = match &link.kind {
            LinkKind::Producer(producer) => Some(producer.store(partial.message_format, payload)),
            LinkKind::Requests(node) => {
                let node = *node;
                Some(match self.nodes().answer(node, payload) {
                    Ok(answer) => {
                        self.replies.push(PendingReply {
                            node,
                            reply_to: answer.reply_to,
                            message: answer.message,
                            deadline: Instant::now() + REPLY_LINK_WAIT,
                        });
                        Ok(())
                    }
                    Err(problem) => Err((conditions::ARGUMENT_ERROR, problem)),
                })
            }
            _ => None,
        };
        let Some(outcome) = outcome.filter(|_| !partial.settled) else {
            return;
        };
        let state = match outcome {
            Ok(()) => DeliveryState::Accepted(fe2o3_amqp_types::messaging::Accepted {}),
            Err((condition, description)) => {
                DeliveryState::Rejected(fe2o3_amqp_types::messaging::Rejected {
                    error: Some(amqp_error(condition, description)),
                })
            }
        };
        let disposition = Disposition {
            role: Role::Receiver,
            first: partial.delivery_id,
            last: None,
            settled: true,
            state: Some(state),
            batchable: false,
        };
        put_performative(out, window.local_channel, &disposition);
    }

    fn on_wake(&mut self, wake: Wake, out: &mut Vec<u8>) {
        let (id, detach) = match wake {
            Wake::Appended(id) => (id, None),
            Wake::Detach(id, condition, reason) => (id, Some((condition, reason))),
        };
        for (channel, session) in &mut self.sessions {
            let Some((handle, link)) = session.links.iter_mut().find(|(_, link)| link.id == id)
            else {
                continue;
            };
            match detach {
                Some((condition, reason)) => {
                    detach_with(session.window.local_channel, link, condition, reason, out);
                }
                None => {
                    if link.credit > 0 && !self.ready.contains(&(*channel, *handle)) {
                        self.ready.push((*channel, *handle));
                    }
                }
            }
            return;
        }
    }

    /// The earliest moment something is due: a token expiring under a consumer, a reply link that
    /// did not come, a heartbeat.
    fn next_deadline(&self) -> Option<Instant> {
        let mut deadline = self.heartbeat_every.map(|every| self.last_write + every);
        let mut earliest = |at: Instant| {
            deadline = Some(deadline.map_or(at, |d| d.min(at)));
        };
        for reply in &self.replies {
            earliest(reply.deadline);
        }
        let now = chrono::Utc::now().timestamp();
        for session in self.sessions.values() {
            for link in session.links.values() {
                if let Some(entity) = link.entity()
                    && !link.detaching
                    && let Some(until) = self.auth.authorized_until(entity)
                {
                    let left = until.saturating_sub(now).max(0);
                    earliest(Instant::now() + Duration::from_secs(left.unsigned_abs()));
                }
            }
        }
        deadline
    }

    fn on_timer(&mut self, out: &mut Vec<u8>) {
        if self
            .heartbeat_every
            .is_some_and(|every| self.last_write + every <= Instant::now())
        {
            put_heartbeat(out);
        }
        let now = chrono::Utc::now().timestamp();
        for session in self.sessions.values_mut() {
            for link in session.links.values_mut() {
                if let Some(entity) = link.entity()
                    && !link.detaching
                    && self
                        .auth
                        .authorized_until(entity)
                        .is_some_and(|until| until <= now)
                {
                    let description = format!(
                        "the token for `{entity}` expired; put a new one on $cbs before expiry"
                    );
                    detach_with(
                        session.window.local_channel,
                        link,
                        conditions::UNAUTHORIZED_ACCESS,
                        description,
                        out,
                    );
                }
            }
        }
    }

    /// The largest transfer payload a frame may carry to this client.
    fn max_payload(&self) -> usize {
        (self.remote_max_frame_size as usize)
            .saturating_sub(64)
            .max(64)
    }

    /// Writes what links may send: responses, then consumers' events, until the write buffer is
    /// full or nothing is left.
    fn produce(&mut self, out: &mut Vec<u8>) {
        if !self.replies.is_empty() {
            self.send_replies(out);
        }
        let max_payload = self.max_payload();
        let mut index = 0;
        while index < self.ready.len() && out.len() < WRITE_HIGH_WATER {
            let (channel, handle) = self.ready[index];
            let Some(Session { window, links }) = self.sessions.get_mut(&channel) else {
                self.ready.swap_remove(index);
                continue;
            };
            let Some(link) = links.get_mut(&handle) else {
                self.ready.swap_remove(index);
                continue;
            };
            let LinkKind::Consumer(consumer) = &mut link.kind else {
                self.ready.swap_remove(index);
                continue;
            };
            if link.detaching || link.credit == 0 {
                self.ready.swap_remove(index);
                continue;
            }
            if window.remote_incoming_window == 0 {
                index += 1;
                continue;
            }
            let want = (link.credit as usize)
                .min(READ_CHUNK)
                .min(window.remote_incoming_window as usize);
            let events = consumer.take(want);
            if events.is_empty() {
                consumer.wait();
                self.ready.swap_remove(index);
                continue;
            }
            for event in &events {
                put_delivery(out, window, link.local_handle, &event.encoded, max_payload);
                link.delivery_count = link.delivery_count.wrapping_add(1);
                link.credit -= 1;
            }
            if link.credit == 0 {
                self.ready.swap_remove(index);
            } else {
                index += 1;
            }
        }
    }

    /// Sends each pending response on its reply link: the link whose address the request named,
    /// or after [`REPLY_LINK_WAIT`] the newest reply link of the node.
    fn send_replies(&mut self, out: &mut Vec<u8>) {
        let now = Instant::now();
        let max_payload = self.max_payload();
        let mut pending = std::mem::take(&mut self.replies);
        pending.retain(|reply| {
            let exact = |link: &Link| {
                matches!(&link.kind, LinkKind::Replies { node, address }
                    if *node == reply.node && Some(address.as_str()) == reply.reply_to.as_deref())
            };
            let any = |link: &Link| {
                matches!(&link.kind, LinkKind::Replies { node, .. } if *node == reply.node)
            };
            let late = reply.reply_to.is_none() || reply.deadline <= now;
            for Session { window, links } in self.sessions.values_mut() {
                let found = links
                    .values()
                    .filter(|link| !link.detaching)
                    .find(|link| exact(link))
                    .or_else(|| {
                        late.then(|| {
                            links
                                .values()
                                .filter(|link| !link.detaching && any(link))
                                .max_by_key(|link| link.id)
                        })
                        .flatten()
                    })
                    .map(|link| link.id);
                let Some(id) = found else { continue };
                let Some(link) = links.values_mut().find(|link| link.id == id) else {
                    continue;
                };
                if link.credit == 0 || window.remote_incoming_window == 0 {
                    return true;
                }
                put_delivery(out, window, link.local_handle, &reply.message, max_payload);
                link.delivery_count = link.delivery_count.wrapping_add(1);
                link.credit -= 1;
                return false;
            }
            if late && reply.deadline <= now {
                tracing::debug!(node = ?reply.node, "request without a reply link; response dropped");
                return false;
            }
            true
        });
        self.replies = pending;
    }
}

/// A session-only flow carrying this side's session state.
fn session_flow(window: Window) -> FlowState {
    FlowState {
        next_incoming_id: Some(window.next_incoming_id),
        incoming_window: window.incoming_window,
        next_outgoing_id: window.next_outgoing_id,
        outgoing_window: u32::MAX,
        ..FlowState::default()
    }
}

/// A link flow: the session state plus the link's delivery count and credit.
fn link_flow(window: Window, link: &Link) -> FlowState {
    FlowState {
        handle: Some(link.local_handle),
        delivery_count: Some(link.delivery_count),
        link_credit: Some(link.credit),
        ..session_flow(window)
    }
}

/// Appends one pre-settled delivery, in as many transfer frames as the client's max frame size
/// needs, and counts them against the session.
fn put_delivery(
    out: &mut Vec<u8>,
    window: &mut Window,
    handle: u32,
    message: &[u8],
    max_payload: usize,
) {
    let delivery_id = window.next_delivery_id;
    window.next_delivery_id = window.next_delivery_id.wrapping_add(1);
    let tag = delivery_id.to_be_bytes();
    let mut frames = 0u32;
    let mut put = |chunk: &[u8], more: bool| {
        let header = TransferHeader {
            handle,
            delivery_id,
            delivery_tag: &tag,
            message_format: 0,
            settled: true,
            more,
        };
        put_transfer(out, window.local_channel, header, chunk);
        frames += 1;
    };
    if message.len() <= max_payload {
        put(message, false);
    } else {
        let mut chunks = message.chunks(max_payload).peekable();
        while let Some(chunk) = chunks.next() {
            put(chunk, chunks.peek().is_some());
        }
    }
    window.next_outgoing_id = window.next_outgoing_id.wrapping_add(frames);
    window.remote_incoming_window = window.remote_incoming_window.saturating_sub(frames);
}

/// Detaches (closes) a link with an error; the client's detach will be the answer.
fn detach_with(
    local_channel: u16,
    link: &mut Link,
    condition: &str,
    description: String,
    out: &mut Vec<u8>,
) {
    if link.detaching {
        return;
    }
    link.detaching = true;
    link.credit = 0;
    let detach = Detach {
        handle: link.local_handle.into(),
        closed: true,
        error: Some(amqp_error(condition, description)),
    };
    put_performative(out, local_channel, &detach);
}
