//! The emulated IoT hub's shared access policies, as far as its AMQP endpoint needs them: a service
//! signs in to the hub's host with a policy (SASL PLAIN as `<policy>@sas.root.<hub>` and an IoT Hub
//! token), and only a policy with ServiceConnect may read the built-in endpoint: it is redirected to
//! the event hub behind it and reads that with the same key.
//!
//! The model is the minimum the redirect needs, shaped like IoT Hub's (reference
//! "iothub-service-and-endpoints" §2): the five policies a new hub has, with their rights. Keys are
//! fixed development placeholders, base64 as IoT Hub's are, derived from the policy name so that
//! every emulator prints the same ones (and the same as the emulator's IoT hub HTTP API, which
//! derives them alike). The emulator is for loopback testing: these keys are public.

use hubroute_protocol::SasKey;
use hubroute_protocol::iothub;

/// What a shared access policy may do (IoT Hub's permissions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccessRights {
    /// Read the identity registry.
    pub registry_read: bool,
    /// Write the identity registry (implies read).
    pub registry_write: bool,
    /// Service-facing endpoints, among them the built-in endpoint (`messages/events`).
    pub service_connect: bool,
    /// Device-facing endpoints.
    pub device_connect: bool,
}

/// One shared access policy of the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedAccessPolicy {
    /// The key name (`skn`), e.g. `iothubowner`, and its key.
    pub key: SasKey,
    /// What it may do.
    pub rights: AccessRights,
}

/// The policy with every right, whose connection string the emulator prints.
pub const OWNER_POLICY: &str = "iothubowner";

/// The policies every new IoT hub has: `iothubowner` (all rights), `service` (ServiceConnect),
/// `device` (DeviceConnect), `registryRead` and `registryReadWrite`.
pub fn default_policies() -> Vec<SharedAccessPolicy> {
    let policy = |name: &str, rights: AccessRights| SharedAccessPolicy {
        key: SasKey::new(name, iothub::generate_key(placeholder_key(name))),
        rights,
    };
    let all = AccessRights {
        registry_read: true,
        registry_write: true,
        service_connect: true,
        device_connect: true,
    };
    vec![
        policy(OWNER_POLICY, all),
        policy(
            "service",
            AccessRights {
                service_connect: true,
                ..AccessRights::default()
            },
        ),
        policy(
            "device",
            AccessRights {
                device_connect: true,
                ..AccessRights::default()
            },
        ),
        policy(
            "registryRead",
            AccessRights {
                registry_read: true,
                ..AccessRights::default()
            },
        ),
        policy(
            "registryReadWrite",
            AccessRights {
                registry_read: true,
                registry_write: true,
                ..AccessRights::default()
            },
        ),
    ]
}

fn placeholder_key(name: &str) -> [u8; 32] {
    let mut key = [0_u8; 32];
    let seed = format!("hubroute-emulator-{name}-development-key");
    for (slot, byte) in key.iter_mut().zip(seed.bytes().cycle()) {
        *slot = byte;
    }
    key
}

/// The IoT hub the emulator answers as on its AMQP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IotHubIdentity {
    /// The event hub that is the hub's built-in endpoint, which `messages/events` redirects to;
    /// `None` takes the first event hub served.
    pub event_hub: Option<String>,
    /// The hub's shared access policies.
    pub policies: Vec<SharedAccessPolicy>,
}

impl Default for IotHubIdentity {
    /// The first event hub served, with the default policies.
    fn default() -> Self {
        Self {
            event_hub: None,
            policies: default_policies(),
        }
    }
}

impl IotHubIdentity {
    /// A hub whose built-in endpoint is `event_hub`, with the default policies.
    pub fn new(event_hub: impl Into<String>) -> Self {
        Self {
            event_hub: Some(event_hub.into()),
            policies: default_policies(),
        }
    }

    /// The policy named `name`.
    pub fn policy(&self, name: &str) -> Option<&SharedAccessPolicy> {
        self.policies.iter().find(|policy| policy.key.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policies_have_iot_hub_rights_and_base64_keys() {
        let hub = IotHubIdentity::new("hub");
        let rights = |name: &str| hub.policy(name).unwrap().rights;
        assert!(rights(OWNER_POLICY).service_connect && rights(OWNER_POLICY).registry_write);
        assert!(rights("service").service_connect && !rights("service").registry_read);
        assert!(!rights("registryRead").service_connect);
        assert!(!rights("device").service_connect);
        for policy in &hub.policies {
            let token = iothub::sign(&policy.key, "h/messages/events", i64::MAX, true).unwrap();
            iothub::verify(&policy.key, &token, 0).unwrap();
        }
        assert_eq!(
            IotHubIdentity::new("other").policies,
            hub.policies,
            "keys are the same in every emulator"
        );
    }
}
