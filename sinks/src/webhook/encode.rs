//! The JSON shape of one message in a webhook body, written straight into the request buffer.
//!
//! ```json
//! {
//!   "eventHub": "hub", "partition": "0", "sequenceNumber": 42, "offset": "4096",
//!   "enqueuedTime": "2026-11-22T23:00:00.123Z", "partitionKey": "pump-7",
//!   "systemProperties": { "messageId": "m-1", "contentType": "application/json",
//!                         "connectionDeviceId": "pump-7", "enqueuedTime": "...", ... },
//!   "properties": { "severity": "3" },
//!   "bodyEncoding": "json",
//!   "body": { "temperature": 31.5 }
//! }
//! ```
//!
//! * `systemProperties` uses IoT Hub's storage-endpoint names (`messageId`, `correlationId`, `userId`,
//!   `contentType`, `contentEncoding`, `enqueuedTime`, `connectionDeviceId`, `connectionModuleId`,
//!   `connectionAuthMethod`, `connectionDeviceGenerationId`, `messageSource`, `dt-dataschema`,
//!   `dt-subject`) and lists only properties that are set. `userId` is text when it is UTF-8, else
//!   base64.
//! * `properties` are the application properties as their canonical strings (null for AMQP null), as
//!   IoT Hub routing sees them.
//! * `body` is the body itself when it parses as JSON (`bodyEncoding: "json"`), whatever the content
//!   type says, so devices that forget `contentType` still get readable payloads; otherwise it is
//!   the standard base64 of the bytes (`bodyEncoding: "base64"`).
//! * `partitionKey` is omitted when absent. Times are RFC 3339 UTC with milliseconds.
//!
//! In a CloudEvents batch each element wraps that message:
//!
//! ```json
//! { "specversion": "1.0", "id": "<eventHub>/<partition>/<sequenceNumber>", "source": "/hubroute/<endpoint>",
//!   "type": "Microsoft.Devices.DeviceTelemetry", "time": "<enqueuedTime>", "subject": "devices/<deviceId>",
//!   "datacontenttype": "application/json", "data": { ...the message... } }
//! ```
//!
//! `type` is `Microsoft.Devices.<messageSource>` for non-telemetry sources; `subject` is omitted when
//! the device id is unknown.

use arrow::array::{Array, StringArray, TimestampMillisecondArray};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat};
use hubroute_message::MessageColumns;
use serde::de::IgnoredAny;

/// Appends a JSON string literal.
fn string(out: &mut Vec<u8>, value: &str) {
    serde_json::to_writer(&mut *out, value).expect("writing to a Vec never fails");
}

fn timestamp(out: &mut Vec<u8>, millis: i64) {
    match DateTime::from_timestamp_millis(millis) {
        Some(t) => string(out, &t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        None => out.extend_from_slice(millis.to_string().as_bytes()),
    }
}

/// Writes `,"key":` (or `"key":` for the first member).
fn key(out: &mut Vec<u8>, first: &mut bool, name: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    string(out, name);
    out.push(b':');
}

fn text_member(out: &mut Vec<u8>, first: &mut bool, name: &str, array: &StringArray, row: usize) {
    if array.is_valid(row) {
        key(out, first, name);
        string(out, array.value(row));
    }
}

fn time_member(
    out: &mut Vec<u8>,
    first: &mut bool,
    name: &str,
    array: &TimestampMillisecondArray,
    row: usize,
) {
    if array.is_valid(row) {
        key(out, first, name);
        timestamp(out, array.value(row));
    }
}

/// Appends the JSON of message `row`.
pub(crate) fn message(out: &mut Vec<u8>, view: &MessageColumns<'_>, row: usize) {
    let mut first = true;
    out.push(b'{');
    key(out, &mut first, "eventHub");
    string(out, view.event_hub.value(row));
    key(out, &mut first, "partition");
    string(out, view.partition.value(row));
    key(out, &mut first, "sequenceNumber");
    out.extend_from_slice(view.sequence_number.value(row).to_string().as_bytes());
    key(out, &mut first, "offset");
    string(out, view.offset.value(row));
    time_member(out, &mut first, "enqueuedTime", view.enqueued_time, row);
    text_member(out, &mut first, "partitionKey", view.partition_key, row);

    key(out, &mut first, "systemProperties");
    out.push(b'{');
    let mut inner = true;
    text_member(out, &mut inner, "messageId", view.message_id, row);
    text_member(out, &mut inner, "correlationId", view.correlation_id, row);
    if view.user_id.is_valid(row) {
        key(out, &mut inner, "userId");
        let bytes = view.user_id.value(row);
        match std::str::from_utf8(bytes) {
            Ok(text) => string(out, text),
            Err(_) => string(
                out,
                &base64::engine::general_purpose::STANDARD.encode(bytes),
            ),
        }
    }
    text_member(out, &mut inner, "contentType", view.content_type, row);
    text_member(
        out,
        &mut inner,
        "contentEncoding",
        view.content_encoding,
        row,
    );
    time_member(
        out,
        &mut inner,
        "enqueuedTime",
        view.iothub_enqueued_time,
        row,
    );
    text_member(
        out,
        &mut inner,
        "connectionDeviceId",
        view.connection_device_id,
        row,
    );
    text_member(
        out,
        &mut inner,
        "connectionModuleId",
        view.connection_module_id,
        row,
    );
    text_member(
        out,
        &mut inner,
        "connectionAuthMethod",
        view.connection_auth_method,
        row,
    );
    text_member(
        out,
        &mut inner,
        "connectionDeviceGenerationId",
        view.connection_auth_generation_id,
        row,
    );
    text_member(out, &mut inner, "messageSource", view.message_source, row);
    text_member(out, &mut inner, "dt-dataschema", view.dt_dataschema, row);
    text_member(out, &mut inner, "dt-subject", view.dt_subject, row);
    out.push(b'}');

    key(out, &mut first, "properties");
    out.push(b'{');
    let mut inner = true;
    for (name, value) in view.application_properties_of(row) {
        key(out, &mut inner, name);
        match value {
            Some(value) => string(out, value),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');

    let body = view.body.value(row);
    if serde_json::from_slice::<IgnoredAny>(body).is_ok() {
        key(out, &mut first, "bodyEncoding");
        string(out, "json");
        key(out, &mut first, "body");
        out.extend_from_slice(body);
    } else {
        key(out, &mut first, "bodyEncoding");
        string(out, "base64");
        key(out, &mut first, "body");
        string(out, &base64::engine::general_purpose::STANDARD.encode(body));
    }
    out.push(b'}');
}

/// Appends message `row` wrapped in a CloudEvents 1.0 envelope.
pub(crate) fn cloud_event(out: &mut Vec<u8>, view: &MessageColumns<'_>, row: usize, source: &str) {
    out.extend_from_slice(br#"{"specversion":"1.0","id":"#);
    string(
        out,
        &format!(
            "{}/{}/{}",
            view.event_hub.value(row),
            view.partition.value(row),
            view.sequence_number.value(row)
        ),
    );
    out.extend_from_slice(br#","source":"#);
    string(out, source);
    out.extend_from_slice(br#","type":"#);
    match view
        .message_source
        .is_valid(row)
        .then(|| view.message_source.value(row))
    {
        None | Some("Telemetry") => string(out, "Microsoft.Devices.DeviceTelemetry"),
        Some(other) => string(out, &format!("Microsoft.Devices.{other}")),
    }
    out.extend_from_slice(br#","time":"#);
    timestamp(out, view.enqueued_time.value(row));
    if view.connection_device_id.is_valid(row) {
        out.extend_from_slice(br#","subject":"#);
        string(
            out,
            &format!("devices/{}", view.connection_device_id.value(row)),
        );
    }
    out.extend_from_slice(br#","datacontenttype":"application/json","data":"#);
    message(out, view, row);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder};
    use serde_json::{Value, json};

    use super::*;

    fn encoded(message_of: &Message, cloud: bool) -> Value {
        let batch = MessageBatchBuilder::batch_of(std::slice::from_ref(message_of)).unwrap();
        let view = MessageColumns::try_new(&batch).unwrap();
        let mut out = Vec::new();
        if cloud {
            cloud_event(&mut out, &view, 0, "/hubroute/x");
        } else {
            message(&mut out, &view, 0);
        }
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn json_bodies_are_inlined_and_others_base64() {
        let cases = [
            (&br#"{"t":1}"#[..], json!("json"), json!({"t": 1})),
            (
                &b"\"quoted \\\" text\""[..],
                json!("json"),
                json!("quoted \" text"),
            ),
            (
                &b"plain text"[..],
                json!("base64"),
                json!("cGxhaW4gdGV4dA=="),
            ),
            (&[0xff, 0x00][..], json!("base64"), json!("/wA=")),
        ];
        for (body, encoding, expected) in cases {
            let value = encoded(
                &Message::telemetry(bytes::Bytes::copy_from_slice(body)),
                false,
            );
            assert_eq!(value["bodyEncoding"], encoding, "{body:?}");
            assert_eq!(value["body"], expected, "{body:?}");
        }
    }

    #[test]
    fn properties_and_system_properties_are_named_like_iot_hub_storage() {
        let mut m = Message::telemetry("x");
        m.sequence_number = 9;
        m.enqueued_time = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        m.system.connection_device_id = Some("pump \"7\"".into());
        m.system.user_id = Some(vec![0xff]);
        m.application_properties = vec![
            ("level".into(), AppPropertyValue::from("hi")),
            ("n".into(), AppPropertyValue::Long(3)),
            ("gone".into(), AppPropertyValue::Null),
        ];
        let value = encoded(&m, false);
        assert_eq!(value["sequenceNumber"], 9);
        assert_eq!(value["enqueuedTime"], "2023-11-14T22:13:20.123Z");
        assert_eq!(
            value["systemProperties"]["connectionDeviceId"],
            "pump \"7\""
        );
        assert_eq!(value["systemProperties"]["messageSource"], "Telemetry");
        assert_eq!(value["systemProperties"]["userId"], "/w==");
        assert!(value["systemProperties"].get("messageId").is_none());
        assert!(value.get("partitionKey").is_none());
        assert_eq!(
            value["properties"],
            json!({"level": "hi", "n": "3", "gone": null})
        );
    }

    #[test]
    fn cloud_events_wrap_the_message() {
        let mut m = Message::telemetry("{}");
        m.system.connection_device_id = Some("d1".into());
        let value = encoded(&m, true);
        assert_eq!(value["specversion"], "1.0");
        assert_eq!(value["id"], "hub/0/0");
        assert_eq!(value["type"], "Microsoft.Devices.DeviceTelemetry");
        assert_eq!(value["subject"], "devices/d1");
        assert_eq!(value["data"]["body"], json!({}));
    }
}
