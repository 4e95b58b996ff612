//! The Parquet sink over a local directory wrapped in a fault-injecting object store.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt as _;
use hubroute_sinks::{
    AckSender, ObjectStoreConfig, ParquetSink, ParquetSinkConfig, RetryPolicy, Sink,
};
use object_store::local::LocalFileSystem;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt as _};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::object_store::FaultyStore;
use crate::contract::{Harness, RowKey, conformance};
use crate::faults::Backend;

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
