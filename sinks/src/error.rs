//! The sinks crate's one error type, classified as retryable or permanent.

/// Errors from sinks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A batch did not have the message schema.
    #[error(transparent)]
    Schema(#[from] hubroute_message::Error),
    /// An archived file (IoT Hub storage Avro or JSON, hubroute Parquet) is not what it claims:
    /// `record` is 1-based, 0 for the file as a whole.
    #[error("{file}: record {record}: {problem}")]
    Archive {
        /// The file.
        file: String,
        /// The record that could not be read (1-based; 0: the header or the file).
        record: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// A sink or store configuration is invalid; fix the configuration file.
    #[error("sink `{sink}`: invalid configuration: {problem}")]
    Config {
        /// The endpoint (or store) whose configuration is wrong.
        sink: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// An object store operation failed (upload, list, read).
    #[error("sink `{sink}`: object store {operation} of `{path}` failed: {source}")]
    ObjectStore {
        /// The endpoint.
        sink: String,
        /// `upload`, `read`, `list`, ...
        operation: &'static str,
        /// The object path.
        path: String,
        /// The object store error (boxed: it is large).
        source: Box<object_store::Error>,
    },
    /// Encoding or decoding a Parquet file failed.
    #[error("sink `{sink}`: parquet encoding of `{path}` failed: {source}")]
    Parquet {
        /// The endpoint.
        sink: String,
        /// The object path of the file.
        path: String,
        /// The parquet error (boxed: it is large).
        source: Box<parquet::errors::ParquetError>,
    },
    /// Encoding an Avro file failed (a bug if it ever happens: records follow IoT Hub's schema).
    #[error("sink `{sink}`: Avro encoding failed: {source}")]
    Avro {
        /// The endpoint.
        sink: String,
        /// The apache-avro error (boxed: it is large).
        source: Box<apache_avro::Error>,
    },
    /// Building an Arrow batch for a sink failed (a bug if it ever happens).
    #[error("sink `{sink}`: arrow error: {source}")]
    Arrow {
        /// The endpoint.
        sink: String,
        /// The Arrow error.
        source: arrow::error::ArrowError,
    },
    /// An HTTP request could not be completed (connection refused or reset, timeout).
    #[error(
        "sink `{sink}`: HTTP request to {url} failed: {source}; check that the endpoint is reachable"
    )]
    Http {
        /// The endpoint.
        sink: String,
        /// The URL posted to.
        url: String,
        /// The client error.
        source: reqwest::Error,
    },
    /// An HTTP endpoint answered with a non-2xx status.
    #[error("sink `{sink}`: HTTP {status} from {url}: {body}")]
    HttpStatus {
        /// The endpoint.
        sink: String,
        /// The URL posted to.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// A JSON document (dead letter, configuration value) could not be read or written.
    #[error("{what}: invalid JSON: {source}")]
    Json {
        /// What was being read or written.
        what: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A database (PostgreSQL, SQLite) refused an operation in a way retries cannot fix, e.g. a
    /// missing table, a table without the unique key, denied access.
    #[error("sink `{sink}`: database {operation} failed{}: {message}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Database {
        /// The endpoint.
        sink: String,
        /// `connect`, `create table`, `write`, ...
        operation: &'static str,
        /// SQLSTATE (PostgreSQL) or result code name (SQLite), when the database gave one.
        code: Option<String>,
        /// What the database said, and what to do about it.
        message: String,
    },
    /// An AMQP peer (Event Hubs, Service Bus, a broker) refused or lost the connection, the
    /// session or the link.
    #[error("sink `{sink}`: AMQP {operation} with {target} failed: {problem}")]
    Amqp {
        /// The endpoint.
        sink: String,
        /// `amqp[s]://host:port/address`.
        target: String,
        /// `SASL authentication`, `attaching the sender`, `authorization (CBS put-token)`, ...
        operation: &'static str,
        /// What the peer said (condition and description), and what to do about it.
        problem: String,
        /// Whether trying again later can succeed.
        retryable: bool,
    },
    /// The engine stopped listening for acks; the sink cannot report commits any more.
    #[error(
        "sink `{sink}`: the ack channel is closed (the engine stopped); the sink must stop too"
    )]
    AcksClosed {
        /// The endpoint.
        sink: String,
    },
}

impl Error {
    /// Whether retrying the same operation later can succeed (drives retries and dead-lettering).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Schema(_)
            | Self::Config { .. }
            | Self::Parquet { .. }
            | Self::Avro { .. }
            | Self::Arrow { .. }
            | Self::Json { .. }
            | Self::Archive { .. }
            | Self::AcksClosed { .. } => false,
            Self::ObjectStore { source, .. } => object_store_error_is_retryable(source),
            Self::Http { .. } => true,
            Self::Amqp { retryable, .. } => *retryable,
            Self::Database { code, .. } => {
                code.as_deref().is_some_and(crate::table::code_is_retryable)
            }
            Self::HttpStatus { status, .. } => http_status_is_retryable(*status),
        }
    }

    /// Whether the object an object store operation named does not exist (moved or deleted).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::ObjectStore { source, .. } if matches!(**source, object_store::Error::NotFound { .. }))
    }
}

/// Object store errors that a later attempt can fix: network and server faults, not missing
/// containers, denied permissions or invalid paths.
pub(crate) fn object_store_error_is_retryable(error: &object_store::Error) -> bool {
    use object_store::Error as E;
    !matches!(
        error,
        E::NotFound { .. }
            | E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::UnknownConfigurationKey { .. }
    )
}

/// HTTP statuses worth retrying: server errors, request timeout and throttling. Every other 4xx is
/// permanent: sending the same request again gets the same answer.
pub(crate) fn http_status_is_retryable(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
