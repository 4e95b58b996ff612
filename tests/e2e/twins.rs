//! End-to-end tests of `$twin` routing against the emulator playing an IoT hub: devices registered
//! with twin tags through IoT Hub's service API, IoT Hub-stamped telemetry from the device endpoint,
//! the engine's twin store loading by the twin query and following the twin change and lifecycle
//! events in the stream, the periodic full query on a hub that routes no such events, its snapshot
//! across restarts (fresh, corrupt, stale: the warnings are captured), and its behaviour when the
//! service API fails.
//! The official `azure-iot-hub` Python SDK judges the emulator's service API over HTTPS.
//!
//! Expected routing is computed independently from the simulated fleet's twins
//! ([`simulated_twin`]: site `plant-{d % 7 + 1}`, `sendFrequency` `5s` for even devices).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hubroute_emulator::simulate::{
    Rate, Simulation, SimulationConfig, SimulationTarget, StopAfter, TelemetryGenerator,
    simulated_twin,
};
use hubroute_emulator::{
    Emulator, EmulatorConfig, EventPublisher, IotHub, IotHubConfig, RunningEmulator, ServiceFault,
    serve_http,
};
use hubroute_engine::config::LoadedConfig;
use hubroute_engine::pipeline::RunningEngine;
use hubroute_protocol::IotHubConnectionString;
use tokio_util::sync::CancellationToken;

use crate::support::{EmulatorProcess, capture_warnings, run_python, token, warnings_containing};

/// The emulator, its IoT hub served on `127.0.0.1:0`, and webhook endpoints recording what the
/// engine delivers to each.
struct Harness {
    emulator: Arc<RunningEmulator>,
    hub: Arc<IotHub>,
    /// Base URL of the hub's HTTP API.
    base_url: String,
    owner: IotHubConnectionString,
    hooks: Hooks,
    stop: CancellationToken,
    dir: tempfile::TempDir,
}

/// Webhook endpoints: `POST /{endpoint}` records every message, by endpoint name.
#[derive(Clone, Default)]
struct Hooks {
    addr: Option<SocketAddr>,
    received: Arc<Mutex<BTreeMap<String, Vec<serde_json::Value>>>>,
}

impl Hooks {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hooks = Self {
            addr: Some(listener.local_addr().unwrap()),
            received: Arc::default(),
        };
        let received = Arc::clone(&hooks.received);
        let app = axum::Router::new().route(
            "/{endpoint}",
            axum::routing::post(
                move |axum::extract::Path(endpoint): axum::extract::Path<String>,
                      body: axum::body::Bytes| {
                    let received = Arc::clone(&received);
                    async move {
                        let events: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
                        received
                            .lock()
                            .unwrap()
                            .entry(endpoint)
                            .or_default()
                            .extend(events);
                        axum::http::StatusCode::OK
                    }
                },
            ),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        hooks
    }

    fn url(&self, endpoint: &str) -> String {
        format!("http://{}/{endpoint}", self.addr.unwrap())
    }

    /// Message ids delivered to `endpoint` (twin and lifecycle events have none and are skipped).
    fn ids(&self, endpoint: &str) -> BTreeSet<String> {
        self.messages(endpoint)
            .iter()
            .filter_map(|m| {
                m["systemProperties"]["messageId"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    fn messages(&self, endpoint: &str) -> Vec<serde_json::Value> {
        self.received
            .lock()
            .unwrap()
            .get(endpoint)
            .cloned()
            .unwrap_or_default()
    }
}

impl Harness {
    async fn start() -> Self {
        Self::with(IotHubConfig::new("hub")).await
    }

    async fn with(config: IotHubConfig) -> Self {
        let emulator = Arc::new(
            Emulator::start(EmulatorConfig {
                amqp_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..EmulatorConfig::default()
            })
            .await
            .expect("the emulator starts"),
        );
        let publisher: Arc<dyn EventPublisher> = Arc::clone(&emulator) as Arc<dyn EventPublisher>;
        let hub = IotHub::new(config, publisher);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(serve_http(
            listener,
            Arc::clone(&hub),
            None,
            stop.clone().cancelled_owned(),
        ));
        while hub.host_count() == 0 {
            tokio::task::yield_now().await;
        }
        let owner =
            IotHubConnectionString::parse(&hub.service_connection_string().unwrap()).unwrap();
        Self {
            emulator,
            hub,
            base_url,
            owner,
            hooks: Hooks::start().await,
            stop,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Registers `devices` simulated devices with their twins and sends `events` messages (seed 3).
    async fn simulate(&self, devices: u32, events: u64) {
        let report = Simulation::new(SimulationConfig {
            target: SimulationTarget::IotHub {
                service: self.owner.clone(),
                tls_ca_file: None,
                report_every: 0,
            },
            devices: NonZeroU32::new(devices).unwrap(),
            rate: Rate::Max,
            stop: StopAfter::Events(events),
            seed: 3,
            max_in_flight: 64,
            mix: Default::default(),
        })
        .run()
        .await
        .expect("the simulation runs");
        assert_eq!((report.sent, report.errors), (events, 0));
    }

    /// `(method, path)` of the service API, signed with `iothubowner`.
    async fn service(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let mut request = reqwest::Client::new()
            .request(
                method.clone(),
                format!("{}{path}?api-version=2021-04-12", self.base_url),
            )
            .header("authorization", token(&self.owner));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// Sends one message from each of the first `devices` devices (ids `{round}-{device}`) while
    /// the engine is down, then starts it (default twins settings) and waits until it has routed
    /// them.
    async fn restart_after_round(&self, devices: u32, round: &str) -> RunningEngine {
        for device in 0..devices {
            self.send(
                &format!("device-{device:05}"),
                None,
                &format!("{round}-{device}"),
            )
            .await;
        }
        let engine = RunningEngine::start(self.config(""))
            .await
            .expect("the engine restarts");
        wait_routed(&engine, u64::from(devices), Duration::from_secs(60)).await;
        engine
    }

    /// The ids of round `round` the plant-3 webhook received.
    fn plant3_of_round(&self, round: &str) -> BTreeSet<String> {
        let prefix = format!("{round}-");
        self.hooks
            .ids("plant3")
            .into_iter()
            .filter(|id| id.starts_with(&prefix))
            .collect()
    }

    /// Sends one telemetry message as `device` (or its `module`) with its own key.
    async fn send(&self, device: &str, module: Option<&str>, message_id: &str) {
        let credentials = IotHubConnectionString::parse(
            &self.hub.device_connection_string(device, module).unwrap(),
        )
        .unwrap();
        let path = match module {
            Some(module) => format!("/devices/{device}/modules/{module}/messages/events"),
            None => format!("/devices/{device}/messages/events"),
        };
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.base_url))
            .header("authorization", token(&credentials))
            .header("content-type", "application/json")
            .header("content-encoding", "utf-8")
            .header("iothub-messageid", message_id)
            .body(r#"{"temperature": 20}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            204,
            "{device}: {}",
            response.text().await.unwrap()
        );
    }

    /// The engine configuration: routes by twin tag, desired property and module twin, and
    /// enrichments from every twin section, into the webhook endpoints.
    fn config(&self, extra_twins: &str) -> LoadedConfig {
        let dir = self.dir.path().display();
        let service = self.hub.connection_string("service").unwrap();
        let hook = |name: &str| {
            format!(
                "[[endpoints]]\nsink = {{ type = \"webhook\", name = \"{name}\", url = \"{}\", linger = \"10ms\" }}\n",
                self.hooks.url(name)
            )
        };
        let endpoints: String = ROUTES
            .iter()
            .map(|(_, _, endpoint)| hook(endpoint))
            .collect();
        let routes: String = ROUTES
            .iter()
            .map(|(name, condition, endpoint)| {
                format!(
                    "[[routes]]\nname = \"{name}\"\ncondition = \"{condition}\"\nendpoint = \"{endpoint}\"\n\n"
                )
            })
            .collect();
        let text = format!(
            r#"
hub_name = "twin-hub"

[source]
connection_string = "{source}"
batch_max_rows = 64
batch_linger = "10ms"

[checkpoint]
dir = "{dir}/checkpoints"
interval = "200ms"

[twins]
service_connection_string = "{service}"
snapshot_interval = "1s"
{extra_twins}

[dead_letters]
store = {{ kind = "local", root = "{dir}" }}

[service]
listen = "127.0.0.1:0"

{endpoints}
{routes}
[[enrichments]]
key = "site"
value = "$twin.tags.site"
endpoints = ["all"]

[[enrichments]]
key = "frequency"
value = "$twin.properties.desired.telemetryConfig.sendFrequency"
endpoints = ["all"]

[[enrichments]]
key = "firmware"
value = "$twin.properties.reported.firmware.version"
endpoints = ["all"]

[[enrichments]]
key = "floor"
value = "$twin.tags.floor"
endpoints = ["all"]

[[enrichments]]
key = "mode"
value = "$twin.properties.desired.telemetryConfig.mode"
endpoints = ["all"]

[[enrichments]]
key = "channel"
value = "$twin.properties.reported.firmware.channel"
endpoints = ["all"]
"#,
            source = self.emulator.connection_string("hub"),
        );
        let path = self.dir.path().join("hubroute.toml");
        std::fs::write(&path, &text).unwrap();
        LoadedConfig::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The routes of [`Harness::config`]: name, condition and the webhook endpoint each feeds.
const ROUTES: [(&str, &str, &str); 4] = [
    ("all", "true", "all"),
    ("plant-3", "$twin.tags.site = 'plant-3'", "plant3"),
    (
        "fast",
        "$twin.properties.desired.telemetryConfig.sendFrequency = '5s'",
        "fast",
    ),
    (
        "edge-module",
        "$twin.tags.role = 'edge' AND $connectionModuleId = 'filter'",
        "edge",
    ),
];

/// Waits until route `all` matched `device_messages`, every endpoint delivered its route's
/// matches and every routed event is committed.
async fn wait_routed(engine: &RunningEngine, device_messages: u64, timeout: Duration) {
    let started = Instant::now();
    loop {
        let committed: u64 = engine
            .committed_positions()
            .iter()
            .filter_map(|(_, c)| *c)
            .map(|c| u64::try_from(c + 1).unwrap())
            .sum();
        let metrics = engine.metrics();
        // After a restart the committed positions include the earlier runs' events, so they alone
        // do not say that this run's matches reached every endpoint: each endpoint is checked.
        let every_match_delivered = ROUTES.iter().all(|(route, _, endpoint)| {
            metrics.endpoint_delivered(endpoint) >= metrics.route_matched(route)
        });
        let done = metrics.route_matched("all") >= device_messages
            && committed >= metrics.events_routed()
            && every_match_delivered;
        if done {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out: {} of {device_messages} device messages routed, {committed} of {} events committed",
            metrics.route_matched("all"),
            metrics.events_routed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The message ids the simulation sent, by device number.
fn simulated(devices: u32, events: u64) -> Vec<(u32, String)> {
    let mut generator = TelemetryGenerator::new(3, NonZeroU32::new(devices).unwrap());
    (0..events)
        .map(|_| {
            let message = generator.next_message();
            (message.device, message.message_id)
        })
        .collect()
}

fn site_of(device: u32) -> String {
    simulated_twin(device).0["site"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn ids(selected: impl Iterator<Item = String>) -> BTreeSet<String> {
    selected.collect()
}

async fn metrics_text(engine: &RunningEngine) -> String {
    reqwest::get(format!("http://{}/metrics", engine.http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_routes_pick_exactly_the_right_messages_and_follow_changes_mid_stream() {
    const DEVICES: u32 = 50;
    const EVENTS: u64 = 500;
    let harness = Harness::start().await;
    harness.simulate(DEVICES, EVENTS).await;
    // Pages of 7 twins: the engine follows x-ms-continuation through eight pages of devices.
    let engine = RunningEngine::start(harness.config("page_size = 7"))
        .await
        .expect("the engine starts");
    wait_routed(&engine, EVENTS, Duration::from_secs(60)).await;

    // Phase 1: every device's twin came from the twin query.
    assert_eq!(
        harness.hub.query_requests(),
        8 + 1,
        "50 device twins in pages of 7, then one page of (no) module twins"
    );
    let text = metrics_text(&engine).await;
    assert_eq!(
        metric(&text, "hubroute_twins_held"),
        Some(f64::from(DEVICES))
    );
    let sent = simulated(DEVICES, EVENTS);
    let hooks = &harness.hooks;
    assert_eq!(hooks.ids("all").len(), EVENTS as usize);
    assert_eq!(
        hooks.ids("plant3"),
        ids(sent
            .iter()
            .filter(|(d, _)| site_of(*d) == "plant-3")
            .map(|(_, id)| id.clone()))
    );
    assert_eq!(
        hooks.ids("fast"),
        ids(sent
            .iter()
            .filter(|(d, _)| d % 2 == 0)
            .map(|(_, id)| id.clone()))
    );
    for message in hooks.messages("all") {
        let device: u32 = message["systemProperties"]["connectionDeviceId"]
            .as_str()
            .unwrap()
            .trim_start_matches("device-")
            .parse()
            .unwrap();
        let properties = &message["properties"];
        assert_eq!(properties["site"], site_of(device).as_str(), "{message}");
        let frequency = if device.is_multiple_of(2) { "5s" } else { "1m" };
        assert_eq!(properties["frequency"], frequency, "{message}");
        assert_eq!(
            properties["firmware"],
            format!("1.{}.{}", device % 5, device % 11).as_str(),
            "the reported property"
        );
        for (key, literal) in [
            ("floor", "$twin.tags.floor"),
            ("mode", "$twin.properties.desired.telemetryConfig.mode"),
            ("channel", "$twin.properties.reported.firmware.channel"),
        ] {
            assert_eq!(
                properties[key], literal,
                "an absent path stamps its literal: {message}"
            );
        }
    }

    // Phase 2: changes mid-stream. Each device's messages and twin events share a partition, in
    // order: a message before a change sees the old twin, every message after it the new one.
    harness.send("device-00002", None, "p2-before-2").await;
    harness
        .service(
            reqwest::Method::PATCH,
            "/twins/device-00002",
            Some(serde_json::json!({"tags": {"site": "plant-4"}})),
        )
        .await;
    harness
        .service(
            reqwest::Method::PATCH,
            "/twins/device-00005",
            Some(serde_json::json!({"tags": {"site": "plant-3"}})),
        )
        .await;
    harness
        .service(
            reqwest::Method::PATCH,
            "/twins/device-00004",
            Some(serde_json::json!({"properties": {"desired": {"telemetryConfig": {"sendFrequency": "1m"}}}})),
        )
        .await;
    // device-00009 (plant 3) is deleted, and an identity of the same id created again, without tags.
    harness
        .service(reqwest::Method::DELETE, "/devices/device-00009", None)
        .await;
    harness
        .service(
            reqwest::Method::PUT,
            "/devices/device-00009",
            Some(serde_json::json!({"deviceId": "device-00009"})),
        )
        .await;
    // A module of device-00000 with a twin of its own.
    harness
        .service(
            reqwest::Method::PUT,
            "/devices/device-00000/modules/filter",
            Some(serde_json::json!({"moduleId": "filter"})),
        )
        .await;
    harness
        .service(
            reqwest::Method::PATCH,
            "/twins/device-00000/modules/filter",
            Some(serde_json::json!({"tags": {"role": "edge"}})),
        )
        .await;
    let mut phase2 = vec![(2, "p2-before-2".to_owned())];
    for device in 0..DEVICES {
        for k in 0..2 {
            let id = format!("p2-{device}-{k}");
            harness
                .send(&format!("device-{device:05}"), None, &id)
                .await;
            phase2.push((device, id));
        }
    }
    for k in 0..3 {
        harness
            .send("device-00000", Some("filter"), &format!("p2-filter-{k}"))
            .await;
    }
    let total = EVENTS + phase2.len() as u64 + 3;
    wait_routed(&engine, total, Duration::from_secs(60)).await;

    let phase2_ids = |keep: &dyn Fn(u32, &str) -> bool| {
        ids(phase2
            .iter()
            .filter(|(d, id)| keep(*d, id))
            .map(|(_, id)| id.clone()))
    };
    let new_site = |device: u32| match device {
        2 => Some("plant-4".to_owned()),
        5 => Some("plant-3".to_owned()),
        9 => None,
        d => Some(site_of(d)),
    };
    let plant3_now: BTreeSet<String> = hooks
        .ids("plant3")
        .into_iter()
        .filter(|id| id.starts_with("p2-"))
        .collect();
    assert_eq!(
        plant3_now,
        phase2_ids(&|d, id| id == "p2-before-2" || new_site(d).as_deref() == Some("plant-3")),
        "the tag changes and the deletion apply from their events onward"
    );
    let fast_now: BTreeSet<String> = hooks
        .ids("fast")
        .into_iter()
        .filter(|id| id.starts_with("p2-"))
        .collect();
    assert_eq!(
        fast_now,
        phase2_ids(&|d, _| d % 2 == 0 && d != 4),
        "a desired property change applies"
    );
    assert_eq!(
        hooks.ids("edge"),
        (0..3).map(|k| format!("p2-filter-{k}")).collect(),
        "module messages see the module twin; device messages do not"
    );
    let recreated: Vec<serde_json::Value> = hooks
        .messages("all")
        .into_iter()
        .filter(|m| {
            m["systemProperties"]["connectionDeviceId"] == "device-00009"
                && m["systemProperties"]["messageId"]
                    .as_str()
                    .unwrap()
                    .starts_with("p2-")
        })
        .collect();
    assert_eq!(recreated.len(), 2);
    for message in &recreated {
        assert_eq!(
            message["properties"]["site"], "$twin.tags.site",
            "the new twin has no tags"
        );
    }
    let text = metrics_text(&engine).await;
    assert_eq!(
        metric(&text, "hubroute_route_undefined_total{route=\"plant-3\"}"),
        Some(5.0),
        "undefined only for device messages: device-00009's two and the module's three\n{text}"
    );
    assert_eq!(metric(&text, "hubroute_twins_loaded"), Some(1.0));
    assert!(
        metric(&text, "hubroute_twin_patches_applied_total").unwrap() >= 7.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "hubroute_twins_held"),
        Some(f64::from(DEVICES) + 1.0),
        "50 devices and a module"
    );
    engine.shutdown().await.expect("a clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_snapshot_without_querying_and_a_corrupt_or_stale_one_is_queried_again()
 {
    const DEVICES: u32 = 20;
    capture_warnings();
    let started_ms = chrono::Utc::now().timestamp_millis();
    let harness = Harness::start().await;
    harness.simulate(DEVICES, 100).await;
    let engine = RunningEngine::start(harness.config(""))
        .await
        .expect("the engine starts");
    wait_routed(&engine, 100, Duration::from_secs(60)).await;
    engine.shutdown().await.expect("a clean shutdown");
    let queries = harness.hub.query_requests();
    assert_eq!(queries, 2, "one query of devices, one of modules");

    // While the engine is down: a tag changes (its event waits in the stream) and devices send.
    harness
        .service(
            reqwest::Method::PATCH,
            "/twins/device-00003",
            Some(serde_json::json!({"tags": {"site": "plant-3"}})),
        )
        .await;
    let engine = harness.restart_after_round(DEVICES, "r1").await;
    assert_eq!(
        harness.hub.query_requests(),
        queries,
        "the snapshot was loaded, not the query"
    );
    let plant3 = harness.plant3_of_round("r1");
    let expected: BTreeSet<String> = (0..DEVICES)
        .filter(|d| *d == 3 || site_of(*d) == "plant-3")
        .map(|d| format!("r1-{d}"))
        .collect();
    assert_eq!(
        plant3, expected,
        "the snapshot's twins plus the change event after it"
    );
    let text = metrics_text(&engine).await;
    assert_eq!(
        metric(&text, "hubroute_twins_resyncs_total{outcome=\"ok\"}"),
        Some(0.0),
        "restoring is not querying\n{text}"
    );
    let resynced = metric(&text, "hubroute_twins_last_resync_timestamp_seconds")
        .expect("the snapshot's query time");
    let started = Duration::from_millis(u64::try_from(started_ms).unwrap()).as_secs_f64();
    assert!(
        resynced >= started,
        "the first run's query: {resynced} {started}"
    );
    let age = metric(&text, "hubroute_twins_resync_age_seconds").expect("the snapshot's age");
    assert!(
        (0.0..started_ms_elapsed(started_ms)).contains(&age),
        "{age}"
    );
    engine.shutdown().await.expect("a clean shutdown");

    let snapshots: Vec<_> = std::fs::read_dir(harness.dir.path().join("checkpoints/twins"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    let text = std::fs::read_to_string(&snapshots[0]).unwrap();
    std::fs::write(&snapshots[0], text.replacen("plant-", "PLANT-", 1)).unwrap();
    let engine = harness.restart_after_round(DEVICES, "r2").await;
    assert_eq!(
        harness.hub.query_requests(),
        queries + 2,
        "a corrupt snapshot is queried again"
    );
    let snapshot = snapshots[0].display().to_string();
    let corrupt = warnings_containing(&[
        "the twin snapshot is corrupt or unusable",
        "checksum does not match",
        &snapshot,
    ]);
    assert_eq!(corrupt.len(), 1, "{corrupt:?}");
    let plant3 = harness.plant3_of_round("r2");
    assert_eq!(plant3.len(), expected.len(), "{plant3:?}");
    engine.shutdown().await.expect("a clean shutdown");

    // A snapshot whose last full query is older than `refresh` (5 min) is stale. While the engine
    // is down, device-00004 moves to plant 3: the query brings that twin, so its change event,
    // read from the stream after the query, is stale.
    harness
        .service(
            reqwest::Method::PATCH,
            "/twins/device-00004",
            Some(serde_json::json!({"tags": {"site": "plant-3"}})),
        )
        .await;
    let hour_ago = chrono::Utc::now().timestamp_millis() - 3_600_000;
    set_snapshot_query_time(&snapshots[0], hour_ago);
    let engine = harness.restart_after_round(DEVICES, "r3").await;
    assert_eq!(
        harness.hub.query_requests(),
        queries + 4,
        "a stale snapshot is queried again"
    );
    let stale = warnings_containing(&["the twin snapshot is stale", &snapshot]);
    assert_eq!(stale.len(), 1, "{stale:?}");
    let plant3 = harness.plant3_of_round("r3");
    let mut expected_now: BTreeSet<String> =
        expected.iter().map(|id| id.replace("r1-", "r3-")).collect();
    expected_now.insert("r3-4".to_owned());
    assert_eq!(plant3, expected_now, "the queried twins");
    let text = metrics_text(&engine).await;
    assert!(
        metric(&text, "hubroute_twin_patches_stale_total").unwrap() >= 1.0,
        "device-00004's change event is no newer than its queried twin\n{text}"
    );
    assert!(
        metric(&text, "hubroute_twins_last_resync_timestamp_seconds").unwrap() > resynced,
        "the new query's time, not the stale snapshot's\n{text}"
    );
    engine.shutdown().await.expect("a clean shutdown");
}

/// Seconds since `started_ms` (Unix ms).
fn started_ms_elapsed(started_ms: i64) -> f64 {
    Duration::from_millis(
        u64::try_from(chrono::Utc::now().timestamp_millis() - started_ms).unwrap(),
    )
    .as_secs_f64()
}

/// Rewrites the snapshot at `path` as though its last full query had started at `unix_ms`, with
/// its checksum brought up to date (so that only its age makes it unusable).
fn set_snapshot_query_time(path: &Path, unix_ms: i64) {
    use sha2::Digest as _;
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (header, rest) = lines.split_first().unwrap();
    let (trailer, twins) = rest.split_last().unwrap();
    let mut header: serde_json::Value = serde_json::from_str(header).unwrap();
    header["queried_at_ms"] = unix_ms.into();
    let mut content = format!("{header}\n");
    for twin in twins {
        content.push_str(twin);
        content.push('\n');
    }
    let digest: String = sha2::Sha256::digest(content.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut trailer: serde_json::Value = serde_json::from_str(trailer).unwrap();
    trailer["sha256"] = digest.into();
    std::fs::write(path, format!("{content}{trailer}\n")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_api_down_for_ten_seconds_delays_routing_but_loses_nothing() {
    const DEVICES: u32 = 10;
    const EVENTS: u64 = 100;
    let harness = Harness::start().await;
    harness.simulate(DEVICES, EVENTS).await;
    harness
        .hub
        .inject_fault(ServiceFault::UnavailableFor(Duration::from_secs(10)));
    let started = Instant::now();
    let engine = RunningEngine::start(harness.config(""))
        .await
        .expect("the engine starts");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = metrics_text(&engine).await;
    assert_eq!(
        engine.metrics().events_routed(),
        0,
        "routing waits for the twins"
    );
    assert_eq!(metric(&text, "hubroute_twins_loaded"), Some(0.0), "{text}");
    for series in [
        "hubroute_twins_resync_age_seconds",
        "hubroute_twins_last_resync_timestamp_seconds",
    ] {
        assert_eq!(
            metric(&text, series),
            None,
            "no query completed yet\n{text}"
        );
    }
    wait_routed(&engine, EVENTS, Duration::from_secs(90)).await;
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let sent = simulated(DEVICES, EVENTS);
    assert_eq!(
        harness.hooks.ids("all").len(),
        EVENTS as usize,
        "nothing lost"
    );
    assert_eq!(
        harness.hooks.ids("plant3"),
        ids(sent
            .iter()
            .filter(|(d, _)| site_of(*d) == "plant-3")
            .map(|(_, id)| id.clone())),
        "and every message routed with its twin"
    );
    let text = metrics_text(&engine).await;
    assert!(
        metric(
            &text,
            "hubroute_twin_service_requests_total{operation=\"query\",status=\"503\"}"
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{text}"
    );
    let age = metric(&text, "hubroute_twins_resync_age_seconds").expect("loaded");
    assert!(age < 60.0, "{age}\n{text}");
    engine.shutdown().await.expect("a clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_honoured_by_retry_after_and_start_without_twins_routes_at_once() {
    capture_warnings();
    let harness = Harness::start().await;
    harness.simulate(4, 20).await;
    harness.hub.inject_fault(ServiceFault::Throttle {
        requests: 2,
        retry_after: Duration::from_secs(5),
    });
    let started = Instant::now();
    let engine = RunningEngine::start(harness.config(""))
        .await
        .expect("the engine starts");
    wait_routed(&engine, 20, Duration::from_secs(60)).await;
    // Backoff alone would retry after 0.5 s and 1 s; the service asked for 5 s each time.
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        harness.hub.query_requests(),
        4,
        "two throttled, then devices and modules"
    );
    let text = metrics_text(&engine).await;
    assert_eq!(
        metric(
            &text,
            "hubroute_twin_service_requests_total{operation=\"query\",status=\"429\"}"
        ),
        Some(2.0)
    );
    engine.shutdown().await.expect("a clean shutdown");

    // With start_without_twins, a down service API does not hold routing back: $twin is undefined
    // (on a hub that routes no twin change or lifecycle events, which would bring the twins).
    let other = Harness::with(IotHubConfig {
        twin_change_events: false,
        lifecycle_events: false,
        ..IotHubConfig::new("hub")
    })
    .await;
    other.simulate(4, 20).await;
    other
        .hub
        .inject_fault(ServiceFault::UnavailableFor(Duration::from_secs(600)));
    let engine = RunningEngine::start(other.config("start_without_twins = true\nsnapshot = false"))
        .await
        .expect("the engine starts");
    wait_routed(&engine, 20, Duration::from_secs(60)).await;
    assert!(other.hooks.ids("plant3").is_empty());
    let text = metrics_text(&engine).await;
    assert_eq!(metric(&text, "hubroute_twins_loaded"), Some(0.0), "{text}");
    assert_eq!(
        metric(&text, "hubroute_route_undefined_total{route=\"plant-3\"}"),
        Some(20.0)
    );
    assert_eq!(
        metric(&text, "hubroute_twins_resync_age_seconds"),
        None,
        "never loaded\n{text}"
    );
    let warned = warnings_containing(&["start_without_twins is set", "routing WITHOUT twins"]);
    assert_eq!(
        warned.len(),
        1,
        "warned once, not at every retry: {warned:?}"
    );
    engine.shutdown().await.expect("a clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_resync_brings_what_no_event_announced_and_its_age_grows_while_it_fails() {
    const DEVICES: u32 = 4;
    // A hub that routes no twin change or lifecycle events: only the periodic query brings changes.
    let harness = Harness::with(IotHubConfig {
        twin_change_events: false,
        lifecycle_events: false,
        ..IotHubConfig::new("hub")
    })
    .await;
    harness.simulate(DEVICES, 20).await;
    let engine = RunningEngine::start(harness.config("refresh = \"1s\"\nsnapshot = false"))
        .await
        .expect("the engine starts");
    wait_routed(&engine, 20, Duration::from_secs(60)).await;
    let ok = |text: &str| metric(text, "hubroute_twins_resyncs_total{outcome=\"ok\"}").unwrap();
    let first = metrics_text(&engine).await;
    let first_resync = metric(&first, "hubroute_twins_last_resync_timestamp_seconds").unwrap();

    // device-00001 (plant 2) moves to plant 3, device-00002 (plant 3) leaves it, device-00003 is
    // deleted; no event says so.
    for (device, site) in [(1, "plant-3"), (2, "plant-9")] {
        harness
            .service(
                reqwest::Method::PATCH,
                &format!("/twins/device-{device:05}"),
                Some(serde_json::json!({"tags": {"site": site}})),
            )
            .await;
    }
    harness
        .service(reqwest::Method::DELETE, "/devices/device-00003", None)
        .await;
    // Two more completed queries: the second started after the changes.
    let changed = ok(&metrics_text(&engine).await);
    let started = Instant::now();
    let text = loop {
        let text = metrics_text(&engine).await;
        if ok(&text) >= changed + 2.0 {
            break text;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(ok(&text) >= 3.0, "the initial load and two resyncs\n{text}");
    assert_eq!(
        metric(&text, "hubroute_twins_held"),
        Some(f64::from(DEVICES - 1)),
        "the deleted device's twin is dropped\n{text}"
    );
    let resynced = metric(&text, "hubroute_twins_last_resync_timestamp_seconds").unwrap();
    assert!(resynced > first_resync, "{resynced} {first_resync}");
    assert!(
        metric(&text, "hubroute_twins_resync_age_seconds").unwrap() < 5.0,
        "{text}"
    );
    for device in 0..3 {
        harness
            .send(
                &format!("device-{device:05}"),
                None,
                &format!("after-{device}"),
            )
            .await;
    }
    wait_routed(&engine, 23, Duration::from_secs(30)).await;
    let plant3: BTreeSet<String> = harness
        .hooks
        .ids("plant3")
        .into_iter()
        .filter(|id| id.starts_with("after-"))
        .collect();
    assert_eq!(plant3, ids(std::iter::once("after-1".to_owned())));

    // While the service fails, the resync keeps trying, and the age of the twins keeps growing.
    harness
        .hub
        .inject_fault(ServiceFault::UnavailableFor(Duration::from_secs(4)));
    let started = Instant::now();
    loop {
        let text = metrics_text(&engine).await;
        let failed = metric(&text, "hubroute_twins_resyncs_total{outcome=\"failed\"}").unwrap();
        let age = metric(&text, "hubroute_twins_resync_age_seconds").unwrap();
        if failed >= 1.0 && age >= 3.0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failing = ok(&metrics_text(&engine).await);
    let started = Instant::now();
    loop {
        let text = metrics_text(&engine).await;
        if ok(&text) > failing && metric(&text, "hubroute_twins_resync_age_seconds").unwrap() < 3.0
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine.shutdown().await.expect("a clean shutdown");
}

/// A self-signed certificate for `127.0.0.1`, as PEM files in `dir`.
fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
        .expect("a self-signed certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_service_sdk_manages_devices_and_twins_and_the_engine_routes_by_them_over_tls()
{
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let emulator = EmulatorProcess::start(
        &[
            "--partitions",
            "2",
            "--https",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        1,
    );
    let service = &emulator.service_connection_string;
    assert!(
        !service.contains("UseDevelopmentEmulator"),
        "over HTTPS the SDK's string: {service}"
    );
    let stdout = run_python(
        "iothub_registry.py",
        &[service, cert.to_str().unwrap(), "5"],
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect(&stdout);
    assert_eq!(summary["errors"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["stale_etag_status"], 412);
    assert_eq!(summary["deleted_status"], 404);
    assert_eq!(
        summary["query_pages"],
        serde_json::json!([
            ["sdk-device-0", "sdk-device-1"],
            ["sdk-device-2", "sdk-device-3"],
            ["sdk-device-4"]
        ]),
        "the SDK pages the twin query by x-ms-continuation"
    );
    assert_eq!(
        summary["module_query"],
        serde_json::json!([["sdk-device-0", "filter"]])
    );
    for (n, device) in summary["devices"].as_array().unwrap().iter().enumerate() {
        assert_eq!(device["etag_changed"], true);
        assert_eq!(device["version"], 2);
        assert_eq!(
            device["tags"]["site"],
            format!("plant-{}", n % 3 + 1).as_str()
        );
        assert_eq!(device["desired_version"], 2);
    }

    // The engine reads those twins from the same HTTPS API, with the printed string as it is.
    let hooks = Hooks::start().await;
    let text = format!(
        r#"
[source]
connection_string = "{source}"
tls_ca_file = "{cert}"
batch_linger = "10ms"
[checkpoint]
dir = "{dir}/checkpoints"
[twins]
service_connection_string = "{service}"
tls_ca_file = "{cert}"
[service]
listen = "127.0.0.1:0"
[dead_letters]
store = {{ kind = "local", root = "{dir}" }}
[[endpoints]]
sink = {{ type = "webhook", name = "plant2", url = "{url}", linger = "10ms" }}
[[routes]]
name = "plant-2"
condition = "$twin.tags.owner = 'sdk' AND $twin.tags.site = 'plant-2'"
endpoint = "plant2"
"#,
        source = emulator.connection_strings[0],
        cert = cert.display(),
        dir = dir.path().display(),
        url = hooks.url("plant2"),
    );
    let path = dir.path().join("hubroute.toml");
    std::fs::write(&path, &text).unwrap();
    let engine = RunningEngine::start(LoadedConfig::load(&path).unwrap())
        .await
        .expect("the engine starts over TLS");
    let client = reqwest::Client::new();
    for n in 0..4 {
        let device = &summary["devices"][n];
        let credentials = IotHubConnectionString::parse(&format!(
            "HostName=h;DeviceId={};SharedAccessKey={}",
            device["id"].as_str().unwrap(),
            device["primary_key"].as_str().unwrap()
        ))
        .unwrap();
        let mut credentials = credentials;
        credentials.host_name = emulator
            .ingress_url
            .trim_start_matches("http://")
            .to_owned();
        let response = client
            .post(format!(
                "{}/devices/sdk-device-{n}/messages/events",
                emulator.ingress_url
            ))
            .header("authorization", token(&credentials))
            .header("iothub-messageid", format!("sdk-{n}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
    }
    let started = Instant::now();
    while engine.metrics().events_routed() < 4 + 5 + 5 + 1 + 1 + 1 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "routed {}",
            engine.metrics().events_routed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while hooks.ids("plant2").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        hooks.ids("plant2"),
        ["sdk-1".to_owned()].into_iter().collect()
    );
    engine.shutdown().await.expect("a clean shutdown");
}
