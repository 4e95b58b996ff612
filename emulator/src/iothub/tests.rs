//! Tests of the IoT hub over HTTP: policy rights, the events changes emit (shapes per reference §3),
//! the twin query's paging headers, and injected faults. The official `azure-iot-hub` SDK is the
//! judge of fidelity in `tests/e2e/twins.rs`.

use std::time::Duration;

use fe2o3_amqp_types::messaging::MessageId;
use hubroute_protocol::IotHubConnectionString;
use serde_json::json;

use super::testing::TestHub;
use super::*;

fn app(event: &EventToPublish, name: &str) -> Option<String> {
    event
        .application_properties
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| match v {
            Value::String(s) => s.clone(),
            other => format!("{other:?}"),
        })
}

fn annotation(event: &EventToPublish, name: &str) -> Option<Value> {
    event
        .message_annotations
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

fn body(event: &EventToPublish) -> Json {
    serde_json::from_slice(&event.body).unwrap()
}

impl TestHub {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        json_body: Option<Json>,
    ) -> (u16, Json) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base_url))
            .query(&[("api-version", iothub::API_VERSION)])
            .header("authorization", token);
        if let Some(body) = json_body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Json::Null))
    }
}

#[tokio::test]
async fn policies_grant_exactly_their_rights() {
    let hub = TestHub::start(IotHubConfig::new("hub")).await;
    hub.register("dev-1", None).await;
    // (policy, method, path, body, expected status)
    let cases: Vec<(&str, reqwest::Method, &str, Option<Json>, u16)> = vec![
        (
            "registryRead",
            reqwest::Method::GET,
            "/devices/dev-1",
            None,
            200,
        ),
        (
            "registryRead",
            reqwest::Method::PUT,
            "/devices/dev-2",
            Some(json!({})),
            401,
        ),
        (
            "registryReadWrite",
            reqwest::Method::PUT,
            "/devices/dev-2",
            Some(json!({})),
            200,
        ),
        (
            "registryReadWrite",
            reqwest::Method::GET,
            "/twins/dev-1",
            None,
            401,
        ),
        ("service", reqwest::Method::GET, "/twins/dev-1", None, 200),
        ("service", reqwest::Method::GET, "/devices/dev-1", None, 401),
        (
            "service",
            reqwest::Method::POST,
            "/devices/query",
            Some(json!({"query": "SELECT * FROM devices"})),
            200,
        ),
        ("device", reqwest::Method::GET, "/twins/dev-1", None, 401),
        (
            "iothubowner",
            reqwest::Method::DELETE,
            "/devices/dev-2",
            None,
            204,
        ),
    ];
    for (policy, method, path, body, expected) in cases {
        let (status, reply) = hub
            .send(method.clone(), path, &hub.policy_token(policy), body)
            .await;
        assert_eq!(status, expected, "{policy} {method} {path}: {reply}");
    }
    let tampered = hub.policy_token("service").replace("sig=", "sig=x");
    let (status, reply) = hub
        .send(reqwest::Method::GET, "/twins/dev-1", &tampered, None)
        .await;
    assert_eq!(status, 401, "{reply}");
    assert!(
        reply["Message"]
            .as_str()
            .unwrap()
            .starts_with("ErrorCode:IotHubUnauthorizedAccess;")
    );
}

#[tokio::test]
async fn registry_changes_emit_lifecycle_and_twin_events_shaped_as_iot_hub_does() {
    let hub = TestHub::start(IotHubConfig::new("my-hub")).await;
    let owner = hub.policy_token("iothubowner");
    let (status, device) = hub
        .send(
            reqwest::Method::PUT,
            "/devices/dev-1",
            &owner,
            Some(json!({"deviceId": "dev-1"})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        !device["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    let (status, _) = hub
        .send(
            reqwest::Method::PUT,
            "/devices/dev-1/modules/filter",
            &owner,
            Some(json!({"moduleId": "filter"})),
        )
        .await;
    assert_eq!(status, 201, "a new module is 201");
    let (status, twin) = hub
        .send(
            reqwest::Method::PATCH,
            "/twins/dev-1",
            &owner,
            Some(json!({"tags": {"site": "plant-3"}})),
        )
        .await;
    assert_eq!(
        (status, twin["tags"]["site"].as_str()),
        (200, Some("plant-3"))
    );
    let (status, _) = hub
        .send(
            reqwest::Method::PATCH,
            "/twins/dev-1/modules/filter",
            &owner,
            Some(json!({"properties": {"desired": {"threshold": 5}}})),
        )
        .await;
    assert_eq!(status, 200);
    let device_token =
        IotHubConnectionString::parse(&hub.hub.device_connection_string("dev-1", None).unwrap())
            .unwrap()
            .token(chrono::Utc::now().timestamp() + 60)
            .unwrap();
    let (status, _) = hub
        .send(
            reqwest::Method::PATCH,
            "/twins/dev-1/properties/reported",
            &device_token,
            Some(json!({"fw": "2.0"})),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = hub
        .send(reqwest::Method::DELETE, "/devices/dev-1", &owner, None)
        .await;
    assert_eq!(status, 204);

    let events = hub.take_events();
    // (message source, schema, opType, module, body check)
    let expected = [
        (
            "deviceLifecycleEvents",
            "deviceLifecycleNotification",
            "createDeviceIdentity",
            None,
        ),
        (
            "deviceLifecycleEvents",
            "deviceLifecycleNotification",
            "createDeviceIdentity",
            Some("filter"),
        ),
        (
            "twinChangeEvents",
            "twinChangeNotification",
            "updateTwin",
            None,
        ),
        (
            "twinChangeEvents",
            "twinChangeNotification",
            "updateTwin",
            Some("filter"),
        ),
        (
            "twinChangeEvents",
            "twinChangeNotification",
            "updateTwin",
            None,
        ),
        (
            "deviceLifecycleEvents",
            "deviceLifecycleNotification",
            "deleteDeviceIdentity",
            None,
        ),
    ];
    assert_eq!(events.len(), expected.len());
    for ((hub_name, target, event), (source, schema, op, module)) in events.iter().zip(expected) {
        assert_eq!(hub_name, "my-hub");
        assert!(
            matches!(target, PublishTarget::PartitionKey(key) if key == "dev-1"),
            "device's partition"
        );
        assert_eq!(
            annotation(event, annotations::MESSAGE_SOURCE),
            Some(Value::String(source.to_owned()))
        );
        assert_eq!(
            annotation(event, annotations::CONNECTION_DEVICE_ID),
            Some(Value::String("dev-1".to_owned()))
        );
        assert_eq!(
            annotation(event, annotations::CONNECTION_MODULE_ID),
            module.map(|m| Value::String(m.to_owned()))
        );
        assert!(matches!(
            annotation(event, annotations::IOTHUB_ENQUEUED_TIME),
            Some(Value::Timestamp(_))
        ));
        assert_eq!(app(event, "hubName").as_deref(), Some("my-hub"));
        assert_eq!(app(event, "deviceId").as_deref(), Some("dev-1"));
        assert_eq!(app(event, "moduleId").as_deref(), module);
        assert_eq!(app(event, "iothub-message-schema").as_deref(), Some(schema));
        assert_eq!(app(event, "opType").as_deref(), Some(op));
        assert!(app(event, "operationTimestamp").unwrap().ends_with('Z'));
        assert_eq!(
            event.properties.content_type.as_ref().map(|s| s.0.as_str()),
            Some("application/json")
        );
        assert_eq!(
            event
                .properties
                .content_encoding
                .as_ref()
                .map(|s| s.0.as_str()),
            Some("utf-8")
        );
        assert_eq!(
            event.properties.user_id.as_ref().map(|b| b.to_vec()),
            Some(b"my-hub".to_vec())
        );
        assert!(matches!(
            event.properties.correlation_id,
            Some(MessageId::String(_))
        ));
    }
    let created = body(&events[0].2);
    assert_eq!(
        (created["deviceId"].as_str(), created["version"].as_i64()),
        (Some("dev-1"), Some(1))
    );
    assert_eq!(created["properties"]["desired"]["$version"], 1);
    let tags = body(&events[2].2);
    assert_eq!(tags, json!({"version": 2, "tags": {"site": "plant-3"}}));
    let desired = body(&events[3].2);
    assert_eq!(desired["properties"]["desired"]["threshold"], 5);
    assert_eq!(
        desired["properties"]["desired"]["$metadata"]["threshold"]["$lastUpdatedVersion"],
        2
    );
    let reported = body(&events[4].2);
    assert_eq!(
        (
            reported["version"].as_i64(),
            &reported["properties"]["reported"]["fw"]
        ),
        (Some(3), &json!("2.0"))
    );
    assert_eq!(
        body(&events[5].2)["tags"]["site"],
        "plant-3",
        "the deleted twin"
    );
}

#[tokio::test]
async fn deleting_a_module_drops_only_its_twin_and_emits_its_lifecycle_event() {
    let hub = TestHub::start(IotHubConfig::new("hub")).await;
    hub.register("dev-1", None).await;
    hub.register("dev-1", Some("filter")).await;
    hub.register("dev-1", Some("other")).await;
    hub.take_events();
    let owner = hub.policy_token("iothubowner");
    let delete_filter = async || {
        hub.send(
            reqwest::Method::DELETE,
            "/devices/dev-1/modules/filter",
            &owner,
            None,
        )
        .await
    };
    let (status, reply) = delete_filter().await;
    assert_eq!(status, 204, "{reply}");

    let events = hub.take_events();
    assert_eq!(events.len(), 1);
    let (_, target, event) = &events[0];
    assert!(matches!(target, PublishTarget::PartitionKey(key) if key == "dev-1"));
    assert_eq!(
        annotation(event, annotations::MESSAGE_SOURCE),
        Some(Value::String("deviceLifecycleEvents".to_owned()))
    );
    assert_eq!(
        annotation(event, annotations::CONNECTION_MODULE_ID),
        Some(Value::String("filter".to_owned()))
    );
    assert_eq!(
        app(event, "opType").as_deref(),
        Some("deleteDeviceIdentity")
    );
    assert_eq!(app(event, "moduleId").as_deref(), Some("filter"));
    assert_eq!(
        body(event)["moduleId"],
        "filter",
        "the deleted module's twin"
    );

    for (path, expected) in [
        ("/twins/dev-1/modules/filter", 404),
        ("/devices/dev-1/modules/filter", 404),
        ("/twins/dev-1/modules/other", 200),
        ("/twins/dev-1", 200),
    ] {
        let (status, reply) = hub.send(reqwest::Method::GET, path, &owner, None).await;
        assert_eq!(status, expected, "{path}: {reply}");
    }
    let (status, modules) = hub
        .send(
            reqwest::Method::POST,
            "/devices/query",
            &owner,
            Some(json!({"query": "SELECT * FROM devices.modules"})),
        )
        .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = modules
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["moduleId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["other"]);
    let (status, _) = delete_filter().await;
    assert_eq!(status, 404, "deleted once");
}

#[tokio::test]
async fn each_kind_of_event_can_be_turned_off_as_a_hub_without_that_route() {
    for (twin_change_events, lifecycle_events, expected) in [
        (false, true, vec!["deviceLifecycleEvents"]),
        (true, false, vec!["twinChangeEvents"]),
        (false, false, vec![]),
    ] {
        let hub = TestHub::start(IotHubConfig {
            twin_change_events,
            lifecycle_events,
            ..IotHubConfig::new("hub")
        })
        .await;
        hub.register("d", None).await;
        let owner = hub.policy_token("iothubowner");
        hub.send(
            reqwest::Method::PATCH,
            "/twins/d",
            &owner,
            Some(json!({"tags": {"a": 1}})),
        )
        .await;
        let sources: Vec<Value> = hub
            .take_events()
            .iter()
            .filter_map(|(_, _, e)| annotation(e, annotations::MESSAGE_SOURCE))
            .collect();
        let expected: Vec<Value> = expected
            .into_iter()
            .map(|s| Value::String(s.to_owned()))
            .collect();
        assert_eq!(sources, expected);
    }
}

#[tokio::test]
async fn the_twin_query_pages_with_continuation_headers() {
    let hub = TestHub::start(IotHubConfig::new("hub")).await;
    for n in 0..5 {
        hub.register(&format!("dev-{n}"), None).await;
    }
    let token = hub.policy_token("service");
    let mut continuation: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let mut request = hub
            .client
            .post(format!(
                "{}/devices/query?api-version=2021-04-12",
                hub.base_url
            ))
            .header("authorization", &token)
            .header("x-ms-max-item-count", "2")
            .json(&json!({"query": "select *   from DEVICES"}));
        if let Some(token) = &continuation {
            request = request.header("x-ms-continuation", token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-ms-item-type"], "twin");
        let next = response.headers()["x-ms-continuation"]
            .to_str()
            .unwrap()
            .to_owned();
        let items: Vec<Json> = response.json().await.unwrap();
        pages.push(items.len());
        if next.is_empty() {
            break;
        }
        continuation = Some(next);
    }
    assert_eq!(pages, [2, 2, 1]);
    assert_eq!(hub.hub.query_requests(), 3);
    let (status, reply) = hub
        .send(
            reqwest::Method::POST,
            "/devices/query",
            &token,
            Some(json!({"query": "SELECT deviceId FROM devices"})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        reply["Message"]
            .as_str()
            .unwrap()
            .contains("SELECT * FROM devices")
    );
}

#[tokio::test]
async fn injected_faults_answer_503_and_429_with_retry_after() {
    let hub = TestHub::start(IotHubConfig::new("hub")).await;
    let token = hub.policy_token("service");
    let query = || {
        hub.client
            .post(format!("{}/devices/query", hub.base_url))
            .header("authorization", &token)
            .json(&json!({"query": "SELECT * FROM devices"}))
            .send()
    };
    hub.hub.inject_fault(ServiceFault::Throttle {
        requests: 1,
        retry_after: Duration::from_secs(3),
    });
    let throttled = query().await.unwrap();
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "3");
    assert_eq!(query().await.unwrap().status(), 200);
    hub.hub
        .inject_fault(ServiceFault::UnavailableFor(Duration::from_millis(300)));
    assert_eq!(query().await.unwrap().status(), 503);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(query().await.unwrap().status(), 200);
}
