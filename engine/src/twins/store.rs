//! The in-memory twin store: every device and module twin as compact JSON text, how stream events
//! patch it, and how it is attached to a message batch.
//!
//! # Layout and memory
//!
//! One hash map entry per device, keyed by the device id, holding the device twin and a small vector
//! of its module twins (most devices have none, and a handful at most). A twin is its `version` and
//! its JSON text in one boxed `str`: text is the most compact faithful form (a parsed DOM is several
//! times larger) and it is exactly what the `twin` column carries, so attaching copies bytes and parses
//! nothing. Patches (rare next to telemetry) parse, merge and re-serialise one twin.
//!
//! # Ordering
//!
//! A partition's events are applied in stream order as its batches are attached, so a message sees
//! the twin as of every twin event before it in its partition (IoT Hub partitions by device id, so a
//! device's twin events and messages share a partition). `version` guards against going backwards: a
//! patch or replacement whose version is not newer than the stored twin is skipped as stale (a full
//! query that raced the stream, a replayed event). Per partition, the sequence number of the last
//! attached event is kept, so that events already reflected in a loaded snapshot are not applied
//! twice after a restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array as _, ArrayBuilder as _, ArrayRef, DictionaryArray, Int32Array, RecordBatch, StringArray,
    StringBuilder,
};
use arrow::datatypes::Int32Type;
use hubroute_message::{MessageColumns, columns as col};
use hubroute_protocol::iothub::{event_properties, message_source, op_type};
use serde_json::{Map, Value};

use crate::Result;
use crate::config::TwinUpdateEvents;

/// One twin: its version and its JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Twin {
    /// The twin's `version` (0 when the document has none).
    pub(crate) version: i64,
    /// The twin as compact JSON.
    pub(crate) json: Box<str>,
}

impl Twin {
    /// A twin from its JSON document.
    pub(crate) fn from_value(value: &Value) -> Self {
        Self {
            version: value.get("version").and_then(Value::as_i64).unwrap_or(0),
            json: value.to_string().into_boxed_str(),
        }
    }
}

/// Which twin: a device's, or one of its modules'.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TwinId {
    pub(crate) device: String,
    pub(crate) module: Option<String>,
}

impl TwinId {
    /// The id of the twin a JSON twin document describes (`deviceId`, `moduleId`).
    pub(crate) fn of(value: &Value) -> Option<Self> {
        Some(Self {
            device: value.get("deviceId")?.as_str()?.to_owned(),
            module: value
                .get("moduleId")
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
                .map(str::to_owned),
        })
    }
}

impl std::fmt::Display for TwinId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.module {
            Some(module) => write!(f, "{}/{module}", self.device),
            None => f.write_str(&self.device),
        }
    }
}

#[derive(Debug, Default)]
struct DeviceEntry {
    twin: Option<Twin>,
    modules: Vec<(Box<str>, Twin)>,
}

/// What attaching one batch did to the store.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Twin events applied (patches, replacements, creations, deletions).
    pub(crate) applied: u64,
    /// Events skipped because the stored twin is as new or newer.
    pub(crate) stale: u64,
    /// Patches for a twin the store does not hold (it is fetched in the background).
    pub(crate) unknown: u64,
}

/// The twins, and how far each partition's events have been applied. The engine keeps one behind
/// `Twins`; it is public so that benchmarks can measure it on its own.
#[derive(Debug, Default)]
pub struct TwinStore {
    devices: HashMap<Box<str>, DeviceEntry>,
    /// Twins held (devices and modules).
    count: usize,
    /// Bytes of twin JSON and keys held.
    text_bytes: usize,
    /// Per partition, the sequence number of the last event attached.
    positions: BTreeMap<String, i64>,
    /// Bumped by every change; the snapshot writer compares it.
    changes: u64,
    /// Twins changed by events while a full query runs, so that it does not undo them.
    touched_during_resync: Option<Touched>,
    /// How `updateTwin` bodies are applied.
    update_events: TwinUpdateEvents,
}

/// The twins whose state stream events decided while a full query ran, so that the query's
/// result, possibly read before those events, does not undo them.
#[derive(Debug, Default)]
struct Touched {
    /// Twins created, changed or deleted.
    twins: HashSet<TwinId>,
    /// Devices deleted: their module twins went with them, whatever the query read.
    deleted_devices: HashSet<String>,
}

impl Touched {
    fn contains(&self, id: &TwinId) -> bool {
        self.twins.contains(id)
            || (id.module.is_some() && self.deleted_devices.contains(&id.device))
    }
}

impl TwinStore {
    /// An empty store that applies `updateTwin` bodies as `update_events` says.
    pub(crate) fn reading_updates_as(update_events: TwinUpdateEvents) -> Self {
        Self {
            update_events,
            ..Self::default()
        }
    }

    /// Twins held.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Stores a twin given as JSON text (as the twin query returns it) for `device` (and `module`).
    pub fn insert_json(&mut self, device: &str, module: Option<&str>, json: &str) -> Result<()> {
        let value: Value = serde_json::from_str(json).map_err(|e| crate::Error::TwinService {
            host: String::new(),
            problem: format!("a twin is not JSON: {e}"),
        })?;
        self.insert(
            &TwinId {
                device: device.to_owned(),
                module: module.map(str::to_owned),
            },
            Twin::from_value(&value),
        );
        Ok(())
    }

    /// `TwinStore::attach` for callers outside the engine: the batch with its `twin` column.
    pub fn attach_twins(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        self.attach(batch).map(|(batch, _, _)| batch)
    }

    /// An estimate of the bytes the store occupies: twin and key text plus the map and allocator
    /// overhead per entry (see `benches/twin_store.rs` for the measurement behind it).
    pub fn estimated_bytes(&self) -> usize {
        const PER_DEVICE: usize = 96;
        const PER_MODULE: usize = 56;
        let modules = self.count.saturating_sub(self.devices.len());
        self.text_bytes + self.devices.len() * PER_DEVICE + modules * PER_MODULE
    }

    /// The change counter.
    pub(crate) fn changes(&self) -> u64 {
        self.changes
    }

    /// Per partition, the sequence number of the last attached event.
    pub(crate) fn positions(&self) -> &BTreeMap<String, i64> {
        &self.positions
    }

    /// The twin of `device` (and `module`), if held.
    pub(crate) fn get(&self, device: &str, module: Option<&str>) -> Option<&Twin> {
        let entry = self.devices.get(device)?;
        match module {
            None => entry.twin.as_ref(),
            Some(module) => entry
                .modules
                .iter()
                .find(|(m, _)| &**m == module)
                .map(|(_, twin)| twin),
        }
    }

    /// Every twin, devices before their modules, in no particular device order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (TwinId, &Twin)> {
        self.devices.iter().flat_map(|(device, entry)| {
            let own = entry.twin.as_ref().map(|twin| {
                (
                    TwinId {
                        device: device.to_string(),
                        module: None,
                    },
                    twin,
                )
            });
            own.into_iter()
                .chain(entry.modules.iter().map(move |(module, twin)| {
                    (
                        TwinId {
                            device: device.to_string(),
                            module: Some(module.to_string()),
                        },
                        twin,
                    )
                }))
        })
    }

    /// Stores `twin` as `id`'s, replacing any other.
    pub(crate) fn insert(&mut self, id: &TwinId, twin: Twin) {
        let added = twin.json.len();
        let entry = match self.devices.get_mut(id.device.as_str()) {
            Some(entry) => entry,
            None => {
                self.text_bytes += id.device.len();
                self.devices
                    .entry(id.device.clone().into_boxed_str())
                    .or_default()
            }
        };
        let replaced = match &id.module {
            None => entry.twin.replace(twin),
            Some(module) => match entry.modules.iter_mut().find(|(m, _)| **m == **module) {
                Some((_, slot)) => Some(std::mem::replace(slot, twin)),
                None => {
                    self.text_bytes += module.len();
                    entry.modules.push((module.clone().into_boxed_str(), twin));
                    None
                }
            },
        };
        match replaced {
            Some(old) => self.text_bytes -= old.json.len(),
            None => self.count += 1,
        }
        self.text_bytes += added;
        self.touch(id);
    }

    /// Drops `id`'s twin; dropping a device twin drops its modules' twins too.
    pub(crate) fn remove(&mut self, id: &TwinId) -> bool {
        let removed = match &id.module {
            None => match self.devices.remove(id.device.as_str()) {
                Some(entry) => {
                    self.text_bytes -= id.device.len();
                    for (module, twin) in &entry.modules {
                        self.text_bytes -= module.len() + twin.json.len();
                    }
                    let own = entry.twin.as_ref().map_or(0, |t| t.json.len());
                    self.text_bytes -= own;
                    self.count -= entry.modules.len() + usize::from(entry.twin.is_some());
                    true
                }
                None => false,
            },
            Some(module) => {
                let Some(entry) = self.devices.get_mut(id.device.as_str()) else {
                    return false;
                };
                match entry.modules.iter().position(|(m, _)| **m == **module) {
                    Some(index) => {
                        let (module, twin) = entry.modules.swap_remove(index);
                        self.text_bytes -= module.len() + twin.json.len();
                        self.count -= 1;
                        true
                    }
                    None => false,
                }
            }
        };
        if removed {
            self.changes += 1;
            self.note_deleted(id);
        }
        removed
    }

    fn touch(&mut self, id: &TwinId) {
        self.changes += 1;
        self.note_touched(id);
    }

    /// Records, while a full query runs, that the stream decided `id`'s state.
    fn note_touched(&mut self, id: &TwinId) {
        if let Some(touched) = &mut self.touched_during_resync {
            touched.twins.insert(id.clone());
        }
    }

    /// Records, while a full query runs, that the stream deleted `id` (a device with its modules).
    fn note_deleted(&mut self, id: &TwinId) {
        if let Some(touched) = &mut self.touched_during_resync {
            touched.twins.insert(id.clone());
            if id.module.is_none() {
                touched.deleted_devices.insert(id.device.clone());
            }
        }
    }

    /// Starts recording which twins events change, for [`TwinStore::finish_resync`].
    pub(crate) fn begin_resync(&mut self) {
        self.touched_during_resync = Some(Touched::default());
    }

    /// Merges a full query's result. A twin a stream event created, changed or deleted while the
    /// query ran keeps the stream's state, present or absent: the query may have read it before
    /// the event (a deleted device would come back; a device deleted and created again, whose
    /// version starts over at 1, would lose to its old twin's higher version). Any other queried
    /// twin replaces the stored one unless the stored one is newer, and a stored twin the query
    /// did not return is dropped.
    pub(crate) fn finish_resync(&mut self, queried: Vec<(TwinId, Twin)>) {
        let touched = self.touched_during_resync.take().unwrap_or_default();
        let mut seen = HashSet::with_capacity(queried.len());
        for (id, twin) in queried {
            let newer_held = self
                .get(&id.device, id.module.as_deref())
                .is_some_and(|held| held.version > twin.version);
            if !newer_held && !touched.contains(&id) {
                self.insert(&id, twin);
            }
            seen.insert(id);
        }
        let gone: Vec<TwinId> = self
            .iter()
            .map(|(id, _)| id)
            .filter(|id| !seen.contains(id) && !touched.contains(id))
            .collect();
        for id in &gone {
            self.remove(id);
        }
        self.touched_during_resync = None;
    }

    /// Replaces everything with a snapshot's content.
    pub(crate) fn restore(&mut self, twins: Vec<(TwinId, Twin)>, positions: BTreeMap<String, i64>) {
        *self = Self::default();
        for (id, twin) in twins {
            self.insert(&id, twin);
        }
        self.positions = positions;
    }

    /// Applies one twin change or lifecycle event.
    fn apply_event(
        &mut self,
        source: &str,
        op: Option<&str>,
        id: &TwinId,
        body: &[u8],
        missing: &mut Vec<TwinId>,
    ) -> Applied {
        let mut applied = Applied::default();
        let Ok(body) = serde_json::from_slice::<Value>(body) else {
            tracing::warn!(twin = %id, source, "a twin event's body is not JSON; ignored");
            return applied;
        };
        let version = body.get("version").and_then(Value::as_i64);
        let held_version = self
            .get(&id.device, id.module.as_deref())
            .map(|t| t.version);
        let is_newer = |held: Option<i64>| match (held, version) {
            (Some(held), Some(version)) => version > held,
            _ => true,
        };
        match (source, op) {
            (message_source::TWIN_CHANGE_EVENTS, Some(op_type::UPDATE_TWIN)) => {
                let Some(held) = self.get(&id.device, id.module.as_deref()) else {
                    applied.unknown += 1;
                    missing.push(id.clone());
                    return applied;
                };
                if !is_newer(held_version) {
                    applied.stale += 1;
                    return applied;
                }
                let Ok(mut twin) = serde_json::from_str::<Value>(&held.json) else {
                    return applied;
                };
                patch_twin(&mut twin, &body, self.update_events);
                if let (Some(version), Some(object)) = (version, twin.as_object_mut()) {
                    object.insert("version".to_owned(), Value::from(version));
                }
                self.insert(id, Twin::from_value(&twin));
                applied.applied += 1;
            }
            (message_source::TWIN_CHANGE_EVENTS, Some(op_type::REPLACE_TWIN))
            | (
                message_source::DEVICE_LIFECYCLE_EVENTS | message_source::MODULE_LIFECYCLE_EVENTS,
                Some(op_type::CREATE_DEVICE_IDENTITY | op_type::CREATE_MODULE_IDENTITY),
            ) => {
                if is_newer(held_version) {
                    let mut twin = body;
                    if let Some(object) = twin.as_object_mut() {
                        object
                            .entry("deviceId")
                            .or_insert_with(|| Value::from(id.device.clone()));
                        if let Some(module) = &id.module {
                            object
                                .entry("moduleId")
                                .or_insert_with(|| Value::from(module.clone()));
                        }
                    }
                    self.insert(id, Twin::from_value(&twin));
                    applied.applied += 1;
                } else {
                    applied.stale += 1;
                }
            }
            (
                message_source::DEVICE_LIFECYCLE_EVENTS | message_source::MODULE_LIFECYCLE_EVENTS,
                Some(op_type::DELETE_DEVICE_IDENTITY | op_type::DELETE_MODULE_IDENTITY),
            ) => {
                if self.remove(id) {
                    applied.applied += 1;
                } else {
                    // Not held, perhaps not yet: a full query running now must not bring it back.
                    self.note_deleted(id);
                }
            }
            _ => {}
        }
        applied
    }

    /// Attaches to every row of `batch` the twin of its device (or module), applying the twin
    /// change and lifecycle events of the batch in order as it goes. Returns the batch with its
    /// `twin` column replaced, what was applied, and the twins that were missing for a patch.
    pub(crate) fn attach(
        &mut self,
        batch: &RecordBatch,
    ) -> Result<(RecordBatch, Applied, Vec<TwinId>)> {
        let columns = MessageColumns::try_new(batch)?;
        let rows = batch.num_rows();
        let mut applied = Applied::default();
        let mut missing = Vec::new();
        let mut keys: Vec<Option<i32>> = Vec::with_capacity(rows);
        let mut values = StringBuilder::new();
        let mut index: HashMap<(&str, Option<&str>), Option<i32>> = HashMap::new();
        let app = |row: usize, name: &str| {
            columns
                .application_properties_of(row)
                .find(|(key, _)| *key == name)
                .and_then(|(_, value)| value)
        };
        for row in 0..rows {
            let partition = columns.partition.value(row);
            let sequence_number = columns.sequence_number.value(row);
            let source = text(columns.message_source, row).filter(|s| is_twin_event(s));
            // A message's twin is its sending device's (or module's): the connection annotations.
            // Twin events name their device in application properties too.
            let device = text(columns.connection_device_id, row)
                .or_else(|| source.and_then(|_| app(row, event_properties::DEVICE_ID)));
            let module = text(columns.connection_module_id, row)
                .or_else(|| source.and_then(|_| app(row, event_properties::MODULE_ID)));
            if let (Some(device), Some(source)) = (device, source) {
                let applied_before = self.positions.get(partition).copied();
                if applied_before.is_none_or(|before| sequence_number > before) {
                    let op = app(row, event_properties::OP_TYPE);
                    let id = TwinId {
                        device: device.to_owned(),
                        module: module.map(str::to_owned),
                    };
                    let outcome =
                        self.apply_event(source, op, &id, columns.body.value(row), &mut missing);
                    applied.applied += outcome.applied;
                    applied.stale += outcome.stale;
                    applied.unknown += outcome.unknown;
                    // This twin changed: later rows must see the new text.
                    index.remove(&(device, module));
                    if id.module.is_none() {
                        index.retain(|(d, _), _| *d != device);
                    }
                }
            }
            let key = match device {
                None => None,
                Some(device) => *index.entry((device, module)).or_insert_with(|| {
                    self.get(device, module).and_then(|twin| {
                        let key = i32::try_from(values.len()).ok()?;
                        values.append_value(&twin.json);
                        Some(key)
                    })
                }),
            };
            keys.push(key);
        }
        if rows > 0 {
            // A batch is one partition's, in order: its last row is its furthest position.
            let partition = columns.partition.value(rows - 1);
            let sequence_number = columns.sequence_number.value(rows - 1);
            match self.positions.get_mut(partition) {
                Some(position) => *position = (*position).max(sequence_number),
                None => {
                    self.positions.insert(partition.to_owned(), sequence_number);
                }
            }
        }
        let twins = DictionaryArray::<Int32Type>::try_new(
            Int32Array::from(keys),
            Arc::new(values.finish()) as ArrayRef,
        )
        .map_err(hubroute_message::Error::from)?;
        let schema = batch.schema();
        let twin_index = schema
            .index_of(col::TWIN)
            .map_err(hubroute_message::Error::from)?;
        let mut replaced = batch.columns().to_vec();
        replaced[twin_index] = Arc::new(twins);
        let batch =
            RecordBatch::try_new(schema, replaced).map_err(hubroute_message::Error::from)?;
        Ok((batch, applied, missing))
    }
}

fn text(array: &StringArray, row: usize) -> Option<&str> {
    array.is_valid(row).then(|| array.value(row))
}

/// Whether events of this `iothub-message-source` change twins.
pub(crate) fn is_twin_event(source: &str) -> bool {
    matches!(
        source,
        message_source::TWIN_CHANGE_EVENTS
            | message_source::DEVICE_LIFECYCLE_EVENTS
            | message_source::MODULE_LIFECYCLE_EVENTS
    )
}

/// Applies an `updateTwin` body (the changed `tags` and `properties.desired|reported`, each with its
/// `$metadata` and `$version`) to a twin: JSON merge semantics, `null` removes a key; with
/// [`TwinUpdateEvents::Sections`], `tags` and `desired` replace the stored sections instead.
fn patch_twin(twin: &mut Value, patch: &Value, update_events: TwinUpdateEvents) {
    let Some(twin) = twin.as_object_mut() else {
        return;
    };
    let replaces = update_events == TwinUpdateEvents::Sections;
    if let Some(tags) = patch.get("tags") {
        apply_section(twin, "tags", tags, replaces);
    }
    if let Some(properties) = patch.get("properties").and_then(Value::as_object) {
        let target = twin
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(target) = target.as_object_mut() {
            if let Some(desired) = properties.get("desired") {
                apply_section(target, "desired", desired, replaces);
            }
            if let Some(reported) = properties.get("reported") {
                apply_section(target, "reported", reported, false);
            }
        }
    }
}

/// Merges `patch` into `parent[key]`, or with `replaces` puts it there in place of what was held
/// (keys set to `null` left out either way).
fn apply_section(parent: &mut Map<String, Value>, key: &str, patch: &Value, replaces: bool) {
    if replaces {
        parent.remove(key);
    }
    merge_into(parent, key, patch);
}

fn merge_into(parent: &mut Map<String, Value>, key: &str, patch: &Value) {
    let slot = parent
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    merge(slot, patch);
}

/// RFC 7396 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(target) = target.as_object_mut() {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge(
                    target
                        .entry(key.clone())
                        .or_insert_with(|| Value::Object(Map::new())),
                    value,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
