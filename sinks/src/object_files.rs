//! What the sinks that write whole files to an object store (Parquet, IoT Hub storage files) share:
//! splitting a batch by partition, uploading a finished file so that it appears complete or not at
//! all, retrying that upload, and settling the tickets whose rows the file holds.
//!
//! A file is always uploaded from a finished in-memory buffer: one `put` up to [`PART_BYTES`],
//! above that a multipart upload whose parts become visible only at `complete` (Azure block list
//! commit, S3 `CompleteMultipartUpload`, local filesystem: a staged file renamed into place). A
//! failed upload is aborted and retried from the same buffer, forever while the error is retryable
//! and the sink is not surrendered ([`Surrender`]); a file that is not committed hands its rows
//! back in its tickets' acks.
//!
//! Their health probe ([`probe_store`]) is one `head` request under the fixed part of the
//! endpoint's path template: it writes nothing, and answers within [`PROBE_TIMEOUT`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{Array, AsArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use hubroute_message::columns as message_columns;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt};

use crate::error::object_store_error_is_retryable;
use crate::{
    AckLedger, Error, FailedRow, ObjectStoreConfig, Result, RetryPolicy, Surrender, Ticket,
};

/// How long the one request of a probe may take.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts a file's memory as uploading until dropped (with its upload task, however it ends).
#[derive(Debug)]
pub(crate) struct UploadMemory {
    uploading: Arc<AtomicU64>,
    bytes: u64,
}

impl UploadMemory {
    pub(crate) fn hold(uploading: &Arc<AtomicU64>, bytes: u64) -> Self {
        uploading.fetch_add(bytes, Ordering::AcqRel);
        Self {
            uploading: Arc::clone(uploading),
            bytes,
        }
    }
}

impl Drop for UploadMemory {
    fn drop(&mut self) {
        self.uploading.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Files larger than this are uploaded as multipart uploads in parts of this size.
pub(crate) const PART_BYTES: usize = 8 * 1024 * 1024;

/// Which rows of a ticket's batch a file holds.
#[derive(Debug)]
pub(crate) enum RowSet {
    /// Rows `0..n`: the whole batch belonged to one partition.
    All(usize),
    /// These row indices.
    Some(Vec<u32>),
}

impl RowSet {
    pub(crate) fn rows(&self) -> Vec<usize> {
        match self {
            Self::All(n) => (0..*n).collect(),
            Self::Some(rows) => rows.iter().map(|&r| r as usize).collect(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::All(n) => *n,
            Self::Some(rows) => rows.len(),
        }
    }
}

/// Splits a batch by partition: `(partition, rows, which rows)`; no copy when it has one partition.
pub(crate) fn split_by_partition(
    batch: &RecordBatch,
    sink: &str,
) -> Result<Vec<(String, RecordBatch, RowSet)>> {
    let partitions = batch
        .column_by_name(message_columns::PARTITION)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or(hubroute_message::Error::NotAMessageBatch {
            column: message_columns::PARTITION,
            problem: "is missing or not a string".to_owned(),
        })?;
    let first = partitions.value(0);
    if (1..partitions.len()).all(|i| partitions.value(i) == first) {
        return Ok(vec![(
            first.to_owned(),
            batch.clone(),
            RowSet::All(batch.num_rows()),
        )]);
    }
    let mut groups: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for i in 0..partitions.len() {
        let row = u32::try_from(i).expect("batches hold fewer than 2^32 rows");
        groups.entry(partitions.value(i)).or_default().push(row);
    }
    groups
        .into_iter()
        .map(|(partition, rows)| {
            let indices = UInt32Array::from(rows.clone());
            let part = take_record_batch(batch, &indices).map_err(|source| Error::Arrow {
                sink: sink.to_owned(),
                source,
            })?;
            Ok((partition.to_owned(), part, RowSet::Some(rows)))
        })
        .collect()
}

/// How the upload of one file ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum UploadOutcome {
    /// The object is committed.
    Committed,
    /// A permanent error prevents it: the message, for the dead-letter store.
    Failed(String),
    /// The sink's [`Surrender`] flag was raised first: the rows go back to the engine.
    Surrendered,
}

/// The error recorded beside rows handed back to the engine by a surrendered sink.
pub(crate) const HANDED_BACK: &str = "handed back to the engine: the endpoint is parked";

/// Uploads `bytes` to `path`, retrying retryable errors with `retry`'s backoff, until it is
/// committed, fails permanently, or `surrender` is raised (which also abandons an attempt in
/// flight: an upload that completed at the store just before counts as not done, so its rows may
/// arrive twice, never zero times).
pub(crate) async fn upload_with_retries(
    sink: &str,
    store: &dyn ObjectStore,
    path: &Path,
    bytes: &Bytes,
    retry: RetryPolicy,
    surrender: &Surrender,
) -> UploadOutcome {
    let mut attempt = 0;
    loop {
        let result = tokio::select! {
            biased;
            () = surrender.raised() => return UploadOutcome::Surrendered,
            result = put(store, path, bytes) => result,
        };
        match result {
            Ok(()) => return UploadOutcome::Committed,
            Err(error) if object_store_error_is_retryable(&error) => {
                let delay = retry.delay(attempt, None);
                tracing::warn!(sink, %path, %error, ?delay, "upload failed; retrying");
                tokio::select! {
                    biased;
                    () = surrender.raised() => return UploadOutcome::Surrendered,
                    () = tokio::time::sleep(delay) => {}
                }
                attempt = attempt.saturating_add(1);
            }
            Err(error) => {
                tracing::error!(sink, %path, %error, "upload failed permanently");
                return UploadOutcome::Failed(format!("upload of {path} failed: {error}"));
            }
        }
    }
}

/// Settles every ticket part of a file as committed.
pub(crate) async fn commit_all(ledger: &AckLedger, tickets: Vec<(Ticket, RowSet)>) -> Result<()> {
    for (ticket, _) in tickets {
        ledger.settle(ticket, Vec::new()).await?;
    }
    Ok(())
}

/// Settles every ticket part of a file whose upload ended without a commit: its rows (`rows`, every
/// row of the file in file order) are handed back, as permanently failed or as surrendered.
pub(crate) async fn settle_uncommitted(
    ledger: &AckLedger,
    tickets: Vec<(Ticket, RowSet)>,
    outcome: &UploadOutcome,
    rows: &RecordBatch,
) -> Result<()> {
    let (error, surrendered) = match outcome {
        UploadOutcome::Committed => return commit_all(ledger, tickets).await,
        UploadOutcome::Failed(error) => (error.as_str(), false),
        UploadOutcome::Surrendered => (HANDED_BACK, true),
    };
    let mut offset = 0;
    for (ticket, set) in tickets {
        let failed = set
            .rows()
            .into_iter()
            .map(|row| FailedRow {
                row,
                error: error.to_owned(),
            })
            .collect();
        let data = rows.slice(
            offset.min(rows.num_rows()),
            set.len().min(rows.num_rows().saturating_sub(offset)),
        );
        offset += set.len();
        if surrendered {
            ledger.settle_surrendered(ticket, failed, data).await?;
        } else {
            ledger.settle_with_rows(ticket, failed, Some(data)).await?;
        }
    }
    Ok(())
}

/// Uploads `bytes` to `path` so that the object appears complete or not at all.
async fn put(store: &dyn ObjectStore, path: &Path, bytes: &Bytes) -> object_store::Result<()> {
    if bytes.len() <= PART_BYTES {
        store.put(path, bytes.clone().into()).await?;
        return Ok(());
    }
    let mut upload = store.put_multipart(path).await?;
    let result = put_parts(upload.as_mut(), bytes).await;
    if result.is_err()
        && let Err(error) = upload.abort().await
    {
        tracing::warn!(%path, %error, "aborting a failed multipart upload failed");
    }
    result
}

async fn put_parts(upload: &mut dyn MultipartUpload, bytes: &Bytes) -> object_store::Result<()> {
    let parts: Vec<_> = (0..bytes.len())
        .step_by(PART_BYTES)
        .map(|start| {
            let end = (start + PART_BYTES).min(bytes.len());
            upload.put_part(bytes.slice(start..end).into())
        })
        .collect();
    futures::future::try_join_all(parts).await?;
    upload.complete().await?;
    Ok(())
}

/// The directory part of a path template before its first `{token}`: `lake/{iothub}/…` gives
/// `lake`, `{iothub}/…` the store's root.
pub(crate) fn fixed_prefix(template: &str) -> Path {
    let fixed = &template[..template.find('{').unwrap_or(template.len())];
    Path::from(
        fixed
            .rsplit_once('/')
            .map_or("", |(directory, _)| directory),
    )
}

/// The object a probe asks about: it need not exist (not found is an answer).
const PROBE_OBJECT: &str = ".hubroute-probe";

/// Whether the store of endpoint `sink` can take files: one `head` of an object under `prefix`,
/// without retries, within [`PROBE_TIMEOUT`]. Any answer of the store counts as up, including
/// "not found" (the usual answer; also that of a missing container, which uploads would report as
/// a permanent failure); a connection failure, a timeout, a server error or a refused credential
/// is the error. `head` rather than a listing because object_store maps its status codes to
/// typed errors (`NotFound`, `PermissionDenied`, ...) for every backend.
pub(crate) async fn probe_store(
    sink: &str,
    store: &ObjectStoreConfig,
    prefix: &Path,
) -> Result<()> {
    let client = store.build_for_probe(sink, PROBE_TIMEOUT)?;
    let path = prefix.clone().join(PROBE_OBJECT);
    match client.head(&path).await {
        Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(Error::ObjectStore {
            sink: sink.to_owned(),
            operation: "probe (head)",
            path: path.to_string(),
            source: Box::new(source),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_prefix_is_the_directory_before_the_first_token() {
        let cases = [
            ("{iothub}/{partition}/{YYYY}", ""),
            ("lake/{iothub}/{partition}", "lake"),
            ("a/b/files-{iothub}/{partition}", "a/b"),
            ("archive/hub-{partition}", "archive"),
            ("no-token", ""),
        ];
        for (template, prefix) in cases {
            assert_eq!(fixed_prefix(template).as_ref(), prefix, "{template}");
        }
    }
}
