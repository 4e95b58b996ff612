//! The Parquet sink: one open file for the rows of every partition (or, when the path template
//! names `{partition}`, one per partition), encoded in memory as rows arrive, uploaded when it
//! reaches `max_file_bytes` or `max_file_age`, and committed when the upload completes.
//!
//! Encoding (typed-column extraction, Parquet encoding, compression, the footer) runs on tokio's
//! blocking pool, one batch at a time per file, so the async runtime stays free for network I/O
//! and acks.
//!
//! # Why encode in memory and upload at the end
//!
//! A file must never be visible half-written under its final name, and an upload that fails must be
//! retried without losing rows. Encoding into an in-memory Parquet buffer gives both: the finished
//! buffer (compressed, so roughly the file size) is uploaded in one `put` or, above 8 MiB, as a
//! multipart upload whose parts become visible only at `complete` (Azure block list commit, S3
//! `CompleteMultipartUpload`, local filesystem: a staged `path#n` file renamed into place). A failed
//! upload is aborted and retried from the same buffer with capped exponential backoff, forever if
//! the error is retryable. A permanent error (missing container, denied access) fails the file's rows
//! so that the engine dead-letters them; the rows are read back from the file itself, so the engine
//! keeps no copy of them while a file is open ([`Sink::reports_failed_rows`]). While the engine has
//! the endpoint parked ([`Sink::surrender`]), open files close at once and every file hands its rows
//! back the same way instead of retrying, so the engine can park them.
//!
//! # Memory and backpressure
//!
//! Open files and the files being uploaded together hold at most `max_buffered_bytes` (plus the
//! batch being written): over it, `write` waits for an upload to finish, or rolls the largest open
//! file early when none is in flight. A file holds at most `max_file_bytes`, and at most
//! `max_concurrent_uploads` files upload at once. Rolling a file waits for an upload slot, so a slow
//! store makes `write` wait.
//!
//! # File layout
//!
//! Columns are the message schema of `hubroute-message` (see its `columns` module: event hub,
//! partition, sequence number, offset, enqueued time, system properties, `application_properties` as
//! a `map<string,string>` of canonical values, `application_property_types`, `body` as binary, twin),
//! followed by the configured typed columns, rows in write order.
//!
//! By default a file holds the rows of every partition: query engines read fewer, larger files
//! faster, and every open file costs memory of its own (its column writers' page buffers and a
//! Zstandard context, ~1.5 MB), which with one file per partition grew with the partition count
//! (32 partitions × 3 endpoints: 96 open files). A template naming `{partition}` gives each
//! partition its own files, like IoT Hub's storage endpoints; their names then carry the file's
//! first sequence number. Files may finish uploading out of order (`max_concurrent_uploads > 1`).
//! The sink is not idempotent: a replay after a crash writes the replayed rows into a new file.

mod columns;
mod config;
mod path;
mod reader;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arrow::array::AsArray;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hubroute_message::columns as message_columns;
use object_store::ObjectStore;
use object_store::path::Path;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

pub use config::{Compression, ParquetSinkConfig, TypedColumn, TypedColumnType};
pub use reader::read_parquet_file;

use self::columns::FileSchema;
use self::path::{FileName, PathTemplate};
use crate::object_files::{
    RowSet, UploadMemory, UploadOutcome, commit_all, fixed_prefix, probe_store, settle_uncommitted,
    split_by_partition, upload_with_retries,
};
use crate::sink::background;
use crate::{
    AckLedger, AckSender, Error, FlushReason, Result, RetryPolicy, Sink, SinkBatch, Surrender,
    Ticket,
};

/// Rows per row group: small enough to keep the in-progress row group a fraction of the file.
const ROW_GROUP_ROWS: usize = 65_536;

/// The data page bound of every column. An open file buffers each column's page uncompressed until the
/// page closes, so with parquet-rs's default (1 MiB, checked every 1 024 rows: 1.5 MiB and more of
/// ~500-byte bodies, in vectors grown by doubling) 32 partitions × 3 endpoints held ~93 MB of page
/// buffers. Zstandard compresses 128 KiB pages of JSON as well as 1 MiB ones.
const PAGE_BYTES: usize = 128 * 1024;

/// Rows encoded between two checks of the page bounds (parquet-rs checks only between such mini
/// batches): 256 rows of 500-byte bodies are 125 KiB, so a body page closes near its bound.
const WRITE_BATCH_ROWS: usize = 256;

/// The row bound of every data page. A dictionary-encoded column buffers one 8-byte index per row
/// until its page closes, and its encoded size (a few bits per row) never reaches [`PAGE_BYTES`],
/// so only this bound closes it: at parquet-rs's default (20 000 rows, in vectors grown by
/// doubling) the ~10 dictionary columns of 32 partitions × 3 endpoints' open files held 67 MB of
/// index buffers (heaptrack, `benches/e2e/run.py --partitions 32`). 4 096 rows cost one ~30-byte
/// page header per 4 096 values.
const PAGE_ROWS: usize = 4096;

/// Message columns whose values are unique, or nearly, per row: written without a dictionary.
const UNIQUE_PER_ROW: &[&str] = &[
    message_columns::SEQUENCE_NUMBER,
    message_columns::OFFSET,
    message_columns::ENQUEUED_TIME,
    message_columns::MESSAGE_ID,
    message_columns::CORRELATION_ID,
    message_columns::IOTHUB_ENQUEUED_TIME,
    message_columns::BODY,
];

type Writer = Box<ArrowWriter<Vec<u8>>>;

/// The key of the one open file of a template without `{partition}`, in place of a partition id.
const SHARED_FILE: &str = "";

/// A file being filled (a partition's, or the one shared by every partition). Its batches encode on
/// the blocking pool, one at a time per file: batches of different files encode in parallel, off
/// the async runtime.
#[derive(Debug)]
struct OpenFile {
    /// Shared with the task encoding a batch into it, and later with the upload task. Never
    /// contended: the sink touches the writer only once the batch before is encoded ([`settle`]).
    ///
    /// [`settle`]: OpenFile::settle
    writer: Arc<Mutex<Writer>>,
    /// The batch being encoded, if any. Awaited through `&mut`, so a cancelled `write` leaves it in
    /// place.
    encoding: Option<JoinHandle<Result<()>>>,
    event_hub: String,
    opened_at: Instant,
    opened_wall: DateTime<Utc>,
    first_sequence_number: Option<i64>,
    tickets: Vec<(Ticket, RowSet)>,
    /// Memory the file held when its writer last settled: the written row groups' buffer plus the
    /// row group in progress.
    buffered: u64,
}

impl OpenFile {
    /// A new, empty file of sink `sink` for a partition of `event_hub`.
    fn new(
        sink: &str,
        schema: &FileSchema,
        properties: &WriterProperties,
        event_hub: &str,
    ) -> Result<Self> {
        let writer = ArrowWriter::try_new(Vec::new(), schema.schema(), Some(properties.clone()))
            .map_err(|source| Error::Parquet {
                sink: sink.to_owned(),
                path: "(new file)".to_owned(),
                source: Box::new(source),
            })?;
        Ok(Self {
            writer: Arc::new(Mutex::new(Box::new(writer))),
            encoding: None,
            event_hub: event_hub.to_owned(),
            opened_at: Instant::now(),
            opened_wall: Utc::now(),
            first_sequence_number: None,
            tickets: Vec::new(),
            buffered: 0,
        })
    }

    /// Waits for the batch being encoded, if any.
    async fn settle(&mut self) -> Result<()> {
        if let Some(encoding) = &mut self.encoding {
            let result = match encoding.await {
                Ok(result) => result,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            };
            self.encoding = None;
            result?;
        }
        Ok(())
    }

    /// Waits for the batch before, then starts encoding `batch` on the blocking pool.
    async fn encode(
        &mut self,
        batch: RecordBatch,
        schema: Arc<FileSchema>,
        sink: Arc<str>,
    ) -> Result<()> {
        self.settle().await?;
        let writer = Arc::clone(&self.writer);
        self.encoding = Some(tokio::task::spawn_blocking(move || {
            let projected = schema.project(&batch, &sink)?;
            lock(&writer)
                .write(&projected)
                .map_err(|source| Error::Parquet {
                    sink: sink.to_string(),
                    path: "(open file)".to_owned(),
                    source: Box::new(source),
                })
        }));
        Ok(())
    }

    /// `(memory held, encoded size)` of a settled file.
    fn footprint(&self) -> (u64, u64) {
        let writer = lock(&self.writer);
        (
            (writer.inner().capacity() + writer.memory_size()) as u64,
            (writer.bytes_written() + writer.in_progress_size()) as u64,
        )
    }
}

/// The writer, whoever held it last: a panic while encoding was already raised by
/// [`OpenFile::settle`], so a poisoned lock has nothing more to say.
fn lock(writer: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    writer.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one upload task needs.
#[derive(Debug)]
struct Upload {
    sink: Arc<str>,
    store: Arc<dyn ObjectStore>,
    path: Path,
    /// The file's writer; the upload task writes the footer off the runtime.
    writer: Arc<Mutex<Writer>>,
    tickets: Vec<(Ticket, RowSet)>,
    ledger: AckLedger,
    retry: RetryPolicy,
    /// Raised: stop retrying and hand the rows back.
    surrender: Surrender,
    /// Held until the upload settles: bounds uploads in flight.
    _slot: OwnedSemaphorePermit,
    /// The file's memory, counted against `max_buffered_bytes` until the upload settles.
    _memory: UploadMemory,
}

/// Writes routed messages as Parquet files on an object store. See the module documentation.
#[derive(Debug)]
pub struct ParquetSink {
    name: Arc<str>,
    config: ParquetSinkConfig,
    store: Arc<dyn ObjectStore>,
    template: PathTemplate,
    schema: Arc<FileSchema>,
    properties: WriterProperties,
    ledger: AckLedger,
    /// Open files by partition, or the one shared file under [`SHARED_FILE`] when the template
    /// has no `{partition}`.
    open: BTreeMap<String, OpenFile>,
    /// Keys of `open` seen without an open file: (event hub, when the last file was rolled), for
    /// `write_empty_files`.
    idle: BTreeMap<String, (String, Instant)>,
    uploads: JoinSet<Result<()>>,
    /// One permit per upload in flight; rolling a file waits for one (backpressure).
    upload_slots: Arc<Semaphore>,
    /// Memory of the files being uploaded, counted against `max_buffered_bytes`.
    uploading: Arc<AtomicU64>,
    /// Raised by the engine while the endpoint is parked: files close at once and hand their rows
    /// back instead of uploading.
    surrender: Surrender,
}

impl ParquetSink {
    /// Builds the sink and its object store from `config`.
    pub fn new(config: ParquetSinkConfig, acks: AckSender) -> Result<Self> {
        let store = config.store.build(&config.name)?;
        Self::with_store(config, store, acks)
    }

    /// Checks `config` without touching its store (what `hubroute check` runs): the path template,
    /// the typed columns and the limits.
    pub(crate) fn validate(config: &ParquetSinkConfig) -> Result<(PathTemplate, FileSchema)> {
        let template = PathTemplate::parse(&config.name, &config.path_template)?;
        let schema = FileSchema::new(&config.name, &config.columns)?;
        if config.max_concurrent_uploads == 0
            || config.max_file_bytes == 0
            || config.max_buffered_bytes == 0
        {
            return Err(Error::Config {
                sink: config.name.clone(),
                problem:
                    "max_concurrent_uploads, max_file_bytes and max_buffered_bytes must be at \
                          least 1"
                        .to_owned(),
            });
        }
        Ok((template, schema))
    }

    /// Whether the endpoint's store can take files: one `head` under the path template's fixed
    /// prefix (see [`crate::probe`]).
    pub(crate) async fn probe(config: &ParquetSinkConfig) -> Result<()> {
        Self::validate(config)?;
        probe_store(
            &config.name,
            &config.store,
            &fixed_prefix(&config.path_template),
        )
        .await
    }

    /// Builds the sink over an existing store (`config.store` is ignored): for custom or
    /// instrumented stores.
    pub fn with_store(
        config: ParquetSinkConfig,
        store: Arc<dyn ObjectStore>,
        acks: AckSender,
    ) -> Result<Self> {
        let (template, schema) = Self::validate(&config)?;
        let schema = Arc::new(schema);
        // Zstandard goes where the bytes are, the body; the other columns (dictionary-encoded or
        // small) use Snappy. parquet-rs keeps zstd contexts (~160 KB) for every zstd column of every
        // open file: with every column in zstd, 32 partitions × 3 endpoints held 155 MB of them.
        let (compression, body_compression) = match config.compression {
            Compression::Zstd => (
                ParquetCompression::SNAPPY,
                ParquetCompression::ZSTD(ZstdLevel::default()),
            ),
            Compression::Snappy => (ParquetCompression::SNAPPY, ParquetCompression::SNAPPY),
            Compression::None => (
                ParquetCompression::UNCOMPRESSED,
                ParquetCompression::UNCOMPRESSED,
            ),
        };
        let mut properties = WriterProperties::builder()
            .set_compression(compression)
            .set_column_compression(ColumnPath::from(message_columns::BODY), body_compression)
            .set_data_page_size_limit(PAGE_BYTES)
            .set_data_page_row_count_limit(PAGE_ROWS)
            .set_write_batch_size(WRITE_BATCH_ROWS)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
        // Columns whose values are (nearly) unique per row gain nothing from a dictionary: building
        // one and then giving up on it was a fifth of the encoding time.
        for column in UNIQUE_PER_ROW {
            properties = properties.set_column_dictionary_enabled(ColumnPath::from(*column), false);
        }
        // Minimum and maximum of JSON bodies prune nothing, and computing them compared every body
        // with two others (memcmp was 3 % of the engine's instructions).
        properties = properties.set_column_statistics_enabled(
            ColumnPath::from(message_columns::BODY),
            EnabledStatistics::None,
        );
        // Nor do those of the property maps' keys and values: one minimum over every property's
        // value says nothing about any one property (a filter on `severity` cannot use it).
        for map in [
            message_columns::APPLICATION_PROPERTIES,
            message_columns::APPLICATION_PROPERTY_TYPES,
        ] {
            for leaf in ["key", "value"] {
                properties = properties.set_column_statistics_enabled(
                    ColumnPath::new(vec![map.to_owned(), "entries".to_owned(), leaf.to_owned()]),
                    EnabledStatistics::None,
                );
            }
        }
        let properties = properties.build();
        Ok(Self {
            name: config.name.as_str().into(),
            ledger: AckLedger::new(&config.name, acks),
            upload_slots: Arc::new(Semaphore::new(config.max_concurrent_uploads)),
            config,
            store,
            template,
            schema,
            properties,
            open: BTreeMap::new(),
            idle: BTreeMap::new(),
            uploads: JoinSet::new(),
            uploading: Arc::default(),
            surrender: Surrender::default(),
        })
    }

    /// Appends rows of a ticket to the file of `partition` (or [`SHARED_FILE`]). A file that reached
    /// `max_file_bytes` with its previous batch is rolled first, so files overshoot the limit by at
    /// most one batch.
    async fn append(
        &mut self,
        ticket: Ticket,
        partition: &str,
        batch: RecordBatch,
        rows: RowSet,
    ) -> Result<()> {
        let event_hub = batch
            .column_by_name(message_columns::EVENT_HUB)
            .map(|c| c.as_string::<i32>().value(0).to_owned())
            .unwrap_or_default();
        let first_sequence_number = batch
            .column_by_name(message_columns::SEQUENCE_NUMBER)
            .map(|c| c.as_primitive::<arrow::datatypes::Int64Type>().value(0));
        if let Some(file) = self.open.get_mut(partition) {
            file.settle().await?;
            let (memory, size) = file.footprint();
            file.buffered = memory;
            if size >= self.config.max_file_bytes {
                self.roll(partition).await?;
            }
        }
        self.keep_within_budget().await?;
        let file = match self.open.entry(partition.to_owned()) {
            Entry::Occupied(file) => file.into_mut(),
            Entry::Vacant(slot) => {
                self.idle.remove(partition);
                slot.insert(OpenFile::new(
                    &self.name,
                    &self.schema,
                    &self.properties,
                    &event_hub,
                )?)
            }
        };
        file.settle().await?;
        file.first_sequence_number = file.first_sequence_number.or(first_sequence_number);
        self.ledger.add_part(ticket);
        file.tickets.push((ticket, rows));
        file.encode(batch, Arc::clone(&self.schema), Arc::clone(&self.name))
            .await
    }

    /// Keeps the memory of open files and uploads in flight within `max_buffered_bytes`: while
    /// over it, waits for an upload to finish, or with none in flight rolls the largest open file
    /// (with many partitions active, files close smaller than `max_file_bytes` rather than memory
    /// growing with the partition count). The wait is backpressure: `write` does not resolve.
    async fn keep_within_budget(&mut self) -> Result<()> {
        loop {
            let open: u64 = self.open.values().map(|f| f.buffered).sum();
            let uploading = self.uploading.load(Ordering::Acquire);
            if open + uploading <= self.config.max_buffered_bytes {
                return Ok(());
            }
            if uploading > 0 {
                match self.uploads.join_next().await {
                    Some(done) => background::finished(done)?,
                    None => return Ok(()),
                }
                continue;
            }
            let Some(largest) = self
                .open
                .iter()
                .max_by_key(|(_, file)| file.buffered)
                .map(|(partition, _)| partition.clone())
            else {
                return Ok(());
            };
            self.roll(&largest).await?;
        }
    }

    /// Closes the file of `partition` (or [`SHARED_FILE`]), or writes an empty one, and starts its
    /// upload. Cancel-safe:
    /// every await comes before the file leaves `open`.
    async fn roll(&mut self, partition: &str) -> Result<()> {
        let slot = Arc::clone(&self.upload_slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        if let Some(file) = self.open.get_mut(partition) {
            file.settle().await?;
        }
        let (file, empty) = match self.open.remove(partition) {
            Some(file) => (file, false),
            None => {
                let Some((event_hub, _)) = self.idle.get(partition).cloned() else {
                    return Ok(());
                };
                let file = OpenFile::new(&self.name, &self.schema, &self.properties, &event_hub)?;
                (file, true)
            }
        };
        let OpenFile {
            writer,
            event_hub,
            opened_wall,
            first_sequence_number,
            tickets,
            buffered,
            ..
        } = file;
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let path = self.template.render(&FileName {
            iothub: self.config.iothub.as_deref().unwrap_or(&event_hub),
            partition,
            opened: opened_wall,
            endpoint: &self.name,
            first_sequence_number: (!empty).then_some(first_sequence_number).flatten(),
            unique: &unique[..12],
        })?;
        self.idle
            .insert(partition.to_owned(), (event_hub, Instant::now()));
        self.uploads.spawn(
            Upload {
                sink: Arc::clone(&self.name),
                store: Arc::clone(&self.store),
                path,
                writer,
                tickets,
                ledger: self.ledger.clone(),
                retry: self.config.retry,
                surrender: self.surrender.clone(),
                _slot: slot,
                _memory: UploadMemory::hold(&self.uploading, buffered),
            }
            .run(),
        );
        self.reap()
    }

    /// Surfaces the outcome of finished upload tasks (only a closed ack channel is an error).
    fn reap(&mut self) -> Result<()> {
        while let Some(done) = self.uploads.try_join_next() {
            background::finished(done)?;
        }
        Ok(())
    }
}

impl Upload {
    async fn run(self) -> Result<()> {
        let writer = self.writer;
        let finished = tokio::task::spawn_blocking(move || {
            let mut writer = lock(&writer);
            writer.finish()?;
            Ok::<_, parquet::errors::ParquetError>(Bytes::from(std::mem::take(writer.inner_mut())))
        })
        .await;
        let parquet_error = |source| Error::Parquet {
            sink: self.sink.to_string(),
            path: self.path.to_string(),
            source: Box::new(source),
        };
        let bytes = match finished {
            Ok(Ok(bytes)) => bytes,
            // The rows exist only in this file: without it they cannot be dead-lettered, so the
            // sink stops and the engine never checkpoints them (they are read again after a restart).
            Ok(Err(source)) => return Err(parquet_error(source)),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let outcome = upload_with_retries(
            &self.sink,
            self.store.as_ref(),
            &self.path,
            &bytes,
            self.retry,
            &self.surrender,
        )
        .await;
        if outcome == UploadOutcome::Committed {
            return commit_all(&self.ledger, self.tickets).await;
        }
        let rows = read_back(&bytes).map_err(parquet_error)?;
        settle_uncommitted(&self.ledger, self.tickets, &outcome, &rows).await
    }
}

/// The message columns of every row of an encoded file, in file order: how a file whose upload
/// failed (or was surrendered) gives its rows back for the dead-letter store.
fn read_back(bytes: &Bytes) -> std::result::Result<RecordBatch, parquet::errors::ParquetError> {
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes.clone())?
            .build()?;
    let message_columns: Vec<usize> =
        (0..hubroute_message::message_schema().fields().len()).collect();
    let batches = reader
        .map(|batch| batch.and_then(|batch| batch.project(&message_columns)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(arrow::compute::concat_batches(
        &hubroute_message::message_schema(),
        &batches,
    )?)
}

#[async_trait]
impl Sink for ParquetSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn idempotent(&self) -> bool {
        false
    }

    fn reports_failed_rows(&self) -> bool {
        true
    }

    fn surrender(&self) -> Option<Surrender> {
        Some(self.surrender.clone())
    }

    async fn write(&mut self, batch: SinkBatch) -> Result<()> {
        let SinkBatch { ticket, batch } = batch;
        self.ledger.open(ticket);
        if batch.num_rows() > 0 {
            if self.template.per_partition() {
                for (partition, part, rows) in split_by_partition(&batch, &self.name)? {
                    self.append(ticket, &partition, part, rows).await?;
                }
            } else {
                let rows = RowSet::All(batch.num_rows());
                self.append(ticket, SHARED_FILE, batch, rows).await?;
            }
        }
        self.ledger.settle(ticket, Vec::new()).await?;
        self.reap()
    }

    fn flush_deadline(&self) -> Option<Instant> {
        if self.surrender.is_raised() && !self.open.is_empty() {
            return Some(Instant::now());
        }
        let age = self.config.max_file_age;
        let open = self.open.values().map(|f| f.opened_at + age);
        let idle = self
            .idle
            .values()
            .filter(|_| self.config.write_empty_files)
            .map(|(_, rolled)| *rolled + age);
        open.chain(idle).min()
    }

    async fn flush(&mut self, reason: FlushReason) -> Result<()> {
        let now = Instant::now();
        let age = self.config.max_file_age;
        let close_all = reason == FlushReason::Shutdown || self.surrender.is_raised();
        let due: Vec<String> = self
            .open
            .iter()
            .filter(|(_, f)| close_all || f.opened_at + age <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for partition in due {
            self.roll(&partition).await?;
        }
        if reason == FlushReason::Deadline && self.config.write_empty_files {
            let quiet: Vec<String> = self
                .idle
                .iter()
                .filter(|(p, (_, rolled))| !self.open.contains_key(*p) && *rolled + age <= now)
                .map(|(p, _)| p.clone())
                .collect();
            for partition in quiet {
                self.roll(&partition).await?;
            }
        }
        if reason == FlushReason::Shutdown {
            while let Some(done) = self.uploads.join_next().await {
                background::finished(done)?;
            }
        }
        self.reap()
    }

    async fn stopped(&mut self) -> Error {
        background::first_failure(&mut self.uploads).await
    }
}

#[cfg(test)]
mod tests;
