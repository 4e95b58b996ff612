//! Configuration of the PostgreSQL sink.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::tls::{SslMode, check_sslrootcert};
use crate::{RetryPolicy, Secret, TableConfig};

/// A PostgreSQL table receiving messages through binary `COPY`.
///
/// ```toml
/// type = "postgres"
/// name = "warehouse"
/// host = "db.internal"
/// user = "hubroute"
/// dbname = "telemetry"
/// password = "${PGPASSWORD}"
/// sslmode = "verify-full"
/// sslrootcert = "/etc/hubroute/db-ca.pem"
/// table = { name = "messages" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// The endpoint name.
    pub name: String,
    /// Server host name or address (default `127.0.0.1`).
    #[serde(default = "default_host")]
    pub host: String,
    /// Server port (default 5432).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Role to connect as (default `postgres`).
    #[serde(default = "default_user")]
    pub user: String,
    /// Database name (default `postgres`).
    #[serde(default = "default_dbname")]
    pub dbname: String,
    /// Password; write `"${PGPASSWORD}"` to read it from the environment. None for trust or peer auth.
    #[serde(default)]
    pub password: Option<Secret>,
    /// TLS, as libpq's `sslmode`: `disable`, `prefer` (default: TLS when the server offers it,
    /// unverified), `require`, `verify-ca` (the certificate chains to a trusted CA) or
    /// `verify-full` (and is issued for `host`). Azure Database for PostgreSQL requires TLS.
    #[serde(default)]
    pub sslmode: SslMode,
    /// The CA certificates `verify-ca` and `verify-full` trust (and `require`, which then checks
    /// the chain, as libpq does): a PEM file, or `"system"` for the operating system's trust store
    /// (the default). The file is read when the configuration is loaded.
    #[serde(default, deserialize_with = "sslrootcert")]
    pub sslrootcert: Option<String>,
    /// The target table and its column mapping.
    pub table: TableConfig,
    /// Rows per transaction (default 10 000); a ticket is never split, so one can be larger.
    #[serde(default = "default_batch_max_rows")]
    pub batch_max_rows: usize,
    /// How long a partly filled batch waits for more rows (default 100 ms).
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// Timeout of establishing a connection (default 10 s); a timeout is retried.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Backoff for retryable failures (connection loss, serialization failures, lock timeouts).
    #[serde(default)]
    pub retry: RetryPolicy,
}

fn sslrootcert<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let sslrootcert = String::deserialize(deserializer)?;
    check_sslrootcert(&sslrootcert).map_err(serde::de::Error::custom)?;
    Ok(Some(sslrootcert))
}

fn default_host() -> String {
    "127.0.0.1".to_owned()
}

fn default_port() -> u16 {
    5432
}

fn default_user() -> String {
    "postgres".to_owned()
}

fn default_dbname() -> String {
    "postgres".to_owned()
}

fn default_batch_max_rows() -> usize {
    10_000
}

fn default_linger() -> Duration {
    Duration::from_millis(100)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

impl PostgresSinkConfig {
    /// A configuration with every default, writing to `table`.
    pub fn new(name: impl Into<String>, table: TableConfig) -> Self {
        Self {
            name: name.into(),
            host: default_host(),
            port: default_port(),
            user: default_user(),
            dbname: default_dbname(),
            password: None,
            sslmode: SslMode::default(),
            sslrootcert: None,
            table,
            batch_max_rows: default_batch_max_rows(),
            linger: default_linger(),
            connect_timeout: default_connect_timeout(),
            retry: RetryPolicy::default(),
        }
    }
}
