//! Unit tests of the Parquet sink: rolling, layout, typed columns, failures, and readability by the
//! parquet crate and by pyarrow (an independent reader), against the local filesystem, memory,
//! Azurite and an S3-compatible server (moto).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use futures::TryStreamExt as _;
use hubroute_message::{Message, MessageBatchBuilder};
use object_store::memory::InMemory;
use object_store::{MultipartUpload, ObjectStoreExt as _, PutPayload, PutResult};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::sync::mpsc;

use super::*;
use crate::object_files::PART_BYTES;
use crate::{Ack, ObjectStoreConfig, Secret, drive_sink};

fn messages(
    partition: &str,
    sequence_numbers: std::ops::Range<i64>,
    body_len: usize,
) -> Vec<Message> {
    sequence_numbers
        .map(|n| {
            let mut m = Message::telemetry(format!(
                r#"{{"temperature":{n}.5,"pad":"{}"}}"#,
                "x".repeat(body_len)
            ));
            m.partition = partition.to_owned();
            m.sequence_number = n;
            m.offset = (n * 100).to_string();
            m
        })
        .collect()
}

fn sink_batch(ticket: Ticket, messages: &[Message]) -> SinkBatch {
    SinkBatch {
        ticket,
        batch: MessageBatchBuilder::batch_of(messages).unwrap(),
    }
}

async fn files(store: &dyn ObjectStore) -> Vec<(Path, Bytes)> {
    let mut metas: Vec<_> = store.list(None).try_collect().await.unwrap();
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    let mut out = Vec::new();
    for meta in metas {
        let bytes = store
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        out.push((meta.location, bytes));
    }
    out
}

fn read(bytes: &Bytes) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
        .unwrap()
        .build()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn sequence_numbers(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("sequence_number")
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

async fn acks_for(rx: &mut mpsc::Receiver<Ack>, count: usize) -> Vec<Ack> {
    let mut acks = Vec::new();
    while acks.len() < count {
        let ack = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("an ack within 20 s")
            .expect("the sink keeps the ack channel open");
        acks.push(ack);
    }
    acks.sort_by_key(|a| a.ticket);
    acks
}

fn python() -> PathBuf {
    std::env::var_os("HUBROUTE_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
        PathBuf::from,
    )
}

/// Reads files with pyarrow: `(rows, column names, sorted sequence numbers)`.
fn read_with_pyarrow(paths: &[PathBuf]) -> serde_json::Value {
    let script = "import sys, json, pyarrow.parquet as pq, pyarrow as pa\n\
        t = pa.concat_tables([pq.read_table(p) for p in sys.argv[1:]])\n\
        print(json.dumps({'rows': t.num_rows, 'columns': t.column_names, \
        'seq': sorted(t.column('sequence_number').to_pylist()), \
        'temperature': sorted(t.column('temperature').to_pylist())}))";
    let output = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(paths)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; run .ci/test (or python3 -m venv .venv && .venv/bin/pip install pyarrow)",
                python().display()
            )
        });
    assert!(
        output.status.success(),
        "pyarrow could not read the files (install it: .venv/bin/pip install pyarrow): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn temperature_column() -> TypedColumn {
    TypedColumn {
        name: "temperature".into(),
        path: "$.temperature".into(),
        data_type: TypedColumnType::Float64,
    }
}

/// An open file buffers its body page uncompressed: the page must close near `PAGE_BYTES`, not at
/// parquet-rs's 1 MiB default, or memory grows by megabytes per open file.
#[tokio::test]
async fn body_pages_close_near_their_bound() {
    use parquet::file::reader::{FileReader as _, SerializedFileReader};

    let store = Arc::new(InMemory::new());
    let config = ParquetSinkConfig::new("lake", ObjectStoreConfig::Local { root: "/".into() });
    let (tx, mut rx) = mpsc::channel(16);
    let mut sink = ParquetSink::with_store(config, store.clone(), tx).unwrap();
    sink.write(sink_batch(0, &messages("0", 0..4_000, 480)))
        .await
        .unwrap();
    sink.flush(FlushReason::Shutdown).await.unwrap();
    acks_for(&mut rx, 1).await;

    let stored = files(store.as_ref()).await;
    let reader = SerializedFileReader::new(stored[0].1.clone()).unwrap();
    let row_group = reader.get_row_group(0).unwrap();
    let body = (0..row_group.num_columns())
        .find(|&i| row_group.metadata().column(i).column_path().string() == "body")
        .unwrap();
    let mut pages = row_group.get_column_page_reader(body).unwrap();
    let mut sizes = Vec::new();
    while let Some(page) = pages.get_next_page().unwrap() {
        sizes.push(page.buffer().len());
    }
    // 4 000 bodies of ~500 bytes are ~2 MB: many pages, none above the bound plus one mini batch.
    let bound = PAGE_BYTES + WRITE_BATCH_ROWS * 520;
    assert!(sizes.len() >= 8, "{sizes:?}");
    assert!(sizes.iter().all(|&size| size <= bound), "{sizes:?}");
}

/// A dictionary-encoded column's page closes by rows (its few bits per row never reach the byte
/// bound), so an open file holds at most `PAGE_ROWS` of its indices; the body column carries no
/// min/max statistics (they prune nothing and cost two comparisons per body), nor do the property
/// maps' keys and values (one range over every property's values prunes nothing either).
#[tokio::test]
async fn dictionary_pages_close_by_rows_and_bodies_and_property_maps_carry_no_statistics() {
    use parquet::file::reader::{FileReader as _, SerializedFileReader};

    let store = Arc::new(InMemory::new());
    let config = ParquetSinkConfig::new("lake", ObjectStoreConfig::Local { root: "/".into() });
    let (tx, mut rx) = mpsc::channel(16);
    let mut sink = ParquetSink::with_store(config, store.clone(), tx).unwrap();
    let mut batch = messages("0", 0..10_000, 8);
    for (index, message) in batch.iter_mut().enumerate() {
        message.system.connection_device_id = Some(format!("device-{}", index % 7));
        message.application_properties = vec![
            (
                "severity".to_owned(),
                hubroute_message::AppPropertyValue::String(format!("level-{}", index % 3)),
            ),
            (
                "count".to_owned(),
                hubroute_message::AppPropertyValue::Long(index as i64),
            ),
        ];
    }
    sink.write(sink_batch(0, &batch)).await.unwrap();
    sink.flush(FlushReason::Shutdown).await.unwrap();
    acks_for(&mut rx, 1).await;

    let stored = files(store.as_ref()).await;
    let reader = SerializedFileReader::new(stored[0].1.clone()).unwrap();
    let row_group = reader.get_row_group(0).unwrap();
    let column = |name: &str| {
        (0..row_group.num_columns())
            .find(|&i| row_group.metadata().column(i).column_path().string() == name)
            .unwrap()
    };
    let mut pages = row_group
        .get_column_page_reader(column("connection_device_id"))
        .unwrap();
    let mut rows = Vec::new();
    while let Some(page) = pages.get_next_page().unwrap() {
        if !matches!(page, parquet::column::page::Page::DictionaryPage { .. }) {
            rows.push(page.num_values() as usize);
        }
    }
    assert_eq!(rows.iter().sum::<usize>(), 10_000, "{rows:?}");
    assert!(rows.iter().all(|&n| n <= PAGE_ROWS), "{rows:?}");
    for unpruned in [
        "body",
        "application_properties.entries.key",
        "application_properties.entries.value",
        "application_property_types.entries.key",
        "application_property_types.entries.value",
    ] {
        let chunk = row_group.metadata().column(column(unpruned));
        assert!(
            chunk.statistics().is_none(),
            "{unpruned}: {:?}",
            chunk.statistics()
        );
    }
    for kept in ["sequence_number", "connection_device_id"] {
        let chunk = row_group.metadata().column(column(kept));
        assert!(chunk.statistics().is_some(), "{kept} keeps its statistics");
    }
}

#[tokio::test]
async fn files_roll_by_size_and_are_readable_by_parquet_and_pyarrow() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let mut config =
        ParquetSinkConfig::new("lake", ObjectStoreConfig::Local { root: root.clone() });
    config.max_file_bytes = 4_000;
    config.columns = vec![temperature_column()];
    config.iothub = Some("myhub".into());
    let (tx, mut rx) = mpsc::channel(16);
    let mut sink = ParquetSink::new(config, tx).unwrap();
    for ticket in 0..3 {
        let start = i64::try_from(ticket).unwrap() * 40;
        sink.write(sink_batch(ticket, &messages("1", start..start + 40, 200)))
            .await
            .unwrap();
    }
    sink.flush(FlushReason::Shutdown).await.unwrap();
    let acks = acks_for(&mut rx, 3).await;
    assert!(acks.iter().all(|a| a.failed.is_empty()), "{acks:?}");

    let store = ObjectStoreConfig::Local { root: root.clone() }
        .build("t")
        .unwrap();
    let mut stored = files(store.as_ref()).await;
    // Names end in a random suffix: put the files in row order.
    stored.sort_by_key(|(_, bytes)| sequence_numbers(&read(bytes))[0]);
    assert!(
        stored.len() >= 3,
        "expected size rolls, got {} files",
        stored.len()
    );
    for (path, _) in &stored {
        let name = path.as_ref();
        let segments: Vec<&str> = name.split('/').collect();
        assert_eq!(
            (segments[0], segments.len()),
            ("myhub", 6),
            "{name}: the default is {{iothub}}/{{YYYY}}/{{MM}}/{{DD}}/{{HH}}/{{mm}}-{{random}}"
        );
        assert!(name.ends_with(".parquet") && !name.contains('#'), "{name}");
    }
    let batches: Vec<RecordBatch> = stored.iter().flat_map(|(_, b)| read(b)).collect();
    let mut seq = sequence_numbers(&batches);
    seq.sort_unstable();
    assert_eq!(seq, (0..120).collect::<Vec<_>>());
    // The default `zstd` compresses the body with Zstandard and the other columns with Snappy.
    let metadata = ParquetRecordBatchReaderBuilder::try_new(stored[0].1.clone())
        .unwrap()
        .metadata()
        .clone();
    let codecs: BTreeMap<String, String> = metadata
        .row_group(0)
        .columns()
        .iter()
        .map(|c| (c.column_path().string(), format!("{:?}", c.compression())))
        .collect();
    assert!(codecs["body"].starts_with("ZSTD"), "{codecs:?}");
    assert!(
        codecs
            .iter()
            .filter(|(c, _)| *c != "body")
            .all(|(_, codec)| codec == "SNAPPY"),
        "{codecs:?}"
    );
    let temperature = batches[0]
        .column_by_name("temperature")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert_eq!(temperature.value(0), 0.5);

    let paths: Vec<PathBuf> = stored.iter().map(|(p, _)| root.join(p.as_ref())).collect();
    let independent = read_with_pyarrow(&paths);
    assert_eq!(independent["rows"], 120);
    assert_eq!(
        independent["seq"],
        serde_json::json!((0..120).collect::<Vec<_>>())
    );
    let columns = independent["columns"].as_array().unwrap();
    assert_eq!(columns.first().unwrap(), "event_hub");
    assert_eq!(columns.last().unwrap(), "temperature");
    assert!(columns.iter().any(|c| c == "application_properties"));
}

#[tokio::test]
async fn the_largest_open_file_rolls_early_when_all_open_files_pass_the_memory_budget() {
    let store = Arc::new(InMemory::new());
    let mut config = ParquetSinkConfig::new("lake", ObjectStoreConfig::default());
    config.max_buffered_bytes = 20_000;
    config.path_template = "{iothub}/{partition}".to_owned();
    let (tx, mut rx) = mpsc::channel(64);
    let mut sink = ParquetSink::with_store(config, store.clone(), tx).unwrap();
    // Eight partitions, each far below max_file_bytes (300 MiB), together above the budget.
    let mut ticket = 0;
    for round in 0..4 {
        for partition in 0..8 {
            let start = round * 20;
            sink.write(sink_batch(
                ticket,
                &messages(&partition.to_string(), start..start + 20, 200),
            ))
            .await
            .unwrap();
            ticket += 1;
            let open: u64 = sink.open.values().map(|f| f.buffered).sum();
            assert!(
                open <= 20_000 + 12_000,
                "open files hold {open} bytes, past the budget by more than one batch"
            );
        }
    }
    let rolled_before_shutdown = files(store.as_ref()).await.len();
    assert!(
        rolled_before_shutdown > 0,
        "no file was rolled early although the open files passed the budget"
    );
    sink.flush(FlushReason::Shutdown).await.unwrap();
    let acks = acks_for(&mut rx, 32).await;
    assert!(acks.iter().all(|a| a.failed.is_empty()));
    let batches: Vec<RecordBatch> = files(store.as_ref())
        .await
        .iter()
        .flat_map(|(_, b)| read(b))
        .collect();
    assert_eq!(
        sequence_numbers(&batches).len(),
        32 * 20,
        "every row is in a file"
    );
}

#[tokio::test]
async fn uploads_in_flight_count_against_the_memory_budget_and_make_writes_wait() {
    let gate = Arc::new(Semaphore::new(0));
    let store = Arc::new(FaultyStore::Gated(InMemory::new(), Arc::clone(&gate)));
    let mut config = ParquetSinkConfig::new("lake", ObjectStoreConfig::default());
    config.max_buffered_bytes = 20_000;
    // Upload slots never bind here: only the memory budget can make a write wait.
    config.max_concurrent_uploads = 64;
    let (tx, mut rx) = mpsc::channel(64);
    let mut sink = ParquetSink::with_store(config, store.clone(), tx).unwrap();
    let batch = |ticket: u64| {
        let start = i64::try_from(ticket).unwrap() * 20;
        sink_batch(
            ticket,
            &messages(&(ticket % 8).to_string(), start..start + 20, 200),
        )
    };
    // The uploads cannot finish: once open files and uploads pass the budget, a write must wait
    // (and resolve once an upload frees memory).
    let mut waited = false;
    for ticket in 0..16 {
        let mut write = std::pin::pin!(sink.write(batch(ticket)));
        match tokio::time::timeout(Duration::from_millis(300), &mut write).await {
            Ok(written) => written.unwrap(),
            Err(_) => {
                waited = true;
                gate.add_permits(1000);
                write.await.unwrap();
            }
        }
    }
    assert!(
        waited,
        "no write waited for the uploads holding the memory budget"
    );
    sink.flush(FlushReason::Shutdown).await.unwrap();
    assert_eq!(sink.uploading.load(Ordering::Acquire), 0);
    let acks = acks_for(&mut rx, 16).await;
    assert!(acks.iter().all(|a| a.failed.is_empty()));
}

#[tokio::test(start_paused = true)]
async fn files_roll_by_age_and_only_then_are_acked() {
    let store = Arc::new(InMemory::new());
    let mut config = ParquetSinkConfig::new("lake", ObjectStoreConfig::default());
    config.max_file_age = Duration::from_secs(5);
    let (tx, mut rx) = mpsc::channel(16);
    let mut sink = ParquetSink::with_store(config, store.clone(), tx).unwrap();
    assert_eq!(sink.flush_deadline(), None);
    let start = Instant::now();
    sink.write(sink_batch(1, &messages("0", 0..10, 10)))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    sink.write(sink_batch(2, &messages("0", 10..20, 10)))
        .await
        .unwrap();
    assert_eq!(sink.flush_deadline(), Some(start + Duration::from_secs(5)));
    sink.flush(FlushReason::Deadline).await.unwrap();
    tokio::task::yield_now().await;
    assert!(rx.try_recv().is_err(), "acked before the file was uploaded");
    assert!(files(store.as_ref()).await.is_empty());

    tokio::time::advance(Duration::from_secs(3)).await;
    sink.flush(FlushReason::Deadline).await.unwrap();
    let acks = acks_for(&mut rx, 2).await;
    assert_eq!(acks.iter().map(|a| a.ticket).collect::<Vec<_>>(), [1, 2]);
    let stored = files(store.as_ref()).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        sequence_numbers(&read(&stored[0].1)),
        (0..20).collect::<Vec<_>>()
    );
    assert_eq!(sink.flush_deadline(), None);
}

#[tokio::test]
async fn partitions_share_a_file_unless_the_template_names_the_partition() {
    /// A stored file: its path without the random suffix, and its sequence numbers in order.
    type File = (&'static str, &'static [i64]);
    let cases: [(&str, &[File]); 2] = [
        (
            "{iothub}/{partition}",
            &[("hub/0-0", &[0, 1, 3, 5]), ("hub/1-2", &[2, 4])],
        ),
        ("{iothub}/files", &[("hub/files", &[0, 1, 2, 3, 4, 5])]),
    ];
    for (template, expected) in cases {
        let store = Arc::new(InMemory::new());
        let mut config = ParquetSinkConfig::new("lake", ObjectStoreConfig::default());
        config.path_template = template.to_owned();
        config.iothub = Some("hub".to_owned());
        let (tx, mut rx) = mpsc::channel(16);
        let mut sink = ParquetSink::with_store(config, store.clone(), tx).unwrap();
        let mut spanning = messages("0", 0..2, 1);
        spanning.extend(messages("1", 2..3, 1));
        spanning.extend(messages("0", 3..4, 1));
        let batches = [
            (9, spanning),
            (10, Vec::new()),
            (11, messages("1", 4..5, 1)),
            (12, messages("0", 5..6, 1)),
        ];
        for (ticket, rows) in batches {
            sink.write(sink_batch(ticket, &rows)).await.unwrap();
        }
        assert_eq!(sink.open.len(), expected.len(), "{template}: open files");
        sink.flush(FlushReason::Shutdown).await.unwrap();
        let acks = acks_for(&mut rx, 4).await;
        let mut acked: Vec<Ticket> = acks.iter().map(|a| a.ticket).collect();
        acked.sort_unstable();
        assert_eq!(acked, [9, 10, 11, 12], "{template}");
        assert!(acks.iter().all(|a| a.failed.is_empty()), "{template}");
        let stored: Vec<(String, Vec<i64>)> = files(store.as_ref())
            .await
            .iter()
            .map(|(path, bytes)| {
                let path = path.as_ref();
                let random = path.rfind('-').expect("a random suffix");
                (path[..random].to_owned(), sequence_numbers(&read(bytes)))
            })
            .collect();
        let expected: Vec<(String, Vec<i64>)> = expected
            .iter()
            .map(|(path, rows)| ((*path).to_owned(), rows.to_vec()))
            .collect();
        assert_eq!(stored, expected, "{template}");
    }
}

#[tokio::test(start_paused = true)]
async fn empty_files_are_written_for_quiet_partitions_only_when_asked() {
    for write_empty_files in [false, true] {
        let store = Arc::new(InMemory::new());
        let mut config = ParquetSinkConfig::new("lake", ObjectStoreConfig::default());
        config.max_file_age = Duration::from_secs(60);
        config.write_empty_files = write_empty_files;
        let (tx, mut rx) = mpsc::channel(16);
        let mut sink = ParquetSink::with_store(config, store.clone(), tx).unwrap();
        sink.write(sink_batch(1, &messages("3", 0..1, 1)))
            .await
            .unwrap();
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(60)).await;
            sink.flush(FlushReason::Deadline).await.unwrap();
        }
        sink.flush(FlushReason::Shutdown).await.unwrap();
        acks_for(&mut rx, 1).await;
        let stored = files(store.as_ref()).await;
        let empty: Vec<_> = stored
            .iter()
            .filter(|(p, _)| p.as_ref().contains("-empty-"))
            .collect();
        assert_eq!(empty.len(), usize::from(write_empty_files), "{stored:?}");
        for (_, bytes) in empty {
            assert_eq!(
                read(bytes).iter().map(RecordBatch::num_rows).sum::<usize>(),
                0
            );
        }
    }
}

/// An in-memory store whose uploads fail with `PermissionDenied`, or wait for a permit each.
#[derive(Debug)]
enum FaultyStore {
    Denied(InMemory),
    Gated(InMemory, Arc<Semaphore>),
}

impl FaultyStore {
    fn inner(&self) -> &InMemory {
        match self {
            Self::Denied(inner) | Self::Gated(inner, _) => inner,
        }
    }
}

impl std::fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultyStore")
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        path: &Path,
        payload: PutPayload,
        options: object_store::PutOptions,
    ) -> object_store::Result<PutResult> {
        match self {
            Self::Denied(_) => Err(object_store::Error::PermissionDenied {
                path: path.to_string(),
                source: "container policy forbids writes".into(),
            }),
            Self::Gated(inner, gate) => {
                gate.acquire().await.expect("the gate stays open").forget();
                inner.put_opts(path, payload, options).await
            }
        }
    }
    async fn put_multipart_opts(
        &self,
        path: &Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner().put_multipart_opts(path, opts).await
    }
    async fn get_opts(
        &self,
        path: &Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner().get_opts(path, options).await
    }
    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
        self.inner().delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner().list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner().list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner().copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn a_permanent_upload_error_fails_every_row_of_the_file_and_hands_the_rows_back() {
    let (tx, mut rx) = mpsc::channel(16);
    let mut config = ParquetSinkConfig::new("lake", ObjectStoreConfig::default());
    config.columns = vec![TypedColumn {
        name: "temperature".to_owned(),
        path: "$.temperature".to_owned(),
        data_type: TypedColumnType::Float64,
    }];
    let mut sink =
        ParquetSink::with_store(config, Arc::new(FaultyStore::Denied(InMemory::new())), tx)
            .unwrap();
    assert!(sink.reports_failed_rows());
    // Two tickets share one file: each gets exactly its own rows back.
    sink.write(sink_batch(4, &messages("0", 0..3, 1)))
        .await
        .unwrap();
    sink.write(sink_batch(5, &messages("0", 3..5, 1)))
        .await
        .unwrap();
    sink.flush(FlushReason::Shutdown).await.unwrap();
    let mut acks = acks_for(&mut rx, 2).await;
    acks.sort_by_key(|ack| ack.ticket);
    for (ack, expected) in acks.iter().zip([vec![0, 1, 2], vec![3, 4]]) {
        let rows: Vec<usize> = ack.failed.iter().map(|f| f.row).collect();
        assert_eq!(rows, (0..expected.len()).collect::<Vec<_>>());
        assert!(
            ack.failed[0].error.contains("forbids writes"),
            "{:?}",
            ack.failed[0]
        );
        let data = ack.failed_rows.as_ref().expect("the rows come back");
        assert_eq!(
            data.schema(),
            hubroute_message::message_schema(),
            "only the message columns, not the typed ones"
        );
        let sequence_numbers: Vec<i64> = data
            .column_by_name(message_columns::SEQUENCE_NUMBER)
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        assert_eq!(sequence_numbers, expected);
        let bodies = data
            .column_by_name(message_columns::BODY)
            .unwrap()
            .as_binary::<i32>();
        assert!(
            std::str::from_utf8(bodies.value(0))
                .unwrap()
                .starts_with(&format!("{{\"temperature\":{}.5", expected[0]))
        );
    }
}

#[tokio::test]
async fn a_surrendered_sink_hands_back_its_open_file_and_its_stuck_upload_then_resumes() {
    let gate = Arc::new(Semaphore::new(0));
    let store = Arc::new(FaultyStore::Gated(InMemory::new(), Arc::clone(&gate)));
    let mut config = ParquetSinkConfig::new("lake", ObjectStoreConfig::default());
    // Every batch fills a file, so the next batch of the partition rolls it; files never roll by age.
    config.max_file_bytes = 1;
    config.max_file_age = Duration::from_secs(3600);
    let (tx, mut rx) = mpsc::channel(16);
    let sink = ParquetSink::with_store(config, store.clone(), tx).unwrap();
    let surrender = sink.surrender().expect("a file sink can be surrendered");
    let (queue, batches) = mpsc::channel(4);
    let driver = tokio::spawn(drive_sink(Box::new(sink), batches));
    // Ticket 1's file rolls when ticket 2 arrives; its upload hangs at the store. Ticket 2's file
    // stays open.
    queue
        .send(sink_batch(1, &messages("0", 0..3, 1)))
        .await
        .unwrap();
    queue
        .send(sink_batch(2, &messages("0", 3..5, 1)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.try_recv().is_err(), "nothing is committed yet");

    surrender.surrender();
    let acks = acks_for(&mut rx, 2).await;
    for (ack, expected) in acks.iter().zip([vec![0, 1, 2], vec![3, 4]]) {
        assert!(ack.surrendered, "{ack:?}");
        assert!(
            ack.failed
                .iter()
                .all(|f| f.error == crate::object_files::HANDED_BACK)
        );
        let rows = ack.failed_rows.as_ref().expect("the rows come back");
        assert_eq!(sequence_numbers(std::slice::from_ref(rows)), expected);
    }
    assert!(files(store.inner()).await.is_empty());

    surrender.resume();
    gate.add_permits(1);
    queue
        .send(sink_batch(3, &messages("1", 5..6, 1)))
        .await
        .unwrap();
    drop(queue);
    tokio::time::timeout(Duration::from_secs(20), driver)
        .await
        .expect("the sink shuts down")
        .unwrap()
        .unwrap();
    let ack = acks_for(&mut rx, 1).await.remove(0);
    assert_eq!(
        (ack.ticket, ack.failed.len(), ack.surrendered),
        (3, 0, false)
    );
    assert_eq!(files(store.inner()).await.len(), 1);
}

/// Creates a container in the Azurite instance `.ci/run` starts, through the Azure SDK in the venv.
fn create_azurite_container(name: &str) {
    let script = format!(
        "from azure.eventhub.extensions.checkpointstoreblob._vendor.storage.blob import BlobServiceClient\n\
         from azure.core.exceptions import ResourceExistsError\n\
         c = BlobServiceClient.from_connection_string('DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;\
AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\
BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;')\n\
         try:\n    c.create_container('{name}')\nexcept ResourceExistsError:\n    pass\n"
    );
    let output = Command::new(python())
        .arg("-c")
        .arg(script)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; run .ci/test to create the venv",
                python().display()
            )
        });
    assert!(
        output.status.success(),
        "cannot create container `{name}` in Azurite at 127.0.0.1:10000 (start it with .ci/test, or \
         .ci/node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort 10000 --location /tmp/azurite \
         --skipApiVersionCheck --loose &): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn files_are_uploaded_to_azure_blob_including_multipart() {
    let container = format!("parquet-{}", uuid::Uuid::new_v4().simple());
    create_azurite_container(&container);
    small_and_multipart_files_are_uploaded(ObjectStoreConfig::Azure {
        account: None,
        container,
        access_key: None,
        use_emulator: true,
        endpoint: None,
    })
    .await;
}

/// Creates a bucket in the moto S3 server `.ci/test` starts, through boto3 in the venv.
fn create_s3_bucket(name: &str) {
    let script = format!(
        "import boto3\n\
         boto3.client('s3', endpoint_url='http://127.0.0.1:9010', region_name='us-east-1', \
         aws_access_key_id='test', aws_secret_access_key='test').create_bucket(Bucket='{name}')\n"
    );
    let output = Command::new(python())
        .arg("-c")
        .arg(script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; run .ci/test", python().display()));
    assert!(
        output.status.success(),
        "cannot create bucket `{name}` in the S3 server at 127.0.0.1:9010 (start it with .ci/test, or \
         .venv/bin/moto_server -H 127.0.0.1 -p 9010 &): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn files_are_uploaded_to_s3_including_multipart() {
    let bucket = format!("parquet-{}", uuid::Uuid::new_v4().simple());
    create_s3_bucket(&bucket);
    small_and_multipart_files_are_uploaded(ObjectStoreConfig::S3 {
        bucket,
        region: Some("us-east-1".to_owned()),
        endpoint: Some("http://127.0.0.1:9010".to_owned()),
        access_key_id: Some("test".to_owned()),
        secret_access_key: Some(Secret::new("test")),
        allow_http: true,
    })
    .await;
}

/// A small file and one large enough for a multipart upload land readable under their final names.
async fn small_and_multipart_files_are_uploaded(store_config: ObjectStoreConfig) {
    let mut config = ParquetSinkConfig::new("lake", store_config.clone());
    config.compression = Compression::None;
    config.path_template = "{endpoint}/{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}".into();
    let (tx, mut rx) = mpsc::channel(16);
    let mut sink = ParquetSink::new(config, tx).unwrap();
    sink.write(sink_batch(1, &messages("0", 0..5, 10)))
        .await
        .unwrap();
    sink.flush(FlushReason::Shutdown).await.unwrap();
    // Over PART_BYTES of incompressible bodies: a multipart (block list) upload.
    let big: Vec<Message> = (0..9_i64)
        .map(|n| {
            let mut m = Message::telemetry(
                (0..1_100_000_u32)
                    .map(|i| u8::try_from((i.wrapping_mul(2_654_435_761) >> 13) & 0xff).unwrap())
                    .collect::<Vec<u8>>(),
            );
            m.partition = "1".into();
            m.sequence_number = 100 + n;
            m
        })
        .collect();
    sink.write(sink_batch(2, &big)).await.unwrap();
    sink.flush(FlushReason::Shutdown).await.unwrap();
    let acks = acks_for(&mut rx, 2).await;
    assert!(acks.iter().all(|a| a.failed.is_empty()), "{acks:?}");

    let store = store_config.build("t").unwrap();
    let stored = files(store.as_ref()).await;
    assert_eq!(
        stored.len(),
        2,
        "{:?}",
        stored.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    assert!(
        stored[0].0.as_ref().starts_with("lake/hub/0/"),
        "{}",
        stored[0].0
    );
    assert!(
        stored[1].1.len() > PART_BYTES,
        "the second file is multipart-sized"
    );
    assert_eq!(
        sequence_numbers(&read(&stored[0].1)),
        (0..5).collect::<Vec<_>>()
    );
    assert_eq!(
        sequence_numbers(&read(&stored[1].1)),
        (100..109).collect::<Vec<_>>()
    );
}

/// Azurite's well-known account key.
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_probe_tells_a_reachable_store_from_one_that_is_down_or_refuses_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let local = ParquetSinkConfig::new(
        "lake",
        ObjectStoreConfig::Local {
            root: dir.path().join("lake"),
        },
    );
    ParquetSink::probe(&local).await.unwrap();

    let container = format!("probe-{}", uuid::Uuid::new_v4().simple());
    create_azurite_container(&container);
    // Azurite's account, with its endpoint spelled out so that a test can move it.
    let azure = |container: &str, endpoint: &str, access_key: &str| {
        let mut config = ParquetSinkConfig::new(
            "lake",
            ObjectStoreConfig::Azure {
                account: Some("devstoreaccount1".to_owned()),
                container: container.to_owned(),
                access_key: Some(Secret::new(access_key)),
                use_emulator: false,
                endpoint: Some(endpoint.to_owned()),
            },
        );
        config.path_template = "lake/{iothub}/{partition}".to_owned();
        config
    };
    let azurite = "http://127.0.0.1:10000/devstoreaccount1";
    ParquetSink::probe(&azure(&container, azurite, AZURITE_KEY))
        .await
        .unwrap();
    // Not found is an answer: the store is up (uploads would report the missing container).
    ParquetSink::probe(&azure("no-such-container", azurite, AZURITE_KEY))
        .await
        .unwrap();

    let down = format!("http://127.0.0.1:{}/devstoreaccount1", closed_port());
    let started = std::time::Instant::now();
    let error = ParquetSink::probe(&azure(&container, &down, AZURITE_KEY))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("sink `lake`: object store probe (head) of `lake/.hubroute-probe` failed"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5) && !error.contains("retries"),
        "a store that is down is not retried ({:?}): {error}",
        started.elapsed()
    );
    let wrong_key = "d3Jvbmcga2V5IG9mIHRoaXJ0eS10d28gYnl0ZXMgISEhIQ==";
    let error = ParquetSink::probe(&azure(&container, azurite, wrong_key))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("probe (head)") && !error.is_retryable(),
        "a refused key is down, and no retry fixes it: {error}"
    );
}
