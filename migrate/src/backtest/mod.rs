//! Backtesting a configuration's routes on archived messages (`hubroute route test --input`):
//! what would these routes have done on last week's data?
//!
//! Each input is read into message batches by the reader of its format, told apart by content,
//! not by name: IoT Hub storage Avro (the Avro magic) and JSON lines (records with
//! `EnqueuedTimeUtc`), hubroute's Parquet files (`PAR1`), and the saved output of
//! `az iot hub monitor-events` (objects with an `event` member). Every batch goes through the
//! engine's compiled [`RoutingTable`] whole ([`RoutingTable::decide`]): the conditions are
//! evaluated over the batch's Arrow columns, exactly as the running engine routes, never one
//! message at a time. The report counts, per route, the messages it matched and those whose
//! condition was `undefined`, the fallback's, and the messages that reached no endpoint, each with
//! a few example message ids.
//!
//! Archived messages carry no twins: without a [`TwinSet`] (`--twins`, the hub's twin query
//! output) `$twin` conditions are `undefined`. Storage records do not say which route source a
//! message came from, so they count as device messages.

mod monitor_events;
mod report;
mod twins;

use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::{Array, RecordBatch};
use hubroute_engine::routing::RoutingTable;
use hubroute_message::MessageColumns;

pub use report::{Outcome, Report, RouteOutcome};
pub use twins::TwinSet;

use crate::{Error, Result};

/// Rows per batch: the engine's default `batch_max_rows`.
const BATCH_ROWS: usize = 8192;

/// The formats `route test --input` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    StorageAvro,
    StorageJson,
    Parquet,
    MonitorEvents,
}

impl Format {
    /// The format of a file, from its first bytes.
    fn of(bytes: &[u8]) -> Self {
        if hubroute_sinks::is_avro(bytes) {
            return Self::StorageAvro;
        }
        if bytes.starts_with(b"PAR1") {
            return Self::Parquet;
        }
        // The first JSON value tells a monitor-events capture from storage JSON lines.
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64 * 1024)]);
        let start = text.find('{').unwrap_or(0);
        let mut values =
            serde_json::Deserializer::from_str(&text[start..]).into_iter::<serde_json::Value>();
        match values.next() {
            Some(Ok(value)) if monitor_events::is_monitor_event(&value) => Self::MonitorEvents,
            // A first value cut off by the sample, or anything else: storage lines hold no
            // `{"event": …` objects, and their reader reports what it finds.
            _ if text[start..]
                .trim_start_matches(['{', ' ', '\n', '\r', '\t'])
                .starts_with("\"event\"") =>
            {
                Self::MonitorEvents
            }
            _ => Self::StorageJson,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::StorageAvro => "IoT Hub storage Avro",
            Self::StorageJson => "IoT Hub storage JSON",
            Self::Parquet => "hubroute Parquet",
            Self::MonitorEvents => "az iot hub monitor-events",
        }
    }
}

/// Routes every message of `inputs` through `table`, with `twins` attached when given, and counts
/// the outcomes, keeping up to `examples` message ids per outcome.
pub fn backtest(
    table: &RoutingTable,
    inputs: &[impl AsRef<Path>],
    twins: Option<&TwinSet>,
    examples: usize,
) -> Result<Report> {
    let started = Instant::now();
    let mut report = Report::new(table, examples);
    let mut routing = Duration::ZERO;
    for input in inputs {
        let path = input.as_ref();
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            file: file.clone(),
            source,
        })?;
        let format = Format::of(&bytes);
        let mut route = |batch: RecordBatch| -> Result<(), hubroute_sinks::Error> {
            let batch = match twins {
                Some(twins) => {
                    twins
                        .attach(&batch)
                        .map_err(|e| hubroute_sinks::Error::Archive {
                            file: file.clone(),
                            record: 0,
                            problem: format!("attaching twins failed: {e}"),
                        })?
                }
                None => batch,
            };
            let started = Instant::now();
            let decisions = table
                .decide(&batch)
                .map_err(|e| hubroute_sinks::Error::Archive {
                    file: file.clone(),
                    record: 0,
                    problem: format!("routing failed: {e}"),
                })?;
            routing += started.elapsed();
            let columns = MessageColumns::try_new(&batch)?;
            report.add(&decisions, batch.num_rows(), |row| {
                let ids = columns.message_id;
                if ids.is_valid(row) {
                    ids.value(row).to_owned()
                } else {
                    format!("{file}#{}", columns.sequence_number.value(row))
                }
            });
            Ok(())
        };
        let messages = match format {
            Format::StorageAvro | Format::StorageJson => {
                hubroute_sinks::read_storage_file(&file, &bytes, BATCH_ROWS, &mut route)?
            }
            Format::Parquet => hubroute_sinks::read_parquet_file(
                &file,
                bytes::Bytes::from(bytes),
                BATCH_ROWS,
                &mut route,
            )?,
            Format::MonitorEvents => {
                let text = std::str::from_utf8(&bytes).map_err(|e| Error::Input {
                    file: file.clone(),
                    record: 0,
                    problem: format!("not UTF-8 text: {e}"),
                })?;
                monitor_events::read_monitor_events(&file, text, BATCH_ROWS, |batch| {
                    route(batch).map_err(Error::from)
                })?
            }
        };
        report.files.push((file, format.name(), messages));
    }
    report.elapsed = started.elapsed();
    report.routing = routing;
    Ok(report)
}

/// One message for `hubroute route test --message`, when the file is an IoT Hub storage JSON
/// record or an `az iot hub monitor-events` event: a one-row message batch. `None` when it is
/// neither (the caller tries its own format).
pub fn single_message(file: &str, text: &str) -> Result<Option<RecordBatch>> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return Ok(None);
    };
    if monitor_events::is_monitor_event(&value) {
        return monitor_events::monitor_event_batch(file, &value).map(Some);
    }
    if value.get("EnqueuedTimeUtc").is_some() {
        return Ok(Some(hubroute_sinks::storage_json_record(file, text)?));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_apart_by_content() {
        let cases: [(&[u8], Format); 5] = [
            (b"Obj\x01rest", Format::StorageAvro),
            (b"PAR1rest", Format::Parquet),
            (
                b"{\"EnqueuedTimeUtc\":\"2024-01-01T00:00:00Z\"}\n",
                Format::StorageJson,
            ),
            (
                b"Starting event monitor...\n{\n    \"event\": {\"origin\": \"d\"}\n}\n",
                Format::MonitorEvents,
            ),
            (b"{\"event\": {\"payload\": \"cut", Format::MonitorEvents),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                Format::of(bytes),
                expected,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
