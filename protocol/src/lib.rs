//! The Event Hubs AMQP vocabulary shared by hubroute's source (a client) and its emulator (a server).
//!
//! Both sides must agree byte for byte on connection strings, SAS tokens, node addresses, annotation
//! keys, start-position filter expressions and error condition names, so these live in one small crate
//! with no I/O and no AMQP library dependency: values here are plain strings and numbers that each side
//! converts into its own AMQP types.
//!
//! `iothub` holds IoT Hub's service-side vocabulary (connection strings, SAS flavour, REST paths,
//! message sources). Everything follows the official Azure SDKs; `shared/reference/iothub-routing-and-eventhubs-amqp.md`
//! §4 cites the sources.

pub mod address;
pub mod connection_string;
pub mod filter;
pub mod iothub;
pub mod iothub_amqp;
pub mod sas;

pub use connection_string::ConnectionString;
pub use filter::{EventPosition, PositionKind};
pub use iothub::IotHubConnectionString;
pub use sas::{SasKey, SasToken};

/// Errors from parsing protocol strings.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A connection string is malformed or lacks a required part.
    #[error("invalid Event Hubs connection string: {problem}")]
    ConnectionString {
        /// What is wrong, naming the offending key (never its secret value).
        problem: String,
    },
    /// An IoT Hub connection string is malformed or lacks a required part.
    #[error("invalid IoT Hub connection string: {problem}")]
    IotHubConnectionString {
        /// What is wrong, naming the offending key (never its secret value).
        problem: String,
    },
    /// An IoT hub's `amqp:link:redirect` does not say where the Event Hubs-compatible endpoint is.
    #[error("unusable redirect from the IoT hub: {problem}")]
    Redirect {
        /// What is missing or malformed.
        problem: String,
    },
    /// A SAS token could not be parsed.
    #[error("malformed SAS token: {problem}")]
    MalformedToken {
        /// What is wrong.
        problem: String,
    },
    /// A SAS token is well formed but does not authorise the request.
    #[error("SAS token rejected: {problem}")]
    TokenRejected {
        /// Why (bad signature, expired, wrong audience, unknown key name).
        problem: String,
    },
    /// A start-position filter expression could not be parsed.
    #[error(
        "invalid event position filter `{expression}`: {problem}; expected e.g. \
         amqp.annotation.x-opt-sequence-number > '41'"
    )]
    Filter {
        /// The expression as received.
        expression: String,
        /// What is wrong.
        problem: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Message annotation keys Event Hubs and IoT Hub stamp on events.
pub mod annotations {
    /// Sequence number (AMQP long).
    pub const SEQUENCE_NUMBER: &str = "x-opt-sequence-number";
    /// Offset (AMQP string).
    pub const OFFSET: &str = "x-opt-offset";
    /// Enqueued time (AMQP timestamp).
    pub const ENQUEUED_TIME: &str = "x-opt-enqueued-time";
    /// Partition key (AMQP string).
    pub const PARTITION_KEY: &str = "x-opt-partition-key";
    /// IoT Hub: device id of the sending connection.
    pub const CONNECTION_DEVICE_ID: &str = "iothub-connection-device-id";
    /// IoT Hub: module id of the sending connection.
    pub const CONNECTION_MODULE_ID: &str = "iothub-connection-module-id";
    /// IoT Hub: authentication method JSON.
    pub const CONNECTION_AUTH_METHOD: &str = "iothub-connection-auth-method";
    /// IoT Hub: device generation id.
    pub const CONNECTION_AUTH_GENERATION_ID: &str = "iothub-connection-auth-generation-id";
    /// IoT Hub: enqueued time (AMQP timestamp).
    pub const IOTHUB_ENQUEUED_TIME: &str = "iothub-enqueuedtime";
    /// IoT Hub: message source (`Telemetry`, `twinChangeEvents`, ...).
    pub const MESSAGE_SOURCE: &str = "iothub-message-source";
    /// Plug and Play model id.
    pub const DT_DATASCHEMA: &str = "dt-dataschema";
    /// Plug and Play component name.
    pub const DT_SUBJECT: &str = "dt-subject";
}

/// Link properties and capabilities.
pub mod link {
    /// Owner level (AMQP long) of an exclusive receiver.
    pub const EPOCH: &str = "com.microsoft:epoch";
    /// Receiver name (.NET, Rust SDKs).
    pub const RECEIVER_NAME: &str = "com.microsoft:receiver-name";
    /// Operation timeout in ms (Python SDK).
    pub const TIMEOUT: &str = "com.microsoft:timeout";
    /// Entity type (AMQP int).
    pub const ENTITY_TYPE: &str = "com.microsoft:entity-type";
    /// Capability asking for last-enqueued runtime metrics in delivery annotations.
    pub const RUNTIME_METRIC_CAPABILITY: &str = "com.microsoft:enable-receiver-runtime-metric";
    /// Filter map key of the start-position selector.
    pub const SELECTOR_FILTER_KEY: &str = "apache.org:selector-filter:string";
    /// Selector filter descriptor code used by the Python, Go, JS and Rust SDKs.
    pub const SELECTOR_FILTER_CODE: u64 = 0x0000_468C_0000_0004;
    /// Selector filter descriptor code used by the .NET SDK; servers accept both.
    pub const SELECTOR_FILTER_CODE_DOTNET: u64 = 0x0000_0137_0000_000A;
}

/// The claims-based security node.
pub mod cbs {
    /// Node address.
    pub const NODE: &str = "$cbs";
    /// `operation` value of a token request.
    pub const PUT_TOKEN: &str = "put-token";
    /// Token type of SAS tokens.
    pub const SAS_TOKEN_TYPE: &str = "servicebus.windows.net:sastoken";
    /// Token type of Entra ID tokens.
    pub const JWT_TOKEN_TYPE: &str = "jwt";
    /// Application property of a token request: when the token expires (timestamp).
    pub const EXPIRATION: &str = "expiration";
}

/// The management node.
pub mod management {
    /// Node address.
    pub const NODE: &str = "$management";
    /// Application property naming the operation of a request (`$management` and `$cbs`).
    pub const OPERATION: &str = "operation";
    /// Application property naming the entity type (or the token type on `$cbs`).
    pub const TYPE: &str = "type";
    /// Application property naming the entity (or the token audience on `$cbs`).
    pub const NAME: &str = "name";
    /// `operation` of a read.
    pub const READ: &str = "READ";
    /// `type` of an event hub read.
    pub const EVENT_HUB_TYPE: &str = "com.microsoft:eventhub";
    /// `type` of a partition read.
    pub const PARTITION_TYPE: &str = "com.microsoft:partition";
    /// Application property carrying a token on management requests.
    pub const SECURITY_TOKEN: &str = "security_token";
    /// Response status code property.
    pub const STATUS_CODE: &str = "status-code";
    /// Response status description property.
    pub const STATUS_DESCRIPTION: &str = "status-description";
}

/// AMQP error conditions Event Hubs uses, and how a client should treat them.
pub mod conditions {
    /// Throttled; retry after at least 4 s.
    pub const SERVER_BUSY: &str = "com.microsoft:server-busy";
    /// Service timeout; retry.
    pub const TIMEOUT: &str = "com.microsoft:timeout";
    /// Impossible start position (beyond the end, or older than retention); do not retry.
    pub const ARGUMENT_OUT_OF_RANGE: &str = "com.microsoft:argument-out-of-range";
    /// Malformed argument; do not retry.
    pub const ARGUMENT_ERROR: &str = "com.microsoft:argument-error";
    /// Authentication failed; do not retry.
    pub const AUTH_FAILED: &str = "com.microsoft:auth-failed";
    /// A receiver with a higher or equal owner level took the partition.
    pub const LINK_STOLEN: &str = "amqp:link:stolen";
    /// Token missing or lacking rights.
    pub const UNAUTHORIZED_ACCESS: &str = "amqp:unauthorized-access";
    /// A quota (e.g. five receivers per partition) is exhausted.
    pub const RESOURCE_LIMIT_EXCEEDED: &str = "amqp:resource-limit-exceeded";
    /// Unknown entity.
    pub const NOT_FOUND: &str = "amqp:not-found";
    /// A message larger than allowed.
    pub const MESSAGE_SIZE_EXCEEDED: &str = "amqp:link:message-size-exceeded";
    /// The service detached a link (maintenance, rebalancing); attach again.
    pub const DETACH_FORCED: &str = "amqp:link:detach-forced";
}
