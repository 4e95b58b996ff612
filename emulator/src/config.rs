//! What the emulator serves: event hubs, partitions, consumer groups, the shared access key, retention,
//! storage, TLS and the IoT hub in front of them. Defaults mirror Microsoft's Event Hubs emulator where it has one.

use std::net::SocketAddr;
use std::path::PathBuf;

use hubroute_protocol::SasKey;
use hubroute_protocol::address::DEFAULT_CONSUMER_GROUP;

use crate::policies::IotHubIdentity;

/// Key name of the default shared access key (the Event Hubs emulator's).
pub const DEFAULT_KEY_NAME: &str = "RootManageSharedAccessKey";
/// The default key value. It is a development placeholder, as in Microsoft's emulator: the emulator is
/// for loopback testing, never for production data.
pub const DEFAULT_KEY_VALUE: &str = "SAS_KEY_VALUE";

/// One event hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Event hub name (the `EntityPath`).
    pub name: String,
    /// Number of partitions, ids `0..partition_count`.
    pub partition_count: u32,
    /// Consumer groups besides `$Default`, which always exists.
    pub consumer_groups: Vec<String>,
}

impl HubConfig {
    /// A hub with `partition_count` partitions and only `$Default`.
    pub fn new(name: impl Into<String>, partition_count: u32) -> Self {
        Self {
            name: name.into(),
            partition_count,
            consumer_groups: Vec::new(),
        }
    }

    pub(crate) fn has_consumer_group(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(DEFAULT_CONSUMER_GROUP)
            || self
                .consumer_groups
                .iter()
                .any(|group| group.eq_ignore_ascii_case(name))
    }
}

/// How much each partition keeps; the oldest events go first when either bound is exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events kept per partition.
    pub max_events: usize,
    /// Encoded bytes kept per partition.
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_events: 1_000_000,
            max_bytes: 1 << 30,
        }
    }
}

/// PEM files for serving AMQP over TLS (`amqps`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert_pem: PathBuf,
    /// Private key.
    pub key_pem: PathBuf,
}

/// Everything the emulator needs to start.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// AMQP listener address; port 0 picks a free port.
    pub amqp_listen: SocketAddr,
    /// Event hubs served.
    pub hubs: Vec<HubConfig>,
    /// The one shared access key (used for SASL PLAIN and to verify SAS tokens).
    pub key: SasKey,
    /// `None` keeps partitions in memory; `Some(dir)` appends them to files there so they survive restarts.
    pub data_dir: Option<PathBuf>,
    /// Per-partition retention.
    pub retention: Retention,
    /// Serve AMQP over TLS.
    pub tls: Option<TlsFiles>,
    /// Largest accepted message, encoded (Event Hubs Standard: 1 MiB).
    pub max_message_bytes: usize,
    /// The IoT hub the listener also answers as: a service signing in with one of its policies and
    /// attaching to `messages/events` is redirected to its built-in endpoint. `None` serves Event
    /// Hubs only.
    pub iot_hub: Option<IotHubIdentity>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            amqp_listen: SocketAddr::from(([127, 0, 0, 1], 5673)),
            hubs: vec![HubConfig::new("hub", 4)],
            key: SasKey::new(DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE),
            data_dir: None,
            retention: Retention::default(),
            tls: None,
            max_message_bytes: 1024 * 1024,
            iot_hub: Some(IotHubIdentity::default()),
        }
    }
}
