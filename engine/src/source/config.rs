//! [`SourceConfig`]: what to read and how, with every default in one place.
//!
//! The connection string is parsed when the configuration is loaded (a typo fails at start-up, not at
//! the first reconnect) and kept as a [`SourceConnectionString`]: an Event Hubs connection string,
//! or an IoT hub's service connection string that the source resolves to the hub's Event
//! Hubs-compatible endpoint when it starts. Both mask their keys in `Debug`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hubroute_protocol::{ConnectionString, EventPosition, IotHubConnectionString, PositionKind};
use serde::{Deserialize, Deserializer};

pub use super::proxy::ProxyUrl;

/// Where a partition starts when it has no checkpoint. A checkpoint always wins.
///
/// TOML: `start = "earliest"`, `start = "latest"`, `start = { offset = "1024" }`,
/// `start = { sequence_number = 42 }`, `start = { enqueued_time = "2024-05-01T00:00:00Z" }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StartPosition {
    /// The oldest retained event.
    #[default]
    Earliest,
    /// Only events enqueued after the receiver attaches.
    Latest,
    /// The event at this offset and everything after it (inclusive).
    Offset(String),
    /// The event with this sequence number and everything after it (inclusive).
    SequenceNumber(i64),
    /// Events enqueued strictly after this time.
    EnqueuedTime(DateTime<Utc>),
}

impl StartPosition {
    /// The selector-filter position this start means.
    pub(crate) fn event_position(&self) -> EventPosition {
        match self {
            Self::Earliest => EventPosition::earliest(),
            Self::Latest => EventPosition::latest(),
            Self::Offset(offset) => EventPosition {
                kind: PositionKind::Offset(offset.clone()),
                inclusive: true,
            },
            Self::SequenceNumber(n) => EventPosition {
                kind: PositionKind::SequenceNumber(*n),
                inclusive: true,
            },
            Self::EnqueuedTime(time) => EventPosition {
                kind: PositionKind::EnqueuedTime(time.timestamp_millis()),
                inclusive: false,
            },
        }
    }
}

/// What to do when the service refuses a start position as out of range (typically a checkpoint
/// older than the retention period).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutOfRangePolicy {
    /// Stop the partition with [`crate::Error::PositionOutOfRange`]: events were lost, a human decides.
    #[default]
    Fail,
    /// Log a warning and restart the partition from the oldest retained event.
    Earliest,
}

/// What `connection_string` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConnectionString {
    /// `Endpoint=sb://…`: an event hub, such as an IoT hub's built-in endpoint ("Event Hub-compatible
    /// endpoint").
    EventHubs(ConnectionString),
    /// `HostName=….azure-devices.net;SharedAccessKeyName=…;SharedAccessKey=…`: an IoT hub's service
    /// connection string. The source asks the hub where its built-in endpoint is (IoT Hub's
    /// `amqp:link:redirect`) and reads it with the same policy's key.
    IotHub(IotHubConnectionString),
}

impl From<ConnectionString> for SourceConnectionString {
    fn from(connection_string: ConnectionString) -> Self {
        Self::EventHubs(connection_string)
    }
}

impl SourceConnectionString {
    /// Parses an Event Hubs connection string (`Endpoint=`) or an IoT hub's service connection string
    /// (`HostName=`), telling them apart by their keys. An IoT Hub string must carry a policy's key
    /// (`SharedAccessKeyName` and `SharedAccessKey`): it signs the hub's token and, after the
    /// redirect, the Event Hubs tokens.
    pub fn parse(text: &str) -> crate::Result<Self> {
        let keys: Vec<String> = text
            .split(';')
            .filter_map(|part| part.split_once('='))
            .map(|(key, _)| key.trim().to_ascii_lowercase())
            .collect();
        let has = |key: &str| keys.iter().any(|k| k == key);
        if !has("hostname") {
            return Ok(Self::EventHubs(ConnectionString::parse(text)?));
        }
        let problem = |problem: &str| crate::Error::SourceConfig {
            problem: problem.to_owned(),
        };
        if has("endpoint") {
            return Err(problem(
                "the connection string has both HostName (an IoT hub) and Endpoint (an event hub);                  give one of them",
            ));
        }
        let hub = IotHubConnectionString::parse(text)?;
        if hub.device_id.is_some() {
            return Err(problem(
                "this is a device connection string (DeviceId): reading the built-in endpoint needs a                  service connection string, e.g. of the `service` or `iothubowner` shared access policy",
            ));
        }
        if hub.policy.is_none() {
            return Err(problem(
                "an IoT Hub connection string needs SharedAccessKeyName and SharedAccessKey: the key                  also signs the Event Hubs tokens after the hub's redirect, which a                  SharedAccessSignature cannot",
            ));
        }
        Ok(Self::IotHub(hub))
    }
}

fn connection_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SourceConnectionString, D::Error> {
    let text = String::deserialize(deserializer)?;
    SourceConnectionString::parse(&text).map_err(serde::de::Error::custom)
}

fn proxy<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<ProxyUrl>, D::Error> {
    let text = String::deserialize(deserializer)?;
    ProxyUrl::parse(&text)
        .map(Some)
        .map_err(|problem| serde::de::Error::custom(format!("invalid proxy: {problem}")))
}

/// How the AMQP connections travel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// AMQP over TCP: port 5671 with TLS (5672 for a development emulator).
    #[default]
    Amqp,
    /// AMQP over WebSockets on port 443 (`wss://<host>/$servicebus/websocket`), for networks that
    /// only let HTTPS out, optionally through an HTTP proxy.
    AmqpWebsockets,
}

/// Configuration of an [`super::EventHubSource`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Event Hubs connection string (for IoT Hub: the built-in endpoint's "Event Hub-compatible
    /// endpoint"), or the IoT hub's own service connection string. A secret: never logged.
    #[serde(deserialize_with = "connection_string")]
    pub(crate) connection_string: SourceConnectionString,
    /// AMQP over TCP (default) or over WebSockets.
    #[serde(default)]
    pub transport: Transport,
    /// An HTTP CONNECT proxy for `amqp_websockets`; `None` uses `HTTPS_PROXY` (minus `NO_PROXY`)
    /// if set.
    #[serde(default, deserialize_with = "proxy")]
    pub proxy: Option<ProxyUrl>,
    /// Event hub name; defaults to the connection string's `EntityPath`.
    #[serde(default)]
    pub(crate) event_hub: Option<String>,
    /// Consumer group.
    #[serde(default = "defaults::consumer_group")]
    pub(crate) consumer_group: String,
    /// Partitions to read; `None` reads every partition the service reports.
    #[serde(default)]
    pub partitions: Option<Vec<String>>,
    /// Start position of partitions without a checkpoint.
    #[serde(default)]
    pub start: StartPosition,
    /// Per-partition start positions, overriding `start`.
    #[serde(default)]
    pub partition_start: BTreeMap<String, StartPosition>,
    /// AMQP link credit per partition: at most this many events are in flight towards a partition
    /// receiver that has not yet appended them, which bounds memory when downstream stalls.
    #[serde(default = "defaults::prefetch")]
    pub prefetch: u32,
    /// A batch is cut at this many rows.
    #[serde(default = "defaults::batch_max_rows")]
    pub batch_max_rows: usize,
    /// A batch is cut once its bodies reach this many bytes.
    #[serde(default = "defaults::batch_max_bytes")]
    pub(crate) batch_max_bytes: usize,
    /// Memory that decoded events may hold between the AMQP link and the end of routing, summed
    /// over every partition (default 32 MiB). When it is used up, receivers cut their batches early
    /// and wait, granting no credit, so memory does not grow with the partition count. The
    /// builders' allocations run ahead of the bytes counted (a batch's buffers are sized for the
    /// partition's previous batch and grow by doubling), so the memory held is up to about twice
    /// this: at 64 MiB, 32 partitions held ~150 MB of batches (heaptrack).
    #[serde(default = "defaults::max_buffered_bytes")]
    pub max_buffered_bytes: u64,
    /// A non-empty batch is cut at most this long after its first row arrived.
    #[serde(default = "defaults::batch_linger", with = "humantime_serde")]
    pub batch_linger: Duration,
    /// Owner level (`com.microsoft:epoch`) of the receivers; `None` attaches non-exclusive receivers.
    #[serde(default = "defaults::owner_level")]
    pub(crate) owner_level: Option<i64>,
    /// Reaction to an out-of-range start position.
    #[serde(default)]
    pub out_of_range: OutOfRangePolicy,
    /// A PEM file of CA certificates to trust for `amqps` besides the public web roots: a private
    /// CA, a TLS-terminating proxy, or the certificate given to `hubroute emulator --tls-cert`.
    #[serde(default)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Lifetime of the SAS tokens signed from the key; they are renewed at 80 % of it.
    #[serde(default = "defaults::token_lifetime", with = "humantime_serde")]
    pub token_lifetime: Duration,
    /// Upper bound of the reconnect backoff.
    #[serde(default = "defaults::max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
}

mod defaults {
    use std::time::Duration;

    pub(super) fn consumer_group() -> String {
        hubroute_protocol::address::DEFAULT_CONSUMER_GROUP.to_owned()
    }
    pub(super) fn prefetch() -> u32 {
        300
    }
    pub(super) fn batch_max_rows() -> usize {
        8192
    }
    pub(super) fn batch_max_bytes() -> usize {
        16 * 1024 * 1024
    }
    pub(super) fn max_buffered_bytes() -> u64 {
        32 * 1024 * 1024
    }
    pub(super) fn batch_linger() -> Duration {
        Duration::from_millis(20)
    }
    #[expect(
        clippy::unnecessary_wraps,
        reason = "serde default functions return the field's type"
    )]
    pub(super) fn owner_level() -> Option<i64> {
        Some(0)
    }
    pub(super) fn token_lifetime() -> Duration {
        Duration::from_secs(3600)
    }
    pub(super) fn max_backoff() -> Duration {
        Duration::from_secs(30)
    }
}

impl SourceConfig {
    /// A configuration with every default, reading `connection_string`.
    pub fn new(connection_string: impl Into<SourceConnectionString>) -> Self {
        Self {
            connection_string: connection_string.into(),
            transport: Transport::default(),
            proxy: None,
            event_hub: None,
            consumer_group: defaults::consumer_group(),
            partitions: None,
            start: StartPosition::default(),
            partition_start: BTreeMap::new(),
            prefetch: defaults::prefetch(),
            batch_max_rows: defaults::batch_max_rows(),
            batch_max_bytes: defaults::batch_max_bytes(),
            max_buffered_bytes: defaults::max_buffered_bytes(),
            batch_linger: defaults::batch_linger(),
            owner_level: defaults::owner_level(),
            out_of_range: OutOfRangePolicy::default(),
            tls_ca_file: None,
            token_lifetime: defaults::token_lifetime(),
            max_backoff: defaults::max_backoff(),
        }
    }

    /// The start position of `partition` when it has no checkpoint.
    pub(crate) fn start_of(&self, partition: &str) -> &StartPosition {
        self.partition_start.get(partition).unwrap_or(&self.start)
    }

    /// The event hub to read: `event_hub`, else the connection string's `EntityPath`. An IoT Hub
    /// connection string has none until the source resolves it.
    pub(crate) fn event_hub_name(&self) -> crate::Result<&str> {
        self.event_hub
            .as_deref()
            .or(self.event_hubs()?.entity_path.as_deref())
            .ok_or_else(|| crate::Error::SourceConfig {
                problem: "no event hub name: add EntityPath=<hub> to the connection string or set `event_hub`"
                    .to_owned(),
            })
    }

    /// The Event Hubs connection string: the configured one, or what an IoT Hub connection string
    /// resolved to.
    pub(crate) fn event_hubs(&self) -> crate::Result<&ConnectionString> {
        match &self.connection_string {
            SourceConnectionString::EventHubs(connection_string) => Ok(connection_string),
            SourceConnectionString::IotHub(hub) => Err(crate::Error::SourceConfig {
                problem: format!(
                    "the IoT hub {} has not been resolved to its Event Hubs-compatible endpoint yet",
                    hub.host_name
                ),
            }),
        }
    }

    /// The proxy of the connections to `host`: `proxy`, else `HTTPS_PROXY` unless `NO_PROXY`
    /// lists `host`; never one for plain AMQP.
    pub(crate) fn proxy_for(&self, host: &str) -> crate::Result<Option<ProxyUrl>> {
        if self.transport != Transport::AmqpWebsockets {
            return Ok(None);
        }
        match &self.proxy {
            Some(proxy) => Ok(Some(proxy.clone())),
            None => ProxyUrl::from_environment(host)
                .map_err(|problem| crate::Error::SourceConfig { problem }),
        }
    }

    pub(crate) fn validate(&self) -> crate::Result<()> {
        let problem = |problem: &str| {
            Err(crate::Error::SourceConfig {
                problem: problem.to_owned(),
            })
        };
        if self.prefetch == 0 {
            return problem("prefetch must be at least 1");
        }
        if self.batch_max_rows == 0 || self.batch_max_bytes == 0 {
            return problem("batch_max_rows and batch_max_bytes must be at least 1");
        }
        if self.max_buffered_bytes < 1024 * 1024 {
            return problem(
                "max_buffered_bytes must be at least 1 MiB (1048576): it holds every partition's \
                 batches being built and routed",
            );
        }
        if self.token_lifetime < Duration::from_secs(10) {
            return problem(
                "token_lifetime must be at least 10s (tokens are renewed at 80 % of it)",
            );
        }
        if self.proxy.is_some() && self.transport != Transport::AmqpWebsockets {
            return problem(
                "`proxy` needs transport = \"amqp_websockets\": proxies let HTTPS (port 443) out, \
                 not AMQP's port 5671 (the official SDKs have the same rule)",
            );
        }
        let host = match &self.connection_string {
            SourceConnectionString::EventHubs(connection_string) => {
                self.event_hub_name()?;
                connection_string.host.as_str()
            }
            SourceConnectionString::IotHub(hub) => {
                if self.event_hub.is_some() {
                    return problem(
                        "`event_hub` cannot be set with an IoT Hub connection string: the hub's \
                         redirect names its Event Hubs-compatible endpoint",
                    );
                }
                hub.host_name.as_str()
            }
        };
        self.proxy_for(host).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: &str = "Endpoint=sb://127.0.0.1:5673;SharedAccessKeyName=k;SharedAccessKey=s3cr3t;EntityPath=hub;UseDevelopmentEmulator=true";

    #[test]
    fn parses_toml_with_defaults_and_masks_the_key() {
        let config: SourceConfig = toml::from_str(&format!(
            "connection_string = \"{CS}\"\nstart = {{ sequence_number = 5 }}\n\
             partition_start = {{ \"1\" = \"latest\" }}\nbatch_linger = \"50ms\""
        ))
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.event_hub_name().unwrap(), "hub");
        assert_eq!(config.prefetch, 300);
        assert_eq!(config.owner_level, Some(0));
        assert_eq!(config.batch_linger, Duration::from_millis(50));
        assert_eq!(config.start_of("0"), &StartPosition::SequenceNumber(5));
        assert_eq!(config.start_of("1"), &StartPosition::Latest);
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn start_positions_map_to_sdk_filters() {
        let time = DateTime::parse_from_rfc3339("2023-11-14T22:13:20Z")
            .unwrap()
            .to_utc();
        let cases = [
            (
                StartPosition::Earliest,
                "amqp.annotation.x-opt-offset > '-1'",
            ),
            (
                StartPosition::Latest,
                "amqp.annotation.x-opt-offset > '@latest'",
            ),
            (
                StartPosition::Offset("12".into()),
                "amqp.annotation.x-opt-offset >= '12'",
            ),
            (
                StartPosition::SequenceNumber(7),
                "amqp.annotation.x-opt-sequence-number >= '7'",
            ),
            (
                StartPosition::EnqueuedTime(time),
                "amqp.annotation.x-opt-enqueued-time > '1700000000000'",
            ),
        ];
        for (start, filter) in cases {
            assert_eq!(
                start.event_position().to_filter_expression(),
                filter,
                "{start:?}"
            );
        }
    }

    #[test]
    fn rejects_bad_configurations_with_the_reason() {
        let no_hub = CS.replace(";EntityPath=hub", "");
        let cases = [
            (
                format!("connection_string = \"{no_hub}\""),
                "no event hub name",
            ),
            (
                format!("connection_string = \"{CS}\"\nprefetch = 0"),
                "prefetch",
            ),
            (
                format!("connection_string = \"{CS}\"\nmax_buffered_bytes = 65536"),
                "max_buffered_bytes must be at least 1 MiB",
            ),
            (
                format!("connection_string = \"{CS}\"\nbogus = 1"),
                "unknown field `bogus`",
            ),
            (
                "connection_string = \"Endpoint=x\"".to_owned(),
                "invalid Event Hubs connection string",
            ),
        ];
        for (text, expected) in cases {
            let error = match toml::from_str::<SourceConfig>(&text) {
                Ok(config) => config.validate().unwrap_err().to_string(),
                Err(error) => error.to_string(),
            };
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
