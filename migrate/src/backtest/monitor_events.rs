//! The JSON `az iot hub monitor-events --properties all --output json` prints: one object per
//! event, `{"event": {"origin", "module", "payload", "annotations", "properties": {"system",
//! "application"}}}`, pretty-printed one after another (the Azure CLI IoT extension's format).
//!
//! `payload` is the body: the extension parses it as JSON when the content type says JSON, so a
//! JSON value is written back as compact JSON text and a string is the body's text. `annotations`
//! carry the `iothub-*` system properties and the Event Hubs position (`x-opt-*`), `properties.system`
//! the AMQP properties under the AMQP library's attribute names (`content_type`, `message_id`, …;
//! `content-type` and `contentType` spellings are read too), `properties.application` the
//! application properties.

use arrow::record_batch::RecordBatch;
use hubroute_message::{AppPropertyValue, MessageBatchBuilder, MessageRef};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// One event's fields, owned, ready to be borrowed into a [`MessageRef`].
#[derive(Debug, Default)]
struct Event {
    sequence_number: i64,
    offset: String,
    enqueued_time_ms: i64,
    partition_key: Option<String>,
    message_id: Option<String>,
    correlation_id: Option<String>,
    user_id: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    iothub_enqueued_time_ms: Option<i64>,
    device_id: Option<String>,
    module_id: Option<String>,
    auth_method: Option<String>,
    auth_generation_id: Option<String>,
    message_source: Option<String>,
    dt_dataschema: Option<String>,
    dt_subject: Option<String>,
    application: Vec<(String, AppPropertyValue)>,
    body: Vec<u8>,
}

/// Whether `value` is a monitor-events object (`{"event": {...}}`).
pub(crate) fn is_monitor_event(value: &Value) -> bool {
    value.get("event").is_some_and(Value::is_object)
}

/// Reads every event of `text` (the saved output of `az iot hub monitor-events`), handing `emit`
/// batches of at most `batch_rows` rows; returns the number of events. Lines the command prints
/// around events ("Starting event monitor, …") are skipped.
pub(crate) fn read_monitor_events(
    file: &str,
    text: &str,
    batch_rows: usize,
    mut emit: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<usize> {
    let mut builder = MessageBatchBuilder::new();
    let mut events = 0;
    let mut rest = text;
    loop {
        rest = skip_chatter(rest);
        if rest.is_empty() {
            break;
        }
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let value = match stream.next() {
            Some(Ok(value)) => value,
            Some(Err(e)) => return Err(record_error(file, events + 1, format!("not JSON: {e}"))),
            None => break,
        };
        rest = &rest[stream.byte_offset()..];
        events += 1;
        let event = event_of(&value).map_err(|problem| record_error(file, events, problem))?;
        append(&mut builder, &event, events);
        if builder.len() >= batch_rows.max(1) {
            emit(builder.finish()?)?;
        }
    }
    if !builder.is_empty() {
        emit(builder.finish()?)?;
    }
    Ok(events)
}

/// One monitor-events event as a one-row message batch, for `hubroute route test --message`.
pub(crate) fn monitor_event_batch(file: &str, value: &Value) -> Result<RecordBatch> {
    let event = event_of(value).map_err(|problem| record_error(file, 1, problem))?;
    let mut builder = MessageBatchBuilder::new();
    append(&mut builder, &event, 1);
    Ok(builder.finish()?)
}

fn record_error(file: &str, record: usize, problem: String) -> Error {
    Error::Input {
        file: file.to_owned(),
        record,
        problem,
    }
}

/// `text` after blank lines and the lines `monitor-events` prints that are not events.
fn skip_chatter(mut text: &str) -> &str {
    loop {
        text = text.trim_start();
        if text.starts_with('{') || text.is_empty() {
            return text;
        }
        match text.find('\n') {
            Some(end) => text = &text[end + 1..],
            None => return "",
        }
    }
}

fn append(builder: &mut MessageBatchBuilder, event: &Event, number: usize) {
    for (name, value) in &event.application {
        builder.append_application_property(
            name,
            value.canonical_string().as_deref(),
            value.type_name(),
        );
    }
    builder.append(&MessageRef {
        event_hub: "",
        partition: "",
        sequence_number: if event.sequence_number == 0 {
            i64::try_from(number).unwrap_or(i64::MAX)
        } else {
            event.sequence_number
        },
        offset: &event.offset,
        enqueued_time_ms: event.enqueued_time_ms,
        partition_key: event.partition_key.as_deref(),
        message_id: event.message_id.as_deref(),
        correlation_id: event.correlation_id.as_deref(),
        user_id: event.user_id.as_deref().map(str::as_bytes),
        content_type: event.content_type.as_deref(),
        content_encoding: event.content_encoding.as_deref(),
        iothub_enqueued_time_ms: event.iothub_enqueued_time_ms,
        connection_device_id: event.device_id.as_deref(),
        connection_module_id: event.module_id.as_deref(),
        connection_auth_method: event.auth_method.as_deref(),
        connection_auth_generation_id: event.auth_generation_id.as_deref(),
        message_source: event.message_source.as_deref(),
        dt_dataschema: event.dt_dataschema.as_deref(),
        dt_subject: event.dt_subject.as_deref(),
        body: &event.body,
        twin: None,
    });
}

/// A string, or the text of a number or boolean (AMQP values the extension printed as they are).
fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Milliseconds since the epoch: an integer (AMQP timestamp) or an RFC 3339 string.
fn millis(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis())
            .or_else(|| s.parse().ok()),
        _ => None,
    }
}

/// The first of `names` present in `map`.
fn any<'v>(map: Option<&'v Map<String, Value>>, names: &[&str]) -> Option<&'v Value> {
    let map = map?;
    names.iter().find_map(|n| map.get(*n))
}

fn event_of(value: &Value) -> Result<Event, String> {
    let event = value
        .get("event")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            "not an `az iot hub monitor-events` event (an object with an `event` member); save \
             the output of `az iot hub monitor-events --properties all --output json`"
                .to_owned()
        })?;
    let annotations = event.get("annotations").and_then(Value::as_object);
    let properties = event.get("properties").and_then(Value::as_object);
    let system = properties
        .and_then(|p| p.get("system"))
        .and_then(Value::as_object);
    let application = properties
        .and_then(|p| p.get("application"))
        .and_then(Value::as_object);
    let annotation = |name: &str| any(annotations, &[name]);
    let system_property = |names: &[&str]| text(any(system, names));
    let body = match event.get("payload") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok(Event {
        sequence_number: annotation("x-opt-sequence-number")
            .and_then(Value::as_i64)
            .unwrap_or_default(),
        offset: text(annotation("x-opt-offset")).unwrap_or_default(),
        enqueued_time_ms: millis(annotation("x-opt-enqueued-time"))
            .or_else(|| millis(annotation("iothub-enqueuedtime")))
            .unwrap_or_default(),
        partition_key: text(annotation("x-opt-partition-key")),
        message_id: system_property(&["message_id", "message-id", "messageId"]),
        correlation_id: system_property(&["correlation_id", "correlation-id", "correlationId"]),
        user_id: system_property(&["user_id", "user-id", "userId"]),
        content_type: system_property(&["content_type", "content-type", "contentType"]),
        content_encoding: system_property(&[
            "content_encoding",
            "content-encoding",
            "contentEncoding",
        ]),
        iothub_enqueued_time_ms: millis(annotation("iothub-enqueuedtime")),
        device_id: non_empty(text(annotation("iothub-connection-device-id")))
            .or_else(|| non_empty(text(event.get("origin")))),
        module_id: non_empty(text(annotation("iothub-connection-module-id")))
            .or_else(|| non_empty(text(event.get("module")))),
        auth_method: text(annotation("iothub-connection-auth-method")),
        auth_generation_id: text(annotation("iothub-connection-auth-generation-id")),
        message_source: text(annotation("iothub-message-source")),
        dt_dataschema: text(annotation("dt-dataschema")),
        dt_subject: text(annotation("dt-subject")),
        application: application
            .into_iter()
            .flatten()
            .map(|(name, value)| (name.clone(), AppPropertyValue::from_json(value)))
            .collect(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use arrow::array::Array as _;
    use hubroute_message::MessageColumns;

    use super::*;

    const OUTPUT: &str = r#"Starting event monitor, use ctrl-c to stop...
{
    "event": {
        "origin": "pump-7",
        "module": "",
        "interface": "",
        "component": "",
        "payload": {
            "temperature": 31.5
        },
        "annotations": {
            "iothub-connection-device-id": "pump-7",
            "iothub-connection-auth-method": "{\"scope\":\"device\",\"type\":\"sas\",\"issuer\":\"iothub\",\"acceptingIpFilterRule\":null}",
            "iothub-connection-auth-generation-id": "638000000000000000",
            "iothub-enqueuedtime": 1700000000123,
            "iothub-message-source": "Telemetry",
            "x-opt-sequence-number": 42,
            "x-opt-offset": "8589934592",
            "x-opt-enqueued-time": 1700000000125
        },
        "properties": {
            "system": {
                "content_type": "application/json",
                "content_encoding": "utf-8",
                "message_id": "m-1"
            },
            "application": {
                "level": "high",
                "count": 3
            }
        }
    }
}
{
    "event": {
        "origin": "pump-8",
        "payload": "plain text",
        "annotations": {"iothub-message-source": "twinChangeEvents"},
        "properties": {"system": {}, "application": {}}
    }
}
Stopping event monitor...
"#;

    #[test]
    fn events_become_rows_with_their_properties() {
        let mut batches = Vec::new();
        let events = read_monitor_events("events.json", OUTPUT, 100, |b| {
            batches.push(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(events, 2);
        let c = MessageColumns::try_new(&batches[0]).unwrap();
        assert_eq!(c.connection_device_id.value(0), "pump-7");
        assert_eq!(c.message_id.value(0), "m-1");
        assert_eq!(c.body.value(0), br#"{"temperature":31.5}"#);
        assert_eq!(c.iothub_enqueued_time.value(0), 1_700_000_000_123);
        assert_eq!(c.sequence_number.value(0), 42);
        assert_eq!(
            c.application_properties_of(0).collect::<Vec<_>>(),
            [("count", Some("3")), ("level", Some("high"))]
        );
        assert_eq!(c.body.value(1), b"plain text");
        assert_eq!(c.message_source.value(1), "twinChangeEvents");
        assert!(c.connection_module_id.is_null(0));
    }

    #[test]
    fn something_else_is_refused_with_the_file_and_record() {
        let text = format!("{OUTPUT}{{\"EnqueuedTimeUtc\": \"x\"}}\n");
        let error = read_monitor_events("events.json", &text, 100, |_| Ok(())).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("events.json: record 3: not an `az iot hub monitor-events` event"),
            "{error}"
        );
        let error = read_monitor_events("e.json", "{\"event\": {} ", 100, |_| Ok(())).unwrap_err();
        assert!(
            error.to_string().starts_with("e.json: record 1: not JSON"),
            "{error}"
        );
    }
}
