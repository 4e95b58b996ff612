//! The one conformance suite every sink passes, in the manner of object_store's shared integration
//! tests: each sink plugs a [`Harness`] (how to build it, read back what it stored, and make its
//! backend fail or stall) into the same checks:
//!
//! * delivers every row exactly once when healthy;
//! * at-least-once under injected failures, no row lost, no row reported failed;
//! * duplicates after a replay are absorbed where `idempotent()` says so;
//! * `write` blocks (bounded memory) while the backend is stalled, and nothing is acked meanwhile;
//! * a shutdown flush delivers everything buffered, and acks come only after the data is stored.
//!
//! Backends are real: Parquet and IoT Hub storage files on an object store wrapped to inject faults, a real HTTP/1.1
//! server for webhooks that can answer 200, 4xx, 5xx, 429 with `Retry-After`, hang, or close the
//! connection, PostgreSQL and SQLite, the emulator's event hubs and RabbitMQ's AMQP 1.0 queues
//! behind a TCP proxy that cuts or holds connections. Sink-specific behaviour that needs those
//! peers (webhook retries, signatures, over-size and rejected AMQP messages) lives here too, in
//! its own module.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hubroute_message::{Message, MessageBatchBuilder};
use hubroute_sinks::{Ack, AckSender, FlushReason, Sink, SinkBatch};
use tokio::sync::{Notify, mpsc};

/// Identifies a stored row: (event hub, partition, sequence number).
type RowKey = (String, String, i64);

/// What the backend does with the next operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Answer normally.
    None,
    /// Fail this many operations with a retryable error, then answer normally.
    FailNext(usize),
    /// Do not answer until [`Backend::release`].
    Stall,
}

/// Fault injection shared between a test and the backend it controls.
#[derive(Debug)]
struct Backend {
    fault: Mutex<Fault>,
    released: Notify,
}

impl Backend {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            fault: Mutex::new(Fault::None),
            released: Notify::new(),
        })
    }

    fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    fn release(&self) {
        self.set(Fault::None);
        self.released.notify_waiters();
    }

    /// Called by the backend before each operation: `true` means fail it.
    async fn before_operation(&self) -> bool {
        loop {
            let notified = self.released.notified();
            let fault = *self.fault.lock().unwrap();
            match fault {
                Fault::None => return false,
                Fault::FailNext(n) => {
                    *self.fault.lock().unwrap() = if n > 1 {
                        Fault::FailNext(n - 1)
                    } else {
                        Fault::None
                    };
                    return true;
                }
                Fault::Stall => notified.await,
            }
        }
    }
}

/// How a sink plugs into the suite.
#[async_trait]
trait Harness: Send {
    /// Builds a sink over this harness's backend; a second call is a restart over the same data.
    /// The sink must only deliver on `flush`, on its own size limits, or at its deadline, with a
    /// deadline far enough away (minutes) that tests control delivery.
    async fn build(&mut self, acks: AckSender) -> Box<dyn Sink>;
    /// Every row stored so far, duplicates included.
    async fn stored(&mut self) -> Vec<RowKey>;
    /// The fault injector of the backend.
    fn backend(&self) -> Arc<Backend>;
}

fn rows(partition: &str, sequence_numbers: std::ops::Range<i64>) -> Vec<Message> {
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
fn workload(count: u64) -> Vec<SinkBatch> {
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

fn keys(batches: &[SinkBatch]) -> Vec<RowKey> {
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

async fn collect_acks(rx: &mut mpsc::Receiver<Ack>, count: usize) -> Vec<Ack> {
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

fn assert_all_committed(acks: &[Ack], tickets: u64) {
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
    harness.backend().set(Fault::FailNext(3));
    for batch in batches {
        sink.write(batch).await.unwrap();
    }
    sink.flush(FlushReason::Shutdown).await.unwrap();
    assert_all_committed(&collect_acks(&mut rx, 4).await, 4);
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
    for batch in batches {
        sink.write(batch).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = harness.stored().await;
    if before.is_empty() {
        assert!(rx.try_recv().is_err(), "acked before anything was stored");
    }
    sink.flush(FlushReason::Shutdown).await.unwrap();
    let acks = rx.try_recv();
    assert!(
        acks.is_ok(),
        "flush(Shutdown) returned before sending the ack"
    );
    let mut stored = harness.stored().await;
    stored.sort();
    assert_eq!(stored, expected);
}

/// Runs every check, each on a fresh harness from `make`.
async fn conformance<H: Harness, F: AsyncFnMut() -> H>(mut make: F) {
    delivers_every_row_exactly_once_when_healthy(&mut make().await).await;
    loses_no_row_under_injected_failures(&mut make().await).await;
    replayed_rows_are_absorbed_where_idempotent(&mut make().await).await;
    write_blocks_while_the_backend_stalls_and_nothing_is_acked(&mut make().await).await;
    shutdown_flushes_and_acks_follow_storage(&mut make().await).await;
}

mod parquet_sink {
    //! The Parquet sink over a local directory wrapped in a fault-injecting object store.

    use std::fmt;

    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    use bytes::Bytes;
    use futures::TryStreamExt as _;
    use futures::stream::BoxStream;
    use hubroute_sinks::{ObjectStoreConfig, ParquetSink, ParquetSinkConfig, RetryPolicy};
    use object_store::local::LocalFileSystem;
    use object_store::path::Path;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
        ObjectStoreExt as _, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    };
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    /// Uploads consult the [`Backend`] first; reads pass through.
    #[derive(Debug)]
    pub(super) struct FaultyStore {
        pub(super) inner: LocalFileSystem,
        pub(super) backend: Arc<Backend>,
    }

    impl fmt::Display for FaultyStore {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "FaultyStore({})", self.inner)
        }
    }

    fn injected() -> object_store::Error {
        object_store::Error::Generic {
            store: "FaultyStore",
            source: "injected failure: connection reset".into(),
        }
    }

    #[async_trait]
    impl ObjectStore for FaultyStore {
        async fn put_opts(
            &self,
            path: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            if self.backend.before_operation().await {
                return Err(injected());
            }
            self.inner.put_opts(path, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            path: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            if self.backend.before_operation().await {
                return Err(injected());
            }
            self.inner.put_multipart_opts(path, opts).await
        }
        async fn get_opts(
            &self,
            path: &Path,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.inner.get_opts(path, options).await
        }
        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    struct ParquetHarness {
        dir: tempfile::TempDir,
        backend: Arc<Backend>,
    }

    #[async_trait]
    impl Harness for ParquetHarness {
        async fn build(&mut self, acks: AckSender) -> Box<dyn Sink> {
            let store = FaultyStore {
                inner: LocalFileSystem::new_with_prefix(self.dir.path()).unwrap(),
                backend: Arc::clone(&self.backend),
            };
            let mut config = ParquetSinkConfig::new(
                "lake",
                ObjectStoreConfig::Local {
                    root: self.dir.path().to_owned(),
                },
            );
            config.max_file_age = Duration::from_secs(600);
            config.max_file_bytes = 8 * 1024;
            config.max_concurrent_uploads = 1;
            config.retry = RetryPolicy {
                initial_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(50),
            };
            Box::new(ParquetSink::with_store(config, Arc::new(store), acks).unwrap())
        }

        async fn stored(&mut self) -> Vec<RowKey> {
            let store = LocalFileSystem::new_with_prefix(self.dir.path()).unwrap();
            let objects: Vec<ObjectMeta> = store.list(None).try_collect().await.unwrap();
            let mut keys = Vec::new();
            for object in objects {
                let bytes: Bytes = store
                    .get(&object.location)
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .unwrap()
                    .build()
                    .unwrap();
                for batch in reader {
                    let batch = batch.unwrap();
                    let hubs = batch
                        .column_by_name("event_hub")
                        .unwrap()
                        .as_string::<i32>();
                    let partitions = batch
                        .column_by_name("partition")
                        .unwrap()
                        .as_string::<i32>();
                    let seq = batch
                        .column_by_name("sequence_number")
                        .unwrap()
                        .as_primitive::<Int64Type>();
                    for i in 0..batch.num_rows() {
                        keys.push((
                            hubs.value(i).to_owned(),
                            partitions.value(i).to_owned(),
                            seq.value(i),
                        ));
                    }
                }
            }
            keys
        }

        fn backend(&self) -> Arc<Backend> {
            Arc::clone(&self.backend)
        }
    }

    #[tokio::test]
    async fn the_parquet_sink_conforms() {
        conformance(async || ParquetHarness {
            dir: tempfile::tempdir().unwrap(),
            backend: Backend::new(),
        })
        .await;
    }
}

mod storage_sink {
    //! The storage sink (IoT Hub's Avro files) over a local directory wrapped in the same
    //! fault-injecting object store as the Parquet sink. IoT Hub's record has no event hub, partition
    //! or sequence number field: the harness reads them back from the blob name (`{iothub}` and
    //! `{partition}`) and from the workload's bodies (`{"n": <sequence number>}`), with apache-avro's
    //! reader.

    use futures::TryStreamExt as _;
    use hubroute_sinks::{ObjectStoreConfig, RetryPolicy, StorageSink, StorageSinkConfig};
    use object_store::local::LocalFileSystem;
    use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt as _};

    use super::parquet_sink::FaultyStore;
    use super::*;

    struct StorageHarness {
        dir: tempfile::TempDir,
        backend: Arc<Backend>,
    }

    #[async_trait]
    impl Harness for StorageHarness {
        async fn build(&mut self, acks: AckSender) -> Box<dyn Sink> {
            let store = FaultyStore {
                inner: LocalFileSystem::new_with_prefix(self.dir.path()).unwrap(),
                backend: Arc::clone(&self.backend),
            };
            let mut config = StorageSinkConfig::new(
                "archive",
                ObjectStoreConfig::Local {
                    root: self.dir.path().to_owned(),
                },
            );
            config.batch_frequency = Duration::from_secs(600);
            // Below IoT Hub's 10 MiB minimum (allowed through the Rust API) so that files roll
            // and a stalled store blocks `write` within the workload.
            config.max_chunk_bytes = 8 * 1024;
            config.max_concurrent_uploads = 1;
            config.retry = RetryPolicy {
                initial_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(50),
            };
            Box::new(StorageSink::with_store(config, Arc::new(store), acks).unwrap())
        }

        async fn stored(&mut self) -> Vec<RowKey> {
            let store = LocalFileSystem::new_with_prefix(self.dir.path()).unwrap();
            let objects: Vec<ObjectMeta> = store.list(None).try_collect().await.unwrap();
            let mut keys = Vec::new();
            for object in objects {
                let name = object.location.to_string();
                let mut parts = name.split('/');
                let (hub, partition) = (parts.next().unwrap(), parts.next().unwrap());
                let bytes = store
                    .get(&object.location)
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                for record in apache_avro::Reader::new(&bytes[..]).unwrap() {
                    let apache_avro::types::Value::Record(fields) = record.unwrap() else {
                        panic!("{name}: not a record");
                    };
                    let body = fields.iter().find(|(f, _)| f == "Body").unwrap();
                    let apache_avro::types::Value::Union(1, bytes) = &body.1 else {
                        panic!("{name}: a body is not bytes");
                    };
                    let apache_avro::types::Value::Bytes(bytes) = bytes.as_ref() else {
                        panic!("{name}: a body is not bytes");
                    };
                    let body: serde_json::Value = serde_json::from_slice(bytes).unwrap();
                    keys.push((
                        hub.to_owned(),
                        partition.to_owned(),
                        body["n"].as_i64().unwrap(),
                    ));
                }
            }
            keys
        }

        fn backend(&self) -> Arc<Backend> {
            Arc::clone(&self.backend)
        }
    }

    #[tokio::test]
    async fn the_storage_sink_conforms() {
        conformance(async || StorageHarness {
            dir: tempfile::tempdir().unwrap(),
            backend: Backend::new(),
        })
        .await;
    }
}

mod webhook_sink {
    //! The webhook sink against a real HTTP/1.1 server on 127.0.0.1:0.
    //!
    //! The server is written on a raw `TcpListener` rather than a framework so that it can misbehave
    //! the way real endpoints do: hang without answering, or close the connection mid-request.

    use std::time::Instant;

    use hmac::{Hmac, KeyInit, Mac};
    use hubroute_sinks::{
        RetryPolicy, Secret, SignatureConfig, WebhookFormat, WebhookSink, WebhookSinkConfig,
    };
    use serde_json::Value;
    use sha2::Sha256;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A scripted answer of the test server.
    #[derive(Debug, Clone)]
    enum Answer {
        Status(u16),
        RetryAfter(u16, u64),
        Hang,
        Close,
    }

    /// One request the server accepted with 2xx.
    #[derive(Debug, Clone)]
    struct Received {
        headers: BTreeMap<String, String>,
        raw: Vec<u8>,
        body: Value,
        at: Instant,
    }

    #[derive(Debug, Default)]
    struct ServerState {
        /// Answers for the next requests, in order; then 200 (or the backend's fault).
        script: Vec<Answer>,
        accepted: Vec<Received>,
        attempts: usize,
    }

    struct TestServer {
        url: String,
        state: Arc<Mutex<ServerState>>,
        backend: Arc<Backend>,
    }

    impl TestServer {
        async fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/ingest", listener.local_addr().unwrap());
            let state = Arc::new(Mutex::new(ServerState::default()));
            let backend = Backend::new();
            let (s, b) = (Arc::clone(&state), Arc::clone(&backend));
            tokio::spawn(async move {
                loop {
                    let (socket, _) = listener.accept().await.unwrap();
                    tokio::spawn(serve(socket, Arc::clone(&s), Arc::clone(&b)));
                }
            });
            Self {
                url,
                state,
                backend,
            }
        }

        fn script(&self, answers: Vec<Answer>) {
            self.state.lock().unwrap().script = answers;
        }

        fn accepted(&self) -> Vec<Received> {
            self.state.lock().unwrap().accepted.clone()
        }

        fn attempts(&self) -> usize {
            self.state.lock().unwrap().attempts
        }
    }

    async fn serve(socket: TcpStream, state: Arc<Mutex<ServerState>>, backend: Arc<Backend>) {
        let mut reader = BufReader::new(socket);
        loop {
            let mut headers = BTreeMap::new();
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            loop {
                line.clear();
                reader.read_line(&mut line).await.unwrap();
                let trimmed = line.trim_end();
                if trimmed.is_empty() {
                    break;
                }
                let (name, value) = trimmed.split_once(':').unwrap();
                headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
            }
            let length: usize = headers["content-length"].parse().unwrap();
            let mut body = vec![0; length];
            reader.read_exact(&mut body).await.unwrap();
            let scripted = {
                let mut state = state.lock().unwrap();
                state.attempts += 1;
                (!state.script.is_empty()).then(|| state.script.remove(0))
            };
            let answer = match scripted {
                Some(answer) => answer,
                None if backend.before_operation().await => Answer::Status(503),
                None => Answer::Status(200),
            };
            let (status, extra) = match answer {
                Answer::Close => return,
                Answer::Hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                Answer::Status(status) => (status, String::new()),
                Answer::RetryAfter(status, seconds) => {
                    (status, format!("retry-after: {seconds}\r\n"))
                }
            };
            if (200..300).contains(&status) {
                state.lock().unwrap().accepted.push(Received {
                    headers: headers.clone(),
                    body: serde_json::from_slice(&body).unwrap(),
                    raw: body.clone(),
                    at: Instant::now(),
                });
            }
            let text = format!("status {status}");
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n{extra}\r\n{text}",
                text.len()
            );
            if reader
                .get_mut()
                .write_all(response.as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    fn quick_config(url: &str) -> WebhookSinkConfig {
        let mut config = WebhookSinkConfig::new("hook", url);
        config.linger = Duration::from_secs(600);
        config.max_batch_events = 10;
        config.max_in_flight = 2;
        config.timeout = Duration::from_millis(500);
        config.retry = RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
        };
        config
    }

    fn row_keys(body: &Value) -> Vec<RowKey> {
        body.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let m = e.get("data").unwrap_or(e);
                (
                    m["eventHub"].as_str().unwrap().to_owned(),
                    m["partition"].as_str().unwrap().to_owned(),
                    m["sequenceNumber"].as_i64().unwrap(),
                )
            })
            .collect()
    }

    struct WebhookHarness {
        server: TestServer,
    }

    #[async_trait]
    impl Harness for WebhookHarness {
        async fn build(&mut self, acks: AckSender) -> Box<dyn Sink> {
            let mut config = quick_config(&self.server.url);
            config.max_in_flight = 1;
            Box::new(WebhookSink::new(config, acks).unwrap())
        }

        async fn stored(&mut self) -> Vec<RowKey> {
            self.server
                .accepted()
                .iter()
                .flat_map(|r| row_keys(&r.body))
                .collect()
        }

        fn backend(&self) -> Arc<Backend> {
            Arc::clone(&self.server.backend)
        }
    }

    #[tokio::test]
    async fn the_webhook_sink_conforms() {
        conformance(async || WebhookHarness {
            server: TestServer::start().await,
        })
        .await;
    }

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
}

mod postgres_sink {
    //! The PostgreSQL sink against the real server at 127.0.0.1:5432, reached through a TCP proxy
    //! that injects faults: a failed operation is a connection the proxy closes at once, a stall is
    //! a connection it holds without forwarding until released.

    use hubroute_sinks::{PostgresSink, PostgresSinkConfig, RetryPolicy, TableConfig};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_postgres::{Client, NoTls};

    use super::*;

    const POSTGRES: &str = "127.0.0.1:5432";

    async fn admin() -> Client {
        let (client, connection) =
            tokio_postgres::connect("host=127.0.0.1 port=5432 user=postgres dbname=test", NoTls)
                .await
                .unwrap_or_else(|error| {
                    panic!(
                        "PostgreSQL is not reachable at {POSTGRES} ({error}); start PostgreSQL: \
                 pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
                    )
                });
        tokio::spawn(connection);
        client
    }

    /// Forwards connections to PostgreSQL, asking the backend first.
    async fn proxy(backend: Arc<Backend>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let backend = Arc::clone(&backend);
                tokio::spawn(async move {
                    if backend.before_operation().await {
                        return;
                    }
                    let mut server = TcpStream::connect(POSTGRES).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        port
    }

    struct PostgresHarness {
        table: String,
        port: u16,
        backend: Arc<Backend>,
    }

    impl PostgresHarness {
        async fn new() -> Self {
            let backend = Backend::new();
            Self {
                table: format!("hr_conformance_{}", uuid::Uuid::new_v4().simple()),
                port: proxy(Arc::clone(&backend)).await,
                backend,
            }
        }
    }

    impl Drop for PostgresHarness {
        fn drop(&mut self) {
            let table = self.table.clone();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async {
                        let sql = format!("DROP TABLE IF EXISTS \"{table}\"");
                        admin().await.batch_execute(&sql).await.unwrap();
                    });
            })
            .join()
            .unwrap();
        }
    }

    #[async_trait]
    impl Harness for PostgresHarness {
        async fn build(&mut self, acks: AckSender) -> Box<dyn Sink> {
            let mut config = PostgresSinkConfig::new("warehouse", TableConfig::new(&self.table));
            config.port = self.port;
            config.dbname = "test".into();
            config.batch_max_rows = 40;
            config.linger = Duration::from_secs(600);
            config.retry = RetryPolicy {
                initial_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(50),
            };
            Box::new(PostgresSink::new(config, acks).unwrap())
        }

        async fn stored(&mut self) -> Vec<RowKey> {
            let sql = format!(
                "SELECT event_hub, partition, sequence_number FROM \"{}\"",
                self.table
            );
            match admin().await.query(&sql, &[]).await {
                Ok(rows) => rows
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect(),
                // Nothing was delivered yet, so the table was not created yet.
                Err(error) if error.code().is_some_and(|c| c.code() == "42P01") => Vec::new(),
                Err(error) => panic!("{error}"),
            }
        }

        fn backend(&self) -> Arc<Backend> {
            Arc::clone(&self.backend)
        }
    }

    #[tokio::test]
    async fn the_postgres_sink_conforms() {
        conformance(PostgresHarness::new).await;
    }
}

mod sqlite_sink {
    //! The SQLite sink on a database file. Faults are another connection holding the write lock: a
    //! stall holds it until released, a failure burst holds it briefly (the sink sees SQLITE_BUSY).

    use hubroute_sinks::{RetryPolicy, SqliteSink, SqliteSinkConfig, TableConfig};
    use rusqlite::Connection;

    use super::*;

    struct SqliteHarness {
        dir: tempfile::TempDir,
        backend: Arc<Backend>,
    }

    impl SqliteHarness {
        fn path(&self) -> std::path::PathBuf {
            self.dir.path().join("messages.db")
        }
    }

    /// Takes the database's write lock whenever the backend has a fault set.
    fn spawn_locker(path: std::path::PathBuf, backend: Arc<Backend>) {
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(5));
                let fault = *backend.fault.lock().unwrap();
                if fault == Fault::None {
                    if Arc::strong_count(&backend) == 1 {
                        return;
                    }
                    continue;
                }
                let locker = Connection::open(&path).unwrap();
                locker.execute_batch("BEGIN IMMEDIATE").unwrap();
                match fault {
                    Fault::FailNext(_) => {
                        std::thread::sleep(Duration::from_millis(200));
                        backend.set(Fault::None);
                    }
                    _ => {
                        while *backend.fault.lock().unwrap() != Fault::None {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
                locker.execute_batch("COMMIT").unwrap();
            }
        });
    }

    #[async_trait]
    impl Harness for SqliteHarness {
        async fn build(&mut self, acks: AckSender) -> Box<dyn Sink> {
            let mut config =
                SqliteSinkConfig::new("local", self.path(), TableConfig::new("messages"));
            config.batch_max_rows = 40;
            config.linger = Duration::from_secs(600);
            config.busy_timeout = Duration::from_millis(20);
            config.retry = RetryPolicy {
                initial_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(50),
            };
            Box::new(SqliteSink::new(config, acks).unwrap())
        }

        async fn stored(&mut self) -> Vec<RowKey> {
            let Ok(connection) = Connection::open(self.path()) else {
                return Vec::new();
            };
            let Ok(mut statement) =
                connection.prepare("SELECT event_hub, partition, sequence_number FROM messages")
            else {
                // Nothing was delivered yet, so the table was not created yet.
                return Vec::new();
            };
            statement
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        }

        fn backend(&self) -> Arc<Backend> {
            Arc::clone(&self.backend)
        }
    }

    #[tokio::test]
    async fn the_sqlite_sink_conforms() {
        conformance(async || {
            let harness = SqliteHarness {
                dir: tempfile::tempdir().unwrap(),
                backend: Backend::new(),
            };
            spawn_locker(harness.path(), Arc::clone(&harness.backend));
            harness
        })
        .await;
    }
}

mod amqp_sinks {
    //! The AMQP sinks against real peers reached through a TCP proxy that injects faults: the Event
    //! Hubs sink against the project's emulator, the Service Bus sink against RabbitMQ's AMQP 1.0
    //! plugin at 127.0.0.1:5672 (guest/guest, provisioned by `.ci/test`). A failed operation cuts
    //! the connection at the next bytes the sink sends; a stall holds those bytes until released.

    use std::net::SocketAddr;
    use std::sync::atomic::AtomicU64;

    use fe2o3_amqp::sasl_profile::SaslProfile;
    use fe2o3_amqp::types::messaging::{Body, Message as AmqpMessage};
    use fe2o3_amqp::types::primitives::{Timestamp, Value};
    use fe2o3_amqp::{Connection, Receiver, Session};
    use fe2o3_amqp_cbs::client::CbsClient;
    use fe2o3_amqp_cbs::token::CbsToken;
    use hubroute_emulator::{Emulator, EmulatorConfig, HubConfig, RunningEmulator};
    use hubroute_protocol::{ConnectionString, cbs};
    use hubroute_sinks::{AmqpSink, EventHubsSinkConfig, RetryPolicy, ServiceBusSinkConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const RABBITMQ: &str = "127.0.0.1:5672";

    fn quick_retry() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
        }
    }

    /// A TCP proxy to `upstream`: every chunk the client sends asks the backend first. Counts the
    /// connections it accepted.
    async fn faulty_proxy(upstream: SocketAddr, backend: Arc<Backend>) -> (u16, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let backend = Arc::clone(&backend);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let upstream_bytes = async {
                        let mut chunk = vec![0u8; 64 * 1024];
                        loop {
                            let n = client_read.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 || backend.before_operation().await {
                                return;
                            }
                            if server_write.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let downstream_bytes = tokio::io::copy(&mut server_read, &mut client_write);
                    tokio::select! {
                        () = upstream_bytes => {}
                        _ = downstream_bytes => {}
                    }
                });
            }
        });
        (port, connections)
    }

    /// The row a message's body names (the conformance rows carry their partition and number).
    fn row_key(body: &[u8]) -> RowKey {
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        (
            "hub".to_owned(),
            json["partition"].as_str().unwrap().to_owned(),
            json["n"].as_i64().unwrap(),
        )
    }

    fn body_bytes(message: &AmqpMessage<Body<Value>>) -> Vec<u8> {
        match &message.body {
            Body::Data(sections) => sections.iter().flat_map(|s| s.0.to_vec()).collect(),
            other => panic!("expected a data body, not {other:?}"),
        }
    }

    /// Receives from `receiver` until it is quiet for half a second, accepting each message.
    async fn drain(receiver: &mut Receiver) -> Vec<AmqpMessage<Body<Value>>> {
        let mut messages = Vec::new();
        while let Ok(delivery) =
            tokio::time::timeout(Duration::from_millis(500), receiver.recv::<Body<Value>>()).await
        {
            let delivery = delivery.unwrap();
            receiver.accept(&delivery).await.unwrap();
            messages.push(delivery.into_message());
        }
        messages
    }

    struct EventHubsHarness {
        emulator: RunningEmulator,
        port: u16,
        connections: Arc<AtomicU64>,
        backend: Arc<Backend>,
    }

    impl EventHubsHarness {
        async fn new() -> Self {
            let emulator = Emulator::start(EmulatorConfig {
                amqp_listen: "127.0.0.1:0".parse().unwrap(),
                hubs: vec![HubConfig::new("target", 2)],
                ..EmulatorConfig::default()
            })
            .await
            .unwrap();
            let backend = Backend::new();
            let (port, connections) =
                faulty_proxy(emulator.amqp_addr(), Arc::clone(&backend)).await;
            Self {
                emulator,
                port,
                connections,
                backend,
            }
        }

        /// The sink's connection string: the emulator's, through the proxy.
        fn connection_string(&self) -> ConnectionString {
            let direct = self.emulator.connection_string("target");
            let through_proxy = direct.replace(
                &format!(":{}", self.emulator.amqp_addr().port()),
                &format!(":{}", self.port),
            );
            ConnectionString::parse(&through_proxy).unwrap()
        }

        fn config(&self) -> EventHubsSinkConfig {
            let mut config = EventHubsSinkConfig::new("downstream", self.connection_string());
            config.retry = quick_retry();
            config
        }

        /// Every event of the target hub, read directly from the emulator.
        async fn events(&self) -> Vec<AmqpMessage<Body<Value>>> {
            let cs = ConnectionString::parse(&self.emulator.connection_string("target")).unwrap();
            let mut connection = Connection::builder()
                .container_id("conformance-reader")
                .sasl_profile(SaslProfile::Anonymous)
                .open(format!("amqp://{}", self.emulator.amqp_addr()).as_str())
                .await
                .unwrap();
            let mut session = Session::begin(&mut connection).await.unwrap();
            let mut cbs_client = CbsClient::attach(&mut session).await.unwrap();
            let audience = cs.audience("target");
            let expiry = chrono::Utc::now().timestamp() + 600;
            let token = cs.key.as_ref().unwrap().sign(&audience, expiry);
            cbs_client
                .put_token(
                    audience.as_str(),
                    CbsToken::new(
                        token.as_str(),
                        cbs::SAS_TOKEN_TYPE,
                        Timestamp::from_milliseconds(expiry * 1000),
                    ),
                )
                .await
                .unwrap();
            let mut events = Vec::new();
            for partition in 0..2 {
                let address = format!("target/ConsumerGroups/$Default/Partitions/{partition}");
                let mut receiver =
                    Receiver::attach(&mut session, format!("reader-{partition}"), address)
                        .await
                        .unwrap();
                events.extend(drain(&mut receiver).await);
                receiver.close().await.unwrap();
            }
            session.end().await.unwrap();
            connection.close().await.unwrap();
            events
        }
    }

    #[async_trait]
    impl Harness for EventHubsHarness {
        async fn build(&mut self, acks: AckSender) -> Box<dyn Sink> {
            Box::new(AmqpSink::event_hubs(&self.config(), acks).unwrap())
        }

        async fn stored(&mut self) -> Vec<RowKey> {
            self.events()
                .await
                .iter()
                .map(|m| row_key(&body_bytes(m)))
                .collect()
        }

        fn backend(&self) -> Arc<Backend> {
            Arc::clone(&self.backend)
        }
    }

    #[tokio::test]
    async fn the_event_hubs_sink_conforms() {
        conformance(EventHubsHarness::new).await;
    }

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

    impl EventHubsHarness {
        async fn stored_count(&self) -> usize {
            self.events().await.len()
        }
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
        let mut stored_keys: Vec<RowKey> =
            stored.drain(..).map(|m| row_key(&body_bytes(&m))).collect();
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

    /// RabbitMQ's queue `name`, declared by attaching a receiver to `/queue/<name>` (the plugin
    /// declares such queues), read back through `/amq/queue/<name>`.
    struct RabbitHarness {
        queue: String,
        port: u16,
        backend: Arc<Backend>,
        /// Everything read from the queue so far (reading consumes).
        seen: Vec<RowKey>,
    }

    async fn rabbit_session() -> (
        fe2o3_amqp::connection::ConnectionHandle<()>,
        fe2o3_amqp::session::SessionHandle<()>,
    ) {
        let mut connection = Connection::builder()
            .container_id(format!("conformance-{}", uuid::Uuid::new_v4()))
            .sasl_profile(SaslProfile::Plain {
                username: "guest".into(),
                password: "guest".into(),
            })
            .open(format!("amqp://{RABBITMQ}").as_str())
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "RabbitMQ with the AMQP 1.0 plugin is not reachable at {RABBITMQ} ({error}); \
                     run .ci/test, which enables rabbitmq_amqp1_0"
                )
            });
        let session = Session::begin(&mut connection).await.unwrap();
        (connection, session)
    }

    impl RabbitHarness {
        async fn new() -> Self {
            let queue = format!("hubroute-conformance-{}", uuid::Uuid::new_v4().simple());
            let (mut connection, mut session) = rabbit_session().await;
            let declare = Receiver::attach(&mut session, "declare", format!("/queue/{queue}"))
                .await
                .unwrap();
            // RabbitMQ 3.10 answers a close with a non-closing detach; the queue exists either way.
            let _ = declare.close().await;
            let _ = session.end().await;
            let _ = connection.close().await;
            let backend = Backend::new();
            let (port, _) = faulty_proxy(RABBITMQ.parse().unwrap(), Arc::clone(&backend)).await;
            Self {
                queue,
                port,
                backend,
                seen: Vec::new(),
            }
        }
    }

    impl Drop for RabbitHarness {
        fn drop(&mut self) {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["delete_queue", &self.queue])
                .output();
        }
    }

    #[async_trait]
    impl Harness for RabbitHarness {
        async fn build(&mut self, acks: AckSender) -> Box<dyn Sink> {
            let mut config = ServiceBusSinkConfig::broker(
                "rabbit",
                format!("amqp://127.0.0.1:{}", self.port),
                format!("/amq/queue/{}", self.queue),
            );
            config.username = Some("guest".into());
            config.password = Some(hubroute_sinks::Secret::new("guest"));
            config.retry = quick_retry();
            Box::new(AmqpSink::service_bus(&config, acks).unwrap())
        }

        async fn stored(&mut self) -> Vec<RowKey> {
            let (mut connection, mut session) = rabbit_session().await;
            let mut receiver = Receiver::attach(
                &mut session,
                "conformance-reader",
                format!("/amq/queue/{}", self.queue),
            )
            .await
            .unwrap();
            for message in drain(&mut receiver).await {
                self.seen.push(row_key(&body_bytes(&message)));
            }
            let _ = receiver.close().await;
            let _ = session.end().await;
            let _ = connection.close().await;
            self.seen.clone()
        }

        fn backend(&self) -> Arc<Backend> {
            Arc::clone(&self.backend)
        }
    }

    #[tokio::test]
    async fn the_service_bus_sink_conforms_against_rabbitmq() {
        conformance(RabbitHarness::new).await;
    }
}
