//! Per-ticket bookkeeping shared by the sinks that split a ticket's rows over several deliveries
//! (Parquet files, webhook requests): a ticket is acked once every delivery holding its rows settled.
//!
//! A ticket starts with one *hold* part owned by `write`, so that a delivery finishing while `write` is
//! still distributing the ticket's rows cannot ack it early; `write` releases the hold last. The map
//! sits behind a std `Mutex`: critical sections are a few map operations and never span an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::{Ack, AckSender, Error, FailedRow, Result, Ticket};

#[derive(Debug, Default)]
struct PendingTicket {
    /// Deliveries (plus the hold) that have not settled yet.
    parts: usize,
    failed: Vec<FailedRow>,
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
        let ack = {
            let mut pending = self.lock();
            let Some(entry) = pending.get_mut(&ticket) else {
                return Ok(());
            };
            entry.failed.extend(failed);
            entry.parts -= 1;
            if entry.parts > 0 {
                return Ok(());
            }
            let mut done = pending.remove(&ticket).unwrap_or_default();
            done.failed.sort_by_key(|row| row.row);
            Ack {
                ticket,
                failed: done.failed,
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
                failed: vec![failed]
            }
        );
        assert_eq!(ledger.open_tickets(), 0);
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
