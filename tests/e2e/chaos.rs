//! The chaos suite: the real `hubroute run` against a `hubroute emulator --data-dir`, a private
//! PostgreSQL cluster, Parquet on local disk, Parquet on a private Azurite behind a fault proxy, and
//! a webhook, while faults are injected as events flow.
//!
//! Every round sends a wave of events spread over [`SEND_WINDOW`], SIGKILLs the engine at a random
//! moment (and starts it again), and injects two of the six other faults, so that every three rounds
//! cycle through all of them in a seeded random order:
//!
//! - **PostgreSQL restarted**: the private cluster is stopped (`fast` or `immediate`, a crash) and
//!   started again on the same port; the shared server at 5432 is never touched;
//! - **object store faults**: the proxy in front of Azurite resets connections, cuts requests
//!   halfway, answers `503 Server Busy` and stalls, in bursts;
//! - **emulator restarted** (right after the wave is sent, while the engine still consumes it);
//! - **webhook bursts**: 500s, timeouts (longer than the sink's) and slow answers;
//! - **webhook outage**: 503s for longer than `dead_after`, then back;
//! - **poison input**: empty, non-JSON and invalid UTF-8 bodies under body routes, the largest body
//!   the hub accepts, JSON nested 100 000 levels deep and 10 000 application properties. Event Hubs
//!   (and the emulator) refuse an encoded message over 1 MiB, envelope included, and advertise that
//!   limit as the link's `max-message-size`, so a 1 MiB body can never be routed: the round checks
//!   that sending one is refused, and sends a body of 1 MiB minus [`ENVELOPE_ALLOWANCE`] instead.
//!
//! After each round PostgreSQL must have caught up within [`STALL_BOUND`] (an outage of another
//! endpoint never stalls it); at the end every endpoint's message ids are checked against the oracle
//! of what was sent: PostgreSQL exactly once, the other sinks at least once, and for every sink
//! delivered plus dead-lettered equals everything routed. A table of the faults injected and of
//! what each sink saw, duplicates included, is printed.
//!
//! `HUBROUTE_CHAOS_ROUNDS` sets the rounds (default 3: every fault once, about 20 s in CI);
//! `HUBROUTE_CHAOS_SEED` replays a schedule and its timings (the seed is printed first), and
//! `HUBROUTE_CHAOS_KEEP=1` keeps the working directory (engine logs, checkpoints, dead letters) and
//! the private Azurite's data directory (blobs, its metadata, its access log), printing both, e.g.
//! `HUBROUTE_CHAOS_ROUNDS=30 cargo nextest run --profile soak --test e2e chaos --no-capture` (the
//! soak profile lets it run for up to an hour).
//!
//! Azurite, unlike a storage account, can wedge under these faults and is then restarted (SIGTERM,
//! which saves its metadata, then started on the same data). So that a loss of Azurite's is never
//! mistaken for the engine's, the suite lists the container before and after every such restart
//! and prints what disappeared, and at the end prints every upload Azurite acknowledged (201 in its
//! access log) that it no longer lists. Neither changes the oracle. When the 100-round soak lost
//! blob rows, both were empty: the engine had dropped them (a router waiting for room in the full
//! queue of a file sink settled its ticket without its rows when the endpoint was parked).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};
use futures::TryStreamExt as _;
use object_store::{ObjectStore, ObjectStoreExt as _};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{RngExt as _, SeedableRng as _};

use crate::fault_proxy::{Fault as ProxyFault, FaultProxy};
use crate::private_postgres::{PrivatePostgres, StopMode};
use crate::support::{
    AZURITE_KEY, EventHubConnection, Hook, PrivateAzurite, azurite_address, azurite_container,
    create_azurite_container, hubroute, lines_of, parquet_message_ids, parquet_object_message_ids,
};

const PARTITIONS: usize = 4;
const WAVE: usize = 400;
/// A wave's events are sent over this long, so that faults land while events flow.
const SEND_WINDOW: Duration = Duration::from_secs(2);
/// Event Hubs' (and the emulator's) limit on an encoded message, envelope included.
const HUB_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Room for the envelope of the suite's messages (properties, one application property, the
/// annotations the hub stamps): well under 1 KiB.
const ENVELOPE_ALLOWANCE: usize = 1024;
/// How long PostgreSQL may take after a round to hold every event sent so far.
const STALL_BOUND: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The faults a round injects besides the engine SIGKILL that every round gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Poison,
    PostgresRestart,
    ObjectStore,
    EmulatorRestart,
    WebhookBursts,
    WebhookOutage,
}

impl Fault {
    const ALL: [Self; 6] = [
        Self::Poison,
        Self::PostgresRestart,
        Self::ObjectStore,
        Self::EmulatorRestart,
        Self::WebhookBursts,
        Self::WebhookOutage,
    ];
}

/// Two faults per round; each run of three rounds injects all six, in an order drawn from `rng`.
fn schedule(rounds: usize, rng: &mut StdRng) -> Vec<[Fault; 2]> {
    let mut plan = Vec::with_capacity(rounds);
    while plan.len() < rounds {
        let mut cycle = Fault::ALL;
        cycle.shuffle(rng);
        for pair in cycle.chunks(2) {
            plan.push([pair[0], pair[1]]);
        }
    }
    plan.truncate(rounds);
    plan
}

/// The faults injected, as the table lists them.
#[derive(Default)]
struct FaultLog(Mutex<Vec<(usize, Duration, String)>>);

impl FaultLog {
    /// Records `what`, which began `at` into `round`, and prints it (the table comes at the end,
    /// this helps reading a failure).
    fn record(&self, round: usize, at: Duration, what: impl Into<String>) {
        let what = what.into();
        println!("round {round} +{at:.1?}: {what}");
        self.0.lock().unwrap().push((round, at, what));
    }

    fn count(&self, prefix: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, what)| what.starts_with(prefix))
            .count()
    }
}

/// `hubroute emulator` on a fixed port with its partitions on disk, so a restart keeps events.
struct EmulatorChild {
    child: Child,
    port: u16,
    data_dir: PathBuf,
    connection_string: String,
}

impl EmulatorChild {
    fn start(port: u16, data_dir: &Path) -> Self {
        let mut child = hubroute()
            .args(["emulator", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--http", "127.0.0.1:0", "--https", "127.0.0.1:0"])
            .args([
                "--no-twin-change-events",
                "--no-lifecycle-events",
                "--data-dir",
            ])
            .arg(data_dir)
            .env("RUST_LOG", "warn,fe2o3_amqp=off")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning `hubroute emulator`");
        let lines = lines_of(child.stdout.take().expect("piped stdout"));
        let connection_string = loop {
            let line = lines
                .recv_timeout(Duration::from_secs(60))
                .expect("the emulator prints its connection string");
            if line.starts_with("Endpoint=") {
                break line;
            }
        };
        Self {
            child,
            port,
            data_dir: data_dir.to_owned(),
            connection_string,
        }
    }

    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Self::start(self.port, &self.data_dir);
    }
}

impl Drop for EmulatorChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `hubroute run --config`, killed with SIGKILL on drop. Its log goes to a file (a pipe nobody
/// reads would fill and block the engine), shown when it crashes.
struct EngineChild {
    child: Child,
    log: PathBuf,
}

impl EngineChild {
    /// Starts incarnation `n` of the engine, logging to `engine-<n>.log` beside `config`.
    fn start(config: &Path, n: usize) -> Self {
        let log = config.with_file_name(format!("engine-{n}.log"));
        let child = hubroute()
            .args(["run", "--config"])
            .arg(config)
            // `hubroute::cli::run` logs "serving ..." once the source has connected.
            .env("RUST_LOG", "warn,fe2o3_amqp=off,hubroute::cli::run=info")
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("creating the engine's log"))
            .spawn()
            .expect("spawning `hubroute run`");
        Self { child, log }
    }

    /// Waits until it has connected to the hub and serves (it logs "serving ..."); panics if it
    /// exits or takes longer than 30 s.
    async fn wait_started(&mut self) {
        let started = Instant::now();
        while !std::fs::read_to_string(&self.log).is_ok_and(|log| log.contains("serving http://")) {
            self.assert_running();
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the engine did not start within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// Panics with the end of its log if it exited (a crash).
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the engine exited ({status}):\n{}", self.log_tail());
        }
    }

    /// The last lines of its log.
    fn log_tail(&self) -> String {
        let mut log = String::new();
        let _ = File::open(&self.log).and_then(|mut file| file.read_to_string(&mut log));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for EngineChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sent message: its id, body and number of application properties.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    body: Vec<u8>,
    properties: usize,
}

/// The wave's messages: telemetry, with poison mixed in when `poison`.
fn wave(round: usize, poison: bool) -> Vec<Sent> {
    let mut messages: Vec<Sent> = (0..WAVE)
        .map(|i| Sent {
            id: format!("r{round}-{i}"),
            body: format!("{{\"temperature\":{},\"n\":{i}}}", i % 50).into_bytes(),
            properties: 1,
        })
        .collect();
    if poison {
        let nested = "[".repeat(100_000) + &"]".repeat(100_000);
        let poison: [(&str, Vec<u8>, usize); 6] = [
            ("empty", Vec::new(), 1),
            ("not-json", b"temperature: hot".to_vec(), 1),
            ("invalid-utf8", vec![0xff, 0xfe, b'{', 0xc3], 1),
            (
                "large",
                vec![b'x'; HUB_MAX_MESSAGE_BYTES - ENVELOPE_ALLOWANCE],
                1,
            ),
            ("nested", nested.into_bytes(), 1),
            ("properties", b"{\"temperature\":1}".to_vec(), 10_000),
        ];
        // Spread over the wave, so that poison meets faults too.
        for (n, (name, body, properties)) in poison.into_iter().enumerate() {
            messages.insert(
                n * WAVE / 6,
                Sent {
                    id: format!("r{round}-poison-{name}"),
                    body,
                    properties,
                },
            );
        }
    }
    messages
}

fn message(sent: &Sent) -> Message<Body<Value>> {
    let mut properties = ApplicationProperties::builder();
    properties = properties.insert("kind", SimpleValue::String("reading".into()));
    for p in 1..sent.properties {
        properties = properties.insert(format!("p{p}"), SimpleValue::Int(1));
    }
    Message::builder()
        .properties(Properties {
            message_id: Some(MessageId::String(sent.id.clone())),
            content_type: Some(Symbol::from("application/json")),
            content_encoding: Some(Symbol::from("utf-8")),
            ..Properties::default()
        })
        .application_properties(properties.build())
        .body(Body::Data(
            vec![Data(Binary::from(sent.body.clone()))].into(),
        ))
        .build()
}

/// Sends `messages` round-robin over the partitions with a plain fe2o3-amqp producer, spread
/// evenly over `window`.
async fn send(connection_string: String, messages: Vec<Sent>, window: Duration) {
    let mut connection = EventHubConnection::open(&connection_string).await;
    let mut senders = Vec::new();
    for partition in 0..PARTITIONS {
        senders.push(connection.partition_sender(&partition.to_string()).await);
    }
    let started = Instant::now();
    let count = u32::try_from(messages.len()).unwrap();
    for (n, sent) in messages.iter().enumerate() {
        let due = started + window * u32::try_from(n).unwrap() / count;
        tokio::time::sleep_until(due.into()).await;
        senders[n % PARTITIONS]
            .send(message(sent))
            .await
            .expect("sent")
            .accepted_or_else(|o| o)
            .unwrap_or_else(|outcome| panic!("{} not accepted: {outcome:?}", sent.id));
    }
    for sender in senders {
        sender.close().await.expect("sender closes");
    }
    connection.close().await;
}

/// Checks that the hub refuses a message with a body of exactly 1 MiB (it can never be routed);
/// returns how it was refused.
async fn assert_hub_refuses_a_1_mib_body(connection_string: &str) -> String {
    let mut connection = EventHubConnection::open(connection_string).await;
    let mut sender = connection.partition_sender("0").await;
    let too_large = Sent {
        id: "too-large".to_owned(),
        body: vec![b'x'; HUB_MAX_MESSAGE_BYTES],
        properties: 1,
    };
    let outcome = sender.send(message(&too_large)).await;
    let refusal = match outcome {
        Ok(Outcome::Accepted(_)) => {
            panic!("the hub accepted a 1 MiB body, over Event Hubs' 1 MiB message limit")
        }
        Ok(outcome) => format!("{outcome:?}"),
        Err(error) => error.to_string(),
    };
    let _ = sender.close().await;
    connection.close().await;
    refusal
}

/// Parquet on a private Azurite, reached by the engine through a [`FaultProxy`]. Private, because
/// clients killed mid-upload can leave Azurite unable to complete any upload (Azure/Azurite#2436):
/// the shared instance must not pay for the suite's faults.
struct BlobLake {
    container: String,
    azurite: PrivateAzurite,
    proxy: FaultProxy,
}

impl BlobLake {
    /// A private Azurite with a fresh container, and a proxy in front.
    async fn create() -> Self {
        let azurite = PrivateAzurite::start();
        let container = format!("chaos-{}", uuid::Uuid::new_v4().simple());
        create_azurite_container(&azurite.endpoint(), &container);
        let upstream = azurite_address(&azurite.endpoint());
        Self {
            container,
            azurite,
            proxy: FaultProxy::start(upstream).await,
        }
    }

    /// The sink's `store`: Azurite through the proxy.
    fn store_toml(&self) -> String {
        format!(
            r#"{{ kind = "azure", container = "{}", account = "devstoreaccount1", access_key = "{AZURITE_KEY}", endpoint = "http://{}/devstoreaccount1" }}"#,
            self.container,
            self.proxy.addr()
        )
    }

    /// A client of the container in Azurite itself, bypassing the proxy.
    fn direct(&self) -> object_store::azure::MicrosoftAzure {
        azurite_container(&self.azurite.endpoint(), &self.container)
    }

    /// Restarts Azurite when it no longer completes uploads. After clients die or are cut off
    /// mid-upload, Azurite can stop reading request bodies for good (it still lists and reads;
    /// compare Azure/Azurite#2436): a defect of the emulator, not of the engine, that would
    /// otherwise leave the endpoint parked forever. Returns whether it restarted it.
    async fn restart_if_wedged(&mut self) -> bool {
        let store = self.direct();
        let path = object_store::path::Path::from("probe/upload");
        let probe = store.put(&path, bytes::Bytes::from_static(&[0; 1024]).into());
        if matches!(
            tokio::time::timeout(Duration::from_secs(5), probe).await,
            Ok(Ok(_))
        ) {
            return false;
        }
        let before = self.object_names().await;
        tokio::task::block_in_place(|| {
            self.azurite.stop();
            self.azurite.resume();
        });
        let after = self.object_names().await;
        let lost: Vec<&String> = before.difference(&after).collect();
        println!(
            "chaos: Azurite restart: {} objects before, {} after, lost {lost:?}",
            before.len(),
            after.len()
        );
        true
    }

    /// The names of the container's objects, read from Azurite directly.
    async fn object_names(&self) -> BTreeSet<String> {
        let listing = self.direct().list(None).try_collect::<Vec<_>>();
        match tokio::time::timeout(Duration::from_secs(30), listing).await {
            Ok(Ok(objects)) => objects
                .into_iter()
                .map(|object| object.location.to_string())
                .collect(),
            outcome => {
                println!("chaos: listing Azurite failed: {outcome:?}");
                BTreeSet::new()
            }
        }
    }

    /// Objects whose upload Azurite acknowledged (a `PUT` answered 201 in its access log) that it
    /// no longer lists: what Azurite lost, which a real storage account never does.
    async fn acknowledged_but_missing(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.azurite.access_log()).unwrap_or_default();
        let prefix = format!("\"PUT /devstoreaccount1/{}/", self.container);
        let acknowledged: BTreeSet<String> = log
            .lines()
            .filter_map(|line| {
                let rest = &line[line.find(&prefix)? + prefix.len()..];
                let (path, status) = rest.split_once(" HTTP/1.1\" ")?;
                (status.starts_with("201") && !path.contains('?')).then(|| path.to_owned())
            })
            .collect();
        let listed = self.object_names().await;
        acknowledged
            .into_iter()
            .filter(|path| path != "probe/upload" && !listed.contains(path))
            .collect()
    }

    /// `message_id` of every row of every Parquet object, read from Azurite directly.
    async fn message_ids(&self) -> Vec<String> {
        parquet_object_message_ids(&self.direct()).await
    }
}

fn config(
    dir: &Path,
    connection_string: &str,
    postgres_port: u16,
    blob_store: &str,
    hook: &str,
) -> String {
    let dir = dir.display();
    format!(
        r#"
[source]
connection_string = "{connection_string}"
batch_max_rows = 128
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
drain_timeout = "2s"

[[endpoints]]
sink = {{ type = "parquet", name = "lake", store = {{ kind = "local", root = "{dir}/lake" }}, max_file_age = "300ms" }}

[[endpoints]]
sink = {{ type = "parquet", name = "blob", store = {blob_store}, max_file_age = "300ms", retry = {{ max_backoff = "500ms" }} }}

[[endpoints]]
sink = {{ type = "postgres", name = "db", host = "127.0.0.1", port = {postgres_port}, dbname = "postgres", linger = "10ms", retry = {{ max_backoff = "500ms" }}, table = {{ name = "chaos", columns = [{{ name = "message_id", source = "message_id", type = "text" }}, {{ name = "temperature", source = "$.temperature", type = "double" }}] }} }}

[[endpoints]]
queue_capacity = 2
sink = {{ type = "webhook", name = "hook", url = "{hook}", linger = "10ms", max_batch_events = 64, retry = {{ max_backoff = "200ms" }}, timeout = "1s" }}

[[routes]]
name = "readings-to-lake"
condition = "kind = 'reading'"
endpoint = "lake"

[[routes]]
name = "readings-to-blob"
condition = "kind = 'reading'"
endpoint = "blob"

[[routes]]
name = "readings-to-db"
condition = "kind = 'reading'"
endpoint = "db"

[[routes]]
name = "warm-to-hook"
condition = "$body.temperature >= 0 OR kind = 'reading'"
endpoint = "hook"
"#
    )
}

/// Message ids of the dead-letter records of `sink` under `dir` that failed for good (not parked
/// rows, which must reach the endpoint once it recovers).
fn dead_lettered(dir: &Path, sink: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut stack = vec![dir.join("dead-letters").join(sink)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if !is_staging(&path) {
                // A parked object being replayed moves aside under the walk: it is read there next time.
                let Ok(text) = std::fs::read_to_string(&path) else {
                    continue;
                };
                for line in text.lines() {
                    let record: serde_json::Value = serde_json::from_str(line).unwrap();
                    if record["parked"].as_bool() == Some(true) {
                        continue;
                    }
                    if let Some(id) = record["systemProperties"]["messageId"].as_str() {
                        ids.push(id.to_owned());
                    }
                }
            }
        }
    }
    ids
}

/// Every `message_id` in the private cluster's table (none while it is down or the sink has not
/// created the table).
async fn db_ids(postgres: &PrivatePostgres) -> Vec<String> {
    let Ok((client, connection)) =
        tokio_postgres::connect(&postgres.connection_string(), tokio_postgres::NoTls).await
    else {
        return Vec::new();
    };
    let connection = tokio::spawn(connection);
    let ids = client
        .query("SELECT message_id FROM chaos", &[])
        .await
        .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect())
        .unwrap_or_default();
    drop(client);
    let _ = connection.await;
    ids
}

/// Whether `path` is an object the local store is still writing: object_store's local file system
/// writes `<name>#<n>` and renames it to `<name>` once complete, so such a file may end mid-line.
fn is_staging(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name.to_string_lossy().contains('#'))
}

/// Parked objects of `sink` still to replay.
fn parked_objects(dir: &Path, sink: &str) -> usize {
    let mut count = 0;
    let mut stack = vec![dir.join("dead-letters").join(sink).join("parked")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else if !is_staging(&entry.path()) {
                count += 1;
            }
        }
    }
    count
}

fn unique(ids: &[String]) -> BTreeSet<String> {
    ids.iter().cloned().collect()
}

/// What one endpoint holds at the end.
struct Seen {
    name: &'static str,
    guarantee: &'static str,
    delivered: Vec<String>,
    dead_lettered: Vec<String>,
}

impl Seen {
    fn covered(&self) -> BTreeSet<String> {
        unique(&self.delivered)
            .into_iter()
            .chain(self.dead_lettered.iter().cloned())
            .collect()
    }
}

/// Restarts PostgreSQL `at` into the round, off the runtime's threads.
async fn restart_postgres(
    postgres: &Arc<PrivatePostgres>,
    (at, mode, down): (Duration, StopMode, Duration),
    (round, started, log): (usize, Instant, &FaultLog),
) {
    tokio::time::sleep(at).await;
    let began = started.elapsed();
    let cluster = Arc::clone(postgres);
    tokio::task::spawn_blocking(move || cluster.restart(mode, down))
        .await
        .expect("restarting PostgreSQL");
    log.record(
        round,
        began,
        format!(
            "PostgreSQL restarted (stop -m {}, down {down:.1?})",
            match mode {
                StopMode::Fast => "fast",
                StopMode::Immediate => "immediate",
            }
        ),
    );
}

/// Runs the proxy's faults one after the other, `at` into the round.
async fn object_store_faults(
    proxy: &FaultProxy,
    at: Duration,
    steps: Vec<(ProxyFault, Duration)>,
    (round, started, log): (usize, Instant, &FaultLog),
) {
    tokio::time::sleep(at).await;
    let began = started.elapsed();
    let mut done = Vec::new();
    for (fault, duration) in steps {
        let before = proxy.counts().connections(fault);
        let step_began = Instant::now();
        proxy.set(fault);
        tokio::time::sleep(duration).await;
        // A fault no connection met proves nothing: keep it until one does (the engine may be
        // between incarnations or between uploads), for a bounded time.
        while proxy.counts().connections(fault) == before
            && step_began.elapsed() < duration + Duration::from_secs(3)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done.push(format!(
            "{} {:.1?} ({} connections)",
            fault.describe(),
            step_began.elapsed(),
            proxy.counts().connections(fault) - before
        ));
    }
    proxy.set(ProxyFault::None);
    log.record(round, began, format!("object store: {}", done.join(", ")));
}

/// The webhook's misbehaviours in bursts.
#[derive(Debug, Clone, Copy)]
enum HookBurst {
    ServerErrors,
    Timeouts,
    Slow,
}

/// Runs the webhook's bursts one after the other, `at` into the round.
async fn webhook_bursts(
    hook: &Hook,
    at: Duration,
    bursts: Vec<(HookBurst, Duration)>,
    (round, started, log): (usize, Instant, &FaultLog),
) {
    tokio::time::sleep(at).await;
    let began = started.elapsed();
    let mut done = Vec::new();
    for (burst, duration) in bursts {
        let (flag, what) = match burst {
            HookBurst::ServerErrors => (&hook.failing, "500s"),
            HookBurst::Timeouts => (&hook.stalled, "timeouts"),
            HookBurst::Slow => (&hook.slow, "slow"),
        };
        flag.store(true, Ordering::SeqCst);
        tokio::time::sleep(duration).await;
        flag.store(false, Ordering::SeqCst);
        done.push(format!("{what} {duration:.1?}"));
    }
    log.record(round, began, format!("webhook: {}", done.join(", ")));
}

/// Answers 503 for `down` (longer than `dead_after`), `at` into the round.
async fn webhook_outage(
    hook: &Hook,
    at: Duration,
    down: Duration,
    (round, started, log): (usize, Instant, &FaultLog),
) {
    tokio::time::sleep(at).await;
    let began = started.elapsed();
    hook.unavailable.store(true, Ordering::SeqCst);
    tokio::time::sleep(down).await;
    hook.unavailable.store(false, Ordering::SeqCst);
    log.record(
        round,
        began,
        format!("webhook: 503s for {down:.1?} (> dead_after 2 s)"),
    );
}

/// SIGKILLs the engine `at` into the round and starts the next incarnation after `down`, once the
/// emulator is up (`hub_up`): `hubroute run` fails fast when the hub is unreachable at start, as
/// documented, so a supervisor would start it again; the suite does not start it into an outage.
async fn kill_engine(
    engine: &mut EngineChild,
    incarnations: &mut usize,
    config: &Path,
    hub_up: &tokio::sync::Mutex<()>,
    (at, down): (Duration, Duration),
    (round, started, log): (usize, Instant, &FaultLog),
) {
    tokio::time::sleep(at).await;
    engine.assert_running();
    engine.kill();
    log.record(
        round,
        started.elapsed(),
        format!("engine SIGKILL, down {down:.1?}"),
    );
    tokio::time::sleep(down).await;
    let _hub_up = hub_up.lock().await;
    *incarnations += 1;
    *engine = EngineChild::start(config, *incarnations);
    engine.wait_started().await;
}

/// Sends the round's wave; with `restart_after`, restarts the emulator that long after the last
/// event, while the engine still consumes (holding `hub_up`, so that no engine starts meanwhile).
async fn send_wave(
    emulator: &mut EmulatorChild,
    hub_up: &tokio::sync::Mutex<()>,
    messages: Vec<Sent>,
    restart_after: Option<Duration>,
    (round, started, log): (usize, Instant, &FaultLog),
) {
    tokio::spawn(send(
        emulator.connection_string.clone(),
        messages,
        SEND_WINDOW,
    ))
    .await
    .expect("sending the wave");
    if let Some(after) = restart_after {
        tokio::time::sleep(after).await;
        let _hub_up = hub_up.lock().await;
        log.record(round, started.elapsed(), "emulator restarted");
        tokio::task::block_in_place(|| emulator.restart());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_every_endpoint_sees_every_routed_message_under_faults() {
    let rounds: usize = std::env::var("HUBROUTE_CHAOS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("HUBROUTE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!(
        "chaos: {rounds} rounds, seed {seed} (HUBROUTE_CHAOS_SEED={seed} replays the schedule)"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let plan = schedule(rounds, &mut rng);

    let started = Instant::now();
    // `HUBROUTE_CHAOS_KEEP` keeps the engine's logs, checkpoints and dead letters for a post-mortem.
    let dir = tempfile::Builder::new()
        .prefix("hubroute-chaos-")
        .disable_cleanup(std::env::var_os("HUBROUTE_CHAOS_KEEP").is_some())
        .tempdir()
        .unwrap();
    println!("chaos: working directory {}", dir.path().display());
    let mut emulator = EmulatorChild::start(free_port(), &dir.path().join("partitions"));
    let postgres = Arc::new(PrivatePostgres::start());
    let mut blob = BlobLake::create().await;
    if std::env::var_os("HUBROUTE_CHAOS_KEEP").is_some() {
        println!(
            "chaos: private Azurite's data directory (blobs, metadata, access.log) {}",
            blob.azurite.keep_data().display()
        );
    }
    let hook = Hook::start().await;
    let path = dir.path().join("hubroute.toml");
    std::fs::write(
        &path,
        config(
            dir.path(),
            &emulator.connection_string,
            postgres.port(),
            &blob.store_toml(),
            &hook.url(),
        ),
    )
    .unwrap();
    let log = FaultLog::default();
    let mut sent: Vec<Sent> = Vec::new();
    let mut incarnations = 0;
    let mut engine = EngineChild::start(&path, incarnations);
    engine.wait_started().await;
    let hub_up = tokio::sync::Mutex::new(());
    for (round, faults) in plan.iter().enumerate() {
        let round_started = Instant::now();
        let context = (round, round_started, &log);
        let poison = faults.contains(&Fault::Poison);
        if poison {
            let refusal = assert_hub_refuses_a_1_mib_body(&emulator.connection_string).await;
            log.record(
                round,
                Duration::ZERO,
                format!("poison wave; a 1 MiB body was refused: {refusal}"),
            );
        }
        let messages = wave(round, poison);
        sent.extend(messages.iter().cloned());
        let within_window = |rng: &mut StdRng| rng.random_range(Duration::ZERO..SEND_WINDOW);
        let kill = (
            rng.random_range(Duration::ZERO..SEND_WINDOW + Duration::from_secs(1)),
            rng.random_range(Duration::ZERO..Duration::from_millis(500)),
        );
        let emulator_restart = faults
            .contains(&Fault::EmulatorRestart)
            .then(|| rng.random_range(Duration::ZERO..Duration::from_millis(300)));
        let postgres_restart = (
            within_window(&mut rng),
            if rng.random_bool(0.5) {
                StopMode::Fast
            } else {
                StopMode::Immediate
            },
            rng.random_range(Duration::ZERO..Duration::from_secs(1)),
        );
        let mut store_faults = ProxyFault::ALL.map(|fault| {
            (
                fault,
                rng.random_range(Duration::from_millis(300)..Duration::from_millis(1200)),
            )
        });
        store_faults.shuffle(&mut rng);
        let store_at = within_window(&mut rng);
        let mut bursts = [
            HookBurst::ServerErrors,
            HookBurst::Timeouts,
            HookBurst::Slow,
        ]
        .map(|burst| {
            (
                burst,
                rng.random_range(Duration::from_millis(300)..Duration::from_millis(1500)),
            )
        });
        bursts.shuffle(&mut rng);
        let bursts_at = within_window(&mut rng);
        let outage = (
            within_window(&mut rng),
            rng.random_range(Duration::from_millis(2500)..Duration::from_millis(4000)),
        );

        tokio::join!(
            send_wave(&mut emulator, &hub_up, messages, emulator_restart, context),
            kill_engine(
                &mut engine,
                &mut incarnations,
                &path,
                &hub_up,
                kill,
                context
            ),
            async {
                if faults.contains(&Fault::PostgresRestart) {
                    restart_postgres(&postgres, postgres_restart, context).await;
                }
            },
            async {
                if faults.contains(&Fault::ObjectStore) {
                    object_store_faults(&blob.proxy, store_at, store_faults.to_vec(), context)
                        .await;
                }
            },
            async {
                if faults.contains(&Fault::WebhookBursts) {
                    webhook_bursts(&hook, bursts_at, bursts.to_vec(), context).await;
                }
            },
            async {
                if faults.contains(&Fault::WebhookOutage) {
                    webhook_outage(&hook, outage.0, outage.1, context).await;
                }
            },
        );
        engine.assert_running();
        if blob.restart_if_wedged().await {
            log.record(
                round,
                round_started.elapsed(),
                "Azurite no longer completed uploads: restarted it",
            );
        }

        // No stall: whatever the other endpoints go through, PostgreSQL catches up within the bound.
        let so_far: BTreeSet<String> = sent.iter().map(|s| s.id.clone()).collect();
        let caught_up = Instant::now();
        loop {
            let db: BTreeSet<String> = db_ids(&postgres)
                .await
                .into_iter()
                .chain(dead_lettered(dir.path(), "db"))
                .collect();
            if db.is_superset(&so_far) {
                break;
            }
            engine.assert_running();
            assert!(
                caught_up.elapsed() < STALL_BOUND,
                "round {round} (seed {seed}): PostgreSQL holds {} of {} events {STALL_BOUND:?} after the round",
                db.intersection(&so_far).count(),
                so_far.len()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // Let it settle: the Parquet files uploaded, the webhook caught up on what was parked.
    // Every message carries `kind = 'reading'`: every route matches it, poison included.
    let everything: BTreeSet<String> = sent.iter().map(|s| s.id.clone()).collect();
    let settle = Duration::from_secs(90) + Duration::from_secs(3) * u32::try_from(rounds).unwrap();
    let deadline = Instant::now() + settle;
    let seen = loop {
        engine.assert_running();
        if blob.restart_if_wedged().await {
            log.record(
                rounds,
                started.elapsed(),
                "Azurite no longer completed uploads: restarted it (while settling)",
            );
        }
        let seen = [
            Seen {
                name: "db",
                guarantee: "exactly once",
                delivered: db_ids(&postgres).await,
                dead_lettered: dead_lettered(dir.path(), "db"),
            },
            Seen {
                name: "lake",
                guarantee: "at least once",
                delivered: parquet_message_ids(&dir.path().join("lake")),
                dead_lettered: dead_lettered(dir.path(), "lake"),
            },
            Seen {
                name: "blob",
                guarantee: "at least once",
                delivered: blob.message_ids().await,
                dead_lettered: dead_lettered(dir.path(), "blob"),
            },
            Seen {
                name: "hook",
                guarantee: "at least once",
                delivered: hook.message_ids(),
                dead_lettered: dead_lettered(dir.path(), "hook"),
            },
        ];
        if seen.iter().all(|s| s.covered().is_superset(&everything)) {
            break seen;
        }
        if Instant::now() >= deadline {
            println!(
                "chaos: uploads Azurite acknowledged but no longer lists: {:?}",
                blob.acknowledged_but_missing().await
            );
        }
        assert!(
            Instant::now() < deadline,
            "not caught up within {settle:?} (seed {seed}): {} of {} messages; {} parked objects left; the engine's log ends:\n{}",
            seen.iter()
                .map(|s| {
                    let covered = s.covered();
                    let missing: Vec<&String> = everything.difference(&covered).take(20).collect();
                    format!("{} {} (missing include {missing:?})", s.name, covered.len())
                })
                .collect::<Vec<_>>()
                .join(", "),
            everything.len(),
            ["blob", "hook"]
                .map(|sink| parked_objects(dir.path(), sink))
                .iter()
                .sum::<usize>(),
            engine.log_tail()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    engine.kill();
    println!(
        "chaos: uploads Azurite acknowledged but no longer lists: {:?}",
        blob.acknowledged_but_missing().await
    );

    print_table(
        rounds,
        seed,
        started.elapsed(),
        &log,
        &blob.proxy,
        &seen,
        &everything,
    );
    if rounds >= 3 {
        for fault in Fault::ALL {
            assert!(
                plan.iter().any(|pair| pair.contains(&fault)),
                "{fault:?} was never injected"
            );
        }
    }
    assert_eq!(log.count("engine SIGKILL"), rounds);
    for endpoint in &seen {
        let covered = endpoint.covered();
        assert_eq!(
            covered.difference(&everything).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "{} holds message ids that were never sent",
            endpoint.name
        );
        assert_eq!(
            covered, everything,
            "{}: delivered plus dead-lettered is everything routed",
            endpoint.name
        );
    }
    let db = &seen[0];
    let duplicated: Vec<_> = counts(&db.delivered)
        .into_iter()
        .filter(|(_, count)| *count > 1)
        .collect();
    assert!(
        duplicated.is_empty(),
        "PostgreSQL holds rows more than once: {duplicated:?}"
    );
    assert!(
        unique(&db.delivered).is_disjoint(&unique(&db.dead_lettered)),
        "PostgreSQL both stored and dead-lettered a row"
    );
}

fn counts(ids: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    counts
}

fn print_table(
    rounds: usize,
    seed: u64,
    elapsed: Duration,
    log: &FaultLog,
    proxy: &FaultProxy,
    seen: &[Seen],
    everything: &BTreeSet<String>,
) {
    println!("\nchaos: {rounds} rounds in {elapsed:.1?}, seed {seed}");
    println!("{:<6} {:>8}  fault", "round", "at");
    let mut faults = log.0.lock().unwrap().clone();
    faults.sort_by_key(|(round, at, _)| (*round, *at));
    for (round, at, fault) in &faults {
        println!("{round:<6} {:>8}  {fault}", format!("{at:.1?}"));
    }
    let counts = proxy.counts();
    println!(
        "object store proxy connections: {}",
        std::iter::once(ProxyFault::None)
            .chain(ProxyFault::ALL)
            .map(|fault| format!("{} {}", fault.describe(), counts.connections(fault)))
            .chain(std::iter::once(format!(
                "reset when a fault began {}",
                counts.reset_on_switch()
            )))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "\n{:<8} {:>7} {:>9} {:>7} {:>10} {:>13} {:>7}  guarantee",
        "endpoint", "routed", "delivered", "unique", "duplicates", "dead-lettered", "missing"
    );
    for endpoint in seen {
        let unique = unique(&endpoint.delivered);
        println!(
            "{:<8} {:>7} {:>9} {:>7} {:>10} {:>13} {:>7}  {}",
            endpoint.name,
            everything.len(),
            endpoint.delivered.len(),
            unique.len(),
            endpoint.delivered.len() - unique.len(),
            endpoint.dead_lettered.len(),
            everything.difference(&endpoint.covered()).count(),
            endpoint.guarantee
        );
    }
}
