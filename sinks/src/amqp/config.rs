//! Configuration of the AMQP publishing sinks, `type = "eventhubs"` and `type = "servicebus"`, and
//! its resolution into the one [`Target`] the shared publisher works from.
//!
//! Both sinks are the same publisher with different defaults, so their options share names and
//! meanings; only how they authenticate and where IoT Hub puts system properties differ. Connection
//! strings are parsed when the file is loaded (a typo fails `hubroute check`, not the first send),
//! and [`EventHubsSinkConfig::validate`] / [`ServiceBusSinkConfig::validate`] check everything else
//! without connecting.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use hubroute_protocol::ConnectionString;
use serde::{Deserialize, Deserializer};

use crate::{Error, Result, RetryPolicy, Secret};

/// Which value becomes an event's partition key (`x-opt-partition-key`).
///
/// In TOML a string: `"none"`, `"device_id"` or `"app:<application property>"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PartitionKey {
    /// No key: the service spreads deliveries over partitions (highest throughput, no order).
    None,
    /// `iothub-connection-device-id`, as IoT Hub partitions its built-in endpoint: every message of
    /// a device lands in one partition, in order. Messages without a device id go without a key.
    #[default]
    DeviceId,
    /// The value of this application property (or enrichment); absent means no key.
    AppProperty(String),
}

impl<'de> Deserialize<'de> for PartitionKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "none" => Ok(Self::None),
            "device_id" => Ok(Self::DeviceId),
            other => match other.strip_prefix("app:") {
                Some(name) if !name.is_empty() => Ok(Self::AppProperty(name.to_owned())),
                _ => Err(serde::de::Error::custom(format!(
                    "partition_key `{other}` is not \"none\", \"device_id\" or \"app:<property>\""
                ))),
            },
        }
    }
}

/// Where IoT Hub's `iothub-*` and `dt-*` system properties go on the published message. `message-id`,
/// `user-id`, `correlation-id`, `content-type` and `content-encoding` are always AMQP properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemPropertyPlacement {
    /// Message annotations, as on IoT Hub's built-in endpoint (SDKs show them as system properties).
    MessageAnnotations,
    /// Application properties, as users report for IoT Hub's Service Bus endpoints.
    ApplicationProperties,
}

/// Parses a connection string, reading it from the environment when written `${NAME}`.
fn connection_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<ConnectionString, D::Error> {
    let secret = Secret::deserialize(deserializer)?;
    ConnectionString::parse(secret.expose()).map_err(serde::de::Error::custom)
}

fn optional_connection_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<ConnectionString>, D::Error> {
    connection_string(deserializer).map(Some)
}

/// An event hub receiving routed messages, as IoT Hub's Event Hubs endpoint.
///
/// ```toml
/// type = "eventhubs"
/// name = "downstream"
/// connection_string = "${DOWNSTREAM_EVENT_HUB}"
/// event_hub = "telemetry"
/// partition_key = "device_id"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventHubsSinkConfig {
    /// The endpoint name.
    pub name: String,
    /// Event Hubs connection string with `SharedAccessKeyName`/`SharedAccessKey` or
    /// `SharedAccessSignature`; `UseDevelopmentEmulator=true` targets `hubroute emulator` (plain
    /// AMQP). A secret: never logged.
    #[serde(deserialize_with = "connection_string")]
    pub connection_string: ConnectionString,
    /// The event hub; default the connection string's `EntityPath`.
    #[serde(default)]
    pub event_hub: Option<String>,
    /// Partition key of each event (default `device_id`).
    #[serde(default)]
    pub partition_key: PartitionKey,
    /// Where `iothub-*` system properties go (default `message_annotations`, as the built-in
    /// endpoint).
    #[serde(default = "placement_annotations")]
    pub system_properties: SystemPropertyPlacement,
    /// Largest delivery in bytes and the size batches are packed to, within the link's
    /// `max-message-size` (1 MiB on Event Hubs Standard). Unset: batches are packed to 255 KiB
    /// (one AMQP frame) and a single larger message may use the link's whole limit.
    #[serde(default)]
    pub max_message_size: Option<u64>,
    /// Deliveries sent and not yet settled; `write` waits when all are in flight (default 8).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How long a delivery may stay unsettled before the connection is considered lost and
    /// everything unsettled is sent again (default 60 s, the SDKs' try timeout).
    #[serde(default = "default_send_timeout", with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Lifetime of SAS tokens signed from the key; renewed at 80 % of it (default 1 h).
    #[serde(default = "default_token_lifetime", with = "humantime_serde")]
    pub token_lifetime: Duration,
    /// A PEM file of CA certificates to trust for `amqps` besides the public web roots.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Backoff of reconnects and of retried deliveries.
    #[serde(default)]
    pub retry: RetryPolicy,
}

/// A Service Bus queue or topic (as IoT Hub's Service Bus endpoints), or any AMQP 1.0 queue.
///
/// ```toml
/// # Azure Service Bus: SAS through CBS
/// type = "servicebus"
/// name = "alerts"
/// connection_string = "${ALERTS_SERVICE_BUS}"
/// entity = "alerts"
///
/// # A plain AMQP 1.0 broker: SASL PLAIN
/// type = "servicebus"
/// name = "rabbit"
/// url = "amqp://broker.internal:5672"
/// username = "hubroute"
/// password = "${BROKER_PASSWORD}"
/// entity = "/amq/queue/alerts"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceBusSinkConfig {
    /// The endpoint name.
    pub name: String,
    /// Service Bus connection string (SAS through CBS). Give this or `url`. A secret.
    #[serde(default, deserialize_with = "optional_connection_string")]
    pub connection_string: Option<ConnectionString>,
    /// `amqp://host[:port]` or `amqps://host[:port]` of a plain AMQP 1.0 broker. Give this or
    /// `connection_string`.
    #[serde(default)]
    pub url: Option<String>,
    /// SASL PLAIN user name with `url`; without one the connection uses SASL ANONYMOUS.
    #[serde(default)]
    pub username: Option<String>,
    /// SASL PLAIN password with `url`. A secret: write `"${NAME}"`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// The queue or topic (for a broker: the target address); default the connection string's
    /// `EntityPath`.
    #[serde(default)]
    pub entity: Option<String>,
    /// Send many messages per delivery in the AMQP batch format (message format `0x80013700`), as
    /// the Service Bus SDKs do. Default: on with `connection_string`, off with `url` (a plain
    /// broker would store the batch as one message).
    #[serde(default)]
    pub batch: Option<bool>,
    /// Partition key of each message, for partitioned entities (default `device_id`).
    #[serde(default)]
    pub partition_key: PartitionKey,
    /// Send the message's `user-id` property (IoT Hub's `UserId`, usually the hub name). Default:
    /// on with `connection_string`, off with `url`: brokers such as RabbitMQ refuse a `user-id`
    /// that differs from the user name the connection logged in with.
    #[serde(default)]
    pub send_user_id: Option<bool>,
    /// Where `iothub-*` system properties go (default `application_properties`, as users report
    /// for IoT Hub's Service Bus endpoints).
    #[serde(default = "placement_application_properties")]
    pub system_properties: SystemPropertyPlacement,
    /// Largest delivery in bytes and the size batches are packed to, within the link's
    /// `max-message-size` (1 MiB on Event Hubs Standard). Unset: batches are packed to 255 KiB
    /// (one AMQP frame) and a single larger message may use the link's whole limit.
    #[serde(default)]
    pub max_message_size: Option<u64>,
    /// Deliveries sent and not yet settled (default 8).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How long a delivery may stay unsettled before the connection is considered lost (default 60 s).
    #[serde(default = "default_send_timeout", with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Lifetime of SAS tokens signed from the key; renewed at 80 % of it (default 1 h).
    #[serde(default = "default_token_lifetime", with = "humantime_serde")]
    pub token_lifetime: Duration,
    /// A PEM file of CA certificates to trust for `amqps` besides the public web roots.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Backoff of reconnects and of retried deliveries.
    #[serde(default)]
    pub retry: RetryPolicy,
}

fn placement_annotations() -> SystemPropertyPlacement {
    SystemPropertyPlacement::MessageAnnotations
}

fn placement_application_properties() -> SystemPropertyPlacement {
    SystemPropertyPlacement::ApplicationProperties
}

fn default_max_in_flight() -> usize {
    8
}

fn default_send_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_token_lifetime() -> Duration {
    Duration::from_secs(3600)
}

/// Shortest token lifetime accepted: renewal happens at 80 %, and a network round trip must fit.
const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(10);
/// Smallest `max_message_size` accepted: room for one small event and the batch envelope.
const MIN_MESSAGE_SIZE: u64 = 1024;

impl EventHubsSinkConfig {
    /// A configuration with every default, publishing with `connection_string`.
    pub fn new(name: impl Into<String>, connection_string: ConnectionString) -> Self {
        Self {
            name: name.into(),
            connection_string,
            event_hub: None,
            partition_key: PartitionKey::default(),
            system_properties: placement_annotations(),
            max_message_size: None,
            max_in_flight: default_max_in_flight(),
            send_timeout: default_send_timeout(),
            token_lifetime: default_token_lifetime(),
            tls_ca_file: None,
            retry: RetryPolicy::default(),
        }
    }

    /// Checks the settings without connecting.
    pub fn validate(&self) -> Result<()> {
        self.target().map(drop)
    }

    pub(crate) fn target(&self) -> Result<Target> {
        let problem = config_error(&self.name);
        let connection_string = self.connection_string.clone();
        let event_hub = self
            .event_hub
            .clone()
            .or_else(|| connection_string.entity_path.clone())
            .ok_or_else(|| {
                problem(
                    "no event hub: set `event_hub` or put `EntityPath=<event hub>` in the \
                     connection string"
                        .to_owned(),
                )
            })?;
        let common = Common {
            max_message_size: self.max_message_size,
            max_in_flight: self.max_in_flight,
            send_timeout: self.send_timeout,
            token_lifetime: self.token_lifetime,
            retry: self.retry,
        };
        common.check(&self.name)?;
        Ok(Target {
            sink: self.name.clone(),
            host: connection_string.host.clone(),
            port: connection_string.effective_port(),
            tls: connection_string.uses_tls(),
            tls_ca_file: self.tls_ca_file.clone(),
            auth: Auth::Cbs {
                audience: connection_string.audience(&event_hub),
                connection_string,
                token_lifetime: self.token_lifetime,
            },
            address: event_hub,
            batch_format: true,
            send_user_id: true,
            flavor: Flavor::EventHubs,
            partition_key: self.partition_key.clone(),
            system_properties: self.system_properties,
            common,
        })
    }
}

impl ServiceBusSinkConfig {
    /// A configuration with every default for a plain AMQP 1.0 broker at `url`, sending to `entity`.
    pub fn broker(
        name: impl Into<String>,
        url: impl Into<String>,
        entity: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            connection_string: None,
            url: Some(url.into()),
            username: None,
            password: None,
            entity: Some(entity.into()),
            batch: None,
            partition_key: PartitionKey::default(),
            send_user_id: None,
            system_properties: placement_application_properties(),
            max_message_size: None,
            max_in_flight: default_max_in_flight(),
            send_timeout: default_send_timeout(),
            token_lifetime: default_token_lifetime(),
            tls_ca_file: None,
            retry: RetryPolicy::default(),
        }
    }

    /// Checks the settings without connecting.
    pub fn validate(&self) -> Result<()> {
        self.target().map(drop)
    }

    pub(crate) fn target(&self) -> Result<Target> {
        let problem = config_error(&self.name);
        let common = Common {
            max_message_size: self.max_message_size,
            max_in_flight: self.max_in_flight,
            send_timeout: self.send_timeout,
            token_lifetime: self.token_lifetime,
            retry: self.retry,
        };
        common.check(&self.name)?;
        let (host, port, tls, auth, entity) = match (&self.connection_string, &self.url) {
            (Some(connection_string), None) => {
                if self.username.is_some() || self.password.is_some() {
                    return Err(problem(
                        "username and password go with `url` (a plain broker); a Service Bus \
                         connection string carries its own key"
                            .to_owned(),
                    ));
                }
                let entity = self
                    .entity
                    .clone()
                    .or_else(|| connection_string.entity_path.clone())
                    .ok_or_else(|| {
                        problem(
                            "no queue or topic: set `entity` or put `EntityPath=<queue>` in the \
                             connection string"
                                .to_owned(),
                        )
                    })?;
                let auth = Auth::Cbs {
                    audience: connection_string.audience(&entity),
                    connection_string: connection_string.clone(),
                    token_lifetime: self.token_lifetime,
                };
                (
                    connection_string.host.clone(),
                    connection_string.effective_port(),
                    connection_string.uses_tls(),
                    auth,
                    entity,
                )
            }
            (None, Some(url)) => {
                let (tls, host, port) = parse_broker_url(url).map_err(&problem)?;
                let auth = match (&self.username, &self.password) {
                    (Some(username), Some(password)) => Auth::Plain {
                        username: username.clone(),
                        password: password.clone(),
                    },
                    (None, None) => Auth::Anonymous,
                    _ => {
                        return Err(problem(
                            "give both `username` and `password` for SASL PLAIN, or neither"
                                .to_owned(),
                        ));
                    }
                };
                let entity = self.entity.clone().ok_or_else(|| {
                    problem(
                        "`entity` is required with `url`: the queue or address to send to, e.g. \
                         \"/amq/queue/alerts\" on RabbitMQ"
                            .to_owned(),
                    )
                })?;
                (host, port, tls, auth, entity)
            }
            (Some(_), Some(_)) => {
                return Err(problem(
                    "give either `connection_string` (Service Bus) or `url` (a plain AMQP 1.0 \
                     broker), not both"
                        .to_owned(),
                ));
            }
            (None, None) => {
                return Err(problem(
                    "give `connection_string` (Service Bus) or `url` (a plain AMQP 1.0 broker)"
                        .to_owned(),
                ));
            }
        };
        if entity.is_empty() {
            return Err(problem("`entity` is empty".to_owned()));
        }
        Ok(Target {
            sink: self.name.clone(),
            host,
            port,
            tls,
            tls_ca_file: self.tls_ca_file.clone(),
            batch_format: self.batch.unwrap_or(matches!(auth, Auth::Cbs { .. })),
            send_user_id: self
                .send_user_id
                .unwrap_or(matches!(auth, Auth::Cbs { .. })),
            auth,
            address: entity,
            flavor: Flavor::ServiceBus,
            partition_key: self.partition_key.clone(),
            system_properties: self.system_properties,
            common,
        })
    }
}

fn config_error(sink: &str) -> impl Fn(String) -> Error + '_ {
    move |problem| Error::Config {
        sink: sink.to_owned(),
        problem,
    }
}

/// `amqp[s]://host[:port][/]` → (TLS, host, port).
fn parse_broker_url(url: &str) -> Result<(bool, String, u16), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("url `{url}` must look like amqp://host[:port]"))?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "amqp" => false,
        "amqps" => true,
        other => {
            return Err(format!(
                "url scheme `{other}` is not amqp or amqps (url `{url}`)"
            ));
        }
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') || authority.contains('@') {
        return Err(format!(
            "url `{url}` must be amqp[s]://host[:port] only: put the queue in `entity` and the \
             credentials in `username` and `password`"
        ));
    }
    let default_port = if tls { 5671 } else { 5672 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            let port = port
                .parse()
                .map_err(|_| format!("url port `{port}` is not a number"))?;
            (host, port)
        }
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("url `{url}` has no host"));
    }
    Ok((tls, host.to_owned(), port))
}

/// Options every AMQP sink has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Common {
    pub(crate) max_message_size: Option<u64>,
    pub(crate) max_in_flight: usize,
    pub(crate) send_timeout: Duration,
    pub(crate) token_lifetime: Duration,
    pub(crate) retry: RetryPolicy,
}

impl Common {
    fn check(&self, sink: &str) -> Result<()> {
        let problem = config_error(sink);
        if self.max_in_flight == 0 {
            return Err(problem("max_in_flight must be at least 1".to_owned()));
        }
        if self
            .max_message_size
            .is_some_and(|size| size < MIN_MESSAGE_SIZE)
        {
            return Err(problem(format!(
                "max_message_size must be at least {MIN_MESSAGE_SIZE} bytes"
            )));
        }
        if self.send_timeout.is_zero() {
            return Err(problem("send_timeout must be positive".to_owned()));
        }
        if self.token_lifetime < MIN_TOKEN_LIFETIME {
            return Err(problem(format!(
                "token_lifetime must be at least {MIN_TOKEN_LIFETIME:?}"
            )));
        }
        Ok(())
    }
}

/// How the connection authenticates.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    /// SASL ANONYMOUS, then a SAS token on `$cbs` for `audience` (Event Hubs, Service Bus).
    Cbs {
        connection_string: ConnectionString,
        audience: String,
        token_lifetime: Duration,
    },
    /// SASL PLAIN (a plain broker).
    Plain { username: String, password: Secret },
    /// SASL ANONYMOUS and nothing else (a plain broker that allows it).
    Anonymous,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cbs { audience, .. } => write!(f, "Cbs({audience})"),
            Self::Plain { username, .. } => write!(f, "Plain({username})"),
            Self::Anonymous => f.write_str("Anonymous"),
        }
    }
}

/// Whose property mapping the published messages follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// IoT Hub's Event Hubs endpoint: `iothub-enqueuedtime` and `iothub-message-source` included.
    EventHubs,
    /// IoT Hub's Service Bus endpoint: no enqueued time, no message source.
    ServiceBus,
}

/// Everything the publisher needs, resolved from either configuration.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The endpoint name.
    pub(crate) sink: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
    pub(crate) tls_ca_file: Option<PathBuf>,
    pub(crate) auth: Auth,
    /// The sender link's target address: the event hub, queue, topic or broker address.
    pub(crate) address: String,
    /// Deliveries carry many messages in the batch format; otherwise one message each.
    pub(crate) batch_format: bool,
    /// Messages carry the row's `user-id`.
    pub(crate) send_user_id: bool,
    pub(crate) flavor: Flavor,
    pub(crate) partition_key: PartitionKey,
    pub(crate) system_properties: SystemPropertyPlacement,
    pub(crate) common: Common,
}

impl Target {
    /// How errors and logs name the destination: `amqps://host:port/address`.
    pub(crate) fn describe(&self) -> String {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let separator = if self.address.starts_with('/') {
            ""
        } else {
            "/"
        };
        format!(
            "{scheme}://{}:{}{separator}{}",
            self.host, self.port, self.address
        )
    }
}
