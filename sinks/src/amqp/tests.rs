//! Configuration checks, and the AMQP sinks against the project's emulator as a real peer: what the
//! event hub stores, per-key order, over-size and rejected messages, refused entities and keys.

use std::time::Duration;

use fe2o3_amqp::{Connection, Receiver, Session};
use fe2o3_amqp_cbs::client::CbsClient;
use fe2o3_amqp_cbs::token::CbsToken;
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::{Body, Message};
use fe2o3_amqp_types::primitives::{Timestamp, Value};
use hubroute_emulator::{Emulator, EmulatorConfig, HubConfig, RunningEmulator};
use hubroute_message::{Message as Row, MessageBatchBuilder};
use hubroute_protocol::{ConnectionString, cbs};
use tokio::sync::mpsc;

use super::*;
use crate::{Ack, RetryPolicy, SinkConfig};

#[test]
fn settings_are_validated_without_connecting() {
    let emulator_cs = "Endpoint=sb://127.0.0.1:5673;SharedAccessKeyName=k;SharedAccessKey=s;UseDevelopmentEmulator=true";
    let cases = [
        (
            format!(r#"{{"type":"eventhubs","name":"e","connection_string":"{emulator_cs};EntityPath=t"}}"#),
            Ok(()),
        ),
        (
            format!(r#"{{"type":"eventhubs","name":"e","connection_string":"{emulator_cs}"}}"#),
            Err("no event hub"),
        ),
        (
            format!(r#"{{"type":"eventhubs","name":"e","connection_string":"{emulator_cs};EntityPath=t","max_in_flight":0}}"#),
            Err("max_in_flight must be at least 1"),
        ),
        (
            format!(r#"{{"type":"eventhubs","name":"e","connection_string":"{emulator_cs};EntityPath=t","token_lifetime":"1s"}}"#),
            Err("token_lifetime must be at least"),
        ),
        (
            r#"{"type":"servicebus","name":"s","url":"amqp://h:5672","entity":"/amq/queue/q","username":"u"}"#.to_owned(),
            Err("give both `username` and `password`"),
        ),
        (
            r#"{"type":"servicebus","name":"s","url":"http://h","entity":"q"}"#.to_owned(),
            Err("url scheme `http` is not amqp or amqps"),
        ),
        (
            r#"{"type":"servicebus","name":"s","url":"amqp://u:p@h/q","entity":"q"}"#.to_owned(),
            Err("amqp[s]://host[:port] only"),
        ),
        (
            r#"{"type":"servicebus","name":"s","url":"amqps://h"}"#.to_owned(),
            Err("`entity` is required with `url`"),
        ),
        (
            r#"{"type":"servicebus","name":"s","entity":"q"}"#.to_owned(),
            Err("give `connection_string` (Service Bus) or `url`"),
        ),
        (
            format!(r#"{{"type":"servicebus","name":"s","connection_string":"{emulator_cs};EntityPath=q","url":"amqp://h"}}"#),
            Err("not both"),
        ),
        (
            format!(r#"{{"type":"servicebus","name":"s","connection_string":"{emulator_cs};EntityPath=q","max_message_size":10}}"#),
            Err("max_message_size must be at least"),
        ),
    ];
    for (json, expected) in cases {
        let config: SinkConfig =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
        match (config.validate(), expected) {
            (Ok(()), Ok(())) => {}
            (Err(error), Err(message)) => {
                assert!(error.to_string().contains(message), "{json}: {error}");
                assert!(!error.is_retryable());
            }
            (actual, expected) => panic!("{json}: {actual:?}, expected {expected:?}"),
        }
    }
}

#[test]
fn targets_resolve_defaults_per_kind() {
    let cs = ConnectionString::parse(
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=s;EntityPath=alerts",
    )
    .unwrap();
    let event_hubs = EventHubsSinkConfig::new("e", cs.clone()).target().unwrap();
    assert_eq!(
        event_hubs.describe(),
        "amqps://ns.servicebus.windows.net:5671/alerts"
    );
    assert!(event_hubs.batch_format);
    assert_eq!(
        event_hubs.system_properties,
        SystemPropertyPlacement::MessageAnnotations
    );
    let mut service_bus = ServiceBusSinkConfig::broker("s", "amqp://127.0.0.1", "/amq/queue/q");
    let broker = service_bus.target().unwrap();
    assert_eq!(broker.describe(), "amqp://127.0.0.1:5672/amq/queue/q");
    assert!(
        !broker.batch_format,
        "a plain broker gets one message per delivery"
    );
    assert_eq!(
        broker.system_properties,
        SystemPropertyPlacement::ApplicationProperties
    );
    service_bus.url = None;
    service_bus.entity = None;
    service_bus.connection_string = Some(cs);
    let azure = service_bus.target().unwrap();
    assert!(azure.batch_format, "Service Bus takes batches");
    assert!(azure.send_user_id, "IoT Hub sends UserId to Service Bus");
    assert_eq!(azure.address, "alerts");
}

async fn emulator(max_message_bytes: usize) -> RunningEmulator {
    Emulator::start(EmulatorConfig {
        amqp_listen: "127.0.0.1:0".parse().unwrap(),
        hubs: vec![HubConfig::new("target", 2)],
        max_message_bytes,
        ..EmulatorConfig::default()
    })
    .await
    .expect("the emulator starts")
}

fn config(emulator: &RunningEmulator, hub: &str) -> EventHubsSinkConfig {
    let mut config = EventHubsSinkConfig::new(
        "downstream",
        ConnectionString::parse(&emulator.connection_string(hub)).unwrap(),
    );
    config.retry = RetryPolicy {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
    };
    config
}

/// Every event of `hub`'s `partitions`, read from the start until the partition is quiet.
async fn read_all(
    emulator: &RunningEmulator,
    hub: &str,
    partitions: u32,
) -> Vec<(String, Message<Body<Value>>)> {
    let cs = ConnectionString::parse(&emulator.connection_string(hub)).unwrap();
    let mut connection = Connection::builder()
        .container_id("sink-test-reader")
        .sasl_profile(fe2o3_amqp::sasl_profile::SaslProfile::Anonymous)
        .open(format!("amqp://{}", emulator.amqp_addr()).as_str())
        .await
        .unwrap();
    let mut session = Session::begin(&mut connection).await.unwrap();
    let mut cbs_client = CbsClient::attach(&mut session).await.unwrap();
    let audience = cs.audience(hub);
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
    for partition in 0..partitions {
        let address = format!("{hub}/ConsumerGroups/$Default/Partitions/{partition}");
        let mut receiver = Receiver::attach(&mut session, format!("reader-{partition}"), address)
            .await
            .unwrap();
        while let Ok(delivery) =
            tokio::time::timeout(Duration::from_millis(500), receiver.recv::<Body<Value>>()).await
        {
            let delivery = delivery.unwrap();
            receiver.accept(&delivery).await.unwrap();
            events.push((partition.to_string(), delivery.into_message()));
        }
        receiver.close().await.unwrap();
    }
    session.end().await.unwrap();
    connection.close().await.unwrap();
    events
}

fn body_text(message: &Message<Body<Value>>) -> String {
    match &message.body {
        Body::Data(sections) => sections
            .iter()
            .map(|section| String::from_utf8_lossy(&section.0).into_owned())
            .collect(),
        other => panic!("expected a data body, not {other:?}"),
    }
}

fn row(device: &str, body: String) -> Row {
    let mut row = Row::telemetry(body);
    row.system.connection_device_id = Some(device.to_owned());
    row
}

async fn publish(sink: &mut AmqpSink, acks: &mut mpsc::Receiver<Ack>, rows: &[Row]) -> Ack {
    let batch = MessageBatchBuilder::batch_of(rows).unwrap();
    sink.write(SinkBatch { ticket: 1, batch }).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), acks.recv())
        .await
        .expect("an ack within 30 s")
        .expect("the ack channel stays open")
}

#[tokio::test]
async fn batches_land_per_device_in_one_partition_in_order() {
    let emulator = emulator(1024 * 1024).await;
    let (tx, mut rx) = mpsc::channel(8);
    let mut sink = AmqpSink::event_hubs(&config(&emulator, "target"), tx).unwrap();
    let rows: Vec<Row> = (0..300)
        .map(|i| row(&format!("device-{}", i % 7), format!(r#"{{"i":{i}}}"#)))
        .collect();
    let ack = publish(&mut sink, &mut rx, &rows).await;
    assert!(ack.failed.is_empty(), "{ack:?}");
    sink.flush(FlushReason::Shutdown).await.unwrap();

    let events = read_all(&emulator, "target", 2).await;
    assert_eq!(events.len(), 300, "every row once");
    let mut partition_of = std::collections::HashMap::new();
    let mut last_index = std::collections::HashMap::new();
    for (partition, message) in &events {
        let key = match message
            .message_annotations
            .as_ref()
            .and_then(|a| a.0.get(&OwnedKey::from("x-opt-partition-key")))
        {
            Some(Value::String(key)) => key.clone(),
            other => panic!("no partition key: {other:?}"),
        };
        assert_eq!(
            partition_of.entry(key.clone()).or_insert(partition.clone()),
            partition,
            "device {key} split over partitions"
        );
        let body: serde_json::Value = serde_json::from_str(&body_text(message)).unwrap();
        let index = body["i"].as_i64().unwrap();
        if let Some(previous) = last_index.insert(key.clone(), index) {
            assert!(previous < index, "{key}: {index} after {previous}");
        }
        assert_eq!(format!("device-{}", index % 7), key);
    }
    emulator.shutdown().await.unwrap();
}

#[tokio::test]
async fn over_size_and_rejected_messages_fail_their_rows_with_the_reason() {
    const LIMIT: usize = 8 * 1024;
    let emulator = emulator(LIMIT).await;
    let (tx, mut rx) = mpsc::channel(8);
    let mut config = config(&emulator, "target");
    config.partition_key = PartitionKey::None;
    let mapping = Mapping::of(&config.target().unwrap());
    // A body whose message fits the link (section and envelope included) but not the emulator's
    // per-event limit once it stamps sequence number, offset and enqueued time, as Event Hubs does.
    let borderline = (7000..LIMIT)
        .find(|&len| {
            let batch = MessageBatchBuilder::batch_of(&[row("d", "b".repeat(len))]).unwrap();
            let view = MessageColumns::try_new(&batch).unwrap();
            let mut encoded = Vec::new();
            mapping.encode(&mut Encoder::default(), &view, 0, None, &mut encoded);
            let encoded = encoded.len();
            encoded + 8 + 48 <= LIMIT && encoded + 60 > LIMIT
        })
        .expect("a borderline size exists");
    let rows = [
        row("d", "small-0".into()),
        row("d", "x".repeat(3 * LIMIT)),
        row("d", "small-2".into()),
        row("d", "b".repeat(borderline)),
        row("d", "small-4".into()),
    ];
    let mut sink = AmqpSink::event_hubs(&config, tx).unwrap();
    let ack = publish(&mut sink, &mut rx, &rows).await;
    let failed: Vec<usize> = ack.failed.iter().map(|f| f.row).collect();
    assert_eq!(failed, [1, 3], "{ack:?}");
    assert!(
        ack.failed[0]
            .error
            .contains("amqp:link:message-size-exceeded")
            && ack.failed[0]
                .error
                .contains(&format!("at most {LIMIT} bytes")),
        "{}",
        ack.failed[0].error
    );
    assert!(
        ack.failed[1].error.starts_with("rejected by amqp://")
            && ack.failed[1]
                .error
                .contains("amqp:link:message-size-exceeded"),
        "{}",
        ack.failed[1].error
    );
    sink.flush(FlushReason::Shutdown).await.unwrap();
    let mut stored: Vec<String> = read_all(&emulator, "target", 2)
        .await
        .iter()
        .map(|(_, m)| body_text(m))
        .collect();
    stored.sort();
    assert_eq!(stored, ["small-0", "small-2", "small-4"]);
    emulator.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_refused_entity_or_key_stops_the_sink_with_an_error_naming_it() {
    let emulator = emulator(1024 * 1024).await;
    let wrong_key = {
        let text = emulator
            .connection_string("target")
            .replace(hubroute_emulator::DEFAULT_KEY_VALUE, "not-the-key");
        let mut config = config(&emulator, "target");
        config.connection_string = ConnectionString::parse(&text).unwrap();
        config
    };
    let cases = [
        (
            config(&emulator, "missing-hub"),
            "amqp:not-found",
            "missing-hub",
        ),
        (wrong_key, "put-token", "target"),
    ];
    for (config, condition, named) in cases {
        let (tx, mut rx) = mpsc::channel(8);
        let mut sink = AmqpSink::event_hubs(&config, tx).unwrap();
        let batch = MessageBatchBuilder::batch_of(&[row("d", "x".into())]).unwrap();
        sink.write(SinkBatch { ticket: 1, batch }).await.unwrap();
        let error = tokio::time::timeout(Duration::from_secs(30), sink.stopped())
            .await
            .expect("the sink stops");
        let message = error.to_string();
        assert!(
            message.contains("sink `downstream`")
                && message.contains(condition)
                && message.contains(named),
            "{message}"
        );
        assert!(
            !message.contains("not-the-key"),
            "the key leaked: {message}"
        );
        assert!(!error.is_retryable());
        assert!(rx.try_recv().is_err(), "no ack for refused rows");
    }
    emulator.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_probe_opens_authenticates_and_attaches_without_sending() {
    let emulator = emulator(1024 * 1024).await;
    AmqpSink::probe_event_hubs(&config(&emulator, "target"))
        .await
        .unwrap();
    assert!(
        read_all(&emulator, "target", 2).await.is_empty(),
        "the probe sends nothing"
    );

    let error = AmqpSink::probe_event_hubs(&config(&emulator, "missing-hub"))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("amqp:not-found") && !error.is_retryable(),
        "{error}"
    );
    let wrong_key = {
        let text = emulator
            .connection_string("target")
            .replace(hubroute_emulator::DEFAULT_KEY_VALUE, "not-the-key");
        let mut config = config(&emulator, "target");
        config.connection_string = ConnectionString::parse(&text).unwrap();
        config
    };
    let error = AmqpSink::probe_event_hubs(&wrong_key).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("sink `downstream`") && message.contains("put-token"),
        "{message}"
    );
    assert!(
        !message.contains("not-the-key"),
        "the key leaked: {message}"
    );
    assert!(!error.is_retryable());

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = {
        let text = emulator
            .connection_string("target")
            .replace(&emulator.amqp_addr().to_string(), &closed.to_string());
        let mut config = config(&emulator, "target");
        config.connection_string = ConnectionString::parse(&text).unwrap();
        config
    };
    let error = AmqpSink::probe_event_hubs(&down).await.unwrap_err();
    assert!(
        error.to_string().contains("TCP connect failed") && error.is_retryable(),
        "{error}"
    );
    emulator.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_probe_of_a_broker_queue_checks_the_credentials() {
    let queue = |password: &str| {
        let mut config = ServiceBusSinkConfig::broker(
            "rabbit",
            "amqp://127.0.0.1:5672",
            format!("/queue/hr-probe-{}", uuid::Uuid::new_v4().simple()),
        );
        config.username = Some("guest".into());
        config.password = Some(crate::Secret::new(password));
        config
    };
    AmqpSink::probe_service_bus(&queue("guest"))
        .await
        .expect("RabbitMQ with the AMQP 1.0 plugin at 127.0.0.1:5672 (guest/guest): run .ci/test");
    let error = AmqpSink::probe_service_bus(&queue("wrong"))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("SASL authentication") && !error.is_retryable(),
        "{error}"
    );
}
