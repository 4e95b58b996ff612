//! IoT Hub's side of the vocabulary: service and device connection strings
//! (`HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`, `HostName=…;DeviceId=…;SharedAccessKey=…`),
//! IoT Hub SAS tokens, the service REST API's paths, headers and version, and the
//! `iothub-message-source` values of every route source.
//!
//! IoT Hub tokens differ from Event Hubs tokens in one way that matters: the HMAC is keyed with the
//! **base64-decoded** key (reference "iothub-service-and-endpoints" §2), while the Event Hubs SDKs key
//! it with the key's UTF-8 bytes (`sas.rs`). `sr` is the host name (service tokens, with `skn`) or
//! `{host}/devices/{id}[/modules/{mid}]` (device and module tokens, without `skn`), percent-encoded
//! as the SDKs do; the verifier signs exactly the `sr` the client sent.

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::sas::url_encode;
use crate::{Error, Result, SasKey, SasToken};

/// The data-plane API version the service SDKs send (`2021-04-12`).
pub const API_VERSION: &str = "2021-04-12";
/// Request and response header carrying the twin query continuation token.
pub const CONTINUATION_HEADER: &str = "x-ms-continuation";
/// Request header asking for a page size.
pub const MAX_ITEM_COUNT_HEADER: &str = "x-ms-max-item-count";
/// Response header naming the kind of query items (`twin`).
pub const ITEM_TYPE_HEADER: &str = "x-ms-item-type";
/// The twin query of every device twin.
pub const QUERY_DEVICE_TWINS: &str = "SELECT * FROM devices";
/// The twin query of every module twin.
pub const QUERY_MODULE_TWINS: &str = "SELECT * FROM devices.modules";

/// `iothub-message-source` values, one per route source, as IoT Hub stamps them on the built-in
/// endpoint. Verified: `Telemetry`, `twinChangeEvents`, `deviceLifecycleEvents`,
/// `deviceConnectionStateEvents` (non-telemetry event schema doc) and `digitalTwinChangeEvents`
/// (IoT Plug and Play service developer guide output). Job lifecycle events are undocumented: the
/// value follows the naming rule every other source obeys (see `docs/configuration.md`).
pub mod message_source {
    /// `DeviceMessages`.
    pub const TELEMETRY: &str = "Telemetry";
    /// `TwinChangeEvents`.
    pub const TWIN_CHANGE_EVENTS: &str = "twinChangeEvents";
    /// `DeviceLifecycleEvents` (devices and, since 2024, modules).
    pub const DEVICE_LIFECYCLE_EVENTS: &str = "deviceLifecycleEvents";
    /// Module lifecycle events as an older revision of the identity-registry doc names them.
    pub const MODULE_LIFECYCLE_EVENTS: &str = "moduleLifecycleEvents";
    /// `DeviceConnectionStateEvents`.
    pub const DEVICE_CONNECTION_STATE_EVENTS: &str = "deviceConnectionStateEvents";
    /// `DeviceJobLifecycleEvents` (undocumented; by the naming rule).
    pub const DEVICE_JOB_LIFECYCLE_EVENTS: &str = "deviceJobLifecycleEvents";
    /// `DeviceJobLifecycleEvents` as earlier hubroute versions spelled it; still accepted.
    pub const JOB_LIFECYCLE_EVENTS: &str = "jobLifecycleEvents";
    /// `DigitalTwinChangeEvents`.
    pub const DIGITAL_TWIN_CHANGE_EVENTS: &str = "digitalTwinChangeEvents";
}

/// Application properties IoT Hub sets on non-telemetry events (reference §3).
pub mod event_properties {
    /// The IoT hub name.
    pub const HUB_NAME: &str = "hubName";
    /// The device id.
    pub const DEVICE_ID: &str = "deviceId";
    /// The module id (module events only).
    pub const MODULE_ID: &str = "moduleId";
    /// ISO-8601 time of the operation.
    pub const OPERATION_TIMESTAMP: &str = "operationTimestamp";
    /// `twinChangeNotification`, `deviceLifecycleNotification`, ...
    pub const MESSAGE_SCHEMA: &str = "iothub-message-schema";
    /// `updateTwin`, `replaceTwin`, `createDeviceIdentity`, `deleteDeviceIdentity`, ...
    pub const OP_TYPE: &str = "opType";
}

/// `opType` values of twin change and lifecycle events.
pub mod op_type {
    /// A twin patch: the body holds `version` and the changed sections.
    pub const UPDATE_TWIN: &str = "updateTwin";
    /// A whole twin: the body is the full twin.
    pub const REPLACE_TWIN: &str = "replaceTwin";
    /// A device or (2024 docs) module was created; the body is its twin.
    pub const CREATE_DEVICE_IDENTITY: &str = "createDeviceIdentity";
    /// A device or (2024 docs) module was deleted.
    pub const DELETE_DEVICE_IDENTITY: &str = "deleteDeviceIdentity";
    /// A module was created (older doc revisions).
    pub const CREATE_MODULE_IDENTITY: &str = "createModuleIdentity";
    /// A module was deleted (older doc revisions).
    pub const DELETE_MODULE_IDENTITY: &str = "deleteModuleIdentity";
}

/// A parsed IoT Hub connection string: a service one (`SharedAccessKeyName` + `SharedAccessKey`) or a
/// device/module one (`DeviceId` [+ `ModuleId`] + `SharedAccessKey`). `Debug` masks the key.
#[derive(Clone, PartialEq, Eq)]
pub struct IotHubConnectionString {
    /// `HostName`, e.g. `myhub.azure-devices.net` or, for the emulator, `127.0.0.1:8088`.
    pub host_name: String,
    /// The policy key (`SharedAccessKeyName` + `SharedAccessKey`) of a service string.
    pub policy: Option<SasKey>,
    /// `DeviceId` of a device or module string.
    pub device_id: Option<String>,
    /// `ModuleId` of a module string.
    pub module_id: Option<String>,
    /// `SharedAccessKey` of a device or module string (no key name).
    pub device_key: Option<SasKey>,
    /// `SharedAccessSignature`: a pre-made token.
    pub shared_access_signature: Option<String>,
    /// `UseDevelopmentEmulator=true`: plain HTTP (`hubroute emulator` without `--tls-cert`). Not a
    /// key Azure issues; the official SDKs reject it, and always use HTTPS.
    pub use_development_emulator: bool,
}

impl fmt::Debug for IotHubConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IotHubConnectionString")
            .field("host_name", &self.host_name)
            .field("policy", &self.policy)
            .field("device_id", &self.device_id)
            .field("module_id", &self.module_id)
            .field("device_key", &self.device_key.as_ref().map(|_| "***"))
            .field(
                "shared_access_signature",
                &self.shared_access_signature.as_ref().map(|_| "***"),
            )
            .field("use_development_emulator", &self.use_development_emulator)
            .finish()
    }
}

impl IotHubConnectionString {
    /// Parses `text`; keys are case-insensitive, values split on the first `=`.
    pub fn parse(text: &str) -> Result<Self> {
        let problem = |problem: String| Error::IotHubConnectionString { problem };
        let (mut host, mut key_name, mut key, mut device, mut module, mut signature) =
            (None, None, None, None, None, None);
        let mut emulator = false;
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err(problem(format!(
                    "part `{}` is not `Key=Value`",
                    part.chars().take(20).collect::<String>()
                )));
            };
            match name.trim().to_ascii_lowercase().as_str() {
                "hostname" => host = Some(value.trim().to_owned()),
                "sharedaccesskeyname" => key_name = Some(value.to_owned()),
                "sharedaccesskey" => key = Some(value.to_owned()),
                "deviceid" => device = Some(value.to_owned()),
                "moduleid" => module = Some(value.to_owned()),
                "sharedaccesssignature" => signature = Some(value.to_owned()),
                "gatewayhostname" => {}
                "usedevelopmentemulator" => {
                    emulator = match value.trim().to_ascii_lowercase().as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(problem(format!(
                                "UseDevelopmentEmulator must be true or false, not `{value}`"
                            )));
                        }
                    };
                }
                other => {
                    return Err(problem(format!(
                        "unknown key `{other}`; expected HostName, SharedAccessKeyName, SharedAccessKey, \
                         DeviceId, ModuleId, SharedAccessSignature or UseDevelopmentEmulator"
                    )));
                }
            }
        }
        let host_name = host
            .filter(|h| !h.is_empty())
            .ok_or_else(|| problem("missing `HostName=<hub>.azure-devices.net`".to_owned()))?;
        if host_name.contains('/') {
            return Err(problem(format!(
                "HostName `{host_name}` must be a host name (optionally with :port), not a URL"
            )));
        }
        if module.is_some() && device.is_none() {
            return Err(problem("ModuleId given without DeviceId".to_owned()));
        }
        let (policy, device_key) = match (key_name, key, &device) {
            (Some(name), Some(key), _) => (Some(SasKey::new(name, key)), None),
            (None, Some(key), Some(_)) => (None, Some(SasKey::new("", key))),
            (None, Some(_), None) => {
                return Err(problem(
                    "SharedAccessKey given without SharedAccessKeyName (service) or DeviceId (device)"
                        .to_owned(),
                ));
            }
            (Some(_), None, _) => {
                return Err(problem(
                    "SharedAccessKeyName given without SharedAccessKey".to_owned(),
                ));
            }
            (None, None, _) => (None, None),
        };
        if policy.is_none() && device_key.is_none() && signature.is_none() {
            return Err(problem(
                "no credentials: give SharedAccessKeyName and SharedAccessKey (copy the \
                 `service` or `iothubowner` policy's connection string from the portal)"
                    .to_owned(),
            ));
        }
        for key in policy.iter().chain(&device_key) {
            decode_key(key.expose_secret())?;
        }
        Ok(Self {
            host_name,
            policy,
            device_id: device,
            module_id: module,
            device_key,
            shared_access_signature: signature,
            use_development_emulator: emulator,
        })
    }

    /// `https://{HostName}`, or `http://` in development-emulator mode.
    pub fn base_url(&self) -> String {
        let scheme = if self.use_development_emulator {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", self.host_name)
    }

    /// The token to send in `Authorization`, valid until `expiry` (Unix seconds): a service token
    /// (`sr = HostName`, `skn` = policy) for a service string, a device or module token for a
    /// device string, or the given `SharedAccessSignature`.
    pub fn token(&self, expiry: i64) -> Result<String> {
        if let Some(policy) = &self.policy {
            return Ok(sign(policy, &self.host_name, expiry, true)?
                .as_str()
                .to_owned());
        }
        if let (Some(key), Some(device)) = (&self.device_key, &self.device_id) {
            let resource = device_resource(&self.host_name, device, self.module_id.as_deref());
            return Ok(sign(key, &resource, expiry, false)?.as_str().to_owned());
        }
        self.shared_access_signature
            .clone()
            .ok_or_else(|| Error::IotHubConnectionString {
                problem: "no key to sign a token with".to_owned(),
            })
    }
}

/// `{host}/devices/{device}[/modules/{module}]`: the resource of a device or module token.
pub fn device_resource(host: &str, device: &str, module: Option<&str>) -> String {
    match module {
        Some(module) => format!("{host}/devices/{device}/modules/{module}"),
        None => format!("{host}/devices/{device}"),
    }
}

fn decode_key(key: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .map_err(|_| Error::IotHubConnectionString {
            problem: "SharedAccessKey is not base64 (IoT Hub keys are base64; copy the key again)"
                .to_owned(),
        })
}

fn iot_hub_signature(key: &SasKey, encoded_resource: &str, expiry: i64) -> Result<String> {
    let secret = decode_key(key.expose_secret())?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&secret).expect("HMAC-SHA256 accepts keys of any length");
    mac.update(format!("{encoded_resource}\n{expiry}").as_bytes());
    Ok(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// Signs an IoT Hub token for `resource` (a host name, or [`device_resource`]) valid until `expiry`
/// (Unix seconds), with `skn` when `with_key_name` (policy tokens) and without (device tokens).
pub fn sign(key: &SasKey, resource: &str, expiry: i64, with_key_name: bool) -> Result<SasToken> {
    let encoded = url_encode(resource);
    let signature = iot_hub_signature(key, &encoded, expiry)?;
    let key_name = with_key_name.then(|| format!("&skn={}", url_encode(&key.name)));
    SasToken::parse(&format!(
        "SharedAccessSignature sr={encoded}&sig={}&se={expiry}{}",
        url_encode(&signature),
        key_name.unwrap_or_default()
    ))
}

/// Checks an IoT Hub token's signature against `key` (base64-decoded, as IoT Hub does) and its
/// expiry against `now` (Unix seconds). The audience is the caller's to check ([`SasToken::covers`]).
pub fn verify(key: &SasKey, token: &SasToken, now: i64) -> Result<()> {
    let rejected = |problem: String| Error::TokenRejected { problem };
    let expected = iot_hub_signature(key, token.encoded_resource_uri(), token.expiry)
        .map_err(|_| rejected("the key is not base64".to_owned()))?;
    if !token.signature_matches(&expected) {
        return Err(rejected("signature does not match".to_owned()));
    }
    if token.expiry <= now {
        return Err(rejected(format!(
            "token expired at {} (now {now})",
            token.expiry
        )));
    }
    Ok(())
}

/// A fresh random base64 key of 32 bytes, as IoT Hub generates for devices and policies.
pub fn generate_key(random: [u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(random)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1vZi10aGUtaHViLXBvbGljeS0xMjM="; // base64, 32 bytes

    #[test]
    fn parses_service_device_and_module_strings() {
        let service = IotHubConnectionString::parse(&format!(
            "HostName=myhub.azure-devices.net;SharedAccessKeyName=service;SharedAccessKey={KEY}"
        ))
        .unwrap();
        assert_eq!(service.host_name, "myhub.azure-devices.net");
        assert_eq!(service.policy.as_ref().unwrap().name, "service");
        assert_eq!(service.base_url(), "https://myhub.azure-devices.net");
        assert!(!format!("{service:?}").contains(KEY));
        let device = IotHubConnectionString::parse(&format!(
            "hostname=127.0.0.1:8088;deviceid=dev-1;moduleid=filter;sharedaccesskey={KEY};UseDevelopmentEmulator=true"
        ))
        .unwrap();
        assert_eq!(device.device_id.as_deref(), Some("dev-1"));
        assert_eq!(device.module_id.as_deref(), Some("filter"));
        assert!(device.device_key.is_some() && device.policy.is_none());
        assert_eq!(device.base_url(), "http://127.0.0.1:8088");
    }

    #[test]
    fn errors_name_the_bad_part_and_hide_secrets() {
        let cases = [
            (
                "SharedAccessKeyName=s;SharedAccessKey=c2VjcmV0",
                "missing `HostName",
            ),
            (
                "HostName=https://h/;SharedAccessKeyName=s;SharedAccessKey=c2VjcmV0",
                "not a URL",
            ),
            (
                "HostName=h;SharedAccessKey=c2VjcmV0",
                "without SharedAccessKeyName",
            ),
            (
                "HostName=h;SharedAccessKeyName=s",
                "without SharedAccessKey",
            ),
            ("HostName=h", "no credentials"),
            (
                "HostName=h;SharedAccessKeyName=s;SharedAccessKey=not*base64!",
                "not base64",
            ),
            (
                "HostName=h;Endpoint=x;SharedAccessKeyName=s;SharedAccessKey=c2VjcmV0",
                "unknown key `endpoint`",
            ),
            (
                "HostName=h;ModuleId=m;SharedAccessKey=c2VjcmV0",
                "ModuleId given without DeviceId",
            ),
        ];
        for (text, expected) in cases {
            let error = IotHubConnectionString::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains("c2VjcmV0"), "{error}");
        }
    }

    #[test]
    fn tokens_are_keyed_with_the_decoded_key_like_the_service_sdks() {
        // The Python service SDK's algorithm (`azure.iot.hub.sastoken`): quote_plus(uri), HMAC with
        // b64decode(key), quote(b64encode(digest)), `sr,sig,se,skn` order.
        let key = SasKey::new("iothubowner", KEY);
        let token = sign(&key, "myhub.azure-devices.net", 1_700_000_000, true).unwrap();
        let secret = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&secret).unwrap();
        mac.update(b"myhub.azure-devices.net\n1700000000");
        let expected = url_encode(
            &base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()),
        );
        assert_eq!(
            token.as_str(),
            format!(
                "SharedAccessSignature sr=myhub.azure-devices.net&sig={expected}&se=1700000000&skn=iothubowner"
            )
        );
        verify(&key, &token, 1_600_000_000).unwrap();
        // An Event Hubs-style signature (UTF-8 key bytes) of the same resource is refused.
        let event_hubs_style = key.sign("myhub.azure-devices.net", 1_700_000_000);
        assert!(verify(&key, &event_hubs_style, 0).is_err());
        assert!(
            verify(&key, &token, 1_700_000_000)
                .unwrap_err()
                .to_string()
                .contains("expired")
        );
    }

    #[test]
    fn device_tokens_carry_no_key_name_and_cover_only_their_device() {
        let cs = IotHubConnectionString::parse(&format!(
            "HostName=127.0.0.1:8088;DeviceId=dev-1;SharedAccessKey={KEY}"
        ))
        .unwrap();
        let token = SasToken::parse(&cs.token(2_000_000_000).unwrap()).unwrap();
        assert_eq!(token.key_name, None);
        assert_eq!(token.resource_uri, "127.0.0.1:8088/devices/dev-1");
        assert!(token.covers("127.0.0.1:8088/devices/dev-1"));
        assert!(!token.covers("127.0.0.1:8088/devices/dev-10"));
        verify(&SasKey::new("", KEY), &token, 0).unwrap();
        let other = SasKey::new("", generate_key([7; 32]));
        assert!(verify(&other, &token, 0).is_err());
    }
}
