//! Golden tests of `hubroute import`: every `tests/import/<case>.json` (templates written from
//! ARM's documented `Microsoft.Devices/IotHubs` schema, shaped like Microsoft's quickstart and
//! routing tutorial templates, `az iot hub show` output and `az bicep build` output) is imported
//! and compared with `<case>.toml`. `UPDATE_GOLDEN=1 cargo test -p hubroute-migrate --test import`
//! rewrites the expected files, to be reviewed as a diff.
//!
//! Beyond the text, every imported file must load and compile in the engine once its environment
//! variables have values, must not contain a secret of its input, and its routes must decide as
//! the template's conditions do on a sample of messages.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hubroute_engine::config::LoadedConfig;
use hubroute_engine::routing::RoutingTable;
use hubroute_message::{AppPropertyValue, Message};
use serde_json::{Value, json};

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/import exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 4,
        "golden cases missing in {}",
        dir.display()
    );
    cases
}

fn import_case(path: &Path) -> hubroute_migrate::Import {
    let document: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read case")).expect("JSON");
    let name = format!(
        "tests/import/{}",
        path.file_name().unwrap().to_string_lossy()
    );
    hubroute_migrate::import(&document, &name, None).expect("imports")
}

/// A value for each `${NAME}` the importer writes, of the shape its sink parses.
fn fill_environment(toml: &str) -> String {
    let mut text = toml.to_owned();
    while let Some(start) = text.find("${") {
        let end = start + text[start..].find('}').expect("closed reference");
        let name = &text[start + 2..end];
        let value = if name == "IOTHUB_SERVICE_CONNECTION_STRING" {
            "HostName=test-hub.azure-devices.net;SharedAccessKeyName=service;SharedAccessKey=c2VjcmV0".to_owned()
        } else if name.ends_with("_CONNECTION_STRING") {
            "Endpoint=sb://test-ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=c2VjcmV0;EntityPath=from-env".to_owned()
        } else if name == "IOTHUB_NAME" {
            "test-hub".to_owned()
        } else {
            "test-value".to_owned()
        };
        text.replace_range(start..=end, &value);
    }
    text
}

#[test]
fn templates_import_as_the_golden_files_say() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in cases() {
        let imported = import_case(&case);
        let golden = case.with_extension("toml");
        if update {
            std::fs::write(&golden, &imported.toml).expect("write golden");
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if expected != imported.toml {
            failures.push(format!(
                "{} differs from {} (UPDATE_GOLDEN=1 regenerates); got:\n{}",
                case.display(),
                golden.display(),
                imported.toml
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn imported_files_load_and_compile_in_the_engine_once_variables_are_set() {
    for case in cases() {
        let imported = import_case(&case);
        let filled = fill_environment(&imported.toml);
        let loaded = LoadedConfig::parse(Path::new("imported.toml"), &filled)
            .unwrap_or_else(|e| panic!("{}: {e}\n{filled}", case.display()));
        let table =
            RoutingTable::compile(&loaded).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let counts = imported.counts;
        assert_eq!(
            table.endpoints().len(),
            counts.endpoints,
            "{}",
            case.display()
        );
        assert_eq!(
            table.route_names().count(),
            counts.routes,
            "{}",
            case.display()
        );
        assert_eq!(loaded.config.enrichments.len(), counts.enrichments);
        assert_eq!(
            loaded.config.fallback.as_ref().is_some_and(|f| f.enabled),
            counts.fallback
        );
        // Every variable the file reads is listed, and every listed one is read.
        let listed: BTreeSet<&str> = imported
            .environment
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        let read: BTreeSet<&str> = imported
            .toml
            .match_indices("${")
            .map(|(i, _)| {
                let rest = &imported.toml[i + 2..];
                &rest[..rest.find('}').unwrap()]
            })
            .collect();
        assert_eq!(listed, read, "{}", case.display());
    }
}

#[test]
fn the_commented_out_postgres_endpoint_for_cosmos_db_is_valid_once_uncommented() {
    let imported = import_case(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import/routing-tutorial.json"),
    );
    let lines: Vec<&str> = imported.toml.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == "# [[endpoints]]")
        .expect("a commented-out endpoint");
    let block: Vec<&str> = lines[start..]
        .iter()
        .take_while(|l| !l.is_empty())
        .map(|l| l.trim_start_matches("# "))
        .collect();
    assert!(block.contains(&"type = \"postgres\""), "{block:?}");
    let with_block = format!("{}\n{}\n", imported.toml, block.join("\n"));
    let loaded = LoadedConfig::parse(Path::new("imported.toml"), &fill_environment(&with_block))
        .unwrap_or_else(|e| panic!("{e}"));
    let table = RoutingTable::compile(&loaded).unwrap();
    assert!(table.endpoints().iter().any(|e| e == "cosmos-telemetry"));
}

#[test]
fn secrets_in_the_input_never_reach_the_output() {
    let secret = "U2VjcmV0S2V5VGhhdE11c3ROb3RMZWFr";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import/az-iot-hub-show.json");
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("****", secret);
    let document: Value = serde_json::from_str(&text).unwrap();
    let imported = hubroute_migrate::import(&document, "show.json", None).unwrap();
    assert!(!imported.toml.contains(secret), "{}", imported.toml);
    assert!(!imported.toml.contains("SharedAccessKey="));
    assert!(!imported.toml.contains("AccountKey="));
    for name in [
        "HUB_ARCHIVE_STORAGE_ACCOUNT_KEY",
        "LINE_TELEMETRY_CONNECTION_STRING",
        "MAINTENANCE_CONNECTION_STRING",
        "IOTHUB_SERVICE_CONNECTION_STRING",
    ] {
        assert!(
            imported.environment.iter().any(|v| v.name == name),
            "{name} not listed: {:?}",
            imported.environment
        );
    }
}

#[test]
fn everything_that_cannot_be_mapped_is_reported() {
    let imported = import_case(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import/routing-tutorial.json"),
    );
    let warnings: Vec<String> = imported.warnings.iter().map(ToString::to_string).collect();
    let expect = [
        "endpoint `raw-deflate`: IoT Hub writes with a managed identity",
        "endpoint `twin-updates`: IoT Hub sends with a managed identity",
        "endpoint `cosmos-telemetry`: Cosmos DB has no hubroute sink",
        "endpoint `fabric`: the endpoint kind `eventStreams` has no hubroute sink",
        "route `LifecycleToEvents` is commented out: it sends to the built-in endpoint `events`",
        "route `ToCosmos` is commented out: its endpoint `cosmos-telemetry` is a Cosmos DB endpoint",
        "route `ToFabric` is commented out: its endpoint `fabric` is of kind `eventStreams`",
        "enrichment `site`: IoT Hub also adds it to `cosmos-telemetry`, which is a Cosmos DB endpoint",
        "enrichment `pipeline`: IoT Hub also adds it to `fabric`, which is of kind `eventStreams`",
        "route `MqttBroker` is commented out: hubroute has no route source `MqttBrokerMessages`",
        "route `BadCondition` is commented out: hubroute does not accept its condition",
        "enrichment `hub`: IoT Hub also adds it to messages on the built-in endpoint",
        "enrichment `pipeline` is commented out: none of its endpoints",
        "the fallback route now also takes device messages of the commented-out routes ToCosmos, ToFabric, BadCondition",
    ];
    for wanted in expect {
        assert!(
            warnings.iter().any(|w| w.starts_with(wanted)),
            "no warning starting with {wanted:?} in {warnings:#?}"
        );
    }
    assert_eq!(warnings.len(), expect.len(), "{warnings:#?}");
}

#[test]
fn routes_and_enrichments_over_iot_hubs_limits_are_commented_out() {
    let routes: Vec<Value> = (0..102)
        .map(|i| {
            json!({"name": format!("r{i}"), "source": "DeviceMessages",
                   "condition": format!("n = '{i}'"), "endpointNames": ["q"], "isEnabled": true})
        })
        .collect();
    let enrichments: Vec<Value> = (0..11)
        .map(|i| json!({"key": format!("k{i}"), "value": "v", "endpointNames": ["q"]}))
        .collect();
    let long = format!("a = '{}'", "x".repeat(1100));
    let mut all_routes = routes;
    all_routes[0]["condition"] = json!(long);
    let hub = json!({
        "type": "Microsoft.Devices/IotHubs", "name": "big",
        "properties": {"routing": {
            "endpoints": {"serviceBusQueues": [{"name": "q", "entityPath": "q"}]},
            "routes": all_routes, "enrichments": enrichments,
            "fallbackRoute": {"source": "DeviceMessages", "condition": "true",
                              "endpointNames": ["q"], "isEnabled": true}
        }}
    });
    let imported = hubroute_migrate::import(&hub, "big.json", None).unwrap();
    assert_eq!(
        imported.counts.routes, 99,
        "r0 too long, r100 and r101 over the limit"
    );
    assert_eq!(imported.counts.enrichments, 10);
    let warnings: Vec<String> = imported.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings.iter().any(
            |w| w.starts_with("route `r0` is commented out: its condition has 1106 characters")
        ),
        "{warnings:#?}"
    );
    assert!(warnings.iter().any(|w| w.starts_with(
        "route `r101` is commented out: IoT Hub and hubroute allow at most 100 routes"
    )));
    assert!(warnings.iter().any(|w| {
        w.starts_with("enrichment `k10` is commented out: IoT Hub and hubroute allow at most 10")
    }));
    let loaded = LoadedConfig::parse(Path::new("big.toml"), &fill_environment(&imported.toml))
        .expect("loads");
    RoutingTable::compile(&loaded).expect("compiles");
}

#[test]
fn inputs_without_exactly_one_hub_are_refused_with_a_way_out() {
    let hub =
        |name: &str| json!({"type": "Microsoft.Devices/IotHubs", "name": name, "properties": {}});
    let none = hubroute_migrate::import(&json!({"resources": []}), "empty.json", None).unwrap_err();
    assert!(
        none.to_string().contains("empty.json: no IoT hub found"),
        "{none}"
    );
    let list = json!([hub("a"), hub("b")]);
    let several = hubroute_migrate::import(&list, "list.json", None).unwrap_err();
    assert!(
        several
            .to_string()
            .contains("several IoT hubs (a, b); choose one with --hub")
    );
    let chosen = hubroute_migrate::import(&list, "list.json", Some("b")).unwrap();
    assert!(chosen.toml.contains("hub_name = \"b\""), "{}", chosen.toml);
    let missing = hubroute_migrate::import(&list, "list.json", Some("c")).unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("no IoT hub named `c` (found: a, b)")
    );
}

/// A deterministic sample of messages over the properties the templates' conditions read.
fn sample_messages() -> Vec<Message> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let levels = ["critical", "info", "storage", "debug", ""];
    let sources = [
        "Telemetry",
        "Telemetry",
        "Telemetry",
        "twinChangeEvents",
        "deviceLifecycleEvents",
    ];
    let sites = ["plant-3", "plant-4", ""];
    (0..400)
        .map(|i| {
            let mut body = serde_json::Map::new();
            body.insert("temperature".into(), json!(next(100)));
            if next(2) == 0 {
                body.insert("pressure".into(), json!(next(10)));
            }
            body.insert("vibration".into(), json!(next(90) as f64 / 10.0));
            if next(5) == 0 {
                body.insert("alert".into(), json!(next(2) == 0));
            }
            let mut message = Message::telemetry(Value::Object(body).to_string().into_bytes());
            if next(4) != 0 {
                message.system.content_type = Some("application/json".into());
                message.system.content_encoding = Some("utf-8".into());
            }
            message.system.message_id = Some(format!("m{i}"));
            message.system.connection_device_id =
                Some(["legacy-gateway", "d1", "d2"][next(3) as usize].to_owned());
            if next(3) == 0 {
                message.system.connection_module_id = Some("vibration-sensor".into());
            }
            message.system.message_source = Some(sources[next(5) as usize].to_owned());
            let level = levels[next(5) as usize];
            if !level.is_empty() {
                message
                    .application_properties
                    .push(("level".into(), AppPropertyValue::String(level.into())));
            }
            if next(2) == 0 {
                message.application_properties.push((
                    "opType".into(),
                    AppPropertyValue::String("updateTwin".into()),
                ));
            }
            let site = sites[next(3) as usize];
            if !site.is_empty() {
                message.twin = Some(json!({"tags": {"site": site}}).to_string());
            }
            message
        })
        .collect()
}

/// ARM's `RoutingSource` of a message's `iothub-message-source`.
fn arm_source(message: &Message) -> &'static str {
    match message.system.message_source.as_deref() {
        Some("twinChangeEvents") => "TwinChangeEvents",
        Some("deviceLifecycleEvents") => "DeviceLifecycleEvents",
        _ => "DeviceMessages",
    }
}

/// `isEnabled` as the template writes it: a boolean, or `[parameters('x')]` with a default.
fn arm_enabled(document: &Value, value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::String(expression) => {
            let name = expression
                .strip_prefix("[parameters('")
                .and_then(|r| r.strip_suffix("')]"))
                .expect("a parameters() reference");
            document["parameters"][name]["defaultValue"]
                .as_bool()
                .expect("bool default")
        }
        other => panic!("isEnabled {other}"),
    }
}

/// IoT Hub's routing decision, computed from the template itself: the enabled routes (among
/// those the configuration carries) whose source is the message's and whose condition holds, and
/// whether the fallback takes it.
fn template_decision(
    document: &Value,
    routing: &Value,
    kept: &BTreeSet<String>,
    message: &Message,
) -> (Vec<String>, bool) {
    let mut matched = Vec::new();
    for route in routing["routes"].as_array().unwrap() {
        let name = route["name"].as_str().unwrap();
        if !kept.contains(name)
            || !arm_enabled(document, &route["isEnabled"])
            || route["source"].as_str() != Some(arm_source(message))
        {
            continue;
        }
        let condition = hubroute_queries::compile(route["condition"].as_str().unwrap()).unwrap();
        if condition.evaluate_message(message).unwrap() == hubroute_queries::Truth::True {
            matched.push(name.to_owned());
        }
    }
    let fallback = &routing["fallbackRoute"];
    let fallback = !fallback.is_null()
        && arm_enabled(document, &fallback["isEnabled"])
        && kept.contains("$fallback")
        && matched.is_empty()
        && arm_source(message) == "DeviceMessages"
        && hubroute_queries::compile(fallback["condition"].as_str().unwrap())
            .unwrap()
            .evaluate_message(message)
            .unwrap()
            == hubroute_queries::Truth::True;
    (matched, fallback)
}

#[test]
fn imported_routes_decide_as_the_template_conditions_do() {
    for case in [
        "routing-tutorial.json",
        "az-iot-hub-show.json",
        "quickstart.json",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/import")
            .join(case);
        let document: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let imported = import_case(&path);
        let loaded = LoadedConfig::parse(
            Path::new("imported.toml"),
            &fill_environment(&imported.toml),
        )
        .unwrap();
        let table = RoutingTable::compile(&loaded).unwrap();
        let mut kept: BTreeSet<String> = table.route_names().map(str::to_owned).collect();
        if loaded.config.fallback.is_some() {
            kept.insert("$fallback".to_owned());
        }
        let hubs = document["resources"]
            .as_array()
            .map_or_else(|| vec![&document], |r| r.iter().collect());
        let hub = hubs
            .into_iter()
            .find(|r| r["type"] == "Microsoft.Devices/IotHubs")
            .unwrap();
        let routing = &hub["properties"]["routing"];
        let (mut routed, mut fell_back) = (0, 0);
        for message in sample_messages() {
            let (routes, fallback) = template_decision(&document, routing, &kept, &message);
            let explained = table.explain(&message).unwrap();
            assert_eq!(
                (&explained.routes, explained.fallback),
                (&routes, fallback),
                "{case}: message {:?}",
                message.system.message_id
            );
            routed += usize::from(!routes.is_empty());
            fell_back += usize::from(fallback);
        }
        // The sample exercises both outcomes, so the comparison means something.
        assert!(routed > 20, "{case}: only {routed} routed");
        if kept.contains("$fallback") {
            assert!(fell_back > 20, "{case}: only {fell_back} fell back");
        }
    }
}
