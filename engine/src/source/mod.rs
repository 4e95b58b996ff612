//! Reading an Event Hubs-compatible endpoint over AMQP 1.0 into Arrow message batches.
//!
//! [`EventHubSource::connect`] discovers the partitions (`$management` READ over fe2o3-amqp, the
//! control plane); [`EventHubSource::spawn`] starts one [`PartitionReceiver`](receiver) task per
//! partition, each with its own authenticated data-plane connection (`hubroute_amqp`), that decodes
//! transfers straight from the read buffer into Arrow builders ([`MessageDecoder`]) and sends
//! [`SourceBatch`]es into a bounded channel. Backpressure is AMQP flow control: a receiver grants link
//! credit only while it holds a free slot of its channel, so a stalled consumer stops the service from
//! sending after at most `prefetch` events. Memory is bounded by bytes too: every partition's batches
//! being built and routed share `max_buffered_bytes` (the `memory` module).

mod config;
mod connection;
mod credentials;
mod decode;
mod fault;
mod iothub;
mod link;
mod memory;
mod proxy;
mod receiver;
mod transport;

pub use config::{
    OutOfRangePolicy, ProxyUrl, SourceConfig, SourceConnectionString, StartPosition, Transport,
};
pub use decode::{Malformed, MessageDecoder};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::record_batch::RecordBatch;
use hubroute_protocol::EventPosition;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{CheckpointKey, CheckpointStore};
use crate::{Error, Result};
use connection::HubConnection;
use memory::{MemoryBudget, Reservation};
use receiver::PartitionReceiver;

/// A batch of consecutive events of one partition, in partition order.
#[derive(Debug)]
pub struct SourceBatch {
    /// Partition id.
    pub(crate) partition: String,
    /// The events, in the `hubroute_message` schema.
    pub batch: RecordBatch,
    /// Sequence number of the last row: checkpoint this once every row is committed.
    pub last_sequence_number: i64,
    /// Offset of the last row.
    pub(crate) last_offset: String,
    /// Events of this stretch that could not be decoded, for the dead-letter store; the checkpoint
    /// must not pass them before they are stored.
    pub(crate) malformed: Vec<Malformed>,
    /// This batch's share of `max_buffered_bytes`, returned to the source when the batch is dropped.
    _memory: Reservation,
}

impl SourceBatch {
    /// A batch of `partition` outside any memory budget, for tests that feed the pipeline without
    /// a receiver: its last row's sequence number and offset are read from the batch.
    #[cfg(test)]
    pub(crate) fn unbudgeted(partition: &str, batch: RecordBatch) -> Self {
        let columns = hubroute_message::MessageColumns::try_new(&batch).expect("message schema");
        let last = batch.num_rows().checked_sub(1).expect("a batch with rows");
        Self {
            partition: partition.to_owned(),
            last_sequence_number: columns.sequence_number.value(last),
            last_offset: columns.offset.value(last).to_owned(),
            malformed: Vec::new(),
            _memory: MemoryBudget::new(0).empty(),
            batch,
        }
    }
}

/// Why a partition receiver ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionOutcome {
    /// The shutdown token was cancelled. The partial batch was handed over if the channel had room.
    Stopped,
    /// Another receiver with an equal or higher owner level took the partition (`amqp:link:stolen`).
    /// Undelivered rows were dropped: the new owner reads them from the checkpoint.
    OwnershipLost {
        /// The service's description.
        description: String,
    },
    /// The downstream channel's receiver was dropped.
    DownstreamClosed,
}

/// An event hub to read: its name, partitions and where each partition resumes.
#[derive(Debug)]
pub struct EventHubSource {
    /// The configuration the receivers use: an IoT Hub connection string is replaced by the Event
    /// Hubs connection string it resolved to, so reconnects and `$management` reuse it.
    config: Arc<SourceConfig>,
    /// The Event Hubs namespace host, with the port when the connection string names one
    /// (checkpoints are keyed by it, as the SDKs do).
    namespace: String,
    event_hub: String,
    partitions: Vec<String>,
    checkpoints: Arc<dyn CheckpointStore>,
    /// Events decoded by all partition tasks since `connect`; shared with the tasks.
    received: Arc<AtomicU64>,
    /// Malformed events set aside by all partition tasks; shared with the tasks.
    malformed: Arc<AtomicU64>,
    /// Reconnects after transient faults by all partition tasks; shared with the tasks.
    reconnects: Arc<AtomicU64>,
    /// `max_buffered_bytes`, shared by the partition tasks.
    memory: MemoryBudget,
}

impl EventHubSource {
    /// Validates `config`, resolves an IoT Hub connection string to the hub's Event Hubs-compatible
    /// endpoint, connects once to discover the partitions (`$management` READ) and keeps those
    /// configured in `partitions` (all by default). Fails fast: wrong key, unknown hub or an
    /// unreachable endpoint are reported here, not retried.
    pub async fn connect(
        mut config: SourceConfig,
        checkpoints: Arc<dyn CheckpointStore>,
    ) -> Result<Self> {
        config.validate()?;
        if let SourceConnectionString::IotHub(hub) = &config.connection_string {
            let resolved = iothub::resolve(&config, hub).await?;
            config.connection_string = SourceConnectionString::EventHubs(resolved);
        }
        let endpoint = config.event_hubs()?;
        // Checkpoints are keyed as the official SDKs key them: by the endpoint's authority as the
        // connection string writes it (Python's `netloc`), so an emulator's port is part of it.
        let namespace = match endpoint.port {
            Some(port) => format!("{}:{port}", endpoint.host),
            None => endpoint.host.clone(),
        };
        let event_hub = config.event_hub_name()?.to_owned();
        let mut hub = HubConnection::open(&config, &event_hub).await?;
        let discovered = hub.partition_ids(&event_hub).await;
        hub.close().await;
        let discovered = discovered?;
        let partitions = match &config.partitions {
            None => discovered,
            Some(wanted) => {
                if let Some(unknown) = wanted.iter().find(|p| !discovered.contains(p)) {
                    return Err(Error::SourceConfig {
                        problem: format!(
                            "partition `{unknown}` does not exist in `{event_hub}`; it has {}",
                            discovered.join(", ")
                        ),
                    });
                }
                wanted.clone()
            }
        };
        let memory = MemoryBudget::new(config.max_buffered_bytes);
        Ok(Self {
            memory,
            config: Arc::new(config),
            namespace,
            event_hub,
            partitions,
            checkpoints,
            received: Arc::new(AtomicU64::new(0)),
            malformed: Arc::new(AtomicU64::new(0)),
            reconnects: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The event hub being read.
    pub(crate) fn event_hub(&self) -> &str {
        &self.event_hub
    }

    /// Events decoded by every partition task so far (a counter for metrics and tests).
    pub fn events_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Malformed events set aside (for the dead-letter store) so far.
    pub fn events_malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Reconnects after transient faults (connection loss, server busy, an expired token) so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Bytes of `max_buffered_bytes` held now by batches being built or routed and by body buffers
    /// kept for reuse.
    pub fn buffered_bytes(&self) -> u64 {
        self.memory.in_use_bytes()
    }

    /// The first retained and last enqueued sequence numbers of each partition this source reads
    /// (`None` for an empty partition), from one `$management` connection: what lag is measured
    /// against.
    pub(crate) async fn retained_sequence_numbers(
        &self,
    ) -> Result<Vec<(String, Option<(i64, i64)>)>> {
        let mut hub = HubConnection::open(&self.config, &self.event_hub).await?;
        let mut out = Vec::with_capacity(self.partitions.len());
        let mut failure = None;
        for partition in &self.partitions {
            match hub
                .retained_sequence_numbers(&self.event_hub, partition)
                .await
            {
                Ok(last) => out.push((partition.clone(), last)),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        hub.close().await;
        match failure {
            Some(error) => Err(error),
            None => Ok(out),
        }
    }

    /// The partitions this source reads.
    pub fn partitions(&self) -> &[String] {
        &self.partitions
    }

    /// The checkpoint key of `partition` (namespace host, hub, consumer group, partition).
    pub fn checkpoint_key(&self, partition: &str) -> CheckpointKey {
        CheckpointKey {
            fully_qualified_namespace: self.namespace.clone(),
            event_hub: self.event_hub.clone(),
            consumer_group: self.config.consumer_group.clone(),
            partition: partition.to_owned(),
        }
    }

    /// Starts the receiver of `partition`, sending batches into `downstream` until `shutdown` is
    /// cancelled. The task reconnects on transient faults by itself; its result says how it ended.
    pub fn spawn(
        &self,
        partition: &str,
        downstream: mpsc::Sender<SourceBatch>,
        shutdown: CancellationToken,
    ) -> JoinHandle<Result<PartitionOutcome>> {
        let config = Arc::clone(&self.config);
        let checkpoints = Arc::clone(&self.checkpoints);
        let key = self.checkpoint_key(partition);
        let received = Arc::clone(&self.received);
        let malformed = Arc::clone(&self.malformed);
        let reconnects = Arc::clone(&self.reconnects);
        let memory = self.memory.clone();
        let event_hub = self.event_hub.clone();
        let partition = partition.to_owned();
        tokio::spawn(async move {
            let position = match checkpoints.load(&key).await? {
                Some(checkpoint) => {
                    EventPosition::after_sequence_number(checkpoint.sequence_number)
                }
                None => config.start_of(&partition).event_position(),
            };
            tracing::info!(%partition, position = %position.to_filter_expression(), "partition receiver starting");
            PartitionReceiver {
                config,
                event_hub,
                partition,
                position,
                downstream,
                shutdown,
                received,
                malformed,
                reconnects,
                memory,
            }
            .run()
            .await
        })
    }
}
