//! End-to-end tests of the routing engine as a service: the emulator feeds simulated device
//! telemetry, the engine routes it into real sinks (Parquet on local disk, PostgreSQL, the HTTP
//! webhook receiver of `support`), and every count is checked against an independent computation
//! of IoT Hub's routing decisions over the same deterministic messages.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hubroute_emulator::simulate::{
    DeviceMessage, Rate, Simulation, SimulationConfig, SimulationTarget, StopAfter,
    TelemetryGenerator,
};
use hubroute_emulator::{Emulator, EmulatorConfig, RunningEmulator};
use hubroute_engine::config::LoadedConfig;
use hubroute_engine::pipeline::RunningEngine;
use hubroute_protocol::ConnectionString;

use crate::support::{Hook, metric_sum, metrics_of, parquet_message_ids, wait_until};

const DEVICES: u32 = 50;

async fn emulator() -> RunningEmulator {
    Emulator::start(EmulatorConfig {
        amqp_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..EmulatorConfig::default()
    })
    .await
    .expect("the emulator starts")
}

/// Sends `events` simulated device messages (seed 7, [`DEVICES`] devices) at full speed.
async fn simulate(emulator: &RunningEmulator, events: u64) {
    let report = Simulation::new(SimulationConfig {
        target: SimulationTarget::Amqp {
            connection_string: ConnectionString::parse(&emulator.connection_string("hub")).unwrap(),
            partition: None,
        },
        devices: NonZeroU32::new(DEVICES).unwrap(),
        rate: Rate::Max,
        stop: StopAfter::Events(events),
        seed: 7,
        max_in_flight: 256,
        mix: Default::default(),
    })
    .run()
    .await
    .expect("the simulation runs");
    assert_eq!((report.sent, report.errors), (events, 0));
}

/// The same messages the simulation sends, generated again for the independent computation.
fn messages(events: u64) -> Vec<(DeviceMessage, serde_json::Value)> {
    let mut generator = TelemetryGenerator::new(7, NonZeroU32::new(DEVICES).unwrap());
    (0..events)
        .map(|_| {
            let message = generator.next_message();
            let body = serde_json::from_slice(&message.body).unwrap();
            (message, body)
        })
        .collect()
}

fn property<'a>(message: &'a DeviceMessage, name: &str) -> Option<&'a str> {
    message
        .properties
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

fn ids(selected: impl Iterator<Item = String>) -> BTreeSet<String> {
    selected.collect()
}

fn load(dir: &Path, text: &str) -> LoadedConfig {
    let path = dir.join("hubroute.toml");
    std::fs::write(&path, text).unwrap();
    LoadedConfig::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"))
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

/// `config` with its dead letters stored under `dir`.
fn with_local_dead_letters(config: String, dir: &Path) -> String {
    config
        + &format!(
            "\n[dead_letters]\nstore = {{ kind = \"local\", root = \"{}\" }}\n",
            dir.display()
        )
}

/// Every dead letter stored under `dir` by a configuration of [`with_local_dead_letters`].
async fn dead_letters_in(dir: &Path) -> Vec<hubroute_sinks::DeadLetter> {
    hubroute_sinks::DeadLetterStore::new(&hubroute_sinks::DeadLetterConfig {
        store: hubroute_sinks::ObjectStoreConfig::Local {
            root: dir.to_owned(),
        },
        prefix: "dead-letters".to_owned(),
    })
    .unwrap()
    .read_all()
    .await
    .unwrap()
}

async fn postgres() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        tokio_postgres::NoTls,
    )
    .await
    .expect("PostgreSQL at 127.0.0.1:5432 (user postgres, database test): run .ci/test");
    tokio::spawn(connection);
    client
}

async fn pg_message_ids(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    client
        .query(&format!("SELECT message_id FROM \"{table}\""), &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

fn unique_table(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The realistic route set of the main test; `{…}` placeholders are filled per test.
fn routing_config(dir: &Path, connection_string: &str, table: &str, hook: &str) -> String {
    let dir = dir.display();
    format!(
        r#"
hub_name = "plant-hub"

[source]
connection_string = "{connection_string}"
batch_max_rows = 512
batch_linger = "10ms"

[checkpoint]
dir = "{dir}/checkpoints"
interval = "200ms"

[dead_letters]
store = {{ kind = "local", root = "{dir}" }}

[service]
listen = "127.0.0.1:0"

[[endpoints]]
sink = {{ type = "parquet", name = "lake", store = {{ kind = "local", root = "{dir}/lake" }}, max_file_age = "300ms" }}

[[endpoints]]
queue_capacity = 4
sink = {{ type = "postgres", name = "alerts-db", dbname = "test", linger = "10ms", table = {{ name = "{table}", columns = [{{ name = "message_id", source = "message_id", type = "text" }}, {{ name = "temperature", source = "$.temperature", type = "double" }}] }} }}

[[endpoints]]
sink = {{ type = "webhook", name = "ops-hook", url = "{hook}", linger = "10ms" }}

# Hot readings and alarms both go to the database: a message matching both lands there once.
[[routes]]
name = "hot"
condition = "$body.temperature > 30"
endpoint = "alerts-db"

[[routes]]
name = "alarms"
condition = "$body.status = 'alarm'"
endpoint = "alerts-db"

[[routes]]
name = "high-severity"
condition = "severity = 'high'"
endpoint = "ops-hook"

[[routes]]
name = "line-one"
condition = "$body.location.line = 'line-1'"
endpoint = "lake"

[[routes]]
name = "disabled"
condition = "true"
endpoint = "ops-hook"
enabled = false

[fallback]
endpoint = "lake"

[[enrichments]]
key = "hub"
value = "$iothubname"
endpoints = ["ops-hook"]

[[enrichments]]
key = "site"
value = "$twin.tags.site"
endpoints = ["ops-hook"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_messages_reach_exactly_the_endpoints_iot_hub_would_choose() {
    const EVENTS: u64 = 4000;
    let emulator = emulator().await;
    let hook = Hook::start().await;
    let dir = tempfile::tempdir().unwrap();
    let table = unique_table("routed");
    let loaded = load(
        dir.path(),
        &routing_config(
            dir.path(),
            &emulator.connection_string("hub"),
            &table,
            &hook.url(),
        ),
    );
    let engine = RunningEngine::start(loaded)
        .await
        .expect("the engine starts");
    simulate(&emulator, EVENTS).await;
    wait_until("every event is committed", Duration::from_secs(60), || {
        committed(&engine) == EVENTS
    })
    .await;

    // The independent computation: IoT Hub's semantics written out by hand.
    let all = messages(EVENTS);
    let hot = |b: &serde_json::Value| b["temperature"].as_f64().unwrap() > 30.0;
    let alarm = |b: &serde_json::Value| b["status"] == "alarm";
    let high = |m: &DeviceMessage| property(m, "severity") == Some("high");
    let line_one = |b: &serde_json::Value| b["location"]["line"] == "line-1";
    let expected_db = ids(all
        .iter()
        .filter(|(_, b)| hot(b) || alarm(b))
        .map(|(m, _)| m.message_id.clone()));
    let expected_hook = ids(all
        .iter()
        .filter(|(m, _)| high(m))
        .map(|(m, _)| m.message_id.clone()));
    let matched_none = |(m, b): &&(DeviceMessage, serde_json::Value)| {
        !(hot(b) || alarm(b) || high(m) || line_one(b))
    };
    let expected_lake = ids(all
        .iter()
        .filter(|(_, b)| line_one(b))
        .chain(all.iter().filter(matched_none))
        .map(|(m, _)| m.message_id.clone()));
    assert!(expected_db.len() > 100 && expected_hook.len() > 20 && expected_lake.len() > 1000);

    let metrics = metrics_of(engine.http_addr()).await;
    let routes = routes_of(engine.http_addr()).await;
    let health = reqwest::get(format!("http://{}/healthz", engine.http_addr()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let summary = engine.shutdown().await.expect("a clean shutdown");
    assert_eq!(summary.events_routed, EVENTS);

    let pg = postgres().await;
    let db_rows = pg_message_ids(&pg, &table).await;
    assert_eq!(
        db_rows.len(),
        expected_db.len(),
        "one row per message, deduplicated"
    );
    assert_eq!(ids(db_rows.into_iter()), expected_db);
    let hook_ids = hook.message_ids();
    assert_eq!(hook_ids.len(), expected_hook.len());
    assert_eq!(ids(hook_ids.into_iter()), expected_hook);
    let lake_ids = parquet_message_ids(&dir.path().join("lake"));
    assert_eq!(lake_ids.len(), expected_lake.len());
    assert_eq!(ids(lake_ids.into_iter()), expected_lake);

    for event in hook.received.lock().unwrap().iter() {
        assert_eq!(event["properties"]["hub"], "plant-hub");
        assert_eq!(
            event["properties"]["site"], "$twin.tags.site",
            "without twin state the literal is kept, as IoT Hub does"
        );
        assert_eq!(event["properties"]["severity"], "high");
    }
    let fallback = all.iter().filter(matched_none).count();
    for line in [
        format!(
            "hubroute_route_matched_total{{route=\"high-severity\"}} {}",
            expected_hook.len()
        ),
        format!("hubroute_fallback_matched_total {fallback}"),
        "hubroute_route_matched_total{route=\"disabled\"} 0".to_owned(),
        format!("hubroute_events_routed_total {EVENTS}"),
    ] {
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    assert!(metrics.contains("hubroute_endpoint_commit_latency_seconds_bucket{"));
    assert_eq!(routes["routes"].as_array().unwrap().len(), 5);
    assert_eq!(routes["endpoints"][1]["name"], "alerts-db");
    assert_eq!(routes["endpoints"][1]["status"], "healthy");
    pg.execute(&format!("DROP TABLE \"{table}\""), &[])
        .await
        .unwrap();
    emulator.shutdown().await.unwrap();
}

fn single_hook_config(dir: &Path, connection_string: &str, hook: &str, condition: &str) -> String {
    let dir = dir.display();
    format!(
        r#"
[source]
connection_string = "{connection_string}"
prefetch = 64
batch_max_rows = 64
batch_linger = "5ms"

[checkpoint]
dir = "{dir}/checkpoints"
interval = "100ms"

[service]
listen = "127.0.0.1:0"
stall_after = "300ms"
lag_interval = "200ms"

[[endpoints]]
queue_capacity = 2
sink = {{ type = "webhook", name = "hook", url = "{hook}", linger = "5ms", max_batch_events = 64, max_in_flight = 1 }}

[[routes]]
name = "selected"
condition = "{condition}"
endpoint = "hook"
"#
    )
}

/// The set-up of the single-endpoint tests: an emulator holding `events` simulated messages, a
/// webhook receiver and a scratch directory.
struct HookScenario {
    emulator: RunningEmulator,
    hook: Hook,
    dir: tempfile::TempDir,
}

impl HookScenario {
    async fn start(events: u64) -> Self {
        let emulator = emulator().await;
        if events > 0 {
            simulate(&emulator, events).await;
        }
        Self {
            emulator,
            hook: Hook::start().await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn into_parts(self) -> (RunningEmulator, Hook, tempfile::TempDir) {
        (self.emulator, self.hook, self.dir)
    }

    /// A configuration sending the messages that match `condition` to the webhook.
    fn config(&self, condition: &str) -> String {
        single_hook_config(
            self.dir.path(),
            &self.emulator.connection_string("hub"),
            &self.hook.url(),
            condition,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sink_holds_back_the_source_and_nothing_is_lost_when_it_recovers() {
    const EVENTS: u64 = 5000;
    let scenario = HookScenario::start(EVENTS).await;
    let config = scenario.config("true");
    let (emulator, hook, dir) = scenario.into_parts();
    hook.stalled.store(true, Ordering::SeqCst);
    let loaded = load(dir.path(), &config);
    let engine = RunningEngine::start(loaded).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = engine.metrics().events_routed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still_held = engine.metrics().events_routed();
    // Per partition at most: the batch in the sink, the queue (2), the router's batch, the source
    // channel (2) and the receiver's partial batch, 64 rows each, plus 64 prefetched events.
    let bound = 4 * (7 * 64 + 64);
    assert!(held > 0, "routing started");
    assert_eq!(held, still_held, "a stalled sink stops the source");
    assert!(
        held <= bound,
        "{held} events routed while stalled, bound {bound}"
    );
    let health = routes_of(engine.http_addr()).await;
    assert_eq!(health["endpoints"][0]["status"], "unhealthy", "{health}");
    assert_eq!(committed(&engine), 0);
    let lag = |engine: &RunningEngine| {
        let addr = engine.http_addr();
        async move {
            let text = metrics_of(&addr).await;
            metric_sum(&text, "hubroute_partition_lag_events{") as u64
        }
    };
    let started = Instant::now();
    while lag(&engine).await != EVENTS {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "lag shows every event uncommitted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    hook.stalled.store(false, Ordering::SeqCst);
    wait_until("every event is committed", Duration::from_secs(60), || {
        committed(&engine) == EVENTS
    })
    .await;
    let started = Instant::now();
    while lag(&engine).await != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "lag returns to 0"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine.shutdown().await.unwrap();
    let received = hook.message_ids();
    assert_eq!(
        ids(received.iter().cloned()).len(),
        EVENTS as usize,
        "no loss"
    );
    emulator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanently_rejected_messages_are_dead_lettered_and_the_checkpoint_moves_on() {
    const EVENTS: u64 = 600;
    let scenario = HookScenario::start(EVENTS).await;
    let config = with_local_dead_letters(scenario.config("true"), scenario.dir.path());
    let (emulator, hook, dir) = scenario.into_parts();
    hook.rejecting.store(true, Ordering::SeqCst);
    let engine = RunningEngine::start(load(dir.path(), &config))
        .await
        .unwrap();
    wait_until(
        "every event is checkpointed",
        Duration::from_secs(60),
        || committed(&engine) == EVENTS,
    )
    .await;
    let metrics = metrics_of(engine.http_addr()).await;
    engine.shutdown().await.unwrap();
    assert!(hook.message_ids().is_empty());
    let line = format!("hubroute_endpoint_dead_lettered_total{{endpoint=\"hook\"}} {EVENTS}");
    assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    let letters = dead_letters_in(dir.path()).await;
    assert_eq!(letters.len(), EVENTS as usize);
    assert!(
        letters
            .iter()
            .all(|l| l.sink == "hook" && l.error.contains("400"))
    );
    let positions: BTreeSet<(String, i64)> = letters
        .iter()
        .map(|l| (l.partition.clone(), l.sequence_number))
        .collect();
    assert_eq!(
        positions.len(),
        EVENTS as usize,
        "each message once, with its position"
    );
    emulator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_policy_keeps_a_partition_flowing_past_a_stalled_endpoint() {
    const EVENTS: u64 = 3000;
    let scenario = HookScenario::start(EVENTS).await;
    let config = with_local_dead_letters(
        scenario.config("true").replace(
            "queue_capacity = 2",
            "queue_capacity = 1\nfull_policy = \"dead_letter\"",
        ),
        scenario.dir.path(),
    );
    let (emulator, hook, dir) = scenario.into_parts();
    hook.stalled.store(true, Ordering::SeqCst);
    let engine = RunningEngine::start(load(dir.path(), &config))
        .await
        .unwrap();
    // With `block` a stalled endpoint stops the partition (see the stall test); with `dead_letter`
    // a full queue parks the endpoint: its queued rows and the rows that follow go to the
    // dead-letter store, and the checkpoint moves on while the endpoint is still stalled.
    wait_until(
        "every event is checkpointed with the endpoint stalled",
        Duration::from_secs(60),
        || committed(&engine) == EVENTS,
    )
    .await;
    let letters = dead_letters_in(dir.path()).await;
    assert!(!letters.is_empty(), "the full queue parked rows");
    assert!(
        letters
            .iter()
            .all(|l| l.parked && l.error.contains("queue full"))
    );
    // Once the endpoint drains, every parked row is replayed without a command.
    hook.stalled.store(false, Ordering::SeqCst);
    wait_until(
        "every event reaches the webhook",
        Duration::from_secs(60),
        || ids(hook.message_ids().into_iter()).len() == EVENTS as usize,
    )
    .await;
    let started = Instant::now();
    while !dead_letters_in(dir.path()).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the parked rows are moved aside once replayed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine.shutdown().await.unwrap();
    emulator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_fails_fatally_stops_the_engine_without_checkpointing_its_rows() {
    let emulator = emulator().await;
    simulate(&emulator, 200).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[source]
connection_string = "{}"

[checkpoint]
dir = "{dir}/checkpoints"
interval = "50ms"

[service]
listen = "127.0.0.1:0"

[[endpoints]]
sink = {{ type = "sqlite", name = "db", path = "{dir}/db.sqlite", linger = "5ms", table = {{ name = "absent", create = false }} }}

[[routes]]
name = "all"
condition = "true"
endpoint = "db"
"#,
        emulator.connection_string("hub"),
        dir = dir.path().display()
    );
    let engine = RunningEngine::start(load(dir.path(), &config))
        .await
        .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(30), engine.wait())
        .await
        .expect("the engine stops by itself")
        .expect_err("a fatal sink error is the engine's error");
    assert!(error.to_string().contains("endpoint `db`"), "{error}");
    assert!(
        !dir.path().join("checkpoints").exists()
            || std::fs::read_dir(dir.path().join("checkpoints"))
                .unwrap()
                .next()
                .is_none(),
        "no checkpoint moved past rows the sink never committed"
    );
    emulator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_traffic_switches_routes_between_batches() {
    const EVENTS: u64 = 6000;
    let scenario = HookScenario::start(0).await;
    let config = |condition: &str| scenario.config(condition);
    let (emulator, hook, dir) = (&scenario.emulator, &scenario.hook, &scenario.dir);
    let connection_string = emulator.connection_string("hub");
    let loaded = load(dir.path(), &config("severity = 'high'"));
    let engine = RunningEngine::start(loaded).await.unwrap();
    let reloader = engine.reloader();
    let sender = tokio::spawn({
        let connection_string = connection_string.clone();
        async move {
            Simulation::new(SimulationConfig {
                target: SimulationTarget::Amqp {
                    connection_string: ConnectionString::parse(&connection_string).unwrap(),
                    partition: None,
                },
                devices: NonZeroU32::new(DEVICES).unwrap(),
                rate: Rate::PerSecond(NonZeroU32::new(3000).unwrap()),
                stop: StopAfter::Events(EVENTS),
                seed: 7,
                max_in_flight: 64,
                mix: Default::default(),
            })
            .run()
            .await
            .unwrap()
        }
    });
    wait_until("traffic flows", Duration::from_secs(30), || {
        engine.metrics().events_routed() > EVENTS / 3
    })
    .await;
    std::fs::write(reloader.path(), config("severity = = 'x'")).unwrap();
    let rejected = reloader.reload().unwrap_err().to_string();
    assert!(rejected.contains("does not compile"), "{rejected}");
    std::fs::write(reloader.path(), config("severity = 'medium'")).unwrap();
    reloader.reload().expect("a valid reload applies");
    assert_eq!(sender.await.unwrap().sent, EVENTS);
    wait_until("every event is committed", Duration::from_secs(60), || {
        committed(&engine) == EVENTS
    })
    .await;
    engine.shutdown().await.unwrap();

    // Per partition, messages before one switch point were routed by the old condition and all
    // after it by the new one: no gap, no message routed by a mix.
    let severity: HashMap<String, String> = messages(EVENTS)
        .into_iter()
        .map(|(m, _)| {
            let severity = property(&m, "severity").unwrap().to_owned();
            (m.message_id, severity)
        })
        .collect();
    let mut per_partition: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for event in hook.received.lock().unwrap().iter() {
        per_partition
            .entry(event["partition"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                event["sequenceNumber"].as_i64().unwrap(),
                severity[event["systemProperties"]["messageId"].as_str().unwrap()].clone(),
            ));
    }
    let partitions = per_partition.len();
    assert_eq!(partitions, 4);
    let mut medium_seen = 0;
    for (partition, mut delivered) in per_partition {
        delivered.sort();
        let switch = delivered
            .iter()
            .position(|(_, s)| s == "medium")
            .unwrap_or(delivered.len());
        assert!(
            delivered[..switch].iter().all(|(_, s)| s == "high")
                && delivered[switch..].iter().all(|(_, s)| s == "medium"),
            "partition {partition}: old and new routes interleave: {delivered:?}"
        );
        medium_seen += delivered.len() - switch;
    }
    assert!(medium_seen > 0, "the new route applied");
    scenario.emulator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_engine_restarts_from_its_checkpoints_and_loses_nothing() {
    const EVENTS: u64 = 20_000;
    let emulator = emulator().await;
    simulate(&emulator, EVENTS).await;
    let hook = Hook::start().await;
    let dir = tempfile::tempdir().unwrap();
    let table = unique_table("killed");
    let config = routing_config(
        dir.path(),
        &emulator.connection_string("hub"),
        &table,
        &hook.url(),
    )
    .replace("[[routes]]\nname = \"hot\"", "[[routes]]\nname = \"everything\"\ncondition = \"true\"\nendpoint = \"lake\"\n\n[[routes]]\nname = \"hot\"");
    let path = dir.path().join("hubroute.toml");
    std::fs::write(&path, config).unwrap();
    let spawn = || {
        crate::support::hubroute()
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("hubroute run starts")
    };
    let pg = postgres().await;
    let count = || async {
        pg.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
            .await
            .map(|row| row.get::<_, i64>(0))
            .unwrap_or(0)
    };
    let mut first = spawn();
    let started = Instant::now();
    while count().await < 200 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no rows arrive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().expect("SIGKILL");
    first.wait().unwrap();
    let at_kill = count().await;

    let mut second = spawn();
    let expected_db = ids(messages(EVENTS)
        .iter()
        .filter(|(_, b)| b["temperature"].as_f64().unwrap() > 30.0 || b["status"] == "alarm")
        .map(|(m, _)| m.message_id.clone()));
    assert!(
        at_kill < i64::try_from(expected_db.len()).unwrap(),
        "killed mid-stream"
    );
    let started = Instant::now();
    while count().await < i64::try_from(expected_db.len()).unwrap() {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the restart does not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lake_dir = dir.path().join("lake");
    let started = Instant::now();
    while ids(parquet_message_ids(&lake_dir).into_iter()).len() < EVENTS as usize {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the lake does not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let terminated = std::process::Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let status = second.wait().unwrap();
    assert!(status.success(), "a graceful stop exits 0: {status}");

    let db_rows = pg_message_ids(&pg, &table).await;
    assert_eq!(
        db_rows.len(),
        expected_db.len(),
        "PostgreSQL is idempotent: no duplicate"
    );
    assert_eq!(ids(db_rows.into_iter()), expected_db);
    let lake = parquet_message_ids(&lake_dir);
    assert_eq!(
        ids(lake.iter().cloned()).len(),
        EVENTS as usize,
        "every message at least once"
    );
    let hook_ids = ids(hook.message_ids().into_iter());
    let expected_hook = messages(EVENTS)
        .iter()
        .filter(|(m, _)| property(m, "severity") == Some("high"))
        .count();
    assert_eq!(
        hook_ids.len(),
        expected_hook,
        "the webhook saw every alarm at least once"
    );
    pg.execute(&format!("DROP TABLE \"{table}\""), &[])
        .await
        .unwrap();
    emulator.shutdown().await.unwrap();
}

#[test]
fn route_test_with_a_config_names_the_routes_endpoints_and_enrichments_a_message_reaches() {
    let dir = tempfile::tempdir().unwrap();
    let config = routing_config(
        dir.path(),
        "Endpoint=sb://127.0.0.1:5673/;SharedAccessKeyName=k;SharedAccessKey=a2V5;EntityPath=hub",
        "t",
        "http://127.0.0.1:9/hook",
    );
    let path = dir.path().join("hubroute.toml");
    std::fs::write(&path, config).unwrap();
    let cases = [
        (
            r#"{"body":{"temperature":31,"status":"alarm","location":{"line":"line-1"}},
                "appProperties":{"severity":"high"},
                "systemProperties":{"contentType":"application/json","contentEncoding":"utf-8"},
                "twin":{"tags":{"site":"plant-7"}}}"#,
            "routes: hot, alarms, high-severity, line-one\nfallback: no\nendpoints: lake, alerts-db, ops-hook\n\
             enrichments:\n  ops-hook: hub=\"plant-hub\", site=\"plant-7\"\n",
        ),
        (
            r#"{"body":{"temperature":20},"systemProperties":{"contentType":"application/json","contentEncoding":"utf-8"}}"#,
            "routes: (none)\nfallback: yes\nendpoints: lake\nenrichments: (none)\n",
        ),
        (
            r#"{"body":{"temperature":40}}"#,
            "routes: (none)\nfallback: yes\nendpoints: lake\nenrichments: (none)\n",
        ),
        (
            r#"{"appProperties":{"severity":"high"}}"#,
            "routes: high-severity\nfallback: no\nendpoints: ops-hook\n\
             enrichments:\n  ops-hook: hub=\"plant-hub\", site=\"$twin.tags.site\"\n",
        ),
    ];
    for (message, expected) in cases {
        let file = dir.path().join("message.json");
        std::fs::write(&file, message).unwrap();
        let output = crate::support::hubroute()
            .args(["route", "test", "--config"])
            .arg(&path)
            .arg("--message")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            expected,
            "{message}"
        );
    }
}

#[test]
fn quickstart_routes_live_and_reports_where_the_data_landed() {
    let dir = tempfile::tempdir().unwrap();
    let output = crate::support::hubroute()
        .args(["quickstart", "--events", "3000", "--rate", "0", "--dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // 100 devices registered: a lifecycle event, a twin change (tags) and a reported-property
    // change (twin change) each, before they send.
    assert!(
        stdout.contains("routed 3000 device messages and 300 twin change and lifecycle events"),
        "{stdout}"
    );
    let lake = parquet_message_ids(&dir.path().join("lake"));
    assert_eq!(
        lake.iter().filter(|id| !id.is_empty()).count(),
        3000,
        "every device message archived"
    );
    assert_eq!(
        lake.iter().filter(|id| id.is_empty()).count(),
        200,
        "and every twin change event (they carry no message id)"
    );
    let hook_lines = std::fs::read_to_string(dir.path().join("webhook.jsonl")).unwrap();
    let messages = messages_of_quickstart(3000);
    let hooked = messages
        .iter()
        .filter(|m| property(m, "severity") == Some("high") || m.device_id == "device-00000")
        .count();
    assert_eq!(hook_lines.lines().count(), hooked);
    assert!(stdout.contains(&format!(
        "Webhook (routes high-severity, device-00000): {hooked} messages"
    )));
    // The plant-3 route selects by twin tag: devices whose site is plant-3.
    let plant_3 = messages
        .iter()
        .filter(|m| hubroute_emulator::simulate::simulated_twin(m.device).0["site"] == "plant-3")
        .count();
    let plant_db = rusqlite_count(&dir.path().join("plant3.db"), "plant_3");
    assert_eq!(plant_db, plant_3);
    for line in hook_lines.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let device = event["systemProperties"]["connectionDeviceId"]
            .as_str()
            .unwrap();
        let number: u32 = device.trim_start_matches("device-").parse().unwrap();
        let site = hubroute_emulator::simulate::simulated_twin(number).0["site"].clone();
        assert_eq!(
            event["properties"]["site"], site,
            "the twin's site enrichment"
        );
    }
}

/// Rows of `table` in the SQLite database at `path`.
fn rusqlite_count(path: &Path, table: &str) -> usize {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection
        .query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |row| {
            row.get::<_, i64>(0)
        })
        .map(|n| usize::try_from(n).unwrap())
        .unwrap()
}

/// The quickstart's fleet: seed 0, 100 devices.
fn messages_of_quickstart(events: u64) -> Vec<DeviceMessage> {
    let mut generator = TelemetryGenerator::new(0, NonZeroU32::new(100).unwrap());
    (0..events).map(|_| generator.next_message()).collect()
}

/// The engine's `/routes` document.
async fn routes_of(addr: impl std::fmt::Display) -> serde_json::Value {
    reqwest::get(format!("http://{addr}/routes"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_reloads_routes_on_file_change_and_sighup_and_keeps_them_on_a_bad_file() {
    let scenario = HookScenario::start(0).await;
    let config = |condition: &str| scenario.config(condition);
    let dir = &scenario.dir;
    let path = dir.path().join("hubroute.toml");
    std::fs::write(&path, config("severity = 'high'")).unwrap();
    let mut child = crate::support::KillOnDrop(
        crate::support::hubroute()
            .args(["--log-format", "json", "run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info,fe2o3_amqp=off")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The log is read on its own thread, with a bounded wait for the address, and drained to the
    // test's output afterwards: a pipe nobody reads fills up and blocks the service's logging.
    let lines = crate::support::lines_of(child.stderr.take().unwrap());
    let addr = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the service logs its address within a minute");
        if let Some(rest) = line.split("serving http://").nth(1) {
            break rest.split('/').next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || {
        for line in lines {
            eprintln!("[hubroute] {line}");
        }
    });
    let condition = |routes: &serde_json::Value| routes["routes"][0]["condition"].clone();
    assert_eq!(condition(&routes_of(&addr).await), "severity = 'high'");

    // A rewrite of the file is picked up by the watcher (it polls every 2 s).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&path, config("severity = 'medium'")).unwrap();
    let started = Instant::now();
    while condition(&routes_of(&addr).await) != "severity = 'medium'" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the file change was not applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An invalid file is rejected and the running routes stay.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&path, config("severity = = 'x'")).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(condition(&routes_of(&addr).await), "severity = 'medium'");
    let metrics = metrics_of(&addr).await;
    assert!(
        metrics.contains("hubroute_config_reloads_total{outcome=\"rejected\"} 1"),
        "{metrics}"
    );

    // SIGHUP reloads at once: the file's modification time is put back so that the watcher sees
    // no change and only the signal can apply the new routes.
    let unchanged = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::write(&path, config("severity = 'low'")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(unchanged)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        condition(&routes_of(&addr).await),
        "severity = 'medium'",
        "no reload without a change of modification time or a signal"
    );
    let hangup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    let started = Instant::now();
    while condition(&routes_of(&addr).await) != "severity = 'low'" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    // Waited for without blocking a worker of this runtime, which also runs the emulator the
    // service is closing its links with.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the service did not stop within a minute of SIGTERM (its log is above)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success());
    scenario.emulator.shutdown().await.unwrap();
}
