//! The storage sink (IoT Hub's Avro files) over a local directory wrapped in the same
//! fault-injecting object store as the Parquet sink. IoT Hub's record has no event hub, partition
//! or sequence number field: the harness reads them back from the blob name (`{iothub}` and
//! `{partition}`) and from the workload's bodies (`{"n": <sequence number>}`), with apache-avro's
//! reader.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hubroute_sinks::{AckSender, Sink, StorageSink, StorageSinkConfig};

use super::object_store::FaultyDir;
use super::quick_retry;
use crate::contract::{Harness, RowKey, conformance};
use crate::faults::Backend;

struct StorageHarness(FaultyDir);

#[async_trait]
impl Harness for StorageHarness {
    async fn build(&mut self, acks: AckSender) -> Box<dyn Sink> {
        let mut config = StorageSinkConfig::new("archive", self.0.config());
        config.batch_frequency = Duration::from_secs(600);
        // Below IoT Hub's 10 MiB minimum (allowed through the Rust API) so that files roll
        // and a stalled store blocks `write` within the workload.
        config.max_chunk_bytes = 8 * 1024;
        config.max_concurrent_uploads = 1;
        config.retry = quick_retry();
        Box::new(StorageSink::with_store(config, self.0.store(), acks).unwrap())
    }

    async fn stored(&mut self) -> Vec<RowKey> {
        let mut keys = Vec::new();
        for (name, bytes) in self.0.objects().await {
            let mut parts = name.split('/');
            let (hub, partition) = (parts.next().unwrap(), parts.next().unwrap());
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
        self.0.backend()
    }
}

#[tokio::test]
async fn the_storage_sink_conforms() {
    conformance(async || StorageHarness(FaultyDir::new())).await;
}
