//! Tests of the twin store's life cycle live end to end in `tests/e2e/twins.rs`, against the
//! emulator's IoT Hub service API; this file covers what needs no service.

use super::*;

#[test]
fn without_a_twins_section_batches_pass_unchanged() {
    let twins = Twins::default();
    let batch =
        hubroute_message::MessageBatchBuilder::batch_of(&[hubroute_message::Message::telemetry(
            "{}",
        )])
        .unwrap();
    let attached = twins.attach(batch.clone()).unwrap();
    assert_eq!(attached, batch);
}

#[tokio::test]
async fn the_configured_reading_of_update_events_reaches_the_engines_store() {
    use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder, MessageColumns};
    use serde_json::{Value, json};

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "hub_name = \"hub\"\n[source]\nconnection_string = \"Endpoint=sb://127.0.0.1:1/;\
         SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0;EntityPath=hub\"\n[checkpoint]\n\
         dir = \"{}\"\n[twins]\nservice_connection_string = \"HostName=127.0.0.1:1;\
         SharedAccessKeyName=service;SharedAccessKey=c2VjcmV0\"\nstart_without_twins = true\n\
         snapshot = false\nupdate_events = \"sections\"\n",
        dir.path().display()
    );
    let loaded =
        crate::config::LoadedConfig::parse(&dir.path().join("hubroute.toml"), &config).unwrap();
    let twins = Twins::start(&loaded.config, TwinMetrics::default()).unwrap();
    let event = |sequence_number: i64, op: &str, body: &Value| {
        let mut message = Message::telemetry(body.to_string());
        message.sequence_number = sequence_number;
        message.system.connection_device_id = Some("dev-1".to_owned());
        message.system.message_source = Some(
            if op == "updateTwin" {
                "twinChangeEvents"
            } else {
                "deviceLifecycleEvents"
            }
            .to_owned(),
        );
        message.application_properties = vec![
            ("deviceId".to_owned(), AppPropertyValue::from("dev-1")),
            ("opType".to_owned(), AppPropertyValue::from(op)),
        ];
        message
    };
    let mut telemetry = Message::telemetry("{}");
    telemetry.sequence_number = 3;
    telemetry.system.connection_device_id = Some("dev-1".to_owned());
    let batch = MessageBatchBuilder::batch_of(&[
        event(
            1,
            "createDeviceIdentity",
            &json!({"deviceId": "dev-1", "version": 1, "tags": {"site": "a", "line": 1}}),
        ),
        event(
            2,
            "updateTwin",
            &json!({"version": 2, "tags": {"site": "b"}}),
        ),
        telemetry,
    ])
    .unwrap();
    let attached = twins.attach(batch).unwrap();
    let columns = MessageColumns::try_new(&attached).unwrap();
    let seen: Value = serde_json::from_str(columns.twin.get(2).expect("a twin")).unwrap();
    assert_eq!(
        seen["tags"],
        json!({"site": "b"}),
        "`sections` replaces the tags"
    );
    twins.shutdown().await;
}
