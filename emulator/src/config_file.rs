//! The Azure Event Hubs emulator's own `Config.json`, so users can bring the file they already have.
//!
//! The format (schema `EventHub-Emulator/Schema/Config-schema.json`, reference §4.10) is walked as a
//! `serde_json::Value` rather than deserialised into derived structs: every rule the official
//! emulator enforces then gets an error naming the exact JSON path (`UserConfig.NamespaceConfig[0].
//! Entities[2].PartitionCount`) and what is allowed there, which derived deserialisers cannot say.

use std::path::Path;

use hubroute_protocol::address::DEFAULT_CONSUMER_GROUP;
use serde_json::{Map, Value};

use crate::{Error, HubConfig, Result};

/// A rule of the format broken at one JSON path; [`load_config_file`] adds the file name.
#[derive(Debug)]
pub(crate) struct Invalid {
    /// JSON path of the offending field, e.g. `UserConfig.NamespaceConfig[0].Name`.
    path: String,
    /// What is wrong and what is allowed.
    problem: String,
}

/// The only namespace name the official emulator accepts.
const NAMESPACE_NAME: &str = "emulatorNs1";
/// The only namespace type the official emulator accepts.
const NAMESPACE_TYPE: &str = "EventHub";
/// Entities (event hubs) per namespace the official emulator allows.
const MAX_ENTITIES: usize = 10;
/// Consumer groups per entity the official emulator allows (besides `$Default`).
const MAX_CONSUMER_GROUPS: usize = 20;
/// Partitions per event hub the official emulator allows.
const MAX_PARTITIONS: u32 = 32;
/// Accepted `LoggingConfig.Type` values.
const LOGGING_TYPES: [&str; 4] = ["File", "Console", "File,Console", "Console,File"];

/// Reads and validates an Event Hubs emulator `Config.json` file into the event hubs it declares.
///
/// `$Default` is implied (and may not be declared, as in the official emulator); the returned
/// consumer groups are the declared ones in file order.
pub fn load_config_file(path: &Path) -> Result<Vec<HubConfig>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigFileRead {
        path: path.to_owned(),
        source,
    })?;
    parse_config(&text).map_err(|invalid| Error::ConfigFile {
        path: path.to_owned(),
        problem: format!("`{}` {}", invalid.path, invalid.problem),
    })
}

/// Parses the text of a `Config.json`.
pub(crate) fn parse_config(text: &str) -> Result<Vec<HubConfig>, Invalid> {
    let root: Value = serde_json::from_str(text).map_err(|error| {
        invalid(
            "$",
            format!(
                "not valid JSON ({error}); expected {{\"UserConfig\": {{\"NamespaceConfig\": [...]}}}}"
            ),
        )
    })?;
    let root = object(&root, "$")?;
    let user = object(required(root, "UserConfig", "$")?, "UserConfig")?;
    if let Some(logging) = user.get("LoggingConfig") {
        let logging = object(logging, "UserConfig.LoggingConfig")?;
        let path = "UserConfig.LoggingConfig.Type";
        let kind = string(required(logging, "Type", "UserConfig.LoggingConfig")?, path)?;
        if !LOGGING_TYPES.contains(&kind) {
            return Err(invalid(
                path,
                format!(
                    "`{kind}` is not allowed; use one of {}",
                    LOGGING_TYPES.join(", ")
                ),
            ));
        }
    }
    let namespaces = array(
        required(user, "NamespaceConfig", "UserConfig")?,
        "UserConfig.NamespaceConfig",
    )?;
    let [namespace] = namespaces else {
        return Err(invalid(
            "UserConfig.NamespaceConfig",
            format!(
                "has {} namespaces; the emulator supports exactly one (Type \"EventHub\", Name \"emulatorNs1\")",
                namespaces.len()
            ),
        ));
    };
    let ns_path = "UserConfig.NamespaceConfig[0]";
    let namespace = object(namespace, ns_path)?;
    for (field, expected) in [("Type", NAMESPACE_TYPE), ("Name", NAMESPACE_NAME)] {
        let path = format!("{ns_path}.{field}");
        let value = string(required(namespace, field, ns_path)?, &path)?;
        if value != expected {
            return Err(invalid(
                &path,
                format!("is `{value}`; the emulator accepts only `{expected}`"),
            ));
        }
    }
    let entities_path = format!("{ns_path}.Entities");
    let entities = array(required(namespace, "Entities", ns_path)?, &entities_path)?;
    if entities.is_empty() || entities.len() > MAX_ENTITIES {
        return Err(invalid(
            &entities_path,
            format!(
                "has {} entities; declare between 1 and {MAX_ENTITIES} event hubs",
                entities.len()
            ),
        ));
    }
    let mut hubs: Vec<HubConfig> = Vec::with_capacity(entities.len());
    for (index, entity) in entities.iter().enumerate() {
        let path = format!("{entities_path}[{index}]");
        let hub = parse_entity(entity, &path)?;
        if hubs.iter().any(|h| h.name.eq_ignore_ascii_case(&hub.name)) {
            return Err(invalid(
                &format!("{path}.Name"),
                format!(
                    "`{}` is declared twice (names are case-insensitive); give each event hub a unique name",
                    hub.name
                ),
            ));
        }
        hubs.push(hub);
    }
    Ok(hubs)
}

fn parse_entity(entity: &Value, path: &str) -> Result<HubConfig, Invalid> {
    let entity = object(entity, path)?;
    let name_path = format!("{path}.Name");
    let name = string(required(entity, "Name", path)?, &name_path)?;
    check_entity_name(name, &name_path)?;

    let count_path = format!("{path}.PartitionCount");
    let partition_count = match required(entity, "PartitionCount", path)? {
        Value::String(text) => text.trim().parse::<u32>().ok(),
        Value::Number(_) => {
            return Err(invalid(
                &count_path,
                "must be a string, e.g. \"4\" (the emulator's schema types it as a string)",
            ));
        }
        _ => None,
    }
    .filter(|count| (1..=MAX_PARTITIONS).contains(count))
    .ok_or_else(|| {
        invalid(
            &count_path,
            format!(
                "must be a string holding a whole number from 1 to {MAX_PARTITIONS}, e.g. \"4\""
            ),
        )
    })?;

    let groups_path = format!("{path}.ConsumerGroups");
    let groups = array(required(entity, "ConsumerGroups", path)?, &groups_path)?;
    if groups.is_empty() || groups.len() > MAX_CONSUMER_GROUPS {
        return Err(invalid(
            &groups_path,
            format!(
                "has {} consumer groups; declare between 1 and {MAX_CONSUMER_GROUPS} ($Default is always created)",
                groups.len()
            ),
        ));
    }
    let mut consumer_groups: Vec<String> = Vec::with_capacity(groups.len());
    for (index, group) in groups.iter().enumerate() {
        let group_path = format!("{groups_path}[{index}]");
        let group = object(group, &group_path)?;
        let group_name_path = format!("{group_path}.Name");
        let group_name = string(required(group, "Name", &group_path)?, &group_name_path)?;
        if group_name.eq_ignore_ascii_case(DEFAULT_CONSUMER_GROUP) {
            return Err(invalid(
                &group_name_path,
                "`$Default` is created automatically and may not be declared; remove it",
            ));
        }
        check_entity_name(group_name, &group_name_path)?;
        if consumer_groups
            .iter()
            .any(|g| g.eq_ignore_ascii_case(group_name))
        {
            return Err(invalid(
                &group_name_path,
                format!("`{group_name}` is declared twice; give each consumer group a unique name"),
            ));
        }
        consumer_groups.push(group_name.to_owned());
    }
    Ok(HubConfig {
        name: name.to_owned(),
        partition_count,
        consumer_groups,
    })
}

/// Event Hubs entity names: 1–256 characters, letters, digits, `.`, `-`, `_`, starting and ending
/// with a letter or digit.
fn check_entity_name(name: &str, path: &str) -> Result<(), Invalid> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    let valid_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 256 || !valid_chars || !valid_ends {
        return Err(invalid(
            path,
            format!(
                "`{name}` is not a valid name; use 1 to 256 letters, digits, `.`, `-` or `_`, \
                 starting and ending with a letter or digit"
            ),
        ));
    }
    Ok(())
}

fn invalid(path: &str, problem: impl Into<String>) -> Invalid {
    Invalid {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

fn required<'v>(
    object: &'v Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<&'v Value, Invalid> {
    object.get(key).ok_or_else(|| {
        let path = if parent == "$" {
            key.to_owned()
        } else {
            format!("{parent}.{key}")
        };
        invalid(&path, "is missing (names are case-sensitive)")
    })
}

fn object<'v>(value: &'v Value, path: &str) -> Result<&'v Map<String, Value>, Invalid> {
    value.as_object().ok_or_else(|| {
        invalid(
            path,
            format!("must be a JSON object, found {}", kind(value)),
        )
    })
}

fn array<'v>(value: &'v Value, path: &str) -> Result<&'v [Value], Invalid> {
    value
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| invalid(path, format!("must be a JSON array, found {}", kind(value))))
}

fn string<'v>(value: &'v Value, path: &str) -> Result<&'v str, Invalid> {
    value.as_str().ok_or_else(|| {
        invalid(
            path,
            format!("must be a JSON string, found {}", kind(value)),
        )
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config_with_entities(entities: &Value) -> String {
        json!({"UserConfig": {
            "NamespaceConfig": [{"Type": "EventHub", "Name": "emulatorNs1", "Entities": entities}],
            "LoggingConfig": {"Type": "File"}
        }})
        .to_string()
    }

    #[test]
    fn the_shipped_example_and_the_official_sample_parse() {
        let example = include_str!("../../examples/emulator-config.json");
        let hubs = parse_config(example).unwrap();
        assert_eq!(hubs.len(), 2);
        assert_eq!(hubs[0].name, "telemetry");
        assert_eq!(hubs[0].partition_count, 4);
        assert_eq!(hubs[0].consumer_groups, ["hubroute", "analytics"]);

        let official = r#"{"UserConfig":{"NamespaceConfig":[{"Type":"EventHub","Name":"emulatorNs1",
            "Entities":[{"Name":"eh1","PartitionCount":"2","ConsumerGroups":[{"Name":"cg1"}]}]}],
            "LoggingConfig":{"Type":"File"}}}"#;
        let hubs = parse_config(official).unwrap();
        assert_eq!(hubs.len(), 1);
        assert_eq!((hubs[0].name.as_str(), hubs[0].partition_count), ("eh1", 2));
        assert_eq!(hubs[0].consumer_groups, ["cg1"]);
    }

    #[test]
    fn invalid_files_name_the_field_and_what_is_allowed() {
        let entity = |name: &str, count: Value, groups: Value| json!({"Name": name, "PartitionCount": count, "ConsumerGroups": groups});
        let one_group = json!([{"Name": "cg1"}]);
        let eleven: Vec<Value> = (0..11)
            .map(|i| entity(&format!("eh{i}"), json!("1"), one_group.clone()))
            .collect();
        let twenty_one: Vec<Value> = (0..21).map(|i| json!({"Name": format!("cg{i}")})).collect();
        let cases: Vec<(&str, String, &str, &str)> = vec![
            ("not json", "{".into(), "$", "not valid JSON"),
            ("no user config", "{}".into(), "UserConfig", "is missing"),
            (
                "two namespaces",
                json!({"UserConfig": {"NamespaceConfig": [{}, {}]}}).to_string(),
                "UserConfig.NamespaceConfig",
                "exactly one",
            ),
            (
                "wrong namespace name",
                json!({"UserConfig": {"NamespaceConfig": [{"Type": "EventHub", "Name": "ns"}]}})
                    .to_string(),
                "UserConfig.NamespaceConfig[0].Name",
                "only `emulatorNs1`",
            ),
            (
                "wrong namespace type",
                json!({"UserConfig": {"NamespaceConfig": [{"Type": "ServiceBus", "Name": "emulatorNs1"}]}})
                    .to_string(),
                "UserConfig.NamespaceConfig[0].Type",
                "only `EventHub`",
            ),
            (
                "no entities",
                config_with_entities(&json!([])),
                "UserConfig.NamespaceConfig[0].Entities",
                "between 1 and 10",
            ),
            (
                "eleven entities",
                config_with_entities(&Value::Array(eleven)),
                "UserConfig.NamespaceConfig[0].Entities",
                "between 1 and 10",
            ),
            (
                "numeric partition count",
                config_with_entities(&json!([entity("eh1", json!(2), one_group.clone())])),
                "UserConfig.NamespaceConfig[0].Entities[0].PartitionCount",
                "must be a string",
            ),
            (
                "zero partitions",
                config_with_entities(&json!([entity("eh1", json!("0"), one_group.clone())])),
                "UserConfig.NamespaceConfig[0].Entities[0].PartitionCount",
                "from 1 to 32",
            ),
            (
                "non-numeric partitions",
                config_with_entities(&json!([entity("eh1", json!("four"), one_group.clone())])),
                "UserConfig.NamespaceConfig[0].Entities[0].PartitionCount",
                "whole number",
            ),
            (
                "bad hub name",
                config_with_entities(&json!([entity("-eh", json!("1"), one_group.clone())])),
                "UserConfig.NamespaceConfig[0].Entities[0].Name",
                "not a valid name",
            ),
            (
                "duplicate hub",
                config_with_entities(&json!([
                    entity("eh1", json!("1"), one_group.clone()),
                    entity("EH1", json!("1"), one_group)
                ])),
                "UserConfig.NamespaceConfig[0].Entities[1].Name",
                "declared twice",
            ),
            (
                "no consumer groups",
                config_with_entities(&json!([entity("eh1", json!("1"), json!([]))])),
                "UserConfig.NamespaceConfig[0].Entities[0].ConsumerGroups",
                "between 1 and 20",
            ),
            (
                "twenty-one consumer groups",
                config_with_entities(&json!([entity("eh1", json!("1"), Value::Array(twenty_one))])),
                "UserConfig.NamespaceConfig[0].Entities[0].ConsumerGroups",
                "between 1 and 20",
            ),
            (
                "declared $Default",
                config_with_entities(&json!([entity("eh1", json!("1"), json!([{"Name": "$default"}]))])),
                "UserConfig.NamespaceConfig[0].Entities[0].ConsumerGroups[0].Name",
                "created automatically",
            ),
            (
                "consumer group without a name",
                config_with_entities(&json!([entity("eh1", json!("1"), json!([{"name": "cg"}]))])),
                "UserConfig.NamespaceConfig[0].Entities[0].ConsumerGroups[0].Name",
                "is missing",
            ),
            (
                "bad logging type",
                json!({"UserConfig": {"NamespaceConfig": [], "LoggingConfig": {"Type": "Syslog"}}})
                    .to_string(),
                "UserConfig.LoggingConfig.Type",
                "File, Console",
            ),
        ];
        for (name, text, expected_path, expected_problem) in cases {
            let Invalid { path, problem } = parse_config(&text).expect_err(name);
            assert_eq!(path, expected_path, "{name}: {problem}");
            assert!(
                problem.contains(expected_problem),
                "{name}: `{problem}` lacks `{expected_problem}`"
            );
        }
    }

    #[test]
    fn file_errors_name_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let error = load_config_file(&missing).unwrap_err().to_string();
        assert!(error.contains("missing.json"), "{error}");
        let bad = dir.path().join("Config.json");
        std::fs::write(&bad, config_with_entities(&json!([]))).unwrap();
        let error = load_config_file(&bad).unwrap_err().to_string();
        assert!(
            error.contains("Config.json")
                && error.contains("`UserConfig.NamespaceConfig[0].Entities` has 0"),
            "{error}"
        );
        std::fs::write(&bad, include_str!("../../examples/emulator-config.json")).unwrap();
        assert_eq!(load_config_file(&bad).unwrap().len(), 2);
    }
}
