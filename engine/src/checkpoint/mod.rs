//! Checkpoint stores: where each partition's committed position is kept, so a restarted source
//! resumes exactly after the last event every destination committed.
//!
//! A checkpoint is `(offset, sequence number)` of the last committed event of one partition of one
//! consumer group. The source resumes *exclusively* after its sequence number (`>`), so a checkpoint
//! never causes a duplicate or a gap. Two stores exist: [`FileCheckpointStore`] (the default: one small
//! file per partition, replaced atomically, for a single instance) and [`ObjectStoreCheckpointStore`]
//! (blob names and metadata of the official Azure SDKs, plus the ownership records several instances
//! balance partitions with, so hubroute instances and official event processors share or hand over a
//! consumer group without reprocessing). [`open`] builds the one `[checkpoint]` selects.
//!
//! Beside each checkpoint a store keeps hubroute's own record of every endpoint's position in the
//! partition ([`EndpointPositions`]): the last sequence number each endpoint has settled, at or
//! ahead of the checkpoint, so that after a restart only the endpoints that had not settled a row
//! see it again. Official processors ignore it.

mod file;
mod object_store;

pub use file::FileCheckpointStore;
pub use object_store::ObjectStoreCheckpointStore;
pub(crate) use object_store::OwnershipVersion;
pub use object_store::{Ownership, StoreOperations};

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use hubroute_sinks::ObjectStoreConfig;

use crate::config::CheckpointConfig;
use crate::{Error, Result};

/// The checkpoint store `[checkpoint]` selects.
#[derive(Debug, Clone)]
pub enum SelectedStore {
    /// Files on this machine: one instance reads every partition.
    Files(FileCheckpointStore),
    /// Blobs several instances share, with ownership records to balance partitions among them.
    Shared(ObjectStoreCheckpointStore),
}

impl SelectedStore {
    /// The store as the source and the pipeline use it.
    pub(crate) fn checkpoints(&self) -> Arc<dyn CheckpointStore> {
        match self {
            Self::Files(store) => Arc::new(store.clone()),
            Self::Shared(store) => Arc::new(store.clone()),
        }
    }
}

/// Builds the store `config` selects: files under `dir` (no `store`) or a `local` store's `root`,
/// otherwise blobs in the Azure container or S3 bucket, counting requests into `operations`.
pub fn open(config: &CheckpointConfig, operations: &StoreOperations) -> Result<SelectedStore> {
    let store = match &config.store {
        None => return Ok(SelectedStore::Files(FileCheckpointStore::new(&config.dir))),
        Some(ObjectStoreConfig::Local { root }) => {
            return Ok(SelectedStore::Files(FileCheckpointStore::new(root)));
        }
        Some(store) => store,
    };
    let built = store
        .build("checkpoint")
        .map_err(|error| Error::Checkpoint {
            location: "[checkpoint] store".to_owned(),
            problem: error.to_string(),
        })?;
    let shared = ObjectStoreCheckpointStore::new(built).counting_into(operations.clone());
    Ok(SelectedStore::Shared(
        if matches!(store, ObjectStoreConfig::S3 { .. }) {
            shared.with_nonce_content()
        } else {
            shared
        },
    ))
}

/// Identifies one partition of one consumer group, as the official SDKs do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckpointKey {
    /// Host name of the namespace, e.g. `iothub-ns-x.servicebus.windows.net` (with `:port` when the
    /// connection string names a port, as the Python SDK keys it).
    pub fully_qualified_namespace: String,
    /// Event hub name.
    pub event_hub: String,
    /// Consumer group, e.g. `$Default`.
    pub consumer_group: String,
    /// Partition id.
    pub partition: String,
}

impl CheckpointKey {
    /// `{fqns}/{eventhub}/{consumergroup}`, lower-cased: the folder of the consumer group's blobs.
    pub(crate) fn consumer_group_prefix(&self) -> String {
        format!(
            "{}/{}/{}",
            self.fully_qualified_namespace, self.event_hub, self.consumer_group
        )
        .to_lowercase()
    }

    /// The SDK blob name `{fqns}/{eventhub}/{consumergroup}/checkpoint/{partition}`, lower-cased.
    pub(crate) fn blob_name(&self) -> String {
        format!(
            "{}/checkpoint/{}",
            self.consumer_group_prefix(),
            self.partition.to_lowercase()
        )
    }

    /// `{fqns}/{eventhub}/{consumergroup}/hubroute-endpoints/{partition}`, lower-cased: hubroute's
    /// endpoint positions, beside the SDK's folders.
    pub(crate) fn endpoints_blob_name(&self) -> String {
        format!(
            "{}/hubroute-endpoints/{}",
            self.consumer_group_prefix(),
            self.partition.to_lowercase()
        )
    }

    /// The SDK ownership blob `{fqns}/{eventhub}/{consumergroup}/ownership/{partition}`,
    /// lower-cased.
    pub(crate) fn ownership_blob_name(&self) -> String {
        format!(
            "{}/ownership/{}",
            self.consumer_group_prefix(),
            self.partition.to_lowercase()
        )
    }
}

/// The position of the last committed event of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Which partition.
    pub key: CheckpointKey,
    /// `x-opt-offset` of the last committed event (opaque).
    pub offset: String,
    /// `x-opt-sequence-number` of the last committed event; the source resumes after it.
    pub sequence_number: i64,
}

/// Per endpoint name, the sequence number of the last row of a partition that the endpoint has
/// settled (committed, dead-lettered or parked).
pub type EndpointPositions = BTreeMap<String, i64>;

/// Durable storage of checkpoints.
///
/// Contract: `save` is durable when it returns (a crash afterwards still loads it) and replaces the
/// previous checkpoint of the same key atomically (a reader sees the old or the new one, never a mix).
/// Callers only ever move a partition's checkpoint forward; stores do not enforce it. `load` returns
/// `None` when the partition has no checkpoint yet.
#[async_trait::async_trait]
pub trait CheckpointStore: Send + Sync + Debug {
    /// The checkpoint of `key`, if any.
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>>;
    /// Stores `checkpoint`, replacing the previous one of its key.
    async fn save(&self, checkpoint: &Checkpoint) -> Result<()>;
    /// The endpoint positions stored beside the checkpoint of `key` (empty when none are).
    async fn load_endpoints(&self, key: &CheckpointKey) -> Result<EndpointPositions>;
    /// Stores the endpoint positions of `key`, replacing the previous ones, with the same
    /// durability and atomicity as `save`.
    async fn save_endpoints(
        &self,
        key: &CheckpointKey,
        positions: &EndpointPositions,
    ) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn key(partition: &str) -> CheckpointKey {
        CheckpointKey {
            fully_qualified_namespace: "NS.servicebus.windows.net".to_owned(),
            event_hub: "MyHub".to_owned(),
            consumer_group: "$Default".to_owned(),
            partition: partition.to_owned(),
        }
    }

    /// The conformance checks every store passes.
    pub(crate) async fn conformance(store: &dyn CheckpointStore) {
        assert_eq!(store.load(&key("0")).await.unwrap(), None);
        let first = Checkpoint {
            key: key("0"),
            offset: "120".to_owned(),
            sequence_number: 3,
        };
        store.save(&first).await.unwrap();
        assert_eq!(store.load(&key("0")).await.unwrap(), Some(first));
        let second = Checkpoint {
            key: key("0"),
            offset: "4096".to_owned(),
            sequence_number: 41,
        };
        store.save(&second).await.unwrap();
        assert_eq!(store.load(&key("0")).await.unwrap(), Some(second.clone()));
        assert_eq!(
            store.load(&key("1")).await.unwrap(),
            None,
            "partitions are independent"
        );
        assert!(store.load_endpoints(&key("0")).await.unwrap().is_empty());
        let positions: EndpointPositions = [("lake".to_owned(), 41), ("hook".to_owned(), 7)].into();
        store.save_endpoints(&key("0"), &positions).await.unwrap();
        assert_eq!(store.load_endpoints(&key("0")).await.unwrap(), positions);
        assert_eq!(
            store.load(&key("0")).await.unwrap(),
            Some(second),
            "endpoint positions live beside the checkpoint"
        );
        assert!(store.load_endpoints(&key("1")).await.unwrap().is_empty());
    }

    #[test]
    fn blob_names_follow_the_sdk_layout_lower_cased() {
        assert_eq!(
            key("7").blob_name(),
            "ns.servicebus.windows.net/myhub/$default/checkpoint/7"
        );
        assert_eq!(
            key("7").ownership_blob_name(),
            "ns.servicebus.windows.net/myhub/$default/ownership/7"
        );
    }
}
