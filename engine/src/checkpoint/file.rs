//! [`FileCheckpointStore`]: the default store, one small JSON file per partition under a directory.
//!
//! Files mirror the SDK blob layout (`{dir}/{fqns}/{eventhub}/{consumergroup}/checkpoint/{partition}`,
//! lower-cased) so one directory can hold many hubs and consumer groups. A save writes a temporary
//! file beside the target, syncs it and renames it over the target (rename is atomic on POSIX), then
//! syncs the directory: a crash leaves either the old or the new checkpoint, never a torn one.
//! Endpoint positions are a JSON object in `…/hubroute-endpoints/{partition}`, written the same way.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Checkpoint, CheckpointKey, CheckpointStore, EndpointPositions};
use crate::{Error, Result};

/// Checkpoints as files under a directory.
#[derive(Debug, Clone)]
pub struct FileCheckpointStore {
    directory: PathBuf,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    offset: String,
    sequence_number: i64,
}

impl FileCheckpointStore {
    /// A store rooted at `directory` (created on first save).
    pub fn new(directory: impl Into<PathBuf>) -> Self {
        Self {
            directory: directory.into(),
        }
    }

    fn path(&self, key: &CheckpointKey) -> PathBuf {
        self.directory.join(key.blob_name())
    }

    fn endpoints_path(&self, key: &CheckpointKey) -> PathBuf {
        self.directory.join(key.endpoints_blob_name())
    }
}

fn failure(path: &Path, problem: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        location: path.display().to_string(),
        problem: problem.to_string(),
    }
}

fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let directory = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(directory)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    let temporary = PathBuf::from(temporary);
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(directory)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[async_trait::async_trait]
impl CheckpointStore for FileCheckpointStore {
    async fn load(&self, key: &CheckpointKey) -> Result<Option<Checkpoint>> {
        let path = self.path(key);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(failure(&path, format!("cannot read: {error}"))),
        };
        let record: Record = serde_json::from_slice(&bytes).map_err(|error| {
            failure(
                &path,
                format!("not a checkpoint file ({error}); delete it to start from the configured position"),
            )
        })?;
        Ok(Some(Checkpoint {
            key: key.clone(),
            offset: record.offset,
            sequence_number: record.sequence_number,
        }))
    }

    async fn save(&self, checkpoint: &Checkpoint) -> Result<()> {
        let path = self.path(&checkpoint.key);
        let contents = serde_json::to_vec(&Record {
            offset: checkpoint.offset.clone(),
            sequence_number: checkpoint.sequence_number,
        })
        .map_err(|error| failure(&path, error))?;
        let target = path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&target, &contents))
            .await
            .map_err(|error| failure(&path, error))?
            .map_err(|error| failure(&path, format!("cannot write: {error}")))
    }

    async fn load_endpoints(&self, key: &CheckpointKey) -> Result<EndpointPositions> {
        let path = self.endpoints_path(key);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(EndpointPositions::new());
            }
            Err(error) => return Err(failure(&path, format!("cannot read: {error}"))),
        };
        serde_json::from_slice(&bytes).map_err(|error| {
            failure(
                &path,
                format!("not an endpoint positions file ({error}); delete it to resume every endpoint from the checkpoint"),
            )
        })
    }

    async fn save_endpoints(
        &self,
        key: &CheckpointKey,
        positions: &EndpointPositions,
    ) -> Result<()> {
        let path = self.endpoints_path(key);
        let contents = serde_json::to_vec(positions).map_err(|error| failure(&path, error))?;
        let target = path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&target, &contents))
            .await
            .map_err(|error| failure(&path, error))?
            .map_err(|error| failure(&path, format!("cannot write: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tests::{conformance, key};

    #[tokio::test]
    async fn passes_the_store_conformance_checks() {
        let directory = tempfile::tempdir().unwrap();
        conformance(&FileCheckpointStore::new(directory.path())).await;
    }

    #[tokio::test]
    async fn survives_a_new_store_instance_and_leaves_no_temporary_files() {
        let directory = tempfile::tempdir().unwrap();
        let checkpoint = Checkpoint {
            key: key("2"),
            offset: "77".to_owned(),
            sequence_number: 9,
        };
        FileCheckpointStore::new(directory.path())
            .save(&checkpoint)
            .await
            .unwrap();
        let reopened = FileCheckpointStore::new(directory.path());
        assert_eq!(reopened.load(&key("2")).await.unwrap(), Some(checkpoint));
        let folder = directory
            .path()
            .join("ns.servicebus.windows.net/myhub/$default/checkpoint");
        let names: Vec<String> = std::fs::read_dir(folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["2"]);
    }

    #[tokio::test]
    async fn a_corrupt_file_is_an_error_that_says_what_to_do() {
        let directory = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::new(directory.path());
        let path = store.path(&key("0"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{not json").unwrap();
        let error = store.load(&key("0")).await.unwrap_err().to_string();
        assert!(error.contains("delete it"), "{error}");
    }
}
