//! IoT Hub's device telemetry endpoint over HTTP: `POST /devices/{id}/messages/events` and
//! `POST /devices/{id}/modules/{mid}/messages/events`, authenticated by the device's (or module's)
//! SAS token as IoT Hub authenticates it (see `iothub`).
//!
//! A device-to-cloud message posted here lands on the emulator's event hub exactly as IoT Hub would
//! put it on its built-in endpoint: IoT Hub REST headers become AMQP properties and application
//! properties, the partition is chosen by the device id (a partition key, so one device's messages
//! stay in order), and `iothub-connection-device-id`, `iothub-connection-module-id`,
//! `iothub-connection-auth-method` (device, module or hub scope, by how the request was signed),
//! `iothub-connection-auth-generation-id` (the identity's generation id), `iothub-enqueuedtime`
//! and `iothub-message-source` (`Telemetry`) are stamped. Events are appended in-process through
//! [`EventPublisher`] (no AMQP round trip), so the ingress is as fast as the store and can be
//! unit-tested against a recording publisher.

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use fe2o3_amqp_types::{
    messaging::{MessageId, Properties},
    primitives::{Symbol, Timestamp},
};
use hubroute_protocol::annotations;
use serde_amqp::Value;

use crate::iothub::{DeviceScope, IotHub, check_id, error_response};
use crate::{EventToPublish, PublishTarget, PublishedPosition, Result, RunningEmulator};

/// IoT Hub's device-to-cloud message size limit (256 KB).
pub const MAX_D2C_MESSAGE_BYTES: usize = 256 * 1024;
/// Header prefix of application properties in IoT Hub's REST API.
const APP_PROPERTY_PREFIX: &str = "iothub-app-";

/// Appends an event to an event hub without an AMQP round trip. [`RunningEmulator`] implements it;
/// the IoT hub depends only on this so it can be tested on its own.
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

/// The device telemetry routes, merged into the hub's HTTP API by `iothub::serve_http`.
pub(crate) fn routes() -> Router<Arc<IotHub>> {
    Router::new()
        .route("/devices/{id}/messages/events", post(device_message))
        .route(
            "/devices/{id}/modules/{mid}/messages/events",
            post(module_message),
        )
}

async fn device_message(
    State(hub): State<Arc<IotHub>>,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    accept(&hub, &device, None, &headers, body)
}

async fn module_message(
    State(hub): State<Arc<IotHub>>,
    Path((device, module)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    accept(&hub, &device, Some(&module), &headers, body)
}

fn accept(
    hub: &IotHub,
    device: &str,
    module: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error_response(
                413,
                "MessageTooLarge",
                &format!(
                    "the message body exceeds IoT Hub's device-to-cloud limit of 256 KB ({MAX_D2C_MESSAGE_BYTES} bytes); \
                     split it or send a reference to a blob"
                ),
            );
        }
        Err(rejection) => {
            return error_response(
                rejection.status().as_u16(),
                "ArgumentInvalid",
                &rejection.body_text(),
            );
        }
    };
    if let Err(error) = check_id("device id", device)
        .and_then(|()| module.map_or(Ok(()), |m| check_id("module id", m)))
    {
        return error.into_response();
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let (scope, generation_id) = match hub.authenticate_device(authorization, device, module) {
        Ok(authenticated) => authenticated,
        Err(error) => return error.into_response(),
    };
    let stamp = Stamp {
        device,
        module,
        scope,
        generation_id: &generation_id,
        enqueued_ms: chrono::Utc::now().timestamp_millis(),
    };
    let event = match device_event(&stamp, headers, body) {
        Ok(event) => event,
        Err(problem) => return error_response(400, "ArgumentInvalid", &problem),
    };
    match hub.publish_telemetry(device, event) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error_response(
            500,
            "ServerError",
            &format!(
                "could not append the message to event hub `{}`: {error}",
                hub.name()
            ),
        ),
    }
}

/// What IoT Hub stamps on a device's message.
struct Stamp<'a> {
    device: &'a str,
    module: Option<&'a str>,
    scope: DeviceScope,
    generation_id: &'a str,
    enqueued_ms: i64,
}

/// Builds the event IoT Hub would put on its built-in endpoint for this request; `Err` is a message
/// for a 400 response.
fn device_event(
    stamp: &Stamp<'_>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<EventToPublish, String> {
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
            Value::String(stamp.device.to_owned()),
        ),
        (
            annotations::CONNECTION_AUTH_METHOD.to_owned(),
            Value::String(stamp.scope.auth_method().to_owned()),
        ),
        (
            annotations::CONNECTION_AUTH_GENERATION_ID.to_owned(),
            Value::String(stamp.generation_id.to_owned()),
        ),
        (
            annotations::IOTHUB_ENQUEUED_TIME.to_owned(),
            Value::Timestamp(Timestamp::from_milliseconds(stamp.enqueued_ms)),
        ),
        (
            annotations::MESSAGE_SOURCE.to_owned(),
            Value::String("Telemetry".to_owned()),
        ),
    ];
    if let Some(module) = stamp.module {
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

#[cfg(test)]
mod tests {
    use hubroute_protocol::IotHubConnectionString;

    use super::*;
    use crate::iothub::IotHubConfig;
    use crate::iothub::testing::TestHub;

    async fn post(
        hub: &TestHub,
        uri: &str,
        token: Option<String>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, String) {
        let mut request = hub.client.post(format!("{}{uri}", hub.base_url)).body(body);
        if let Some(token) = token {
            request = request.header("authorization", token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        (status, response.text().await.unwrap())
    }

    fn token(device: &IotHubConnectionString) -> Option<String> {
        Some(device.token(chrono::Utc::now().timestamp() + 600).unwrap())
    }

    fn annotation<'e>(event: &'e EventToPublish, key: &str) -> Option<&'e Value> {
        event
            .message_annotations
            .iter()
            .find_map(|(k, v)| (k == key).then_some(v))
    }

    fn string(event: &EventToPublish, key: &str) -> String {
        match annotation(event, key) {
            Some(Value::String(s)) => s.clone(),
            other => panic!("{key}: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_device_message_is_stamped_like_the_iot_hub_built_in_endpoint() {
        let hub = TestHub::start(IotHubConfig::new("hub")).await;
        let device = hub.register("dev-1", None).await;
        hub.take_events();
        let (status, text) = post(
            &hub,
            "/devices/dev-1/messages/events?api-version=2021-04-12",
            token(&device),
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
        assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
        let events = hub.take_events();
        let (name, target, event) = &events[0];
        assert_eq!(name, "hub");
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
        assert_eq!(string(event, annotations::CONNECTION_DEVICE_ID), "dev-1");
        assert_eq!(
            string(event, annotations::CONNECTION_AUTH_METHOD),
            DeviceScope::Device.auth_method()
        );
        assert_eq!(string(event, annotations::MESSAGE_SOURCE), "Telemetry");
        let generation = string(event, annotations::CONNECTION_AUTH_GENERATION_ID);
        let registered = hub.hub.read(|r| r.get_identity("dev-1", None)).unwrap();
        assert_eq!(registered["generationId"], generation.as_str());
        assert!(matches!(
            annotation(event, annotations::IOTHUB_ENQUEUED_TIME),
            Some(Value::Timestamp(t)) if t.milliseconds() > 1_600_000_000_000
        ));
        assert_eq!(annotation(event, annotations::CONNECTION_MODULE_ID), None);
    }

    #[tokio::test]
    async fn iothub_content_headers_win_and_modules_are_stamped() {
        let hub = TestHub::start(IotHubConfig::new("hub")).await;
        hub.register("dev-2", None).await;
        let module = hub.register("dev-2", Some("filter")).await;
        hub.take_events();
        let (status, text) = post(
            &hub,
            "/devices/dev-2/modules/filter/messages/events",
            token(&module),
            &[
                ("content-type", "text/plain"),
                ("iothub-contenttype", "application/json"),
                ("iothub-contentencoding", "utf-16"),
            ],
            b"{}".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
        let events = hub.take_events();
        let event = &events[0].2;
        assert_eq!(
            event.properties.content_type,
            Some(Symbol::from("application/json"))
        );
        assert_eq!(
            event.properties.content_encoding,
            Some(Symbol::from("utf-16"))
        );
        assert_eq!(string(event, annotations::CONNECTION_MODULE_ID), "filter");
        assert_eq!(
            string(event, annotations::CONNECTION_AUTH_METHOD),
            DeviceScope::Module.auth_method()
        );
    }

    #[tokio::test]
    async fn devices_must_authenticate_with_their_own_key() {
        let hub = TestHub::start(IotHubConfig::new("hub")).await;
        let device = hub.register("dev-1", None).await;
        let other = hub.register("dev-2", None).await;
        let mut wrong_key = device.clone();
        wrong_key.device_key = other.device_key.clone();
        let mut disabled = hub.register("dev-off", None).await;
        let owner = hub.owner();
        let etag = hub.hub.read(|r| r.get_identity("dev-off", None)).unwrap()["etag"]
            .as_str()
            .unwrap()
            .to_owned();
        let response = hub
            .client
            .put(format!("{}/devices/dev-off", hub.base_url))
            .header(
                "authorization",
                owner.token(chrono::Utc::now().timestamp() + 60).unwrap(),
            )
            .header("if-match", format!("\"{etag}\""))
            .json(&serde_json::json!({"deviceId": "dev-off", "status": "disabled"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        disabled.device_id = Some("dev-off".to_owned());
        let device_policy = hub.policy_token("device");
        // (case, URI, token, expected status, expected text)
        let cases: Vec<(&str, &str, Option<String>, StatusCode, &str)> = vec![
            (
                "no token",
                "/devices/dev-1/messages/events",
                None,
                StatusCode::UNAUTHORIZED,
                "no Authorization",
            ),
            (
                "another device's key",
                "/devices/dev-1/messages/events",
                token(&wrong_key),
                StatusCode::UNAUTHORIZED,
                "primary or secondary key",
            ),
            (
                "a token for another device",
                "/devices/dev-2/messages/events",
                token(&device),
                StatusCode::UNAUTHORIZED,
                "does not cover",
            ),
            (
                "an unknown device",
                "/devices/ghost/messages/events",
                token(&device),
                StatusCode::NOT_FOUND,
                "not registered",
            ),
            (
                "a disabled device",
                "/devices/dev-off/messages/events",
                token(&disabled),
                StatusCode::UNAUTHORIZED,
                "disabled",
            ),
            (
                "the service policy",
                "/devices/dev-1/messages/events",
                Some(hub.policy_token("service")),
                StatusCode::UNAUTHORIZED,
                "DeviceConnect",
            ),
        ];
        for (name, uri, token, expected_status, expected_text) in cases {
            let (status, text) = post(&hub, uri, token, &[], b"{}".to_vec()).await;
            assert_eq!(status, expected_status, "{name}: {text}");
            assert!(text.contains(expected_text), "{name}: {text}");
        }
        // A policy with DeviceConnect may send for any device, stamped with hub scope.
        hub.take_events();
        let (status, text) = post(
            &hub,
            "/devices/dev-1/messages/events",
            Some(device_policy),
            &[],
            b"{}".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
        assert_eq!(
            string(&hub.take_events()[0].2, annotations::CONNECTION_AUTH_METHOD),
            DeviceScope::Hub.auth_method()
        );
    }

    #[tokio::test]
    async fn bad_requests_are_refused_with_a_json_reason() {
        let hub = TestHub::start(IotHubConfig::new("hub")).await;
        let device = hub.register("d", None).await;
        hub.take_events();
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
            let (status, text) = post(&hub, uri, token(&device), &headers, body).await;
            assert_eq!(status, expected_status, "{name}: {text}");
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(
                json["Message"].as_str().unwrap().contains(expected_text),
                "{name}: {text}"
            );
            assert!(hub.take_events().is_empty(), "{name}");
        }
    }

    #[tokio::test]
    async fn healthz_answers_ok() {
        let hub = TestHub::start(IotHubConfig::new("hub")).await;
        let response = hub
            .client
            .get(format!("{}/healthz", hub.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "ok");
    }
}
