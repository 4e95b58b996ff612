//! The webhook sink's own behaviour against the test server: which answers are retried, how
//! `Retry-After` is honoured, what fails rows permanently, how requests are bounded and lingered,
//! and the CloudEvents format with signature and custom headers.

use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use hubroute_message::{Message, MessageBatchBuilder};
use hubroute_sinks::{
    Ack, FlushReason, Secret, SignatureConfig, Sink, SinkBatch, WebhookFormat, WebhookSink,
    WebhookSinkConfig,
};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::backends::webhook::{Answer, TestServer, quick_config, row_keys};
use crate::contract::rows;

async fn send(config: WebhookSinkConfig, messages: &[Message]) -> Ack {
    let (tx, mut rx) = mpsc::channel(8);
    let mut sink = WebhookSink::new(config, tx).unwrap();
    sink.write(SinkBatch {
        ticket: 1,
        batch: MessageBatchBuilder::batch_of(messages).unwrap(),
    })
    .await
    .unwrap();
    sink.flush(FlushReason::Shutdown).await.unwrap();
    rx.recv().await.unwrap()
}

#[tokio::test]
async fn retryable_answers_are_retried_until_delivered() {
    let cases = [
        (
            "server error",
            vec![Answer::Status(500), Answer::Status(503)],
        ),
        ("request timeout", vec![Answer::Status(408)]),
        ("closed connection", vec![Answer::Close, Answer::Close]),
        ("hung request", vec![Answer::Hang]),
    ];
    for (case, script) in cases {
        let server = TestServer::start().await;
        let failures = script.len();
        server.script(script);
        let ack = send(quick_config(&server.url), &rows("0", 0..3)).await;
        assert!(ack.failed.is_empty(), "{case}: {ack:?}");
        assert_eq!(server.attempts(), failures + 1, "{case}");
        assert_eq!(row_keys(&server.accepted()[0].body).len(), 3, "{case}");
    }
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = TestServer::start().await;
    server.script(vec![Answer::RetryAfter(429, 1)]);
    let mut config = quick_config(&server.url);
    config.retry.max_backoff = Duration::from_secs(5);
    let started = Instant::now();
    let ack = send(config, &rows("0", 0..2)).await;
    assert!(ack.failed.is_empty());
    let waited = server.accepted()[0].at - started;
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}, not 1 s"
    );
}

#[tokio::test]
async fn other_client_errors_fail_the_requests_rows_permanently() {
    let server = TestServer::start().await;
    server.script(vec![Answer::Status(400)]);
    let mut config = quick_config(&server.url);
    config.max_batch_events = 2;
    config.max_in_flight = 1;
    let ack = send(config, &rows("0", 0..5)).await;
    assert_eq!(ack.failed.iter().map(|f| f.row).collect::<Vec<_>>(), [0, 1]);
    assert!(
        ack.failed[0].error.starts_with("HTTP 400"),
        "{:?}",
        ack.failed
    );
    assert_eq!(server.attempts(), 3, "a 400 is not retried");
}

#[tokio::test]
async fn requests_are_bounded_by_count_and_bytes() {
    // (max events, max bytes, expected events per request or None, most bytes per request)
    let cases = [
        (7, usize::MAX, Some(vec![7, 7, 6]), usize::MAX),
        (100, 1_500, None, 1_500),
    ];
    for (max_events, max_bytes, expected, byte_bound) in cases {
        let server = TestServer::start().await;
        let mut config = quick_config(&server.url);
        config.max_batch_events = max_events;
        config.max_batch_bytes = max_bytes;
        config.max_in_flight = 1;
        let ack = send(config, &rows("0", 0..20)).await;
        assert!(ack.failed.is_empty());
        let accepted = server.accepted();
        let mut sizes: Vec<usize> = accepted
            .iter()
            .map(|r| r.body.as_array().unwrap().len())
            .collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.len() > 1, "one request for everything");
        if let Some(expected) = expected {
            assert_eq!(sizes, expected, "max_events {max_events}");
        }
        for request in &accepted {
            assert!(
                request.raw.len() <= byte_bound,
                "{} bytes",
                request.raw.len()
            );
        }
    }
}

#[tokio::test]
async fn a_partial_batch_is_sent_when_its_linger_expires() {
    let server = TestServer::start().await;
    let mut config = quick_config(&server.url);
    config.linger = Duration::from_millis(100);
    let (tx, mut rx) = mpsc::channel(8);
    let mut sink = WebhookSink::new(config, tx).unwrap();
    let before = tokio::time::Instant::now();
    sink.write(SinkBatch {
        ticket: 5,
        batch: MessageBatchBuilder::batch_of(&rows("0", 0..3)).unwrap(),
    })
    .await
    .unwrap();
    let deadline = sink
        .flush_deadline()
        .expect("a partial batch has a deadline");
    assert!(deadline >= before + Duration::from_millis(100));
    sink.flush(FlushReason::Deadline).await.unwrap();
    assert_eq!(server.attempts(), 0, "sent before the linger expired");
    tokio::time::sleep_until(deadline).await;
    sink.flush(FlushReason::Deadline).await.unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack.ticket, 5);
    assert_eq!(sink.flush_deadline(), None);
}

#[tokio::test]
async fn cloudevents_batches_are_signed_and_carry_custom_headers() {
    let server = TestServer::start().await;
    let mut config = quick_config(&server.url);
    config.format = WebhookFormat::Cloudevents;
    config
        .headers
        .insert("x-functions-key".into(), Secret::new("k1"));
    config.signature = Some(SignatureConfig {
        secret: Secret::new("shared"),
        header: "X-Signature".into(),
    });
    let ack = send(config, &rows("2", 40..42)).await;
    assert!(ack.failed.is_empty());
    let received = server.accepted().remove(0);
    assert_eq!(
        received.headers["content-type"],
        "application/cloudevents-batch+json"
    );
    assert_eq!(received.headers["x-functions-key"], "k1");
    let sent = &received.body;
    assert_eq!(sent[0]["specversion"], "1.0");
    assert_eq!(sent[0]["id"], "hub/2/40");
    assert_eq!(sent[1]["data"]["body"]["n"], 41);
    let mut mac = Hmac::<Sha256>::new_from_slice(b"shared").unwrap();
    mac.update(&received.raw);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        received.headers["x-signature"],
        format!("sha256={expected}")
    );
}
