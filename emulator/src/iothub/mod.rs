//! The emulator as an IoT hub: device registry, twins and IoT Hub's service REST API, SAS
//! authentication with the hub's shared access policies, and the twin change and device lifecycle
//! events a hub with such routes puts on its built-in endpoint.
//!
//! [`IotHub`] is the shared state; `api.rs` serves the service API and the devices' reported
//! properties over HTTP next to the device ingress (`ingress.rs`), which asks [`IotHub`] to
//! authenticate devices. Changes are made under one lock and their events are published through
//! the [`EventPublisher`] before the lock is released, so the hub's stream carries them in the
//! order they happened, on the device's partition (IoT Hub partitions by device id), ahead of any
//! later message of that device.
//!
//! Event shapes follow reference "iothub-service-and-endpoints" §3 (and routing reference §2.5):
//! `content-type` `application/json`, `content-encoding` `utf-8`, `correlation-id`, `user-id` = hub
//! name; annotations `iothub-connection-device-id`, `iothub-connection-module-id` (module events),
//! `iothub-enqueuedtime`, `iothub-message-source`; application properties `hubName`, `deviceId`,
//! `moduleId`, `operationTimestamp`, `iothub-message-schema`, `opType`. Modules use
//! `createDeviceIdentity`/`deleteDeviceIdentity` with a `moduleId`, as the 2024 documentation says.

mod api;
mod registry;
#[cfg(test)]
pub(crate) mod testing;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fe2o3_amqp_types::messaging::{MessageId, Properties};
use fe2o3_amqp_types::primitives::{Binary, Symbol, Timestamp};
use hubroute_protocol::iothub::{self, event_properties, message_source, op_type};
use hubroute_protocol::{SasKey, SasToken, annotations};
use serde_amqp::Value;
use serde_json::Value as Json;

pub(crate) use api::error_response;
pub use api::serve_http;
pub(crate) use registry::{RegistryError, check_id};

use self::registry::{Change, Registry};
pub use crate::policies::{AccessRights, OWNER_POLICY, SharedAccessPolicy, default_policies};
use crate::{EventPublisher, EventToPublish, PublishTarget, PublishedPosition};

/// The IoT hub side of the emulator.
#[derive(Debug, Clone)]
pub struct IotHubConfig {
    /// The event hub (the built-in endpoint) events and device messages go to; its name is the
    /// IoT hub name (`hubName`, `user-id`).
    pub hub: String,
    /// Shared access policies.
    pub policies: Vec<SharedAccessPolicy>,
    /// Emit `twinChangeEvents` (as a hub with a `TwinChangeEvents` route to `events` does).
    pub twin_change_events: bool,
    /// Emit `deviceLifecycleEvents` (as a hub with a `DeviceLifecycleEvents` route to `events`).
    pub lifecycle_events: bool,
}

impl IotHubConfig {
    /// The default policies and both kinds of events, into event hub `hub`.
    pub fn new(hub: impl Into<String>) -> Self {
        Self {
            hub: hub.into(),
            policies: default_policies(),
            twin_change_events: true,
            lifecycle_events: true,
        }
    }
}

/// A service API fault to inject (for tests of clients' retry behaviour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceFault {
    /// Answer every service API request with 503 for this long.
    UnavailableFor(Duration),
    /// Answer the next `requests` service API requests with 429 and `Retry-After: retry_after`.
    Throttle {
        /// How many requests.
        requests: u32,
        /// The `Retry-After` sent, whole seconds.
        retry_after: Duration,
    },
}

/// The emulated IoT hub. Cheap to share (`Arc`).
pub struct IotHub {
    config: IotHubConfig,
    publisher: Arc<dyn EventPublisher>,
    registry: Mutex<Registry>,
    /// `host:port` names clients may use in `HostName` and token audiences; the first is printed.
    host_names: RwLock<Vec<(String, bool)>>,
    query_requests: AtomicU64,
    /// Twin change and lifecycle events put into the event hub.
    events_published: AtomicU64,
    unavailable_until: Mutex<Option<Instant>>,
    throttled: AtomicU32,
    throttle_retry_after: AtomicU64,
}

impl std::fmt::Debug for IotHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IotHub")
            .field("hub", &self.config.hub)
            .field("host_names", &self.host_names)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a device request was authenticated, for `iothub-connection-auth-method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceScope {
    Device,
    Module,
    Hub,
}

impl DeviceScope {
    pub(crate) fn auth_method(self) -> &'static str {
        match self {
            Self::Device => {
                r#"{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#
            }
            Self::Module => {
                r#"{"scope":"module","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#
            }
            Self::Hub => {
                r#"{"scope":"hub","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#
            }
        }
    }
}

/// Which service API permission a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permission {
    RegistryRead,
    RegistryWrite,
    ServiceConnect,
}

impl IotHub {
    /// An IoT hub publishing its events through `publisher`.
    pub fn new(config: IotHubConfig, publisher: Arc<dyn EventPublisher>) -> Arc<Self> {
        Arc::new(Self {
            config,
            publisher,
            registry: Mutex::default(),
            host_names: RwLock::default(),
            query_requests: AtomicU64::new(0),
            events_published: AtomicU64::new(0),
            unavailable_until: Mutex::new(None),
            throttled: AtomicU32::new(0),
            throttle_retry_after: AtomicU64::new(0),
        })
    }

    /// The IoT hub (and event hub) name.
    pub fn name(&self) -> &str {
        &self.config.hub
    }

    /// Records that the API is served at `host` (`ip:port`), over TLS or not. The first TLS host,
    /// else the first host, is the one connection strings name.
    pub(crate) fn add_host(&self, host: String, tls: bool) {
        self.host_names
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push((host, tls));
    }

    /// How many listeners serve the API (each registers its host name as it starts).
    pub fn host_count(&self) -> usize {
        self.host_names
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn primary_host(&self) -> Option<(String, bool)> {
        let hosts = self
            .host_names
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        hosts
            .iter()
            .find(|(_, tls)| *tls)
            .or_else(|| hosts.first())
            .cloned()
    }

    /// The service connection string of `policy` (`HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`),
    /// naming the HTTPS listener when there is one. Over plain HTTP it carries
    /// `UseDevelopmentEmulator=true`, which hubroute understands and the official SDKs (HTTPS only)
    /// do not. `None` before the API is served or for an unknown policy.
    pub fn connection_string(&self, policy: &str) -> Option<String> {
        let (host, tls) = self.primary_host()?;
        let policy = self.config.policies.iter().find(|p| p.key.name == policy)?;
        let emulator = if tls {
            ""
        } else {
            ";UseDevelopmentEmulator=true"
        };
        Some(format!(
            "HostName={host};SharedAccessKeyName={};SharedAccessKey={}{emulator}",
            policy.key.name,
            policy.key.expose_secret()
        ))
    }

    /// The connection string of `iothubowner`.
    pub fn service_connection_string(&self) -> Option<String> {
        self.connection_string(OWNER_POLICY)
    }

    /// The connection string of one device (or module), as the portal shows it; `None` when the
    /// device does not exist or the API is not served yet.
    pub fn device_connection_string(&self, device: &str, module: Option<&str>) -> Option<String> {
        let (host, tls) = self.primary_host()?;
        let credentials = lock(&self.registry).credentials(device, module)?;
        let module = module.map(|m| format!(";ModuleId={m}")).unwrap_or_default();
        let emulator = if tls {
            ""
        } else {
            ";UseDevelopmentEmulator=true"
        };
        Some(format!(
            "HostName={host};DeviceId={device}{module};SharedAccessKey={}{emulator}",
            credentials.primary_key
        ))
    }

    /// Twin change and lifecycle events the hub put into its event hub so far.
    pub fn events_published(&self) -> u64 {
        self.events_published.load(Ordering::Relaxed)
    }

    /// Twin query requests received (`POST /devices/query`), answered or not.
    pub fn query_requests(&self) -> u64 {
        self.query_requests.load(Ordering::Relaxed)
    }

    /// Devices registered.
    pub fn device_count(&self) -> usize {
        lock(&self.registry).len()
    }

    /// Injects a service API fault.
    pub fn inject_fault(&self, fault: ServiceFault) {
        match fault {
            ServiceFault::UnavailableFor(duration) => {
                *lock(&self.unavailable_until) = Some(Instant::now() + duration);
            }
            ServiceFault::Throttle {
                requests,
                retry_after,
            } => {
                self.throttle_retry_after
                    .store(retry_after.as_secs(), Ordering::Relaxed);
                self.throttled.store(requests, Ordering::Relaxed);
            }
        }
    }

    /// The injected fault answering this service request, if any: (status, `Retry-After` seconds).
    pub(crate) fn fault(&self) -> Option<(u16, Option<u64>)> {
        if lock(&self.unavailable_until).is_some_and(|until| Instant::now() < until) {
            return Some((503, None));
        }
        let throttled = self
            .throttled
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        throttled.then(|| (429, Some(self.throttle_retry_after.load(Ordering::Relaxed))))
    }

    pub(crate) fn count_query(&self) {
        self.query_requests.fetch_add(1, Ordering::Relaxed);
    }

    fn host_matches(&self, resource: &str) -> bool {
        let host = resource.split('/').next().unwrap_or_default();
        self.host_names
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|(known, _)| known.eq_ignore_ascii_case(host))
    }

    /// Checks a service request's `Authorization` for `permission`.
    pub(crate) fn authorize_service(
        &self,
        authorization: Option<&str>,
        permission: Permission,
    ) -> Result<(), RegistryError> {
        let unauthorized = |message: String| RegistryError {
            status: 401,
            code: "IotHubUnauthorizedAccess",
            message,
        };
        let token = authorization
            .ok_or_else(|| unauthorized("no Authorization header; send a SharedAccessSignature signed with a policy key".to_owned()))
            .and_then(|text| SasToken::parse(text).map_err(|e| unauthorized(e.to_string())))?;
        let name = token.key_name.as_deref().ok_or_else(|| {
            unauthorized("the token has no `skn`: service requests need a policy token".to_owned())
        })?;
        let policy = self
            .config
            .policies
            .iter()
            .find(|p| p.key.name == name)
            .ok_or_else(|| unauthorized(format!("the hub has no shared access policy `{name}`")))?;
        iothub::verify(&policy.key, &token, chrono::Utc::now().timestamp())
            .map_err(|e| unauthorized(e.to_string()))?;
        if !self.host_matches(&token.resource_uri) {
            return Err(unauthorized(format!(
                "the token's audience `{}` is not this hub's host name",
                token.resource_uri
            )));
        }
        let rights = policy.rights;
        let allowed = match permission {
            Permission::RegistryRead => rights.registry_read || rights.registry_write,
            Permission::RegistryWrite => rights.registry_write,
            Permission::ServiceConnect => rights.service_connect,
        };
        if allowed {
            Ok(())
        } else {
            Err(unauthorized(format!(
                "policy `{name}` lacks {permission:?}; use one that has it (e.g. iothubowner)"
            )))
        }
    }

    /// Authenticates a device-facing request for `device` (and `module`): a token signed with the
    /// identity's primary or secondary key (`sr = {host}/devices/{id}[/modules/{mid}]`, no `skn`),
    /// or with a policy that has DeviceConnect. Returns the scope and the generation id to stamp.
    pub(crate) fn authenticate_device(
        &self,
        authorization: Option<&str>,
        device: &str,
        module: Option<&str>,
    ) -> Result<(DeviceScope, String), RegistryError> {
        let unauthorized = |message: String| RegistryError {
            status: 401,
            code: "IotHubUnauthorizedAccess",
            message,
        };
        let credentials = lock(&self.registry)
            .credentials(device, module)
            .ok_or_else(|| {
                let what = module.map_or_else(
                    || format!("device `{device}`"),
                    |m| format!("module `{m}` of device `{device}`"),
                );
                RegistryError {
                    status: 404,
                    code: if module.is_some() {
                        "ModuleNotFound"
                    } else {
                        "DeviceNotFound"
                    },
                    message: format!(
                        "{what} is not registered; create it with PUT /devices/{device} first"
                    ),
                }
            })?;
        if !credentials.enabled {
            return Err(unauthorized(format!("device `{device}` is disabled")));
        }
        let token = authorization
            .ok_or_else(|| {
                unauthorized("no Authorization header; send a SharedAccessSignature signed with the device key".to_owned())
            })
            .and_then(|text| SasToken::parse(text).map_err(|e| unauthorized(e.to_string())))?;
        let resource = iothub::device_resource(
            token.resource_uri.split('/').next().unwrap_or_default(),
            device,
            module,
        );
        if !self.host_matches(&token.resource_uri) || !token.covers(&resource) {
            return Err(unauthorized(format!(
                "the token's audience `{}` does not cover `{resource}`",
                token.resource_uri
            )));
        }
        let now = chrono::Utc::now().timestamp();
        let scope = match token.key_name.as_deref() {
            Some(name) => {
                let policy = self
                    .config
                    .policies
                    .iter()
                    .find(|p| p.key.name == name && p.rights.device_connect)
                    .ok_or_else(|| {
                        unauthorized(format!("`{name}` is not a policy with DeviceConnect"))
                    })?;
                iothub::verify(&policy.key, &token, now)
                    .map_err(|e| unauthorized(e.to_string()))?;
                DeviceScope::Hub
            }
            None => {
                let verified = [&credentials.primary_key, &credentials.secondary_key]
                    .into_iter()
                    .any(|key| iothub::verify(&SasKey::new("", key.clone()), &token, now).is_ok());
                if !verified {
                    return Err(unauthorized(
                        "the token is not signed with this identity's primary or secondary key, or has expired".to_owned(),
                    ));
                }
                if module.is_some() {
                    DeviceScope::Module
                } else {
                    DeviceScope::Device
                }
            }
        };
        Ok((scope, credentials.generation_id))
    }

    /// Appends a device's message to the hub, on the device's partition.
    pub(crate) fn publish_telemetry(
        &self,
        device: &str,
        event: EventToPublish,
    ) -> crate::Result<PublishedPosition> {
        self.publisher.publish(
            &self.config.hub,
            PublishTarget::PartitionKey(device.to_owned()),
            event,
        )
    }

    /// Runs `operation` on the registry and publishes the events of its change before releasing
    /// the lock.
    pub(crate) fn change<T>(
        &self,
        operation: impl FnOnce(&mut Registry) -> Result<(T, Option<Change>), RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut registry = lock(&self.registry);
        let (result, change) = operation(&mut registry)?;
        if let Some(change) = change {
            self.emit(&change);
        }
        Ok(result)
    }

    /// Reads the registry.
    pub(crate) fn read<T>(&self, read: impl FnOnce(&Registry) -> T) -> T {
        read(&lock(&self.registry))
    }

    fn emit(&self, change: &Change) {
        let (source, schema, op, device, module, body) = match change {
            Change::Created {
                device,
                module,
                twin,
            } => (
                message_source::DEVICE_LIFECYCLE_EVENTS,
                "deviceLifecycleNotification",
                op_type::CREATE_DEVICE_IDENTITY,
                device,
                module,
                twin,
            ),
            Change::Deleted {
                device,
                module,
                twin,
            } => (
                message_source::DEVICE_LIFECYCLE_EVENTS,
                "deviceLifecycleNotification",
                op_type::DELETE_DEVICE_IDENTITY,
                device,
                module,
                twin,
            ),
            Change::Updated {
                device,
                module,
                patch,
            } => (
                message_source::TWIN_CHANGE_EVENTS,
                "twinChangeNotification",
                op_type::UPDATE_TWIN,
                device,
                module,
                patch,
            ),
            Change::Replaced {
                device,
                module,
                twin,
            } => (
                message_source::TWIN_CHANGE_EVENTS,
                "twinChangeNotification",
                op_type::REPLACE_TWIN,
                device,
                module,
                twin,
            ),
        };
        let wanted = if source == message_source::TWIN_CHANGE_EVENTS {
            self.config.twin_change_events
        } else {
            self.config.lifecycle_events
        };
        if !wanted {
            return;
        }
        let event = notification(
            &self.config.hub,
            source,
            schema,
            op,
            device,
            module.as_deref(),
            body,
        );
        match self.publisher.publish(
            &self.config.hub,
            PublishTarget::PartitionKey(device.clone()),
            event,
        ) {
            Ok(_) => {
                self.events_published.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::warn!(%error, source, device, "publishing an IoT Hub event failed");
            }
        }
    }
}

/// A twin change or lifecycle event as IoT Hub puts it on the built-in endpoint.
fn notification(
    hub: &str,
    source: &str,
    schema: &str,
    op: &str,
    device: &str,
    module: Option<&str>,
    body: &Json,
) -> EventToPublish {
    let now = chrono::Utc::now();
    let properties = Properties {
        correlation_id: Some(MessageId::String(
            uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
        )),
        user_id: Some(Binary::from(hub.as_bytes().to_vec())),
        content_type: Some(Symbol::from("application/json")),
        content_encoding: Some(Symbol::from("utf-8")),
        ..Properties::default()
    };
    let mut application_properties = vec![
        (
            event_properties::HUB_NAME.to_owned(),
            Value::String(hub.to_owned()),
        ),
        (
            event_properties::DEVICE_ID.to_owned(),
            Value::String(device.to_owned()),
        ),
        (
            event_properties::OPERATION_TIMESTAMP.to_owned(),
            Value::String(registry::timestamp(now)),
        ),
        (
            event_properties::MESSAGE_SCHEMA.to_owned(),
            Value::String(schema.to_owned()),
        ),
        (
            event_properties::OP_TYPE.to_owned(),
            Value::String(op.to_owned()),
        ),
    ];
    let mut message_annotations = vec![(
        annotations::CONNECTION_DEVICE_ID.to_owned(),
        Value::String(device.to_owned()),
    )];
    if let Some(module) = module {
        application_properties.push((
            event_properties::MODULE_ID.to_owned(),
            Value::String(module.to_owned()),
        ));
        message_annotations.push((
            annotations::CONNECTION_MODULE_ID.to_owned(),
            Value::String(module.to_owned()),
        ));
    }
    message_annotations.push((
        annotations::IOTHUB_ENQUEUED_TIME.to_owned(),
        Value::Timestamp(Timestamp::from_milliseconds(now.timestamp_millis())),
    ));
    message_annotations.push((
        annotations::MESSAGE_SOURCE.to_owned(),
        Value::String(source.to_owned()),
    ));
    EventToPublish {
        body: Bytes::from(body.to_string()),
        properties,
        application_properties,
        message_annotations,
    }
}

#[cfg(test)]
mod tests;
