//! Per-ticket bookkeeping shared by the sinks that split a ticket's rows over several deliveries
//! (Parquet files, webhook requests): a ticket is acked once every delivery holding its rows settled.
//!
//! A ticket starts with one *hold* part owned by `write`, so that a delivery finishing while `write` is
//! still distributing the ticket's rows cannot ack it early; `write` releases the hold last. The map
//! sits behind a std `Mutex`: critical sections are a few map operations and never span an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::UInt32Array;
use arrow::compute::{concat_batches, take_record_batch};
use arrow::record_batch::RecordBatch;

use crate::{Ack, AckSender, Error, FailedRow, Result, Ticket};

#[derive(Debug, Default)]
struct PendingTicket {
    /// Deliveries (plus the hold) that have not settled yet.
    parts: usize,
    failed: Vec<FailedRow>,
    /// The failed rows' data, one batch per part that failed rows and reported them.
    rows: Vec<RecordBatch>,
    /// Whether a part failed rows without their data.
    rows_missing: bool,
    /// Whether a part handed its rows back because the sink was surrendered.
    surrendered: bool,
}

/// The failed rows in `failed` order: sorted by row, with their data reordered to match.
fn ordered(
    mut failed: Vec<FailedRow>,
    rows: Option<RecordBatch>,
) -> (Vec<FailedRow>, Option<RecordBatch>) {
    let mut order: Vec<u32> = (0..failed.len() as u32).collect();
    order.sort_by_key(|&i| failed[i as usize].row);
    let rows =
        rows.and_then(|rows| take_record_batch(&rows, &UInt32Array::from(order.clone())).ok());
    failed.sort_by_key(|row| row.row);
    (failed, rows)
}

/// Tracks open tickets and sends each ticket's [`Ack`] when its last part settles.
#[derive(Debug, Clone)]
pub(crate) struct AckLedger {
    sink: Arc<str>,
    acks: AckSender,
    pending: Arc<Mutex<HashMap<Ticket, PendingTicket>>>,
}

impl AckLedger {
    pub(crate) fn new(sink: &str, acks: AckSender) -> Self {
        Self {
            sink: sink.into(),
            acks,
            pending: Arc::default(),
        }
    }

    /// Registers `ticket` with its hold part.
    pub(crate) fn open(&self, ticket: Ticket) {
        self.lock().entry(ticket).or_default().parts += 1;
    }

    /// One more delivery now holds rows of `ticket`.
    pub(crate) fn add_part(&self, ticket: Ticket) {
        self.lock().entry(ticket).or_default().parts += 1;
    }

    /// One part of `ticket` is done; `failed` lists its permanently failed rows. Sends the ack when it
    /// was the last part.
    pub(crate) async fn settle(&self, ticket: Ticket, failed: Vec<FailedRow>) -> Result<()> {
        self.settle_with_rows(ticket, failed, None).await
    }

    /// [`AckLedger::settle`], with the failed rows' data (`rows` row `i` is `failed[i]`).
    pub(crate) async fn settle_with_rows(
        &self,
        ticket: Ticket,
        failed: Vec<FailedRow>,
        rows: Option<RecordBatch>,
    ) -> Result<()> {
        self.settle_part(ticket, failed, rows, false).await
    }

    /// [`AckLedger::settle_with_rows`] for rows handed back because the sink was surrendered:
    /// the ticket's ack is marked [`Ack::surrendered`].
    pub(crate) async fn settle_surrendered(
        &self,
        ticket: Ticket,
        failed: Vec<FailedRow>,
        rows: RecordBatch,
    ) -> Result<()> {
        self.settle_part(ticket, failed, Some(rows), true).await
    }

    async fn settle_part(
        &self,
        ticket: Ticket,
        failed: Vec<FailedRow>,
        rows: Option<RecordBatch>,
        surrendered: bool,
    ) -> Result<()> {
        let ack = {
            let mut pending = self.lock();
            let Some(entry) = pending.get_mut(&ticket) else {
                return Ok(());
            };
            entry.surrendered |= surrendered;
            if !failed.is_empty() {
                match rows {
                    Some(rows) => entry.rows.push(rows),
                    None => entry.rows_missing = true,
                }
            }
            entry.failed.extend(failed);
            entry.parts -= 1;
            if entry.parts > 0 {
                return Ok(());
            }
            let done = pending.remove(&ticket).unwrap_or_default();
            let rows = match (done.rows_missing, done.rows.first()) {
                (false, Some(first)) => concat_batches(&first.schema(), &done.rows).ok(),
                _ => None,
            };
            let (failed, failed_rows) = ordered(done.failed, rows);
            Ack {
                ticket,
                failed,
                failed_rows,
                surrendered: done.surrendered,
            }
        };
        self.acks.send(ack).await.map_err(|_| Error::AcksClosed {
            sink: self.sink.to_string(),
        })
    }

    /// Tickets not yet acked.
    #[cfg(test)]
    pub(crate) fn open_tickets(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Ticket, PendingTicket>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    #[tokio::test]
    async fn a_ticket_is_acked_once_after_its_hold_and_every_part_settle() {
        let (tx, mut rx) = mpsc::channel(8);
        let ledger = AckLedger::new("t", tx);
        ledger.open(7);
        ledger.add_part(7);
        ledger.add_part(7);
        let failed = FailedRow {
            row: 3,
            error: "HTTP 400".into(),
        };
        ledger.settle(7, vec![failed.clone()]).await.unwrap();
        ledger.settle(7, vec![]).await.unwrap();
        assert!(rx.try_recv().is_err(), "acked before the hold was released");
        ledger.settle(7, vec![]).await.unwrap();
        assert_eq!(
            rx.try_recv().unwrap(),
            Ack {
                ticket: 7,
                failed: vec![failed],
                failed_rows: None,
                surrendered: false,
            }
        );
        assert_eq!(ledger.open_tickets(), 0);
    }

    #[tokio::test]
    async fn failed_rows_from_several_parts_come_back_in_row_order_with_their_data() {
        use std::sync::Arc;

        use arrow::array::{AsArray, Int64Array};
        use arrow::datatypes::Int64Type;
        let (tx, mut rx) = mpsc::channel(8);
        let ledger = AckLedger::new("t", tx);
        ledger.open(1);
        ledger.add_part(1);
        ledger.add_part(1);
        let part = |rows: &[i64]| {
            let failed = rows
                .iter()
                .map(|&row| FailedRow {
                    row: row as usize,
                    error: format!("row {row}"),
                })
                .collect();
            let data = RecordBatch::try_from_iter([(
                "row",
                Arc::new(Int64Array::from(rows.to_vec())) as _,
            )])
            .unwrap();
            (failed, Some(data))
        };
        let (failed, data) = part(&[5, 1]);
        ledger.settle_with_rows(1, failed, data).await.unwrap();
        let (failed, data) = part(&[3]);
        ledger.settle_with_rows(1, failed, data).await.unwrap();
        ledger.settle(1, vec![]).await.unwrap();
        let ack = rx.try_recv().unwrap();
        let rows: Vec<usize> = ack.failed.iter().map(|f| f.row).collect();
        assert_eq!(rows, vec![1, 3, 5]);
        let data = ack.failed_rows.expect("every part reported its rows");
        let values: Vec<i64> = data.column(0).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(
            values,
            vec![1, 3, 5],
            "each row's data sits beside its failure"
        );
    }

    #[tokio::test]
    async fn a_part_without_row_data_leaves_the_ack_without_it() {
        let (tx, mut rx) = mpsc::channel(8);
        let ledger = AckLedger::new("t", tx);
        ledger.open(1);
        let failed = vec![FailedRow {
            row: 0,
            error: "HTTP 400".into(),
        }];
        ledger.settle(1, failed).await.unwrap();
        assert_eq!(rx.try_recv().unwrap().failed_rows, None);
    }

    #[tokio::test]
    async fn a_closed_ack_channel_is_an_error() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let ledger = AckLedger::new("t", tx);
        ledger.open(1);
        let error = ledger.settle(1, vec![]).await.unwrap_err();
        assert!(matches!(error, Error::AcksClosed { .. }), "{error}");
    }
}
