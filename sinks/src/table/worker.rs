//! The database sink both databases share: [`TableSink`] converts and buffers tickets, and a
//! background task hands full batches to a [`TableWriter`] (PostgreSQL or SQLite), retries retryable
//! failures with backoff, and acks each ticket once its transaction has committed. The writer is the
//! only part that differs, so [`Sink`] is implemented once, for `TableSink<W>` whatever `W`.
//!
//! Backpressure: the job channel to the writer task holds one batch, so at most two batches exist
//! besides the one being buffered; `write` awaits the channel when both are taken. A ticket is never
//! split across transactions, so its ack needs no bookkeeping beyond the batch it travels in.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Row, TableMapping};
use crate::{
    Ack, AckSender, Error, FailedRow, FlushReason, Result, RetryPolicy, Sink, SinkBatch, Ticket,
};

/// The outcome of one committed transaction: rows (indices into the written slice) that failed
/// permanently, with their SQLSTATE-prefixed errors.
pub(crate) type WriteOutcome = Vec<(usize, String)>;

/// Why a transaction did not commit.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// Connection loss, serialization failure, lock timeout...: retried after a backoff.
    Retryable(String),
    /// Misconfiguration (missing table, no unique key, denied): the sink stops.
    Fatal(Error),
}

/// Writes rows into the table in one transaction, idempotently (duplicates of the key are ignored),
/// isolating rows that fail permanently.
#[async_trait]
pub(crate) trait TableWriter: Send + 'static {
    async fn write(&mut self, rows: Arc<Vec<Row>>)
    -> std::result::Result<WriteOutcome, WriteError>;
}

/// Batching settings of a database sink.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableSinkSettings {
    /// Rows per transaction; a full buffer is handed to the writer at once.
    batch_max_rows: usize,
    /// How long a partly filled buffer waits.
    linger: Duration,
    retry: RetryPolicy,
}

impl TableSinkSettings {
    pub(crate) fn new(batch_max_rows: usize, linger: Duration, retry: RetryPolicy) -> Self {
        Self {
            batch_max_rows,
            linger,
            retry,
        }
    }
}

/// One ticket's converted rows.
#[derive(Debug)]
struct TicketRows {
    ticket: Ticket,
    /// `(row index in the ticket's batch, row)`.
    rows: Vec<(usize, Row)>,
    /// Rows that failed conversion.
    failed: Vec<FailedRow>,
}

#[derive(Debug)]
enum Job {
    Write(Vec<TicketRows>),
    /// Answered once every earlier job is done.
    Barrier(oneshot::Sender<()>),
}

/// A database sink: converts rows to the table's columns, buffers them, and feeds a background task
/// that writes them with `W` ([`crate::PostgresSink`], [`crate::SqliteSink`]). Idempotent on (event
/// hub, partition, sequence number).
pub struct TableSink<W> {
    name: String,
    mapping: TableMapping,
    settings: TableSinkSettings,
    buffer: Vec<TicketRows>,
    buffered_rows: usize,
    /// When the oldest buffered ticket arrived: the linger deadline runs from here.
    oldest: Option<Instant>,
    /// Capacity 1: a full channel makes `write` wait (backpressure).
    jobs: mpsc::Sender<Job>,
    /// The writer task; its error explains why `jobs` closed.
    worker: Option<JoinHandle<Result<()>>>,
    /// The writer type lives in the task; the sink only names it.
    writer: PhantomData<fn() -> W>,
}

impl<W> fmt::Debug for TableSink<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableSink")
            .field("name", &self.name)
            .field("writer", &std::any::type_name::<W>())
            .field("buffered_rows", &self.buffered_rows)
            .field("running", &self.worker.is_some())
            .finish_non_exhaustive()
    }
}

impl<W> TableSink<W> {
    /// Checks `settings` and spawns the writer task (on the current Tokio runtime).
    pub(crate) fn start(
        name: String,
        mapping: TableMapping,
        settings: TableSinkSettings,
        writer: W,
        acks: AckSender,
    ) -> Result<Self>
    where
        W: TableWriter,
    {
        if settings.batch_max_rows == 0 {
            return Err(Error::Config {
                sink: name,
                problem: "batch_max_rows must be at least 1".into(),
            });
        }
        let (jobs, receiver) = mpsc::channel(1);
        let worker = tokio::spawn(run(writer, receiver, acks, settings.retry, name.clone()));
        Ok(Self {
            name,
            mapping,
            settings,
            buffer: Vec::new(),
            buffered_rows: 0,
            oldest: None,
            jobs,
            worker: Some(worker),
            writer: PhantomData,
        })
    }
}

#[async_trait]
impl<W: TableWriter> Sink for TableSink<W> {
    fn name(&self) -> &str {
        &self.name
    }

    fn idempotent(&self) -> bool {
        true
    }

    async fn write(&mut self, batch: SinkBatch) -> Result<()> {
        let (rows, failed) = self.mapping.convert(&batch.batch)?;
        self.buffered_rows += rows.len();
        self.buffer.push(TicketRows {
            ticket: batch.ticket,
            rows,
            failed,
        });
        self.oldest.get_or_insert_with(Instant::now);
        if self.buffered_rows >= self.settings.batch_max_rows {
            self.submit().await?;
        }
        Ok(())
    }

    fn flush_deadline(&self) -> Option<Instant> {
        self.oldest.map(|oldest| oldest + self.settings.linger)
    }

    async fn flush(&mut self, reason: FlushReason) -> Result<()> {
        self.submit().await?;
        if reason == FlushReason::Shutdown {
            let (done, wait) = oneshot::channel();
            self.send(Job::Barrier(done)).await?;
            if wait.await.is_err() {
                return Err(self.worker_error().await);
            }
        }
        Ok(())
    }

    /// Completes when the writer task stops, with its error (cancel-safe).
    async fn stopped(&mut self) -> Error {
        let Some(worker) = self.worker.as_mut() else {
            return std::future::pending().await;
        };
        let outcome = worker.await;
        self.worker = None;
        self.explain(outcome)
    }
}

impl<W> TableSink<W> {
    async fn submit(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let tickets = std::mem::take(&mut self.buffer);
        self.buffered_rows = 0;
        self.oldest = None;
        self.send(Job::Write(tickets)).await
    }

    async fn send(&mut self, job: Job) -> Result<()> {
        if self.jobs.send(job).await.is_err() {
            return Err(self.worker_error().await);
        }
        Ok(())
    }

    /// The error that stopped the writer task.
    async fn worker_error(&mut self) -> Error {
        match self.worker.take() {
            Some(worker) => self.explain(worker.await),
            None => self.explain_stopped("stopped earlier after an error (see above)".into()),
        }
    }

    fn explain(&self, outcome: std::result::Result<Result<()>, tokio::task::JoinError>) -> Error {
        match outcome {
            Ok(Err(error)) => error,
            Ok(Ok(())) => self.explain_stopped("stopped unexpectedly".into()),
            Err(join) => self.explain_stopped(format!("panicked: {join}")),
        }
    }

    fn explain_stopped(&self, problem: String) -> Error {
        Error::Database {
            sink: self.name.clone(),
            operation: "background writer",
            code: None,
            message: problem,
        }
    }
}

async fn run(
    mut writer: impl TableWriter,
    mut jobs: mpsc::Receiver<Job>,
    acks: AckSender,
    retry: RetryPolicy,
    name: String,
) -> Result<()> {
    while let Some(job) = jobs.recv().await {
        let tickets = match job {
            Job::Write(tickets) => tickets,
            Job::Barrier(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let mut origin = Vec::new();
        let mut rows = Vec::new();
        let mut pending = Vec::with_capacity(tickets.len());
        for (position, ticket) in tickets.into_iter().enumerate() {
            for (row_index, row) in ticket.rows {
                origin.push((position, row_index));
                rows.push(row);
            }
            pending.push((ticket.ticket, ticket.failed));
        }
        let rows = Arc::new(rows);
        let mut attempt = 0;
        let failed = loop {
            if rows.is_empty() {
                break Vec::new();
            }
            match writer.write(Arc::clone(&rows)).await {
                Ok(failed) => break failed,
                Err(WriteError::Retryable(problem)) => {
                    let delay = retry.delay(attempt, None);
                    tracing::warn!(sink = %name, %problem, ?delay, "database write failed; retrying");
                    attempt = attempt.saturating_add(1);
                    tokio::time::sleep(delay).await;
                }
                Err(WriteError::Fatal(error)) => return Err(error),
            }
        };
        for (index, error) in failed {
            let (position, row) = origin[index];
            pending[position].1.push(FailedRow { row, error });
        }
        for (ticket, mut failed) in pending {
            failed.sort_by_key(|f| f.row);
            acks.send(Ack {
                ticket,
                failed,
                failed_rows: None,
                surrendered: false,
            })
            .await
            .map_err(|_| Error::AcksClosed { sink: name.clone() })?;
        }
    }
    Ok(())
}
