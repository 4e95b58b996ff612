//! Redirects: a peer that ends a link or connection with `amqp:link:redirect` or
//! `amqp:connection:redirect` says in the error's `info` map where to go instead (AMQP 1.0 part 2,
//! 2.8.15 and 2.8.17). IoT Hub answers a service's attach to `messages/events` this way, with the
//! Event Hubs-compatible endpoint.
//!
//! The map is read leniently: a host may come as a string or a symbol, a port as any integer type.

use fe2o3_amqp_types::definitions::{self, Fields};
use fe2o3_amqp_types::primitives::{Symbol, Value};

use crate::client::condition_text;

/// Where a redirect sends the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redirect {
    /// `hostname`: the host name to announce in Open (and TLS).
    pub hostname: Option<String>,
    /// `network-host`: the host to connect to, when it differs from `hostname`.
    pub network_host: Option<String>,
    /// `port`: the port to connect to.
    pub port: Option<u16>,
    /// `address`: the address to attach to there.
    pub address: Option<String>,
}

impl std::fmt::Display for Redirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = self
            .hostname
            .as_deref()
            .or(self.network_host.as_deref())
            .unwrap_or("?");
        write!(f, "{host}")?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        if let Some(address) = &self.address {
            write!(f, " ({address})")?;
        }
        Ok(())
    }
}

fn text(info: &Fields, key: &str) -> Option<String> {
    match info.get(&Symbol::from(key))? {
        Value::String(text) => Some(text.clone()),
        Value::Symbol(symbol) => Some(symbol.0.clone()),
        _ => None,
    }
}

fn port(info: &Fields) -> Option<u16> {
    let number = match info.get(&Symbol::from("port"))? {
        Value::Ubyte(n) => i64::from(*n),
        Value::Ushort(n) => i64::from(*n),
        Value::Uint(n) => i64::from(*n),
        Value::Ulong(n) => i64::try_from(*n).ok()?,
        Value::Byte(n) => i64::from(*n),
        Value::Short(n) => i64::from(*n),
        Value::Int(n) => i64::from(*n),
        Value::Long(n) => *n,
        Value::String(text) => text.parse().ok()?,
        _ => return None,
    };
    u16::try_from(number).ok()
}

impl Redirect {
    /// The redirect an error carries: `Some` when its condition is a link or connection redirect.
    pub fn from_error(error: &definitions::Error) -> Option<Self> {
        let condition = condition_text(&error.condition);
        if condition != "amqp:link:redirect" && condition != "amqp:connection:redirect" {
            return None;
        }
        let Some(info) = error.info.as_deref() else {
            return Some(Self::default());
        };
        Some(Self {
            hostname: text(info, "hostname"),
            network_host: text(info, "network-host"),
            port: port(info),
            address: text(info, "address"),
        })
    }

    /// The `info` map of a redirect to this place (for servers that send one).
    pub fn to_info(&self) -> Fields {
        let mut info = Fields::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                info.insert(Symbol::from(key), value);
            }
        };
        put("hostname", self.hostname.clone().map(Value::String));
        put("network-host", self.network_host.clone().map(Value::String));
        put("port", self.port.map(|port| Value::Int(i32::from(port))));
        put("address", self.address.clone().map(Value::String));
        info
    }
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp_types::definitions::{AmqpError, ErrorCondition, LinkError};

    use super::*;

    #[test]
    fn reads_the_info_map_of_link_redirects_only() {
        let redirect = Redirect {
            hostname: Some("ns.servicebus.windows.net".to_owned()),
            network_host: None,
            port: Some(5671),
            address: Some("amqps://ns.servicebus.windows.net:5671/hub/$management".to_owned()),
        };
        let error = definitions::Error::new(
            ErrorCondition::LinkError(LinkError::Redirect),
            Some("redirect".to_owned()),
            Some(redirect.to_info()),
        );
        assert_eq!(Redirect::from_error(&error), Some(redirect.clone()));
        assert_eq!(
            redirect.to_string(),
            "ns.servicebus.windows.net:5671 (amqps://ns.servicebus.windows.net:5671/hub/$management)"
        );
        let mut symbolic = Fields::new();
        symbolic.insert(Symbol::from("hostname"), Value::Symbol(Symbol::from("h")));
        symbolic.insert(Symbol::from("port"), Value::Ushort(5673));
        let custom = definitions::Error::new(
            ErrorCondition::Custom(Symbol::from("amqp:link:redirect")),
            None,
            Some(symbolic),
        );
        let read = Redirect::from_error(&custom).unwrap();
        assert_eq!(
            (read.hostname.as_deref(), read.port),
            (Some("h"), Some(5673))
        );
        let other = definitions::Error::new(AmqpError::NotFound, None, None);
        assert_eq!(Redirect::from_error(&other), None);
    }
}
