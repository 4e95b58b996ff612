//! End-to-end tests of several `hubroute run` processes sharing one event hub's partitions through
//! ownership blobs in Azurite, as the official event processors do: balance, failover after SIGKILL
//! under load, graceful hand-over on SIGTERM, interop with the official Python processor, outages
//! of the checkpoint store, and what balancing costs.
//!
//! Balancing runs every second or two with a five or six second expiry, so each test takes
//! seconds; every wait has a deadline. Each test runs its own Azurite.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use hubroute_emulator::simulate::{
    Rate, Simulation, SimulationConfig, SimulationTarget, StopAfter,
};
use hubroute_emulator::{Emulator, EmulatorConfig, HubConfig, RunningEmulator};
use hubroute_engine::checkpoint::{
    CheckpointKey, CheckpointStore as _, ObjectStoreCheckpointStore,
};
use hubroute_protocol::ConnectionString;

use crate::support::{
    AZURITE_KEY, PrivateAzurite, azurite_container, hubroute, lines_of, metrics_of,
};

/// Deadline of waits that depend on no balancing timing (start, catching up).
const PATIENCE: Duration = Duration::from_secs(90);

async fn emulator(partitions: u32) -> RunningEmulator {
    Emulator::start(EmulatorConfig {
        amqp_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        hubs: vec![HubConfig::new("hub", partitions)],
        ..EmulatorConfig::default()
    })
    .await
    .expect("the emulator starts")
}

/// Sends `events` simulated device messages at `rate` per second (`None`: as fast as possible).
async fn simulate(emulator: &RunningEmulator, events: u64, rate: Option<u32>, seed: u64) {
    let report = Simulation::new(SimulationConfig {
        target: SimulationTarget::Amqp {
            connection_string: ConnectionString::parse(&emulator.connection_string("hub")).unwrap(),
            partition: None,
        },
        devices: NonZeroU32::new(40).unwrap(),
        rate: rate.map_or(Rate::Max, |r| Rate::PerSecond(NonZeroU32::new(r).unwrap())),
        stop: StopAfter::Events(events),
        seed,
        max_in_flight: 64,
        mix: Default::default(),
    })
    .run()
    .await
    .expect("the simulation runs");
    assert_eq!((report.sent, report.errors), (events, 0));
}

/// Polls `probe` every 250 ms until it returns `Some`; panics naming `what` after `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One test's container in an Azurite blob service, read as the engine's ownership records.
struct Blobs {
    endpoint: String,
    container: String,
    namespace: String,
    store: ObjectStoreCheckpointStore,
}

impl Blobs {
    /// A fresh container; `namespace` is the event hub endpoint's authority (`host:port`).
    fn create(endpoint: &str, namespace: &str) -> Self {
        let container = format!("scale-{}", uuid::Uuid::new_v4().simple());
        let client = azurite_container(endpoint, &container);
        let blobs = Self {
            endpoint: endpoint.to_owned(),
            container,
            namespace: namespace.to_owned(),
            store: ObjectStoreCheckpointStore::new(Arc::new(client)),
        };
        blobs.ensure_container();
        blobs
    }

    /// Creates the container if it does not exist (with the SDK's own storage client).
    fn ensure_container(&self) {
        crate::support::run_python(
            "checkpoint_store.py",
            &["create", &self.connection_string(), &self.container],
        );
    }

    fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint={}",
            self.endpoint
        )
    }

    /// The `[checkpoint] store` value of the engine's configuration.
    fn store_toml(&self) -> String {
        format!(
            r#"{{ kind = "azure", container = "{}", account = "devstoreaccount1", access_key = "{AZURITE_KEY}", endpoint = "{}" }}"#,
            self.container, self.endpoint
        )
    }

    fn key(&self, partition: &str) -> CheckpointKey {
        CheckpointKey {
            fully_qualified_namespace: self.namespace.clone(),
            event_hub: "hub".to_owned(),
            consumer_group: "$Default".to_owned(),
            partition: partition.to_owned(),
        }
    }

    /// The live owner of each partition (`None`: unowned, released or expired).
    async fn owners(&self, partitions: u32, expiry: Duration) -> BTreeMap<String, Option<String>> {
        let mut owners = BTreeMap::new();
        for partition in (0..partitions).map(|p| p.to_string()) {
            let record = self
                .store
                .ownership(&self.key(&partition))
                .await
                .expect("reading an ownership record");
            let live = record.filter(|r| {
                !r.owner_id.is_empty()
                    && r.last_modified + chrono::Duration::from_std(expiry).unwrap()
                        > chrono::Utc::now()
            });
            owners.insert(partition, live.map(|r| r.owner_id));
        }
        owners
    }

    /// The checkpointed sequence number of each partition that has a checkpoint.
    async fn checkpoints(&self, partitions: &BTreeSet<String>) -> BTreeMap<String, i64> {
        let mut checkpoints = BTreeMap::new();
        for partition in partitions {
            if let Some(checkpoint) = self.store.load(&self.key(partition)).await.unwrap() {
                checkpoints.insert(partition.clone(), checkpoint.sequence_number);
            }
        }
        checkpoints
    }
}

/// Balancing timing of a test.
#[derive(Clone, Copy)]
struct Timing {
    interval: Duration,
    expiry: Duration,
}

const FAST: Timing = Timing {
    interval: Duration::from_secs(1),
    expiry: Duration::from_secs(5),
};

/// The configuration of instance `name`: every message to a Parquet lake of its own and, with a
/// `table`, to PostgreSQL.
fn config(
    dir: &Path,
    name: &str,
    emulator: &RunningEmulator,
    blobs: &Blobs,
    timing: Timing,
    table: Option<&str>,
) -> PathBuf {
    let root = dir.join(name);
    let root = root.display();
    let postgres = table.map_or_else(String::new, |table| {
        format!(
            r#"
[[endpoints]]
sink = {{ type = "postgres", name = "db", dbname = "test", linger = "10ms", table = {{ name = "{table}", columns = [{{ name = "message_id", source = "message_id", type = "text" }}] }} }}

[[routes]]
name = "to-db"
condition = "true"
endpoint = "db"
"#
        )
    });
    let text = format!(
        r#"
[source]
connection_string = "{connection_string}"
batch_max_rows = 200
batch_linger = "10ms"

[checkpoint]
dir = "{root}/checkpoints"
interval = "250ms"
store = {store}
load_balancing_interval = "{interval}ms"
ownership_expiry = "{expiry}ms"

[dead_letters]
store = {{ kind = "local", root = "{root}/dead-letters" }}

[service]
listen = "127.0.0.1:0"
drain_timeout = "20s"

[[endpoints]]
sink = {{ type = "parquet", name = "lake", store = {{ kind = "local", root = "{root}/lake" }}, max_file_age = "200ms" }}

[[routes]]
name = "to-lake"
condition = "true"
endpoint = "lake"
{postgres}"#,
        connection_string = emulator.connection_string("hub"),
        store = blobs.store_toml(),
        interval = timing.interval.as_millis(),
        expiry = timing.expiry.as_millis(),
    );
    std::fs::create_dir_all(dir.join(name)).unwrap();
    let path = dir.join(name).join("hubroute.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A `hubroute run` child process, killed on drop. Its log goes to the test's stderr, prefixed.
struct Instance {
    name: String,
    child: Child,
    addr: String,
    owner_id: String,
}

impl Instance {
    /// Spawns `hubroute run`; [`Self::ready`] waits for its HTTP server.
    fn spawn(name: &str, config: &Path) -> (Child, std::sync::mpsc::Receiver<String>) {
        let mut child = hubroute()
            .args(["run", "--config"])
            .arg(config)
            .env(
                "RUST_LOG",
                "info,fe2o3_amqp=off,hubroute_engine::ownership=debug",
            )
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: hubroute run starts: {e}"));
        let lines = lines_of(child.stderr.take().expect("piped stderr"));
        (child, lines)
    }

    async fn ready(name: &str, spawned: (Child, std::sync::mpsc::Receiver<String>)) -> Self {
        let (child, lines) = spawned;
        let addr = loop {
            let line = lines
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|_| panic!("{name} never served its HTTP endpoints"));
            eprintln!("[{name}] {line}");
            if let Some(rest) = line.split("serving http://").nth(1) {
                break rest.split('/').next().unwrap().to_owned();
            }
        };
        let prefix = name.to_owned();
        std::thread::spawn(move || {
            for line in lines {
                eprintln!("[{prefix}] {line}");
            }
        });
        let mut instance = Self {
            name: name.to_owned(),
            child,
            addr,
            owner_id: String::new(),
        };
        let (_, health) = instance.health().await;
        instance.owner_id = health["ownership"]["owner_id"]
            .as_str()
            .expect("a shared store gives an owner id")
            .to_owned();
        instance
    }

    async fn start(name: &str, config: &Path) -> Self {
        Self::ready(name, Self::spawn(name, config)).await
    }

    /// `/healthz`: the status code and the document.
    async fn health(&self) -> (u16, serde_json::Value) {
        let response = reqwest::get(format!("http://{}/healthz", self.addr))
            .await
            .unwrap_or_else(|e| panic!("{}: /healthz: {e}", self.name));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// The partitions the instance says it owns.
    async fn owned(&self) -> BTreeSet<String> {
        let (_, health) = self.health().await;
        health["ownership"]["owned_partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect()
    }

    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit.
    fn terminate(&mut self) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "{}: a graceful stop exits 0: {status}",
            self.name
        );
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts instances `names` together (spawned at once, then each awaited).
async fn start_all(names: &[&str], configs: &[PathBuf]) -> Vec<Instance> {
    let spawned: Vec<_> = names
        .iter()
        .zip(configs)
        .map(|(name, config)| Instance::spawn(name, config))
        .collect();
    let mut instances = Vec::new();
    for (name, spawned) in names.iter().zip(spawned) {
        instances.push(Instance::ready(name, spawned).await);
    }
    instances
}

/// Each instance's partitions by the records, if every partition has a live owner among
/// `instances` and each holds `least..=most`.
fn fair_shares(
    owners: &BTreeMap<String, Option<String>>,
    instances: &[&Instance],
    least: usize,
    most: usize,
) -> Option<Vec<BTreeSet<String>>> {
    let shares: Vec<BTreeSet<String>> = instances
        .iter()
        .map(|i| {
            owners
                .iter()
                .filter(|(_, owner)| owner.as_deref() == Some(i.owner_id.as_str()))
                .map(|(p, _)| p.clone())
                .collect()
        })
        .collect();
    let covered: usize = shares.iter().map(BTreeSet::len).sum();
    (covered == owners.len() && shares.iter().all(|s| (least..=most).contains(&s.len())))
        .then_some(shares)
}

/// Waits until the records split `partitions` fairly among `instances` and every instance says it
/// owns exactly its share (so no partition is read by two); returns the shares.
async fn settled(
    blobs: &Blobs,
    instances: &[&Instance],
    partitions: u32,
    timing: Timing,
    timeout: Duration,
) -> Vec<BTreeSet<String>> {
    let count = partitions as usize;
    let (least, most) = (count / instances.len(), count.div_ceil(instances.len()));
    eventually("the instances settle on fair shares", timeout, || async {
        let owners = blobs.owners(partitions, timing.expiry).await;
        let shares = fair_shares(&owners, instances, least, most)?;
        for (instance, share) in instances.iter().zip(&shares) {
            if instance.owned().await != *share {
                return None;
            }
        }
        Some(shares)
    })
    .await
}

/// `(partition, sequence number, message id)` of every row of every Parquet file under `dir`.
fn parquet_rows(dir: &Path) -> Vec<(String, i64, String)> {
    let mut rows = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let file = std::fs::File::open(&path).unwrap();
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                        .unwrap()
                        .build()
                        .unwrap();
                for batch in reader {
                    let batch = batch.unwrap();
                    let column = |name: &str| batch.column_by_name(name).unwrap().clone();
                    let (partition, sequence, id) = (
                        column("partition"),
                        column("sequence_number"),
                        column("message_id"),
                    );
                    let (partition, sequence, id) = (
                        partition.as_string::<i32>(),
                        sequence.as_primitive::<Int64Type>(),
                        id.as_string::<i32>(),
                    );
                    rows.extend((0..batch.num_rows()).map(|i| {
                        (
                            partition.value(i).to_owned(),
                            sequence.value(i),
                            id.value(i).to_owned(),
                        )
                    }));
                }
            }
        }
    }
    rows
}

fn distinct_ids<'a>(rows: impl IntoIterator<Item = &'a (String, i64, String)>) -> BTreeSet<String> {
    rows.into_iter().map(|(_, _, id)| id.clone()).collect()
}

/// Where each row came from: `(partition, sequence number)`, unique per event hub (message ids
/// repeat across simulations).
fn positions<'a>(
    rows: impl IntoIterator<Item = &'a (String, i64, String)>,
) -> BTreeSet<(String, i64)> {
    rows.into_iter().map(|(p, s, _)| (p.clone(), *s)).collect()
}

/// `(partition, sequence number)` of rows that appear more than once.
fn duplicates(rows: &[(String, i64, String)]) -> Vec<(String, i64)> {
    let mut seen = BTreeMap::new();
    for (partition, sequence, _) in rows {
        *seen.entry((partition.clone(), *sequence)).or_insert(0) += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(key, _)| key)
        .collect()
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

fn namespace(emulator: &RunningEmulator) -> String {
    emulator.amqp_addr().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_split_eight_partitions_within_three_balancing_intervals() {
    let timing = Timing {
        interval: Duration::from_secs(2),
        expiry: Duration::from_secs(6),
    };
    let emulator = emulator(8).await;
    let azurite = PrivateAzurite::start();
    let blobs = Blobs::create(&azurite.endpoint(), &namespace(&emulator));
    let dir = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c"];
    let configs: Vec<PathBuf> = names
        .iter()
        .map(|n| config(dir.path(), n, &emulator, &blobs, timing, None))
        .collect();
    let instances = start_all(&names, &configs).await;
    let all_started = Instant::now();
    let fleet: Vec<&Instance> = instances.iter().collect();
    let shares = settled(&blobs, &fleet, 8, timing, timing.interval * 3).await;
    eprintln!(
        "settled in {:?} after the last instance started: {:?}",
        all_started.elapsed(),
        shares.iter().map(BTreeSet::len).collect::<Vec<_>>()
    );
    // A balanced fleet stays put.
    tokio::time::sleep(timing.interval * 2).await;
    let later = fair_shares(&blobs.owners(8, timing.expiry).await, &fleet, 2, 3);
    assert_eq!(
        later.as_ref(),
        Some(&shares),
        "no partition moved once balanced"
    );
    for instance in &instances {
        let (status, health) = instance.health().await;
        assert_eq!(status, 200, "{health}");
        let metrics = metrics_of(&instance.addr).await;
        let owned = metrics
            .lines()
            .find(|l| l.starts_with("hubroute_partitions_owned "))
            .unwrap_or_else(|| panic!("{metrics}"));
        assert!(owned.ends_with(" 2") || owned.ends_with(" 3"), "{owned}");
    }
    emulator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_s_partitions_move_within_the_expiry_and_postgres_sees_every_message_once()
 {
    const EVENTS: u64 = 3000;
    let emulator = emulator(8).await;
    let azurite = PrivateAzurite::start();
    let blobs = Blobs::create(&azurite.endpoint(), &namespace(&emulator));
    let dir = tempfile::tempdir().unwrap();
    let pg = postgres().await;
    let table = format!("failover_{}", uuid::Uuid::new_v4().simple());
    let names = ["a", "b", "c"];
    let configs: Vec<PathBuf> = names
        .iter()
        .map(|n| config(dir.path(), n, &emulator, &blobs, FAST, Some(&table)))
        .collect();
    let mut instances = start_all(&names, &configs).await;
    let fleet: Vec<&Instance> = instances.iter().collect();
    let shares = settled(&blobs, &fleet, 8, FAST, FAST.interval * 10).await;
    let victim_partitions = shares[0].clone();

    let emulator = Arc::new(emulator);
    let producing = tokio::spawn({
        let emulator = Arc::clone(&emulator);
        async move { simulate(&emulator, EVENTS, Some(600), 11).await }
    });
    // Kill instance a while events flow, once it has checkpointed some of them.
    let at_kill = eventually("instance a checkpoints under load", PATIENCE, || async {
        let checkpoints = blobs.checkpoints(&victim_partitions).await;
        (checkpoints.len() == victim_partitions.len()).then_some(checkpoints)
    })
    .await;
    instances[0].kill();
    let killed = Instant::now();
    let survivors: Vec<&Instance> = instances[1..].iter().collect();
    let survivor_ids: BTreeSet<&str> = survivors.iter().map(|i| i.owner_id.as_str()).collect();
    eventually(
        "the survivors claim the killed instance's partitions",
        FAST.expiry + FAST.interval + Duration::from_secs(1),
        || async {
            let owners = blobs.owners(8, FAST.expiry).await;
            victim_partitions
                .iter()
                .all(|p| {
                    owners[p]
                        .as_deref()
                        .is_some_and(|o| survivor_ids.contains(o))
                })
                .then_some(())
        },
    )
    .await;
    eprintln!("re-claimed {:?} after SIGKILL", killed.elapsed());
    producing.await.unwrap();

    let count = || async {
        pg.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
            .await
            .map(|row| row.get::<_, i64>(0))
            .unwrap_or(0)
    };
    eventually("PostgreSQL has every message", PATIENCE, || async {
        (count().await >= EVENTS as i64).then_some(())
    })
    .await;
    let lake_rows = || {
        names
            .iter()
            .flat_map(|n| parquet_rows(&dir.path().join(n).join("lake")))
            .collect::<Vec<_>>()
    };
    eventually("Parquet has every message", PATIENCE, || async {
        (distinct_ids(&lake_rows()).len() as u64 >= EVENTS).then_some(())
    })
    .await;
    let distinct: i64 = pg
        .query_one(
            &format!("SELECT count(DISTINCT message_id) FROM \"{table}\""),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        (count().await, distinct),
        (EVENTS as i64, EVENTS as i64),
        "exactly once"
    );
    let rows = lake_rows();
    assert_eq!(distinct_ids(&rows).len() as u64, EVENTS, "at least once");
    let duplicated = duplicates(&rows);
    for (partition, sequence) in &duplicated {
        assert!(
            victim_partitions.contains(partition)
                && at_kill
                    .get(partition)
                    .is_none_or(|checkpoint| sequence > checkpoint),
            "duplicate ({partition}, {sequence}) outside the window: after the killed instance's \
             checkpoints {at_kill:?} of {victim_partitions:?}"
        );
    }
    eprintln!(
        "{} Parquet duplicates, all after the killed instance's checkpoints",
        duplicated.len()
    );
    pg.execute(&format!("DROP TABLE \"{table}\""), &[])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_partitions_over_within_one_interval_without_duplicates() {
    const EVENTS: u64 = 2000;
    let emulator = Arc::new(emulator(8).await);
    let azurite = PrivateAzurite::start();
    let blobs = Blobs::create(&azurite.endpoint(), &namespace(&emulator));
    let dir = tempfile::tempdir().unwrap();
    let names = ["a", "b"];
    let configs: Vec<PathBuf> = names
        .iter()
        .map(|n| config(dir.path(), n, &emulator, &blobs, FAST, None))
        .collect();
    let mut instances = start_all(&names, &configs).await;
    let fleet: Vec<&Instance> = instances.iter().collect();
    let shares = settled(&blobs, &fleet, 8, FAST, FAST.interval * 10).await;
    let leaving = shares[0].clone();

    let producing = tokio::spawn({
        let emulator = Arc::clone(&emulator);
        async move { simulate(&emulator, EVENTS, Some(500), 12).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    instances[0].terminate();
    let stopped = Instant::now();
    let stayer = instances[1].owner_id.clone();
    eventually(
        "the remaining instance claims the released partitions",
        FAST.interval + Duration::from_secs(1),
        || async {
            let owners = blobs.owners(8, FAST.expiry).await;
            leaving
                .iter()
                .all(|p| owners[p].as_deref() == Some(stayer.as_str()))
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "handed over {:?} after the process exited",
        stopped.elapsed()
    );
    producing.await.unwrap();
    let lake_rows = || {
        names
            .iter()
            .flat_map(|n| parquet_rows(&dir.path().join(n).join("lake")))
            .collect::<Vec<_>>()
    };
    eventually("Parquet has every message", PATIENCE, || async {
        (distinct_ids(&lake_rows()).len() as u64 >= EVENTS).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = lake_rows();
    assert_eq!(
        duplicates(&rows),
        Vec::new(),
        "a graceful hand-over repeats nothing"
    );
    assert_eq!(rows.len() as u64, EVENTS);
}

/// One JSON line per event the Python processor received.
fn python_events(path: &Path) -> Vec<(String, i64, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                event["partition"].as_str().unwrap().to_owned(),
                event["sequence_number"].as_i64().unwrap(),
                event["message_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The official Python processor (`processor.py`), stopped through its stop file.
struct PythonProcessor {
    child: Child,
    stop: PathBuf,
}

impl PythonProcessor {
    fn start(emulator: &RunningEmulator, blobs: &Blobs, events: &Path, stop: PathBuf) -> Self {
        let script = crate::support::workspace_root().join("tests/e2e/python/processor.py");
        let mut child = std::process::Command::new(crate::support::python())
            .arg(script)
            .args([
                emulator.connection_string("hub"),
                blobs.connection_string(),
                blobs.container.clone(),
            ])
            .arg(events)
            .arg(&stop)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python processor.py starts");
        let lines = lines_of(child.stdout.take().unwrap());
        let ready = lines
            .recv_timeout(PATIENCE)
            .expect("processor.py says ready");
        assert_eq!(ready, "ready");
        Self { child, stop }
    }

    fn stop(mut self) {
        std::fs::write(&self.stop, b"stop").unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(started.elapsed() < PATIENCE, "processor.py does not stop");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "processor.py: {status}");
    }
}

impl Drop for PythonProcessor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_processor_shares_partitions_and_checkpoints_with_hubroute() {
    const PHASE: u64 = 300;
    let emulator = emulator(8).await;
    let azurite = PrivateAzurite::start();
    let blobs = Blobs::create(&azurite.endpoint(), &namespace(&emulator));
    let dir = tempfile::tempdir().unwrap();
    let names = ["a", "b"];
    let configs: Vec<PathBuf> = names
        .iter()
        .map(|n| config(dir.path(), n, &emulator, &blobs, FAST, None))
        .collect();
    let lake_rows = || {
        ["a", "b", "c"]
            .iter()
            .flat_map(|n| parquet_rows(&dir.path().join(n).join("lake")))
            .collect::<Vec<_>>()
    };
    let all: BTreeSet<String> = (0..8).map(|p| p.to_string()).collect();

    // Two hubroute instances split the partitions, then route the first events and checkpoint
    // them (events sent while they still balance would be read twice: the window of a steal).
    let mut instances = start_all(&names, &configs).await;
    let fleet: Vec<&Instance> = instances.iter().collect();
    settled(&blobs, &fleet, 8, FAST, FAST.interval * 10).await;
    simulate(&emulator, PHASE, None, 21).await;
    eventually(
        "hubroute routes and checkpoints the first events",
        PATIENCE,
        || async {
            let checkpointed: i64 = blobs.checkpoints(&all).await.values().map(|s| s + 1).sum();
            (checkpointed == PHASE as i64 && positions(&lake_rows()).len() as u64 == PHASE)
                .then_some(())
        },
    )
    .await;

    // The official processor joins on the same container and consumer group: the three split the
    // partitions, and it resumes hubroute's partitions from hubroute's checkpoints.
    let python_log = dir.path().join("python-events.jsonl");
    let python = PythonProcessor::start(&emulator, &blobs, &python_log, dir.path().join("stop"));
    let hubroute_ids: BTreeSet<String> = instances.iter().map(|i| i.owner_id.clone()).collect();
    let python_share = eventually("the three split the partitions", PATIENCE, || async {
        let owners = blobs.owners(8, FAST.expiry).await;
        let mut shares: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (partition, owner) in &owners {
            shares
                .entry(owner.as_deref()?)
                .or_default()
                .insert(partition.clone());
        }
        let python: Vec<&BTreeSet<String>> = shares
            .iter()
            .filter(|(owner, _)| !hubroute_ids.contains(**owner))
            .map(|(_, share)| share)
            .collect();
        (shares.len() == 3
            && shares.values().all(|s| (2..=3).contains(&s.len()))
            && python.len() == 1)
            .then(|| python[0].clone())
    })
    .await;
    eprintln!("the Python processor owns {python_share:?}");
    // The hubroute instances have noticed what the processor took (it keeps its stolen links
    // otherwise for up to one interval, and those rows would be read twice: the documented
    // window of a steal), before the next events are sent.
    eventually(
        "hubroute stops reading the processor's partitions",
        PATIENCE,
        || async {
            for instance in &instances {
                if !instance.owned().await.is_disjoint(&python_share) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    simulate(&emulator, PHASE, None, 22).await;
    let mut polls = 0;
    eventually("the second events arrive", PATIENCE, || {
        polls += 1;
        let report = polls % 40 == 0;
        let (lake, python) = (lake_rows(), python_events(&python_log));
        async move {
            if report {
                let per_partition = |rows: &[(String, i64, String)]| {
                    let mut counts: BTreeMap<String, (usize, i64)> = BTreeMap::new();
                    for (p, s, _) in rows {
                        let entry = counts.entry(p.clone()).or_default();
                        entry.0 += 1;
                        entry.1 = entry.1.max(*s);
                    }
                    counts
                };
                eprintln!(
                    "still waiting: lake (rows, last sequence number) by partition {:?}, Python {:?}",
                    per_partition(&lake),
                    per_partition(&python)
                );
            }
            let seen = positions(&lake).union(&positions(&python)).count() as u64;
            (seen == 2 * PHASE).then_some(())
        }
    })
    .await;
    let python_seen = python_events(&python_log);
    assert!(
        python_seen.iter().all(|(p, _, _)| python_share.contains(p)),
        "the processor reads only its partitions"
    );
    assert!(
        !python_seen.is_empty(),
        "the processor received events of its partitions"
    );

    // hubroute stops: the processor takes every partition over from hubroute's checkpoints.
    for instance in &mut instances {
        instance.terminate();
    }
    eventually(
        "the Python processor owns every partition",
        PATIENCE,
        || async {
            let owners = blobs.owners(8, FAST.expiry).await;
            let owners: BTreeSet<Option<String>> = owners.into_values().collect();
            (owners.len() == 1
                && owners
                    .iter()
                    .all(|o| o.as_deref().is_some_and(|o| !hubroute_ids.contains(o))))
            .then_some(())
        },
    )
    .await;
    simulate(&emulator, PHASE, None, 23).await;
    eventually(
        "the processor receives the third events",
        PATIENCE,
        || async {
            let seen = positions(&lake_rows())
                .union(&positions(&python_events(&python_log)))
                .count() as u64;
            (seen == 3 * PHASE).then_some(())
        },
    )
    .await;

    // The other way round: the processor stops (releasing its partitions) and a hubroute instance
    // resumes from the processor's checkpoints.
    python.stop();
    simulate(&emulator, PHASE, None, 24).await;
    let late_config = config(dir.path(), "c", &emulator, &blobs, FAST, None);
    let late = Instance::start("c", &late_config).await;
    eventually("hubroute routes the fourth events", PATIENCE, || async {
        (positions(&lake_rows())
            .union(&positions(&python_events(&python_log)))
            .count() as u64
            == 4 * PHASE)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (lake, python) = (lake_rows(), python_events(&python_log));
    let hubroute_c = parquet_rows(&dir.path().join("c").join("lake"));
    assert_eq!(
        hubroute_c.len() as u64,
        PHASE,
        "the late hubroute read only what came after the processor's checkpoints"
    );
    let (lake_ids, python_ids) = (positions(&lake), positions(&python));
    assert_eq!(
        lake_ids.intersection(&python_ids).count(),
        0,
        "nobody reprocessed the other's events"
    );
    assert_eq!(
        (lake.len(), python.len()),
        (lake_ids.len(), python_ids.len()),
        "no duplicates"
    );
    assert_eq!(lake_ids.len() + python_ids.len(), 4 * PHASE as usize);
    drop(late);
    emulator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_shorter_than_the_expiry_changes_nothing_and_a_longer_one_releases_everything()
 {
    let timing = Timing {
        interval: Duration::from_secs(1),
        expiry: Duration::from_secs(10),
    };
    let mut azurite = PrivateAzurite::start();
    let emulator = emulator(8).await;
    let blobs = Blobs::create(&azurite.endpoint(), &namespace(&emulator));
    let dir = tempfile::tempdir().unwrap();
    let names = ["a", "b"];
    let configs: Vec<PathBuf> = names
        .iter()
        .map(|n| config(dir.path(), n, &emulator, &blobs, timing, None))
        .collect();
    let instances = start_all(&names, &configs).await;
    let fleet: Vec<&Instance> = instances.iter().collect();
    let shares = settled(&blobs, &fleet, 8, timing, timing.interval * 10).await;

    // Shorter than the expiry: every instance keeps its partitions and stays healthy.
    azurite.stop();
    let outage = Instant::now();
    // A third of the expiry: an instance's last renewal may be an interval (and a slow cycle)
    // older than the outage's start, so half the expiry left too little margin on a loaded machine.
    while outage.elapsed() < timing.expiry / 3 {
        for (instance, share) in instances.iter().zip(&shares) {
            let (status, health) = instance.health().await;
            assert_eq!(status, 200, "{health}");
            assert_eq!(instance.owned().await, *share);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    azurite.resume();
    tokio::time::sleep(timing.interval * 2).await;
    for (instance, share) in instances.iter().zip(&shares) {
        assert_eq!(instance.owned().await, *share, "{}", instance.name);
    }
    assert_eq!(
        fair_shares(&blobs.owners(8, timing.expiry).await, &fleet, 4, 4).as_ref(),
        Some(&shares),
        "no partition moved"
    );

    // Longer than the expiry: claims lapse, every partition is released and /healthz fails.
    azurite.stop();
    let outage = Instant::now();
    eventually(
        "both instances release everything and report unhealthy",
        timing.expiry + timing.interval * 2 + Duration::from_secs(1),
        || async {
            for instance in &instances {
                let (status, health) = instance.health().await;
                if status != 503 || !instance.owned().await.is_empty() {
                    return None;
                }
                assert_eq!(health["checkpoint_store_reachable"], false, "{health}");
            }
            Some(())
        },
    )
    .await;
    assert!(
        outage.elapsed() >= timing.expiry - timing.interval,
        "partitions were released before their claims could expire: {:?}",
        outage.elapsed()
    );
    for instance in &instances {
        let metrics = metrics_of(&instance.addr).await;
        assert!(
            metrics.contains("hubroute_ownership_lost_total{reason=\"expired\"} 4"),
            "{metrics}"
        );
    }

    // The store returns: balancing resumes and the instances are healthy again.
    azurite.resume();
    blobs.ensure_container();
    settled(&blobs, &fleet, 8, timing, timing.interval * 10).await;
    for instance in &instances {
        assert_eq!(instance.health().await.0, 200);
    }
    emulator.shutdown().await.unwrap();
}

/// Requests to the checkpoint store by operation, from an instance's metrics.
async fn store_requests(instance: &Instance) -> BTreeMap<String, u64> {
    metrics_of(&instance.addr)
        .await
        .lines()
        .filter_map(|line| {
            let rest =
                line.strip_prefix("hubroute_checkpoint_store_requests_total{operation=\"")?;
            let (operation, value) = rest.split_once("\"} ")?;
            Some((operation.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The scale and cost measurement `docs/scale-out.md` quotes: the time four instances take to
/// converge on 32 partitions, and the requests each sends to the store per balancing interval once
/// settled (with no traffic, so no checkpoint is written). A measurement of four engine processes
/// against one Azurite, run on demand:
/// `cargo nextest run --test e2e --run-ignored only four_instances --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (four engines, 32 partitions); run on demand, see the doc comment"]
async fn four_instances_converge_on_32_partitions_and_cost_one_read_per_partition_per_interval() {
    const PARTITIONS: u32 = 32;
    const WINDOW: u32 = 5;
    let timing = Timing {
        interval: Duration::from_secs(2),
        expiry: Duration::from_secs(10),
    };
    let emulator = emulator(PARTITIONS).await;
    let azurite = PrivateAzurite::start();
    let blobs = Blobs::create(&azurite.endpoint(), &namespace(&emulator));
    let dir = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c", "d"];
    let configs: Vec<PathBuf> = names
        .iter()
        .map(|n| config(dir.path(), n, &emulator, &blobs, timing, None))
        .collect();
    let instances = start_all(&names, &configs).await;
    let started = Instant::now();
    let fleet: Vec<&Instance> = instances.iter().collect();
    settled(&blobs, &fleet, PARTITIONS, timing, timing.interval * 20).await;
    let converged = started.elapsed();

    let before: Vec<_> = futures::future::join_all(fleet.iter().map(|i| store_requests(i))).await;
    tokio::time::sleep(timing.interval * WINDOW).await;
    let after: Vec<_> = futures::future::join_all(fleet.iter().map(|i| store_requests(i))).await;
    let per_interval = |op: &str, i: usize| {
        (after[i].get(op).copied().unwrap_or(0) - before[i].get(op).copied().unwrap_or(0)) as f64
            / f64::from(WINDOW)
    };
    for (i, instance) in instances.iter().enumerate() {
        let (reads, claims) = (per_interval("read", i), per_interval("claim", i));
        eprintln!(
            "instance {}: {reads:.1} reads and {claims:.1} claims per interval (owns {})",
            instance.name,
            instance.owned().await.len()
        );
        // One read per partition per cycle, one renewal per owned partition (8), give or take
        // the cycle that falls on the window's edge.
        assert!(
            (f64::from(PARTITIONS) * 0.7..=f64::from(PARTITIONS) * 1.3).contains(&reads),
            "{reads}"
        );
        assert!((5.0..=11.0).contains(&claims), "{claims}");
        assert_eq!(
            per_interval("write", i),
            0.0,
            "no traffic, no checkpoint writes"
        );
    }
    eprintln!(
        "4 instances converged on {PARTITIONS} partitions in {converged:?} (interval {:?})",
        timing.interval
    );
    assert!(converged < timing.interval * 20);
    emulator.shutdown().await.unwrap();
}

/// Creates a bucket in the moto S3 server `.ci/test` starts, through boto3 in the venv.
fn create_s3_bucket(name: &str) {
    let script = format!(
        "import boto3\n\
         boto3.client('s3', endpoint_url='http://127.0.0.1:9010', region_name='us-east-1', \
         aws_access_key_id='test', aws_secret_access_key='test').create_bucket(Bucket='{name}')\n"
    );
    let output = std::process::Command::new(crate::support::python())
        .arg("-c")
        .arg(script)
        .output()
        .expect("Python runs");
    assert!(
        output.status.success(),
        "cannot create bucket `{name}` in the S3 server at 127.0.0.1:9010 (start it with .ci/test): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn an_s3_checkpoint_store_passes_the_conditional_write_check_only_with_nonce_contents() {
    use hubroute_engine::checkpoint::{SelectedStore, StoreOperations, open};
    use hubroute_engine::config::CheckpointConfig;
    use hubroute_sinks::{ObjectStoreConfig, Secret};

    let bucket = format!("checkpoints-{}", uuid::Uuid::new_v4().simple());
    create_s3_bucket(&bucket);
    let store = ObjectStoreConfig::S3 {
        bucket,
        region: Some("us-east-1".to_owned()),
        endpoint: Some("http://127.0.0.1:9010".to_owned()),
        access_key_id: Some("test".to_owned()),
        secret_access_key: Some(Secret::new("test")),
        allow_http: true,
    };
    let key = CheckpointKey {
        fully_qualified_namespace: "ns.servicebus.windows.net".to_owned(),
        event_hub: "hub".to_owned(),
        consumer_group: "$Default".to_owned(),
        partition: "0".to_owned(),
    };
    let config = CheckpointConfig {
        store: Some(store.clone()),
        ..CheckpointConfig::default()
    };
    let SelectedStore::Shared(shared) = open(&config, &StoreOperations::default()).unwrap() else {
        panic!("an S3 store is shared");
    };
    shared
        .check_conditional_writes(&key)
        .await
        .expect("S3 with nonce contents");
    // S3's ETag is the content's hash: empty ownership blobs would keep one ETag for ever and a
    // stale claim would win. The check catches it.
    let bare = ObjectStoreCheckpointStore::new(store.build("checkpoint").unwrap());
    let error = bare
        .check_conditional_writes(&key)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("left the ETag unchanged"), "{error}");
}
