//! The mapping from message rows to SQL table rows shared by the PostgreSQL and SQLite sinks, and the
//! buffering sink core both run on ([`TableSink`]).
//!
//! A table either gets the documented default columns ([`TableConfig::columns`] empty) or a list of
//! [`ColumnMapping`]s, each filling one column from a message field, an application property or a JSON
//! path into the body, converted to a declared [`SqlType`]. The idempotency key columns
//! `event_hub`, `partition`, `sequence_number` are always written, and the table carries a unique
//! constraint on them, so a replayed duplicate never becomes a second row.
//!
//! Values are converted in Rust, before any database round trip: a row whose JSON path value cannot
//! become the declared type fails alone, with the SQLSTATE PostgreSQL would have given
//! (`22P02`, `22003`), and never reaches the database.

mod source;
mod value;
mod worker;

use std::fmt::Write as _;

use arrow::record_batch::RecordBatch;
use hubroute_message::MessageColumns;
use serde::Deserialize;

pub(crate) use source::Source;
pub(crate) use value::SqlValue;
pub use worker::TableSink;
pub(crate) use worker::{TableSinkSettings, TableWriter, WriteError, WriteOutcome};

use crate::{Error, FailedRow, Result};

/// The target table of a database sink.
///
/// ```toml
/// table = { name = "telemetry" }                       # default columns, created if missing
/// [table]                                              # or mapped onto chosen columns
/// name = "readings"
/// columns = [
///   { name = "device", source = "connection_device_id", type = "text" },
///   { name = "temperature", source = "$.temperature", type = "double" },
///   { name = "level", source = "app:level", type = "text" },
/// ]
/// ```
///
/// Default columns: `event_hub` text, `partition` text, `sequence_number` bigint, `offset` text,
/// `enqueued_time` timestamptz, `system_properties` JSON object of the non-null system properties
/// (named as in the message schema), `application_properties` JSON object (numbers and booleans keep
/// their AMQP type), `body_json` JSON when the body is JSON text, else null, and `body_bytes` bytes
/// when it is not, else null.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Table name, optionally schema-qualified (`schema.table`); quoted, so case is kept.
    pub name: String,
    /// Create the table (with its unique key) when it does not exist (default true). An existing
    /// table must have a unique constraint on `(event_hub, partition, sequence_number)`.
    #[serde(default = "default_create")]
    pub create: bool,
    /// Mapped columns besides the key columns; empty means the default columns.
    #[serde(default)]
    pub columns: Vec<ColumnMapping>,
}

fn default_create() -> bool {
    true
}

impl TableConfig {
    /// A table with the default columns, created if missing.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            create: true,
            columns: Vec::new(),
        }
    }
}

/// One mapped column.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnMapping {
    /// Column name in the table.
    pub name: String,
    /// Where the value comes from: a message schema column name (`connection_device_id`,
    /// `enqueued_time`, `body`, ...) or `system_properties`, `application_properties`, `body_json`;
    /// `app:<name>` for one application property; `$.a.b[0]` for a JSON path into the body.
    /// A missing property or path gives SQL NULL.
    pub source: String,
    /// The SQL type the value is converted to.
    #[serde(rename = "type")]
    pub sql_type: SqlType,
}

/// Column types a value can be converted to, with their PostgreSQL and SQLite spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlType {
    /// `text` / `TEXT`.
    Text,
    /// `bigint` / `INTEGER`.
    Bigint,
    /// `integer` / `INTEGER`.
    Integer,
    /// `double precision` / `REAL`.
    Double,
    /// `boolean` / `INTEGER` (0, 1).
    Boolean,
    /// `timestamptz` / `TEXT` (RFC 3339, UTC, milliseconds).
    Timestamptz,
    /// `jsonb` / `TEXT` holding JSON.
    Jsonb,
    /// `bytea` / `BLOB`.
    Bytea,
}

impl SqlType {
    pub(crate) fn postgres(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Bigint => "bigint",
            Self::Integer => "integer",
            Self::Double => "double precision",
            Self::Boolean => "boolean",
            Self::Timestamptz => "timestamptz",
            Self::Jsonb => "jsonb",
            Self::Bytea => "bytea",
        }
    }

    pub(crate) fn sqlite(self) -> &'static str {
        match self {
            Self::Text | Self::Timestamptz | Self::Jsonb => "TEXT",
            Self::Bigint | Self::Integer | Self::Boolean => "INTEGER",
            Self::Double => "REAL",
            Self::Bytea => "BLOB",
        }
    }
}

/// The key columns, written first in every table.
const KEY_COLUMNS: [(&str, SqlType); 3] = [
    ("event_hub", SqlType::Text),
    ("partition", SqlType::Text),
    ("sequence_number", SqlType::Bigint),
];

/// A resolved column: name, type and where its value comes from.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub(crate) name: String,
    pub(crate) sql_type: SqlType,
    source: Source,
    /// Key columns are `NOT NULL` in created tables.
    key: bool,
}

/// One converted row: values in [`TableMapping::columns`] order.
pub(crate) type Row = Vec<SqlValue>;

/// A converted batch: `(row index, row)` of the rows that converted, and the rows that did not.
pub(crate) type Converted = (Vec<(usize, Row)>, Vec<FailedRow>);

/// A validated [`TableConfig`]: the columns to write and how to fill them.
#[derive(Debug, Clone)]
pub(crate) struct TableMapping {
    /// Table name parts (`schema`, `table` or just `table`), unquoted.
    name: Vec<String>,
    pub(crate) create: bool,
    pub(crate) columns: Vec<Column>,
    /// Whether some column reads a JSON path (the body is parsed once per row then).
    parses_body: bool,
}

impl TableMapping {
    pub(crate) fn new(sink: &str, config: &TableConfig) -> Result<Self> {
        let invalid = |problem: String| Error::Config {
            sink: sink.to_owned(),
            problem,
        };
        let name: Vec<String> = config.name.split('.').map(str::to_owned).collect();
        if name.len() > 2 || name.iter().any(String::is_empty) {
            return Err(invalid(format!(
                "table name `{}` must be `table` or `schema.table`",
                config.name
            )));
        }
        let mut columns: Vec<Column> = KEY_COLUMNS
            .iter()
            .map(|(column, sql_type)| Column {
                name: (*column).to_owned(),
                sql_type: *sql_type,
                source: Source::parse(column).expect("key columns are message fields"),
                key: true,
            })
            .collect();
        let mapped: Vec<(String, String, SqlType)> = if config.columns.is_empty() {
            default_columns()
        } else {
            config
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.source.clone(), c.sql_type))
                .collect()
        };
        for (column, source, sql_type) in mapped {
            if columns.iter().any(|c| c.name == column) {
                return Err(invalid(format!(
                    "column `{column}` is mapped twice (the key columns event_hub, partition, sequence_number are always written)"
                )));
            }
            let source = Source::parse(&source)
                .map_err(|problem| invalid(format!("column `{column}`: {problem}")))?;
            columns.push(Column {
                name: column,
                sql_type,
                source,
                key: false,
            });
        }
        let parses_body = columns
            .iter()
            .any(|c| matches!(c.source, Source::BodyPath(_)));
        Ok(Self {
            name,
            create: config.create,
            columns,
            parses_body,
        })
    }

    /// The quoted, possibly schema-qualified table name.
    pub(crate) fn quoted_name(&self) -> String {
        self.name
            .iter()
            .map(|part| quote(part))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The unquoted last part of the table name.
    pub(crate) fn bare_name(&self) -> &str {
        self.name.last().map_or("", String::as_str)
    }

    /// `"a", "b", ...` of every column.
    pub(crate) fn quoted_columns(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The conflict target of the idempotency key.
    pub(crate) fn quoted_key(&self) -> String {
        KEY_COLUMNS
            .iter()
            .map(|(c, _)| quote(c))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `CREATE TABLE IF NOT EXISTS` with the key constraint, spelling types with `type_name`.
    pub(crate) fn create_table_sql(&self, type_name: fn(SqlType) -> &'static str) -> String {
        let mut sql = format!("CREATE TABLE IF NOT EXISTS {} (", self.quoted_name());
        for column in &self.columns {
            let not_null = if column.key { " NOT NULL" } else { "" };
            let _ = write!(
                sql,
                "{} {}{not_null}, ",
                quote(&column.name),
                type_name(column.sql_type)
            );
        }
        let _ = write!(sql, "UNIQUE ({}))", self.quoted_key());
        sql
    }

    /// Converts every row of a message batch. Rows whose values cannot be converted are returned as
    /// failures (they never reach the database); the others as `(row index, row)`.
    pub(crate) fn convert(&self, batch: &RecordBatch) -> Result<Converted> {
        let view = MessageColumns::try_new(batch)?;
        let mut rows = Vec::with_capacity(view.len());
        let mut failed = Vec::new();
        for index in 0..view.len() {
            let body = self
                .parses_body
                .then(|| serde_json::from_slice::<serde_json::Value>(view.body.value(index)).ok())
                .flatten();
            let row: std::result::Result<Row, String> = self
                .columns
                .iter()
                .map(|column| {
                    let datum = column.source.read(&view, index, body.as_ref());
                    datum
                        .coerce(column.sql_type)
                        .map_err(|error| format!("{error} (column `{}`)", column.name))
                })
                .collect();
            match row {
                Ok(row) => rows.push((index, row)),
                Err(error) => failed.push(FailedRow { row: index, error }),
            }
        }
        Ok((rows, failed))
    }
}

fn default_columns() -> Vec<(String, String, SqlType)> {
    [
        ("offset", SqlType::Text),
        ("enqueued_time", SqlType::Timestamptz),
        ("system_properties", SqlType::Jsonb),
        ("application_properties", SqlType::Jsonb),
        ("body_json", SqlType::Jsonb),
        ("body_bytes", SqlType::Bytea),
    ]
    .into_iter()
    .map(|(name, sql_type)| (name.to_owned(), name.to_owned(), sql_type))
    .collect()
}

/// Whether a database error code means "try again later": PostgreSQL SQLSTATE classes 08
/// (connection), 40 (serialization, deadlock), 53 (resources), 57 (operator intervention, e.g. a
/// restarting server), 58 (system) and 55P03 (lock not available); SQLite busy and locked.
pub(crate) fn code_is_retryable(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "40" | "53" | "57" | "58"))
        || code == "55P03"
        || code.starts_with("SQLITE_BUSY")
        || code.starts_with("SQLITE_LOCKED")
}

/// Whether a database error code is about the row being written, so that only that row fails:
/// PostgreSQL classes 22 (data exception) and 23 (integrity constraint violation); SQLite constraint,
/// type mismatch and too-big errors.
pub(crate) fn code_is_row_level(code: &str) -> bool {
    matches!(code.get(..2), Some("22" | "23"))
        || code.starts_with("SQLITE_CONSTRAINT")
        || code == "SQLITE_MISMATCH"
        || code == "SQLITE_TOOBIG"
}

/// Quotes an SQL identifier (both PostgreSQL and SQLite use `"..."` with doubled quotes).
pub(crate) fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder};

    use super::*;

    fn mapping(columns: &[(&str, &str, SqlType)]) -> TableMapping {
        let config = TableConfig {
            name: "t".into(),
            create: true,
            columns: columns
                .iter()
                .map(|(name, source, sql_type)| ColumnMapping {
                    name: (*name).into(),
                    source: (*source).into(),
                    sql_type: *sql_type,
                })
                .collect(),
        };
        TableMapping::new("db", &config).unwrap()
    }

    fn message(body: &str) -> Message {
        let mut message = Message::telemetry(body.to_owned());
        message.sequence_number = 7;
        message.enqueued_time = Utc.timestamp_millis_opt(1_700_000_000_123).unwrap();
        message.system.connection_device_id = Some("dev-1".into());
        message.application_properties = vec![
            ("level".into(), AppPropertyValue::String("high".into())),
            ("count".into(), AppPropertyValue::Long(3)),
        ];
        message
    }

    #[test]
    fn default_columns_hold_key_metadata_properties_and_the_body_by_kind() {
        let mapping = mapping(&[]);
        let names: Vec<&str> = mapping.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "event_hub",
                "partition",
                "sequence_number",
                "offset",
                "enqueued_time",
                "system_properties",
                "application_properties",
                "body_json",
                "body_bytes"
            ]
        );
        let batch =
            MessageBatchBuilder::batch_of(&[message(r#"{"t":1}"#), message("\u{1}raw")]).unwrap();
        let (rows, failed) = mapping.convert(&batch).unwrap();
        assert!(failed.is_empty());
        let json = &rows[0].1;
        assert_eq!(json[0], SqlValue::Text("hub".into()));
        assert_eq!(json[2], SqlValue::BigInt(7));
        assert_eq!(
            json[4],
            SqlValue::Timestamp(Utc.timestamp_millis_opt(1_700_000_000_123).unwrap())
        );
        assert_eq!(
            json[5],
            SqlValue::Json(
                r#"{"connection_device_id":"dev-1","message_source":"Telemetry"}"#.into()
            )
        );
        assert_eq!(
            json[6],
            SqlValue::Json(r#"{"count":3,"level":"high"}"#.into())
        );
        assert_eq!(json[7], SqlValue::Json(r#"{"t":1}"#.into()));
        assert_eq!(json[8], SqlValue::Null);
        let raw = &rows[1].1;
        assert_eq!(raw[7], SqlValue::Null);
        assert_eq!(raw[8], SqlValue::Bytes(b"\x01raw".to_vec()));
    }

    #[test]
    fn mapped_columns_convert_or_fail_the_row_with_a_sqlstate() {
        let cases: [(&str, SqlType, &str, Result<SqlValue, &str>); 12] = [
            (
                "$.temp",
                SqlType::Double,
                r#"{"temp":21.5}"#,
                Ok(SqlValue::Double(21.5)),
            ),
            (
                "$.temp",
                SqlType::Double,
                r#"{"temp":"21.5"}"#,
                Ok(SqlValue::Double(21.5)),
            ),
            ("$.temp", SqlType::Bigint, r#"{"temp":"hot"}"#, Err("22P02")),
            (
                "$.temp",
                SqlType::Integer,
                r#"{"temp":4000000000}"#,
                Err("22003"),
            ),
            (
                "$.temp",
                SqlType::Text,
                r#"{"other":1}"#,
                Ok(SqlValue::Null),
            ),
            (
                "$.a.b[1]",
                SqlType::Bigint,
                r#"{"a":{"b":[5,6]}}"#,
                Ok(SqlValue::BigInt(6)),
            ),
            (
                "$.a",
                SqlType::Jsonb,
                r#"{"a":{"b":[5,6]}}"#,
                Ok(SqlValue::Json(r#"{"b":[5,6]}"#.into())),
            ),
            (
                "$.on",
                SqlType::Boolean,
                r#"{"on":true}"#,
                Ok(SqlValue::Bool(true)),
            ),
            (
                "$.at",
                SqlType::Timestamptz,
                r#"{"at":"2024-01-02T03:04:05Z"}"#,
                Ok(SqlValue::Timestamp(
                    Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap(),
                )),
            ),
            (
                "$.at",
                SqlType::Timestamptz,
                r#"{"at":"yesterday"}"#,
                Err("22007"),
            ),
            ("app:count", SqlType::Integer, "{}", Ok(SqlValue::Int(3))),
            (
                "connection_device_id",
                SqlType::Text,
                "{}",
                Ok(SqlValue::Text("dev-1".into())),
            ),
        ];
        for (source, sql_type, body, expected) in cases {
            let mapping = mapping(&[("c", source, sql_type)]);
            let batch = MessageBatchBuilder::batch_of(&[message(body)]).unwrap();
            let (rows, failed) = mapping.convert(&batch).unwrap();
            match expected {
                Ok(value) => {
                    assert!(failed.is_empty(), "{source} {body}: {failed:?}");
                    assert_eq!(rows[0].1[3], value, "{source} {body}");
                }
                Err(code) => {
                    assert!(rows.is_empty(), "{source} {body}: converted");
                    assert!(
                        failed[0].error.starts_with(code) && failed[0].error.contains("`c`"),
                        "{source} {body}: {}",
                        failed[0].error
                    );
                }
            }
        }
    }

    #[test]
    fn invalid_mappings_are_configuration_errors() {
        let cases = [
            ("t", vec![("sequence_number", "offset")], "mapped twice"),
            (
                "t",
                vec![("x", "nonsense")],
                "unknown message field `nonsense`",
            ),
            ("t", vec![("x", "$.a[")], "JSON path"),
            ("a.b.c", vec![], "schema.table"),
        ];
        for (table, columns, expected) in cases {
            let config = TableConfig {
                name: table.into(),
                create: true,
                columns: columns
                    .into_iter()
                    .map(|(name, source)| ColumnMapping {
                        name: name.into(),
                        source: source.into(),
                        sql_type: SqlType::Text,
                    })
                    .collect(),
            };
            let error = TableMapping::new("db", &config).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn database_codes_classify_as_retryable_row_level_or_fatal() {
        let cases = [
            ("08006", true, false),
            ("40001", true, false),
            ("57P01", true, false),
            ("55P03", true, false),
            ("22P02", false, true),
            ("23505", false, true),
            ("23502", false, true),
            ("42P01", false, false),
            ("42P10", false, false),
            ("28P01", false, false),
            ("SQLITE_BUSY", true, false),
            ("SQLITE_CONSTRAINT_NOTNULL", false, true),
            ("SQLITE_ERROR", false, false),
        ];
        for (code, retryable, row_level) in cases {
            assert_eq!(code_is_retryable(code), retryable, "{code}");
            assert_eq!(code_is_row_level(code), row_level, "{code}");
        }
    }

    #[test]
    fn created_tables_carry_the_unique_key_and_quote_identifiers() {
        let mapping = mapping(&[("te\"mp", "$.t", SqlType::Double)]);
        assert_eq!(
            mapping.create_table_sql(SqlType::postgres),
            "CREATE TABLE IF NOT EXISTS \"t\" (\"event_hub\" text NOT NULL, \"partition\" text NOT NULL, \
             \"sequence_number\" bigint NOT NULL, \"te\"\"mp\" double precision, \
             UNIQUE (\"event_hub\", \"partition\", \"sequence_number\"))"
        );
    }
}
