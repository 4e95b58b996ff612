//! [`ObjectStoreCheckpointStore`]: checkpoints and partition ownership as blobs with metadata, in
//! the layout of the official Azure SDKs (`azure-eventhub-checkpointstoreblob`,
//! `Azure.Messaging.EventHubs.Processor`).
//!
//! Checkpoint blob `{fqns}/{eventhub}/{consumergroup}/checkpoint/{partition}` (lower-cased), empty
//! content, metadata `offset` and `sequencenumber`, written unconditionally as the SDKs do. Ownership
//! blob `…/ownership/{partition}`, metadata `ownerid` (empty for a released partition), its
//! `Last-Modified` the claim's age. Claims are compare-and-swap through object_store's conditional
//! puts: `If-Match` with the ETag last seen for an existing blob, create-if-absent for a new one, so
//! of two instances claiming the same version exactly one wins.
//!
//! Any `object_store` backend that keeps user metadata and does conditional puts works (Azure Blob,
//! S3, in-memory); the local filesystem backend keeps no metadata, use [`super::FileCheckpointStore`]
//! there. S3 derives an ETag from the content alone, so every ownership write there carries a fresh
//! nonce as content: an empty blob would keep one ETag forever and `If-Match` would never fail.
//! [`ObjectStoreCheckpointStore::check_conditional_writes`] proves at start that the store refuses a
//! stale claim.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, ObjectStore, ObjectStoreExt as _, PutMode,
    PutOptions, PutPayload, UpdateVersion,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::{Checkpoint, CheckpointKey, CheckpointStore, EndpointPositions};
use crate::{Error, Result};

/// Metadata key of the offset.
const OFFSET: &str = "offset";
/// Metadata key of the sequence number.
const SEQUENCE_NUMBER: &str = "sequencenumber";
/// Metadata key of the owner of a partition.
const OWNER_ID: &str = "ownerid";

/// Requests sent to the store, by `operation` (`read`, `write`, `claim`, `delete`): what a shared
/// checkpoint store costs per instance.
pub type StoreOperations = Family<Vec<(&'static str, String)>, Counter>;

/// Checkpoints and ownership in an object store (typically the Azure Blob container an SDK
/// processor uses).
#[derive(Debug, Clone)]
pub struct ObjectStoreCheckpointStore {
    store: Arc<dyn ObjectStore>,
    /// Whether ownership blobs carry a fresh nonce as content (S3; see the module doc).
    nonce_content: bool,
    operations: StoreOperations,
}

/// One partition's ownership record as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// `ownerid` metadata; empty when the last owner released the partition.
    pub owner_id: String,
    /// When the record was last written: a claim older than the ownership expiry is void.
    pub last_modified: DateTime<Utc>,
    /// The record's version: the condition of the next claim.
    pub(crate) version: OwnershipVersion,
}

/// The ETag (and, where the store has them, the version id) of an ownership record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnershipVersion {
    e_tag: Option<String>,
    version: Option<String>,
}

impl ObjectStoreCheckpointStore {
    /// A store writing into `store` (for Azure, a client scoped to the checkpoint container).
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            nonce_content: false,
            operations: StoreOperations::default(),
        }
    }

    /// Writes ownership records with a fresh nonce as content, for stores whose ETag is a hash of
    /// the content (S3).
    #[must_use]
    pub(crate) fn with_nonce_content(mut self) -> Self {
        self.nonce_content = true;
        self
    }

    /// Counts requests into `operations` (the engine's metric family).
    #[must_use]
    pub(crate) fn counting_into(mut self, operations: StoreOperations) -> Self {
        self.operations = operations;
        self
    }

    fn count(&self, operation: &'static str) {
        self.operations
            .get_or_create(&vec![("operation", operation.to_owned())])
            .inc();
    }

    /// Reads an object's metadata (a `HEAD`); `None` when it does not exist.
    async fn head(&self, name: &str) -> Result<Option<(object_store::ObjectMeta, Attributes)>> {
        self.count("read");
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match self.store.get_opts(&Path::from(name), options).await {
            Ok(result) => Ok(Some((result.meta, result.attributes))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(failure(name, error)),
        }
    }

    /// The ownership record of `key`'s partition, if any instance ever claimed it.
    pub async fn ownership(&self, key: &CheckpointKey) -> Result<Option<Ownership>> {
        let name = key.ownership_blob_name();
        let Some((meta, attributes)) = self.head(&name).await? else {
            return Ok(None);
        };
        Ok(Some(Ownership {
            owner_id: metadata(&attributes, OWNER_ID).unwrap_or_default(),
            last_modified: meta.last_modified,
            version: OwnershipVersion {
                e_tag: meta.e_tag,
                version: meta.version,
            },
        }))
    }

    /// Writes `owner_id` as the owner of `key`'s partition if the record is still at `current`
    /// (`None`: if there is no record yet). Returns the new version, or `None` when another
    /// instance wrote the record first. An empty `owner_id` releases the partition.
    pub(crate) async fn claim(
        &self,
        key: &CheckpointKey,
        owner_id: &str,
        current: Option<&OwnershipVersion>,
    ) -> Result<Option<OwnershipVersion>> {
        self.claim_blob(&key.ownership_blob_name(), owner_id, current)
            .await
    }

    async fn claim_blob(
        &self,
        name: &str,
        owner_id: &str,
        current: Option<&OwnershipVersion>,
    ) -> Result<Option<OwnershipVersion>> {
        self.count("claim");
        let mode = match current {
            None => PutMode::Create,
            Some(version) => PutMode::Update(UpdateVersion {
                e_tag: version.e_tag.clone(),
                version: version.version.clone(),
            }),
        };
        let payload = if self.nonce_content {
            PutPayload::from(uuid::Uuid::new_v4().simple().to_string())
        } else {
            PutPayload::new()
        };
        let options = PutOptions {
            mode,
            attributes: attributes([(OWNER_ID, owner_id.to_owned())]),
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&Path::from(name), payload, options)
            .await
        {
            Ok(result) => Ok(Some(OwnershipVersion {
                e_tag: result.e_tag,
                version: result.version,
            })),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::NotFound { .. },
            ) => Ok(None),
            Err(error @ object_store::Error::NotImplemented { .. }) => Err(failure(
                name,
                format!(
                    "{error}; this store cannot do conditional writes, which sharing partitions among instances needs"
                ),
            )),
            Err(error) => Err(failure(name, error)),
        }
    }

    /// Proves that the store refuses a claim made with a stale version, with a scratch record
    /// beside `key`'s blobs (outside the `ownership/` and `checkpoint/` folders the SDKs list),
    /// deleted afterwards. Several instances must never both believe they own a partition, so a
    /// store that ignores the condition is refused at start.
    pub async fn check_conditional_writes(&self, key: &CheckpointKey) -> Result<()> {
        let name = format!(
            "{}/conditional-write-check/{}",
            key.consumer_group_prefix(),
            uuid::Uuid::new_v4().simple()
        );
        let scratch = name.as_str();
        let refused = |what: &str| {
            failure(
                &name,
                format!(
                    "the store accepted {what}; it ignores conditional writes (If-Match / If-None-Match), \
                     so several instances cannot share partitions through it"
                ),
            )
        };
        let outcome = async {
            let first = self
                .claim_blob(scratch, "check", None)
                .await?
                .ok_or_else(|| failure(scratch, "a fresh scratch record already exists"))?;
            if self.claim_blob(scratch, "check", None).await?.is_some() {
                return Err(refused("a create-if-absent over an existing record"));
            }
            let second = self
                .claim_blob(scratch, "check", Some(&first))
                .await?
                .ok_or_else(|| refused_current(scratch))?;
            if second == first {
                return Err(refused("a write that left the ETag unchanged"));
            }
            if self
                .claim_blob(scratch, "check", Some(&first))
                .await?
                .is_some()
            {
                return Err(refused("a write conditional on a stale ETag"));
            }
            Ok(())
        }
        .await;
        self.count("delete");
        let _ = self.store.delete(&Path::from(scratch)).await;
        outcome
    }
}

fn refused_current(name: &str) -> Error {
    failure(
        name,
        "the store refused a write conditional on the current ETag; it cannot do conditional writes",
    )
}

fn failure(location: &str, problem: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        location: location.to_owned(),
        problem: problem.to_string(),
    }
}

fn metadata(attributes: &Attributes, field: &str) -> Option<String> {
    attributes
        .get(&Attribute::Metadata(field.to_owned().into()))
        .map(|value| value.as_ref().to_owned())
}

fn attributes<const N: usize>(fields: [(&'static str, String); N]) -> Attributes {
    let mut attributes = Attributes::new();
    for (field, value) in fields {
        attributes.insert(
            Attribute::Metadata(field.into()),
            AttributeValue::from(value),
        );
    }
    attributes
}

#[async_trait::async_trait]
impl CheckpointStore for ObjectStoreCheckpointStore {
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>> {
        let name = key.blob_name();
        let Some((_, attributes)) = self.head(&name).await? else {
            return Ok(None);
        };
        let field = |field: &str| {
            metadata(&attributes, field)
                .ok_or_else(|| failure(&name, format!("the blob has no `{field}` metadata")))
        };
        let offset = field(OFFSET)?;
        let sequence_number = field(SEQUENCE_NUMBER)?;
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
        self.count("write");
        let options = PutOptions {
            attributes: attributes([
                (OFFSET, checkpoint.offset.clone()),
                (SEQUENCE_NUMBER, checkpoint.sequence_number.to_string()),
            ]),
            ..PutOptions::default()
        };
        self.store
            .put_opts(&Path::from(name.as_str()), PutPayload::new(), options)
            .await
            .map_err(|error| failure(&name, error))?;
        Ok(())
    }

    async fn load_endpoints(&self, key: &CheckpointKey) -> Result<EndpointPositions> {
        let name = key.endpoints_blob_name();
        self.count("read");
        let bytes = match self.store.get(&Path::from(name.as_str())).await {
            Ok(result) => result
                .bytes()
                .await
                .map_err(|error| failure(&name, error))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(EndpointPositions::new()),
            Err(error) => return Err(failure(&name, error)),
        };
        serde_json::from_slice(&bytes).map_err(|error| {
            failure(
                &name,
                format!("not endpoint positions ({error}); delete the blob to resume every endpoint from the checkpoint"),
            )
        })
    }

    async fn save_endpoints(
        &self,
        key: &CheckpointKey,
        positions: &EndpointPositions,
    ) -> Result<()> {
        let name = key.endpoints_blob_name();
        self.count("write");
        let body = serde_json::to_vec(positions).map_err(|error| failure(&name, error))?;
        self.store
            .put(&Path::from(name.as_str()), PutPayload::from(body))
            .await
            .map_err(|error| failure(&name, error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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

    #[tokio::test]
    async fn of_two_claims_on_one_version_exactly_one_wins() {
        let memory = Arc::new(InMemory::new());
        let store = ObjectStoreCheckpointStore::new(memory.clone());
        let key = key("5");
        assert_eq!(store.ownership(&key).await.unwrap(), None);
        let created = store
            .claim(&key, "a", None)
            .await
            .unwrap()
            .expect("a creates");
        assert_eq!(
            store.claim(&key, "b", None).await.unwrap(),
            None,
            "b creates too late"
        );
        let seen = store.ownership(&key).await.unwrap().unwrap();
        assert_eq!((seen.owner_id.as_str(), &seen.version), ("a", &created));
        let stolen = store.claim(&key, "b", Some(&seen.version)).await.unwrap();
        assert!(stolen.is_some(), "b claims the version it saw");
        assert_eq!(
            store.claim(&key, "a", Some(&created)).await.unwrap(),
            None,
            "a's renewal with its stale version loses"
        );
        let released = store.ownership(&key).await.unwrap().unwrap();
        assert_eq!(released.owner_id, "b");
        store
            .claim(&key, "", Some(&released.version))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.ownership(&key).await.unwrap().unwrap().owner_id, "");
        store.check_conditional_writes(&key).await.unwrap();
        let folder = Path::from("ns.servicebus.windows.net/myhub/$default");
        let listed = memory.list_with_delimiter(Some(&folder)).await.unwrap();
        let folders: Vec<&str> = listed.common_prefixes.iter().map(|p| p.as_ref()).collect();
        assert_eq!(
            folders,
            ["ns.servicebus.windows.net/myhub/$default/ownership"],
            "the check leaves no record behind"
        );
    }
}
