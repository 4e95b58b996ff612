//! The engine's one TOML configuration file: source, checkpoints, endpoints, routes, fallback,
//! enrichments and device twins, validated the way IoT Hub validates a hub's routing settings.
//!
//! Parsing is serde with `deny_unknown_fields` everywhere, so a typo is an error with a line and
//! column rather than a silently ignored key. Route conditions are kept as [`Spanned`] strings so
//! that a condition that does not compile is reported at its position in the file. Every default
//! lives in `defaults`; every limit in `limits` (IoT Hub's, or higher where noted).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::net::SocketAddr;

use hubroute_protocol::IotHubConnectionString;
use hubroute_protocol::iothub::message_source;
use hubroute_sinks::{DeadLetterConfig, ObjectStoreConfig, SinkConfig};
use serde::Deserialize;
use toml::Spanned;

use crate::source::SourceConfig;
use crate::{Error, Result};

/// Limits on a routing configuration. IoT Hub's values, except where a comment says otherwise.
pub(crate) mod limits {
    /// Routes per hub (IoT Hub: 100).
    pub(crate) const MAX_ROUTES: usize = 100;
    /// Custom endpoints per hub (IoT Hub: 10 per endpoint type; we allow 10 of any type each, 40).
    pub(crate) const MAX_ENDPOINTS: usize = 40;
    /// Enrichments per hub (IoT Hub: 10, S1 and higher).
    pub(crate) const MAX_ENRICHMENTS: usize = 10;
    /// Characters in a route condition (IoT Hub: 1024).
    pub(crate) const MAX_CONDITION_CHARS: usize = 1024;
    /// Characters in an enrichment key or value (IoT Hub: 128 / 512).
    pub(crate) const MAX_ENRICHMENT_KEY_CHARS: usize = 128;
    /// Characters in an enrichment value (IoT Hub: 512).
    pub(crate) const MAX_ENRICHMENT_VALUE_CHARS: usize = 512;
}

/// Default values of optional fields, in one place.
mod defaults {
    use std::path::PathBuf;
    use std::time::Duration;

    use toml::Spanned;

    pub(super) fn hub_name() -> String {
        "hub".to_owned()
    }
    pub(super) fn checkpoint_dir() -> PathBuf {
        PathBuf::from("checkpoints")
    }
    pub(super) fn checkpoint_interval() -> Duration {
        Duration::from_secs(5)
    }
    /// The Python and Java processors' load-balancing interval.
    pub(super) fn load_balancing_interval() -> Duration {
        Duration::from_secs(10)
    }
    /// Six load-balancing intervals, as the Python processor's default.
    pub(super) fn ownership_expiry() -> Duration {
        Duration::from_secs(60)
    }
    pub(super) fn queue_capacity() -> usize {
        16
    }
    pub(super) fn condition() -> Spanned<String> {
        Spanned::new(0..0, "true".to_owned())
    }
    pub(super) fn enabled() -> bool {
        true
    }
    pub(super) fn listen() -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 9464))
    }
    pub(super) fn drain_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn stall_after() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn dead_after() -> Duration {
        Duration::from_secs(3600)
    }
    pub(super) fn lag_interval() -> Duration {
        Duration::from_secs(10)
    }
    /// IoT Hub documents that twin updates take up to five minutes to show in routing.
    pub(super) fn twin_refresh() -> Duration {
        Duration::from_secs(300)
    }
    pub(super) fn twin_snapshot_interval() -> Duration {
        Duration::from_secs(60)
    }
    /// The twin query's page size the service documentation names as the most it returns.
    pub(super) fn twin_page_size() -> u32 {
        1000
    }
    pub(super) fn twin_request_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn twin_max_backoff() -> Duration {
        Duration::from_secs(60)
    }
}

/// Endpoint names IoT Hub reserves: `events` is the built-in endpoint, `fileNotifications` and
/// `$default` are taken by the service.
const RESERVED_ENDPOINT_NAMES: [&str; 4] = [
    "events",
    "fileNotifications",
    "$default",
    "operationsMonitoringEvents",
];

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// The IoT hub name, the value of the `$iothubname` enrichment (default `hub`).
    #[serde(default = "defaults::hub_name")]
    pub(crate) hub_name: String,
    /// Where events are read from (see [`SourceConfig`]).
    pub(crate) source: SourceConfig,
    /// Where checkpoints are stored and how often they are written.
    #[serde(default)]
    pub(crate) checkpoint: CheckpointConfig,
    /// Custom endpoints, each a sink.
    #[serde(default)]
    pub(crate) endpoints: Vec<EndpointConfig>,
    /// Routes, evaluated in no particular order: a message goes to every matching route's endpoint.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The fallback route, for device messages that matched no route.
    #[serde(default)]
    pub fallback: Option<FallbackConfig>,
    /// Message enrichments, applied per endpoint after routing.
    #[serde(default)]
    pub enrichments: Vec<EnrichmentConfig>,
    /// Where permanently failed messages are kept (default: JSONL under `hubroute-data/dead-letters`).
    #[serde(default)]
    pub(crate) dead_letters: DeadLetterConfig,
    /// The HTTP server of `/metrics`, `/healthz` and `/routes`, and shutdown and health timing.
    #[serde(default)]
    pub(crate) service: ServiceConfig,
    /// Device and module twins for `$twin` conditions and enrichments; without this section every
    /// `$twin` path is `undefined`, as on an IoT hub without twins.
    #[serde(default)]
    pub twins: Option<TwinsConfig>,
}

impl EngineConfig {
    /// Routes, the fallback and enrichments that read `$twin`, described for a warning: without a
    /// `[twins]` section they see `undefined` (enrichments their literal) for every message.
    pub fn twin_readers(&self) -> Vec<String> {
        let reads_twin = |text: &str| text.to_ascii_lowercase().contains("$twin");
        let mut readers: Vec<String> = self
            .routes
            .iter()
            .filter(|r| reads_twin(r.condition.get_ref()))
            .map(|r| format!("route `{}`", r.name))
            .collect();
        if self
            .fallback
            .as_ref()
            .is_some_and(|f| reads_twin(f.condition.get_ref()))
        {
            readers.push("the fallback route".to_owned());
        }
        readers.extend(
            self.enrichments
                .iter()
                .filter(|e| reads_twin(&e.value))
                .map(|e| format!("enrichment `{}`", e.key)),
        );
        readers
    }
}

fn iothub_connection_string<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<IotHubConnectionString, D::Error> {
    let text = String::deserialize(deserializer)?;
    let parsed = IotHubConnectionString::parse(&text).map_err(serde::de::Error::custom)?;
    if parsed.policy.is_none() {
        return Err(serde::de::Error::custom(
            "service_connection_string must be a service connection string \
             (HostName=…;SharedAccessKeyName=…;SharedAccessKey=…) of a policy with ServiceConnect, \
             such as `service` or `iothubowner`, not a device connection string",
        ));
    }
    Ok(parsed)
}

/// Where the engine gets device and module twins, and how it keeps them current.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwinsConfig {
    /// IoT Hub service connection string of a policy with ServiceConnect (`service` or
    /// `iothubowner`), e.g. `${IOTHUB_SERVICE_CONNECTION_STRING}`. A secret: never logged.
    #[serde(deserialize_with = "iothub_connection_string")]
    pub(crate) service_connection_string: IotHubConnectionString,
    /// How often every twin is queried again (default 5 min, IoT Hub's documented routing lag).
    /// Twin change and lifecycle events in the stream update twins in between.
    #[serde(default = "defaults::twin_refresh", with = "humantime_serde")]
    pub(crate) refresh: Duration,
    /// Load module twins too (`SELECT * FROM devices.modules`; default true): a module's messages
    /// see its module twin.
    #[serde(default = "defaults::enabled")]
    pub(crate) modules: bool,
    /// Route without twins while the service API is unreachable at start, with a warning and the
    /// `hubroute_twins_loaded` metric at 0 (default false: routing waits, because routing without
    /// twins gives wrong answers).
    #[serde(default)]
    pub(crate) start_without_twins: bool,
    /// Persist the twins beside the checkpoints so that a restart resumes without a full query
    /// (default true).
    #[serde(default = "defaults::enabled")]
    pub(crate) snapshot: bool,
    /// How often a changed twin store is written to its snapshot (default 1 min); it is also
    /// written at shutdown.
    #[serde(default = "defaults::twin_snapshot_interval", with = "humantime_serde")]
    pub(crate) snapshot_interval: Duration,
    /// How `updateTwin` change events are read (default `patch`). Microsoft's documentation says
    /// such an event carries the changed parts of the twin, applied as a JSON merge patch; an
    /// observation of the live service says a tag or desired-property change carries the whole
    /// `tags` and `properties.desired` sections. With `sections`, a `tags` or `properties.desired`
    /// object in an event replaces the stored one, so a removed tag is gone at once; with `patch`,
    /// a key the event leaves out is kept until the next full query (`refresh`).
    #[serde(default)]
    pub(crate) update_events: TwinUpdateEvents,
    /// Twins asked for per query page (`x-ms-max-item-count`, default 1000).
    #[serde(default = "defaults::twin_page_size")]
    pub(crate) page_size: u32,
    /// Timeout of one request to the service API (default 30 s).
    #[serde(default = "defaults::twin_request_timeout", with = "humantime_serde")]
    pub(crate) request_timeout: Duration,
    /// Cap of the exponential backoff between attempts while the service API fails (default 60 s).
    #[serde(default = "defaults::twin_max_backoff", with = "humantime_serde")]
    pub(crate) max_backoff: Duration,
    /// A PEM file of CA certificates to trust besides the public web roots: a private CA, a proxy,
    /// or the certificate given to `hubroute emulator --tls-cert`.
    #[serde(default)]
    pub(crate) tls_ca_file: Option<PathBuf>,
}

/// How the body of an `updateTwin` change event is applied to the stored twin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TwinUpdateEvents {
    /// Every section the event carries is merged into the stored one (RFC 7396: `null` removes a
    /// key, a key left out is kept).
    #[default]
    Patch,
    /// `tags` and `properties.desired` replace the stored sections; `properties.reported` is
    /// merged.
    Sections,
}

/// How the running service is observed and stopped.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceConfig {
    /// Address of the HTTP server (default `127.0.0.1:9464`, Prometheus' customary exporter port;
    /// port 0 picks a free one).
    #[serde(default = "defaults::listen")]
    pub(crate) listen: SocketAddr,
    /// How long a graceful shutdown waits for in-flight batches to commit (default 30 s).
    #[serde(default = "defaults::drain_timeout", with = "humantime_serde")]
    pub(crate) drain_timeout: Duration,
    /// An endpoint with a batch uncommitted for this long is unhealthy (default 30 s).
    #[serde(default = "defaults::stall_after", with = "humantime_serde")]
    pub(crate) stall_after: Duration,
    /// An endpoint failing continuously for this long is dead (default 1 h, IoT Hub's retry period).
    #[serde(default = "defaults::dead_after", with = "humantime_serde")]
    pub(crate) dead_after: Duration,
    /// How often each partition's last enqueued sequence number is read from `$management` for
    /// the `hubroute_partition_lag_events` metric (default 10 s).
    #[serde(default = "defaults::lag_interval", with = "humantime_serde")]
    pub(crate) lag_interval: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            listen: defaults::listen(),
            drain_timeout: defaults::drain_timeout(),
            stall_after: defaults::stall_after(),
            dead_after: defaults::dead_after(),
            lag_interval: defaults::lag_interval(),
        }
    }
}

/// Checkpoint storage and, with a shared store, partition ownership among several instances.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Directory of the file checkpoint store when `store` is not set (default `checkpoints`); the
    /// twin snapshot is kept here in every case.
    #[serde(default = "defaults::checkpoint_dir")]
    pub dir: PathBuf,
    /// How often advanced checkpoints are written (default 5 s); they are also written on shutdown.
    #[serde(default = "defaults::checkpoint_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// The checkpoint store, with the sinks' object store settings. `azure` or `s3` keep checkpoints
    /// and partition ownership as blobs in the official SDKs' layout, so several instances (and the
    /// official event processors) share the partitions; `local` keeps checkpoint files under its
    /// `root`, for one instance, as `dir` does. Default: files under `dir`.
    #[serde(default)]
    pub store: Option<ObjectStoreConfig>,
    /// How often ownership is renewed and partitions are balanced among instances (default 10 s).
    #[serde(
        default = "defaults::load_balancing_interval",
        with = "humantime_serde"
    )]
    pub load_balancing_interval: Duration,
    /// A claim not renewed for this long is expired and other instances take its partition
    /// (default 60 s); more than `load_balancing_interval`, or partitions would migrate all the time.
    #[serde(default = "defaults::ownership_expiry", with = "humantime_serde")]
    pub ownership_expiry: Duration,
    /// How many partitions a balancing cycle claims (default `greedy`, as the Python processor).
    #[serde(default)]
    pub strategy: BalancingStrategy,
    /// The name this instance claims partitions under (default: a fresh UUID per process). A
    /// stable id lets a restarted instance take its own partitions back without waiting for them to
    /// expire; two running instances must never share one.
    #[serde(default)]
    pub owner_id: Option<String>,
}

impl CheckpointConfig {
    /// Whether checkpoints live in a store several instances share (Azure Blob or S3), which turns
    /// on partition ownership and load balancing.
    pub fn is_shared(&self) -> bool {
        matches!(
            self.store,
            Some(ObjectStoreConfig::Azure { .. } | ObjectStoreConfig::S3 { .. })
        )
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            dir: defaults::checkpoint_dir(),
            interval: defaults::checkpoint_interval(),
            store: None,
            load_balancing_interval: defaults::load_balancing_interval(),
            ownership_expiry: defaults::ownership_expiry(),
            strategy: BalancingStrategy::default(),
            owner_id: None,
        }
    }
}

/// How many unowned or expired partitions one load-balancing cycle claims (reference §5.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancingStrategy {
    /// Claim every claimable partition up to the fair share at once: fastest start and failover,
    /// the Python processor's default.
    #[default]
    Greedy,
    /// Claim one partition per cycle: instances joining together settle with fewer conflicting
    /// claims, .NET's default.
    Balanced,
}

/// What the router does when an endpoint's queue is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FullPolicy {
    /// Wait for room: backpressure reaches the source and AMQP credit stops (no loss; a stalled
    /// endpoint stalls every endpoint of the partition, as in IoT Hub).
    #[default]
    Block,
    /// Dead-letter the rows that do not fit, so other endpoints keep flowing (no loss, but the rows
    /// must be replayed from the dead-letter store).
    DeadLetter,
}

/// One custom endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EndpointConfig {
    /// Batches that may wait for this endpoint's sink; bounds memory per endpoint (default 16).
    #[serde(default = "defaults::queue_capacity")]
    pub(crate) queue_capacity: usize,
    /// What to do when the queue is full (default `block`).
    #[serde(default)]
    pub(crate) full_policy: FullPolicy,
    /// The sink; its `name` is the endpoint name routes refer to.
    pub(crate) sink: SinkConfig,
}

impl EndpointConfig {
    /// The endpoint name.
    pub(crate) fn name(&self) -> &str {
        self.sink.name()
    }
}

/// The kind of event a route reads, as IoT Hub names its data sources (ARM `RoutingSource`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum RouteSource {
    /// Device-to-cloud telemetry (`iothub-message-source: Telemetry`).
    #[default]
    DeviceMessages,
    /// Twin change notifications (`twinChangeEvents`).
    TwinChangeEvents,
    /// Device and module created/deleted (`deviceLifecycleEvents`; `moduleLifecycleEvents` in an
    /// older documentation revision is accepted too).
    DeviceLifecycleEvents,
    /// Device connected/disconnected (`deviceConnectionStateEvents`).
    DeviceConnectionStateEvents,
    /// Job lifecycle (undocumented value; `deviceJobLifecycleEvents` by IoT Hub's naming rule, and
    /// `jobLifecycleEvents` are accepted).
    DeviceJobLifecycleEvents,
    /// IoT Plug and Play digital twin changes (`digitalTwinChangeEvents`, JSON Patch bodies).
    DigitalTwinChangeEvents,
}

impl RouteSource {
    /// Every route source, in ARM's order.
    pub(crate) const ALL: [Self; 6] = [
        Self::DeviceMessages,
        Self::TwinChangeEvents,
        Self::DeviceLifecycleEvents,
        Self::DeviceJobLifecycleEvents,
        Self::DigitalTwinChangeEvents,
        Self::DeviceConnectionStateEvents,
    ];

    /// The `iothub-message-source` value IoT Hub stamps on messages from this source.
    pub(crate) fn message_source(self) -> &'static str {
        self.message_sources()[0]
    }

    /// Every `iothub-message-source` value that belongs to this source, the stamped one first.
    pub(crate) fn message_sources(self) -> &'static [&'static str] {
        match self {
            Self::DeviceMessages => &[message_source::TELEMETRY],
            Self::TwinChangeEvents => &[message_source::TWIN_CHANGE_EVENTS],
            Self::DeviceLifecycleEvents => &[
                message_source::DEVICE_LIFECYCLE_EVENTS,
                message_source::MODULE_LIFECYCLE_EVENTS,
            ],
            Self::DeviceConnectionStateEvents => &[message_source::DEVICE_CONNECTION_STATE_EVENTS],
            Self::DeviceJobLifecycleEvents => &[
                message_source::DEVICE_JOB_LIFECYCLE_EVENTS,
                message_source::JOB_LIFECYCLE_EVENTS,
            ],
            Self::DigitalTwinChangeEvents => &[message_source::DIGITAL_TWIN_CHANGE_EVENTS],
        }
    }

    /// The source of a message whose `iothub-message-source` is `value` (`None`, as for events
    /// not stamped by IoT Hub, counts as device messages); `None` for a value of no route source.
    pub(crate) fn of_message(value: Option<&str>) -> Option<Self> {
        let Some(value) = value else {
            return Some(Self::DeviceMessages);
        };
        Self::ALL
            .into_iter()
            .find(|source| source.message_sources().contains(&value))
    }
}

/// One route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Route name, unique, `^[A-Za-z0-9-._]{1,64}$`.
    pub name: String,
    /// Which messages the route sees (default `DeviceMessages`).
    #[serde(default)]
    pub source: RouteSource,
    /// IoT Hub routing query (default `true`).
    #[serde(default = "defaults::condition")]
    pub condition: Spanned<String>,
    /// The one endpoint matching messages go to.
    pub(crate) endpoint: String,
    /// Disabled routes are kept but never match (default true).
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
}

/// The fallback route: device messages that matched no route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// Whether the fallback route is active (default true).
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
    /// Condition on top of "matched no route" (default `true`).
    #[serde(default = "defaults::condition")]
    pub(crate) condition: Spanned<String>,
    /// Where unmatched messages go.
    pub(crate) endpoint: String,
}

/// One message enrichment: an application property added to messages sent to `endpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichmentConfig {
    /// Application property name.
    pub(crate) key: String,
    /// A static string, `$iothubname`, or `$twin.<path>` (resolved from the message's twin, else
    /// the literal string, as IoT Hub does).
    pub(crate) value: String,
    /// Endpoints whose messages get the property.
    pub(crate) endpoints: Vec<String>,
}

/// A loaded configuration and the text it came from, for positions in later errors.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The parsed configuration.
    pub config: EngineConfig,
    /// The file it was read from.
    pub(crate) path: PathBuf,
    /// The file's text.
    pub(crate) text: String,
}

impl LoadedConfig {
    /// Reads, parses and validates `path` (everything except compiling conditions, see
    /// [`crate::routing::RoutingTable::compile`]).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            problem: format!("cannot read the file: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text` as if read from `path`, after replacing every `${NAME}` with the
    /// environment variable `NAME` (how secrets stay out of the file).
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let text = expand_environment(path, text)?;
        let config: EngineConfig = toml::from_str(&text).map_err(|e| {
            let start = e.span().map_or(0, |s| s.start);
            position_error(path, &text, start, e.message().to_owned())
        })?;
        let loaded = Self {
            config,
            path: path.to_owned(),
            text,
        };
        loaded.validate()?;
        Ok(loaded)
    }

    /// An error at byte `offset` of the file.
    pub(crate) fn error_at(&self, offset: usize, problem: String) -> Error {
        position_error(&self.path, &self.text, offset, problem)
    }

    fn validate(&self) -> Result<()> {
        let c = &self.config;
        let whole = |problem: String| self.error_at(0, problem);
        c.source
            .validate()
            .map_err(|error| whole(error.to_string()))?;
        let checkpoint = &c.checkpoint;
        if checkpoint.ownership_expiry <= checkpoint.load_balancing_interval {
            return Err(whole(format!(
                "[checkpoint] ownership_expiry ({:?}) must be longer than load_balancing_interval ({:?}), \
                 or claims expire before they are renewed; the default is six intervals",
                checkpoint.ownership_expiry, checkpoint.load_balancing_interval
            )));
        }
        if checkpoint.owner_id.as_deref().is_some_and(str::is_empty) {
            return Err(whole(
                "[checkpoint] owner_id is empty, which the official processors read as a released \
                 partition; remove it for a fresh id per process"
                    .to_owned(),
            ));
        }
        if c.routes.len() > limits::MAX_ROUTES {
            return Err(whole(format!(
                "{} routes; the limit is {}",
                c.routes.len(),
                limits::MAX_ROUTES
            )));
        }
        if c.endpoints.len() > limits::MAX_ENDPOINTS {
            return Err(whole(format!(
                "{} endpoints; the limit is {}",
                c.endpoints.len(),
                limits::MAX_ENDPOINTS
            )));
        }
        if c.enrichments.len() > limits::MAX_ENRICHMENTS {
            return Err(whole(format!(
                "{} enrichments; the limit is {}",
                c.enrichments.len(),
                limits::MAX_ENRICHMENTS
            )));
        }
        let mut endpoints = HashSet::new();
        for endpoint in &c.endpoints {
            let name = endpoint.name();
            check_name("endpoint", name).map_err(&whole)?;
            if RESERVED_ENDPOINT_NAMES
                .iter()
                .any(|r| r.eq_ignore_ascii_case(name))
            {
                return Err(whole(format!(
                    "endpoint name `{name}` is reserved by IoT Hub; pick another"
                )));
            }
            if !endpoints.insert(name) {
                return Err(whole(format!(
                    "two endpoints are named `{name}`; endpoint names must be unique"
                )));
            }
            if endpoint.queue_capacity == 0 {
                return Err(whole(format!(
                    "endpoint `{name}`: queue_capacity must be at least 1"
                )));
            }
            endpoint
                .sink
                .validate()
                .map_err(|error| whole(error.to_string()))?;
        }
        let known = |endpoint: &str, user: &str| {
            if endpoints.contains(endpoint) {
                Ok(())
            } else {
                Err(whole(format!(
                    "{user} refers to endpoint `{endpoint}`, which is not defined; add an [[endpoints]] \
                     entry whose sink name is `{endpoint}` (defined: {})",
                    sorted(&endpoints)
                )))
            }
        };
        let mut routes = HashSet::new();
        for route in &c.routes {
            check_name("route", &route.name).map_err(&whole)?;
            if !routes.insert(route.name.as_str()) {
                return Err(whole(format!(
                    "two routes are named `{}`; route names must be unique",
                    route.name
                )));
            }
            known(&route.endpoint, &format!("route `{}`", route.name))?;
            self.check_condition(&route.condition)?;
        }
        if let Some(fallback) = &c.fallback {
            known(&fallback.endpoint, "the fallback route")?;
            self.check_condition(&fallback.condition)?;
        }
        if let Some(twins) = &c.twins {
            if twins.refresh < Duration::from_secs(1) {
                return Err(whole(
                    "twins.refresh must be at least 1s (IoT Hub allows 20 twin queries a minute per unit)"
                        .to_owned(),
                ));
            }
            if twins.page_size == 0 {
                return Err(whole("twins.page_size must be at least 1".to_owned()));
            }
        }
        let mut keys = HashSet::new();
        for enrichment in &c.enrichments {
            let key = enrichment.key.as_str();
            if key.is_empty() || key.chars().count() > limits::MAX_ENRICHMENT_KEY_CHARS {
                return Err(whole(format!(
                    "enrichment key `{key}` must have 1 to {} characters",
                    limits::MAX_ENRICHMENT_KEY_CHARS
                )));
            }
            if enrichment.value.chars().count() > limits::MAX_ENRICHMENT_VALUE_CHARS {
                return Err(whole(format!(
                    "enrichment `{key}`: the value exceeds {} characters",
                    limits::MAX_ENRICHMENT_VALUE_CHARS
                )));
            }
            if !keys.insert(key) {
                return Err(whole(format!(
                    "two enrichments have the key `{key}`; keys must be unique"
                )));
            }
            if enrichment.endpoints.is_empty() {
                return Err(whole(format!("enrichment `{key}` names no endpoints")));
            }
            for endpoint in &enrichment.endpoints {
                known(endpoint, &format!("enrichment `{key}`"))?;
            }
        }
        Ok(())
    }

    fn check_condition(&self, condition: &Spanned<String>) -> Result<()> {
        let chars = condition.get_ref().chars().count();
        if chars > limits::MAX_CONDITION_CHARS {
            return Err(self.error_at(
                condition.span().start,
                format!(
                    "the condition has {chars} characters; the limit is {}",
                    limits::MAX_CONDITION_CHARS
                ),
            ));
        }
        Ok(())
    }
}

/// Replaces `${NAME}` with the value of the environment variable `NAME`; an unset variable is an
/// error at its position. Comments are left alone. Values may hold secrets: they are never echoed
/// in errors.
fn expand_environment(path: &Path, text: &str) -> Result<String> {
    let mut expanded = String::with_capacity(text.len());
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let code = &line[..comment_start(line)];
        let mut rest = code;
        while let Some(start) = rest.find("${") {
            expanded.push_str(&rest[..start]);
            let offset = line_start + (code.len() - rest.len()) + start;
            let after = &rest[start + 2..];
            let at = |problem: String| position_error(path, text, offset, problem);
            let name_len =
                after.find('}').ok_or_else(|| {
                    at("`${` opens an environment variable reference that is never closed with `}`"
                    .to_owned())
                })?;
            let name = &after[..name_len];
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(at(format!(
                    "`${{{name}}}` is not a valid environment variable name"
                )));
            }
            let value = std::env::var(name).map_err(|_| {
                at(format!(
                    "environment variable `{name}` is not set; export it or write the value in the file"
                ))
            })?;
            expanded.push_str(&value);
            rest = &after[name_len + 1..];
        }
        expanded.push_str(rest);
        expanded.push_str(&line[code.len()..]);
        line_start += line.len();
    }
    Ok(expanded)
}

/// Byte index where the comment of a TOML line starts (its length if none): the first `#` outside
/// a basic (`"…"`) or literal (`'…'`) string.
fn comment_start(line: &str) -> usize {
    let mut quote = None;
    let mut escaped = false;
    for (index, c) in line.char_indices() {
        match (quote, c) {
            (Some('"'), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(open), c) if c == open && !escaped => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') => return index,
            _ => {}
        }
        escaped = false;
    }
    line.len()
}

fn sorted(names: &HashSet<&str>) -> String {
    let mut names: Vec<_> = names.iter().copied().collect();
    names.sort_unstable();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// IoT Hub's rule for route and endpoint names: `^[A-Za-z0-9-._]{1,64}$`.
fn check_name(kind: &str, name: &str) -> std::result::Result<(), String> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{kind} name `{name}` is invalid: use 1 to 64 letters, digits, `-`, `.` or `_`"
        ))
    }
}

/// Converts a byte offset of `text` to a 1-based line and column.
fn position_error(path: &Path, text: &str, offset: usize, problem: String) -> Error {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Error::Config {
        file: path.display().to_string(),
        line,
        column,
        problem,
    }
}

#[cfg(test)]
mod tests;
