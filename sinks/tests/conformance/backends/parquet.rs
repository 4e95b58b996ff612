//! The Parquet sink over a local directory wrapped in a fault-injecting object store.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use async_trait::async_trait;
use hubroute_sinks::{AckSender, ParquetSink, ParquetSinkConfig, Sink};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::object_store::FaultyDir;
use super::quick_retry;
use crate::contract::{Harness, RowKey, conformance};
use crate::faults::Backend;

struct ParquetHarness(FaultyDir);

#[async_trait]
impl Harness for ParquetHarness {
    async fn build(&mut self, acks: AckSender) -> Box<dyn Sink> {
        let mut config = ParquetSinkConfig::new("lake", self.0.config());
        config.max_file_age = Duration::from_secs(600);
        config.max_file_bytes = 8 * 1024;
        config.max_concurrent_uploads = 1;
        config.retry = quick_retry();
        Box::new(ParquetSink::with_store(config, self.0.store(), acks).unwrap())
    }

    async fn stored(&mut self) -> Vec<RowKey> {
        let mut keys = Vec::new();
        for (_, bytes) in self.0.objects().await {
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
        self.0.backend()
    }
}

#[tokio::test]
async fn the_parquet_sink_conforms() {
    conformance(async || ParquetHarness(FaultyDir::new())).await;
}
