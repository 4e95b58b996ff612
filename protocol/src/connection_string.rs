//! Event Hubs connection strings: `Endpoint=sb://host[:port]/;SharedAccessKeyName=..;SharedAccessKey=..;
//! EntityPath=..;UseDevelopmentEmulator=true`.
//!
//! Keys are case-insensitive and values are split on the first `=` only (keys end in `=`), as in the
//! official SDKs. Errors name the offending part but never echo a secret.

use std::fmt;

use crate::{Error, Result, SasKey};

/// A parsed connection string. `Debug` masks the key and signature.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// Host name from `Endpoint`, e.g. `iothub-ns-x.servicebus.windows.net` or `127.0.0.1`.
    pub host: String,
    /// Port from `Endpoint`, if given (honoured by the SDKs only in emulator mode).
    pub port: Option<u16>,
    /// `EntityPath`: the event hub name.
    pub entity_path: Option<String>,
    /// `SharedAccessKeyName` + `SharedAccessKey`.
    pub key: Option<SasKey>,
    /// `SharedAccessSignature`: a pre-made token.
    pub shared_access_signature: Option<String>,
    /// `UseDevelopmentEmulator=true`: plain AMQP, no TLS.
    pub use_development_emulator: bool,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("entity_path", &self.entity_path)
            .field("key", &self.key)
            .field(
                "shared_access_signature",
                &self.shared_access_signature.as_ref().map(|_| "***"),
            )
            .field("use_development_emulator", &self.use_development_emulator)
            .finish()
    }
}

/// Default AMQP-over-TLS port.
pub const AMQPS_PORT: u16 = 5671;
/// Default plain AMQP port.
pub const AMQP_PORT: u16 = 5672;

impl ConnectionString {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self> {
        let problem = |problem: String| Error::ConnectionString { problem };
        let (mut endpoint, mut key_name, mut key, mut signature, mut entity, mut emulator) =
            (None, None, None, None, None, false);
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| {
                let shown = part.split_once('=').map_or(part, |(n, _)| n);
                problem(format!("part `{shown}` is not `Key=Value`"))
            })?;
            match name.trim().to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(value.trim().to_owned()),
                "sharedaccesskeyname" => key_name = Some(value.to_owned()),
                "sharedaccesskey" => key = Some(value.to_owned()),
                "sharedaccesssignature" => signature = Some(value.to_owned()),
                "entitypath" => entity = Some(value.to_owned()),
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
                        "unknown key `{other}`; expected Endpoint, SharedAccessKeyName, \
                         SharedAccessKey, SharedAccessSignature, EntityPath or UseDevelopmentEmulator"
                    )));
                }
            }
        }
        let endpoint =
            endpoint.ok_or_else(|| problem("missing `Endpoint=sb://<host>/`".to_owned()))?;
        let authority = match endpoint.split_once("://") {
            Some((scheme, rest))
                if ["sb", "amqp", "amqps"].contains(&scheme.to_ascii_lowercase().as_str()) =>
            {
                rest.split('/').next().unwrap_or_default()
            }
            _ => {
                return Err(problem(format!(
                    "Endpoint `{endpoint}` must look like sb://<host>[:port]/"
                )));
            }
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                let port = port
                    .parse()
                    .map_err(|_| problem(format!("Endpoint port `{port}` is not a number")))?;
                (host.to_owned(), Some(port))
            }
            _ => (authority.to_owned(), None),
        };
        if host.is_empty() {
            return Err(problem(format!("Endpoint `{endpoint}` has no host")));
        }
        let key = match (key_name, key) {
            (Some(name), Some(key)) => Some(SasKey::new(name, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(problem(
                    "SharedAccessKeyName given without SharedAccessKey".to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(problem(
                    "SharedAccessKey given without SharedAccessKeyName".to_owned(),
                ));
            }
        };
        if key.is_none() && signature.is_none() {
            return Err(problem(
                "no credentials: give SharedAccessKeyName and SharedAccessKey, or SharedAccessSignature"
                    .to_owned(),
            ));
        }
        if key.is_some() && signature.is_some() {
            return Err(problem(
                "give either SharedAccessKey or SharedAccessSignature, not both".to_owned(),
            ));
        }
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            entity_path: entity.filter(|e| !e.is_empty()),
            key,
            shared_access_signature: signature,
            use_development_emulator: emulator,
        })
    }

    /// Whether to use TLS: always, except in emulator mode.
    pub fn uses_tls(&self) -> bool {
        !self.use_development_emulator
    }

    /// The port to connect to: the one in `Endpoint` if given (a private endpoint, a TLS proxy, the
    /// emulator), else 5672 in emulator mode and 5671 (TLS) otherwise.
    pub fn effective_port(&self) -> u16 {
        match (self.use_development_emulator, self.port) {
            (_, Some(port)) => port,
            (true, None) => AMQP_PORT,
            (false, None) => AMQPS_PORT,
        }
    }

    /// The token audience for an entity, `sb://<host>/<entity>`.
    pub fn audience(&self, entity: &str) -> String {
        format!("sb://{}/{}", self.host, entity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_iot_hub_built_in_endpoint_string() {
        let cs = ConnectionString::parse(
            "Endpoint=sb://iothub-ns-x-1.servicebus.windows.net/;SharedAccessKeyName=service;\
             SharedAccessKey=abc/def+g==;EntityPath=myhub",
        )
        .unwrap();
        assert_eq!(cs.host, "iothub-ns-x-1.servicebus.windows.net");
        assert_eq!(cs.entity_path.as_deref(), Some("myhub"));
        assert_eq!(cs.key.as_ref().unwrap().expose_secret(), "abc/def+g==");
        assert!(cs.uses_tls());
        assert_eq!(cs.effective_port(), 5671);
        assert!(!format!("{cs:?}").contains("abc/def"));
    }

    #[test]
    fn keys_are_case_insensitive_and_emulator_mode_honours_the_port() {
        let cs = ConnectionString::parse(
            "endpoint=sb://127.0.0.1:5673;sharedaccesskeyname=k;SHAREDACCESSKEY=s;usedevelopmentemulator=true;",
        )
        .unwrap();
        assert_eq!((cs.host.as_str(), cs.port), ("127.0.0.1", Some(5673)));
        assert!(!cs.uses_tls());
        assert_eq!(cs.effective_port(), 5673);
        assert_eq!(cs.audience("hub"), "sb://127.0.0.1/hub");
        let tls_with_port = ConnectionString::parse(
            "Endpoint=sb://localhost:5999/;SharedAccessKeyName=k;SharedAccessKey=s;EntityPath=hub",
        )
        .unwrap();
        assert!(tls_with_port.uses_tls());
        assert_eq!(tls_with_port.effective_port(), 5999);
    }

    #[test]
    fn errors_name_the_bad_part_and_hide_secrets() {
        let cases = [
            (
                "SharedAccessKeyName=k;SharedAccessKey=s",
                "missing `Endpoint",
            ),
            (
                "Endpoint=http://h/;SharedAccessKeyName=k;SharedAccessKey=s",
                "must look like sb://",
            ),
            (
                "Endpoint=sb://h:x/;SharedAccessKeyName=k;SharedAccessKey=s",
                "port `x`",
            ),
            (
                "Endpoint=sb://h/;SharedAccessKeyName=k",
                "without SharedAccessKey",
            ),
            ("Endpoint=sb://h/", "no credentials"),
            (
                "Endpoint=sb://h/;Foo=bar;SharedAccessKey=s3cr3t;SharedAccessKeyName=k",
                "unknown key `foo`",
            ),
            ("Endpoint=sb://h/;s3cr3t", "part `s3cr3t` is not"),
        ];
        for (text, expected) in cases {
            let error = ConnectionString::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
            if !expected.contains("s3cr3t") {
                assert!(!error.contains("s3cr3t"), "{error}");
            }
        }
    }
}
