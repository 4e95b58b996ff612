//! The storage sink (IoT Hub's Avro files) over a local directory wrapped in the same
//! fault-injecting object store as the Parquet sink. IoT Hub's record has no event hub, partition
//! or sequence number field: the harness reads them back from the blob name (`{iothub}` and
//! `{partition}`) and from the workload's bodies (`{"n": <sequence number>}`), with apache-avro's
//! reader.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt as _;
use hubroute_sinks::{
    AckSender, ObjectStoreConfig, RetryPolicy, Sink, StorageSink, StorageSinkConfig,
};
use object_store::local::LocalFileSystem;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt as _};

use super::object_store::FaultyStore;
use crate::contract::{Harness, RowKey, conformance};
use crate::faults::Backend;

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
