//! End-to-end tests of the AMQP endpoints: the engine routes from the emulator's event hub `hub`
//! into its event hub `target` (`type = "eventhubs"`), read back by the official `azure-eventhub`
//! consumer, and into a RabbitMQ queue (`type = "servicebus"` as a plain AMQP 1.0 broker), read back
//! by Apache Qpid Proton. Faults: forced detaches of the target's links, an emulator restart over
//! its data directory, an over-size message, a broker that refuses the address.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use fe2o3_amqp::types::messaging::{MessageId, Properties};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Timestamp};
use hubroute_emulator::{
    Emulator, EmulatorConfig, EventToPublish, HubConfig, PublishTarget, RunningEmulator,
};
use hubroute_engine::config::LoadedConfig;
use hubroute_engine::pipeline::RunningEngine;
use serde_amqp::Value;
use serde_json::{Value as Json, json};

use crate::support::{EventHubConnection, hubroute, run_python};

const DEVICES: usize = 8;
/// `iothub-enqueuedtime` of message 0; message `i` is `i` ms later.
const ENQUEUED_BASE_MS: i64 = 1_767_225_600_000;
const AUTH_METHOD: &str =
    r#"{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#;

async fn emulator(data_dir: Option<&Path>, listen: &str) -> RunningEmulator {
    Emulator::start(EmulatorConfig {
        amqp_listen: listen.parse().unwrap(),
        hubs: vec![HubConfig::new("hub", 4), HubConfig::new("target", 4)],
        data_dir: data_dir.map(Path::to_path_buf),
        ..EmulatorConfig::default()
    })
    .await
    .expect("the emulator starts")
}

fn device(i: usize) -> String {
    format!("device-{:02}", i % DEVICES)
}

fn temperature(i: usize) -> usize {
    20 + (i * 7) % 11
}

/// Device message `i` as IoT Hub's built-in endpoint carries it: properties, typed application
/// properties and the `iothub-*` annotations.
fn device_message(i: usize, body: String) -> EventToPublish {
    let annotation = |name: &str, value: Value| (name.to_owned(), value);
    EventToPublish {
        body: Bytes::from(body),
        properties: Properties {
            message_id: Some(MessageId::String(format!("msg-{i}"))),
            correlation_id: Some(MessageId::String(format!("corr-{i}"))),
            user_id: Some(Binary::from(b"plant-hub".to_vec())),
            content_type: Some(Symbol::from("application/json")),
            content_encoding: Some(Symbol::from("utf-8")),
            ..Properties::default()
        },
        application_properties: vec![
            (
                "level".to_owned(),
                Value::String(
                    if i.is_multiple_of(5) {
                        "critical"
                    } else {
                        "info"
                    }
                    .to_owned(),
                ),
            ),
            ("count".to_owned(), Value::Long(i64::try_from(i).unwrap())),
            ("ratio".to_owned(), Value::Double((i as f64 / 4.0).into())),
            ("ok".to_owned(), Value::Bool(i.is_multiple_of(2))),
        ],
        message_annotations: vec![
            annotation("iothub-connection-device-id", Value::String(device(i))),
            annotation(
                "iothub-connection-auth-method",
                Value::String(AUTH_METHOD.to_owned()),
            ),
            annotation(
                "iothub-connection-auth-generation-id",
                Value::String("638000000000000000".to_owned()),
            ),
            annotation(
                "iothub-enqueuedtime",
                Value::Timestamp(Timestamp::from_milliseconds(
                    ENQUEUED_BASE_MS + i64::try_from(i).unwrap(),
                )),
            ),
            annotation(
                "iothub-message-source",
                Value::String("Telemetry".to_owned()),
            ),
            annotation(
                "dt-dataschema",
                Value::String("dtmi:com:example:Thermostat;1".to_owned()),
            ),
        ],
    }
}

fn body(i: usize) -> String {
    format!(
        r#"{{"device":"{}","seq":{},"temperature":{}}}"#,
        device(i),
        i / DEVICES,
        temperature(i)
    )
}

/// Publishes messages `range` into `hub`, partitioned by device as IoT Hub does.
fn publish(
    emulator: &RunningEmulator,
    range: std::ops::Range<usize>,
    body_of: impl Fn(usize) -> String,
) {
    for i in range {
        emulator
            .publish(
                "hub",
                PublishTarget::PartitionKey(device(i)),
                device_message(i, body_of(i)),
            )
            .expect("publishing into the source hub");
    }
}

fn load(dir: &Path, text: &str) -> LoadedConfig {
    let path = dir.join("hubroute.toml");
    std::fs::write(&path, text).unwrap();
    LoadedConfig::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// An engine configuration routing `condition` from `hub` to the one endpoint `sink`.
fn config(dir: &Path, source: &str, sink: &str, condition: &str) -> String {
    let dir = dir.display();
    format!(
        r#"
hub_name = "plant-hub"

[source]
connection_string = "{source}"
batch_max_rows = 256
batch_linger = "10ms"

[checkpoint]
dir = "{dir}/checkpoints"
interval = "100ms"

[dead_letters]
store = {{ kind = "local", root = "{dir}" }}

[service]
listen = "127.0.0.1:0"
stall_after = "5s"

[[endpoints]]
sink = {sink}

[[routes]]
name = "selected"
condition = "{condition}"
endpoint = "forward"

[[enrichments]]
key = "hubName"
value = "$iothubname"
endpoints = ["forward"]

[[enrichments]]
key = "region"
value = "eu-west"
endpoints = ["forward"]
"#
    )
}

/// Events committed over all partitions (every source event is routed or skipped, then committed).
fn committed(engine: &RunningEngine) -> usize {
    engine
        .committed_positions()
        .iter()
        .filter_map(|(_, c)| *c)
        .map(|c| usize::try_from(c + 1).unwrap())
        .sum()
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < timeout,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn typed(kind: &str, value: &Json) -> Json {
    json!({ "type": kind, "value": value })
}

/// What a consumer must see for routed message `i`: application properties (typed, enrichments
/// included) and system properties. `string` is how the consumer types AMQP strings: the Python
/// Event Hubs SDK (pyamqp) decodes strings and binaries alike as `bytes`.
fn expected_event(i: usize, string: &str) -> (BTreeMap<String, Json>, BTreeMap<String, Json>) {
    let properties = BTreeMap::from([
        (
            "level".to_owned(),
            typed(
                string,
                &json!(if i.is_multiple_of(5) {
                    "critical"
                } else {
                    "info"
                }),
            ),
        ),
        ("count".to_owned(), typed("int", &json!(i))),
        ("ratio".to_owned(), typed("float", &json!(i as f64 / 4.0))),
        ("ok".to_owned(), typed("bool", &json!(i.is_multiple_of(2)))),
        ("hubName".to_owned(), typed(string, &json!("plant-hub"))),
        ("region".to_owned(), typed(string, &json!("eu-west"))),
    ]);
    let system = BTreeMap::from([
        ("message-id".to_owned(), json!(format!("msg-{i}"))),
        ("correlation-id".to_owned(), json!(format!("corr-{i}"))),
        ("user-id".to_owned(), json!("plant-hub")),
        ("content-type".to_owned(), json!("application/json")),
        ("content-encoding".to_owned(), json!("utf-8")),
        ("iothub-connection-device-id".to_owned(), json!(device(i))),
        (
            "iothub-connection-auth-method".to_owned(),
            json!(AUTH_METHOD),
        ),
        (
            "iothub-connection-auth-generation-id".to_owned(),
            json!("638000000000000000"),
        ),
        (
            "iothub-enqueuedtime".to_owned(),
            json!(ENQUEUED_BASE_MS + i64::try_from(i).unwrap()),
        ),
        ("iothub-message-source".to_owned(), json!("Telemetry")),
        (
            "dt-dataschema".to_owned(),
            json!("dtmi:com:example:Thermostat;1"),
        ),
        ("x-opt-partition-key".to_owned(), json!(device(i))),
    ]);
    (properties, system)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_messages_reach_another_event_hub_as_iot_hub_would_publish_them() {
    const EVENTS: usize = 400;
    let emulator = emulator(None, "127.0.0.1:0").await;
    publish(&emulator, 0..EVENTS, body);
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        r#"{{ type = "eventhubs", name = "forward", connection_string = "{}" }}"#,
        emulator.connection_string("target")
    );
    let text = config(
        dir.path(),
        &emulator.connection_string("hub"),
        &sink,
        "$body.temperature >= 25",
    );
    let engine = RunningEngine::start(load(dir.path(), &text)).await.unwrap();
    wait_until(
        "every source event is committed",
        Duration::from_secs(60),
        || committed(&engine) == EVENTS,
    )
    .await;
    engine.shutdown().await.unwrap();

    let routed: Vec<usize> = (0..EVENTS).filter(|&i| temperature(i) >= 25).collect();
    let target = emulator.connection_string("target");
    let expected = routed.len().to_string();
    let stdout =
        tokio::task::spawn_blocking(move || run_python("read_event_hub.py", &[&target, &expected]))
            .await
            .unwrap();
    let events: Vec<Json> = serde_json::from_str(stdout.trim()).expect(&stdout);
    assert_eq!(
        events.len(),
        routed.len(),
        "each routed message exactly once"
    );

    let mut by_id: HashMap<String, &Json> = HashMap::new();
    for event in &events {
        let system = &event["system_properties"];
        let id = system["message-id"]["value"].as_str().unwrap().to_owned();
        assert!(by_id.insert(id.clone(), event).is_none(), "{id} twice");
    }
    for &i in &routed {
        let event = by_id
            .get(&format!("msg-{i}"))
            .unwrap_or_else(|| panic!("msg-{i} was not published"));
        assert_eq!(event["body"], json!(body(i)), "msg-{i} body");
        let (properties, system) = expected_event(i, "bytes");
        let actual_properties: BTreeMap<String, Json> =
            serde_json::from_value(event["properties"].clone()).unwrap();
        assert_eq!(
            actual_properties, properties,
            "msg-{i} application properties"
        );
        for (name, value) in system {
            assert_eq!(
                event["system_properties"][&name]["value"], value,
                "msg-{i} system property {name}: {}",
                event["system_properties"]
            );
        }
    }

    // Per-device order within a partition: one partition per device, sequence numbers follow the
    // device's own order.
    let mut per_device: HashMap<String, Vec<(String, i64, i64)>> = HashMap::new();
    for event in &events {
        let body: Json = serde_json::from_str(event["body"].as_str().unwrap()).unwrap();
        per_device
            .entry(body["device"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                event["partition"].as_str().unwrap().to_owned(),
                event["sequence_number"].as_i64().unwrap(),
                body["seq"].as_i64().unwrap(),
            ));
    }
    assert_eq!(per_device.len(), DEVICES);
    for (device, mut events) in per_device {
        let partition = &events[0].0;
        assert!(
            events.iter().all(|(p, _, _)| p == partition),
            "{device} spans partitions"
        );
        events.sort_by_key(|(_, sequence_number, _)| *sequence_number);
        assert!(
            events.windows(2).all(|w| w[0].2 < w[1].2),
            "{device} out of order: {events:?}"
        );
    }
    emulator.shutdown().await.unwrap();
}

/// Message ids and how often each is in `hub` of the emulator at `connection_string`.
async fn stored_ids(connection_string: &str, at_least: usize) -> HashMap<String, usize> {
    let mut connection = EventHubConnection::open(connection_string).await;
    let mut counts = HashMap::new();
    let mut total = 0;
    for partition in ["0", "1", "2", "3"] {
        // Each partition is read until it is quiet; the total is checked below.
        for message in connection.read_partition("$Default", partition, 0).await {
            total += 1;
            let id = match message
                .properties
                .as_ref()
                .and_then(|p| p.message_id.clone())
            {
                Some(MessageId::String(id)) => id,
                other => panic!("no string message id: {other:?}"),
            };
            *counts.entry(id).or_default() += 1;
        }
    }
    assert!(
        total >= at_least,
        "{total} events stored, expected at least {at_least}"
    );
    connection.close().await;
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_detaches_and_an_emulator_restart_lose_nothing() {
    const EVENTS: usize = 1500;
    let data = tempfile::tempdir().unwrap();
    let first = emulator(Some(data.path()), "127.0.0.1:0").await;
    let address = first.amqp_addr().to_string();
    publish(&first, 0..500, body);
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        r#"{{ type = "eventhubs", name = "forward", connection_string = "{}", retry = {{ initial_backoff = "20ms", max_backoff = "200ms" }} }}"#,
        first.connection_string("target")
    );
    let text = config(dir.path(), &first.connection_string("hub"), &sink, "true");
    let engine = RunningEngine::start(load(dir.path(), &text)).await.unwrap();
    wait_until("traffic flows", Duration::from_secs(30), || {
        committed(&engine) > 100
    })
    .await;
    for _ in 0..3 {
        first.detach_producers("target").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publish(&first, 500..1000, body);
    wait_until("more traffic flows", Duration::from_secs(30), || {
        committed(&engine) > 600
    })
    .await;
    first.shutdown().await.unwrap();
    let second = emulator(Some(data.path()), &address).await;
    publish(&second, 1000..EVENTS, body);
    wait_until(
        "every source event is committed",
        Duration::from_secs(90),
        || committed(&engine) == EVENTS,
    )
    .await;
    engine.shutdown().await.unwrap();

    let counts = stored_ids(&second.connection_string("target"), EVENTS).await;
    for i in 0..EVENTS {
        let seen = counts.get(&format!("msg-{i}")).copied().unwrap_or(0);
        assert!(seen >= 1, "msg-{i} was lost");
        assert!(
            seen <= 2,
            "msg-{i} stored {seen} times: more than one resend"
        );
    }
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    assert!(
        duplicates < EVENTS / 2,
        "{duplicates} duplicates: resends beyond the unsettled window"
    );
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_size_message_is_dead_lettered_with_the_reason_and_the_rest_flows() {
    let emulator = emulator(None, "127.0.0.1:0").await;
    publish(&emulator, 0..40, |i| {
        if i == 17 {
            format!(
                r#"{{"device":"{}","seq":{},"pad":"{}"}}"#,
                device(i),
                i / DEVICES,
                "x".repeat(20_000)
            )
        } else {
            body(i)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        r#"{{ type = "eventhubs", name = "forward", connection_string = "{}", max_message_size = 8192 }}"#,
        emulator.connection_string("target")
    );
    let text = config(
        dir.path(),
        &emulator.connection_string("hub"),
        &sink,
        "true",
    );
    let engine = RunningEngine::start(load(dir.path(), &text)).await.unwrap();
    wait_until(
        "every source event is committed",
        Duration::from_secs(60),
        || committed(&engine) == 40,
    )
    .await;
    engine.shutdown().await.unwrap();
    let letters = hubroute_sinks::DeadLetterStore::new(&hubroute_sinks::DeadLetterConfig {
        store: hubroute_sinks::ObjectStoreConfig::Local {
            root: dir.path().to_owned(),
        },
        prefix: "dead-letters".to_owned(),
    })
    .unwrap()
    .read_all()
    .await
    .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = serde_json::to_value(&letters[0]).unwrap();
    let text = letter.to_string();
    assert!(
        text.contains("msg-17")
            && text.contains("amqp:link:message-size-exceeded")
            && text.contains("at most 8192 bytes"),
        "{text}"
    );
    let counts = stored_ids(&emulator.connection_string("target"), 39).await;
    assert_eq!(counts.len(), 39);
    assert!(!counts.contains_key("msg-17"));
    emulator.shutdown().await.unwrap();
}

fn rabbit_sink(entity: &str) -> String {
    format!(
        r#"{{ type = "servicebus", name = "forward", url = "amqp://127.0.0.1:5672", username = "guest", password = "guest", entity = "{entity}", retry = {{ initial_backoff = "20ms", max_backoff = "200ms" }} }}"#
    )
}

/// Deletes a RabbitMQ queue when dropped (tests share the broker).
struct QueueGuard(String);

impl Drop for QueueGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_queue", &self.0])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_messages_reach_a_rabbitmq_queue_with_service_bus_properties() {
    const EVENTS: usize = 120;
    let queue = format!("hubroute-e2e-{}", uuid::Uuid::new_v4().simple());
    let _guard = QueueGuard(queue.clone());
    let declared = queue.clone();
    tokio::task::spawn_blocking(move || run_python("amqp_queue.py", &["declare", &declared]))
        .await
        .unwrap();
    let emulator = emulator(None, "127.0.0.1:0").await;
    publish(&emulator, 0..EVENTS, body);
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        dir.path(),
        &emulator.connection_string("hub"),
        &rabbit_sink(&format!("/amq/queue/{queue}")),
        "true",
    );
    let engine = RunningEngine::start(load(dir.path(), &text)).await.unwrap();
    wait_until(
        "every source event is committed",
        Duration::from_secs(60),
        || committed(&engine) == EVENTS,
    )
    .await;
    engine.shutdown().await.unwrap();

    let read = queue.clone();
    let stdout = tokio::task::spawn_blocking(move || {
        run_python("amqp_queue.py", &["read", &read, &EVENTS.to_string()])
    })
    .await
    .unwrap();
    let messages: Vec<Json> = serde_json::from_str(stdout.trim()).expect(&stdout);
    assert_eq!(messages.len(), EVENTS, "each message exactly once");
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    for message in &messages {
        let id = message["message_id"].as_str().unwrap();
        let i: usize = id.trim_start_matches("msg-").parse().unwrap();
        assert_eq!(message["body"], json!(body(i)));
        assert_eq!(message["correlation_id"], json!(format!("corr-{i}")));
        assert_eq!(
            message["user_id"],
            Json::Null,
            "RabbitMQ refuses a user-id other than the login: not sent to brokers"
        );
        assert_eq!(message["content_type"], json!("application/json"));
        assert_eq!(message["content_encoding"], json!("utf-8"));
        let (mut properties, _) = expected_event(i, "str");
        // IoT Hub's Service Bus mapping: system properties as application properties, no
        // enqueued time, no message source.
        for (name, value) in [
            ("iothub-connection-device-id", device(i)),
            ("iothub-connection-auth-method", AUTH_METHOD.to_owned()),
            (
                "iothub-connection-auth-generation-id",
                "638000000000000000".to_owned(),
            ),
            ("dt-dataschema", "dtmi:com:example:Thermostat;1".to_owned()),
        ] {
            properties.insert(name.to_owned(), typed("str", &json!(value)));
        }
        let actual: BTreeMap<String, Json> =
            serde_json::from_value(message["properties"].clone()).unwrap();
        assert_eq!(actual, properties, "{id} application properties");
        assert_eq!(
            message["annotations"]["x-opt-partition-key"]["value"],
            json!(device(i))
        );
        // One queue keeps the per-device order.
        let body: Json = serde_json::from_str(message["body"].as_str().unwrap()).unwrap();
        let seq = body["seq"].as_i64().unwrap();
        if let Some(previous) = last_seq.insert(device(i), seq) {
            assert!(previous < seq, "{id} after seq {previous}");
        }
    }
    emulator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_refuses_the_address_stops_the_engine_naming_the_endpoint() {
    let emulator = emulator(None, "127.0.0.1:0").await;
    publish(&emulator, 0..20, body);
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("hubroute-missing-{}", uuid::Uuid::new_v4().simple());
    let text = config(
        dir.path(),
        &emulator.connection_string("hub"),
        &rabbit_sink(&format!("/exchange/{missing}/telemetry")),
        "true",
    );
    let engine = RunningEngine::start(load(dir.path(), &text)).await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(60), engine.wait())
        .await
        .expect("the engine stops by itself")
        .expect_err("a refused address is the engine's error");
    let message = error.to_string();
    assert!(
        message.contains("forward")
            && message.contains("amqp:not-found")
            && message.contains(&missing),
        "{message}"
    );
    let checkpoints = dir.path().join("checkpoints");
    assert!(
        !checkpoints.exists() || std::fs::read_dir(&checkpoints).unwrap().next().is_none(),
        "no checkpoint moved past the refused rows"
    );
    emulator.shutdown().await.unwrap();
}

#[test]
fn check_validates_amqp_endpoints_without_connecting() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens at these addresses: `check` must not try.
    let source = "Endpoint=sb://127.0.0.1:9;SharedAccessKeyName=k;SharedAccessKey=s;EntityPath=hub;UseDevelopmentEmulator=true";
    let cases = [
        (
            format!(
                r#"{{ type = "eventhubs", name = "forward", connection_string = "{}", partition_key = "app:zone" }}"#,
                source.replace("EntityPath=hub", "EntityPath=target")
            ),
            None,
        ),
        (
            r#"{ type = "servicebus", name = "forward", url = "amqps://broker.invalid", username = "u", password = "p", entity = "q" }"#.to_owned(),
            None,
        ),
        (
            format!(
                r#"{{ type = "eventhubs", name = "forward", connection_string = "{}", partition_key = "device" }}"#,
                source
            ),
            Some("partition_key `device` is not"),
        ),
        (
            format!(
                r#"{{ type = "eventhubs", name = "forward", connection_string = "{}" }}"#,
                source.replace(";EntityPath=hub", "")
            ),
            Some("sink `forward`: invalid configuration: no event hub"),
        ),
        (
            r#"{ type = "servicebus", name = "forward", url = "amqp://h", entity = "q", password = "p" }"#.to_owned(),
            Some("give both `username` and `password`"),
        ),
    ];
    for (sink, problem) in cases {
        let path = dir.path().join("check.toml");
        std::fs::write(&path, config(dir.path(), source, &sink, "true")).unwrap();
        let output = hubroute()
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        match problem {
            None => assert!(output.status.success(), "{sink}: {stderr}"),
            Some(problem) => {
                assert_eq!(output.status.code(), Some(2), "{sink}");
                assert!(stderr.contains(problem), "{sink}: {stderr}");
            }
        }
    }
}

#[test]
fn the_emulator_serves_several_hubs_given_on_the_command_line() {
    let emulator =
        crate::support::EmulatorProcess::start(&["--hub", "hub", "--hub", "target:2"], 2);
    let [source, target] = emulator.connection_strings.as_slice() else {
        panic!("{:?}", emulator.connection_strings)
    };
    assert!(source.contains("EntityPath=hub;"), "{source}");
    assert!(target.contains("EntityPath=target;"), "{target}");
    let stdout = run_python("properties.py", &[target]);
    let properties: Json = serde_json::from_str(stdout.trim()).expect(&stdout);
    assert_eq!(
        properties["eventhub"]["partition_ids"],
        json!(["0", "1"]),
        "{properties}"
    );
}
