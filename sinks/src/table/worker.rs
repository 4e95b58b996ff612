//! The buffering core shared by the database sinks: [`TableSink`] converts and buffers tickets, and a
//! background task hands full batches to a [`TableWriter`] (PostgreSQL or SQLite), retries retryable
//! failures with backoff, and acks each ticket once its transaction has committed.
//!
//! Backpressure: the job channel to the writer task holds one batch, so at most two batches exist
//! besides the one being buffered; `write` awaits the channel when both are taken. A ticket is never
//! split across transactions, so its ack needs no bookkeeping beyond the batch it travels in.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Row, TableMapping};
use crate::{
    Ack, AckSender, Error, FailedRow, FlushReason, Result, RetryPolicy, SinkBatch, Ticket,
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
    pub(crate) batch_max_rows: usize,
    /// How long a partly filled buffer waits.
    pub(crate) linger: Duration,
    pub(crate) retry: RetryPolicy,
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

/// A database sink: converts, buffers, and feeds a background writer task.
#[derive(Debug)]
pub(crate) struct TableSink {
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
}

impl TableSink {
    /// Spawns the writer task (on the current Tokio runtime).
    pub(crate) fn start(
        name: String,
        mapping: TableMapping,
        settings: TableSinkSettings,
        writer: impl TableWriter,
        acks: AckSender,
    ) -> Self {
        let (jobs, receiver) = mpsc::channel(1);
        let worker = tokio::spawn(run(writer, receiver, acks, settings.retry, name.clone()));
        Self {
            name,
            mapping,
            settings,
            buffer: Vec::new(),
            buffered_rows: 0,
            oldest: None,
            jobs,
            worker: Some(worker),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) async fn write(&mut self, batch: SinkBatch) -> Result<()> {
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

    pub(crate) fn flush_deadline(&self) -> Option<Instant> {
        self.oldest.map(|oldest| oldest + self.settings.linger)
    }

    pub(crate) async fn flush(&mut self, reason: FlushReason) -> Result<()> {
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

    /// Completes when the writer task stops, with its error (cancel-safe).
    pub(crate) async fn stopped(&mut self) -> Error {
        let Some(worker) = self.worker.as_mut() else {
            return std::future::pending().await;
        };
        let outcome = worker.await;
        self.worker = None;
        self.explain(outcome)
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
            })
            .await
            .map_err(|_| Error::AcksClosed { sink: name.clone() })?;
        }
    }
    Ok(())
}
