//! End-to-end tests of `hubroute emulator` and `hubroute simulate` as users run them: the real
//! binary, read back with a plain fe2o3-amqp receiver and with the official Azure Python SDK.

use std::collections::HashSet;

use fe2o3_amqp::types::primitives::Value;
use hubroute_protocol::annotations;

use hubroute_protocol::IotHubConnectionString;

use crate::support::{
    EmulatorProcess, EventHubConnection, annotation, app_property, hubroute, register_device,
    run_python, token,
};

/// Runs `hubroute simulate <args>` to completion and returns its stdout.
fn simulate(args: &[&str]) -> String {
    let output = hubroute()
        .arg("simulate")
        .args(args)
        .output()
        .expect("running `hubroute simulate`");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "`hubroute simulate {}` failed ({}): {stdout}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_over_amqp_delivers_exactly_n_events_as_a_device_side_producer() {
    let emulator = EmulatorProcess::start(&["--partitions", "2"], 1);
    let connection_string = &emulator.connection_strings[0];
    assert!(
        connection_string.contains(";EntityPath=hub;")
            && connection_string.ends_with("UseDevelopmentEmulator=true"),
        "{connection_string}"
    );
    let summary = simulate(&[
        "--connection-string",
        connection_string,
        "--devices",
        "10",
        "--max",
        "--events",
        "500",
        "--seed",
        "1",
    ]);
    assert!(summary.starts_with("sent 500 events"), "{summary}");

    let mut connection = EventHubConnection::open(connection_string).await;
    let mut events = connection.read_partition("$Default", "0", 0).await;
    let first = events.len();
    events.extend(
        connection
            .read_partition("$Default", "1", 500 - first)
            .await,
    );
    connection.close().await;
    assert_eq!(events.len(), 500);
    let ids: HashSet<String> = events
        .iter()
        .map(|e| {
            format!(
                "{:?}",
                e.properties.as_ref().and_then(|p| p.message_id.clone())
            )
        })
        .collect();
    assert_eq!(ids.len(), 500, "message ids are unique");
    for event in &events {
        let device = app_property(event, "deviceId").expect("deviceId application property");
        assert_eq!(
            annotation(event, annotations::PARTITION_KEY),
            Some(&Value::String(device))
        );
        assert!(app_property(event, "severity").is_some());
        assert_eq!(annotation(event, annotations::CONNECTION_DEVICE_ID), None);
        assert!(matches!(
            annotation(event, annotations::SEQUENCE_NUMBER),
            Some(Value::Long(_))
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingress_stamps_the_iot_hub_built_in_endpoint_annotations() {
    // Without twin change and lifecycle events the partition holds only device messages.
    let emulator = EmulatorProcess::start(
        &[
            "--partitions",
            "1",
            "--no-twin-change-events",
            "--no-lifecycle-events",
        ],
        1,
    );
    let service = IotHubConnectionString::parse(&emulator.service_connection_string)
        .expect("the emulator prints an IoT Hub service connection string");
    assert!(
        emulator.ingress_url.ends_with(&service.host_name),
        "{} vs {}",
        emulator.ingress_url,
        service.host_name
    );
    let thermostat = register_device(&service, "thermostat-1", None).await;
    register_device(&service, "gateway-1", None).await;
    let filter = register_device(&service, "gateway-1", Some("filter")).await;
    let client = reqwest::Client::new();
    let post = |path: &str, device: &IotHubConnectionString| {
        client
            .post(format!(
                "{}{path}?api-version=2021-04-12",
                emulator.ingress_url
            ))
            .header("authorization", token(device))
            .header("content-type", "application/json")
            .header("content-encoding", "utf-8")
            .header("iothub-messageid", "msg-1")
            .header("iothub-app-severity", "high")
            .body(r#"{"temperature":30}"#)
            .send()
    };
    let device = post("/devices/thermostat-1/messages/events", &thermostat)
        .await
        .unwrap();
    assert_eq!(device.status().as_u16(), 204);
    let module = post("/devices/gateway-1/modules/filter/messages/events", &filter)
        .await
        .unwrap();
    assert_eq!(module.status().as_u16(), 204);
    let unauthenticated = client
        .post(format!(
            "{}/devices/thermostat-1/messages/events",
            emulator.ingress_url
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);
    let health = client
        .get(format!("{}/healthz", emulator.ingress_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let too_big = client
        .post(format!(
            "{}/devices/thermostat-1/messages/events",
            emulator.ingress_url
        ))
        .header("authorization", token(&thermostat))
        .body(vec![b'x'; 256 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status().as_u16(), 413);
    let summary = simulate(&[
        "--iothub",
        &emulator.service_connection_string,
        "--devices",
        "2",
        "--max",
        "--events",
        "20",
    ]);
    assert!(summary.starts_with("sent 20 events"), "{summary}");

    let mut connection = EventHubConnection::open(&emulator.connection_strings[0]).await;
    let events = connection.read_partition("$Default", "0", 22).await;
    connection.close().await;
    assert_eq!(events.len(), 22);
    let string = |value: Option<&Value>| match value {
        Some(Value::String(s)) => s.clone(),
        other => panic!("expected a string, got {other:?}"),
    };
    let (thermostat, gateway) = (&events[0], &events[1]);
    assert_eq!(
        string(annotation(thermostat, annotations::CONNECTION_DEVICE_ID)),
        "thermostat-1"
    );
    assert_eq!(
        string(annotation(thermostat, annotations::CONNECTION_AUTH_METHOD)),
        r#"{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#
    );
    assert_eq!(
        string(annotation(thermostat, annotations::MESSAGE_SOURCE)),
        "Telemetry"
    );
    let registered: serde_json::Value = client
        .get(format!(
            "{}/devices/thermostat-1?api-version=2021-04-12",
            emulator.ingress_url
        ))
        .header("authorization", token(&service))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        string(annotation(
            thermostat,
            annotations::CONNECTION_AUTH_GENERATION_ID
        )),
        registered["generationId"].as_str().unwrap(),
        "the identity's generation id"
    );
    assert!(matches!(
        annotation(thermostat, annotations::IOTHUB_ENQUEUED_TIME),
        Some(Value::Timestamp(_))
    ));
    assert_eq!(
        annotation(thermostat, annotations::CONNECTION_MODULE_ID),
        None
    );
    assert_eq!(
        app_property(thermostat, "severity").as_deref(),
        Some("high")
    );
    let properties = thermostat.properties.as_ref().expect("properties");
    assert_eq!(
        properties.content_type.as_ref().map(|s| s.0.as_str()),
        Some("application/json")
    );
    assert_eq!(
        properties.content_encoding.as_ref().map(|s| s.0.as_str()),
        Some("utf-8")
    );
    assert_eq!(
        string(annotation(gateway, annotations::CONNECTION_MODULE_ID)),
        "filter"
    );
    assert_eq!(
        string(annotation(gateway, annotations::CONNECTION_DEVICE_ID)),
        "gateway-1"
    );
    assert_eq!(
        string(annotation(gateway, annotations::CONNECTION_AUTH_METHOD)),
        r#"{"scope":"module","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#
    );
    for simulated in &events[2..] {
        assert!(
            string(annotation(simulated, annotations::CONNECTION_DEVICE_ID)).starts_with("device-")
        );
        assert!(app_property(simulated, "processingpath").is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_json_with_two_hubs_serves_both_with_their_consumer_groups() {
    let config = crate::support::workspace_root().join("examples/emulator-config.json");
    let emulator = EmulatorProcess::start(&["--config", config.to_str().unwrap()], 2);
    let [telemetry, alerts] = emulator.connection_strings.as_slice() else {
        panic!(
            "expected two connection strings, got {:?}",
            emulator.connection_strings
        );
    };
    assert!(telemetry.contains(";EntityPath=telemetry;"), "{telemetry}");
    assert!(alerts.contains(";EntityPath=alerts;"), "{alerts}");
    let summary = simulate(&[
        "--connection-string",
        alerts,
        "--partition",
        "1",
        "--max",
        "--events",
        "25",
    ]);
    assert!(summary.starts_with("sent 25 events"), "{summary}");

    let mut connection = EventHubConnection::open(alerts).await;
    assert_eq!(
        connection.read_partition("hubroute", "1", 25).await.len(),
        25
    );
    assert_eq!(
        connection.read_partition("$Default", "1", 25).await.len(),
        25
    );
    // A consumer group missing from Config.json is refused at attach or by an immediate detach.
    let refusal = match connection.receiver("undeclared", "1").await {
        Err(error) => error.to_string(),
        Ok(mut receiver) => {
            let first = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                receiver.recv::<fe2o3_amqp::types::messaging::Body<Value>>(),
            )
            .await
            .expect("the refusal arrives within 5 s");
            first
                .expect_err("no events from an undeclared consumer group")
                .to_string()
        }
    };
    assert!(!refusal.is_empty());
    connection.close().await;
    let mut connection = EventHubConnection::open(telemetry).await;
    assert!(
        connection
            .read_partition("analytics", "3", 0)
            .await
            .is_empty()
    );
    connection.close().await;
}

#[test]
fn python_sdk_round_trips_10000_events_with_properties_and_start_positions() {
    let emulator = EmulatorProcess::start(&["--partitions", "4"], 1);
    let stdout = run_python("roundtrip.py", &[&emulator.connection_strings[0], "10000"]);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect(&stdout);
    assert_eq!(summary["received"], 10_000, "{summary}");
    let partitions = summary["partitions"].as_object().expect("partitions");
    assert_eq!(partitions.len(), 4, "{summary}");
    assert!(
        partitions.values().all(|n| n.as_u64() > Some(0)),
        "{summary}"
    );
    for position in [
        "sequence_number",
        "sequence_number_inclusive",
        "offset",
        "enqueued_time",
    ] {
        assert!(
            summary["positions"][position].is_u64(),
            "{position}: {summary}"
        );
    }
}

#[test]
fn python_sdk_reads_event_hub_and_partition_properties() {
    let emulator = EmulatorProcess::start(&["--partitions", "3"], 1);
    let connection_string = &emulator.connection_strings[0];
    simulate(&[
        "--connection-string",
        connection_string,
        "--partition",
        "1",
        "--max",
        "--events",
        "30",
    ]);
    let stdout = run_python("properties.py", &[connection_string]);
    let properties: serde_json::Value = serde_json::from_str(stdout.trim()).expect(&stdout);
    let hub = &properties["eventhub"];
    assert_eq!(hub["eventhub_name"], "hub", "{properties}");
    assert_eq!(
        hub["partition_ids"],
        serde_json::json!(["0", "1", "2"]),
        "{properties}"
    );
    assert!(hub["created_at"].as_i64() > Some(0), "{properties}");
    let written = &properties["partitions"]["1"];
    assert_eq!(written["is_empty"], false, "{properties}");
    assert_eq!(written["beginning_sequence_number"], 0, "{properties}");
    assert_eq!(written["last_enqueued_sequence_number"], 29, "{properties}");
    assert!(written["last_enqueued_offset"].is_string(), "{properties}");
    assert!(
        written["last_enqueued_time_utc"].as_i64() > Some(1_600_000_000_000),
        "{properties}"
    );
    for empty in ["0", "2"] {
        assert_eq!(
            properties["partitions"][empty]["is_empty"], true,
            "{properties}"
        );
    }
}
