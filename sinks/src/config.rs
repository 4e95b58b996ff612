//! One configuration type for every sink, tagged by `type`, [`build_sink`] to turn it into a
//! running [`Sink`], and [`probe`] to ask whether its endpoint can take writes. The engine's
//! configuration embeds a list of these, one per endpoint.

use std::time::Duration;

use serde::Deserialize;

use crate::table::TableMapping;

use crate::{
    AckSender, AmqpSink, EventHubsSinkConfig, ParquetSink, ParquetSinkConfig, PostgresSink,
    PostgresSinkConfig, Result, ServiceBusSinkConfig, Sink, SqliteSink, SqliteSinkConfig,
    StorageSink, StorageSinkConfig, WebhookSink, WebhookSinkConfig,
};

/// An endpoint's sink configuration: `type = "parquet" | "webhook" | "postgres" | "sqlite" |
/// "storage" | "eventhubs" | "servicebus"` plus that sink's fields.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkConfig {
    /// Parquet files on an object store.
    Parquet(ParquetSinkConfig),
    /// HTTP POST of JSON batches.
    Webhook(WebhookSinkConfig),
    /// A PostgreSQL table, loaded with binary COPY.
    Postgres(PostgresSinkConfig),
    /// A table in an SQLite database file.
    Sqlite(SqliteSinkConfig),
    /// IoT Hub's storage endpoint: Avro, Avro Deflate or JSON files on an object store.
    Storage(StorageSinkConfig),
    /// An event hub (AMQP 1.0), as IoT Hub's Event Hubs endpoint.
    #[serde(rename = "eventhubs")]
    EventHubs(EventHubsSinkConfig),
    /// A Service Bus queue or topic, or any AMQP 1.0 queue.
    #[serde(rename = "servicebus")]
    ServiceBus(ServiceBusSinkConfig),
}

impl SinkConfig {
    /// The endpoint name.
    pub fn name(&self) -> &str {
        match self {
            Self::Parquet(c) => &c.name,
            Self::Webhook(c) => &c.name,
            Self::Postgres(c) => &c.name,
            Self::Sqlite(c) => &c.name,
            Self::Storage(c) => &c.name,
            Self::EventHubs(c) => &c.name,
            Self::ServiceBus(c) => &c.name,
        }
    }

    /// The longest a healthy sink of this configuration holds a row on purpose before it
    /// delivers it: its `linger`, or the age at which it writes a file (`max_file_age`,
    /// `batch_frequency`); zero for the AMQP sinks, which publish at once. A commit that takes
    /// longer than this plus the backend's own latency means the endpoint is slow or failing.
    pub fn max_hold(&self) -> Duration {
        match self {
            Self::Parquet(c) => c.max_file_age,
            Self::Webhook(c) => c.linger,
            Self::Postgres(c) => c.linger,
            Self::Sqlite(c) => c.linger,
            Self::Storage(c) => c.batch_frequency,
            Self::EventHubs(_) | Self::ServiceBus(_) => Duration::ZERO,
        }
    }

    /// Checks the settings that can be checked without connecting or touching files (what
    /// `hubroute check` runs). Sinks whose checks need their backend run them in [`build_sink`].
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::EventHubs(c) => c.validate(),
            Self::ServiceBus(c) => c.validate(),
            Self::Parquet(c) => ParquetSink::validate(c).map(drop),
            Self::Webhook(c) => WebhookSink::validate(c).map(drop),
            Self::Postgres(c) => TableMapping::new(&c.name, &c.table).map(drop),
            Self::Sqlite(c) => TableMapping::new(&c.name, &c.table).map(drop),
            Self::Storage(_) => Ok(()),
        }
    }
}

/// Builds the sink `config` describes; it sends one [`crate::Ack`] per ticket on `acks`.
pub fn build_sink(config: SinkConfig, acks: AckSender) -> Result<Box<dyn Sink>> {
    Ok(match config {
        SinkConfig::Parquet(c) => Box::new(ParquetSink::new(c, acks)?),
        SinkConfig::Webhook(c) => Box::new(WebhookSink::new(c, acks)?),
        SinkConfig::Postgres(c) => Box::new(PostgresSink::new(c, acks)?),
        SinkConfig::Sqlite(c) => Box::new(SqliteSink::new(c, acks)?),
        SinkConfig::Storage(c) => Box::new(StorageSink::new(c, acks)?),
        SinkConfig::EventHubs(c) => Box::new(AmqpSink::event_hubs(&c, acks)?),
        SinkConfig::ServiceBus(c) => Box::new(AmqpSink::service_bus(&c, acks)?),
    })
}

/// Whether the endpoint `config` describes can take writes now: ONE cheap request that stores
/// nothing, bounded by the sink's own timeout (`timeout`, `connect_timeout`, the AMQP open
/// timeout, 10 s for object stores), without the sink's retries. `Ok` means up; the error says
/// why not. The engine probes a parked endpoint with it before replaying its rows.
///
/// | sink | request | down when |
/// |---|---|---|
/// | `postgres` | connect (same TLS and credentials), `SELECT to_regclass(table)` | no connection, refused login, table missing and `create = false` |
/// | `sqlite` | open the file read-write (not creating it), prepare a query of the table | directory missing, file unreadable or locked beyond `busy_timeout`, table missing and `create = false` |
/// | `webhook` | `HEAD url` with the configured headers | connection failure, timeout, 5xx, 429 (any other status is up: the server answered) |
/// | `parquet`, `storage` | `head` of an object under the path template's fixed prefix | connection failure, timeout, 5xx, refused credentials (not found is up) |
/// | `eventhubs`, `servicebus` | connect, SASL, CBS token, attach a sender link, close | any of those steps failing |
///
/// A probe that passes does not promise that the next write succeeds (a webhook can answer HEAD
/// and fail POST): callers keep handling delivery failures.
pub async fn probe(config: &SinkConfig) -> Result<()> {
    match config {
        SinkConfig::Parquet(c) => ParquetSink::probe(c).await,
        SinkConfig::Webhook(c) => WebhookSink::probe(c).await,
        SinkConfig::Postgres(c) => crate::postgres::probe(c).await,
        SinkConfig::Sqlite(c) => crate::sqlite::probe(c).await,
        SinkConfig::Storage(c) => StorageSink::probe(c).await,
        SinkConfig::EventHubs(c) => AmqpSink::probe_event_hubs(c).await,
        SinkConfig::ServiceBus(c) => AmqpSink::probe_service_bus(c).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_configs_parse_by_type_and_reject_unknown_fields() {
        let cases = [
            (
                r#"{"type":"parquet","name":"lake","store":{"kind":"local","root":"/tmp/l"},"max_file_age":"5s"}"#,
                Ok("lake"),
            ),
            (
                r#"{"type":"webhook","name":"hook","url":"http://127.0.0.1:1/x","linger":"10ms"}"#,
                Ok("hook"),
            ),
            (
                r#"{"type":"webhook","name":"hook","url":"http://x","lingr":"10ms"}"#,
                Err("unknown field `lingr`"),
            ),
            (
                r#"{"type":"postgres","name":"pg","dbname":"test","table":{"name":"m"}}"#,
                Ok("pg"),
            ),
            (
                r#"{"type":"sqlite","name":"lite","path":"/tmp/m.db","table":{"name":"m","columns":[{"name":"t","source":"$.t","type":"double"}]}}"#,
                Ok("lite"),
            ),
            (
                r#"{"type":"storage","name":"archive","encoding":"json","batch_frequency":60}"#,
                Ok("archive"),
            ),
            (
                r#"{"type":"storage","name":"archive","batch_frequency":30}"#,
                Err("batch_frequency must be a whole number of seconds from 60 to 720"),
            ),
            (
                r#"{"type":"eventhubs","name":"eh","connection_string":"Endpoint=sb://127.0.0.1:5673;SharedAccessKeyName=k;SharedAccessKey=s;EntityPath=target;UseDevelopmentEmulator=true","partition_key":"app:zone"}"#,
                Ok("eh"),
            ),
            (
                r#"{"type":"eventhubs","name":"eh","connection_string":"Endpoint=sb://h/;SharedAccessKeyName=k;SharedAccessKey=s","partition_key":"device"}"#,
                Err("partition_key `device` is not"),
            ),
            (
                r#"{"type":"servicebus","name":"sb","url":"amqp://127.0.0.1:5672","username":"guest","password":"guest","entity":"/amq/queue/q"}"#,
                Ok("sb"),
            ),
            (
                r#"{"type":"kafka","name":"k"}"#,
                Err("unknown variant `kafka`"),
            ),
        ];
        for (json, expected) in cases {
            let parsed = serde_json::from_str::<SinkConfig>(json);
            match (parsed, expected) {
                (Ok(config), Ok(name)) => assert_eq!(config.name(), name),
                (Err(error), Err(message)) => {
                    assert!(error.to_string().contains(message), "{json}: {error}");
                }
                (parsed, expected) => panic!("{json}: {parsed:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn max_hold_is_the_linger_or_file_age_of_each_kind() {
        let cases = [
            (
                r#"{"type":"parquet","name":"l","max_file_age":"5s"}"#,
                5_000,
            ),
            (
                r#"{"type":"webhook","name":"h","url":"http://x","linger":"20ms"}"#,
                20,
            ),
            (
                r#"{"type":"postgres","name":"p","table":{"name":"m"},"linger":"30ms"}"#,
                30,
            ),
            (
                r#"{"type":"storage","name":"s","batch_frequency":60}"#,
                60_000,
            ),
            (
                r#"{"type":"servicebus","name":"sb","url":"amqp://127.0.0.1:5672","entity":"/q"}"#,
                0,
            ),
        ];
        for (json, millis) in cases {
            let config: SinkConfig = serde_json::from_str(json).unwrap();
            assert_eq!(config.max_hold(), Duration::from_millis(millis), "{json}");
        }
    }

    #[tokio::test]
    async fn build_sink_builds_each_kind() {
        let dir = tempfile::tempdir().unwrap();
        let (acks, _rx) = tokio::sync::mpsc::channel(1);
        let configs = [
            SinkConfig::Parquet(ParquetSinkConfig::new(
                "lake",
                crate::ObjectStoreConfig::Local {
                    root: dir.path().to_owned(),
                },
            )),
            SinkConfig::Webhook(WebhookSinkConfig::new("hook", "http://127.0.0.1:9/x")),
            SinkConfig::Storage(StorageSinkConfig::new(
                "archive",
                crate::ObjectStoreConfig::Local {
                    root: dir.path().to_owned(),
                },
            )),
        ];
        for config in configs {
            let name = config.name().to_owned();
            let sink = build_sink(config, acks.clone()).unwrap();
            assert_eq!(sink.name(), name);
        }
        let bad = SinkConfig::Webhook(WebhookSinkConfig::new("hook", "not a url"));
        let error = build_sink(bad, acks).unwrap_err();
        assert!(
            error.to_string().contains("url `not a url` is invalid"),
            "{error}"
        );
    }
}
