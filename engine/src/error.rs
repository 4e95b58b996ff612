//! The engine crate's one error type. Variants carry the context a user needs to act.

/// Errors from the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A protocol string (connection string, token, filter) is invalid.
    #[error(transparent)]
    Protocol(#[from] hubroute_protocol::Error),
    /// The source configuration is inconsistent.
    #[error("invalid source configuration: {problem}")]
    SourceConfig {
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The AMQP connection to the event hub could not be opened or was lost (retryable).
    #[error(
        "cannot reach the event hub at {endpoint}: {problem}; check the Endpoint of the connection \
         string, the network and that the service (or `hubroute emulator`) is running"
    )]
    Connect {
        /// `host:port`.
        endpoint: String,
        /// What failed.
        problem: String,
    },
    /// The service refused the credentials (not retried).
    #[error(
        "the event hub rejected the credentials for {audience}: {problem}; check SharedAccessKeyName / \
         SharedAccessKey (the policy needs Listen rights) or renew the SharedAccessSignature"
    )]
    Unauthorized {
        /// The token audience, e.g. `sb://host/hub`.
        audience: String,
        /// The service's reason.
        problem: String,
    },
    /// An IoT hub refused the shared access policy of its connection string (not retried).
    #[error(
        "the IoT hub at {host} rejected shared access policy `{policy}`: {problem}; check \
         SharedAccessKeyName and SharedAccessKey (copy the connection string of the `service` or \
         `iothubowner` policy: the hub's Security settings → Shared access policies) and that the \
         policy has the ServiceConnect permission"
    )]
    IotHubUnauthorized {
        /// The hub's host name.
        host: String,
        /// The policy name (never its key).
        policy: String,
        /// The hub's reason.
        problem: String,
    },
    /// An IoT hub's connection string could not be resolved to its Event Hubs-compatible endpoint.
    #[error(
        "cannot find the Event Hubs-compatible endpoint of the IoT hub at {host}: {problem}; check \
         HostName, the network (and `proxy`), or give the built-in endpoint's Event Hub-compatible \
         connection string instead (the hub's Hub settings → Built-in endpoints)"
    )]
    IotHubResolve {
        /// The hub's host name.
        host: String,
        /// What failed.
        problem: String,
    },
    /// A `$management` request failed or returned something unexpected.
    #[error("reading the event hub `{event_hub}` via $management failed: {problem}")]
    Management {
        /// Event hub name.
        event_hub: String,
        /// What failed.
        problem: String,
    },
    /// The service closed a partition link or connection with an AMQP error.
    #[error("partition {partition}: the service reported {condition}: {description}")]
    Amqp {
        /// Partition id.
        partition: String,
        /// The AMQP error condition, e.g. `com.microsoft:server-busy`.
        condition: String,
        /// The service's description.
        description: String,
    },
    /// The start position is outside the retained stream (not retried).
    #[error(
        "partition {partition}: start position `{position}` is out of range: {description}; the \
         checkpoint is probably older than the event hub's retention. Set `out_of_range = \"earliest\"` \
         to restart from the oldest retained event, or delete the checkpoint"
    )]
    PositionOutOfRange {
        /// Partition id.
        partition: String,
        /// The filter expression that was refused.
        position: String,
        /// The service's description.
        description: String,
    },
    /// An AMQP message lacks what every Event Hubs event carries (not retried: the stream is not Event Hubs).
    #[error("partition {partition}: cannot decode an event: {problem}")]
    Decode {
        /// Partition id.
        partition: String,
        /// What is missing or malformed.
        problem: String,
    },
    /// Reading or writing a checkpoint failed.
    #[error("checkpoint `{location}`: {problem}")]
    Checkpoint {
        /// File path or blob name.
        location: String,
        /// What failed.
        problem: String,
    },
    /// The configuration file is invalid.
    #[error("{file}{at}: {problem}", at = position(*line, *column))]
    Config {
        /// The configuration file.
        file: String,
        /// 1-based line (0 when the whole file is concerned).
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A route condition failed to evaluate on a batch.
    #[error("evaluating routes failed: {0}")]
    Routing(#[from] hubroute_queries::Error),
    /// A sink could not be built or stopped with a fatal error.
    #[error("endpoint `{endpoint}`: {source}")]
    Sink {
        /// The endpoint name.
        endpoint: String,
        /// The sink's error.
        source: Box<hubroute_sinks::Error>,
    },
    /// The dead-letter store could not be set up.
    #[error("dead-letter store: {0}")]
    DeadLetters(Box<hubroute_sinks::Error>),
    /// The HTTP server of `/metrics`, `/healthz` and `/routes` could not start.
    #[error(
        "cannot listen on {address} for /metrics: {problem}; set `service.listen` to a free address \
         (port 0 picks one)"
    )]
    Listen {
        /// The configured address.
        address: std::net::SocketAddr,
        /// What failed.
        problem: String,
    },
    /// An endpoint's sink stopped while the router still had rows for it.
    #[error("endpoint `{endpoint}` stopped: {problem}")]
    EndpointStopped {
        /// The endpoint name.
        endpoint: String,
        /// Why, as far as known.
        problem: String,
    },
    /// A component of the running engine failed in a way that stops it; `source` keeps the type of
    /// what went wrong.
    #[error("the {component} failed: {source}")]
    Fatal {
        /// What failed: `sink`, `router of partition 3`, `receiver of partition 3`.
        component: String,
        /// Why.
        source: Box<Error>,
    },
    /// A task of the engine panicked: a bug in hubroute, not in the configuration or the data.
    #[error(
        "the {component} panicked: {problem}; this is a bug in hubroute: please report it with the \
         log lines before this one"
    )]
    Panicked {
        /// Which task: `engine task`, `router`.
        component: &'static str,
        /// The panic's message.
        problem: String,
    },
    /// A reloaded configuration changes something only a restart can apply.
    #[error(
        "{file}: the new configuration changes {what}; restart hubroute to apply it (routes, fallback and enrichments reload live)"
    )]
    ReloadNeedsRestart {
        /// The configuration file.
        file: String,
        /// What changed.
        what: &'static str,
    },
    /// IoT Hub's service API (device twins) failed in a way retrying cannot fix, or the twin store
    /// stopped.
    #[error("device twins from {host}: {problem}")]
    TwinService {
        /// The hub's host name.
        host: String,
        /// What failed and what to do.
        problem: String,
    },
    /// A batch is not in the message schema.
    #[error("a batch is not a message batch: {0}")]
    Message(#[from] hubroute_message::Error),
}

/// `:line:column` of a configuration error, or nothing when it concerns the whole file (line 0).
fn position(line: usize, column: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}:{column}")
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
