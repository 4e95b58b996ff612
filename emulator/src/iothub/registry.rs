//! The identity registry and twins of the emulated IoT hub: devices, their modules, keys, etags,
//! twin versions and `$metadata`, in the JSON shapes of IoT Hub's service API (reference
//! "iothub-service-and-endpoints" §1.2–§1.6).
//!
//! Everything here is synchronous and pure: operations return what changed (a [`Change`]) and the
//! caller turns changes into twin change and lifecycle events, publishing them while still holding
//! the registry's lock so that events reach the hub in the order the changes happened.
//!
//! Versions: a twin's `version` grows with every change (tags, desired or reported); `$version` of
//! desired and reported grows with changes of that section. ETags are base64 of a hub-wide change
//! counter, as IoT Hub's look (`AAAAAAAAAAE=`), so every change yields a new one.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

/// IoT Hub's timestamp format in twins and events: seven fractional digits (.NET ticks),
/// `2024-05-01T10:00:00.0000000Z`.
pub(crate) fn timestamp(at: DateTime<Utc>) -> String {
    use chrono::Timelike as _;
    format!(
        "{}.{:07}Z",
        at.format("%Y-%m-%dT%H:%M:%S"),
        at.nanosecond() % 1_000_000_000 / 100
    )
}

/// The `$lastUpdated` of a section never written.
const NEVER: &str = "0001-01-01T00:00:00Z";

/// A registry error: HTTP status, IoT Hub error code name and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegistryError {
    pub(crate) status: u16,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

fn not_found(what: &str) -> RegistryError {
    let code = if what.starts_with("module") {
        "ModuleNotFound"
    } else {
        "DeviceNotFound"
    };
    RegistryError {
        status: 404,
        code,
        message: format!("{what} does not exist"),
    }
}

fn invalid(message: impl Into<String>) -> RegistryError {
    RegistryError {
        status: 400,
        code: "ArgumentInvalid",
        message: message.into(),
    }
}

/// IoT Hub device and module ids: 1–128 ASCII letters, digits and `- : . + % _ # * ? ! ( ) , = @ ; $ '`.
pub(crate) fn check_id(what: &str, id: &str) -> Result<(), RegistryError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-:.+%_#*?!(),=@;$'".contains(c);
    if id.is_empty() || id.len() > 128 || !id.chars().all(allowed) {
        return Err(invalid(format!(
            "{what} `{id}` is invalid: use 1 to 128 ASCII letters, digits or - : . + % _ # * ? ! ( ) , = @ ; $ '"
        )));
    }
    Ok(())
}

/// A twin section (desired or reported) with its metadata.
#[derive(Debug, Clone)]
struct Section {
    values: Map<String, Value>,
    metadata: Map<String, Value>,
    version: i64,
}

impl Section {
    fn new() -> Self {
        let mut metadata = Map::new();
        metadata.insert("$lastUpdated".to_owned(), Value::from(NEVER));
        Self {
            values: Map::new(),
            metadata,
            version: 1,
        }
    }

    /// The section as IoT Hub renders it: values, `$metadata`, `$version`.
    fn render(&self) -> Value {
        let mut out = self.values.clone();
        out.insert("$metadata".to_owned(), Value::Object(self.metadata.clone()));
        out.insert("$version".to_owned(), Value::from(self.version));
        Value::Object(out)
    }

    /// Merges `patch` (JSON merge: `null` removes), updating metadata along every written path.
    /// Returns the change as an event reports it: the patch with metadata for what it wrote.
    fn patch(&mut self, patch: &Map<String, Value>, at: &str, desired: bool) -> Value {
        self.version += 1;
        let version = self.version;
        let mut changed_metadata = Map::new();
        merge_with_metadata(
            &mut self.values,
            &mut self.metadata,
            patch,
            at,
            desired.then_some(version),
            &mut changed_metadata,
        );
        stamp(&mut self.metadata, at, desired.then_some(version));
        stamp(&mut changed_metadata, at, desired.then_some(version));
        let mut reported = patch.clone();
        reported.insert("$metadata".to_owned(), Value::Object(changed_metadata));
        reported.insert("$version".to_owned(), Value::from(version));
        Value::Object(reported)
    }

    /// Replaces every value (`PUT /twins`): the whole section is rewritten.
    fn replace(&mut self, values: &Map<String, Value>, at: &str, desired: bool) {
        let mut removal: Map<String, Value> = self
            .values
            .keys()
            .map(|k| (k.clone(), Value::Null))
            .collect();
        removal.extend(values.clone());
        self.patch(&removal, at, desired);
    }
}

fn stamp(metadata: &mut Map<String, Value>, at: &str, version: Option<i64>) {
    metadata.insert("$lastUpdated".to_owned(), Value::from(at));
    if let Some(version) = version {
        metadata.insert("$lastUpdatedVersion".to_owned(), Value::from(version));
    }
}

fn merge_with_metadata(
    values: &mut Map<String, Value>,
    metadata: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    at: &str,
    version: Option<i64>,
    changed: &mut Map<String, Value>,
) {
    for (key, value) in patch {
        if value.is_null() {
            values.remove(key);
            metadata.remove(key);
            continue;
        }
        match (
            value.as_object(),
            values.get_mut(key).and_then(Value::as_object_mut),
        ) {
            (Some(inner_patch), Some(inner_values)) => {
                let inner_metadata = metadata
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !inner_metadata.is_object() {
                    *inner_metadata = Value::Object(Map::new());
                }
                let inner_metadata = inner_metadata.as_object_mut().expect("made an object");
                let mut inner_changed = Map::new();
                merge_with_metadata(
                    inner_values,
                    inner_metadata,
                    inner_patch,
                    at,
                    version,
                    &mut inner_changed,
                );
                stamp(inner_metadata, at, version);
                stamp(&mut inner_changed, at, version);
                changed.insert(key.clone(), Value::Object(inner_changed));
            }
            _ => {
                let mut stored = value.clone();
                strip_nulls(&mut stored);
                let written = metadata_of(&stored, at, version);
                values.insert(key.clone(), stored);
                metadata.insert(key.clone(), written.clone());
                changed.insert(key.clone(), written);
            }
        }
    }
}

/// Metadata of a freshly written value: `$lastUpdated` at every level of an object.
fn metadata_of(value: &Value, at: &str, version: Option<i64>) -> Value {
    let mut metadata = Map::new();
    if let Some(object) = value.as_object() {
        for (key, inner) in object {
            metadata.insert(key.clone(), metadata_of(inner, at, version));
        }
    }
    stamp(&mut metadata, at, version);
    Value::Object(metadata)
}

fn strip_nulls(value: &mut Value) {
    if let Some(object) = value.as_object_mut() {
        object.retain(|_, v| !v.is_null());
        object.values_mut().for_each(strip_nulls);
    }
}

/// One device's or module's twin.
#[derive(Debug, Clone)]
struct TwinDocument {
    tags: Map<String, Value>,
    desired: Section,
    reported: Section,
    version: i64,
    etag: String,
}

/// A device or module identity and its twin.
#[derive(Debug, Clone)]
struct Identity {
    device_id: String,
    module_id: Option<String>,
    generation_id: String,
    etag: String,
    primary_key: String,
    secondary_key: String,
    status: String,
    status_reason: Option<String>,
    status_updated: String,
    managed_by: Option<String>,
    iot_edge: bool,
    twin: TwinDocument,
}

impl Identity {
    /// `GET /devices/{id}` or `GET /devices/{id}/modules/{mid}`.
    fn render(&self) -> Value {
        let authentication = json!({
            "symmetricKey": {"primaryKey": self.primary_key, "secondaryKey": self.secondary_key},
            "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
            "type": "sas",
        });
        match &self.module_id {
            None => json!({
                "deviceId": self.device_id,
                "generationId": self.generation_id,
                "etag": self.etag,
                "connectionState": "Disconnected",
                "status": self.status,
                "statusReason": self.status_reason,
                "connectionStateUpdatedTime": NEVER,
                "statusUpdatedTime": self.status_updated,
                "lastActivityTime": NEVER,
                "cloudToDeviceMessageCount": 0,
                "authentication": authentication,
                "capabilities": {"iotEdge": self.iot_edge},
            }),
            Some(module) => json!({
                "moduleId": module,
                "managedBy": self.managed_by,
                "deviceId": self.device_id,
                "generationId": self.generation_id,
                "etag": self.etag,
                "connectionState": "Disconnected",
                "connectionStateUpdatedTime": NEVER,
                "lastActivityTime": NEVER,
                "cloudToDeviceMessageCount": 0,
                "authentication": authentication,
            }),
        }
    }

    /// The twin as `GET /twins/{id}` and the twin query return it.
    fn render_twin(&self) -> Value {
        let mut twin = Map::new();
        twin.insert("deviceId".to_owned(), Value::from(self.device_id.clone()));
        if let Some(module) = &self.module_id {
            twin.insert("moduleId".to_owned(), Value::from(module.clone()));
        }
        twin.insert("etag".to_owned(), Value::from(self.twin.etag.clone()));
        twin.insert("deviceEtag".to_owned(), Value::from(self.etag.clone()));
        twin.insert("status".to_owned(), Value::from(self.status.clone()));
        twin.insert(
            "statusUpdateTime".to_owned(),
            Value::from(self.status_updated.clone()),
        );
        twin.insert("connectionState".to_owned(), Value::from("Disconnected"));
        twin.insert("lastActivityTime".to_owned(), Value::from(NEVER));
        twin.insert("cloudToDeviceMessageCount".to_owned(), Value::from(0));
        twin.insert("authenticationType".to_owned(), Value::from("sas"));
        twin.insert(
            "x509Thumbprint".to_owned(),
            json!({"primaryThumbprint": null, "secondaryThumbprint": null}),
        );
        twin.insert("modelId".to_owned(), Value::from(""));
        twin.insert("version".to_owned(), Value::from(self.twin.version));
        if !self.twin.tags.is_empty() {
            twin.insert("tags".to_owned(), Value::Object(self.twin.tags.clone()));
        }
        twin.insert(
            "properties".to_owned(),
            json!({"desired": self.twin.desired.render(), "reported": self.twin.reported.render()}),
        );
        if self.module_id.is_none() {
            twin.insert("capabilities".to_owned(), json!({"iotEdge": self.iot_edge}));
        }
        Value::Object(twin)
    }
}

#[derive(Debug, Clone)]
struct Device {
    identity: Identity,
    modules: BTreeMap<String, Identity>,
}

/// What a registry operation changed, for the events it emits.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    /// A device or module was created; its twin.
    Created {
        device: String,
        module: Option<String>,
        twin: Value,
    },
    /// A device or module was deleted; its twin at deletion.
    Deleted {
        device: String,
        module: Option<String>,
        twin: Value,
    },
    /// A twin was patched: `version` plus the changed sections.
    Updated {
        device: String,
        module: Option<String>,
        patch: Value,
    },
    /// A twin's tags and desired properties were replaced; the whole twin.
    Replaced {
        device: String,
        module: Option<String>,
        twin: Value,
    },
}

/// A device's or module's keys, as the ingress needs them to authenticate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceCredentials {
    pub(crate) primary_key: String,
    pub(crate) secondary_key: String,
    pub(crate) generation_id: String,
    pub(crate) enabled: bool,
}

/// Every device and module of the hub.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    devices: BTreeMap<String, Device>,
    /// Hub-wide change counter behind etags and generation ids.
    counter: u64,
}

/// Parses an `If-Match` value: `None` for absent or `*`, else the etag without quotes.
fn if_match_etag(if_match: Option<&str>) -> Option<&str> {
    let value = if_match?.trim();
    let value = value.strip_prefix("W/").unwrap_or(value);
    let value = value.trim_matches('"');
    (value != "*").then_some(value)
}

fn check_etag(if_match: Option<&str>, current: &str) -> Result<(), RegistryError> {
    match if_match_etag(if_match) {
        Some(expected) if expected != current => Err(RegistryError {
            status: 412,
            code: "PreconditionFailed",
            message: format!(
                "If-Match `{expected}` does not match the current etag `{current}`; read the \
                 resource again"
            ),
        }),
        _ => Ok(()),
    }
}

impl Registry {
    fn next_etag(&mut self) -> String {
        self.counter += 1;
        base64::engine::general_purpose::STANDARD.encode(self.counter.to_be_bytes())
    }

    fn new_identity(
        &mut self,
        device: &str,
        module: Option<&str>,
        body: &Value,
        keys: impl FnMut() -> String,
        now: DateTime<Utc>,
    ) -> Identity {
        let mut keys = keys;
        let key = |pointer: &str| {
            body.pointer(pointer)
                .and_then(Value::as_str)
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
        };
        let primary_key = key("/authentication/symmetricKey/primaryKey").unwrap_or_else(&mut keys);
        let secondary_key =
            key("/authentication/symmetricKey/secondaryKey").unwrap_or_else(&mut keys);
        let etag = self.next_etag();
        let twin_etag = self.next_etag();
        Identity {
            device_id: device.to_owned(),
            module_id: module.map(str::to_owned),
            generation_id: format!("638{:015}", self.counter),
            etag,
            primary_key,
            secondary_key,
            status: body
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("enabled")
                .to_owned(),
            status_reason: body
                .get("statusReason")
                .and_then(Value::as_str)
                .map(str::to_owned),
            status_updated: timestamp(now),
            managed_by: body
                .get("managedBy")
                .and_then(Value::as_str)
                .map(str::to_owned),
            iot_edge: body
                .pointer("/capabilities/iotEdge")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            twin: TwinDocument {
                tags: Map::new(),
                desired: Section::new(),
                reported: Section::new(),
                version: 1,
                etag: twin_etag,
            },
        }
    }

    fn identity(&self, device: &str, module: Option<&str>) -> Result<&Identity, RegistryError> {
        let entry = self
            .devices
            .get(device)
            .ok_or_else(|| not_found(&format!("device `{device}`")))?;
        match module {
            None => Ok(&entry.identity),
            Some(module) => entry
                .modules
                .get(module)
                .ok_or_else(|| not_found(&format!("module `{module}` of device `{device}`"))),
        }
    }

    fn identity_mut(
        &mut self,
        device: &str,
        module: Option<&str>,
    ) -> Result<&mut Identity, RegistryError> {
        let entry = self
            .devices
            .get_mut(device)
            .ok_or_else(|| not_found(&format!("device `{device}`")))?;
        match module {
            None => Ok(&mut entry.identity),
            Some(module) => entry
                .modules
                .get_mut(module)
                .ok_or_else(|| not_found(&format!("module `{module}` of device `{device}`"))),
        }
    }

    /// `PUT /devices/{id}[/modules/{mid}]`: creates (no `If-Match`, or `*`) or updates (`If-Match`
    /// of the current etag, or `*`) an identity. Returns its JSON, whether it was created, and the
    /// change. Keys left empty are generated with `keys`.
    pub(crate) fn put_identity(
        &mut self,
        device: &str,
        module: Option<&str>,
        body: &Value,
        if_match: Option<&str>,
        keys: impl FnMut() -> String,
        now: DateTime<Utc>,
    ) -> Result<(Value, bool, Option<Change>), RegistryError> {
        check_id("device id", device)?;
        if let Some(module) = module {
            check_id("module id", module)?;
        }
        for (field, expected) in [("deviceId", Some(device)), ("moduleId", module)] {
            if let Some(given) = body.get(field).and_then(Value::as_str)
                && Some(given) != expected
            {
                return Err(invalid(format!(
                    "the body's {field} `{given}` differs from the URL's"
                )));
            }
        }
        if module.is_some() && !self.devices.contains_key(device) {
            return Err(not_found(&format!("device `{device}`")));
        }
        let exists = self.identity(device, module).is_ok();
        if !exists {
            let identity = self.new_identity(device, module, body, keys, now);
            let rendered = identity.render();
            let twin = identity.render_twin();
            match module {
                None => {
                    self.devices.insert(
                        device.to_owned(),
                        Device {
                            identity,
                            modules: BTreeMap::new(),
                        },
                    );
                }
                Some(module) => {
                    if let Some(entry) = self.devices.get_mut(device) {
                        entry.modules.insert(module.to_owned(), identity);
                    }
                }
            }
            return Ok((
                rendered,
                true,
                Some(Change::Created {
                    device: device.to_owned(),
                    module: module.map(str::to_owned),
                    twin,
                }),
            ));
        }
        let Some(if_match) = if_match else {
            let what = module.map_or_else(
                || format!("device `{device}`"),
                |m| format!("module `{m}` of device `{device}`"),
            );
            return Err(RegistryError {
                status: 409,
                code: if module.is_some() {
                    "ModuleAlreadyExistsOnDevice"
                } else {
                    "DeviceAlreadyExists"
                },
                message: format!(
                    "{what} already exists; send If-Match with its etag (or `*`) to update it"
                ),
            });
        };
        let etag = self.next_etag();
        let identity = self.identity_mut(device, module)?;
        check_etag(Some(if_match), &identity.etag)?;
        if let Some(status) = body.get("status").and_then(Value::as_str)
            && status != identity.status
        {
            identity.status = status.to_owned();
            identity.status_updated = timestamp(now);
        }
        if let Some(reason) = body.get("statusReason").and_then(Value::as_str) {
            identity.status_reason = Some(reason.to_owned());
        }
        for (pointer, slot) in [
            (
                "/authentication/symmetricKey/primaryKey",
                &mut identity.primary_key,
            ),
            (
                "/authentication/symmetricKey/secondaryKey",
                &mut identity.secondary_key,
            ),
        ] {
            if let Some(key) = body.pointer(pointer).and_then(Value::as_str)
                && !key.is_empty()
            {
                key.clone_into(slot);
            }
        }
        identity.etag = etag;
        Ok((identity.render(), false, None))
    }

    /// `GET /devices/{id}[/modules/{mid}]`.
    pub(crate) fn get_identity(
        &self,
        device: &str,
        module: Option<&str>,
    ) -> Result<Value, RegistryError> {
        self.identity(device, module).map(Identity::render)
    }

    /// `GET /devices/{id}/modules`.
    pub(crate) fn modules_of(&self, device: &str) -> Result<Value, RegistryError> {
        let entry = self
            .devices
            .get(device)
            .ok_or_else(|| not_found(&format!("device `{device}`")))?;
        Ok(Value::Array(
            entry.modules.values().map(Identity::render).collect(),
        ))
    }

    /// `GET /devices?top=N`.
    pub(crate) fn devices(&self, top: usize) -> Value {
        Value::Array(
            self.devices
                .values()
                .take(top)
                .map(|d| d.identity.render())
                .collect(),
        )
    }

    /// `DELETE /devices/{id}[/modules/{mid}]` (a device's modules go with it).
    pub(crate) fn delete_identity(
        &mut self,
        device: &str,
        module: Option<&str>,
        if_match: Option<&str>,
    ) -> Result<Change, RegistryError> {
        let identity = self.identity(device, module)?;
        check_etag(if_match, &identity.etag)?;
        let twin = identity.render_twin();
        match module {
            None => {
                self.devices.remove(device);
            }
            Some(module) => {
                if let Some(entry) = self.devices.get_mut(device) {
                    entry.modules.remove(module);
                }
            }
        }
        Ok(Change::Deleted {
            device: device.to_owned(),
            module: module.map(str::to_owned),
            twin,
        })
    }

    /// `GET /twins/{id}[/modules/{mid}]`.
    pub(crate) fn twin(&self, device: &str, module: Option<&str>) -> Result<Value, RegistryError> {
        self.identity(device, module).map(Identity::render_twin)
    }

    /// `PATCH /twins/{id}[/modules/{mid}]` (tags and desired, merged) or, with `replace`,
    /// `PUT` (tags and desired replaced). Reported properties are refused: only devices write them.
    pub(crate) fn update_twin(
        &mut self,
        device: &str,
        module: Option<&str>,
        body: &Value,
        if_match: Option<&str>,
        replace: bool,
        now: DateTime<Utc>,
    ) -> Result<(Value, Change), RegistryError> {
        let Some(body) = body.as_object() else {
            return Err(invalid("the twin patch must be a JSON object"));
        };
        if body.contains_key("properties")
            && body
                .get("properties")
                .and_then(|p| p.get("reported"))
                .is_some()
        {
            return Err(invalid(
                "reported properties are written by the device, not by the service; patch tags \
                 and properties.desired",
            ));
        }
        let tags = body.get("tags");
        let desired = body.get("properties").and_then(|p| p.get("desired"));
        for (name, value) in [("tags", tags), ("properties.desired", desired)] {
            if value.is_some_and(|v| !v.is_object()) {
                return Err(invalid(format!("{name} must be a JSON object")));
            }
        }
        let etag = self.next_etag();
        let at = timestamp(now);
        let identity = self.identity_mut(device, module)?;
        check_etag(if_match, &identity.twin.etag)?;
        let twin = &mut identity.twin;
        twin.version += 1;
        twin.etag = etag;
        let mut patch = Map::new();
        patch.insert("version".to_owned(), Value::from(twin.version));
        if let Some(tags) = tags.and_then(Value::as_object) {
            if replace {
                twin.tags = tags.clone();
                strip_nulls_map(&mut twin.tags);
            } else {
                let mut metadata = Map::new();
                let mut changed = Map::new();
                merge_with_metadata(&mut twin.tags, &mut metadata, tags, &at, None, &mut changed);
            }
            patch.insert("tags".to_owned(), Value::Object(tags.clone()));
        }
        if let Some(desired) = desired.and_then(Value::as_object) {
            let changed = if replace {
                twin.desired.replace(desired, &at, true);
                twin.desired.render()
            } else {
                twin.desired.patch(desired, &at, true)
            };
            patch.insert("properties".to_owned(), json!({ "desired": changed }));
        }
        let rendered = identity.render_twin();
        let change = if replace {
            Change::Replaced {
                device: device.to_owned(),
                module: module.map(str::to_owned),
                twin: rendered.clone(),
            }
        } else {
            Change::Updated {
                device: device.to_owned(),
                module: module.map(str::to_owned),
                patch: Value::Object(patch),
            }
        };
        Ok((rendered, change))
    }

    /// A device's (or module's) reported-property patch.
    pub(crate) fn update_reported(
        &mut self,
        device: &str,
        module: Option<&str>,
        patch: &Value,
        now: DateTime<Utc>,
    ) -> Result<(Value, Change), RegistryError> {
        let Some(patch) = patch.as_object() else {
            return Err(invalid("the reported-property patch must be a JSON object"));
        };
        if patch.keys().any(|k| k.starts_with('$')) {
            return Err(invalid("`$`-prefixed reported properties are read-only"));
        }
        let etag = self.next_etag();
        let at = timestamp(now);
        let identity = self.identity_mut(device, module)?;
        let twin = &mut identity.twin;
        twin.version += 1;
        twin.etag = etag;
        let changed = twin.reported.patch(patch, &at, false);
        let version = twin.version;
        let rendered = identity.render_twin();
        Ok((
            rendered,
            Change::Updated {
                device: device.to_owned(),
                module: module.map(str::to_owned),
                patch: json!({"version": version, "properties": {"reported": changed}}),
            },
        ))
    }

    /// The keys of a device or module, for authentication.
    pub(crate) fn credentials(
        &self,
        device: &str,
        module: Option<&str>,
    ) -> Option<DeviceCredentials> {
        let identity = self.identity(device, module).ok()?;
        let device_enabled = self
            .devices
            .get(device)
            .is_some_and(|d| d.identity.status == "enabled");
        Some(DeviceCredentials {
            primary_key: identity.primary_key.clone(),
            secondary_key: identity.secondary_key.clone(),
            generation_id: identity.generation_id.clone(),
            enabled: device_enabled,
        })
    }

    /// One page of a twin query over devices or modules: twins after `after` (a continuation
    /// token from the previous page), at most `limit`, and the continuation when more remain. The
    /// token names the last twin returned, so pages stay consistent while devices come and go.
    pub(crate) fn query_page(
        &self,
        modules: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Value>, Option<String>), RegistryError> {
        let after: Option<(String, String)> = after
            .map(|token| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(token)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                    .ok_or_else(|| {
                        invalid("the x-ms-continuation token is not one this hub issued")
                    })
            })
            .transpose()?;
        let all: Box<dyn Iterator<Item = &Identity>> = if modules {
            Box::new(self.devices.values().flat_map(|d| d.modules.values()))
        } else {
            Box::new(self.devices.values().map(|d| &d.identity))
        };
        let position = |identity: &Identity| {
            (
                identity.device_id.clone(),
                identity.module_id.clone().unwrap_or_default(),
            )
        };
        let mut page = Vec::new();
        let mut last = None;
        let mut more = false;
        for identity in all {
            let at = position(identity);
            if after.as_ref().is_some_and(|after| at <= *after) {
                continue;
            }
            if page.len() == limit {
                more = true;
                break;
            }
            page.push(identity.render_twin());
            last = Some(at);
        }
        let token = last.filter(|_| more).map(|last| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(&last).expect("a pair of strings serialises"))
        });
        Ok((page, token))
    }

    /// Devices registered.
    pub(crate) fn len(&self) -> usize {
        self.devices.len()
    }
}

fn strip_nulls_map(map: &mut Map<String, Value>) {
    map.retain(|_, v| !v.is_null());
    map.values_mut().for_each(strip_nulls);
}

#[cfg(test)]
mod tests;
