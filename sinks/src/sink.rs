//! The `Sink` contract: how the engine hands batches to a destination and learns when they are safe.
//!
//! # Contract
//!
//! * **Input.** [`Sink::write`] receives a [`SinkBatch`]: a message batch (schema of
//!   `hubroute-message`) holding only the rows routed to this endpoint, tagged with a [`Ticket`].
//! * **Backpressure.** `write` resolves once the sink has *buffered* the batch. A sink whose buffer is
//!   full (slow backend, retries in progress, too many requests in flight) does not resolve `write`
//!   until it has room. The engine never calls `write` concurrently, so a pending `write` stops the
//!   endpoint queue, which stops the router, which stops AMQP credit. Sinks never buffer without bound.
//!   A started `write` must be driven to completion (it is not cancel-safe: a dropped `write` can
//!   leave its ticket unacked until a restart replays it); [`drive_sink`] does so.
//! * **Commit.** A row is *committed* when it is durable at the destination: a Parquet file containing
//!   it has been completely uploaded under its final name; the database transaction containing it has
//!   committed; the webhook answered 2xx. For every ticket the sink sends exactly one [`Ack`] on the
//!   [`AckSender`] it was built with, after *every* row of that ticket is either committed or listed in
//!   [`Ack::failed`] as permanently failed. Acks may arrive in any order relative to tickets. A sink
//!   that keeps tickets open for long (a file that rolls by age) should hand the failed rows' data
//!   back in [`Ack::failed_rows`] and say so through [`Sink::reports_failed_rows`], so that the engine
//!   need not keep its own copy of the rows meanwhile.
//! * **Permanent failures.** A row that can never be delivered (constraint violation, 4xx) is reported in
//!   `Ack::failed` with its error; the engine dead-letters it. Retryable errors are retried inside the
//!   sink (capped exponential backoff) and never surface as row failures; while retrying, `write`
//!   blocks once the buffer is full.
//! * **Ordering.** Within an endpoint, rows of one partition are delivered in the order written, except
//!   where a retry re-sends an earlier batch. There is no ordering across partitions.
//! * **Idempotency.** Delivery is at-least-once: after a crash the engine replays from the last
//!   checkpoint, so a sink can see rows again. [`Sink::idempotent`] says whether the sink absorbs
//!   duplicates (keyed by event hub, partition and sequence number) or may store them twice.
//! * **Time.** Sinks that linger or roll files by time report their next deadline through
//!   [`Sink::flush_deadline`]; the driver calls [`Sink::flush`] with [`FlushReason::Deadline`] then.
//! * **Shutdown.** [`Sink::flush`] with [`FlushReason::Shutdown`] delivers everything buffered and returns
//!   after all acks for written tickets have been sent (or the error that prevented it).
//! * **Health probe.** [`crate::probe`] asks, from a sink's configuration alone, whether its
//!   endpoint can take writes: one request that stores nothing, bounded in time, not retried. It is
//!   a hint, not a promise: a write after a passing probe can still fail, and is handled as any
//!   write is. The engine probes a parked endpoint before it replays the endpoint's parked rows.
//! * **Surrender.** A sink that holds rows for long (open files, uploads retried forever) offers a
//!   [`Surrender`] flag through [`Sink::surrender`]. The engine raises it when it parks the
//!   endpoint: the sink then closes its open files at once and, instead of retrying, acks every row
//!   it holds as failed with the rows' data and [`Ack::surrendered`] set, so the engine can store
//!   them as parked rows and let the checkpoint move. The engine lowers it when the endpoint is live
//!   again.
//! * **Fatal errors in the background.** A sink that delivers from background tasks reports their
//!   fatal error through [`Sink::stopped`] as soon as it happens.
//!
//! [`RetryPolicy`] is the one retry policy of all sinks (capped exponential backoff with jitter) and
//! [`drive_sink`] the loop that runs a sink; `ledger` keeps per-ticket bookkeeping for sinks that split
//! one ticket over several deliveries.

use std::fmt;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Result;

pub(crate) mod background;
mod backoff;
mod driver;
mod ledger;
mod surrender;

pub use backoff::RetryPolicy;
pub use driver::drive_sink;
pub(crate) use ledger::AckLedger;
pub use surrender::Surrender;

/// Identifies one `write` call; echoed back in its [`Ack`].
pub type Ticket = u64;

/// A batch of messages for one endpoint.
#[derive(Debug, Clone)]
pub struct SinkBatch {
    /// Echoed in the ack.
    pub ticket: Ticket,
    /// Rows of the message schema, only those routed to this endpoint (enrichments already applied).
    pub batch: RecordBatch,
}

/// One row that can never be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRow {
    /// Row index within the ticket's batch.
    pub row: usize,
    /// What the destination said, e.g. `23505 unique_violation: ...` or `HTTP 400: ...`.
    pub error: String,
}

/// The final outcome of one ticket: every row not in `failed` is committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    /// The ticket of the `write` this answers.
    pub ticket: Ticket,
    /// Rows permanently failed, to be dead-lettered by the engine.
    pub failed: Vec<FailedRow>,
    /// The failed rows themselves (message schema), row `i` for `failed[i]`, from a sink that
    /// [reports them](Sink::reports_failed_rows). `None` from other sinks, and when nothing failed.
    pub failed_rows: Option<RecordBatch>,
    /// The sink handed (some of) the `failed` rows back because the engine raised its
    /// [`Surrender`] flag, not because they can never be delivered: the engine parks them for
    /// replay rather than dead-lettering them. A permanently failed row of the same ticket is
    /// parked with them and fails again, and is dead-lettered, when it is replayed.
    pub surrendered: bool,
}

impl Ack {
    /// Every row of `ticket` is committed.
    pub fn committed(ticket: Ticket) -> Self {
        Self {
            ticket,
            failed: Vec::new(),
            failed_rows: None,
            surrendered: false,
        }
    }
}

/// Where a sink sends its acks. Bounded: the engine drains it continuously.
pub type AckSender = mpsc::Sender<Ack>;

/// Why [`Sink::flush`] is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// [`Sink::flush_deadline`] has passed.
    Deadline,
    /// The engine is stopping: deliver everything buffered, then return.
    Shutdown,
}

/// A destination for routed messages. See the module documentation for the contract.
#[async_trait]
pub trait Sink: Send + fmt::Debug {
    /// The endpoint name, for logs and metrics.
    fn name(&self) -> &str;

    /// Whether duplicates of a row (same event hub, partition, sequence number) are absorbed.
    fn idempotent(&self) -> bool;

    /// Whether every [`Ack`] with failed rows carries their data in [`Ack::failed_rows`]. The engine
    /// keeps no copy of what it wrote to such a sink, which matters for sinks that hold tickets for
    /// minutes (files rolled by age): their rows would otherwise stay in memory until the ack.
    fn reports_failed_rows(&self) -> bool {
        false
    }

    /// The flag through which the engine asks this sink to hand back every row it holds, for a
    /// sink that holds rows for long (see the contract's *Surrender*); `None` (the default) for
    /// sinks whose rows the engine can rebuild from its own copy.
    fn surrender(&self) -> Option<Surrender> {
        None
    }

    /// Buffers `batch`; resolves only when the sink has room (backpressure). An error here is fatal
    /// for the sink (it could not even buffer), not a row failure.
    async fn write(&mut self, batch: SinkBatch) -> Result<()>;

    /// When the sink next wants [`Sink::flush`] called with [`FlushReason::Deadline`], if ever.
    fn flush_deadline(&self) -> Option<Instant>;

    /// Delivers what is due (`Deadline`) or everything (`Shutdown`).
    async fn flush(&mut self, reason: FlushReason) -> Result<()>;

    /// Completes with the error that stopped the sink's background work (fatal for the sink), so
    /// the driver stops at once rather than at the next `write` or `flush`, which may never come.
    /// Cancel-safe. The default, for sinks whose work all happens inside `write` and `flush`,
    /// never completes.
    async fn stopped(&mut self) -> crate::Error {
        std::future::pending().await
    }
}
