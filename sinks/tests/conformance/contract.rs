//! The contract every sink is checked against: a [`Harness`] per sink, the workload, and the checks
//! [`conformance`] runs on a fresh harness each.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hubroute_message::{Message, MessageBatchBuilder};
use hubroute_sinks::{Ack, AckSender, FlushReason, Sink, SinkBatch};
use tokio::sync::mpsc;

use crate::faults::{Backend, Fault};

/// Identifies a stored row: (event hub, partition, sequence number).
pub(crate) type RowKey = (String, String, i64);

/// How a sink plugs into the suite.
#[async_trait]
pub(crate) trait Harness: Send {
    /// Builds a sink over this harness's backend; a second call is a restart over the same data.
    /// The sink must only deliver on `flush`, on its own size limits, or at its deadline, with a
    /// deadline far enough away (minutes) that tests control delivery.
    async fn build(&mut self, acks: AckSender) -> Box<dyn Sink>;
    /// Every row stored so far, duplicates included.
    async fn stored(&mut self) -> Vec<RowKey>;
    /// The fault injector of the backend.
    fn backend(&self) -> Arc<Backend>;
}

pub(crate) fn rows(partition: &str, sequence_numbers: std::ops::Range<i64>) -> Vec<Message> {
    sequence_numbers
        .map(|n| {
            // The body names the row, so sinks that keep only the body (AMQP) can be read back.
            let mut m = Message::telemetry(format!(
                r#"{{"partition":"{partition}","n":{n},"pad":"{}"}}"#,
                "p".repeat(200)
            ));
            m.partition = partition.to_owned();
            m.sequence_number = n;
            m.offset = (n * 512).to_string();
            m
        })
        .collect()
}

/// `count` tickets of 20 rows, alternating between partitions 0 and 1.
pub(crate) fn workload(count: u64) -> Vec<SinkBatch> {
    (0..count)
        .map(|ticket| {
            let start = i64::try_from(ticket).unwrap() * 20;
            let partition = if ticket % 2 == 0 { "0" } else { "1" };
            SinkBatch {
                ticket,
                batch: MessageBatchBuilder::batch_of(&rows(partition, start..start + 20)).unwrap(),
            }
        })
        .collect()
}

pub(crate) fn keys(batches: &[SinkBatch]) -> Vec<RowKey> {
    let mut keys: Vec<RowKey> = batches
        .iter()
        .flat_map(|b| {
            let view = hubroute_message::MessageColumns::try_new(&b.batch).unwrap();
            (0..view.len())
                .map(|i| {
                    (
                        view.event_hub.value(i).to_owned(),
                        view.partition.value(i).to_owned(),
                        view.sequence_number.value(i),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    keys.sort();
    keys
}

pub(crate) async fn collect_acks(rx: &mut mpsc::Receiver<Ack>, count: usize) -> Vec<Ack> {
    let mut acks = Vec::new();
    while acks.len() < count {
        let ack = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} acks within 30 s", acks.len()))
            .expect("the ack channel stays open");
        acks.push(ack);
    }
    acks.sort_by_key(|a| a.ticket);
    acks
}

pub(crate) fn assert_all_committed(acks: &[Ack], tickets: u64) {
    assert_eq!(
        acks.iter().map(|a| a.ticket).collect::<Vec<_>>(),
        (0..tickets).collect::<Vec<_>>(),
        "every ticket acked exactly once"
    );
    for ack in acks {
        assert!(
            ack.failed.is_empty(),
            "ticket {} reported failures: {:?}",
            ack.ticket,
            ack.failed
        );
    }
}

async fn delivers_every_row_exactly_once_when_healthy(harness: &mut dyn Harness) {
    let (tx, mut rx) = mpsc::channel(64);
    let mut sink = harness.build(tx).await;
    let batches = workload(6);
    let expected = keys(&batches);
    for batch in batches {
        sink.write(batch).await.unwrap();
    }
    sink.flush(FlushReason::Shutdown).await.unwrap();
    assert_all_committed(&collect_acks(&mut rx, 6).await, 6);
    let mut stored = harness.stored().await;
    stored.sort();
    assert_eq!(
        stored,
        expected,
        "{}: rows stored exactly once",
        sink.name()
    );
}

async fn loses_no_row_under_injected_failures(harness: &mut dyn Harness) {
    let (tx, mut rx) = mpsc::channel(64);
    let mut sink = harness.build(tx).await;
    let batches = workload(4);
    let expected = keys(&batches);
    let backend = harness.backend();
    backend.set(Fault::FailNext(3));
    for batch in batches {
        sink.write(batch).await.unwrap();
    }
    sink.flush(FlushReason::Shutdown).await.unwrap();
    assert_all_committed(&collect_acks(&mut rx, 4).await, 4);
    assert_eq!(
        (backend.injected(), backend.fault()),
        (3, Fault::None),
        "{}: the backend failed fewer operations than it was told to, so the sink stored its rows \
         some other way",
        sink.name()
    );
    let stored = harness.stored().await;
    for key in &expected {
        assert!(
            stored.contains(key),
            "{}: row {key:?} lost after retries",
            sink.name()
        );
    }
}

async fn replayed_rows_are_absorbed_where_idempotent(harness: &mut dyn Harness) {
    let batches = workload(2);
    let expected = keys(&batches);
    let mut idempotent = false;
    for _run in 0..2 {
        let (tx, mut rx) = mpsc::channel(64);
        let mut sink = harness.build(tx).await;
        idempotent = sink.idempotent();
        for batch in batches.clone() {
            sink.write(batch).await.unwrap();
        }
        sink.flush(FlushReason::Shutdown).await.unwrap();
        assert_all_committed(&collect_acks(&mut rx, 2).await, 2);
    }
    let mut stored = harness.stored().await;
    stored.sort();
    if idempotent {
        assert_eq!(
            stored, expected,
            "an idempotent sink stored a replayed row twice"
        );
    } else {
        let mut twice: Vec<RowKey> = expected
            .iter()
            .flat_map(|k| [k.clone(), k.clone()])
            .collect();
        twice.sort();
        assert_eq!(
            stored, twice,
            "a non-idempotent sink stores replays again, and nothing else"
        );
    }
}

async fn write_blocks_while_the_backend_stalls_and_nothing_is_acked(harness: &mut dyn Harness) {
    let (tx, mut rx) = mpsc::channel(256);
    let mut sink = harness.build(tx).await;
    let backend = harness.backend();
    backend.set(Fault::Stall);
    let total = 60;
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let written = Arc::clone(&written);
        tokio::spawn(async move {
            for batch in workload(total) {
                sink.write(batch).await.unwrap();
                written.fetch_add(1, Ordering::SeqCst);
            }
            sink
        })
    };
    // Wait until the writer stops making progress (robust on a loaded machine).
    let started = std::time::Instant::now();
    let mut blocked_at = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = written.load(Ordering::SeqCst);
        if now == blocked_at {
            break;
        }
        blocked_at = now;
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the writer never settled"
        );
    }
    assert!(
        blocked_at < usize::try_from(total).unwrap(),
        "write never blocked while the backend stalled (buffers without bound)"
    );
    assert!(
        rx.try_recv().is_err(),
        "a ticket was acked before its rows were stored"
    );
    backend.release();
    let mut sink = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("writes resume once the backend recovers")
        .unwrap();
    sink.flush(FlushReason::Shutdown).await.unwrap();
    assert_all_committed(
        &collect_acks(&mut rx, usize::try_from(total).unwrap()).await,
        total,
    );
}

async fn shutdown_flushes_and_acks_follow_storage(harness: &mut dyn Harness) {
    let (tx, mut rx) = mpsc::channel(64);
    let mut sink = harness.build(tx).await;
    let batches = workload(1);
    let expected = keys(&batches);
    // While the backend stores nothing, no ack may come and a shutdown flush may not return.
    let backend = harness.backend();
    backend.set(Fault::Stall);
    let flushed = tokio::spawn(async move {
        for batch in batches {
            sink.write(batch).await.unwrap();
        }
        sink.flush(FlushReason::Shutdown).await.unwrap();
        sink
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rx.try_recv().is_err(),
        "acked while the backend stored nothing"
    );
    assert!(
        !flushed.is_finished(),
        "flush(Shutdown) returned while the backend stored nothing"
    );
    backend.release();
    tokio::time::timeout(Duration::from_secs(30), flushed)
        .await
        .expect("the shutdown flush completes once the backend recovers")
        .unwrap();
    assert!(
        rx.try_recv().is_ok(),
        "flush(Shutdown) returned before sending the ack"
    );
    let mut stored = harness.stored().await;
    stored.sort();
    assert_eq!(stored, expected);
}

/// Runs every check, each on a fresh harness from `make`.
pub(crate) async fn conformance<H: Harness, F: AsyncFnMut() -> H>(mut make: F) {
    delivers_every_row_exactly_once_when_healthy(&mut make().await).await;
    loses_no_row_under_injected_failures(&mut make().await).await;
    replayed_rows_are_absorbed_where_idempotent(&mut make().await).await;
    write_blocks_while_the_backend_stalls_and_nothing_is_acked(&mut make().await).await;
    shutdown_flushes_and_acks_follow_storage(&mut make().await).await;
}
