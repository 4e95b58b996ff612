//! Where a connection's tokens come from: signed from the connection string's key (and renewed), or
//! a `SharedAccessSignature` given as is (which cannot be renewed). Token text is never logged.

use std::time::Duration;

use hubroute_protocol::{ConnectionString, SasToken};
use tokio::time::Instant;

use super::SourceConfig;
use super::config::SourceConnectionString;
use super::transport::Endpoint;
use crate::{Error, Result};

/// How a connection authenticates.
#[derive(Debug, Clone)]
pub(crate) enum Credentials {
    /// Tokens signed from the key, each living `lifetime`.
    Key {
        connection_string: ConnectionString,
        lifetime: Duration,
    },
    /// A signature from the connection string.
    Signature(SasToken),
}

impl Credentials {
    /// The credentials of `config`'s connection string.
    pub(crate) fn new(config: &SourceConfig) -> Result<Self> {
        let connection_string = config.event_hubs()?;
        match (
            &connection_string.key,
            &connection_string.shared_access_signature,
        ) {
            (_, Some(signature)) => Ok(Credentials::Signature(SasToken::parse(signature)?)),
            (Some(_), None) => Ok(Credentials::Key {
                connection_string: connection_string.clone(),
                lifetime: config.token_lifetime,
            }),
            (None, None) => Err(Error::SourceConfig {
                problem: "the connection string has neither a key nor a signature".to_owned(),
            }),
        }
    }

    /// A token for `audience`, and the instant to renew it at (`None` for a given signature).
    pub(crate) fn token(&self, audience: &str) -> Result<(SasToken, Option<Instant>)> {
        match self {
            Credentials::Signature(token) => Ok((token.clone(), None)),
            Credentials::Key {
                connection_string,
                lifetime,
            } => {
                let key = connection_string
                    .key
                    .as_ref()
                    .ok_or_else(|| Error::SourceConfig {
                        problem: "the connection string has no SharedAccessKey".to_owned(),
                    })?;
                let seconds = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
                let expiry = chrono::Utc::now().timestamp().saturating_add(seconds);
                Ok((
                    key.sign(audience, expiry),
                    Some(Instant::now() + lifetime.mul_f64(0.8)),
                ))
            }
        }
    }
}

/// `host:port` of the endpoint `config` connects to, with its transport's port.
pub(crate) fn endpoint(config: &SourceConfig) -> String {
    match &config.connection_string {
        SourceConnectionString::EventHubs(connection_string) => {
            let endpoint = Endpoint::of(connection_string);
            format!("{}:{}", endpoint.host, endpoint.port(config.transport))
        }
        SourceConnectionString::IotHub(hub) => hub.host_name.clone(),
    }
}

/// A retryable connection failure.
pub(crate) fn connect_error(config: &SourceConfig, problem: impl std::fmt::Display) -> Error {
    Error::Connect {
        endpoint: endpoint(config),
        problem: problem.to_string(),
    }
}
