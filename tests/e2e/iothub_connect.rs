//! End-to-end tests of connecting as a migrating user would: with the IoT hub's own service
//! connection string (followed through the hub's `amqp:link:redirect` to the built-in endpoint),
//! over AMQP over WebSockets, and through HTTP CONNECT proxies, against the emulator.
//!
//! Two relays written here stand in for the network: a transparent one that records how each
//! connection opens (to prove WebSockets are really used), and a CONNECT proxy that records each
//! tunnel's request and can demand credentials.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use fe2o3_amqp::types::messaging::{MessageId, Properties};
use hubroute_emulator::{Emulator, EmulatorConfig, EventToPublish, PublishTarget, RunningEmulator};
use hubroute_engine::checkpoint::FileCheckpointStore;
use hubroute_engine::config::LoadedConfig;
use hubroute_engine::pipeline::RunningEngine;
use hubroute_engine::source::{EventHubSource, SourceConfig, SourceConnectionString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Hook, hubroute, wait_until};

const EVENTS: usize = 200;

async fn emulator() -> RunningEmulator {
    Emulator::start(EmulatorConfig {
        amqp_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..EmulatorConfig::default()
    })
    .await
    .expect("the emulator starts")
}

/// Publishes `EVENTS` JSON events with message ids `m-0`… over the partitions.
fn publish(emulator: &RunningEmulator) -> BTreeSet<String> {
    (0..EVENTS)
        .map(|i| {
            let id = format!("m-{i}");
            emulator
                .publish(
                    "hub",
                    PublishTarget::RoundRobin,
                    EventToPublish {
                        body: Bytes::from(format!("{{\"n\":{i}}}")),
                        properties: Properties {
                            message_id: Some(MessageId::String(id.clone())),
                            content_type: Some("application/json".into()),
                            content_encoding: Some("utf-8".into()),
                            ..Properties::default()
                        },
                        ..EventToPublish::default()
                    },
                )
                .unwrap();
            id
        })
        .collect()
}

/// Everything to one webhook; `source` holds extra `[source]` lines.
fn config(dir: &Path, connection_string: &str, source: &str, hook: &Hook) -> String {
    format!(
        r#"
[source]
connection_string = "{connection_string}"
batch_linger = "5ms"
{source}

[checkpoint]
dir = "{dir}/checkpoints"
interval = "100ms"

[service]
listen = "127.0.0.1:0"
lag_interval = "200ms"

[[endpoints]]
sink = {{ type = "webhook", name = "hook", url = "{url}", linger = "5ms" }}

[[routes]]
name = "everything"
endpoint = "hook"
"#,
        dir = dir.display(),
        url = hook.url(),
    )
}

/// Runs the engine on `text` until the webhook has every published event.
async fn route_everything(dir: &Path, text: &str, hook: &Hook, expected: &BTreeSet<String>) {
    let path = dir.join("hubroute.toml");
    std::fs::write(&path, text).unwrap();
    let loaded = LoadedConfig::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let engine = RunningEngine::start(loaded)
        .await
        .expect("the engine starts");
    wait_until(
        "every event reached the webhook",
        Duration::from_secs(60),
        || hook.message_ids().len() >= expected.len(),
    )
    .await;
    // Lag polling goes over the same transport: let it run once.
    tokio::time::sleep(Duration::from_millis(400)).await;
    engine.shutdown().await.expect("a clean shutdown");
    let received: BTreeSet<String> = hook.message_ids().into_iter().collect();
    assert_eq!(&received, expected);
}

/// What a relay does with a connection.
#[derive(Debug, Clone)]
enum RelayMode {
    /// Relay to this address as it is.
    Transparent(SocketAddr),
    /// Answer an HTTP CONNECT first; demand this `Proxy-Authorization` value if set; connect to
    /// `resolve_to` instead of the requested host if set (as a proxy resolving names its own way).
    Proxy {
        authorization: Option<String>,
        resolve_to: Option<SocketAddr>,
    },
}

/// A TCP relay recording the first bytes (or the CONNECT request) of every connection.
#[derive(Debug, Clone)]
struct Relay {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Relay {
    async fn start(mode: RelayMode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Self {
            addr: listener.local_addr().unwrap(),
            heads: Arc::default(),
        };
        let heads = Arc::clone(&relay.heads);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(relay_one(client, mode.clone(), Arc::clone(&heads)));
            }
        });
        relay
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

async fn relay_one(mut client: TcpStream, mode: RelayMode, heads: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    let upstream = match mode {
        RelayMode::Transparent(target) => {
            let Ok(read) = client.read(&mut chunk).await else {
                return;
            };
            head.extend_from_slice(&chunk[..read]);
            heads
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            let Ok(mut upstream) = TcpStream::connect(target).await else {
                return;
            };
            if upstream.write_all(&head).await.is_err() {
                return;
            }
            upstream
        }
        RelayMode::Proxy {
            authorization,
            resolve_to,
        } => {
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match client.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => head.extend_from_slice(&chunk[..read]),
                }
            }
            let request = String::from_utf8_lossy(&head).into_owned();
            heads.lock().unwrap().push(request.clone());
            if let Some(expected) = authorization {
                let offered = request.lines().find_map(|line| {
                    line.strip_prefix("Proxy-Authorization: ")
                        .map(str::to_owned)
                });
                if offered.as_deref() != Some(expected.as_str()) {
                    let _ = client
                        .write_all(
                            b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                              Proxy-Authenticate: Basic realm=\"test\"\r\n\r\n",
                        )
                        .await;
                    return;
                }
            }
            let target = request
                .lines()
                .next()
                .and_then(|line| line.strip_prefix("CONNECT "))
                .and_then(|rest| rest.split(' ').next())
                .unwrap_or_default()
                .to_owned();
            let connected = match resolve_to {
                Some(address) => TcpStream::connect(address).await,
                None => TcpStream::connect(&target).await,
            };
            let Ok(upstream) = connected else {
                let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                return;
            };
            if client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            upstream
        }
    };
    let mut upstream = upstream;
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_iot_hubs_own_connection_string_is_followed_to_its_built_in_endpoint() {
    let emulator = emulator().await;
    let expected = publish(&emulator);
    let hook = Hook::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hub = emulator
        .iot_hub_connection_string("service")
        .expect("the emulator is an IoT hub");
    assert!(
        hub.starts_with(&format!(
            "HostName={};SharedAccessKeyName=service;SharedAccessKey=",
            emulator.amqp_addr()
        )) && hub.ends_with(";UseDevelopmentEmulator=true"),
        "{hub}"
    );
    route_everything(
        dir.path(),
        &config(dir.path(), &hub, "", &hook),
        &hook,
        &expected,
    )
    .await;
    // Checkpoints are keyed by the resolved Event Hubs namespace, as with the Event Hubs string
    // (with its port, as the Python SDK keys an endpoint that names one).
    let namespace = dir.path().join(format!(
        "checkpoints/{}/hub/$default/checkpoint",
        emulator.amqp_addr()
    ));
    assert!(
        namespace.is_dir(),
        "{} holds the checkpoints",
        namespace.display()
    );
    emulator.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_refused_policy_is_reported_with_the_hub_and_never_the_key() {
    let emulator = emulator().await;
    let host = emulator.amqp_addr().to_string();
    let service = emulator.iot_hub_connection_string("service").unwrap();
    let key = |text: &str| {
        text.split(';')
            .find_map(|part| part.strip_prefix("SharedAccessKey="))
            .unwrap()
            .to_owned()
    };
    let wrong_key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let cases = [
        (
            service.replace(&key(&service), &wrong_key),
            "rejected shared access policy `service`: SASL PLAIN sign-in failed",
        ),
        (
            emulator.iot_hub_connection_string("registryRead").unwrap(),
            "shared access policy `registryRead` does not have the ServiceConnect permission",
        ),
        (
            emulator.iot_hub_connection_string("device").unwrap(),
            "shared access policy `device` does not have the ServiceConnect permission",
        ),
        (
            service.replace("SharedAccessKeyName=service", "SharedAccessKeyName=nobody"),
            "rejected shared access policy `nobody`",
        ),
    ];
    let checkpoints = Arc::new(FileCheckpointStore::new(
        tempfile::tempdir().unwrap().keep(),
    ));
    for (connection_string, expected) in cases {
        let config = SourceConfig::new(SourceConnectionString::parse(&connection_string).unwrap());
        let error = EventHubSource::connect(config, checkpoints.clone())
            .await
            .expect_err("refused")
            .to_string();
        assert!(error.contains(expected), "{expected:?} not in {error}");
        assert!(error.contains(&format!("the IoT hub at {host}")), "{error}");
        assert!(!error.contains(&key(&connection_string)), "{error}");
    }
    emulator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_runs_over_amqp_websockets() {
    let emulator = emulator().await;
    let expected = publish(&emulator);
    let hook = Hook::start().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(RelayMode::Transparent(emulator.amqp_addr())).await;
    let connection_string = emulator
        .connection_string("hub")
        .replace(&emulator.amqp_addr().to_string(), &relay.addr.to_string());
    let text = config(
        dir.path(),
        &connection_string,
        "transport = \"amqp_websockets\"",
        &hook,
    );
    route_everything(dir.path(), &text, &hook, &expected).await;
    let heads = relay.heads();
    // Discovery, one data connection per partition, and at least one lag poll.
    assert!(heads.len() >= 6, "{heads:?}");
    for head in heads {
        assert!(
            head.starts_with("GET /$servicebus/websocket HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("AMQPWSB10"), "{head}");
    }
    emulator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iot_hub_string_over_websockets_goes_through_a_connect_proxy() {
    let emulator = emulator().await;
    let expected = publish(&emulator);
    let hook = Hook::start().await;
    let dir = tempfile::tempdir().unwrap();
    let basic = base64::engine::general_purpose::STANDARD.encode("corp:s3cret@1");
    let proxy = Relay::start(RelayMode::Proxy {
        authorization: Some(format!("Basic {basic}")),
        resolve_to: None,
    })
    .await;
    let hub = emulator.iot_hub_connection_string("iothubowner").unwrap();
    let source = format!(
        "transport = \"amqp_websockets\"\nproxy = \"http://corp:s3cret%401@{}\"",
        proxy.addr
    );
    route_everything(
        dir.path(),
        &config(dir.path(), &hub, &source, &hook),
        &hook,
        &expected,
    )
    .await;
    let heads = proxy.heads();
    assert!(
        heads.len() >= 7,
        "the hub, discovery, 4 partitions, lag: {heads:?}"
    );
    let target = format!("CONNECT {} HTTP/1.1\r\n", emulator.amqp_addr());
    for head in &heads {
        assert!(head.starts_with(&target), "{head}");
        assert!(
            head.contains(&format!("Proxy-Authorization: Basic {basic}")),
            "{head}"
        );
    }

    // The wrong credentials: the proxy's 407 is reported as such.
    let refusing = Relay::start(RelayMode::Proxy {
        authorization: Some("Basic other".to_owned()),
        resolve_to: None,
    })
    .await;
    let mut config = SourceConfig::new(SourceConnectionString::parse(&hub).unwrap());
    config.transport = hubroute_engine::source::Transport::AmqpWebsockets;
    config.proxy = Some(
        hubroute_engine::source::ProxyUrl::parse(&format!("http://corp:wrong@{}", refusing.addr))
            .unwrap(),
    );
    let checkpoints = Arc::new(FileCheckpointStore::new(dir.path().join("unused")));
    let error = EventHubSource::connect(config, checkpoints)
        .await
        .expect_err("the proxy refuses")
        .to_string();
    assert!(error.contains("requires authentication"), "{error}");
    assert!(
        !error.contains("wrong"),
        "the proxy password is never shown: {error}"
    );
    emulator.shutdown().await.unwrap();
}

/// `hubroute run` honours `HTTPS_PROXY` for WebSockets, as the SDKs and curl do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_uses_https_proxy_from_the_environment() {
    let emulator = emulator().await;
    let expected = publish(&emulator);
    let hook = Hook::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Loopback hosts never use the environment's proxy, so the emulator goes by a namespace's
    // name here, which only the proxy knows how to reach (hubroute never resolves it).
    let proxy = Relay::start(RelayMode::Proxy {
        authorization: None,
        resolve_to: Some(emulator.amqp_addr()),
    })
    .await;
    let namespace = "hubroute-test-ns.servicebus.windows.net";
    let connection_string = emulator.connection_string("hub").replace(
        &format!("sb://{}", emulator.amqp_addr()),
        &format!("sb://{namespace}:{}", emulator.amqp_addr().port()),
    );
    let text = config(
        dir.path(),
        &connection_string,
        "transport = \"amqp_websockets\"",
        &hook,
    );
    let path = dir.path().join("hubroute.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = tokio::process::Command::from(hubroute())
        .args(["run", "--config"])
        .arg(&path)
        .env("HTTPS_PROXY", format!("http://{}", proxy.addr))
        .env_remove("https_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("hubroute run starts");
    wait_until(
        "every event reached the webhook",
        Duration::from_secs(60),
        || hook.message_ids().len() >= expected.len(),
    )
    .await;
    child.kill().await.unwrap();
    let received: BTreeSet<String> = hook.message_ids().into_iter().collect();
    assert_eq!(received, expected);
    let heads = proxy.heads();
    assert!(!heads.is_empty());
    let target = format!(
        "CONNECT {namespace}:{} HTTP/1.1\r\n",
        emulator.amqp_addr().port()
    );
    assert!(
        heads.iter().all(|head| head.starts_with(&target)),
        "{heads:?}"
    );
    emulator.shutdown().await.unwrap();
}

/// `hubroute check` validates the new settings without connecting to anything.
#[test]
fn check_validates_connection_strings_transports_and_proxies() {
    let hub = "HostName=myhub.azure-devices.net;SharedAccessKeyName=service;SharedAccessKey=c2VjcmV0LWtleS1vZi10aGUtaHViLXBvbGljeS0xMjM=";
    let cases = [
        (hub.to_owned(), "", Ok(())),
        (
            hub.to_owned(),
            "transport = \"amqp_websockets\"\nproxy = \"http://proxy.corp:3128\"",
            Ok(()),
        ),
        (
            hub.to_owned(),
            "proxy = \"http://proxy.corp:3128\"",
            Err("`proxy` needs transport = \"amqp_websockets\""),
        ),
        (
            hub.to_owned(),
            "transport = \"amqp_websockets\"\nproxy = \"socks5://proxy:1080\"",
            Err("invalid proxy: proxy scheme `socks5` is not supported"),
        ),
        (hub.to_owned(), "transport = \"mqtt\"", Err("unknown variant `mqtt`")),
        (
            hub.to_owned(),
            "event_hub = \"other\"",
            Err("`event_hub` cannot be set with an IoT Hub connection string"),
        ),
        (
            "HostName=myhub.azure-devices.net;DeviceId=d1;SharedAccessKey=c2VjcmV0".to_owned(),
            "",
            Err("this is a device connection string"),
        ),
        (
            "HostName=myhub.azure-devices.net;SharedAccessKeyName=service;SharedAccessKey=not*base64"
                .to_owned(),
            "",
            Err("SharedAccessKey is not base64"),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (connection_string, source, expected) in cases {
        let text = format!(
            "[source]\nconnection_string = \"{connection_string}\"\n{source}\n\
             [[endpoints]]\nsink = {{ type = \"webhook\", name = \"hook\", url = \"http://127.0.0.1:1/\" }}\n"
        );
        let path = dir.path().join("check.toml");
        std::fs::write(&path, &text).unwrap();
        let output = hubroute()
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("hubroute check runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        match expected {
            Ok(()) => assert!(output.status.success(), "{text}\n{stderr}"),
            Err(message) => {
                assert!(!output.status.success(), "{text}");
                assert!(stderr.contains(message), "{message:?} not in {stderr}");
                assert!(!stderr.contains("c2VjcmV0"), "{stderr}");
            }
        }
    }
}
