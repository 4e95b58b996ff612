//! Table-driven tests of routing semantics: dedupe per endpoint, route sources, disabled routes,
//! the fallback route and enrichments.

use std::path::Path;

use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder, MessageColumns};

use super::*;

const CONFIG: &str = r#"
hub_name = "my-hub"
[source]
connection_string = "Endpoint=sb://127.0.0.1:5673/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=c2VjcmV0;EntityPath=hub"

[[endpoints]]
sink = { type = "webhook", name = "a", url = "http://127.0.0.1:1/a" }
[[endpoints]]
sink = { type = "webhook", name = "b", url = "http://127.0.0.1:1/b" }
[[endpoints]]
sink = { type = "webhook", name = "c", url = "http://127.0.0.1:1/c" }
[[endpoints]]
sink = { type = "webhook", name = "fb", url = "http://127.0.0.1:1/fb" }

[[routes]]
name = "hot"
condition = "level = 'hot' OR level = 'critical'"
endpoint = "a"
[[routes]]
name = "critical-a"
condition = "level = 'critical'"
endpoint = "a"
[[routes]]
name = "critical-c"
condition = "level = 'critical'"
endpoint = "c"
[[routes]]
name = "twin"
source = "TwinChangeEvents"
endpoint = "b"
[[routes]]
name = "off"
enabled = false
endpoint = "c"

[fallback]
condition = "level <> 'ignore'"
endpoint = "fb"

[[enrichments]]
key = "hub"
value = "$iothubname"
endpoints = ["a"]
[[enrichments]]
key = "location"
value = "$twin.tags.location"
endpoints = ["a"]
"#;

fn table() -> RoutingTable {
    let loaded = LoadedConfig::parse(Path::new("t.toml"), CONFIG).expect("valid config");
    RoutingTable::compile(&loaded).expect("routes compile")
}

fn message(level: Option<&str>, source: &str, twin: Option<&str>) -> Message {
    let mut m = Message::telemetry("{}");
    m.system.message_source = Some(source.to_owned());
    if let Some(level) = level {
        m.application_properties
            .push(("level".to_owned(), AppPropertyValue::from(level)));
    }
    m.twin = twin.map(str::to_owned);
    m
}

#[test]
fn rows_reach_each_matching_endpoint_once() {
    // (level, source, endpoints)
    let cases: &[(Option<&str>, &str, &[&str])] = &[
        (Some("hot"), "Telemetry", &["a"]),
        (Some("critical"), "Telemetry", &["a", "c"]),
        (Some("cold"), "Telemetry", &["fb"]),
        (Some("ignore"), "Telemetry", &[]),
        (Some("critical"), "twinChangeEvents", &["b"]),
        (None, "Telemetry", &[]),
        (Some("cold"), "deviceLifecycleEvents", &[]),
    ];
    let table = table();
    let messages: Vec<Message> = cases.iter().map(|(l, s, _)| message(*l, s, None)).collect();
    let batch = MessageBatchBuilder::batch_of(&messages).expect("batch");
    let routed = table.route(&batch).expect("route");
    for (row, (level, source, expected)) in cases.iter().enumerate() {
        let got: Vec<&str> = table
            .endpoints()
            .iter()
            .zip(&routed.rows)
            .filter(|(_, rows)| rows.contains(&u32::try_from(row).expect("small")))
            .map(|(e, _)| e.as_str())
            .collect();
        assert_eq!(&got, expected, "row {row}: {level:?} from {source}");
    }
    assert_eq!(routed.matched, vec![2, 1, 1, 1, 0]);
    assert_eq!(routed.fallback, 1);
    assert_eq!(
        routed.undefined[0], 1,
        "the message without `level` is undefined for `hot`"
    );
}

#[test]
fn decide_lists_the_rows_of_every_outcome_as_route_counts_them() {
    let cases = [
        (Some("hot"), "Telemetry"),
        (Some("critical"), "Telemetry"),
        (Some("cold"), "Telemetry"),
        (Some("ignore"), "Telemetry"),
        (Some("critical"), "twinChangeEvents"),
        (None, "Telemetry"),
        (Some("cold"), "deviceLifecycleEvents"),
    ];
    let table = table();
    let messages: Vec<Message> = cases.iter().map(|(l, s)| message(*l, s, None)).collect();
    let batch = MessageBatchBuilder::batch_of(&messages).expect("batch");
    let decisions = table.decide(&batch).expect("decide");
    assert_eq!(
        decisions,
        Decisions {
            matched: vec![vec![0, 1], vec![1], vec![1], vec![4], vec![]],
            undefined: vec![vec![5], vec![5], vec![5], vec![], vec![]],
            fallback: vec![2],
            unmatched: vec![3, 5, 6],
        }
    );
    // The same evaluation as `route`: its counts are the lengths of these lists.
    let routed = table.route(&batch).expect("route");
    let lengths = |lists: &[Vec<u32>]| lists.iter().map(Vec::len).collect::<Vec<_>>();
    assert_eq!(routed.matched, lengths(&decisions.matched));
    assert_eq!(routed.undefined, lengths(&decisions.undefined));
    assert_eq!(routed.fallback, decisions.fallback.len());
    assert_eq!(
        table
            .routes()
            .map(|(name, _, enabled)| (name, enabled))
            .collect::<Vec<_>>(),
        [
            ("hot", true),
            ("critical-a", true),
            ("critical-c", true),
            ("twin", true),
            ("off", false)
        ]
    );
}

#[test]
fn explain_names_routes_endpoints_fallback_and_enrichments() {
    let table = table();
    let enriched = |location: &str| {
        let added = [("hub", "my-hub"), ("location", location)];
        let added = added.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec();
        vec![("a".to_owned(), added)]
    };
    let cases = [
        (
            Some("critical"),
            Some(r#"{"tags":{"location":"lab"}}"#),
            vec!["hot", "critical-a", "critical-c"],
            false,
            vec!["a", "c"],
            enriched("lab"),
        ),
        (
            Some("hot"),
            None,
            vec!["hot"],
            false,
            vec!["a"],
            enriched("$twin.tags.location"),
        ),
        (Some("cold"), None, vec![], true, vec!["fb"], vec![]),
        (Some("ignore"), None, vec![], false, vec![], vec![]),
    ];
    for (level, twin, routes, fallback, endpoints, enrichments) in cases {
        let explanation = table
            .explain(&message(level, "Telemetry", twin))
            .expect("explain");
        assert_eq!(explanation.routes, routes, "{level:?}");
        assert_eq!(explanation.fallback, fallback, "{level:?}");
        assert_eq!(explanation.endpoints, endpoints, "{level:?}");
        assert_eq!(explanation.enrichments, enrichments, "{level:?}");
    }
}

#[test]
fn enrichments_apply_per_endpoint_with_twin_fallback_to_literal() {
    let table = table();
    let messages = [
        message(
            Some("hot"),
            "Telemetry",
            Some(r#"{"tags":{"location":"lab"}}"#),
        ),
        message(Some("hot"), "Telemetry", None),
        message(Some("hot"), "Telemetry", Some(r#"{"tags":{}}"#)),
    ];
    let batch = MessageBatchBuilder::batch_of(&messages).expect("batch");
    let enriched = table.rows_for(0, &batch, &[0, 1, 2]).expect("enrich");
    let columns = MessageColumns::try_new(&enriched).expect("schema");
    let expected = ["lab", "$twin.tags.location", "$twin.tags.location"];
    for (row, location) in expected.iter().enumerate() {
        let props = columns.message(row).application_properties;
        let get = |k: &str| {
            props
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("hub"),
            Some(AppPropertyValue::from("my-hub")),
            "row {row}"
        );
        assert_eq!(
            get("location"),
            Some(AppPropertyValue::from(*location)),
            "row {row}"
        );
        assert_eq!(
            get("level"),
            Some(AppPropertyValue::from("hot")),
            "row {row}"
        );
    }
    let plain = table.rows_for(1, &batch, &[1]).expect("no enrichment");
    assert_eq!(plain.num_rows(), 1);
    let props = MessageColumns::try_new(&plain)
        .expect("schema")
        .message(0)
        .application_properties;
    assert_eq!(props.len(), 1, "endpoint b has no enrichments: {props:?}");
}

#[test]
fn condition_errors_point_into_the_file() {
    let text = CONFIG.replace(
        "condition = \"level = 'critical'\"\nendpoint = \"c\"",
        "condition = \"level = = 1\"\nendpoint = \"c\"",
    );
    let loaded = LoadedConfig::parse(Path::new("t.toml"), &text).expect("parses");
    let error = RoutingTable::compile(&loaded)
        .expect_err("bad condition")
        .to_string();
    assert!(
        error.starts_with("t.toml:25:13: route `critical-c`: the condition does not compile"),
        "{error}"
    );
}

#[test]
fn undefined_is_counted_only_over_the_rows_of_the_route_source() {
    let table = table();
    // Neither the twin change event nor the lifecycle event has `level`: `hot` (a device message
    // route) must not count them as undefined, only the telemetry row without `level`.
    let messages = [
        message(None, "Telemetry", None),
        message(None, "twinChangeEvents", None),
        message(None, "deviceLifecycleEvents", None),
        message(Some("hot"), "Telemetry", None),
    ];
    let batch = MessageBatchBuilder::batch_of(&messages).expect("batch");
    let routed = table.route(&batch).expect("route");
    assert_eq!(routed.undefined, vec![1, 1, 1, 0, 0]);
    assert_eq!(routed.matched, vec![1, 0, 0, 1, 0]);
}

#[test]
fn every_route_source_sees_exactly_its_message_source_values() {
    let mut text = String::from(
        "[source]\nconnection_string = \"Endpoint=sb://127.0.0.1:5673/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0;EntityPath=hub\"\n",
    );
    for source in RouteSource::ALL {
        text.push_str(&format!(
            "[[endpoints]]\nsink = {{ type = \"webhook\", name = \"to-{source:?}\", url = \"http://127.0.0.1:1/\" }}\n\
             [[routes]]\nname = \"{source:?}\"\nsource = \"{source:?}\"\nendpoint = \"to-{source:?}\"\n"
        ));
    }
    let loaded = LoadedConfig::parse(Path::new("t.toml"), &text).expect("valid config");
    let table = RoutingTable::compile(&loaded).expect("routes compile");
    // (`iothub-message-source`, the one route that must see it; `None`: no route)
    let cases: &[(Option<&str>, Option<RouteSource>)] = &[
        (Some("Telemetry"), Some(RouteSource::DeviceMessages)),
        (None, Some(RouteSource::DeviceMessages)),
        (
            Some("twinChangeEvents"),
            Some(RouteSource::TwinChangeEvents),
        ),
        (
            Some("deviceLifecycleEvents"),
            Some(RouteSource::DeviceLifecycleEvents),
        ),
        (
            Some("moduleLifecycleEvents"),
            Some(RouteSource::DeviceLifecycleEvents),
        ),
        (
            Some("deviceConnectionStateEvents"),
            Some(RouteSource::DeviceConnectionStateEvents),
        ),
        (
            Some("deviceJobLifecycleEvents"),
            Some(RouteSource::DeviceJobLifecycleEvents),
        ),
        (
            Some("jobLifecycleEvents"),
            Some(RouteSource::DeviceJobLifecycleEvents),
        ),
        (
            Some("digitalTwinChangeEvents"),
            Some(RouteSource::DigitalTwinChangeEvents),
        ),
        (Some("TwinChangeEvents"), None),
        (Some("somethingElse"), None),
    ];
    for (value, expected) in cases {
        let mut m = Message::telemetry("{}");
        m.system.message_source = value.map(str::to_owned);
        let explanation = table.explain(&m).expect("explain");
        let expected: Vec<String> = expected.iter().map(|s| format!("{s:?}")).collect();
        assert_eq!(explanation.routes, expected, "{value:?}");
    }
}

#[test]
fn enrichments_replace_a_property_of_the_same_key_and_read_twin_paths_case_insensitively() {
    let text = CONFIG.replace(
        "value = \"$twin.tags.location\"",
        "value = \"$twin.Tags.Location\"",
    );
    let loaded = LoadedConfig::parse(Path::new("t.toml"), &text).expect("valid config");
    let table = RoutingTable::compile(&loaded).expect("routes compile");
    let mut m = message(
        Some("hot"),
        "Telemetry",
        Some(r#"{"tags":{"location":"lab","n":3}}"#),
    );
    m.application_properties
        .push(("location".to_owned(), AppPropertyValue::Long(7)));
    let batch = MessageBatchBuilder::batch_of(&[m]).expect("batch");
    let enriched = table.rows_for(0, &batch, &[0]).expect("enrich");
    let message = MessageColumns::try_new(&enriched)
        .expect("schema")
        .message(0);
    let locations: Vec<&AppPropertyValue> = message
        .application_properties
        .iter()
        .filter(|(k, _)| k == "location")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        locations,
        [&AppPropertyValue::from("lab")],
        "replaced, as a string"
    );
    assert_eq!(
        message.twin.as_deref(),
        Some(r#"{"tags":{"location":"lab","n":3}}"#)
    );
}

#[test]
fn digital_twin_change_events_are_never_enriched() {
    let text = CONFIG.replace(
        "[[routes]]\nname = \"off\"",
        "[[routes]]\nname = \"pnp\"\nsource = \"DigitalTwinChangeEvents\"\nendpoint = \"a\"\n[[routes]]\nname = \"off\"",
    );
    let loaded = LoadedConfig::parse(Path::new("t.toml"), &text).expect("valid config");
    let table = RoutingTable::compile(&loaded).expect("routes compile");
    let pnp = message(
        None,
        "digitalTwinChangeEvents",
        Some(r#"{"tags":{"location":"lab"}}"#),
    );
    let telemetry = message(Some("hot"), "Telemetry", None);
    let batch = MessageBatchBuilder::batch_of(&[pnp, telemetry]).expect("batch");
    let routed = table.route(&batch).expect("route");
    assert_eq!(routed.rows[0], vec![0, 1], "both reach endpoint a");
    let enriched = table.rows_for(0, &batch, &routed.rows[0]).expect("enrich");
    let columns = MessageColumns::try_new(&enriched).expect("schema");
    assert!(columns.message(0).application_properties.is_empty());
    assert_eq!(
        columns.message(1).application_properties.len(),
        3,
        "level, hub, location"
    );
}

#[test]
fn an_endpoint_taking_every_row_shares_the_batch_and_a_subset_is_copied_in_order() {
    let table = table();
    let messages: Vec<Message> = (0..3)
        .map(|level| message(Some(&format!("level-{level}")), "Telemetry", None))
        .collect();
    let batch = MessageBatchBuilder::batch_of(&messages).expect("batch");
    let levels = |rows: &RecordBatch| -> Vec<AppPropertyValue> {
        let columns = MessageColumns::try_new(rows).expect("schema");
        (0..rows.num_rows())
            .map(|row| columns.message(row).application_properties[0].1.clone())
            .collect()
    };
    // Endpoint 1 ("b") has no enrichments, so what `rows_for` returns is the selection itself.
    let every = table.rows_for(1, &batch, &[0, 1, 2]).expect("every row");
    for (shared, original) in every.columns().iter().zip(batch.columns()) {
        assert!(
            shared.to_data().ptr_eq(&original.to_data()),
            "every row of the batch: its columns are shared, not copied"
        );
    }
    let cases: &[(&[u32], &[&str])] = &[
        (&[0, 1, 2], &["level-0", "level-1", "level-2"]),
        (&[0, 2], &["level-0", "level-2"]),
        (&[2, 1, 0], &["level-2", "level-1", "level-0"]),
        (&[1], &["level-1"]),
    ];
    for (rows, expected) in cases {
        let selected = table.rows_for(1, &batch, rows).expect("rows");
        let expected: Vec<AppPropertyValue> = expected
            .iter()
            .map(|level| AppPropertyValue::from(*level))
            .collect();
        assert_eq!(levels(&selected), expected, "rows {rows:?}");
    }
}
