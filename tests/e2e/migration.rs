//! End to end through the binary, the migration path of a user leaving IoT Hub routing:
//! `hubroute import` on a template, `hubroute check` on what it wrote once the environment is set,
//! and `hubroute route test --input` backtesting routes on an archive written by independent
//! writers (Python's fastavro for IoT Hub's Avro, Python's json for its JSON lines and an
//! `az iot hub monitor-events` capture) and by hubroute's own Parquet sink. The expected counts
//! come from how the messages were made, not from the engine.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use hubroute_message::{Message, MessageBatchBuilder};
use hubroute_sinks::{
    FlushReason, ObjectStoreConfig, ParquetSink, ParquetSinkConfig, Sink as _, SinkBatch,
};
use serde_json::{Value, json};

use crate::support::{hubroute, run_python, workspace_root};

fn template(name: &str) -> PathBuf {
    workspace_root().join("migrate/tests/import").join(name)
}

#[test]
fn import_writes_a_configuration_that_check_accepts_once_the_environment_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hubroute.toml");
    let output = hubroute()
        .args(["import", "--from"])
        .arg(template("routing-tutorial.json"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("5 endpoints, 5 of 10 routes, fallback enabled, 2 enrichments"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: route `ToCosmos` is commented out"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ARCHIVE_STORAGE_ACCOUNT_KEY: An access key"),
        "{stderr}"
    );

    // A second import does not overwrite the edited file without --force.
    let again = hubroute()
        .args(["import", "--from"])
        .arg(template("routing-tutorial.json"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));

    let check = |with_environment: bool| {
        let mut command = hubroute();
        command.args(["check", "--config"]).arg(&out);
        if with_environment {
            command
                .env(
                    "IOTHUB_SERVICE_CONNECTION_STRING",
                    "HostName=contoso-routing-hub.azure-devices.net;SharedAccessKeyName=service;SharedAccessKey=c2VjcmV0",
                )
                .env("ARCHIVE_STORAGE_ACCOUNT_KEY", "c2VjcmV0")
                .env(
                    "DOWNSTREAM_CONNECTION_STRING",
                    "Endpoint=sb://contoso-ehns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=c2VjcmV0",
                )
                .env(
                    "ALERTS_CONNECTION_STRING",
                    "Endpoint=sb://contoso-sb.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=c2VjcmV0;EntityPath=contoso-sb-alerts",
                )
                .env(
                    "TWIN_UPDATES_CONNECTION_STRING",
                    "Endpoint=sb://contoso-sb.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=c2VjcmV0",
                );
        }
        command.output().unwrap()
    };
    let without = check(false);
    assert_eq!(without.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&without.stderr)
            .contains("environment variable `IOTHUB_SERVICE_CONNECTION_STRING` is not set"),
        "{}",
        String::from_utf8_lossy(&without.stderr)
    );
    let with = check(true);
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert!(
        String::from_utf8_lossy(&with.stdout)
            .contains("ok: 5 endpoints, 5 routes, fallback enabled, 2 enrichments"),
        "{}",
        String::from_utf8_lossy(&with.stdout)
    );

    let bicep = hubroute()
        .args(["import", "--out", "-", "--from"])
        .arg(workspace_root().join("examples/routing.toml"))
        .output()
        .unwrap();
    assert_eq!(bicep.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bicep.stderr).contains("is not JSON"));
}

/// How message `i` of the archive is made.
struct Made {
    level: Option<&'static str>,
    /// The body is JSON, typed as such (`$body` is defined).
    json: bool,
    temperature: usize,
}

fn made(i: usize) -> Made {
    Made {
        level: [Some("high"), Some("low"), None][i % 3],
        json: i.is_multiple_of(4),
        temperature: i % 50,
    }
}

const MESSAGES: usize = 300;

/// The archive's records, IoT Hub's storage layout with base64 bodies: JSON bodies typed as JSON,
/// JSON without a content type, binary bodies, and text that claims to be JSON but is not.
fn archive_spec() -> Value {
    let records: Vec<Value> = (0..MESSAGES)
        .map(|i| {
            let m = made(i);
            let mut system = json!({
                "messageId": format!("m{i}"),
                "connectionDeviceId": format!("d{}", i % 5),
                "enqueuedTime": "2026-03-07T09:05:00.1230000Z",
            });
            let body: Vec<u8> = match i % 4 {
                0 => {
                    system["contentType"] = json!("application/json");
                    system["contentEncoding"] = json!("utf-8");
                    format!(r#"{{"temperature": {}}}"#, m.temperature).into_bytes()
                }
                1 => format!(r#"{{"temperature": {}}}"#, m.temperature).into_bytes(),
                2 => {
                    system["contentType"] = json!("application/octet-stream");
                    vec![0xff, 0x00, u8::try_from(i % 256).unwrap(), 0x9f]
                }
                _ => {
                    system["contentType"] = json!("application/json");
                    system["contentEncoding"] = json!("utf-8");
                    format!("temperature={}", m.temperature).into_bytes()
                }
            };
            let mut properties = json!({"n": i.to_string()});
            if let Some(level) = m.level {
                properties["level"] = json!(level);
            }
            json!({
                "EnqueuedTimeUtc": "2026-03-07T09:05:00.1250000Z",
                "Properties": properties,
                "SystemProperties": system,
                "Body": base64::engine::general_purpose::STANDARD.encode(body),
            })
        })
        .collect();
    Value::Array(records)
}

fn config(dir: &Path) -> PathBuf {
    let path = dir.join("routes.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[source]
connection_string = "Endpoint=sb://127.0.0.1:5673;SharedAccessKeyName=k;SharedAccessKey=s;EntityPath=hub;UseDevelopmentEmulator=true"

[[endpoints]]
sink = {{ type = "parquet", name = "alerts", store = {{ kind = "local", root = "{root}" }} }}

[[endpoints]]
sink = {{ type = "parquet", name = "hot", store = {{ kind = "local", root = "{root}" }} }}

[[endpoints]]
sink = {{ type = "parquet", name = "rest", store = {{ kind = "local", root = "{root}" }} }}

[[routes]]
name = "high"
condition = "level = 'high'"
endpoint = "alerts"

[[routes]]
name = "hot"
condition = "$body.temperature > 30"
endpoint = "hot"

[[routes]]
name = "off"
condition = "true"
endpoint = "alerts"
enabled = false

[fallback]
endpoint = "rest"
"#,
            root = dir.join("out").display()
        ),
    )
    .unwrap();
    path
}

/// The counts the backtest must report, from how the messages were made.
fn expected_counts() -> Value {
    let count = |f: &dyn Fn(&Made) -> bool| (0..MESSAGES).filter(|&i| f(&made(i))).count();
    let high = |m: &Made| m.level == Some("high");
    let hot = |m: &Made| m.json && m.temperature > 30;
    json!({
        "high": [count(&high), count(&|m: &Made| m.level.is_none())],
        "hot": [count(&hot), count(&|m: &Made| !m.json)],
        "off": [0, 0],
        "fallback": count(&|m: &Made| !high(m) && !hot(m)),
        "unmatched": 0,
    })
}

fn counts_of(report: &Value) -> Value {
    let mut counts = serde_json::Map::new();
    for route in report["routes"].as_array().unwrap() {
        counts.insert(
            route["name"].as_str().unwrap().to_owned(),
            json!([route["matched"]["count"], route["undefined"]["count"]]),
        );
    }
    counts.insert("fallback".into(), report["fallback"]["count"].clone());
    counts.insert("unmatched".into(), report["unmatched"]["count"].clone());
    Value::Object(counts)
}

/// Writes the archive's messages with hubroute's Parquet sink into `dir`; returns the file.
fn write_parquet(dir: &Path) -> PathBuf {
    let spec = archive_spec();
    let messages: Vec<Message> = spec
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, record)| {
            let body = base64::engine::general_purpose::STANDARD
                .decode(record["Body"].as_str().unwrap())
                .unwrap();
            let mut message = Message::telemetry(body);
            message.sequence_number = i64::try_from(i).unwrap();
            message.system = serde_json::from_value(record["SystemProperties"].clone()).unwrap();
            message.application_properties = record["Properties"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), hubroute_message::AppPropertyValue::from_json(v)))
                .collect();
            message
        })
        .collect();
    let root = dir.join("lake");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (acks, _rx) = tokio::sync::mpsc::channel(4);
        let mut sink = ParquetSink::new(
            ParquetSinkConfig::new("lake", ObjectStoreConfig::Local { root: root.clone() }),
            acks,
        )
        .unwrap();
        sink.write(SinkBatch {
            ticket: 1,
            batch: MessageBatchBuilder::batch_of(&messages).unwrap(),
        })
        .await
        .unwrap();
        sink.flush(FlushReason::Shutdown).await.unwrap();
    });
    let mut found = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                found.push(path);
            }
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found.pop().unwrap()
}

#[test]
fn backtest_counts_matches_per_route_over_every_archive_format() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, archive_spec().to_string()).unwrap();
    let written = run_python(
        "write_iothub_archive.py",
        &[spec.to_str().unwrap(), dir.path().to_str().unwrap()],
    );
    assert!(
        written.contains(&format!("\"records\": {MESSAGES}")),
        "{written}"
    );
    let config = config(dir.path());
    let parquet = write_parquet(dir.path());
    let expected = expected_counts();
    for input in [
        dir.path().join("archive.avro"),
        dir.path().join("archive-deflate.avro"),
        dir.path().join("archive.json"),
        dir.path().join("events.json"),
        parquet,
    ] {
        let output = hubroute()
            .args(["route", "test", "--json", "--config"])
            .arg(&config)
            .arg("--input")
            .arg(&input)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: {}",
            input.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["messages"], MESSAGES, "{}", input.display());
        assert_eq!(counts_of(&report), expected, "{}", input.display());
        // Examples are the first message ids of each outcome.
        assert_eq!(
            report["routes"][0]["matched"]["examples"],
            json!(["m0", "m3", "m6"])
        );
        assert_eq!(
            report["routes"][1]["undefined"]["examples"],
            json!(["m1", "m2", "m3"])
        );
    }

    // Several files at once, as a table.
    let output = hubroute()
        .args(["route", "test", "--config"])
        .arg(&config)
        .arg("--input")
        .arg(dir.path().join("archive.avro"))
        .arg(dir.path().join("archive.json"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        table.contains("archive.avro: 300 messages (IoT Hub storage Avro)"),
        "{table}"
    );
    assert!(table.contains("off (disabled)"), "{table}");
    assert!(
        table.contains(&format!("{} messages in", 2 * MESSAGES)),
        "{table}"
    );

    // `$twin` conditions see the twins of `--twins` (the hub's twin query output), else undefined.
    let twin_config = dir.path().join("twins.toml");
    std::fs::write(
        &twin_config,
        std::fs::read_to_string(&config).unwrap().replace(
            "condition = \"level = 'high'\"",
            "condition = \"$twin.tags.site = 'plant-3'\"",
        ),
    )
    .unwrap();
    let twins = dir.path().join("twins.json");
    std::fs::write(
        &twins,
        r#"[{"deviceId": "d0", "tags": {"site": "plant-3"}}, {"deviceId": "d1", "tags": {"site": "plant-3"}},
            {"deviceId": "d2", "tags": {"site": "plant-4"}}]"#,
    )
    .unwrap();
    let backtest_twins = |with_twins: bool| {
        let mut command = hubroute();
        command
            .args(["route", "test", "--json", "--config"])
            .arg(&twin_config)
            .arg("--input")
            .arg(dir.path().join("archive.json"));
        if with_twins {
            command.arg("--twins").arg(&twins);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        (
            counts_of(&report)["high"].clone(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (without, warning) = backtest_twins(false);
    assert_eq!(without, json!([0, MESSAGES]));
    assert!(warning.contains("route `high` reads $twin"), "{warning}");
    let (with, _) = backtest_twins(true);
    let plant_3 = (0..MESSAGES).filter(|i| i % 5 < 2).count();
    assert_eq!(
        with,
        json!([plant_3, MESSAGES * 2 / 5]),
        "d3 and d4 have no twin"
    );

    // A file that is not what it claims: the error names the file and the record.
    let other = dir.path().join("other-schema.avro");
    let output = hubroute()
        .args(["route", "test", "--config"])
        .arg(&config)
        .arg("--input")
        .arg(&other)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: record 1: not a record of IoT Hub's schema",
            other.display()
        )),
        "{stderr}"
    );
    let broken = dir.path().join("broken.json");
    let mut lines = std::fs::read_to_string(dir.path().join("archive.json")).unwrap();
    lines.push_str("{\"EnqueuedTimeUtc\": \"2026-03-07T09:05:00Z\", \"Bodyy\": 1}\n");
    std::fs::write(&broken, lines).unwrap();
    let output = hubroute()
        .args(["route", "test", "--config"])
        .arg(&config)
        .arg("--input")
        .arg(&broken)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: record 301: not an IoT Hub storage JSON record",
            broken.display()
        )),
        "{stderr}"
    );
}

#[test]
fn route_test_takes_a_storage_record_or_a_monitor_event_as_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let record = dir.path().join("record.json");
    std::fs::write(
        &record,
        r#"{"EnqueuedTimeUtc":"2026-03-07T09:05:00.1250000Z","Properties":{"level":"high"},"SystemProperties":{"messageId":"m1","contentType":"application/json","contentEncoding":"utf-8"},"Body":{"temperature":45}}"#,
    )
    .unwrap();
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        r#"{
    "event": {
        "origin": "d1",
        "payload": {"temperature": 12},
        "annotations": {"iothub-message-source": "Telemetry"},
        "properties": {"system": {"content_type": "application/json", "content_encoding": "utf-8"}, "application": {"level": "low"}}
    }
}"#,
    )
    .unwrap();
    let test = |args: &[&str], message: &Path| {
        let output = hubroute()
            .args(["route", "test"])
            .args(args)
            .arg("--message")
            .arg(message)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let config = config.to_str().unwrap();
    assert!(test(&["--config", config], &record).starts_with("routes: high, hot\nfallback: no\n"));
    assert!(test(&["--config", config], &event).starts_with("routes: (none)\nfallback: yes\n"));
    assert_eq!(
        test(&["--condition", "$body.temperature = 45"], &record),
        "true\n"
    );
    assert_eq!(
        test(&["--condition", "$connectionDeviceId = 'd1'"], &event),
        "true\n"
    );
}
