//! The AMQP sinks against real peers reached through a TCP proxy that injects faults: the Event
//! Hubs sink against the project's emulator, the Service Bus sink against RabbitMQ's AMQP 1.0
//! plugin at 127.0.0.1:5672 (guest/guest, provisioned by `.ci/test`). A failed operation cuts
//! the connection at the next bytes the sink sends; a stall holds those bytes until released.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::{Body, Message as AmqpMessage};
use fe2o3_amqp::types::primitives::{Timestamp, Value};
use fe2o3_amqp::{Connection, Receiver, Session};
use fe2o3_amqp_cbs::client::CbsClient;
use fe2o3_amqp_cbs::token::CbsToken;
use hubroute_emulator::{Emulator, EmulatorConfig, HubConfig, RunningEmulator};
use hubroute_protocol::{ConnectionString, cbs};
use hubroute_sinks::{AckSender, AmqpSink, EventHubsSinkConfig, ServiceBusSinkConfig, Sink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::quick_retry;
use crate::contract::{Harness, RowKey, conformance};
use crate::faults::Backend;

const RABBITMQ: &str = "127.0.0.1:5672";

/// A TCP proxy to `upstream`: every chunk the client sends asks the backend first. Counts the
/// connections it accepted.
async fn faulty_proxy(upstream: SocketAddr, backend: Arc<Backend>) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let backend = Arc::clone(&backend);
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let upstream_bytes = async {
                    let mut chunk = vec![0u8; 64 * 1024];
                    loop {
                        let n = client_read.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 || backend.before_operation().await {
                            return;
                        }
                        if server_write.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let downstream_bytes = tokio::io::copy(&mut server_read, &mut client_write);
                tokio::select! {
                    () = upstream_bytes => {}
                    _ = downstream_bytes => {}
                }
            });
        }
    });
    (port, connections)
}

/// The row a message's body names (the conformance rows carry their partition and number).
pub(crate) fn row_key(body: &[u8]) -> RowKey {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    (
        "hub".to_owned(),
        json["partition"].as_str().unwrap().to_owned(),
        json["n"].as_i64().unwrap(),
    )
}

pub(crate) fn body_bytes(message: &AmqpMessage<Body<Value>>) -> Vec<u8> {
    match &message.body {
        Body::Data(sections) => sections.iter().flat_map(|s| s.0.to_vec()).collect(),
        other => panic!("expected a data body, not {other:?}"),
    }
}

/// Receives from `receiver` until it is quiet for half a second, accepting each message.
async fn drain(receiver: &mut Receiver) -> Vec<AmqpMessage<Body<Value>>> {
    let mut messages = Vec::new();
    while let Ok(delivery) =
        tokio::time::timeout(Duration::from_millis(500), receiver.recv::<Body<Value>>()).await
    {
        let delivery = delivery.unwrap();
        receiver.accept(&delivery).await.unwrap();
        messages.push(delivery.into_message());
    }
    messages
}

pub(crate) struct EventHubsHarness {
    pub(crate) emulator: RunningEmulator,
    port: u16,
    pub(crate) connections: Arc<AtomicU64>,
    backend: Arc<Backend>,
}

impl EventHubsHarness {
    pub(crate) async fn new() -> Self {
        let emulator = Emulator::start(EmulatorConfig {
            amqp_listen: "127.0.0.1:0".parse().unwrap(),
            hubs: vec![HubConfig::new("target", 2)],
            ..EmulatorConfig::default()
        })
        .await
        .unwrap();
        let backend = Backend::new();
        let (port, connections) = faulty_proxy(emulator.amqp_addr(), Arc::clone(&backend)).await;
        Self {
            emulator,
            port,
            connections,
            backend,
        }
    }

    /// The sink's connection string: the emulator's, through the proxy.
    fn connection_string(&self) -> ConnectionString {
        let direct = self.emulator.connection_string("target");
        let through_proxy = direct.replace(
            &format!(":{}", self.emulator.amqp_addr().port()),
            &format!(":{}", self.port),
        );
        ConnectionString::parse(&through_proxy).unwrap()
    }

    pub(crate) fn config(&self) -> EventHubsSinkConfig {
        let mut config = EventHubsSinkConfig::new("downstream", self.connection_string());
        config.retry = quick_retry();
        config
    }

    /// Every event of the target hub, read directly from the emulator.
    pub(crate) async fn events(&self) -> Vec<AmqpMessage<Body<Value>>> {
        let cs = ConnectionString::parse(&self.emulator.connection_string("target")).unwrap();
        let mut connection = Connection::builder()
            .container_id("conformance-reader")
            .sasl_profile(SaslProfile::Anonymous)
            .open(format!("amqp://{}", self.emulator.amqp_addr()).as_str())
            .await
            .unwrap();
        let mut session = Session::begin(&mut connection).await.unwrap();
        let mut cbs_client = CbsClient::attach(&mut session).await.unwrap();
        let audience = cs.audience("target");
        let expiry = chrono::Utc::now().timestamp() + 600;
        let token = cs.key.as_ref().unwrap().sign(&audience, expiry);
        cbs_client
            .put_token(
                audience.as_str(),
                CbsToken::new(
                    token.as_str(),
                    cbs::SAS_TOKEN_TYPE,
                    Timestamp::from_milliseconds(expiry * 1000),
                ),
            )
            .await
            .unwrap();
        let mut events = Vec::new();
        for partition in 0..2 {
            let address = format!("target/ConsumerGroups/$Default/Partitions/{partition}");
            let mut receiver =
                Receiver::attach(&mut session, format!("reader-{partition}"), address)
                    .await
                    .unwrap();
            events.extend(drain(&mut receiver).await);
            receiver.close().await.unwrap();
        }
        session.end().await.unwrap();
        connection.close().await.unwrap();
        events
    }
}

#[async_trait]
impl Harness for EventHubsHarness {
    async fn build(&mut self, acks: AckSender) -> Box<dyn Sink> {
        Box::new(AmqpSink::event_hubs(&self.config(), acks).unwrap())
    }

    async fn stored(&mut self) -> Vec<RowKey> {
        self.events()
            .await
            .iter()
            .map(|m| row_key(&body_bytes(m)))
            .collect()
    }

    fn backend(&self) -> Arc<Backend> {
        Arc::clone(&self.backend)
    }
}

#[tokio::test]
async fn the_event_hubs_sink_conforms() {
    conformance(EventHubsHarness::new).await;
}

/// RabbitMQ's queue `name`, declared by attaching a receiver to `/queue/<name>` (the plugin
/// declares such queues), read back through `/amq/queue/<name>`.
struct RabbitHarness {
    queue: String,
    port: u16,
    backend: Arc<Backend>,
    /// Everything read from the queue so far (reading consumes).
    seen: Vec<RowKey>,
}

async fn rabbit_session() -> (
    fe2o3_amqp::connection::ConnectionHandle<()>,
    fe2o3_amqp::session::SessionHandle<()>,
) {
    let mut connection = Connection::builder()
        .container_id(format!("conformance-{}", uuid::Uuid::new_v4()))
        .sasl_profile(SaslProfile::Plain {
            username: "guest".into(),
            password: "guest".into(),
        })
        .open(format!("amqp://{RABBITMQ}").as_str())
        .await
        .unwrap_or_else(|error| {
            panic!(
                "RabbitMQ with the AMQP 1.0 plugin is not reachable at {RABBITMQ} ({error}); \
                 run .ci/test, which enables rabbitmq_amqp1_0"
            )
        });
    let session = Session::begin(&mut connection).await.unwrap();
    (connection, session)
}

impl RabbitHarness {
    async fn new() -> Self {
        let queue = format!("hubroute-conformance-{}", uuid::Uuid::new_v4().simple());
        let (mut connection, mut session) = rabbit_session().await;
        let declare = Receiver::attach(&mut session, "declare", format!("/queue/{queue}"))
            .await
            .unwrap();
        // RabbitMQ 3.10 answers a close with a non-closing detach; the queue exists either way.
        let _ = declare.close().await;
        let _ = session.end().await;
        let _ = connection.close().await;
        let backend = Backend::new();
        let (port, _) = faulty_proxy(RABBITMQ.parse().unwrap(), Arc::clone(&backend)).await;
        Self {
            queue,
            port,
            backend,
            seen: Vec::new(),
        }
    }
}

impl Drop for RabbitHarness {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_queue", &self.queue])
            .output();
    }
}

#[async_trait]
impl Harness for RabbitHarness {
    async fn build(&mut self, acks: AckSender) -> Box<dyn Sink> {
        let mut config = ServiceBusSinkConfig::broker(
            "rabbit",
            format!("amqp://127.0.0.1:{}", self.port),
            format!("/amq/queue/{}", self.queue),
        );
        config.username = Some("guest".into());
        config.password = Some(hubroute_sinks::Secret::new("guest"));
        config.retry = quick_retry();
        Box::new(AmqpSink::service_bus(&config, acks).unwrap())
    }

    async fn stored(&mut self) -> Vec<RowKey> {
        let (mut connection, mut session) = rabbit_session().await;
        let mut receiver = Receiver::attach(
            &mut session,
            "conformance-reader",
            format!("/amq/queue/{}", self.queue),
        )
        .await
        .unwrap();
        for message in drain(&mut receiver).await {
            self.seen.push(row_key(&body_bytes(&message)));
        }
        let _ = receiver.close().await;
        let _ = session.end().await;
        let _ = connection.close().await;
        self.seen.clone()
    }

    fn backend(&self) -> Arc<Backend> {
        Arc::clone(&self.backend)
    }
}

#[tokio::test]
async fn the_service_bus_sink_conforms_against_rabbitmq() {
    conformance(RabbitHarness::new).await;
}
