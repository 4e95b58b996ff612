//! Configuration of the PostgreSQL sink.

use std::time::Duration;

use serde::Deserialize;

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
            table,
            batch_max_rows: default_batch_max_rows(),
            linger: default_linger(),
            connect_timeout: default_connect_timeout(),
            retry: RetryPolicy::default(),
        }
    }
}
