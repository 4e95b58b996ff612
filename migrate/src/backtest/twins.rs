//! Twins for a backtest: archived messages carry none, so `$twin` conditions would be `undefined`
//! for every message. `--twins FILE` takes the twins as the IoT hub's twin query returns them
//! (`az iot hub query --hub-name <hub> --query-command "SELECT * FROM devices" --output json`, and
//! `… FROM devices.modules` for module twins: a JSON array of twin documents, or several such
//! files' documents concatenated) and attaches each message's twin as the engine does: the
//! module's twin when `connectionModuleId` is set, else the device's.
//!
//! The twin column is dictionary-encoded, as the engine builds it: each twin's JSON text is held
//! once and each row carries a key, so attaching is a hash lookup per row.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, DictionaryArray, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::Int32Type;
use hubroute_message::{MessageColumns, columns as col};
use serde_json::Value;

use crate::{Error, Result};

/// Twins by device and module id.
#[derive(Debug)]
pub struct TwinSet {
    keys: HashMap<(String, Option<String>), i32>,
    values: Arc<StringArray>,
}

impl TwinSet {
    /// The twins of `text` (from `file`, named in errors): one or more JSON arrays or objects of
    /// twin documents, each with a `deviceId` (and a `moduleId` for a module twin).
    pub fn parse(file: &str, text: &str) -> Result<Self> {
        let mut keys = HashMap::new();
        let mut values = Vec::new();
        let documents = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        let mut record = 0;
        let error = |record: usize, problem: String| Error::Input {
            file: file.to_owned(),
            record,
            problem,
        };
        for document in documents {
            let document = document.map_err(|e| error(record + 1, format!("not JSON: {e}")))?;
            let twins = match document {
                Value::Array(twins) => twins,
                twin => vec![twin],
            };
            for twin in twins {
                record += 1;
                let id = |name: &str| {
                    twin.get(name)
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                };
                let device = id("deviceId").ok_or_else(|| {
                    error(
                        record,
                        "not a twin: it has no `deviceId` (save the output of `az iot hub query \
                         --query-command \"SELECT * FROM devices\" --output json`)"
                            .to_owned(),
                    )
                })?;
                let key = (device.to_owned(), id("moduleId").map(str::to_owned));
                let index = i32::try_from(values.len())
                    .map_err(|_| error(record, "too many twins".to_owned()))?;
                values.push(twin.to_string());
                keys.insert(key, index);
            }
        }
        Ok(Self {
            keys,
            values: Arc::new(StringArray::from(values)),
        })
    }

    /// Twins held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no twin is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// `batch` (a message batch) with each row's twin in the `twin` column.
    pub(crate) fn attach(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let columns = MessageColumns::try_new(batch)?;
        fn text(array: &StringArray, row: usize) -> Option<&str> {
            array.is_valid(row).then(|| array.value(row))
        }
        let mut lookup = (String::new(), None::<String>);
        let keys: Int32Array = (0..batch.num_rows())
            .map(|row| {
                let device = text(columns.connection_device_id, row)?;
                lookup.0.clear();
                lookup.0.push_str(device);
                lookup.1 = text(columns.connection_module_id, row).map(str::to_owned);
                self.keys.get(&lookup).copied()
            })
            .collect();
        let twins = DictionaryArray::<Int32Type>::try_new(keys, Arc::clone(&self.values) as _)
            .map_err(hubroute_message::Error::from)?;
        let schema = batch.schema();
        let index = schema
            .index_of(col::TWIN)
            .map_err(hubroute_message::Error::from)?;
        let mut replaced = batch.columns().to_vec();
        replaced[index] = Arc::new(twins);
        Ok(RecordBatch::try_new(schema, replaced).map_err(hubroute_message::Error::from)?)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use hubroute_engine::config::LoadedConfig;
    use hubroute_engine::routing::RoutingTable;
    use hubroute_message::{Message, MessageBatchBuilder};

    use super::*;

    #[test]
    fn twin_conditions_see_the_twin_of_the_device_or_module() {
        let twins = TwinSet::parse(
            "twins.json",
            r#"[{"deviceId": "d1", "tags": {"site": "plant-3"}},
                {"deviceId": "d2", "tags": {"site": "plant-4"}}]
               [{"deviceId": "d2", "moduleId": "m", "tags": {"site": "plant-3"}}]"#,
        )
        .unwrap();
        assert_eq!(twins.len(), 3);
        let config = r#"
[source]
connection_string = "Endpoint=sb://127.0.0.1:5673;SharedAccessKeyName=k;SharedAccessKey=s;EntityPath=hub;UseDevelopmentEmulator=true"
[[endpoints]]
sink = { type = "parquet", name = "p3" }
[[routes]]
name = "plant-3"
condition = "$twin.tags.site = 'plant-3'"
endpoint = "p3"
"#;
        let table =
            RoutingTable::compile(&LoadedConfig::parse(Path::new("t.toml"), config).unwrap())
                .unwrap();
        let messages: Vec<Message> = [("d1", None), ("d2", None), ("d2", Some("m")), ("d3", None)]
            .into_iter()
            .map(|(device, module)| {
                let mut m = Message::telemetry("{}");
                m.system.connection_device_id = Some(device.to_owned());
                m.system.connection_module_id = module.map(str::to_owned);
                m
            })
            .collect();
        let batch = MessageBatchBuilder::batch_of(&messages).unwrap();
        let without = table.decide(&batch).unwrap();
        assert_eq!(
            (without.matched[0].len(), without.undefined[0].len()),
            (0, 4)
        );
        let with = table.decide(&twins.attach(&batch).unwrap()).unwrap();
        assert_eq!(with.matched[0], [0, 2]);
        assert_eq!(with.undefined[0], [3], "d3 has no twin");

        let error = TwinSet::parse("twins.json", r#"[{"tags": {}}]"#).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("twins.json: record 1: not a twin"),
            "{error}"
        );
    }
}
