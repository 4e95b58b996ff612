//! The pipeline's seam to its source: [`BatchSource`] is everything the pipeline needs from one.
//!
//! The pipeline never speaks AMQP. It asks a source for its partitions and their checkpoint keys,
//! starts one receiver task per owned partition that feeds a bounded channel of [`SourceBatch`]es
//! (the router's input), and reads a few numbers for metrics. [`EventHubSource`] is the production
//! implementation; the pipeline's unit tests feed batches from memory through the same trait, so
//! routing, acks, checkpoints and parking run on tokio's paused clock without a network.
//!
//! Contract: a receiver resumes its partition right after the checkpoint stored under
//! [`BatchSource::checkpoint_key`] in the store the source was given (the store the pipeline
//! writes), or at the configured start position when there is none; it sends batches in partition
//! order, and waits (stops granting credit) while the channel is full.

use std::fmt;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::checkpoint::CheckpointKey;
use crate::source::{EventHubSource, PartitionOutcome, SourceBatch};

/// The first retained and last enqueued sequence numbers of each partition (`None` for an empty
/// one), by partition id: what lag is measured against.
pub(crate) type RetainedRanges = Vec<(String, Option<(i64, i64)>)>;

/// What the pipeline needs from a source of partitioned event batches.
#[async_trait]
pub(crate) trait BatchSource: Send + Sync + fmt::Debug {
    /// The event hub being read, named in dead letters of malformed events and in `/routes`.
    fn event_hub(&self) -> &str;

    /// Every partition this source can read (ownership picks among them).
    fn partitions(&self) -> &[String];

    /// Where `partition`'s checkpoint and endpoint positions are stored.
    fn checkpoint_key(&self, partition: &str) -> CheckpointKey;

    /// Starts the receiver of `partition`, sending batches into `downstream` until `shutdown` is
    /// cancelled; the task's result says how it ended.
    fn spawn(
        &self,
        partition: &str,
        downstream: mpsc::Sender<SourceBatch>,
        shutdown: CancellationToken,
    ) -> JoinHandle<Result<PartitionOutcome>>;

    /// Reconnects after transient faults so far, over every partition.
    fn reconnects(&self) -> u64;

    /// Bytes held now by batches being built or routed.
    fn buffered_bytes(&self) -> u64;

    /// Asks the service for each partition's retained range.
    async fn retained_sequence_numbers(&self) -> Result<RetainedRanges>;
}

#[async_trait]
impl BatchSource for EventHubSource {
    fn event_hub(&self) -> &str {
        EventHubSource::event_hub(self)
    }

    fn partitions(&self) -> &[String] {
        EventHubSource::partitions(self)
    }

    fn checkpoint_key(&self, partition: &str) -> CheckpointKey {
        EventHubSource::checkpoint_key(self, partition)
    }

    fn spawn(
        &self,
        partition: &str,
        downstream: mpsc::Sender<SourceBatch>,
        shutdown: CancellationToken,
    ) -> JoinHandle<Result<PartitionOutcome>> {
        EventHubSource::spawn(self, partition, downstream, shutdown)
    }

    fn reconnects(&self) -> u64 {
        EventHubSource::reconnects(self)
    }

    fn buffered_bytes(&self) -> u64 {
        EventHubSource::buffered_bytes(self)
    }

    async fn retained_sequence_numbers(&self) -> Result<RetainedRanges> {
        EventHubSource::retained_sequence_numbers(self).await
    }
}
