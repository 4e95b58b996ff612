//! Configuration of the SQLite sink.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{RetryPolicy, TableConfig};

/// A table in an SQLite database file, the embedded default database.
///
/// ```toml
/// type = "sqlite"
/// name = "local"
/// path = "/var/lib/hubroute/messages.db"
/// table = { name = "messages" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteSinkConfig {
    /// The endpoint name.
    pub name: String,
    /// The database file, created if missing (WAL mode).
    pub path: PathBuf,
    /// The target table and its column mapping.
    pub table: TableConfig,
    /// Rows per transaction (default 10 000); a ticket is never split, so one can be larger.
    #[serde(default = "default_batch_max_rows")]
    pub batch_max_rows: usize,
    /// How long a partly filled batch waits for more rows (default 100 ms).
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// How long a write waits for another process's lock before it counts as a retryable failure
    /// (default 5 s).
    #[serde(default = "default_busy_timeout", with = "humantime_serde")]
    pub busy_timeout: Duration,
    /// Backoff for retryable failures (database busy or locked).
    #[serde(default)]
    pub retry: RetryPolicy,
}

fn default_batch_max_rows() -> usize {
    10_000
}

fn default_linger() -> Duration {
    Duration::from_millis(100)
}

fn default_busy_timeout() -> Duration {
    Duration::from_secs(5)
}

impl SqliteSinkConfig {
    /// A configuration with every default, writing `table` in the database file `path`.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>, table: TableConfig) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            table,
            batch_max_rows: default_batch_max_rows(),
            linger: default_linger(),
            busy_timeout: default_busy_timeout(),
            retry: RetryPolicy::default(),
        }
    }
}
