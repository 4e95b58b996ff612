//! The SQLite sink, the embedded default database: one `INSERT ... ON CONFLICT (event_hub, partition,
//! sequence_number) DO NOTHING` prepared statement executed per row inside one transaction per batch,
//! in WAL mode with `synchronous = FULL` so that a committed transaction survives power loss (the ack
//! promises durability).
//!
//! SQLite rolls back only the failing statement on a constraint error, so a bad row is isolated by
//! construction: its error is recorded and the loop goes on. Every SQLite call runs on Tokio's
//! blocking pool (`spawn_blocking`), never on the runtime's worker threads; the connection moves into
//! the blocking task and back.

mod config;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params_from_iter};

pub use config::SqliteSinkConfig;

use crate::table::{
    Row, SqlType, SqlValue, TableMapping, TableSink, TableSinkSettings, TableWriter, WriteError,
    WriteOutcome, code_is_retryable, code_is_row_level,
};
use crate::{AckSender, Error, Result};

/// Writes messages into an SQLite table; idempotent on (event hub, partition, sequence number).
pub type SqliteSink = TableSink<SqliteWriter>;

impl SqliteSink {
    /// Validates `config` and starts the writer task (it opens the database, and creates the table
    /// if asked, on the first batch). Must be called inside a Tokio runtime.
    pub fn new(config: SqliteSinkConfig, acks: AckSender) -> Result<Self> {
        let mapping = TableMapping::new(&config.name, &config.table)?;
        let placeholders = vec!["?"; mapping.columns.len()].join(", ");
        let writer = SqliteWriter {
            shared: Arc::new(Shared {
                sink: config.name.clone(),
                path: config.path,
                busy_timeout: config.busy_timeout,
                create_table: mapping
                    .create
                    .then(|| mapping.create_table_sql(SqlType::sqlite)),
                insert: format!(
                    "INSERT INTO {} ({}) VALUES ({placeholders}) ON CONFLICT ({}) DO NOTHING",
                    mapping.quoted_name(),
                    mapping.quoted_columns(),
                    mapping.quoted_key()
                ),
            }),
            connection: None,
        };
        let settings = TableSinkSettings::new(config.batch_max_rows, config.linger, config.retry);
        TableSink::start(config.name, mapping, settings, writer, acks)
    }
}

/// Whether the database can take rows (see [`crate::probe`]): opens the file read-write without
/// creating it and prepares a query of the target table, on the blocking pool. A missing file or
/// table is up when the sink would create it (the file always, the table with `create = true`) and
/// its directory exists; nothing is written.
pub(crate) async fn probe(config: &SqliteSinkConfig) -> Result<()> {
    let mapping = TableMapping::new(&config.name, &config.table)?;
    let (sink, path, busy_timeout) = (
        config.name.clone(),
        config.path.clone(),
        config.busy_timeout,
    );
    tokio::task::spawn_blocking(move || {
        probe_blocking(&path, busy_timeout, &mapping).map_err(|(code, message)| Error::Database {
            sink,
            operation: "probe",
            code,
            message: format!("{}: {message}", path.display()),
        })
    })
    .await
    .map_err(|join| Error::Database {
        sink: config.name.clone(),
        operation: "probe",
        code: None,
        message: format!("the blocking probe panicked: {join}"),
    })?
}

/// [`probe`]'s work on the blocking pool; the error is (result code, what is wrong).
fn probe_blocking(
    path: &std::path::Path,
    busy_timeout: Duration,
    mapping: &TableMapping,
) -> std::result::Result<(), (Option<String>, String)> {
    let table = mapping.quoted_name();
    let missing_table =
        || format!("table {table} does not exist; create it or set `create = true`");
    if !path.exists() {
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => std::path::Path::new("."),
        };
        if !directory.is_dir() {
            return Err((
                Some("SQLITE_CANTOPEN".to_owned()),
                format!("the directory {} does not exist", directory.display()),
            ));
        }
        return if mapping.create {
            Ok(())
        } else {
            Err((
                None,
                format!("the database does not exist, so {}", missing_table()),
            ))
        };
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags)
        .and_then(|connection| connection.busy_timeout(busy_timeout).map(|()| connection))
        .map_err(|error| (Some(code_name(&error)), error.to_string()))?;
    match connection.prepare(&format!("SELECT 1 FROM {table} LIMIT 0")) {
        Ok(_) => Ok(()),
        Err(error) if error.to_string().starts_with("no such table") => {
            if mapping.create {
                Ok(())
            } else {
                Err((Some(code_name(&error)), missing_table()))
            }
        }
        Err(error) => Err((Some(code_name(&error)), error.to_string())),
    }
}

/// What the blocking task needs, shared without copying.
#[derive(Debug)]
struct Shared {
    sink: String,
    path: PathBuf,
    busy_timeout: Duration,
    create_table: Option<String>,
    insert: String,
}

/// Writes rows into SQLite for an [`SqliteSink`].
#[derive(Debug)]
pub struct SqliteWriter {
    shared: Arc<Shared>,
    /// Taken by the blocking task while it runs; `None` after a retryable failure, to reopen.
    connection: Option<Connection>,
}

#[async_trait]
impl TableWriter for SqliteWriter {
    async fn write(
        &mut self,
        rows: Arc<Vec<Row>>,
    ) -> std::result::Result<WriteOutcome, WriteError> {
        let shared = Arc::clone(&self.shared);
        let connection = self.connection.take();
        let (connection, outcome) = tokio::task::spawn_blocking(move || {
            let mut connection = match connection.map_or_else(|| open(&shared), Ok) {
                Ok(connection) => connection,
                Err(error) => return (None, Err(failure(&shared, "open", &error))),
            };
            let outcome = load(&mut connection, &shared.insert, &rows)
                .map_err(|error| failure(&shared, "write", &error));
            (Some(connection), outcome)
        })
        .await
        .map_err(|join| {
            WriteError::Fatal(Error::Database {
                sink: self.shared.sink.clone(),
                operation: "write",
                code: None,
                message: format!("the blocking writer panicked: {join}"),
            })
        })?;
        if outcome.is_ok() {
            self.connection = connection;
        }
        outcome
    }
}

fn open(shared: &Shared) -> rusqlite::Result<Connection> {
    let connection = Connection::open(&shared.path)?;
    connection.busy_timeout(shared.busy_timeout)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    if let Some(create) = &shared.create_table {
        connection.execute_batch(create)?;
    }
    Ok(connection)
}

fn load(connection: &mut Connection, insert: &str, rows: &[Row]) -> rusqlite::Result<WriteOutcome> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut failed = Vec::new();
    {
        let mut statement = transaction.prepare(insert)?;
        for (index, row) in rows.iter().enumerate() {
            if let Err(error) = statement.execute(params_from_iter(row.iter())) {
                let code = code_name(&error);
                if !code_is_row_level(&code) {
                    return Err(error);
                }
                failed.push((index, format!("{code} {error}")));
            }
        }
    }
    transaction.commit()?;
    Ok(failed)
}

fn failure(shared: &Shared, operation: &'static str, error: &rusqlite::Error) -> WriteError {
    let code = code_name(error);
    if code_is_retryable(&code) {
        return WriteError::Retryable(format!("{code} {error}"));
    }
    WriteError::Fatal(Error::Database {
        sink: shared.sink.clone(),
        operation,
        code: Some(code),
        message: format!("{} ({}): {error}", shared.path.display(), shared.insert),
    })
}

/// The SQLite result code name of an error, e.g. `SQLITE_CONSTRAINT_NOTNULL`.
fn code_name(error: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode as C;
    let Some(sqlite) = error.sqlite_error() else {
        return "SQLITE_MISUSE".into();
    };
    match (sqlite.code, sqlite.extended_code) {
        (C::ConstraintViolation, 275) => "SQLITE_CONSTRAINT_CHECK".into(),
        (C::ConstraintViolation, 787) => "SQLITE_CONSTRAINT_FOREIGNKEY".into(),
        (C::ConstraintViolation, 1299) => "SQLITE_CONSTRAINT_NOTNULL".into(),
        (C::ConstraintViolation, 1555) => "SQLITE_CONSTRAINT_PRIMARYKEY".into(),
        (C::ConstraintViolation, 2067) => "SQLITE_CONSTRAINT_UNIQUE".into(),
        (C::ConstraintViolation, 3091) => "SQLITE_CONSTRAINT_DATATYPE".into(),
        (C::ConstraintViolation, _) => "SQLITE_CONSTRAINT".into(),
        (C::DatabaseBusy, _) => "SQLITE_BUSY".into(),
        (C::DatabaseLocked, _) => "SQLITE_LOCKED".into(),
        (C::TypeMismatch, _) => "SQLITE_MISMATCH".into(),
        (C::TooBig, _) => "SQLITE_TOOBIG".into(),
        (_, extended) => format!("SQLITE_ERROR_{extended}"),
    }
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Self::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Self::Text(text) | Self::Json(text) => {
                ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes()))
            }
            Self::BigInt(value) => ToSqlOutput::Owned((*value).into()),
            Self::Int(value) => ToSqlOutput::Owned((*value).into()),
            Self::Double(value) => ToSqlOutput::Owned((*value).into()),
            Self::Bool(value) => ToSqlOutput::Owned((*value).into()),
            Self::Timestamp(value) => ToSqlOutput::Owned(
                value
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    .into(),
            ),
            Self::Bytes(bytes) => ToSqlOutput::Borrowed(ValueRef::Blob(bytes)),
        })
    }
}

#[cfg(test)]
mod tests;
