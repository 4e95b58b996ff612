//! `webhook_batch`: events/s through the webhook sink (JSON encoding, batching, HTTP POST, ack) to a
//! local HTTP/1.1 server that answers 200 at once, with 500-byte JSON messages.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hubroute_sinks::{WebhookSink, WebhookSinkConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

mod support;

const ROWS: usize = 32_768;
const BATCH_ROWS: usize = 4_096;

/// A keep-alive HTTP/1.1 server that reads each request and answers `200 OK`.
async fn serve_ok() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/ingest", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut reader = BufReader::new(socket);
                let mut line = String::new();
                loop {
                    let mut length = 0;
                    line.clear();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        reader.read_line(&mut line).await.expect("header");
                        let header = line.trim_end().to_ascii_lowercase();
                        if header.is_empty() {
                            break;
                        }
                        if let Some(value) = header.strip_prefix("content-length:") {
                            length = value.trim().parse().expect("length");
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).await.expect("body");
                    let response = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if reader.get_mut().write_all(response).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

fn webhook_batch(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let url = runtime.block_on(serve_ok());
    let input = support::telemetry_batches(ROWS, BATCH_ROWS);
    let mut group = c.benchmark_group("webhook_batch");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("json_array_500_per_request", |b| {
        b.to_async(&runtime).iter(|| async {
            let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
            let mut sink =
                WebhookSink::new(WebhookSinkConfig::new("bench", url.as_str()), tx).expect("sink");
            support::write_flush_ack(&mut sink, &mut rx, &input).await;
        });
    });
    group.finish();
}

criterion_group!(benches, webhook_batch);
criterion_main!(benches);
