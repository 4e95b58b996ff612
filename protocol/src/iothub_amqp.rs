//! IoT Hub's AMQP face for a service: the built-in endpoint `messages/events` on the hub's own host,
//! how a service signs in there (SASL PLAIN as `<policy>@sas.root.<hub>` with an IoT Hub token), the
//! `amqp:link:redirect` that sends it on to the Event Hubs-compatible endpoint, and the WebSocket
//! paths of both hosts.
//!
//! This is what Microsoft's samples do to turn a hub's service connection string into the
//! "Event Hub-compatible endpoint" (reference "iothub-service-and-endpoints" §4 and
//! "iothub-routing-and-eventhubs-amqp" §4.5): attach a receiver to
//! `amqps://<hub host>/messages/events/$management`, read `hostname` and `address` from the
//! redirect's `info` map, and take the event hub name from the address (the text between
//! `:<port>/` and `/$management` or `/ConsumerGroups`). hubroute's source follows the redirect and
//! its emulator answers with one, so the shapes live here, as plain strings.

use crate::{Error, Result};

/// The built-in endpoint's path on the IoT hub's host.
pub const BUILT_IN_ENDPOINT: &str = "messages/events";
/// The error condition of a link redirect (AMQP 1.0 part 2, 2.8.17).
pub const REDIRECT_CONDITION: &str = "amqp:link:redirect";
/// The WebSocket path of an Event Hubs (Service Bus) namespace.
pub const EVENT_HUBS_WEBSOCKET_PATH: &str = "/$servicebus/websocket";
/// The WebSocket path of an IoT hub's AMQP endpoint (the IoT SDKs' `WebSocketConstants.UriSuffix`).
pub const IOT_HUB_WEBSOCKET_PATH: &str = "/$iothub/websocket";
/// The WebSocket subprotocol every Azure SDK asks for.
pub const WEBSOCKET_SUBPROTOCOL: &str = "AMQPWSB10";
/// The port of AMQP over WebSockets (HTTPS).
pub const WEBSOCKET_PORT: u16 = 443;

/// Keys of a redirect's `info` map (AMQP 1.0 part 2, 2.8.17).
pub mod redirect_info {
    /// The host name to put in Open and TLS (the Event Hubs namespace).
    pub const HOSTNAME: &str = "hostname";
    /// The host to connect to, when it differs from `hostname`.
    pub const NETWORK_HOST: &str = "network-host";
    /// The port to connect to.
    pub const PORT: &str = "port";
    /// The address to attach to on the new host.
    pub const ADDRESS: &str = "address";
}

/// Splits `host[:port]` (IPv6 in brackets) into the host and the port, if given.
pub fn split_host_port(host_name: &str) -> Result<(&str, Option<u16>)> {
    let bad = |problem: String| Error::IotHubConnectionString { problem };
    if let Some(rest) = host_name.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| bad(format!("HostName `{host_name}` has an unclosed `[`")))?;
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(parse_port(port, host_name)?))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(bad(format!("HostName `{host_name}` is not host[:port]"))),
        };
    }
    match host_name.split_once(':') {
        Some((host, port)) if !port.contains(':') => Ok((host, Some(parse_port(port, host_name)?))),
        _ => Ok((host_name, None)),
    }
}

fn parse_port(port: &str, host_name: &str) -> Result<u16> {
    port.parse().map_err(|_| Error::IotHubConnectionString {
        problem: format!("the port of HostName `{host_name}` is not a number"),
    })
}

/// The hub's name: the first label of its host name (`myhub` of `myhub.azure-devices.net`).
pub fn hub_name(host: &str) -> &str {
    host.split('.').next().unwrap_or(host)
}

/// The SASL PLAIN user name of a policy: `<policy>@sas.root.<hub>`.
pub fn sasl_plain_user(policy: &str, host: &str) -> String {
    format!("{policy}@sas.root.{}", hub_name(host))
}

/// The policy and hub of a SASL PLAIN user name `<policy>@sas.root.<hub>`; `None` for any other
/// user name (an Event Hubs key name, a device's `<id>@sas.<hub>`).
pub fn parse_sasl_plain_user(user: &str) -> Option<(&str, &str)> {
    let (policy, hub) = user.split_once("@sas.root.")?;
    (!policy.is_empty() && !hub.is_empty()).then_some((policy, hub))
}

/// The audience of the token a service sends with SASL PLAIN: `<HostName>/messages/events`.
pub fn token_audience(host_name: &str) -> String {
    format!("{host_name}/{BUILT_IN_ENDPOINT}")
}

/// The source address a service attaches to on the hub's host to be redirected:
/// `amqps://<HostName>/messages/events/$management` (`amqp://` without TLS).
pub fn built_in_endpoint_address(host_name: &str, tls: bool) -> String {
    let scheme = if tls { "amqps" } else { "amqp" };
    format!("{scheme}://{host_name}/{BUILT_IN_ENDPOINT}/$management")
}

/// The path of an address without scheme and host, and without surrounding slashes.
fn path_of(address: &str) -> &str {
    let path = match address.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, path)| path),
        None => address,
    };
    path.trim_matches('/')
}

/// Whether a link address names the built-in endpoint on the hub's host: `messages/events`, with or
/// without scheme and host, alone or followed by `/$management`, `/ConsumerGroups/…` and the like.
pub fn is_built_in_endpoint(address: &str) -> bool {
    let path = path_of(address);
    let Some(prefix) = path.get(..BUILT_IN_ENDPOINT.len()) else {
        return false;
    };
    prefix.eq_ignore_ascii_case(BUILT_IN_ENDPOINT)
        && matches!(
            path.as_bytes().get(BUILT_IN_ENDPOINT.len()),
            None | Some(b'/')
        )
}

/// The address a redirect names for a requested built-in endpoint address: the same path with
/// `messages/events` replaced by the event hub, on the Event Hubs host
/// (`amqps://<ns>:5671/<event hub>/$management`).
pub fn redirect_address(
    tls: bool,
    host: &str,
    port: u16,
    event_hub: &str,
    requested: &str,
) -> String {
    let scheme = if tls { "amqps" } else { "amqp" };
    let path = path_of(requested);
    let rest = path.get(BUILT_IN_ENDPOINT.len()..).unwrap_or_default();
    format!("{scheme}://{host}:{port}/{event_hub}{rest}")
}

/// Where a redirect sends a service: the Event Hubs-compatible endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHubsEndpoint {
    /// The namespace's host name (`iothub-ns-….servicebus.windows.net`).
    pub host: String,
    /// The port, unless it is the default AMQPS port 5671 (so that WebSockets keep 443).
    pub port: Option<u16>,
    /// The Event Hubs-compatible name.
    pub event_hub: String,
}

/// Reads a redirect's `info`: the host is `hostname` (else `network-host`, else the address's
/// host), the port is `port` (else the address's), and the event hub is the address's first path
/// segment, i.e. the text before `/$management` or `/ConsumerGroups` (IoT Hub's samples do the same).
pub fn event_hubs_endpoint(
    hostname: Option<&str>,
    network_host: Option<&str>,
    port: Option<u16>,
    address: Option<&str>,
) -> Result<EventHubsEndpoint> {
    let bad = |problem: String| Error::Redirect { problem };
    let address = address
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad("the redirect has no `address`".to_owned()))?;
    let authority = address
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or_default());
    let (address_host, address_port) = match authority.filter(|a| !a.is_empty()) {
        Some(authority) => {
            let (host, port) = split_host_port(authority)
                .map_err(|_| bad(format!("the redirect address `{address}` has a bad port")))?;
            (Some(host), port)
        }
        None => (None, None),
    };
    let host = hostname
        .or(network_host)
        .or(address_host)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad(format!("the redirect names no host (address `{address}`)")))?;
    let event_hub = path_of(address)
        .split('/')
        .next()
        .filter(|segment| !segment.is_empty() && !segment.starts_with('$'))
        .ok_or_else(|| {
            bad(format!(
                "the redirect address `{address}` names no event hub"
            ))
        })?;
    Ok(EventHubsEndpoint {
        host: host.to_owned(),
        port: port
            .or(address_port)
            .filter(|port| *port != crate::connection_string::AMQPS_PORT),
        event_hub: event_hub.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_split_into_host_and_port() {
        let cases = [
            ("myhub.azure-devices.net", ("myhub.azure-devices.net", None)),
            ("127.0.0.1:5673", ("127.0.0.1", Some(5673))),
            ("[::1]:5673", ("::1", Some(5673))),
            ("[::1]", ("::1", None)),
        ];
        for (text, expected) in cases {
            assert_eq!(split_host_port(text).unwrap(), expected, "{text}");
        }
        assert!(split_host_port("h:port").is_err());
    }

    #[test]
    fn sasl_user_names_and_audiences_follow_the_samples() {
        assert_eq!(
            sasl_plain_user("service", "myhub.azure-devices.net"),
            "service@sas.root.myhub"
        );
        assert_eq!(
            parse_sasl_plain_user("service@sas.root.myhub"),
            Some(("service", "myhub"))
        );
        assert_eq!(parse_sasl_plain_user("RootManageSharedAccessKey"), None);
        assert_eq!(parse_sasl_plain_user("dev-1@sas.myhub"), None);
        assert_eq!(
            token_audience("myhub.azure-devices.net"),
            "myhub.azure-devices.net/messages/events"
        );
        assert_eq!(
            built_in_endpoint_address("myhub.azure-devices.net", true),
            "amqps://myhub.azure-devices.net/messages/events/$management"
        );
    }

    #[test]
    fn built_in_endpoint_addresses_are_recognised() {
        let cases = [
            (
                "amqps://myhub.azure-devices.net/messages/events/$management",
                true,
            ),
            (
                "/messages/events/ConsumerGroups/$Default/Partitions/0",
                true,
            ),
            ("messages/events", true),
            ("Messages/Events", true),
            ("messages/eventsx", false),
            ("hub/ConsumerGroups/$Default/Partitions/0", false),
            ("$cbs", false),
        ];
        for (address, expected) in cases {
            assert_eq!(is_built_in_endpoint(address), expected, "{address}");
        }
    }

    #[test]
    fn redirects_resolve_like_the_samples() {
        // The JS and .NET samples' form, and the Python sample's.
        let management = event_hubs_endpoint(
            Some("iothub-ns-x-1.servicebus.windows.net"),
            None,
            None,
            Some("amqps://iothub-ns-x-1.servicebus.windows.net:5671/myhub/$management"),
        )
        .unwrap();
        assert_eq!(
            management,
            EventHubsEndpoint {
                host: "iothub-ns-x-1.servicebus.windows.net".to_owned(),
                port: None,
                event_hub: "myhub".to_owned(),
            }
        );
        let partition = event_hubs_endpoint(
            None,
            Some("127.0.0.1"),
            Some(5673),
            Some("amqp://127.0.0.1:5673/hub/ConsumerGroups/$Default/Partitions/0"),
        )
        .unwrap();
        assert_eq!(
            (
                partition.host.as_str(),
                partition.port,
                partition.event_hub.as_str()
            ),
            ("127.0.0.1", Some(5673), "hub")
        );
        assert_eq!(
            redirect_address(
                false,
                "127.0.0.1",
                5673,
                "hub",
                "amqp://h/messages/events/$management"
            ),
            "amqp://127.0.0.1:5673/hub/$management"
        );
        let failures = [
            (Some("h"), None, "no `address`"),
            (
                Some("h"),
                Some("amqps://h:5671/$management"),
                "names no event hub",
            ),
            (None, Some("hub/$management"), "names no host"),
        ];
        for (hostname, address, expected) in failures {
            let error = event_hubs_endpoint(hostname, None, None, address).unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
    }
}
