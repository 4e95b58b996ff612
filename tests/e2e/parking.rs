//! Endpoint isolation end to end: a webhook that is down for longer than `dead_after` while events
//! flow is parked, the Parquet and PostgreSQL endpoints and the partition checkpoints go on, its
//! health probe fails (and gates the replay) while it is down, a replay that fails after a passing
//! probe goes back to probing, and when the webhook returns every parked message reaches it in
//! partition order, with no command; a Parquet endpoint whose store is down as long hands back the
//! rows its files held, so they are parked too and the checkpoints move on;
//! and after a restart only the endpoint that had not committed rows sees them again.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hubroute_emulator::simulate::{
    Rate, Simulation, SimulationConfig, SimulationTarget, StopAfter,
};
use hubroute_emulator::{Emulator, EmulatorConfig};
use hubroute_engine::config::LoadedConfig;
use hubroute_engine::pipeline::RunningEngine;
use hubroute_protocol::ConnectionString;

use hubroute_engine::health::HealthStatus;

use crate::fault_proxy::{Fault, FaultProxy};
use crate::support::{
    AZURITE_KEY, Hook, azurite_address, azurite_container, create_azurite_container, metric_sum,
    metrics_of, parquet_message_ids, parquet_object_message_ids, shared_azurite_endpoint,
    wait_until,
};

/// Sends `events` simulated messages (unique message ids) at `rate`.
async fn send(connection_string: &str, events: u64, rate: Rate) {
    let report = Simulation::new(SimulationConfig {
        target: SimulationTarget::Amqp {
            connection_string: ConnectionString::parse(connection_string).unwrap(),
            partition: None,
        },
        devices: NonZeroU32::new(40).unwrap(),
        rate,
        stop: StopAfter::Events(events),
        seed: 7,
        max_in_flight: 64,
        mix: Default::default(),
    })
    .run()
    .await
    .expect("the simulation runs");
    assert_eq!((report.sent, report.errors), (events, 0));
}

async fn postgres_ids(table: &str) -> Vec<String> {
    let (client, connection) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        tokio_postgres::NoTls,
    )
    .await
    .expect("PostgreSQL at 127.0.0.1:5432 (user postgres, database test): run .ci/test");
    tokio::spawn(connection);
    client
        .query(&format!("SELECT message_id FROM \"{table}\""), &[])
        .await
        .map(|rows| rows.iter().map(|row| row.get(0)).collect())
        .unwrap_or_default()
}

fn config(dir: &Path, connection_string: &str, table: &str, hook: &str) -> String {
    let dir = dir.display();
    format!(
        r#"
[source]
connection_string = "{connection_string}"
batch_max_rows = 64
batch_linger = "10ms"

[checkpoint]
dir = "{dir}/checkpoints"
interval = "200ms"

[dead_letters]
store = {{ kind = "local", root = "{dir}" }}

[service]
listen = "127.0.0.1:0"
stall_after = "300ms"
dead_after = "2s"

[[endpoints]]
sink = {{ type = "parquet", name = "lake", store = {{ kind = "local", root = "{dir}/lake" }}, max_file_age = "300ms" }}

[[endpoints]]
sink = {{ type = "postgres", name = "db", dbname = "test", linger = "10ms", table = {{ name = "{table}", columns = [{{ name = "message_id", source = "message_id", type = "text" }}] }} }}

# The webhook's retries back off to at most 200 ms, well under dead_after: a recovered endpoint does
# not sit out a long backoff, which would look like another outage.
[[endpoints]]
queue_capacity = 2
sink = {{ type = "webhook", name = "hook", url = "{hook}", linger = "10ms", max_batch_events = 64, retry = {{ max_backoff = "200ms" }}, max_in_flight = 1 }}

[[routes]]
name = "to-lake"
condition = "true"
endpoint = "lake"

[[routes]]
name = "to-db"
condition = "true"
endpoint = "db"

[[routes]]
name = "to-hook"
condition = "true"
endpoint = "hook"
"#
    )
}

/// Polls the engine's metrics until `done` holds, for at most 60 s (probes back off up to 30 s).
async fn wait_until_metric(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) {
    let started = std::time::Instant::now();
    while !done(&metrics_of(addr).await) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Committed events over all partitions (sequence numbers start at 0).
fn committed(engine: &RunningEngine) -> u64 {
    engine
        .committed_positions()
        .iter()
        .filter_map(|(_, c)| *c)
        .map(|c| u64::try_from(c + 1).unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_down_longer_than_dead_after_is_parked_and_replayed_in_order_without_loss() {
    const EVENTS: u64 = 3000;
    let emulator = Emulator::start(EmulatorConfig {
        amqp_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..EmulatorConfig::default()
    })
    .await
    .expect("the emulator starts");
    let hook = Hook::start().await;
    hook.unavailable.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let table = format!("parked_{}", uuid::Uuid::new_v4().simple());
    let text = config(
        dir.path(),
        &emulator.connection_string("hub"),
        &table,
        &hook.url(),
    );
    let path = dir.path().join("hubroute.toml");
    std::fs::write(&path, &text).unwrap();
    let engine = RunningEngine::start(LoadedConfig::load(&path).unwrap())
        .await
        .unwrap();
    let addr = engine.http_addr();

    // Events flow while the webhook is down: the other endpoints deliver them, and once the
    // webhook is dead (2 s) its rows are parked and every partition's checkpoint moves on.
    let sending = tokio::spawn({
        let connection_string = emulator.connection_string("hub");
        async move {
            send(
                &connection_string,
                EVENTS,
                Rate::PerSecond(NonZeroU32::new(600).unwrap()),
            )
            .await;
        }
    });
    wait_until(
        "the checkpoints advance with the webhook down",
        Duration::from_secs(60),
        || committed(&engine) > EVENTS / 2,
    )
    .await;
    sending.await.unwrap();
    wait_until(
        "every event is checkpointed with the webhook still down",
        Duration::from_secs(60),
        || committed(&engine) == EVENTS,
    )
    .await;
    assert!(
        hook.message_ids().is_empty(),
        "the webhook accepted nothing"
    );
    let text = metrics_of(addr).await;
    assert_eq!(
        metric_sum(
            &text,
            "hubroute_endpoint_parked_rows_total{endpoint=\"hook\"}"
        ),
        EVENTS as f64,
        "every webhook row is parked once:\n{text}"
    );
    assert_eq!(
        metric_sum(
            &text,
            "hubroute_endpoint_parked_rows_total{endpoint=\"db\"}"
        ),
        0.0
    );
    assert!(
        metric_sum(
            &text,
            "hubroute_endpoint_state_seconds_total{endpoint=\"hook\",state=\"parked\"}"
        ) > 0.0
    );
    // The probe gates the replay: while the webhook is down every probe fails and nothing is
    // replayed.
    let probes = |text: &str, outcome: &str| {
        metric_sum(
            text,
            &format!("hubroute_endpoint_probes_total{{endpoint=\"hook\",outcome=\"{outcome}\"}}"),
        )
    };
    wait_until_metric(addr, "a failed probe of the parked webhook", |text| {
        probes(text, "down") >= 1.0
    })
    .await;
    let text = metrics_of(addr).await;
    assert_eq!(
        probes(&text, "up"),
        0.0,
        "no probe passes while the webhook is down:\n{text}"
    );
    assert_eq!(
        metric_sum(
            &text,
            "hubroute_endpoint_replayed_rows_total{endpoint=\"hook\"}"
        ),
        0.0
    );
    assert_eq!(
        metric_sum(&text, "hubroute_endpoint_probes_total{endpoint=\"db\""),
        0.0,
        "live endpoints are not probed"
    );
    let parked = hubroute_sinks::DeadLetterStore::new(&hubroute_sinks::DeadLetterConfig {
        store: hubroute_sinks::ObjectStoreConfig::Local {
            root: dir.path().to_owned(),
        },
        prefix: "dead-letters".to_owned(),
    })
    .unwrap();
    let letters = parked.read_all().await.unwrap();
    assert_eq!(letters.len(), EVENTS as usize);
    assert!(letters.iter().all(|l| l.parked && l.sink == "hook"));
    let lake = parquet_message_ids(&dir.path().join("lake"));
    let db = postgres_ids(&table).await;
    let sent: BTreeSet<String> = letters
        .iter()
        .map(|l| l.system_properties.message_id.clone().unwrap())
        .collect();
    assert_eq!(sent.len(), EVENTS as usize, "parked once each");
    assert_eq!(
        db.len(),
        sent.len(),
        "PostgreSQL has every row exactly once"
    );
    assert_eq!(db.iter().cloned().collect::<BTreeSet<_>>(), sent);
    assert_eq!(
        lake.iter().cloned().collect::<BTreeSet<_>>(),
        sent,
        "Parquet too"
    );

    // A probe can pass while deliveries still fail (HEAD answers, POST does not): each failed
    // replay goes back to probing, and nothing is replayed or lost meanwhile.
    hook.head_answers.store(true, Ordering::SeqCst);
    wait_until_metric(
        addr,
        "two passing probes of the webhook, each followed by a failed replay",
        |text| probes(text, "up") >= 2.0,
    )
    .await;
    let text = metrics_of(addr).await;
    assert_eq!(
        metric_sum(
            &text,
            "hubroute_endpoint_replayed_rows_total{endpoint=\"hook\"}"
        ),
        0.0,
        "{text}"
    );
    assert!(hook.message_ids().is_empty());

    // The webhook returns: every parked row is replayed, in partition order, with no command.
    hook.unavailable.store(false, Ordering::SeqCst);
    // The failed replays above backed the probes off towards 30 s: the next probe can be that far.
    wait_until(
        "the webhook has every parked row",
        Duration::from_secs(120),
        || hook.message_ids().iter().collect::<HashSet<_>>().len() == sent.len(),
    )
    .await;
    let received = hook.received.lock().unwrap().clone();
    let mut seen = HashSet::new();
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for event in &received {
        let id = event["systemProperties"]["messageId"].as_str().unwrap();
        if !seen.insert(id.to_owned()) {
            continue;
        }
        let partition = event["partition"].as_str().unwrap().to_owned();
        let sequence = event["sequenceNumber"].as_i64().unwrap();
        let previous = last.insert(partition.clone(), sequence);
        assert!(
            previous.is_none_or(|p| p < sequence),
            "partition {partition}: {sequence} arrived after {previous:?}"
        );
    }
    assert_eq!(
        seen.iter().cloned().collect::<BTreeSet<_>>(),
        sent,
        "nothing lost"
    );

    // Caught up: the endpoint is live again, and a new wave goes straight to the webhook.
    wait_until(
        "the parked objects are moved aside",
        Duration::from_secs(30),
        || {
            std::fs::read_dir(dir.path().join("dead-letters/hook/parked"))
                .map(|d| {
                    d.flatten().all(|p| {
                        std::fs::read_dir(p.path())
                            .map(|mut f| f.next().is_none())
                            .unwrap_or(true)
                    })
                })
                .unwrap_or(true)
        },
    )
    .await;
    let delivered =
        |text: &str| metric_sum(text, "hubroute_endpoint_delivered_total{endpoint=\"hook\"}");
    let before = delivered(&metrics_of(addr).await);
    send(&emulator.connection_string("hub"), 200, Rate::Max).await;
    let started = std::time::Instant::now();
    while delivered(&metrics_of(addr).await) < before + 200.0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "new events reach the webhook live"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = metrics_of(addr).await;
    assert_eq!(
        metric_sum(
            &text,
            "hubroute_endpoint_parked_rows_total{endpoint=\"hook\"}"
        ),
        EVENTS as f64,
        "nothing parked once live again"
    );
    assert_eq!(
        metric_sum(
            &text,
            "hubroute_endpoint_replayed_rows_total{endpoint=\"hook\"}"
        ),
        EVENTS as f64
    );
    assert!(
        probes(&text, "up") >= 1.0,
        "the replay began after a passing probe:\n{text}"
    );
    assert!(
        parked.read_all().await.unwrap().is_empty(),
        "replayed records are moved aside"
    );
    engine.shutdown().await.unwrap();
    emulator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_only_the_endpoint_that_had_not_committed_sees_rows_again() {
    const EVENTS: u64 = 2000;
    let emulator = Emulator::start(EmulatorConfig {
        amqp_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..EmulatorConfig::default()
    })
    .await
    .expect("the emulator starts");
    send(&emulator.connection_string("hub"), EVENTS, Rate::Max).await;
    let hook = Hook::start().await;
    hook.stalled.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[source]
connection_string = "{connection_string}"
batch_max_rows = 64

[checkpoint]
dir = "{dir}/checkpoints"
interval = "100ms"

[service]
listen = "127.0.0.1:0"
drain_timeout = "300ms"

[[endpoints]]
queue_capacity = 64
sink = {{ type = "parquet", name = "lake", store = {{ kind = "local", root = "{dir}/lake" }}, max_file_age = "200ms" }}

[[endpoints]]
queue_capacity = 64
sink = {{ type = "webhook", name = "hook", url = "{hook}", linger = "10ms", max_batch_events = 64, retry = {{ max_backoff = "200ms" }} }}

[[routes]]
name = "to-lake"
condition = "true"
endpoint = "lake"

[[routes]]
name = "to-hook"
condition = "true"
endpoint = "hook"
"#,
        connection_string = emulator.connection_string("hub"),
        dir = dir.path().display(),
        hook = hook.url(),
    );
    let path = dir.path().join("hubroute.toml");
    std::fs::write(&path, &text).unwrap();
    let lake = dir.path().join("lake");

    // The lake commits every row; the stalled webhook none, so no partition checkpoint moves.
    let engine = RunningEngine::start(LoadedConfig::load(&path).unwrap())
        .await
        .unwrap();
    wait_until("the lake has every row", Duration::from_secs(60), || {
        parquet_message_ids(&lake).len() == EVENTS as usize
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        committed(&engine),
        0,
        "the webhook holds the checkpoints back"
    );
    engine.shutdown().await.unwrap();

    // After a restart the source reads every row again, but only the webhook receives them.
    hook.stalled.store(false, Ordering::SeqCst);
    let engine = RunningEngine::start(LoadedConfig::load(&path).unwrap())
        .await
        .unwrap();
    wait_until("every row is checkpointed", Duration::from_secs(60), || {
        committed(&engine) == EVENTS
    })
    .await;
    engine.shutdown().await.unwrap();
    let delivered: HashSet<String> = hook.message_ids().into_iter().collect();
    assert_eq!(
        delivered.len(),
        EVENTS as usize,
        "the webhook got every row"
    );
    let lake_ids = parquet_message_ids(&lake);
    assert_eq!(
        lake_ids.len(),
        EVENTS as usize,
        "the lake saw no row twice: its own position was ahead of the checkpoint"
    );
    emulator.shutdown().await.unwrap();
}

/// A file sink holds rows the engine keeps no copy of (open files, uploads retried forever). When
/// its store is down for longer than `dead_after`, parking the endpoint makes the sink hand those
/// rows back: they are parked with the rest, every partition's checkpoint moves on while the store
/// is still down, and when it returns every row lands in a file. The store's outage is a proxy
/// answering `503 Server Busy` in front of Azurite (which therefore never sees a cut request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_store_down_longer_than_dead_after_hands_its_rows_back_to_be_parked_and_replayed()
{
    const EVENTS: u64 = 1000;
    let endpoint = shared_azurite_endpoint();
    let container = format!("parked-{}", uuid::Uuid::new_v4().simple());
    create_azurite_container(&endpoint, &container);
    let azurite = azurite_container(&endpoint, &container);
    let proxy = FaultProxy::start(azurite_address(&endpoint)).await;
    proxy.set(Fault::ServerBusy);
    let emulator = Emulator::start(EmulatorConfig {
        amqp_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..EmulatorConfig::default()
    })
    .await
    .expect("the emulator starts");
    let dir = tempfile::tempdir().unwrap();
    let display = dir.path().display();
    // The files would roll by age only after an hour: the open files are handed back as well.
    let text = format!(
        r#"
[source]
connection_string = "{}"
batch_max_rows = 64
batch_linger = "10ms"

[checkpoint]
dir = "{display}/checkpoints"
interval = "200ms"

[dead_letters]
store = {{ kind = "local", root = "{display}" }}

[service]
listen = "127.0.0.1:0"
stall_after = "300ms"
dead_after = "2s"

[[endpoints]]
sink = {{ type = "parquet", name = "lake", store = {{ kind = "local", root = "{display}/lake" }}, max_file_age = "300ms" }}

[[endpoints]]
sink = {{ type = "parquet", name = "blob", max_file_age = "1h", max_file_bytes = 65536, retry = {{ max_backoff = "200ms" }}, store = {{ kind = "azure", container = "{container}", account = "devstoreaccount1", access_key = "{AZURITE_KEY}", endpoint = "http://{}/devstoreaccount1" }} }}

[[routes]]
name = "to-lake"
condition = "true"
endpoint = "lake"

[[routes]]
name = "to-blob"
condition = "true"
endpoint = "blob"
"#,
        emulator.connection_string("hub"),
        proxy.addr(),
    );
    let path = dir.path().join("hubroute.toml");
    std::fs::write(&path, &text).unwrap();
    let engine = RunningEngine::start(LoadedConfig::load(&path).unwrap())
        .await
        .unwrap();
    let addr = engine.http_addr();
    send(
        &emulator.connection_string("hub"),
        EVENTS,
        Rate::PerSecond(NonZeroU32::new(500).unwrap()),
    )
    .await;
    wait_until(
        "every event is checkpointed with the blob store still down",
        Duration::from_secs(60),
        || committed(&engine) == EVENTS,
    )
    .await;
    let text = metrics_of(addr).await;
    assert_eq!(
        metric_sum(
            &text,
            "hubroute_endpoint_parked_rows_total{endpoint=\"blob\"}"
        ),
        EVENTS as f64,
        "every row is parked once, those the sink had held included:\n{text}"
    );
    assert!(parquet_object_message_ids(&azurite).await.is_empty());
    assert_eq!(
        parquet_message_ids(&dir.path().join("lake")).len(),
        EVENTS as usize,
        "the local lake has every row"
    );

    proxy.set(Fault::None);
    wait_until_metric(addr, "every parked row replayed", |text| {
        metric_sum(
            text,
            "hubroute_endpoint_replayed_rows_total{endpoint=\"blob\"}",
        ) >= EVENTS as f64
    })
    .await;
    let landed: HashSet<String> = parquet_object_message_ids(&azurite)
        .await
        .into_iter()
        .collect();
    let sent: HashSet<String> = parquet_message_ids(&dir.path().join("lake"))
        .into_iter()
        .collect();
    assert_eq!(landed, sent, "every row is in a file on the store");
    wait_until(
        "the blob endpoint is live again",
        Duration::from_secs(30),
        || {
            !engine
                .endpoint_health()
                .iter()
                .any(|(name, status)| name == "blob" && *status == HealthStatus::Dead)
        },
    )
    .await;
    engine.shutdown().await.unwrap();
    emulator.shutdown().await.unwrap();
}
