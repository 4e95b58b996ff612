//! The AMQP 1.0 listener: accepts TCP (optionally TLS) connections and serves each on its own task.
//!
//! The same port serves AMQP over WebSockets (`/$servicebus/websocket`, `/$iothub/websocket`,
//! subprotocol `AMQPWSB10`): a connection's first four bytes tell AMQP's protocol header from an
//! HTTP upgrade. One port rather than a second listener means the connection strings the emulator
//! prints work for both transports as they are, and the IoT hub's redirect names one endpoint for
//! both, as Azure's hosts serve both (5671 and 443) under one name.
//!
//! Each connection is served by `connection`, on `hubroute_amqp`'s frames: consumer links send the
//! stored encoding of each event as it is, so serving an event is a frame header and a copy.
//! [`RunningEmulator`] is the in-process handle tests, the quick start and the HTTP ingress use.

mod auth;
mod connection;
mod consumer;
mod iothub;
mod nodes;
mod producer;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::message::__private::Serializable;
use fe2o3_amqp_types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageAnnotations, Properties,
};
use fe2o3_amqp_types::primitives::{SimpleValue, Symbol, Value};
use hubroute_amqp::Stream;
use hubroute_protocol::SasKey;
use serde_bytes::ByteBuf;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::{EmulatorConfig, TlsFiles};
use crate::store::Namespace;
use crate::{Error, PublishedPosition, Result};
use iothub::IotHubFace;

/// What every connection of one emulator shares.
pub(crate) struct Shared {
    pub(crate) namespace: Arc<Namespace>,
    pub(crate) key: SasKey,
    pub(crate) max_message_bytes: usize,
    /// The IoT hub the listener also answers as, if any.
    pub(crate) iot_hub: Option<IotHubFace>,
    /// Cancelled on shutdown: connections close, the listener stops.
    pub(crate) stopping: CancellationToken,
}

/// Where [`RunningEmulator::publish`] puts an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishTarget {
    /// A given partition id.
    Partition(String),
    /// The partition a partition key hashes to (also stamped as `x-opt-partition-key`).
    PartitionKey(String),
    /// The next partition in turn.
    RoundRobin,
}

/// An event to publish in-process.
#[derive(Debug, Clone, Default)]
pub struct EventToPublish {
    /// Body bytes (one data section).
    pub body: Bytes,
    /// AMQP properties (message id, content type, ...).
    pub properties: Properties,
    /// Application properties; values must be AMQP simple values (no lists or maps).
    pub application_properties: Vec<(String, Value)>,
    /// Message annotations, e.g. the `iothub-*` ones the device ingress stamps.
    pub message_annotations: Vec<(String, Value)>,
}

/// Starts emulators.
#[derive(Debug)]
pub struct Emulator;

impl Emulator {
    /// Opens the partitions (loading them from `data_dir`), binds the listener and starts serving.
    pub async fn start(config: EmulatorConfig) -> Result<RunningEmulator> {
        let namespace = Arc::new(Namespace::open(
            &config.hubs,
            config.retention,
            config.data_dir.as_deref(),
        )?);
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let listener = bind_listener(config.amqp_listen).map_err(|source| Error::Io {
            context: format!("binding the AMQP listener to {}", config.amqp_listen),
            source,
        })?;
        let amqp_addr = listener.local_addr().map_err(|source| Error::Io {
            context: "reading the listener address".to_owned(),
            source,
        })?;
        let iot_hub = match &config.iot_hub {
            Some(identity) => {
                let served: Vec<&str> = config.hubs.iter().map(|hub| hub.name.as_str()).collect();
                let event_hub = match &identity.event_hub {
                    Some(name) if served.contains(&name.as_str()) => name.clone(),
                    Some(name) => {
                        return Err(Error::Config {
                            problem: format!(
                                "the IoT hub's built-in endpoint `{name}` is not a served event hub \
                                 (served: {})",
                                served.join(", ")
                            ),
                        });
                    }
                    None => served
                        .first()
                        .map(|name| (*name).to_owned())
                        .unwrap_or_default(),
                };
                Some(IotHubFace {
                    event_hub,
                    policies: identity.policies.clone(),
                    listener: amqp_addr,
                })
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            namespace,
            key: config.key.clone(),
            max_message_bytes: config.max_message_bytes,
            iot_hub,
            stopping: CancellationToken::new(),
        });
        let accept_loop = tokio::spawn(accept_connections(listener, tls, Arc::clone(&shared)));
        tracing::info!(%amqp_addr, tls = config.tls.is_some(), "emulator listening");
        Ok(RunningEmulator {
            amqp_addr,
            tls: config.tls.is_some(),
            shared,
            accept_loop,
        })
    }
}

/// A running emulator. Dropping it without [`RunningEmulator::shutdown`] leaves it serving until the
/// runtime stops.
#[derive(Debug)]
pub struct RunningEmulator {
    amqp_addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RunningEmulator {
    /// The address the AMQP listener is bound to.
    pub fn amqp_addr(&self) -> SocketAddr {
        self.amqp_addr
    }

    /// A connection string for `hub` that the official SDKs and hubroute accept. Without TLS it carries
    /// `UseDevelopmentEmulator=true` (plain AMQP on the given port); with TLS it names the port and
    /// clients use `amqps`.
    pub fn connection_string(&self, hub: &str) -> String {
        let emulator = if self.tls {
            ""
        } else {
            ";UseDevelopmentEmulator=true"
        };
        format!(
            "Endpoint=sb://{}:{};SharedAccessKeyName={};SharedAccessKey={};EntityPath={hub}{emulator}",
            self.amqp_addr.ip(),
            self.amqp_addr.port(),
            self.shared.key.name,
            self.shared.key.expose_secret(),
        )
    }

    /// The IoT hub service connection string of `policy` (`HostName=<ip>:<port>;SharedAccessKeyName=…;
    /// SharedAccessKey=…`, plus `UseDevelopmentEmulator=true` without TLS): hubroute's source resolves
    /// it through the hub's redirect. `None` without an IoT hub or for an unknown policy.
    pub fn iot_hub_connection_string(&self, policy: &str) -> Option<String> {
        let hub = self.shared.iot_hub.as_ref()?;
        let policy = hub.policies.iter().find(|p| p.key.name == policy)?;
        let emulator = if self.tls {
            ""
        } else {
            ";UseDevelopmentEmulator=true"
        };
        Some(format!(
            "HostName={}:{};SharedAccessKeyName={};SharedAccessKey={}{emulator}",
            self.amqp_addr.ip(),
            self.amqp_addr.port(),
            policy.key.name,
            policy.key.expose_secret(),
        ))
    }

    /// Names and partition counts of the served event hubs.
    pub fn hubs(&self) -> Vec<(String, u32)> {
        self.shared
            .namespace
            .hubs()
            .iter()
            .map(|hub| (hub.config.name.clone(), hub.config.partition_count))
            .collect()
    }

    /// Appends one event as a producer would (stamping `x-opt-*` annotations), without AMQP.
    pub fn publish(
        &self,
        hub: &str,
        target: PublishTarget,
        event: EventToPublish,
    ) -> Result<PublishedPosition> {
        let hub = self.shared.namespace.hub(hub)?;
        let (partition, key) = match target {
            PublishTarget::Partition(id) => (hub.partition(&id)?, None),
            PublishTarget::PartitionKey(key) => (hub.partition_for_key(&key), Some(key)),
            PublishTarget::RoundRobin => (hub.next_round_robin(), None),
        };
        let mut application_properties = ApplicationProperties::default();
        for (name, value) in event.application_properties {
            let value = SimpleValue::try_from(value).map_err(|value| Error::Config {
                problem: format!(
                    "application property `{name}` must be a simple AMQP value, not {value:?}"
                ),
            })?;
            application_properties.0.insert(name, value);
        }
        let mut annotations = MessageAnnotations::default();
        for (name, value) in event.message_annotations {
            annotations
                .0
                .insert(OwnedKey::Symbol(Symbol::from(name)), value);
        }
        let message: Message<Body<Value>> = Message::builder()
            .properties(event.properties)
            .application_properties(application_properties)
            .message_annotations(annotations)
            .body(Body::Data(
                vec![Data(ByteBuf::from(event.body.to_vec()))].into(),
            ))
            .build();
        let encoded =
            serde_amqp::to_vec(&Serializable(&message)).map_err(|error| Error::Config {
                problem: format!("an event could not be encoded: {error}"),
            })?;
        partition.append(&encoded, key.as_deref(), self.shared.max_message_bytes)
    }

    /// Force-detaches every producer link of `hub` (`amqp:link:detach-forced`), as the service
    /// does on maintenance: a fault for testing producers' reconnects. Links attached later work.
    pub fn detach_producers(&self, hub: &str) -> Result<()> {
        self.shared.namespace.hub(hub)?.detach_producers();
        Ok(())
    }

    /// Stops accepting, closes every connection and fsyncs partition files.
    pub async fn shutdown(self) -> Result<()> {
        self.shared.stopping.cancel();
        self.accept_loop.abort();
        let _ = self.accept_loop.await;
        self.shared.namespace.sync();
        Ok(())
    }
}

/// The largest TCP segment the listener advertises. Loopback would otherwise negotiate 32 KiB and more,
/// and the Python SDK reads the segment size of its socket and writes it back, which Linux refuses
/// (`EINVAL`) above 32767; a real network path never gets there. 16 KiB keeps loopback fast.
const ADVERTISED_MSS: u32 = 16 * 1024;

fn bind_listener(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_mss(ADVERTISED_MSS)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

pub(crate) fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|error| Error::Tls {
            problem: format!("reading {}: {error}", path.display()),
        })
    };
    let certs = rustls_pemfile::certs(&mut read(&files.cert_pem)?.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|error| Error::Tls {
            problem: format!(
                "{} is not a PEM certificate chain: {error}",
                files.cert_pem.display()
            ),
        })?;
    let key = rustls_pemfile::private_key(&mut read(&files.key_pem)?.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| Error::Tls {
            problem: format!("{} holds no PEM private key", files.key_pem.display()),
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|error| Error::Tls {
            problem: format!("certificate and key do not form a usable TLS identity: {error}"),
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn accept_connections(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a TCP connection failed");
                    continue;
                }
            },
            _ = shared.stopping.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            peer,
            tls.clone(),
            Arc::clone(&shared),
        ));
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
) {
    // Event Hubs speaks TLS from the first byte on 5671 (no AMQP TLS protocol header), which is what
    // the SDKs expect; so the TLS handshake happens before any AMQP byte.
    let stream = match tls {
        Some(tls) => match tls.accept(stream).await {
            Ok(stream) => Stream::from(stream),
            Err(error) => {
                tracing::debug!(%peer, %error, "TLS handshake failed");
                return;
            }
        },
        None => Stream::from(stream),
    };
    let stream = match tokio::time::timeout(SNIFF_TIMEOUT, websocket_or_amqp(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "WebSocket handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "the client sent nothing");
            return;
        }
    };
    connection::serve(stream, peer, shared).await;
}

/// How long a client may take to send its first bytes (and a WebSocket handshake).
const SNIFF_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The AMQP byte stream of a connection: as it is, or inside WebSocket messages when the client
/// opened with an HTTP upgrade request.
async fn websocket_or_amqp(stream: Stream) -> std::io::Result<Stream> {
    use hubroute_protocol::iothub_amqp::{
        EVENT_HUBS_WEBSOCKET_PATH, IOT_HUB_WEBSOCKET_PATH, WEBSOCKET_SUBPROTOCOL,
    };
    let (stream, first) = stream.read_ahead(4).await?;
    if first.as_ref() != b"GET " {
        return Ok(stream);
    }
    hubroute_amqp::websocket::accept(
        stream,
        &[EVENT_HUBS_WEBSOCKET_PATH, IOT_HUB_WEBSOCKET_PATH],
        &[WEBSOCKET_SUBPROTOCOL, "amqp"],
    )
    .await
}

#[cfg(test)]
mod tests;
