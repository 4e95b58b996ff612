//! IoT Hub-style device ingress over HTTP: `POST /devices/{deviceId}/messages/events`.
//!
//! A device-to-cloud message posted here lands on the emulator's event hub exactly as IoT Hub would put
//! it on its built-in endpoint: IoT Hub REST headers become AMQP properties and application properties,
//! the partition is chosen by the device id (a partition key, so one device's messages stay in order),
//! and the `iothub-connection-*`, `iothub-enqueuedtime` and `iothub-message-source` annotations are
//! stamped. Events are appended in-process through [`EventPublisher`] (no AMQP round trip), so the
//! ingress is as fast as the store and can be unit-tested against a recording publisher.

use std::{future::Future, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use fe2o3_amqp_types::{
    messaging::{MessageId, Properties},
    primitives::{Symbol, Timestamp},
};
use hubroute_protocol::annotations;
use serde_amqp::Value;

use crate::{Error, EventToPublish, PublishTarget, PublishedPosition, Result, RunningEmulator};

/// IoT Hub's device-to-cloud message size limit (256 KB).
pub const MAX_D2C_MESSAGE_BYTES: usize = 256 * 1024;
/// Header prefix of application properties in IoT Hub's REST API.
const APP_PROPERTY_PREFIX: &str = "iothub-app-";
/// The auth method IoT Hub stamps for a device authenticated with a SAS token.
const SAS_AUTH_METHOD: &str =
    r#"{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#;
/// IoT Hub's limit on device and module id length.
const MAX_ID_LEN: usize = 128;

/// Appends an event to an event hub without an AMQP round trip. [`RunningEmulator`] implements it;
/// the ingress depends only on this so it can be tested on its own.
pub trait EventPublisher: Send + Sync + 'static {
    /// Appends `event` to `hub`, stamping the Event Hubs `x-opt-*` annotations.
    fn publish(
        &self,
        hub: &str,
        target: PublishTarget,
        event: EventToPublish,
    ) -> Result<PublishedPosition>;
}

impl EventPublisher for RunningEmulator {
    fn publish(
        &self,
        hub: &str,
        target: PublishTarget,
        event: EventToPublish,
    ) -> Result<PublishedPosition> {
        RunningEmulator::publish(self, hub, target, event)
    }
}

/// Serves the device ingress for `hub` on `listener` until `shutdown` completes.
pub async fn serve_ingress(
    listener: tokio::net::TcpListener,
    publisher: Arc<dyn EventPublisher>,
    hub: impl Into<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let address = listener.local_addr().ok();
    axum::serve(listener, router(publisher, hub.into()))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| Error::Ingress {
            problem: format!(
                "HTTP device ingress on {} stopped: {source}",
                address.map_or_else(|| "?".to_owned(), |a| a.to_string())
            ),
        })
}

#[derive(Clone)]
struct IngressState {
    publisher: Arc<dyn EventPublisher>,
    hub: Arc<str>,
}

fn router(publisher: Arc<dyn EventPublisher>, hub: String) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/devices/{device}/messages/events", post(device_message))
        .route(
            "/devices/{device}/modules/{module}/messages/events",
            post(module_message),
        )
        .layer(DefaultBodyLimit::max(MAX_D2C_MESSAGE_BYTES))
        .with_state(IngressState {
            publisher,
            hub: hub.into(),
        })
}

async fn device_message(
    State(state): State<IngressState>,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    accept(&state, &device, None, &headers, body)
}

async fn module_message(
    State(state): State<IngressState>,
    Path((device, module)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    accept(&state, &device, Some(&module), &headers, body)
}

fn accept(
    state: &IngressState,
    device: &str,
    module: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "MessageTooLarge",
                &format!(
                    "the message body exceeds IoT Hub's device-to-cloud limit of 256 KB ({MAX_D2C_MESSAGE_BYTES} bytes); \
                     split it or send a reference to a blob"
                ),
            );
        }
        Err(rejection) => {
            return error_response(
                rejection.status(),
                "ArgumentInvalid",
                &rejection.body_text(),
            );
        }
    };
    let event = match device_event(device, module, headers, body, now_ms()) {
        Ok(event) => event,
        Err(problem) => {
            return error_response(StatusCode::BAD_REQUEST, "ArgumentInvalid", &problem);
        }
    };
    match state.publisher.publish(
        &state.hub,
        PublishTarget::PartitionKey(device.to_owned()),
        event,
    ) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServerError",
            &format!(
                "could not append the message to event hub `{}`: {error}",
                state.hub
            ),
        ),
    }
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"ErrorCode": code, "Message": message})),
    )
        .into_response()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Builds the event IoT Hub would put on its built-in endpoint for this request; `Err` is a message
/// for a 400 response.
fn device_event(
    device: &str,
    module: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
    enqueued_ms: i64,
) -> Result<EventToPublish, String> {
    check_id("device id", device)?;
    if let Some(module) = module {
        check_id("module id", module)?;
    }
    let header = |name: &str| -> Result<Option<String>, String> {
        headers
            .get(name)
            .map(|value| {
                value
                    .to_str()
                    .map(str::to_owned)
                    .map_err(|_| format!("header `{name}` is not visible ASCII"))
            })
            .transpose()
    };
    let content_type = header("iothub-contenttype")?.or(header("content-type")?);
    let content_encoding = header("iothub-contentencoding")?.or(header("content-encoding")?);
    let properties = Properties {
        message_id: header("iothub-messageid")?.map(MessageId::String),
        correlation_id: header("iothub-correlationid")?.map(MessageId::String),
        content_type: content_type.map(Symbol::from),
        content_encoding: content_encoding.map(Symbol::from),
        ..Properties::default()
    };
    let mut application_properties = Vec::new();
    for (name, value) in headers {
        let Some(property) = name.as_str().strip_prefix(APP_PROPERTY_PREFIX) else {
            continue;
        };
        if property.is_empty() {
            return Err(format!(
                "header `{name}` has no property name after `{APP_PROPERTY_PREFIX}`"
            ));
        }
        let value = value
            .to_str()
            .map_err(|_| format!("header `{name}` is not visible ASCII"))?;
        application_properties.push((property.to_owned(), Value::String(value.to_owned())));
    }
    let mut message_annotations = vec![
        (
            annotations::CONNECTION_DEVICE_ID.to_owned(),
            Value::String(device.to_owned()),
        ),
        (
            annotations::CONNECTION_AUTH_METHOD.to_owned(),
            Value::String(SAS_AUTH_METHOD.to_owned()),
        ),
        (
            annotations::CONNECTION_AUTH_GENERATION_ID.to_owned(),
            Value::String(generation_id(device)),
        ),
        (
            annotations::IOTHUB_ENQUEUED_TIME.to_owned(),
            Value::Timestamp(Timestamp::from_milliseconds(enqueued_ms)),
        ),
        (
            annotations::MESSAGE_SOURCE.to_owned(),
            Value::String("Telemetry".to_owned()),
        ),
    ];
    if let Some(module) = module {
        message_annotations.push((
            annotations::CONNECTION_MODULE_ID.to_owned(),
            Value::String(module.to_owned()),
        ));
    }
    Ok(EventToPublish {
        body,
        properties,
        application_properties,
        message_annotations,
    })
}

/// IoT Hub device ids: up to 128 ASCII letters, digits and `- . % _ * ? ! ( ) , : = @ $ '`.
fn check_id(what: &str, id: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-.%_*?!(),:=@$'".contains(c);
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.chars().all(allowed) {
        return Err(format!(
            "{what} `{id}` is invalid: use 1 to {MAX_ID_LEN} ASCII letters, digits or - . % _ * ? ! ( ) , : = @ $ '"
        ));
    }
    Ok(())
}

/// A stable stand-in for the generation id IoT Hub assigns when a device is created (an 18-digit
/// number derived from creation ticks): here derived from the device id with FNV-1a, so it is the
/// same for a device across messages and restarts, and differs between devices.
fn generation_id(device: &str) -> String {
    let hash = device
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("63{:016}", hash % 10_u64.pow(16))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorder {
        events: Mutex<Vec<(String, PublishTarget, EventToPublish)>>,
    }

    impl EventPublisher for Recorder {
        fn publish(
            &self,
            hub: &str,
            target: PublishTarget,
            event: EventToPublish,
        ) -> Result<PublishedPosition> {
            self.events
                .lock()
                .unwrap()
                .push((hub.to_owned(), target, event));
            Ok(PublishedPosition {
                partition: "0".to_owned(),
                sequence_number: 0,
                offset: "0".to_owned(),
                enqueued_time_ms: 0,
            })
        }
    }

    /// Serves the ingress over a real socket for one request, as devices would reach it.
    async fn send(
        recorder: &Arc<Recorder>,
        request: impl FnOnce(&reqwest::Client, String) -> reqwest::RequestBuilder,
    ) -> (StatusCode, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let publisher: Arc<dyn EventPublisher> = Arc::<Recorder>::clone(recorder);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_ingress(listener, publisher, "hub", async {
            stopped.await.ok();
        }));
        let response = request(&reqwest::Client::new(), base).send().await.unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let text = response.text().await.unwrap();
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        (status, text)
    }

    async fn post(
        recorder: &Arc<Recorder>,
        uri: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, String) {
        send(recorder, |client, base| {
            let mut request = client.post(format!("{base}{uri}")).body(body);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request
        })
        .await
    }

    fn annotation<'e>(event: &'e EventToPublish, key: &str) -> Option<&'e Value> {
        event
            .message_annotations
            .iter()
            .find_map(|(k, v)| (k == key).then_some(v))
    }

    #[tokio::test]
    async fn a_device_message_is_stamped_like_the_iot_hub_built_in_endpoint() {
        let recorder = Arc::new(Recorder::default());
        let (status, _) = post(
            &recorder,
            "/devices/dev-1/messages/events?api-version=2021-04-12",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "utf-8"),
                ("iothub-messageid", "m-1"),
                ("iothub-correlationid", "c-1"),
                ("iothub-app-severity", "high"),
                ("iothub-app-processingPath", "hot"),
            ],
            br#"{"temperature":21.5}"#.to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let events = recorder.events.lock().unwrap();
        let (hub, target, event) = &events[0];
        assert_eq!(hub, "hub");
        assert!(matches!(target, PublishTarget::PartitionKey(key) if key == "dev-1"));
        assert_eq!(&event.body[..], br#"{"temperature":21.5}"#);
        assert_eq!(
            event.properties.message_id,
            Some(MessageId::String("m-1".into()))
        );
        assert_eq!(
            event.properties.correlation_id,
            Some(MessageId::String("c-1".into()))
        );
        assert_eq!(
            event.properties.content_type,
            Some(Symbol::from("application/json"))
        );
        assert_eq!(
            event.properties.content_encoding,
            Some(Symbol::from("utf-8"))
        );
        // HTTP header names are case-insensitive and arrive lower-cased, as in IoT Hub.
        assert_eq!(
            event.application_properties,
            [
                ("severity".to_owned(), Value::String("high".into())),
                ("processingpath".to_owned(), Value::String("hot".into())),
            ]
        );
        let string = |key| match annotation(event, key) {
            Some(Value::String(s)) => s.clone(),
            other => panic!("{key}: {other:?}"),
        };
        assert_eq!(string(annotations::CONNECTION_DEVICE_ID), "dev-1");
        assert_eq!(string(annotations::CONNECTION_AUTH_METHOD), SAS_AUTH_METHOD);
        assert_eq!(string(annotations::MESSAGE_SOURCE), "Telemetry");
        assert_eq!(
            string(annotations::CONNECTION_AUTH_GENERATION_ID),
            generation_id("dev-1")
        );
        assert!(matches!(
            annotation(event, annotations::IOTHUB_ENQUEUED_TIME),
            Some(Value::Timestamp(t)) if t.milliseconds() > 1_600_000_000_000
        ));
        assert_eq!(annotation(event, annotations::CONNECTION_MODULE_ID), None);
    }

    #[tokio::test]
    async fn iothub_content_headers_win_and_modules_are_stamped() {
        let recorder = Arc::new(Recorder::default());
        let (status, _) = post(
            &recorder,
            "/devices/dev-2/modules/filter/messages/events",
            &[
                ("content-type", "text/plain"),
                ("iothub-contenttype", "application/json"),
                ("iothub-contentencoding", "utf-16"),
            ],
            b"{}".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let events = recorder.events.lock().unwrap();
        let event = &events[0].2;
        assert_eq!(
            event.properties.content_type,
            Some(Symbol::from("application/json"))
        );
        assert_eq!(
            event.properties.content_encoding,
            Some(Symbol::from("utf-16"))
        );
        assert_eq!(
            annotation(event, annotations::CONNECTION_MODULE_ID),
            Some(&Value::String("filter".into()))
        );
    }

    #[tokio::test]
    async fn bad_requests_are_refused_with_a_json_reason() {
        let too_big = vec![b'x'; MAX_D2C_MESSAGE_BYTES + 1];
        let long_id = format!("/devices/{}/messages/events", "d".repeat(129));
        // (case, URI, headers, body, expected status, expected text in the JSON `Message`)
        type Case<'a> = (
            &'a str,
            &'a str,
            Vec<(&'a str, &'a str)>,
            Vec<u8>,
            StatusCode,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            (
                "over 256 KB",
                "/devices/d/messages/events",
                vec![],
                too_big,
                StatusCode::PAYLOAD_TOO_LARGE,
                "256",
            ),
            (
                "device id with a space",
                "/devices/a%20b/messages/events",
                vec![],
                b"{}".to_vec(),
                StatusCode::BAD_REQUEST,
                "device id `a b` is invalid",
            ),
            (
                "device id too long",
                &long_id,
                vec![],
                b"{}".to_vec(),
                StatusCode::BAD_REQUEST,
                "1 to 128",
            ),
            (
                "empty app property name",
                "/devices/d/messages/events",
                vec![("iothub-app-", "x")],
                b"{}".to_vec(),
                StatusCode::BAD_REQUEST,
                "no property name",
            ),
        ];
        for (name, uri, headers, body, expected_status, expected_text) in cases {
            let recorder = Arc::new(Recorder::default());
            let (status, text) = post(&recorder, uri, &headers, body).await;
            assert_eq!(status, expected_status, "{name}: {text}");
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(
                json["Message"].as_str().unwrap().contains(expected_text),
                "{name}: {text}"
            );
            assert!(recorder.events.lock().unwrap().is_empty(), "{name}");
        }
    }

    #[tokio::test]
    async fn healthz_answers_ok() {
        let recorder = Arc::new(Recorder::default());
        let (status, text) = send(&recorder, |client, base| {
            client.get(format!("{base}/healthz"))
        })
        .await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "ok"));
    }

    #[test]
    fn generation_ids_are_stable_and_per_device() {
        assert_eq!(generation_id("a"), generation_id("a"));
        assert_ne!(generation_id("a"), generation_id("b"));
        assert_eq!(generation_id("a").len(), 18);
    }
}
