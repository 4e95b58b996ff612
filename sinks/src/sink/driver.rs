//! The loop that runs one sink: feed it batches, flush it at its deadlines, shut it down when the
//! input closes. The engine spawns one per endpoint.
//!
//! The input is a bounded channel and `write` is awaited before the next `recv`, so a sink that
//! applies backpressure (a pending `write`) leaves batches in the channel, which fills and stops the
//! router upstream. Deadlines are only checked between writes: a sink that is blocked in `write` is
//! busy delivering anyway.

use tokio::sync::mpsc;
use tokio::time::sleep_until;

use crate::{FlushReason, Result, Sink, SinkBatch};

/// Runs `sink` until `batches` is closed and drained, then flushes it with
/// [`FlushReason::Shutdown`]. Returns the first error of `write`, `flush` or the sink's background
/// work ([`Sink::stopped`]), all fatal for the sink. A change of the sink's
/// [`Surrender`](crate::Surrender) flag wakes the loop, so that the sink's new
/// [`Sink::flush_deadline`] (a surrendered file sink closes its files at once) is seen even while no
/// batch arrives.
pub async fn drive_sink(
    mut sink: Box<dyn Sink>,
    mut batches: mpsc::Receiver<SinkBatch>,
) -> Result<()> {
    let mut surrender = sink.surrender().map(|flag| flag.watch());
    loop {
        let deadline = sink.flush_deadline();
        tokio::select! {
            biased;
            () = async { sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                sink.flush(FlushReason::Deadline).await?;
            }
            changed = async { surrender.as_mut().expect("guarded").changed().await }, if surrender.is_some() => {
                if changed.is_err() {
                    surrender = None;
                }
            }
            batch = batches.recv() => match batch {
                Some(batch) => sink.write(batch).await?,
                None => break,
            },
            error = sink.stopped() => return Err(error),
        }
    }
    tracing::debug!(sink = sink.name(), "input closed; flushing");
    sink.flush(FlushReason::Shutdown).await
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use async_trait::async_trait;
    use hubroute_message::{Message, MessageBatchBuilder};
    use tokio::time::Instant;

    use super::*;

    /// Records the calls the driver makes; wants a flush 10 s after its first buffered write.
    #[derive(Debug, Default)]
    struct Recorder {
        calls: Arc<Mutex<Vec<String>>>,
        deadline: Option<Instant>,
    }

    #[async_trait]
    impl Sink for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }
        fn idempotent(&self) -> bool {
            false
        }
        async fn write(&mut self, batch: SinkBatch) -> Result<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("write {}", batch.ticket));
            self.deadline
                .get_or_insert_with(|| Instant::now() + Duration::from_secs(10));
            Ok(())
        }
        fn flush_deadline(&self) -> Option<Instant> {
            self.deadline
        }
        async fn flush(&mut self, reason: FlushReason) -> Result<()> {
            self.calls.lock().unwrap().push(format!("flush {reason:?}"));
            self.deadline = None;
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_driver_writes_flushes_at_deadlines_and_shuts_down_when_input_closes() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let sink = Recorder {
            calls: Arc::clone(&calls),
            deadline: None,
        };
        let (tx, rx) = mpsc::channel(4);
        let driver = tokio::spawn(drive_sink(Box::new(sink), rx));
        let batch = MessageBatchBuilder::batch_of(&[Message::telemetry("x")]).unwrap();
        tx.send(SinkBatch {
            ticket: 1,
            batch: batch.clone(),
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        tx.send(SinkBatch { ticket: 2, batch }).await.unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(
            *calls.lock().unwrap(),
            ["write 1", "write 2", "flush Deadline"]
        );
        drop(tx);
        driver.await.unwrap().unwrap();
        assert_eq!(calls.lock().unwrap().last().unwrap(), "flush Shutdown");
    }

    /// Buffers writes; its background work fails right after the first write and nothing else
    /// happens: no deadline, no further input.
    #[derive(Debug)]
    struct FailsInBackground {
        trigger: Option<tokio::sync::oneshot::Sender<()>>,
        failure: Option<tokio::sync::oneshot::Receiver<()>>,
    }

    #[async_trait]
    impl Sink for FailsInBackground {
        fn name(&self) -> &str {
            "fails-in-background"
        }
        fn idempotent(&self) -> bool {
            false
        }
        async fn write(&mut self, _batch: SinkBatch) -> Result<()> {
            if let Some(trigger) = self.trigger.take() {
                let _ = trigger.send(());
            }
            Ok(())
        }
        fn flush_deadline(&self) -> Option<Instant> {
            None
        }
        async fn flush(&mut self, _reason: FlushReason) -> Result<()> {
            Ok(())
        }
        async fn stopped(&mut self) -> crate::Error {
            match self.failure.as_mut() {
                Some(failure) => {
                    let _ = failure.await;
                    self.failure = None;
                    crate::Error::AcksClosed {
                        sink: "fails-in-background".to_owned(),
                    }
                }
                None => std::future::pending().await,
            }
        }
    }

    #[tokio::test]
    async fn a_background_failure_stops_the_driver_without_waiting_for_more_input() {
        let (trigger, failure) = tokio::sync::oneshot::channel();
        let sink = FailsInBackground {
            trigger: Some(trigger),
            failure: Some(failure),
        };
        let (tx, rx) = mpsc::channel(4);
        let driver = tokio::spawn(drive_sink(Box::new(sink), rx));
        let batch = MessageBatchBuilder::batch_of(&[Message::telemetry("x")]).unwrap();
        tx.send(SinkBatch { ticket: 1, batch }).await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), driver)
            .await
            .expect("the driver stops while its input is still open")
            .unwrap();
        assert!(outcome.is_err());
        drop(tx);
    }
}
