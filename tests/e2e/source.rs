//! End-to-end tests of the Event Hubs source (`hubroute_engine::source`) against the in-process
//! emulator over real AMQP on loopback, and of the blob checkpoint store against Azurite and the
//! official Python `azure-eventhub-checkpointstoreblob` package.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hubroute_emulator::{Emulator, EmulatorConfig, EventToPublish, PublishTarget, RunningEmulator};
use hubroute_engine::checkpoint::{
    Checkpoint, CheckpointKey, CheckpointStore, FileCheckpointStore, ObjectStoreCheckpointStore,
};
use hubroute_engine::source::{
    EventHubSource, PartitionOutcome, SourceBatch, SourceConfig, StartPosition,
};
use hubroute_engine::{Error, Result};
use hubroute_message::{AppPropertyValue, MessageColumns};
use hubroute_protocol::ConnectionString;
use serde_amqp::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::{AZURITE_KEY, EventHubConnection, azurite_container, shared_azurite_endpoint};

const WAIT: Duration = Duration::from_secs(30);

async fn start_emulator(config: EmulatorConfig) -> RunningEmulator {
    Emulator::start(config)
        .await
        .expect("the in-process emulator starts")
}

fn loopback() -> EmulatorConfig {
    EmulatorConfig {
        amqp_listen: "127.0.0.1:0".parse().expect("valid address"),
        ..EmulatorConfig::default()
    }
}

fn source_config(emulator: &RunningEmulator) -> SourceConfig {
    let connection_string =
        ConnectionString::parse(&emulator.connection_string("hub")).expect("valid");
    let mut config = SourceConfig::new(connection_string);
    config.batch_linger = Duration::from_millis(5);
    config
}

fn event(body: impl Into<Bytes>) -> EventToPublish {
    EventToPublish {
        body: body.into(),
        properties: Default::default(),
        application_properties: Vec::new(),
        message_annotations: Vec::new(),
    }
}

fn publish(
    emulator: &RunningEmulator,
    partition: &str,
    bodies: impl IntoIterator<Item = String>,
) -> Vec<i64> {
    bodies
        .into_iter()
        .map(|body| {
            emulator
                .publish(
                    "hub",
                    PublishTarget::Partition(partition.to_owned()),
                    event(body),
                )
                .expect("publish")
                .sequence_number
        })
        .collect()
}

/// One row as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    partition: String,
    sequence_number: i64,
    body: String,
}

fn rows(batch: &SourceBatch) -> Vec<Row> {
    let columns = MessageColumns::try_new(&batch.batch).expect("message schema");
    (0..columns.len())
        .map(|i| Row {
            partition: columns.partition.value(i).to_owned(),
            sequence_number: columns.sequence_number.value(i),
            body: String::from_utf8(columns.body.value(i).to_vec()).expect("utf-8 body"),
        })
        .collect()
}

/// Reads `count` rows from `receiver` (fails after `WAIT`), then checks that nothing more arrives.
async fn read_exactly(receiver: &mut mpsc::Receiver<SourceBatch>, count: usize) -> Vec<Row> {
    let mut out = Vec::new();
    while out.len() < count {
        let batch = tokio::time::timeout(WAIT, receiver.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} events arrived", out.len()))
            .expect("the partition task is running");
        let batch_rows = rows(&batch);
        assert_eq!(
            batch.last_sequence_number,
            batch_rows.last().expect("non-empty").sequence_number
        );
        out.extend(batch_rows);
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), receiver.recv()).await;
    assert!(
        extra.is_err(),
        "more events than expected: {:?}",
        extra.ok().flatten().map(|b| rows(&b))
    );
    out
}

struct Running {
    source: EventHubSource,
    receivers: BTreeMap<String, mpsc::Receiver<SourceBatch>>,
    tasks: BTreeMap<String, JoinHandle<Result<PartitionOutcome>>>,
    shutdown: CancellationToken,
}

async fn run_source(
    config: SourceConfig,
    checkpoints: Arc<dyn CheckpointStore>,
    capacity: usize,
) -> Running {
    let source = EventHubSource::connect(config, checkpoints)
        .await
        .expect("source connects");
    let shutdown = CancellationToken::new();
    let (mut receivers, mut tasks) = (BTreeMap::new(), BTreeMap::new());
    for partition in source.partitions().to_vec() {
        let (sender, receiver) = mpsc::channel(capacity);
        tasks.insert(
            partition.clone(),
            source.spawn(&partition, sender, shutdown.clone()),
        );
        receivers.insert(partition, receiver);
    }
    Running {
        source,
        receivers,
        tasks,
        shutdown,
    }
}

impl Running {
    async fn stop(self) -> BTreeMap<String, PartitionOutcome> {
        self.shutdown.cancel();
        let mut outcomes = BTreeMap::new();
        for (partition, task) in self.tasks {
            let outcome = tokio::time::timeout(WAIT, task)
                .await
                .expect("task ends")
                .expect("no panic");
            outcomes.insert(partition, outcome.expect("no error"));
        }
        outcomes
    }
}

fn temp_checkpoints() -> (tempfile::TempDir, Arc<dyn CheckpointStore>) {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(FileCheckpointStore::new(directory.path()));
    (directory, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_reads_every_event_in_order_per_partition() {
    let emulator = start_emulator(loopback()).await;
    let mut expected = BTreeMap::new();
    for partition in ["0", "1", "2", "3"] {
        let bodies: Vec<String> = (0..40).map(|i| format!("p{partition}-{i}")).collect();
        let sequence_numbers = publish(&emulator, partition, bodies.clone());
        expected.insert(partition.to_owned(), (sequence_numbers, bodies));
    }
    let (_dir, checkpoints) = temp_checkpoints();
    let mut config = source_config(&emulator);
    config.batch_max_rows = 7;
    config.prefetch = 16;
    let mut running = run_source(config, checkpoints, 4).await;
    assert_eq!(running.source.partitions(), ["0", "1", "2", "3"]);
    for (partition, receiver) in &mut running.receivers {
        let got = read_exactly(receiver, 40).await;
        let (sequence_numbers, bodies) = &expected[partition];
        assert!(got.iter().all(|row| &row.partition == partition));
        assert_eq!(
            &got.iter().map(|r| r.sequence_number).collect::<Vec<_>>(),
            sequence_numbers
        );
        assert_eq!(
            &got.iter().map(|r| r.body.clone()).collect::<Vec<_>>(),
            bodies
        );
    }
    let outcomes = running.stop().await;
    assert!(
        outcomes.values().all(|o| *o == PartitionOutcome::Stopped),
        "{outcomes:?}"
    );
    emulator.shutdown().await.expect("emulator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_honours_every_start_position() {
    let emulator = start_emulator(loopback()).await;
    let mut positions = Vec::new();
    for i in 0..10 {
        if i == 5 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let published = emulator
            .publish(
                "hub",
                PublishTarget::Partition("0".to_owned()),
                event(format!("e{i}")),
            )
            .expect("publish");
        positions.push(published);
    }
    let fifth_time =
        chrono::DateTime::from_timestamp_millis(positions[5].enqueued_time_ms - 1).expect("valid");
    let cases = [
        (StartPosition::Earliest, 0..10),
        (
            StartPosition::SequenceNumber(positions[6].sequence_number),
            6..10,
        ),
        (StartPosition::Offset(positions[3].offset.clone()), 3..10),
        (StartPosition::EnqueuedTime(fifth_time), 5..10),
    ];
    for (start, expected) in cases {
        let (_dir, checkpoints) = temp_checkpoints();
        let mut config = source_config(&emulator);
        config.partitions = Some(vec!["0".to_owned()]);
        config.start = start.clone();
        let mut running = run_source(config, checkpoints, 4).await;
        let got = read_exactly(
            running.receivers.get_mut("0").expect("partition 0"),
            expected.len(),
        )
        .await;
        let want: Vec<String> = expected.map(|i| format!("e{i}")).collect();
        assert_eq!(
            got.into_iter().map(|r| r.body).collect::<Vec<_>>(),
            want,
            "{start:?}"
        );
        running.stop().await;
    }

    let (_dir, checkpoints) = temp_checkpoints();
    let mut config = source_config(&emulator);
    config.partitions = Some(vec!["0".to_owned()]);
    config.start = StartPosition::Earliest;
    config
        .partition_start
        .insert("0".to_owned(), StartPosition::Latest);
    let mut running = run_source(config, checkpoints, 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(&emulator, "0", ["after-1".to_owned(), "after-2".to_owned()]);
    let got = read_exactly(running.receivers.get_mut("0").expect("partition 0"), 2).await;
    assert_eq!(
        got.into_iter().map(|r| r.body).collect::<Vec<_>>(),
        ["after-1", "after-2"]
    );
    running.stop().await;
    emulator.shutdown().await.expect("emulator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_resumes_after_its_checkpoint_without_gap_or_duplicate() {
    let emulator = start_emulator(loopback()).await;
    publish(&emulator, "1", (0..20).map(|i| format!("e{i}")));
    let (_dir, checkpoints) = temp_checkpoints();
    let mut config = source_config(&emulator);
    config.partitions = Some(vec!["1".to_owned()]);
    let mut running = run_source(config.clone(), Arc::clone(&checkpoints), 4).await;
    let first = read_exactly(running.receivers.get_mut("1").expect("partition 1"), 20).await;
    let committed = &first[11];
    checkpoints
        .save(&Checkpoint {
            key: running.source.checkpoint_key("1"),
            offset: String::new(),
            sequence_number: committed.sequence_number,
        })
        .await
        .expect("checkpoint saved");
    running.stop().await;

    publish(&emulator, "1", (20..25).map(|i| format!("e{i}")));
    let mut restarted = run_source(config, checkpoints, 4).await;
    let resumed = read_exactly(restarted.receivers.get_mut("1").expect("partition 1"), 13).await;
    let want: Vec<String> = (12..25).map(|i| format!("e{i}")).collect();
    assert_eq!(
        resumed.into_iter().map(|r| r.body).collect::<Vec<_>>(),
        want
    );
    restarted.stop().await;
    emulator.shutdown().await.expect("emulator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_survives_an_emulator_restart_mid_stream() {
    let data = tempfile::tempdir().expect("temp dir");
    let config = |amqp_listen| EmulatorConfig {
        amqp_listen,
        data_dir: Some(data.path().to_path_buf()),
        ..EmulatorConfig::default()
    };
    let emulator = start_emulator(config(loopback().amqp_listen)).await;
    let address = emulator.amqp_addr();
    publish(&emulator, "2", (0..30).map(|i| format!("e{i}")));
    let (_dir, checkpoints) = temp_checkpoints();
    let mut source_config = source_config(&emulator);
    source_config.partitions = Some(vec!["2".to_owned()]);
    source_config.max_backoff = Duration::from_millis(500);
    let mut running = run_source(source_config, checkpoints, 4).await;
    let receiver = running.receivers.get_mut("2").expect("partition 2");
    let mut got = read_exactly(receiver, 30).await;

    emulator.shutdown().await.expect("emulator stops");
    let emulator = start_emulator(config(address)).await;
    publish(&emulator, "2", (30..60).map(|i| format!("e{i}")));
    got.extend(read_exactly(receiver, 30).await);
    let want: Vec<String> = (0..60).map(|i| format!("e{i}")).collect();
    assert_eq!(got.iter().map(|r| r.body.clone()).collect::<Vec<_>>(), want);
    assert!(
        got.windows(2)
            .all(|w| w[0].sequence_number < w[1].sequence_number)
    );
    running.stop().await;
    emulator.shutdown().await.expect("emulator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_owner_steals_the_partition_and_the_first_reports_lost_ownership() {
    let emulator = start_emulator(loopback()).await;
    publish(&emulator, "0", ["x".to_owned()]);
    let mut config = source_config(&emulator);
    config.partitions = Some(vec!["0".to_owned()]);
    let (_dir, checkpoints) = temp_checkpoints();
    let mut first = run_source(config.clone(), Arc::clone(&checkpoints), 4).await;
    read_exactly(first.receivers.get_mut("0").expect("partition 0"), 1).await;
    let mut second = run_source(config, checkpoints, 4).await;
    read_exactly(second.receivers.get_mut("0").expect("partition 0"), 1).await;
    let task = first.tasks.remove("0").expect("task");
    let outcome = tokio::time::timeout(WAIT, task)
        .await
        .expect("first receiver ends")
        .expect("no panic");
    assert!(
        matches!(outcome, Ok(PartitionOutcome::OwnershipLost { .. })),
        "{outcome:?}"
    );
    second.stop().await;
    emulator.shutdown().await.expect("emulator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_an_authorisation_error_that_hides_the_key() {
    let emulator = start_emulator(loopback()).await;
    let text = emulator.connection_string("hub");
    let good = ConnectionString::parse(&text).expect("valid");
    let key = good.key.as_ref().expect("key").expose_secret().to_owned();
    let wrong = ConnectionString::parse(&text.replace(&key, "d3JvbmcgYnV0IHBsYXVzaWJsZQ=="))
        .expect("valid");
    let (_dir, checkpoints) = temp_checkpoints();
    let error = EventHubSource::connect(SourceConfig::new(wrong), checkpoints)
        .await
        .expect_err("a wrong key is refused");
    assert!(matches!(error, Error::Unauthorized { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("SharedAccessKey") && !message.contains("d3Jvbm"),
        "{message}"
    );
    emulator.shutdown().await.expect("emulator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_properties_of_every_amqp_type_survive_the_wire() {
    use serde_amqp::primitives::{Binary, Timestamp, Uuid};
    let emulator = start_emulator(loopback()).await;
    let uuid = [7u8; 16];
    let cases: Vec<(Value, AppPropertyValue)> = vec![
        (
            Value::String("s".into()),
            AppPropertyValue::String("s".into()),
        ),
        (Value::Bool(false), AppPropertyValue::Bool(false)),
        (Value::Byte(-1), AppPropertyValue::Long(-1)),
        (Value::Short(-2), AppPropertyValue::Long(-2)),
        (Value::Int(-3), AppPropertyValue::Long(-3)),
        (Value::Long(-4), AppPropertyValue::Long(-4)),
        (Value::Ubyte(1), AppPropertyValue::ULong(1)),
        (Value::Ushort(2), AppPropertyValue::ULong(2)),
        (Value::Uint(3), AppPropertyValue::ULong(3)),
        (Value::Ulong(4), AppPropertyValue::ULong(4)),
        (Value::Float(2.5f32.into()), AppPropertyValue::Double(2.5)),
        (
            Value::Double(0.25f64.into()),
            AppPropertyValue::Double(0.25),
        ),
        (
            Value::Timestamp(Timestamp::from_milliseconds(1_654_109_018_051)),
            AppPropertyValue::Timestamp(1_654_109_018_051),
        ),
        (Value::Uuid(Uuid::from(uuid)), AppPropertyValue::Uuid(uuid)),
        (
            Value::Binary(Binary::from(vec![1u8, 2, 3])),
            AppPropertyValue::Binary(vec![1, 2, 3]),
        ),
        (Value::Null, AppPropertyValue::Null),
    ];
    let mut published = event("typed");
    published.application_properties = cases
        .iter()
        .enumerate()
        .map(|(i, (value, _))| (format!("p{i:02}"), value.clone()))
        .collect();
    published.message_annotations = vec![
        (
            "iothub-connection-device-id".to_owned(),
            Value::String("dev-7".into()),
        ),
        (
            "iothub-enqueuedtime".to_owned(),
            Value::Timestamp(Timestamp::from_milliseconds(1_700_000_000_123)),
        ),
    ];
    emulator
        .publish("hub", PublishTarget::Partition("3".to_owned()), published)
        .expect("publish");
    let mut config = source_config(&emulator);
    config.partitions = Some(vec!["3".to_owned()]);
    let (_dir, checkpoints) = temp_checkpoints();
    let mut running = run_source(config, checkpoints, 4).await;
    let batch = tokio::time::timeout(
        WAIT,
        running.receivers.get_mut("3").expect("partition 3").recv(),
    )
    .await
    .expect("arrives")
    .expect("open");
    let message = MessageColumns::try_new(&batch.batch)
        .expect("schema")
        .message(0);
    assert_eq!(
        message.system.connection_device_id.as_deref(),
        Some("dev-7")
    );
    assert_eq!(
        message
            .system
            .iothub_enqueued_time
            .map(|t| t.timestamp_millis()),
        Some(1_700_000_000_123)
    );
    let got: BTreeMap<String, AppPropertyValue> =
        message.application_properties.into_iter().collect();
    for (i, (value, expected)) in cases.iter().enumerate() {
        assert_eq!(got.get(&format!("p{i:02}")), Some(expected), "{value:?}");
    }
    running.stop().await;
    emulator.shutdown().await.expect("emulator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_downstream_stops_the_receiver_with_bounded_memory() {
    let emulator = start_emulator(loopback()).await;
    publish(&emulator, "0", (0..3000).map(|i| format!("e{i}")));
    let mut config = source_config(&emulator);
    config.partitions = Some(vec!["0".to_owned()]);
    config.prefetch = 50;
    config.batch_max_rows = 10;
    let (_dir, checkpoints) = temp_checkpoints();
    let mut running = run_source(config, checkpoints, 1).await;
    let filled = async {
        while running.source.events_received() < 10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, filled)
        .await
        .expect("the channel's one slot is filled");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let decoded = running.source.events_received();
    assert!(
        decoded <= 10 + 10 + 50,
        "a stalled receiver kept reading: {decoded} events decoded"
    );
    let got = read_exactly(running.receivers.get_mut("0").expect("partition 0"), 3000).await;
    let want: Vec<String> = (0..3000).map(|i| format!("e{i}")).collect();
    assert_eq!(got.into_iter().map(|r| r.body).collect::<Vec<_>>(), want);
    running.stop().await;
    emulator.shutdown().await.expect("emulator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_partitions_share_one_memory_budget_and_lose_nothing() {
    const BODY_BYTES: usize = 4096;
    const PER_PARTITION: usize = 600; // 2.4 MB a partition, 9.6 MB in all
    const BUDGET: u64 = 1024 * 1024;
    let emulator = start_emulator(loopback()).await;
    let body = |partition: &str, i: usize| format!("{partition}-{i:05}-{}", "x".repeat(BODY_BYTES));
    for partition in ["0", "1", "2", "3"] {
        publish(
            &emulator,
            partition,
            (0..PER_PARTITION).map(|i| body(partition, i)),
        );
    }
    let mut config = source_config(&emulator);
    config.max_buffered_bytes = BUDGET;
    // Without the budget each partition would hold three of these batches (one building, two
    // queued): 4 × 3 × 1.2 MB.
    config.batch_max_rows = 300;
    let (_dir, checkpoints) = temp_checkpoints();
    let mut running = run_source(config, checkpoints, 2).await;

    // Nobody reads the channels: every receiver fills what the budget allows, then waits.
    let mut previous = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = running.source.events_received();
        if now == previous {
            break;
        }
        previous = now;
    }
    let held = running.source.buffered_bytes();
    let decoded_bytes = previous * BODY_BYTES as u64;
    // A batch is cut after the event that did not fit: one event per partition over the budget.
    assert!(
        held <= BUDGET && decoded_bytes <= BUDGET + 4 * BODY_BYTES as u64,
        "stalled receivers hold {held} bytes of the budget and decoded {previous} events \
         ({decoded_bytes} body bytes) over a budget of {BUDGET}"
    );
    assert!(previous > 0, "the budget let some events through");

    // Routers read every partition at once; so do these readers (one partition read alone would
    // wait for budget that the unread partitions hold). Reading 9.6 MB through a 1 MiB budget
    // proves that read batches return their bytes.
    let mut readers = tokio::task::JoinSet::new();
    for (partition, mut receiver) in std::mem::take(&mut running.receivers) {
        readers.spawn(async move {
            let got = read_exactly(&mut receiver, PER_PARTITION).await;
            let want: Vec<String> = (0..PER_PARTITION).map(|i| body(&partition, i)).collect();
            assert_eq!(got.into_iter().map(|r| r.body).collect::<Vec<_>>(), want);
        });
    }
    while let Some(read) = readers.join_next().await {
        read.expect("every partition reads back exactly what was sent");
    }
    running.stop().await;
    emulator.shutdown().await.expect("emulator stops");
}

fn checkpoint_script(args: &[&str]) -> serde_json::Value {
    let connection_string = format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint={}",
        shared_azurite_endpoint()
    );
    let mut full = vec![args[0], connection_string.as_str()];
    full.extend_from_slice(&args[1..]);
    let stdout = crate::support::run_python("checkpoint_store.py", &full);
    serde_json::from_str(&stdout).expect("JSON output")
}

#[tokio::test]
async fn blob_checkpoints_use_the_sdk_layout_and_interoperate_with_the_python_sdk() {
    use object_store::{Attribute, ObjectStore, ObjectStoreExt as _};

    let endpoint = shared_azurite_endpoint();
    let authority = endpoint
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        std::net::TcpStream::connect(&authority).is_ok(),
        "Azurite is not listening at {endpoint}; run .ci/test (or .ci/node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort 10000 --location /tmp/azurite --skipApiVersionCheck --loose &)"
    );
    let container = format!("checkpoints-{}", uuid::Uuid::new_v4().simple());
    checkpoint_script(&["create", &container]);
    let store: Arc<dyn ObjectStore> = Arc::new(azurite_container(&endpoint, &container));
    let checkpoints = ObjectStoreCheckpointStore::new(Arc::clone(&store));
    let key = |partition: &str| CheckpointKey {
        fully_qualified_namespace: "MyNs.servicebus.windows.net".to_owned(),
        event_hub: "MyHub".to_owned(),
        consumer_group: "$Default".to_owned(),
        partition: partition.to_owned(),
    };
    let ours = Checkpoint {
        key: key("0"),
        offset: "8192".to_owned(),
        sequence_number: 41,
    };
    checkpoints.save(&ours).await.expect("saved to Azurite");

    let blob = store
        .get(&object_store::path::Path::from(
            "myns.servicebus.windows.net/myhub/$default/checkpoint/0",
        ))
        .await
        .expect("blob at the SDK name");
    let metadata = |name: &str| {
        blob.attributes
            .get(&Attribute::Metadata(name.to_owned().into()))
            .map(|v| v.as_ref().to_owned())
    };
    assert_eq!(metadata("offset").as_deref(), Some("8192"));
    assert_eq!(metadata("sequencenumber").as_deref(), Some("41"));
    assert!(blob.bytes().await.expect("content").is_empty());

    let args = ["MyNs.servicebus.windows.net", "MyHub", "$Default"];
    let listed = checkpoint_script(&["list", &container, args[0], args[1], args[2]]);
    assert_eq!(
        listed,
        serde_json::json!([{"partition_id": "0", "offset": "8192", "sequence_number": 41}])
    );

    checkpoint_script(&[
        "update", &container, args[0], args[1], args[2], "1", "777", "99",
    ]);
    let theirs = checkpoints
        .load(&key("1"))
        .await
        .expect("readable")
        .expect("present");
    assert_eq!(
        (theirs.offset.as_str(), theirs.sequence_number),
        ("777", 99)
    );
}

/// Sends `messages` to `<hub>/Partitions/<partition>` with a plain fe2o3-amqp producer (SASL
/// ANONYMOUS + CBS, as the SDKs do), so the wire encoding is a client's, not the emulator's.
async fn send_with_fe2o3(
    connection_string: &str,
    partition: &str,
    messages: Vec<fe2o3_amqp::types::messaging::Message<fe2o3_amqp::types::messaging::Body<Value>>>,
) {
    let mut connection = EventHubConnection::open(connection_string).await;
    let mut sender = connection.partition_sender(partition).await;
    for message in messages {
        sender
            .send(message)
            .await
            .expect("sent")
            .accepted_or_else(|o| o)
            .expect("accepted");
    }
    sender.close().await.expect("sender closes");
    connection.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_amqp_property_type_sent_by_an_fe2o3_producer_is_decoded() {
    use fe2o3_amqp::types::messaging::{
        AmqpValue, ApplicationProperties, Body, Data, Message, MessageId, Properties,
    };
    use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Timestamp, Uuid};

    let emulator = start_emulator(loopback()).await;
    let uuid = [9u8; 16];
    let typed: Vec<(SimpleValue, AppPropertyValue)> = vec![
        (
            SimpleValue::String("s".into()),
            AppPropertyValue::String("s".into()),
        ),
        (
            SimpleValue::Symbol(Symbol::from("sym")),
            AppPropertyValue::String("sym".into()),
        ),
        (SimpleValue::Bool(true), AppPropertyValue::Bool(true)),
        (SimpleValue::Byte(-1), AppPropertyValue::Long(-1)),
        (SimpleValue::Short(-2), AppPropertyValue::Long(-2)),
        (SimpleValue::Int(-3), AppPropertyValue::Long(-3)),
        (
            SimpleValue::Long(i64::MIN),
            AppPropertyValue::Long(i64::MIN),
        ),
        (SimpleValue::Ubyte(1), AppPropertyValue::ULong(1)),
        (SimpleValue::Ushort(2), AppPropertyValue::ULong(2)),
        (SimpleValue::Uint(3), AppPropertyValue::ULong(3)),
        (
            SimpleValue::Ulong(u64::MAX),
            AppPropertyValue::ULong(u64::MAX),
        ),
        (
            SimpleValue::Float(2.5f32.into()),
            AppPropertyValue::Double(2.5),
        ),
        (
            SimpleValue::Double(0.1f64.into()),
            AppPropertyValue::Double(0.1),
        ),
        (
            SimpleValue::Timestamp(Timestamp::from_milliseconds(1_654_109_018_051)),
            AppPropertyValue::Timestamp(1_654_109_018_051),
        ),
        (
            SimpleValue::Uuid(Uuid::from(uuid)),
            AppPropertyValue::Uuid(uuid),
        ),
        (
            SimpleValue::Binary(Binary::from(vec![0u8, 255])),
            AppPropertyValue::Binary(vec![0, 255]),
        ),
        (SimpleValue::Null, AppPropertyValue::Null),
        (
            SimpleValue::Char('x'),
            AppPropertyValue::Other {
                type_name: "char".into(),
                rendered: "x".into(),
            },
        ),
    ];
    let mut properties = ApplicationProperties::builder();
    for (i, (value, _)) in typed.iter().enumerate() {
        properties = properties.insert(format!("p{i:02}"), value.clone());
    }
    let first = Message::builder()
        .properties(Properties {
            message_id: Some(MessageId::Uuid(Uuid::from(uuid))),
            correlation_id: Some(MessageId::Ulong(42)),
            user_id: Some(Binary::from(b"device-user".to_vec())),
            content_type: Some(Symbol::from("application/json")),
            content_encoding: Some(Symbol::from("utf-8")),
            ..Properties::default()
        })
        .application_properties(properties.build())
        .body(Body::Data(
            vec![
                Data(Binary::from(b"{\"a\":".to_vec())),
                Data(Binary::from(b"1}".to_vec())),
            ]
            .into(),
        ))
        .build();
    let second = Message::builder()
        .properties(Properties {
            message_id: Some(MessageId::Binary(Binary::from(b"id".to_vec()))),
            ..Properties::default()
        })
        .body(Body::Value(AmqpValue(Value::String("plain text".into()))))
        .build();
    send_with_fe2o3(&emulator.connection_string("hub"), "1", vec![first, second]).await;

    let mut config = source_config(&emulator);
    config.partitions = Some(vec!["1".to_owned()]);
    let (_dir, checkpoints) = temp_checkpoints();
    let mut running = run_source(config, checkpoints, 4).await;
    let receiver = running.receivers.get_mut("1").expect("partition 1");
    let mut messages = Vec::new();
    while messages.len() < 2 {
        let batch = tokio::time::timeout(WAIT, receiver.recv())
            .await
            .expect("arrives")
            .expect("open");
        let columns = MessageColumns::try_new(&batch.batch).expect("schema");
        messages.extend((0..columns.len()).map(|i| columns.message(i)));
    }
    let (first, second) = (&messages[0], &messages[1]);
    assert_eq!(
        first.system.message_id.as_deref(),
        Some("09090909-0909-0909-0909-090909090909")
    );
    assert_eq!(first.system.correlation_id.as_deref(), Some("42"));
    assert_eq!(first.system.user_id.as_deref(), Some(&b"device-user"[..]));
    assert_eq!(
        first.system.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(first.system.content_encoding.as_deref(), Some("utf-8"));
    assert_eq!(
        &first.body[..],
        b"{\"a\":1}",
        "data sections are concatenated"
    );
    let got: BTreeMap<String, AppPropertyValue> =
        first.application_properties.iter().cloned().collect();
    assert_eq!(got.len(), typed.len());
    for (i, (value, expected)) in typed.iter().enumerate() {
        assert_eq!(got.get(&format!("p{i:02}")), Some(expected), "{value:?}");
    }
    assert_eq!(
        second.system.message_id.as_deref(),
        Some("aWQ="),
        "binary ids are base64"
    );
    assert_eq!(
        &second.body[..],
        b"plain text",
        "an amqp-value string body is its UTF-8 bytes"
    );
    assert!(first.sequence_number < second.sequence_number);
    running.stop().await;
    emulator.shutdown().await.expect("emulator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_older_than_retention_fails_or_restarts_from_earliest_per_policy() {
    use hubroute_emulator::Retention;
    use hubroute_engine::source::OutOfRangePolicy;

    let emulator = start_emulator(EmulatorConfig {
        retention: Retention {
            max_events: 5,
            ..Retention::default()
        },
        ..loopback()
    })
    .await;
    publish(&emulator, "0", (0..20).map(|i| format!("e{i}")));
    let (_dir, checkpoints) = temp_checkpoints();
    let mut config = source_config(&emulator);
    config.partitions = Some(vec!["0".to_owned()]);
    let source = EventHubSource::connect(config.clone(), Arc::clone(&checkpoints))
        .await
        .expect("connects");
    checkpoints
        .save(&Checkpoint {
            key: source.checkpoint_key("0"),
            offset: String::new(),
            sequence_number: 2,
        })
        .await
        .expect("saved");

    let (sender, _receiver) = mpsc::channel(4);
    let task = source.spawn("0", sender, CancellationToken::new());
    let result = tokio::time::timeout(WAIT, task)
        .await
        .expect("ends")
        .expect("no panic");
    let error = result.expect_err("fail policy stops the partition");
    assert!(
        matches!(error, Error::PositionOutOfRange { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("older than the event hub's retention"),
        "{error}"
    );

    config.out_of_range = OutOfRangePolicy::Earliest;
    let mut running = run_source(config, checkpoints, 4).await;
    let got = read_exactly(running.receivers.get_mut("0").expect("partition 0"), 5).await;
    let want: Vec<String> = (15..20).map(|i| format!("e{i}")).collect();
    assert_eq!(got.into_iter().map(|r| r.body).collect::<Vec<_>>(), want);
    running.stop().await;
    emulator.shutdown().await.expect("emulator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_shared_access_signature_authorises_the_source() {
    let emulator = start_emulator(loopback()).await;
    publish(&emulator, "2", ["signed".to_owned()]);
    let keyed = ConnectionString::parse(&emulator.connection_string("hub")).expect("valid");
    let audience = keyed.audience("hub");
    let token = keyed
        .key
        .as_ref()
        .expect("key")
        .sign(&audience, chrono::Utc::now().timestamp() + 600);
    let text = format!(
        "Endpoint=sb://{}:{}/;SharedAccessSignature={};EntityPath=hub;UseDevelopmentEmulator=true",
        keyed.host,
        keyed.effective_port(),
        token.as_str()
    );
    let mut config = SourceConfig::new(ConnectionString::parse(&text).expect("valid"));
    config.partitions = Some(vec!["2".to_owned()]);
    config.batch_linger = Duration::from_millis(5);
    let (_dir, checkpoints) = temp_checkpoints();
    let mut running = run_source(config, checkpoints, 4).await;
    let got = read_exactly(running.receivers.get_mut("2").expect("partition 2"), 1).await;
    assert_eq!(got[0].body, "signed");
    running.stop().await;
    emulator.shutdown().await.expect("emulator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_reads_over_tls_trusting_a_configured_ca_and_refuses_an_unknown_one() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("a self-signed certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, certified.cert.pem()).expect("write cert");
    std::fs::write(&key_pem, certified.signing_key.serialize_pem()).expect("write key");
    let emulator = start_emulator(EmulatorConfig {
        tls: Some(hubroute_emulator::TlsFiles {
            cert_pem: cert_pem.clone(),
            key_pem,
        }),
        ..loopback()
    })
    .await;
    publish(&emulator, "2", (0..5).map(|i| format!("tls-{i}")));
    let connection_string = emulator
        .connection_string("hub")
        .replace("127.0.0.1", "localhost");
    let connection_string = ConnectionString::parse(&connection_string).expect("valid");
    assert!(connection_string.uses_tls());

    let mut untrusted = SourceConfig::new(connection_string.clone());
    untrusted.partitions = Some(vec!["2".to_owned()]);
    let (_dir, checkpoints) = temp_checkpoints();
    let error = EventHubSource::connect(untrusted, Arc::clone(&checkpoints))
        .await
        .expect_err("a self-signed certificate is not trusted by default");
    assert!(
        error.to_string().contains("TLS handshake failed"),
        "{error}"
    );

    let mut trusted = SourceConfig::new(connection_string);
    trusted.partitions = Some(vec!["2".to_owned()]);
    trusted.batch_linger = Duration::from_millis(5);
    trusted.tls_ca_file = Some(cert_pem);
    let mut running = run_source(trusted, checkpoints, 4).await;
    let got = read_exactly(running.receivers.get_mut("2").expect("partition 2"), 5).await;
    assert_eq!(
        got.into_iter().map(|r| r.body).collect::<Vec<_>>(),
        (0..5).map(|i| format!("tls-{i}")).collect::<Vec<_>>()
    );
    running.stop().await;
    emulator.shutdown().await.expect("emulator stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_renews_its_token_before_the_service_would_detach_the_link() {
    let emulator = start_emulator(loopback()).await;
    let mut config = source_config(&emulator);
    config.partitions = Some(vec!["1".to_owned()]);
    config.token_lifetime = Duration::from_secs(10);
    let (_dir, checkpoints) = temp_checkpoints();
    let source = EventHubSource::connect(config, checkpoints)
        .await
        .expect("source connects");
    let shutdown = CancellationToken::new();
    let (sender, mut receiver) = mpsc::channel(4);
    let task = source.spawn("1", sender, shutdown.clone());
    // Publish across the token's lifetime: the emulator, like Event Hubs, detaches a link whose
    // token expires; renewal at 80 % keeps this one.
    let mut published = 0;
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    while started.elapsed() < Duration::from_secs(13) {
        publish(&emulator, "1", [format!("r{published}")]);
        published += 1;
        while let Ok(batch) = receiver.try_recv() {
            got.extend(rows(&batch).into_iter().map(|r| r.body));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got.extend(
        read_exactly(&mut receiver, published - got.len())
            .await
            .into_iter()
            .map(|r| r.body),
    );
    assert_eq!(
        got,
        (0..published).map(|i| format!("r{i}")).collect::<Vec<_>>()
    );
    assert_eq!(source.reconnects(), 0, "the link outlived its first token");
    shutdown.cancel();
    task.await.expect("task").expect("clean stop");
    emulator.shutdown().await.expect("emulator stops");
}
