//! The AMQP sinks' own behaviour against the emulator: CBS tokens renewed on the same connection,
//! and producers forcibly detached mid-stream losing nothing.

use std::sync::atomic::Ordering;
use std::time::Duration;

use hubroute_message::MessageBatchBuilder;
use hubroute_sinks::{AmqpSink, FlushReason, Sink, SinkBatch};
use tokio::sync::mpsc;

use crate::backends::amqp::{EventHubsHarness, body_bytes, row_key};
use crate::contract::{RowKey, assert_all_committed, collect_acks, keys, rows, workload};

#[tokio::test]
async fn tokens_are_renewed_on_the_same_connection_before_they_expire() {
    let harness = EventHubsHarness::new().await;
    let mut config = harness.config();
    config.token_lifetime = Duration::from_secs(10);
    let (tx, mut rx) = mpsc::channel(64);
    let mut sink = AmqpSink::event_hubs(&config, tx).unwrap();
    // 14 s of traffic: the emulator detaches a producer whose token lapses, so without a
    // renewal at 8 s the sink would have to reconnect.
    for ticket in 0..8 {
        let start = i64::try_from(ticket).unwrap() * 20;
        let batch = MessageBatchBuilder::batch_of(&rows("0", start..start + 20)).unwrap();
        sink.write(SinkBatch { ticket, batch }).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    sink.flush(FlushReason::Shutdown).await.unwrap();
    assert_all_committed(&collect_acks(&mut rx, 8).await, 8);
    assert_eq!(
        harness.connections.load(Ordering::SeqCst),
        1,
        "the sink reconnected: its token lapsed instead of being renewed"
    );
    assert_eq!(harness.stored_count().await, 160);
}

#[tokio::test]
async fn a_forced_detach_mid_stream_loses_nothing() {
    let harness = EventHubsHarness::new().await;
    let (tx, mut rx) = mpsc::channel(64);
    let mut sink = AmqpSink::event_hubs(&harness.config(), tx).unwrap();
    let batches = workload(30);
    let expected = keys(&batches);
    for (i, batch) in batches.into_iter().enumerate() {
        sink.write(batch).await.unwrap();
        if i % 10 == 5 {
            harness.emulator.detach_producers("target").unwrap();
        }
    }
    sink.flush(FlushReason::Shutdown).await.unwrap();
    assert_all_committed(&collect_acks(&mut rx, 30).await, 30);
    let mut stored = harness.events().await;
    let mut stored_keys: Vec<RowKey> = stored.drain(..).map(|m| row_key(&body_bytes(&m))).collect();
    stored_keys.sort();
    stored_keys.dedup();
    assert_eq!(
        stored_keys, expected,
        "every row arrived (duplicates allowed)"
    );
    assert!(
        harness.connections.load(Ordering::SeqCst) >= 2,
        "the forced detaches were not noticed"
    );
}

impl EventHubsHarness {
    async fn stored_count(&self) -> usize {
        self.events().await.len()
    }
}
