//! `hubroute dead-letters` through the real binary: rows PostgreSQL rejected for good are listed
//! apart from parked rows, left alone by a plain replay, counted by a dry run, and re-delivered
//! exactly once by `replay --failed` after the cause is fixed; replayed objects are moved aside and
//! `purge` needs `--yes`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hubroute_emulator::simulate::{
    Rate, Simulation, SimulationConfig, SimulationTarget, StopAfter,
};
use hubroute_emulator::{Emulator, EmulatorConfig};
use hubroute_engine::config::LoadedConfig;
use hubroute_engine::pipeline::RunningEngine;
use hubroute_protocol::ConnectionString;

use crate::support::wait_until;

const EVENTS: u64 = 400;

fn dead_letters(config: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_hubroute"))
        .arg("dead-letters")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run hubroute dead-letters");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
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

/// Rows in `table`, and distinct message ids among them.
async fn count(client: &tokio_postgres::Client, table: &str) -> (i64, i64) {
    let row = client
        .query_one(
            &format!("SELECT count(*), count(DISTINCT message_id) FROM \"{table}\""),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanently_failed_rows_are_replayed_on_request_once_their_cause_is_fixed() {
    let emulator = Emulator::start(EmulatorConfig {
        amqp_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..EmulatorConfig::default()
    })
    .await
    .expect("the emulator starts");
    let report = Simulation::new(SimulationConfig {
        target: SimulationTarget::Amqp {
            connection_string: ConnectionString::parse(&emulator.connection_string("hub")).unwrap(),
            partition: None,
        },
        devices: NonZeroU32::new(40).unwrap(),
        rate: Rate::Max,
        stop: StopAfter::Events(EVENTS),
        seed: 7,
        max_in_flight: 64,
        mix: Default::default(),
    })
    .run()
    .await
    .expect("the simulation runs");
    assert_eq!(report.sent, EVENTS);

    // Readings of 25 °C and more violate the table's constraint: PostgreSQL rejects those rows.
    let table = format!("replay_{}", uuid::Uuid::new_v4().simple());
    let client = postgres().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE \"{table}\" (event_hub text NOT NULL, partition text NOT NULL, \
             sequence_number bigint NOT NULL, message_id text, \
             temperature double precision CONSTRAINT cool CHECK (temperature < 25), \
             UNIQUE (event_hub, partition, sequence_number))"
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hubroute.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[source]
connection_string = "{connection_string}"

[checkpoint]
dir = "{dir}/checkpoints"
interval = "100ms"

[dead_letters]
store = {{ kind = "local", root = "{dir}" }}

[service]
listen = "127.0.0.1:0"

[[endpoints]]
sink = {{ type = "postgres", name = "db", dbname = "test", linger = "10ms", table = {{ name = "{table}", create = false, columns = [{{ name = "message_id", source = "message_id", type = "text" }}, {{ name = "temperature", source = "$.temperature", type = "double" }}] }} }}

[[routes]]
name = "all"
condition = "true"
endpoint = "db"
"#,
            connection_string = emulator.connection_string("hub"),
            dir = dir.path().display(),
        ),
    )
    .unwrap();
    let engine = RunningEngine::start(LoadedConfig::load(&config).unwrap())
        .await
        .unwrap();
    wait_until(
        "every event is checkpointed",
        Duration::from_secs(60),
        || {
            engine
                .committed_positions()
                .iter()
                .filter_map(|(_, c)| *c)
                .map(|c| c + 1)
                .sum::<i64>()
                == EVENTS as i64
        },
    )
    .await;
    engine.shutdown().await.unwrap();
    emulator.shutdown().await.unwrap();
    let (stored, _) = count(&client, &table).await;
    let rejected = EVENTS as i64 - stored;
    assert!(
        rejected > 0 && stored > 0,
        "{stored} stored, {rejected} rejected"
    );

    // Listed apart, as failed, with PostgreSQL's reason.
    let (ok, stdout, stderr) = dead_letters(&config, &["list", "--json"]);
    assert!(ok, "{stderr}");
    let groups: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert!(
        groups
            .iter()
            .all(|g| g["endpoint"] == "db" && g["kind"] == "failed"),
        "{stdout}"
    );
    assert!(
        groups
            .iter()
            .all(|g| g["reason"].as_str().unwrap().contains("23514")),
        "{stdout}"
    );
    let listed: i64 = groups.iter().map(|g| g["count"].as_i64().unwrap()).sum();
    assert_eq!(listed, rejected);

    // A plain replay is for parked rows only; a dry run changes nothing.
    let (ok, stdout, stderr) = dead_letters(&config, &["replay", "--endpoint", "db"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("replayed 0 parked records"), "{stdout}");
    let (ok, stdout, stderr) = dead_letters(
        &config,
        &["replay", "--endpoint", "db", "--failed", "--dry-run"],
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("dry run: {rejected} failed records")),
        "{stdout}"
    );
    assert_eq!(count(&client, &table).await.0, stored);

    // Fix the cause, then replay the failed rows: every row is in the table exactly once.
    client
        .batch_execute(&format!("ALTER TABLE \"{table}\" DROP CONSTRAINT cool"))
        .await
        .unwrap();
    let (ok, stdout, stderr) = dead_letters(&config, &["replay", "--endpoint", "db", "--failed"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("replayed {rejected} failed records")),
        "{stdout}"
    );
    assert!(stdout.contains("(0 failed again"), "{stdout}");
    assert_eq!(count(&client, &table).await, (EVENTS as i64, EVENTS as i64));

    // Replayed objects are moved aside, not deleted; a second replay finds nothing to do.
    let (ok, stdout, _) = dead_letters(&config, &["list"]);
    assert!(ok);
    assert!(
        stdout.contains("the dead-letter store is empty"),
        "{stdout}"
    );
    let aside = dir.path().join("dead-letters/db/replayed");
    assert!(aside.is_dir(), "moved aside under {}", aside.display());
    let (ok, stdout, _) = dead_letters(&config, &["replay", "--endpoint", "db", "--failed"]);
    assert!(ok);
    assert!(stdout.contains("replayed 0 failed records"), "{stdout}");
    assert_eq!(count(&client, &table).await.0, EVENTS as i64);

    // Purging needs --yes.
    let (ok, _, stderr) = dead_letters(&config, &["purge"]);
    assert!(!ok && stderr.contains("--yes"), "{stderr}");
    assert!(aside.is_dir());
    let (ok, stdout, stderr) = dead_letters(&config, &["purge", "--yes"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("deleted"), "{stdout}");
    let mut left = BTreeSet::new();
    let mut stack = vec![dir.path().join("dead-letters")];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                left.insert(entry.path());
            }
        }
    }
    assert!(left.is_empty(), "{left:?}");
    client
        .batch_execute(&format!("DROP TABLE \"{table}\""))
        .await
        .unwrap();
}
