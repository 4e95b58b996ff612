//! An object store that fails or stalls uploads on the [`Backend`]'s say, over a temporary local
//! directory ([`FaultyDir`]): the backend of the two file sinks, Parquet and storage.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt as _;
use futures::stream::BoxStream;
use hubroute_sinks::ObjectStoreConfig;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt as _, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use crate::faults::Backend;

/// Uploads consult the [`Backend`] first; reads pass through.
#[derive(Debug)]
struct FaultyStore {
    inner: LocalFileSystem,
    backend: Arc<Backend>,
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

fn injected() -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyStore",
        source: "injected failure: connection reset".into(),
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        path: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.backend.before_operation().await {
            return Err(injected());
        }
        self.inner.put_opts(path, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        path: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        if self.backend.before_operation().await {
            return Err(injected());
        }
        self.inner.put_multipart_opts(path, opts).await
    }
    async fn get_opts(&self, path: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(path, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A temporary directory that a sink writes to through a [`FaultyStore`], and the test reads
/// directly.
pub(crate) struct FaultyDir {
    dir: tempfile::TempDir,
    backend: Arc<Backend>,
}

impl FaultyDir {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            backend: Backend::new(),
        }
    }

    /// The store a sink writes through, failing or stalling uploads on the backend's say.
    pub(crate) fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(FaultyStore {
            inner: LocalFileSystem::new_with_prefix(self.dir.path()).unwrap(),
            backend: Arc::clone(&self.backend),
        })
    }

    /// The directory as a sink's configured store (which `with_store` replaces by [`Self::store`]).
    pub(crate) fn config(&self) -> ObjectStoreConfig {
        ObjectStoreConfig::Local {
            root: self.dir.path().to_owned(),
        }
    }

    /// Every object stored so far, by name, read past the fault injection.
    pub(crate) async fn objects(&self) -> Vec<(String, Bytes)> {
        let store = LocalFileSystem::new_with_prefix(self.dir.path()).unwrap();
        let listed: Vec<ObjectMeta> = store.list(None).try_collect().await.unwrap();
        let mut objects = Vec::new();
        for object in listed {
            let get = store.get(&object.location).await.unwrap();
            objects.push((object.location.to_string(), get.bytes().await.unwrap()));
        }
        objects
    }

    pub(crate) fn backend(&self) -> Arc<Backend> {
        Arc::clone(&self.backend)
    }
}
