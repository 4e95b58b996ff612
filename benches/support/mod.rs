//! Inputs shared by the sink benchmarks: batches of 500-byte JSON telemetry messages, numbered by
//! sequence number so idempotent sinks store every row.

use arrow::record_batch::RecordBatch;
use hubroute_message::{Message, MessageBatchBuilder};

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
