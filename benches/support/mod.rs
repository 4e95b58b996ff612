//! What the sink benchmarks share: batches of 500-byte JSON telemetry messages, numbered by
//! sequence number so idempotent sinks store every row, and the measured pass (write every batch,
//! flush, wait for every ack).
//!
//! Each benchmark is a crate of its own that includes this module and uses part of it.
#![allow(
    dead_code,
    reason = "each benchmark includes this module and uses a part of it"
)]

use std::hint::black_box;

use arrow::record_batch::RecordBatch;
use hubroute_message::{Message, MessageBatchBuilder};
use hubroute_sinks::{Ack, FlushReason, Sink, SinkBatch};
use tokio::sync::mpsc;

/// `rows` telemetry messages (~500-byte JSON bodies) in batches of `batch_rows`.
pub fn telemetry_batches(rows: usize, batch_rows: usize) -> Vec<RecordBatch> {
    (0..rows / batch_rows)
        .map(|b| {
            let messages: Vec<Message> = (0..batch_rows)
                .map(|i| {
                    let n = b * batch_rows + i;
                    let mut m = Message::telemetry(format!(
                        r#"{{"deviceId":"pump-{}","temperature":{}.5,"pad":"{:0>440}"}}"#,
                        n % 100,
                        n % 40,
                        n
                    ));
                    m.sequence_number = i64::try_from(n).expect("small");
                    m
                })
                .collect();
            MessageBatchBuilder::batch_of(&messages).expect("valid batch")
        })
        .collect()
}

/// One measured pass through a sink: every batch of `input` written as its own ticket, a shutdown
/// flush, then every ack received from `acks`. A row the sink reports failed fails the benchmark.
pub async fn write_flush_ack(
    sink: &mut dyn Sink,
    acks: &mut mpsc::Receiver<Ack>,
    input: &[RecordBatch],
) {
    for (ticket, batch) in input.iter().enumerate() {
        sink.write(SinkBatch {
            ticket: ticket as u64,
            batch: batch.clone(),
        })
        .await
        .expect("write");
    }
    sink.flush(FlushReason::Shutdown).await.expect("flush");
    for _ in 0..input.len() {
        let ack = acks.recv().await.expect("ack");
        assert!(ack.failed.is_empty(), "{ack:?}");
        black_box(ack);
    }
}
