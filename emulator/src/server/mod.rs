//! The AMQP 1.0 listener: accepts TCP (optionally TLS) connections and serves each on its own task.
//!
//! The emulator is built on fe2o3-amqp's acceptor. Each connection gets a fresh SASL acceptor bound to
//! its own authentication state; sessions and links are then routed by address (see `connection`).
//! [`RunningEmulator`] is the in-process handle tests, the quick start and the HTTP ingress use.

mod auth;
mod connection;
mod consumer;
mod nodes;
mod producer;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fe2o3_amqp::acceptor::ConnectionAcceptor;
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageAnnotations, Properties,
};
use fe2o3_amqp_types::primitives::{SimpleValue, Symbol, Value};
use hubroute_protocol::SasKey;
use serde_bytes::ByteBuf;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::{EmulatorConfig, TlsFiles};
use crate::store::Namespace;
use crate::{Error, PublishedPosition, Result};

/// What every connection of one emulator shares.
pub(crate) struct Shared {
    pub(crate) namespace: Arc<Namespace>,
    pub(crate) key: SasKey,
    pub(crate) max_message_bytes: usize,
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
        let shared = Arc::new(Shared {
            namespace,
            key: config.key.clone(),
            max_message_bytes: config.max_message_bytes,
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
        let message = Message::builder()
            .properties(event.properties)
            .application_properties(application_properties)
            .message_annotations(annotations)
            .body(Body::Data(
                vec![Data(ByteBuf::from(event.body.to_vec()))].into(),
            ))
            .build();
        partition.append(message, key.as_deref(), self.shared.max_message_bytes)
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

fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor> {
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

/// Properties announced on Open, Begin and Attach. Setting them also makes fe2o3-amqp encode those
/// performatives with all their fields, which the Python SDK requires.
pub(crate) fn product_properties() -> fe2o3_amqp_types::definitions::Fields {
    let mut properties = fe2o3_amqp_types::definitions::Fields::new();
    properties.insert(
        Symbol::from("product"),
        Value::String("hubroute-emulator".to_owned()),
    );
    properties
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
) {
    let auth = Arc::new(Mutex::new(auth::ConnectionAuth::default()));
    let sasl = auth::EventHubsSasl::new(shared.key.clone(), Arc::clone(&auth));
    // Every optional field is set so that the Open frame is encoded in full: the Python SDK's AMQP
    // stack indexes all ten fields and fails on a frame whose trailing nulls are omitted.
    let builder = ConnectionAcceptor::builder()
        .container_id(format!("hubroute-emulator-{}", uuid::Uuid::new_v4()))
        .max_frame_size(262_144u32)
        .channel_max(1024u16)
        .idle_time_out(240_000u32)
        .add_outgoing_locales("en-US")
        .add_incoming_locales("en-US")
        .add_offered_capabilities("com.microsoft:hubroute-emulator")
        .add_desired_capabilities("com.microsoft:hubroute-emulator")
        .properties(product_properties())
        .sasl_acceptor(sasl);
    // Event Hubs speaks TLS from the first byte on 5671 (no AMQP TLS protocol header), which is what
    // the SDKs expect; so the TLS handshake happens here and fe2o3-amqp sees a plain stream.
    let connection = match tls {
        Some(tls) => match tls.accept(stream).await {
            Ok(stream) => builder.build().accept(stream).await,
            Err(error) => {
                tracing::debug!(%peer, %error, "TLS handshake failed");
                return;
            }
        },
        None => builder.build().accept(stream).await,
    };
    let connection = match connection {
        Ok(connection) => connection,
        Err(error) => {
            tracing::debug!(%peer, %error, "AMQP connection handshake failed");
            return;
        }
    };
    let state = Arc::new(connection::ConnectionState {
        shared,
        auth,
        replies: Arc::default(),
    });
    connection::serve_sessions(connection, state).await;
}

#[cfg(test)]
mod tests;
