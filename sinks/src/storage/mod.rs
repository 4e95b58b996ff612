//! The storage sink: IoT Hub's storage endpoint, byte for byte. Files of IoT Hub's record schema
//! (`Microsoft.Azure.Devices.Message`) in Avro, Avro Deflate or JSON lines, named by IoT Hub's
//! `fileNameFormat`, written per partition every `batch_frequency` or `max_chunk_bytes`, with an
//! empty file for a partition that received nothing in a window. A Stream Analytics, Databricks or
//! Data Factory job that reads a hub's storage endpoint reads these files unchanged.
//!
//! The machinery is the Parquet sink's (see `object_files`): one open file per partition, encoded
//! in memory on tokio's blocking pool one batch at a time (partitions encode in parallel and the
//! runtime stays free for I/O), uploaded whole when it rolls, and committed, which is when its
//! tickets are acked, only once the upload completed under its final name. A failed upload is
//! retried from the same buffer while the error is retryable; a permanent error (missing container,
//! denied access) fails the file's rows so that the engine dead-letters them; while the engine has
//! the endpoint parked ([`Sink::surrender`]), open files close at once and every file hands its rows
//! back instead of retrying, so the engine can park them. A file keeps the rows
//! it holds (the batches as written, not a copy) until it is committed and hands them back with the
//! failure ([`Sink::reports_failed_rows`]): IoT Hub's record drops what a dead letter needs
//! (sequence numbers, property types), so the file cannot give them back itself.
//!
//! # Names
//!
//! A file is named when its upload starts, from the UTC start of its window. The name is never one
//! that exists already (checked with `head`) or that another upload of this sink holds: a second
//! file in the same minute of a partition gets a numbered name (see `name`). That keeps every file a
//! replay writes after a crash, as the sink is not idempotent: replayed rows land in a new file.
//!
//! # Memory and backpressure
//!
//! Open files (their encoded bytes and the rows they keep) and the files being uploaded together
//! hold at most `max_buffered_bytes` (plus the batch being written): over it, `write` waits for an
//! upload to finish, or rolls the largest open file early when none is in flight, so with many
//! partitions active files close smaller than `max_chunk_bytes` rather than memory growing with the
//! partition count. At most `max_concurrent_uploads` files upload at once; rolling a file waits for
//! an upload slot, so a slow store makes `write` wait.

mod config;
mod name;
mod reader;
mod record;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::AsArray;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hubroute_message::{MessageColumns, columns as message_columns};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

pub use config::{StorageEncoding, StorageSinkConfig};
pub use reader::{is_avro, read_storage_file, storage_json_record};

use self::name::{FileName, FileNameFormat};
use self::record::FileEncoder;
use crate::error::object_store_error_is_retryable;
use crate::object_files::{
    RowSet, UploadMemory, UploadOutcome, commit_all, fixed_prefix, probe_store, settle_uncommitted,
    split_by_partition, upload_with_retries,
};
use crate::sink::background;
use crate::{
    AckLedger, AckSender, Error, FlushReason, Result, RetryPolicy, Sink, SinkBatch, Surrender,
    Ticket,
};

type Encoder = Box<FileEncoder>;

/// A partition's file being filled. Its encoder is either here (idle) or on the blocking pool
/// encoding a batch.
#[derive(Debug)]
struct OpenFile {
    /// `Some` while idle; exactly one of `encoder` and `encoding` is `Some`.
    encoder: Option<Encoder>,
    /// The encoding in progress. Awaited through `&mut`, so a cancelled `write` leaves it in place.
    encoding: Option<JoinHandle<(Encoder, Result<()>)>>,
    event_hub: String,
    opened_at: Instant,
    window: DateTime<Utc>,
    tickets: Vec<(Ticket, RowSet)>,
    /// The rows of `tickets`, in file order: handed back if the file fails.
    rows: Vec<RecordBatch>,
    /// Memory of `rows`.
    rows_bytes: u64,
    /// The encoder's size when it last settled.
    encoded_bytes: u64,
}

impl OpenFile {
    /// Memory the file holds: its rows, and its encoded bytes as of its last settled batch.
    fn buffered(&self) -> u64 {
        self.encoded_bytes + self.rows_bytes
    }

    /// Waits for the batch being encoded, if any, and returns the idle encoder.
    async fn settle(&mut self) -> Result<&mut Encoder> {
        if let Some(encoding) = &mut self.encoding {
            let (encoder, result) = match encoding.await {
                Ok(done) => done,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            };
            self.encoding = None;
            self.encoded_bytes = encoder.len() as u64;
            self.encoder = Some(encoder);
            result?;
        }
        Ok(self
            .encoder
            .as_mut()
            .expect("a settled file has its encoder"))
    }

    /// Keeps `batch` with the file and starts encoding it on the blocking pool. The file must be
    /// settled.
    fn encode(&mut self, batch: RecordBatch, sink: Arc<str>) {
        let mut encoder = self.encoder.take().expect("encode follows settle");
        self.rows_bytes += batch.get_array_memory_size() as u64;
        self.rows.push(batch.clone());
        self.encoding = Some(tokio::task::spawn_blocking(move || {
            let result = MessageColumns::try_new(&batch)
                .map_err(Error::from)
                .and_then(|columns| {
                    encoder.append(&columns).map_err(|source| Error::Avro {
                        sink: sink.to_string(),
                        source: Box::new(source),
                    })
                });
            (encoder, result)
        }));
    }
}

/// A partition between files: what its next empty file needs.
#[derive(Debug, Clone)]
struct Idle {
    event_hub: String,
    /// When the current window started (the last file was rolled).
    since: Instant,
    window: DateTime<Utc>,
}

/// Blob names held by uploads in flight, so that two files of this sink never take one name.
type ClaimedNames = Arc<Mutex<HashSet<String>>>;

/// What one upload task needs.
#[derive(Debug)]
struct Upload {
    sink: Arc<str>,
    store: Arc<dyn ObjectStore>,
    format: Arc<FileNameFormat>,
    iothub: String,
    partition: String,
    window: DateTime<Utc>,
    claimed: ClaimedNames,
    /// The file's encoder; the upload task finishes it (last Avro block) off the runtime.
    encoder: Encoder,
    tickets: Vec<(Ticket, RowSet)>,
    /// The rows of `tickets`, in file order.
    rows: Vec<RecordBatch>,
    ledger: AckLedger,
    retry: RetryPolicy,
    /// Raised: stop retrying and hand the rows back.
    surrender: Surrender,
    /// Held until the upload settles: bounds uploads in flight.
    _slot: OwnedSemaphorePermit,
    /// The file's memory, counted against `max_buffered_bytes` until the upload settles.
    _memory: UploadMemory,
}

/// Writes routed messages as IoT Hub storage-endpoint files. See the module documentation.
#[derive(Debug)]
pub struct StorageSink {
    name: Arc<str>,
    config: StorageSinkConfig,
    store: Arc<dyn ObjectStore>,
    format: Arc<FileNameFormat>,
    ledger: AckLedger,
    open: BTreeMap<String, OpenFile>,
    /// Partitions seen, without an open file, for `write_empty_files`.
    idle: BTreeMap<String, Idle>,
    /// Size of each partition's last file: the buffer reserved for its next one.
    last_file_bytes: BTreeMap<String, usize>,
    claimed: ClaimedNames,
    uploads: JoinSet<Result<()>>,
    /// One permit per upload in flight; rolling a file waits for one (backpressure).
    upload_slots: Arc<Semaphore>,
    /// Memory of the files being uploaded, counted against `max_buffered_bytes`.
    uploading: Arc<AtomicU64>,
    /// Raised by the engine while the endpoint is parked: files close at once and hand their rows
    /// back instead of uploading.
    surrender: Surrender,
}

impl StorageSink {
    /// Builds the sink and its object store from `config`.
    pub fn new(config: StorageSinkConfig, acks: AckSender) -> Result<Self> {
        let store = config.store.build(&config.name)?;
        Self::with_store(config, store, acks)
    }

    /// Whether the endpoint's store can take files: one `head` under the file name format's
    /// fixed prefix (see [`crate::probe`]).
    pub(crate) async fn probe(config: &StorageSinkConfig) -> Result<()> {
        probe_store(
            &config.name,
            &config.store,
            &fixed_prefix(&config.file_name_format),
        )
        .await
    }

    /// Builds the sink over an existing store (`config.store` is ignored): for custom or
    /// instrumented stores.
    pub fn with_store(
        config: StorageSinkConfig,
        store: Arc<dyn ObjectStore>,
        acks: AckSender,
    ) -> Result<Self> {
        let config_error = |problem: String| Error::Config {
            sink: config.name.clone(),
            problem,
        };
        let format = FileNameFormat::parse(&config.file_name_format).map_err(config_error)?;
        if config.max_concurrent_uploads == 0
            || config.max_chunk_bytes == 0
            || config.max_buffered_bytes == 0
            || config.batch_frequency.is_zero()
        {
            return Err(config_error(
                "max_concurrent_uploads, max_chunk_bytes, max_buffered_bytes and batch_frequency \
                 must be positive"
                    .to_owned(),
            ));
        }
        FileEncoder::new(config.encoding, 0).map_err(|source| Error::Avro {
            sink: config.name.clone(),
            source: Box::new(source),
        })?;
        Ok(Self {
            name: config.name.as_str().into(),
            ledger: AckLedger::new(&config.name, acks),
            upload_slots: Arc::new(Semaphore::new(config.max_concurrent_uploads)),
            config,
            store,
            format: Arc::new(format),
            open: BTreeMap::new(),
            idle: BTreeMap::new(),
            last_file_bytes: BTreeMap::new(),
            claimed: ClaimedNames::default(),
            uploads: JoinSet::new(),
            uploading: Arc::default(),
            surrender: Surrender::default(),
        })
    }

    fn open_file(
        &self,
        partition: &str,
        event_hub: &str,
        window: DateTime<Utc>,
    ) -> Result<OpenFile> {
        let capacity = self.last_file_bytes.get(partition).copied().unwrap_or(0);
        let capacity =
            capacity.min(usize::try_from(self.config.max_chunk_bytes).unwrap_or(usize::MAX));
        let encoder =
            FileEncoder::new(self.config.encoding, capacity).map_err(|source| Error::Avro {
                sink: self.name.to_string(),
                source: Box::new(source),
            })?;
        Ok(OpenFile {
            encoder: Some(Box::new(encoder)),
            encoding: None,
            event_hub: event_hub.to_owned(),
            opened_at: Instant::now(),
            window,
            tickets: Vec::new(),
            rows: Vec::new(),
            rows_bytes: 0,
            encoded_bytes: 0,
        })
    }

    /// Appends one partition's rows of a ticket to that partition's file. A file that reached
    /// `max_chunk_bytes` with its previous batch is rolled first.
    async fn append(
        &mut self,
        ticket: Ticket,
        partition: &str,
        batch: RecordBatch,
        rows: RowSet,
    ) -> Result<()> {
        if let Some(file) = self.open.get_mut(partition) {
            let encoder = file.settle().await?;
            if encoder.len() as u64 >= self.config.max_chunk_bytes {
                self.roll(partition).await?;
            }
        }
        self.keep_within_budget().await?;
        if !self.open.contains_key(partition) {
            let event_hub = batch
                .column_by_name(message_columns::EVENT_HUB)
                .and_then(|c| c.as_string_opt::<i32>())
                .map(|c| c.value(0).to_owned())
                .unwrap_or_default();
            let file = self.open_file(partition, &event_hub, Utc::now())?;
            self.open.insert(partition.to_owned(), file);
            self.idle.remove(partition);
        }
        let file = self.open.get_mut(partition).expect("inserted above");
        file.settle().await?;
        self.ledger.add_part(ticket);
        file.tickets.push((ticket, rows));
        file.encode(batch, Arc::clone(&self.name));
        Ok(())
    }

    /// Keeps the memory of open files and uploads in flight within `max_buffered_bytes`: while
    /// over it, waits for an upload to finish, or with none in flight rolls the largest open file.
    /// The wait is backpressure: `write` does not resolve.
    async fn keep_within_budget(&mut self) -> Result<()> {
        loop {
            let mut open = 0;
            let mut largest: Option<(&String, u64)> = None;
            for (partition, file) in &self.open {
                let buffered = file.buffered();
                open += buffered;
                if largest.is_none_or(|(_, most)| buffered > most) {
                    largest = Some((partition, buffered));
                }
            }
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
            let Some((largest, _)) = largest else {
                return Ok(());
            };
            let largest = largest.clone();
            self.roll(&largest).await?;
        }
    }

    /// Closes the partition's file (or writes an empty one for an idle partition) and starts its
    /// upload. Cancel-safe: every await comes before the file leaves `open`.
    async fn roll(&mut self, partition: &str) -> Result<()> {
        let slot = Arc::clone(&self.upload_slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        if let Some(file) = self.open.get_mut(partition) {
            file.settle().await?;
        }
        let file = match self.open.remove(partition) {
            Some(file) => file,
            None => {
                let Some(idle) = self.idle.get(partition).cloned() else {
                    return Ok(());
                };
                self.open_file(partition, &idle.event_hub, idle.window)?
            }
        };
        let buffered = file.buffered();
        let OpenFile {
            encoder,
            event_hub,
            window,
            tickets,
            rows,
            ..
        } = file;
        let encoder = encoder.expect("settled above");
        if !tickets.is_empty() {
            self.last_file_bytes
                .insert(partition.to_owned(), encoder.len());
        }
        let iothub = self
            .config
            .iothub
            .clone()
            .unwrap_or_else(|| event_hub.clone());
        self.idle.insert(
            partition.to_owned(),
            Idle {
                event_hub,
                since: Instant::now(),
                window: Utc::now(),
            },
        );
        self.uploads.spawn(
            Upload {
                sink: Arc::clone(&self.name),
                store: Arc::clone(&self.store),
                format: Arc::clone(&self.format),
                iothub,
                partition: partition.to_owned(),
                window,
                claimed: Arc::clone(&self.claimed),
                encoder,
                tickets,
                rows,
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
        let encoder = self.encoder;
        let finished = tokio::task::spawn_blocking(move || encoder.finish()).await;
        let bytes = match finished {
            Ok(Ok(bytes)) => Bytes::from(bytes),
            Ok(Err(error)) => {
                let error = format!(
                    "encoding a file of partition {} failed: {error}",
                    self.partition
                );
                let outcome = UploadOutcome::Failed(error);
                return settle(&self.sink, &self.ledger, self.tickets, &outcome, &self.rows).await;
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let name = FileName {
            iothub: &self.iothub,
            partition: &self.partition,
            window: self.window,
        };
        let claimed = claim_name(
            &self.sink,
            self.store.as_ref(),
            &self.format,
            &name,
            &self.claimed,
            self.retry,
            &self.surrender,
        )
        .await;
        let outcome = match claimed {
            Ok(path) => {
                let outcome = upload_with_retries(
                    &self.sink,
                    self.store.as_ref(),
                    &path,
                    &bytes,
                    self.retry,
                    &self.surrender,
                )
                .await;
                lock(&self.claimed).remove(path.as_ref());
                outcome
            }
            Err(outcome) => outcome,
        };
        settle(&self.sink, &self.ledger, self.tickets, &outcome, &self.rows).await
    }
}

/// Settles every ticket of a file by `outcome`, handing the rows back unless it is committed.
async fn settle(
    sink: &str,
    ledger: &AckLedger,
    tickets: Vec<(Ticket, RowSet)>,
    outcome: &UploadOutcome,
    rows: &[RecordBatch],
) -> Result<()> {
    if *outcome == UploadOutcome::Committed {
        return commit_all(ledger, tickets).await;
    }
    // An empty file settles no ticket.
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let rows =
        arrow::compute::concat_batches(&first.schema(), rows).map_err(|source| Error::Arrow {
            sink: sink.to_owned(),
            source,
        })?;
    settle_uncommitted(ledger, tickets, outcome, &rows).await
}

fn lock(claimed: &ClaimedNames) -> std::sync::MutexGuard<'_, HashSet<String>> {
    claimed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The first name for `name` that no object and no other upload of this sink has, claimed until
/// the caller releases it. `head` errors are retried like uploads, until `surrender` is raised;
/// a permanent one fails the file.
async fn claim_name(
    sink: &str,
    store: &dyn ObjectStore,
    format: &FileNameFormat,
    name: &FileName<'_>,
    claimed: &ClaimedNames,
    retry: RetryPolicy,
    surrender: &Surrender,
) -> std::result::Result<Path, UploadOutcome> {
    let mut collision = 0;
    let mut attempt = 0;
    loop {
        let rendered = format.render(name, collision);
        let path = Path::parse(&rendered).map_err(|e| {
            UploadOutcome::Failed(format!(
                "the file name `{rendered}` is not a valid blob name: {e}"
            ))
        })?;
        if !lock(claimed).insert(path.to_string()) {
            collision += 1;
            continue;
        }
        let exists = tokio::select! {
            biased;
            () = surrender.raised() => {
                lock(claimed).remove(path.as_ref());
                return Err(UploadOutcome::Surrendered);
            }
            exists = store.head(&path) => exists,
        };
        match exists {
            Err(object_store::Error::NotFound { .. }) => return Ok(path),
            Ok(_) => {
                lock(claimed).remove(path.as_ref());
                collision += 1;
            }
            Err(error) => {
                lock(claimed).remove(path.as_ref());
                if !object_store_error_is_retryable(&error) {
                    return Err(UploadOutcome::Failed(format!(
                        "checking whether {path} exists failed: {error}"
                    )));
                }
                let delay = retry.delay(attempt, None);
                tracing::warn!(sink, %path, %error, ?delay, "checking the file name failed; retrying");
                tokio::select! {
                    biased;
                    () = surrender.raised() => return Err(UploadOutcome::Surrendered),
                    () = tokio::time::sleep(delay) => {}
                }
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

#[async_trait]
impl Sink for StorageSink {
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
            for (partition, part, rows) in split_by_partition(&batch, &self.name)? {
                self.append(ticket, &partition, part, rows).await?;
            }
        }
        self.ledger.settle(ticket, Vec::new()).await?;
        self.reap()
    }

    fn flush_deadline(&self) -> Option<Instant> {
        if self.surrender.is_raised() && !self.open.is_empty() {
            return Some(Instant::now());
        }
        let frequency = self.config.batch_frequency;
        let open = self.open.values().map(|f| f.opened_at + frequency);
        let idle = self
            .idle
            .values()
            .filter(|_| self.config.write_empty_files)
            .map(|idle| idle.since + frequency);
        open.chain(idle).min()
    }

    async fn flush(&mut self, reason: FlushReason) -> Result<()> {
        let now = Instant::now();
        let frequency = self.config.batch_frequency;
        let close_all = reason == FlushReason::Shutdown || self.surrender.is_raised();
        let due: Vec<String> = self
            .open
            .iter()
            .filter(|(_, f)| close_all || f.opened_at + frequency <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for partition in due {
            self.roll(&partition).await?;
        }
        if reason == FlushReason::Deadline && self.config.write_empty_files {
            let quiet: Vec<String> = self
                .idle
                .iter()
                .filter(|(p, idle)| !self.open.contains_key(*p) && idle.since + frequency <= now)
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
