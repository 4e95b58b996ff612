//! The IoT hub's face on the AMQP listener, as a service sees IoT Hub's own host: it signs in with
//! SASL PLAIN as `<policy>@sas.root.<hub>` and an IoT Hub token (HMAC keyed with the base64-decoded
//! policy key, audience `<host>/messages/events`), attaches a receiver to `messages/events`, and is
//! detached with `amqp:link:redirect` naming the built-in endpoint (the event hub behind the hub, on
//! this same listener). It then reads that event hub with the same policy's key, taken as an Event
//! Hubs key, which the event hub accepts for policies with ServiceConnect only.
//!
//! The hub name in the user name is not checked: the emulator is one hub, whatever a client calls
//! it (`127` for a host of `127.0.0.1`, say).

use std::net::SocketAddr;

use fe2o3_amqp_types::definitions::{self, ErrorCondition, LinkError};
use hubroute_amqp::Redirect;
use hubroute_protocol::iothub_amqp;
use hubroute_protocol::{SasToken, conditions, iothub};

use super::auth::audience_path;
use crate::policies::{AccessRights, SharedAccessPolicy};

/// A connection signed in to the hub with a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HubSignIn {
    pub(crate) policy: String,
    pub(crate) rights: AccessRights,
}

/// The hub: its built-in endpoint's event hub, its policies and where the listener is.
#[derive(Debug)]
pub(crate) struct IotHubFace {
    pub(crate) event_hub: String,
    pub(crate) policies: Vec<SharedAccessPolicy>,
    pub(crate) listener: SocketAddr,
}

impl IotHubFace {
    fn policy(&self, name: &str) -> Option<&SharedAccessPolicy> {
        self.policies.iter().find(|policy| policy.key.name == name)
    }

    /// SASL PLAIN as `<policy>@sas.root.<hub>` with an IoT Hub token for the hub's host (or its
    /// `messages/events`); `None` when the user is no hub policy or the token does not verify.
    pub(crate) fn sign_in(&self, user: &str, password: &str, now: i64) -> Option<HubSignIn> {
        let (name, _hub) = iothub_amqp::parse_sasl_plain_user(user)?;
        let policy = self.policy(name)?;
        let token = SasToken::parse(password).ok()?;
        if token.key_name.as_deref().is_some_and(|skn| skn != name) {
            return None;
        }
        iothub::verify(&policy.key, &token, now).ok()?;
        // `sr` is the host name, alone or with the built-in endpoint's path.
        let path = token
            .resource_uri
            .split_once('/')
            .map_or("", |(_, path)| path.trim_matches('/'));
        (path.is_empty() || path.eq_ignore_ascii_case(iothub_amqp::BUILT_IN_ENDPOINT)).then(|| {
            HubSignIn {
                policy: name.to_owned(),
                rights: policy.rights,
            }
        })
    }

    /// The answer to an attach to `messages/events` (`requested`): a redirect for a policy with
    /// ServiceConnect, else the refusal's condition and description.
    pub(crate) fn attach(
        &self,
        signed_in: Option<&HubSignIn>,
        requested: &str,
    ) -> Result<definitions::Error, (&'static str, String)> {
        let Some(signed_in) = signed_in else {
            return Err((
                conditions::UNAUTHORIZED_ACCESS,
                format!(
                    "`{requested}` is the IoT hub's built-in endpoint: sign in with SASL PLAIN as \
                     <policy>@sas.root.<hub> and an IoT Hub SAS token"
                ),
            ));
        };
        if !signed_in.rights.service_connect {
            return Err((
                conditions::UNAUTHORIZED_ACCESS,
                format!(
                    "shared access policy `{}` does not have the ServiceConnect permission, which \
                     reading the built-in endpoint needs",
                    signed_in.policy
                ),
            ));
        }
        let tls = requested.to_ascii_lowercase().starts_with("amqps:");
        let host = match self.listener.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
            ip => ip.to_string(),
        };
        let port = self.listener.port();
        let redirect = Redirect {
            hostname: Some(host.clone()),
            network_host: Some(host.clone()),
            port: Some(port),
            address: Some(iothub_amqp::redirect_address(
                tls,
                &host,
                port,
                &self.event_hub,
                requested,
            )),
        };
        Ok(definitions::Error::new(
            ErrorCondition::LinkError(LinkError::Redirect),
            Some(format!(
                "the built-in endpoint is the event hub `{}` at {host}:{port}",
                self.event_hub
            )),
            Some(redirect.to_info()),
        ))
    }

    /// Checks an Event Hubs token signed with a hub policy's key: the policy needs ServiceConnect and
    /// the token may cover only the built-in endpoint's event hub.
    pub(crate) fn verify_event_hubs_token(&self, token: &SasToken, now: i64) -> Result<(), String> {
        let name = token.key_name.as_deref().unwrap_or_default();
        let policy = self
            .policy(name)
            .ok_or_else(|| format!("unknown key name `{name}`"))?;
        policy
            .key
            .verify(token, now)
            .map_err(|error| error.to_string())?;
        if !policy.rights.service_connect {
            return Err(format!(
                "shared access policy `{name}` does not have the ServiceConnect permission"
            ));
        }
        let path = audience_path(&token.resource_uri);
        let hub = self.event_hub.to_ascii_lowercase();
        if path != hub && !path.starts_with(&format!("{hub}/")) {
            return Err(format!(
                "shared access policy `{name}` may read only the built-in endpoint `{}`",
                self.event_hub
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::default_policies;

    fn face() -> IotHubFace {
        IotHubFace {
            event_hub: "hub".to_owned(),
            policies: default_policies(),
            listener: "127.0.0.1:5673".parse().unwrap(),
        }
    }

    #[test]
    fn policies_sign_in_with_iot_hub_tokens_only() {
        let face = face();
        let service = face.policy("service").unwrap().key.clone();
        let now = 1_000;
        let token = |audience: &str| iothub::sign(&service, audience, now + 60, true).unwrap();
        let good = token("127.0.0.1:5673/messages/events");
        let signed = face
            .sign_in("service@sas.root.127", good.as_str(), now)
            .unwrap();
        assert!(signed.rights.service_connect);
        assert!(
            face.sign_in("service@sas.root.x", token("127.0.0.1:5673").as_str(), now)
                .is_some()
        );
        let cases = [
            (
                "service@sas.root.x",
                service.sign("127.0.0.1/messages/events", now + 60),
            ),
            ("nobody@sas.root.x", good.clone()),
            ("iothubowner@sas.root.x", good.clone()),
            ("service@sas.root.x", token("127.0.0.1:5673/devices/d")),
        ];
        for (user, token) in cases {
            assert_eq!(face.sign_in(user, token.as_str(), now), None, "{user}");
        }
        assert_eq!(
            face.sign_in("service@sas.root.x", good.as_str(), now + 61),
            None
        );
    }

    #[test]
    fn attaches_are_redirected_for_service_connect_only() {
        let face = face();
        let redirect = face
            .attach(
                Some(&HubSignIn {
                    policy: "service".to_owned(),
                    rights: face.policy("service").unwrap().rights,
                }),
                "amqp://127.0.0.1:5673/messages/events/$management",
            )
            .unwrap();
        let redirect = Redirect::from_error(&redirect).unwrap();
        assert_eq!(
            redirect.address.as_deref(),
            Some("amqp://127.0.0.1:5673/hub/$management")
        );
        assert_eq!(redirect.port, Some(5673));
        let registry = HubSignIn {
            policy: "registryRead".to_owned(),
            rights: face.policy("registryRead").unwrap().rights,
        };
        let (condition, description) = face.attach(Some(&registry), "messages/events").unwrap_err();
        assert_eq!(condition, conditions::UNAUTHORIZED_ACCESS);
        assert!(description.contains("ServiceConnect"), "{description}");
        assert!(face.attach(None, "messages/events").is_err());
    }

    #[test]
    fn policy_keys_read_only_the_built_in_endpoint_as_event_hubs_keys() {
        let face = face();
        let key = |name: &str| face.policy(name).unwrap().key.clone();
        let now = 1_000;
        face.verify_event_hubs_token(&key("service").sign("sb://127.0.0.1/hub", now + 60), now)
            .unwrap();
        let failures = [
            (
                key("service").sign("sb://127.0.0.1/other", now + 60),
                "only the built-in",
            ),
            (
                key("registryRead").sign("sb://127.0.0.1/hub", now + 60),
                "ServiceConnect",
            ),
            (
                iothub::sign(&key("service"), "sb://127.0.0.1/hub", now + 60, true).unwrap(),
                "signature",
            ),
        ];
        for (token, expected) in failures {
            let error = face.verify_event_hubs_token(&token, now).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }
}
