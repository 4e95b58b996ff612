//! The chaos suite: the real `hubroute run` against a `hubroute emulator --data-dir`, PostgreSQL,
//! Parquet on local disk and a webhook, while faults are injected between waves of events: SIGKILLs
//! of the engine, emulator restarts, webhook 503 bursts, timeouts and an outage longer than
//! `dead_after`, and poison input (empty, non-JSON and invalid UTF-8 bodies under body routes, a
//! large body, deeply nested JSON, 10 000 application properties). At the end every endpoint's
//! message ids are checked against the oracle of what was sent: PostgreSQL exactly once, Parquet
//! at least once, the webhook at least once counting what is dead-lettered, and a table of the
//! faults and of what each sink saw (duplicates included) is printed.
//!
//! CI runs `HUBROUTE_CHAOS_ROUNDS` rounds (default 3, one of each fault, well under three
//! minutes); set it higher for a soak, e.g. `HUBROUTE_CHAOS_ROUNDS=100 cargo nextest run --test
//! e2e chaos --no-capture`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};

use crate::support::{EventHubConnection, Hook, hubroute, lines_of, parquet_message_ids};

const PARTITIONS: usize = 4;
const WAVE: usize = 400;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// `hubroute run --config`, killed with SIGKILL on drop.
struct EngineChild(Child);

impl EngineChild {
    fn start(config: &Path) -> Self {
        Self(
            hubroute()
                .args(["run", "--config"])
                .arg(config)
                .env("RUST_LOG", "warn,fe2o3_amqp=off")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawning `hubroute run`"),
        )
    }

    /// SIGKILL.
    fn kill(mut self) {
        self.0.kill().expect("SIGKILL");
        let _ = self.0.wait();
    }

    /// Panics with its log if it exited (a crash).
    fn assert_running(&mut self) {
        if let Some(status) = self.0.try_wait().unwrap() {
            let mut log = String::new();
            if let Some(mut stderr) = self.0.stderr.take() {
                let _ = stderr.read_to_string(&mut log);
            }
            panic!("the engine exited ({status}):\n{log}");
        }
    }
}

impl Drop for EngineChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A sent message: its id, and whether routes on `$body` see a JSON body.
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
            ("large", vec![b'x'; 200 * 1024], 1),
            ("nested", nested.into_bytes(), 1),
            ("properties", b"{\"temperature\":1}".to_vec(), 10_000),
        ];
        for (name, body, properties) in poison {
            messages.push(Sent {
                id: format!("r{round}-poison-{name}"),
                body,
                properties,
            });
        }
    }
    messages
}

/// Sends `messages` round-robin over the partitions with a plain fe2o3-amqp producer.
async fn send(connection_string: &str, messages: &[Sent]) {
    let mut connection = EventHubConnection::open(connection_string).await;
    let mut senders = Vec::new();
    for partition in 0..PARTITIONS {
        senders.push(connection.partition_sender(&partition.to_string()).await);
    }
    for (n, sent) in messages.iter().enumerate() {
        let mut properties = ApplicationProperties::builder();
        properties = properties.insert("kind", SimpleValue::String("reading".into()));
        for p in 1..sent.properties {
            properties = properties.insert(format!("p{p}"), SimpleValue::Int(1));
        }
        let message: Message<Body<Value>> = Message::builder()
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
            .build();
        senders[n % PARTITIONS]
            .send(message)
            .await
            .expect("sent")
            .accepted_or_else(|o| o)
            .expect("accepted");
    }
    for sender in senders {
        sender.close().await.expect("sender closes");
    }
    connection.close().await;
}

fn config(dir: &Path, connection_string: &str, table: &str, hook: &str) -> String {
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
sink = {{ type = "postgres", name = "db", dbname = "test", linger = "10ms", table = {{ name = "{table}", columns = [{{ name = "message_id", source = "message_id", type = "text" }}, {{ name = "temperature", source = "$.temperature", type = "double" }}] }} }}

[[endpoints]]
queue_capacity = 2
sink = {{ type = "webhook", name = "hook", url = "{hook}", linger = "10ms", max_batch_events = 64, retry = {{ max_backoff = "200ms" }}, timeout = "1s" }}

[[routes]]
name = "readings-to-lake"
condition = "kind = 'reading'"
endpoint = "lake"

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
            } else {
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

/// Every `message_id` in PostgreSQL's `table` (none while the sink has not created it).
async fn db_ids(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    client
        .query(&format!("SELECT message_id FROM \"{table}\""), &[])
        .await
        .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect())
        .unwrap_or_default()
}

/// Parked objects of `sink` still to replay.
fn parked_objects(dir: &Path, sink: &str) -> usize {
    let mut count = 0;
    let mut stack = vec![dir.join("dead-letters").join(sink).join("parked")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                count += 1;
            }
        }
    }
    count
}

fn counts(ids: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_every_endpoint_sees_every_routed_message_under_faults() {
    let rounds: usize = std::env::var("HUBROUTE_CHAOS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut emulator = EmulatorChild::start(free_port(), &dir.path().join("partitions"));
    let hook = Hook::start().await;
    let table = format!("chaos_{}", uuid::Uuid::new_v4().simple());
    let path = dir.path().join("hubroute.toml");
    std::fs::write(
        &path,
        config(dir.path(), &emulator.connection_string, &table, &hook.url()),
    )
    .unwrap();
    let mut faults: Vec<(usize, &str)> = Vec::new();
    let mut sent: Vec<Sent> = Vec::new();
    let mut engine = EngineChild::start(&path);
    for round in 0..rounds {
        let messages = wave(round, round == 0);
        send(&emulator.connection_string, &messages).await;
        sent.extend(messages);
        tokio::time::sleep(Duration::from_millis(300)).await;
        engine.assert_running();
        // Faults, in turn.
        match round % 3 {
            0 => {
                hook.unavailable.store(true, Ordering::SeqCst);
                faults.push((round, "webhook 503s, down for 3 s (> dead_after)"));
                send(&emulator.connection_string, &wave(round + 1000, false)).await;
                sent.extend(wave(round + 1000, false));
                tokio::time::sleep(Duration::from_secs(3)).await;
                hook.unavailable.store(false, Ordering::SeqCst);
            }
            1 => {
                hook.stalled.store(true, Ordering::SeqCst);
                faults.push((round, "webhook timeouts for 1.5 s"));
                tokio::time::sleep(Duration::from_millis(1500)).await;
                hook.stalled.store(false, Ordering::SeqCst);
            }
            _ => {
                faults.push((round, "emulator restarted"));
                emulator.restart();
            }
        }
        engine.assert_running();
        engine.kill();
        faults.push((round, "engine SIGKILL"));
        engine = EngineChild::start(&path);
    }

    // Let it settle: every PostgreSQL row in place, the webhook caught up.
    // Every message carries `kind = 'reading'`: every route matches it, poison included.
    let everything: BTreeSet<String> = sent.iter().map(|s| s.id.clone()).collect();
    let (client, connection) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        tokio_postgres::NoTls,
    )
    .await
    .expect("PostgreSQL at 127.0.0.1:5432");
    tokio::spawn(connection);
    // The bound on catching up: replaying what was parked takes longer after more rounds.
    let settle = Duration::from_secs(90) + Duration::from_secs(3) * u32::try_from(rounds).unwrap();
    let deadline = Instant::now() + settle;
    loop {
        engine.assert_running();
        let db = db_ids(&client, &table).await;
        let lake: BTreeSet<String> = parquet_message_ids(&dir.path().join("lake"))
            .into_iter()
            .collect();
        let hook_ids: BTreeSet<String> = hook
            .message_ids()
            .into_iter()
            .chain(dead_lettered(dir.path(), "hook"))
            .collect();
        let db_seen: BTreeSet<String> = db
            .into_iter()
            .chain(dead_lettered(dir.path(), "db"))
            .collect();
        let done = db_seen.is_superset(&everything)
            && lake.is_superset(&everything)
            && hook_ids.is_superset(&everything);
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not caught up within {settle:?}: db {} lake {} hook {} of {} messages, {} parked objects left",
            db_seen.len(),
            lake.len(),
            hook_ids.len(),
            everything.len(),
            parked_objects(dir.path(), "hook")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    engine.kill();

    let db = db_ids(&client, &table).await;
    let lake = parquet_message_ids(&dir.path().join("lake"));
    let delivered = hook.message_ids();
    let dead = dead_lettered(dir.path(), "hook");
    println!("\nchaos: {rounds} rounds in {:?}", started.elapsed());
    println!("{:<6} fault", "round");
    for (round, fault) in &faults {
        println!("{round:<6} {fault}");
    }
    println!(
        "\n{:<8} {:>8} {:>8} {:>10} {:>8}",
        "endpoint", "routed", "unique", "duplicates", "missing"
    );
    for (name, ids, expected) in [
        ("db", &db, &everything),
        (
            "db+dl",
            &[db.clone(), dead_lettered(dir.path(), "db")].concat(),
            &everything,
        ),
        ("lake", &lake, &everything),
        ("hook", &delivered, &everything),
        (
            "hook+dl",
            &[delivered.clone(), dead.clone()].concat(),
            &everything,
        ),
    ] {
        let unique: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        let missing = expected
            .iter()
            .filter(|id| !unique.contains(id.as_str()))
            .count();
        println!(
            "{name:<8} {:>8} {:>8} {:>10} {missing:>8}",
            expected.len(),
            unique.len(),
            ids.len() - unique.len()
        );
    }
    let db_counts = counts(&db);
    assert!(
        db_counts.values().all(|c| *c == 1),
        "PostgreSQL holds every row exactly once"
    );
    let db_all: BTreeSet<String> = db
        .iter()
        .cloned()
        .chain(dead_lettered(dir.path(), "db"))
        .collect();
    assert_eq!(
        db_all, everything,
        "PostgreSQL's rows plus its dead letters are exactly what was routed"
    );
    assert!(
        lake.iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .is_superset(&everything),
        "Parquet has every reading at least once"
    );
    let hook_all: BTreeSet<String> = delivered.into_iter().chain(dead).collect();
    assert!(
        hook_all.is_superset(&everything),
        "delivered plus dead-lettered covers everything routed to the webhook"
    );
    client
        .batch_execute(&format!("DROP TABLE \"{table}\""))
        .await
        .unwrap();
}
