//! [`ObjectStoreCheckpointStore`]: checkpoints as empty blobs with metadata, in the layout of the
//! official Azure SDKs (`azure-eventhub-checkpointstoreblob`, `Azure.Messaging.EventHubs.Processor`).
//!
//! Blob `{fqns}/{eventhub}/{consumergroup}/checkpoint/{partition}` (lower-cased), empty content,
//! metadata `offset` and `sequencenumber`. Checkpoint writes are unconditional (no ETag), as in the SDKs.
//! Any `object_store` backend that keeps user metadata works (Azure Blob, in-memory); the local
//! filesystem backend does not keep metadata, use [`super::FileCheckpointStore`] there.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, ObjectStore, PutOptions, PutPayload,
};

use super::{Checkpoint, CheckpointKey, CheckpointStore};
use crate::{Error, Result};

/// Metadata key of the offset.
const OFFSET: &str = "offset";
/// Metadata key of the sequence number.
const SEQUENCE_NUMBER: &str = "sequencenumber";

/// Checkpoints in an object store (typically the Azure Blob container an SDK processor uses).
#[derive(Debug, Clone)]
pub struct ObjectStoreCheckpointStore {
    store: Arc<dyn ObjectStore>,
}

impl ObjectStoreCheckpointStore {
    /// A store writing into `store` (for Azure, a client scoped to the checkpoint container).
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }
}

fn failure(location: &str, problem: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        location: location.to_owned(),
        problem: problem.to_string(),
    }
}

#[async_trait::async_trait]
impl CheckpointStore for ObjectStoreCheckpointStore {
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>> {
        let name = key.blob_name();
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let result = match self
            .store
            .get_opts(&Path::from(name.as_str()), options)
            .await
        {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(failure(&name, error)),
        };
        let metadata = |field: &str| {
            result
                .attributes
                .get(&Attribute::Metadata(field.to_owned().into()))
                .map(|value| value.as_ref().to_owned())
                .ok_or_else(|| failure(&name, format!("the blob has no `{field}` metadata")))
        };
        let offset = metadata(OFFSET)?;
        let sequence_number = metadata(SEQUENCE_NUMBER)?;
        let sequence_number = sequence_number.parse().map_err(|_| {
            failure(
                &name,
                format!("metadata sequencenumber `{sequence_number}` is not an integer"),
            )
        })?;
        Ok(Some(Checkpoint {
            key: key.clone(),
            offset,
            sequence_number,
        }))
    }

    async fn save(&self, checkpoint: &Checkpoint) -> Result<()> {
        let name = checkpoint.key.blob_name();
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(OFFSET.into()),
            AttributeValue::from(checkpoint.offset.clone()),
        );
        attributes.insert(
            Attribute::Metadata(SEQUENCE_NUMBER.into()),
            AttributeValue::from(checkpoint.sequence_number.to_string()),
        );
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&Path::from(name.as_str()), PutPayload::new(), options)
            .await
            .map_err(|error| failure(&name, error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt as _;
    use object_store::memory::InMemory;

    use super::*;
    use crate::checkpoint::tests::{conformance, key};

    #[tokio::test]
    async fn passes_the_store_conformance_checks() {
        conformance(&ObjectStoreCheckpointStore::new(Arc::new(InMemory::new()))).await;
    }

    #[tokio::test]
    async fn writes_an_empty_blob_with_sdk_metadata_and_reads_sdk_blobs() {
        let memory = Arc::new(InMemory::new());
        let store = ObjectStoreCheckpointStore::new(memory.clone());
        let checkpoint = Checkpoint {
            key: key("3"),
            offset: "8589934592".to_owned(),
            sequence_number: 12,
        };
        store.save(&checkpoint).await.unwrap();
        let location = Path::from("ns.servicebus.windows.net/myhub/$default/checkpoint/3");
        let blob = memory.get(&location).await.unwrap();
        let attributes = blob.attributes.clone();
        assert!(blob.bytes().await.unwrap().is_empty());
        let value = |k: &str| {
            attributes
                .get(&Attribute::Metadata(k.to_owned().into()))
                .map(|v| v.as_ref().to_owned())
        };
        assert_eq!(value("offset").as_deref(), Some("8589934592"));
        assert_eq!(value("sequencenumber").as_deref(), Some("12"));

        let missing = Path::from("ns.servicebus.windows.net/myhub/$default/checkpoint/4");
        let mut only_offset = Attributes::new();
        only_offset.insert(Attribute::Metadata("offset".into()), "1".into());
        memory
            .put_opts(&missing, PutPayload::new(), only_offset.into())
            .await
            .unwrap();
        let error = store.load(&key("4")).await.unwrap_err().to_string();
        assert!(error.contains("no `sequencenumber` metadata"), "{error}");
    }
}
