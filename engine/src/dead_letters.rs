//! What an operator does with the dead-letter store (`hubroute dead-letters`): count what is there,
//! replay it through an endpoint's sink, purge it.
//!
//! Replay works one stored object at a time: its selected records go to the sink as one batch, and
//! only once the sink acked them is the object moved aside (`…/replayed/…`), so an interrupted
//! replay resumes with the objects that are left and resends at most the one it was delivering
//! (which an idempotent sink absorbs). Records of an object outside `--since` / `--until` are first
//! written to a new object beside it, so moving the object aside never loses them; rows the sink
//! rejects again are dead-lettered again as new objects. Parked rows are replayed by default;
//! permanently failed rows only when asked (`failed`), since they failed for a reason that someone
//! must have fixed first.

use std::collections::BTreeMap;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use hubroute_sinks::{
    DeadLetter, DeadLetterStore, FailedRow, SinkBatch, StoredObject, build_sink, drive_sink,
};
use tokio::sync::mpsc;

use crate::config::LoadedConfig;
use crate::{Error, Result};

/// Records of one endpoint, kind, reason and hour, as `list` counts them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct DeadLetterGroup {
    /// The endpoint (`_source` for malformed events).
    pub endpoint: String,
    /// `parked` (replayed automatically) or `failed` (replayed only on request).
    pub kind: &'static str,
    /// The error, as the sink reported it.
    pub reason: String,
    /// The hour the records were stored, `YYYY-MM-DDTHH:00Z`.
    pub hour: String,
    /// How many.
    pub count: u64,
}

/// Counts the records still to replay by endpoint, kind, reason and hour.
pub async fn list(loaded: &LoadedConfig) -> Result<Vec<DeadLetterGroup>> {
    let store = open(loaded)?;
    let mut groups: BTreeMap<(String, &'static str, String, String), u64> = BTreeMap::new();
    for object in store.objects(None).await.map_err(store_error)? {
        let records = store.read_if_present(&object.path).await;
        for record in records.map_err(store_error)?.unwrap_or_default() {
            let kind = if object.parked { "parked" } else { "failed" };
            let hour = record.failed_at.format("%Y-%m-%dT%H:00Z").to_string();
            *groups
                .entry((object.sink.clone(), kind, record.error, hour))
                .or_default() += 1;
        }
    }
    Ok(groups
        .into_iter()
        .map(|((endpoint, kind, reason, hour), count)| DeadLetterGroup {
            endpoint,
            kind,
            reason,
            hour,
            count,
        })
        .collect())
}

/// What to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    /// The endpoint whose records are replayed through its sink.
    pub endpoint: String,
    /// Only records stored at or after this time.
    pub since: Option<SystemTime>,
    /// Only records stored before this time.
    pub until: Option<SystemTime>,
    /// Count what would be replayed, change nothing.
    pub dry_run: bool,
    /// Replay permanently failed records instead of parked ones.
    pub failed: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Objects replayed (and moved aside).
    pub objects: u64,
    /// Records sent to the sink (or that would be, for a dry run).
    pub rows: u64,
    /// Records the sink rejected again, dead-lettered again.
    pub failed_again: u64,
}

/// Replays the selected records of `request.endpoint` through a new instance of its sink,
/// calling `progress(rows done, rows selected)` after each object.
pub async fn replay(
    loaded: &LoadedConfig,
    request: &ReplayRequest,
    mut progress: impl FnMut(u64, u64),
) -> Result<ReplayReport> {
    let store = open(loaded)?;
    let endpoint = loaded
        .config
        .endpoints
        .iter()
        .find(|e| e.name() == request.endpoint)
        .ok_or_else(|| Error::Config {
            file: loaded.path.display().to_string(),
            line: 0,
            column: 0,
            problem: format!(
                "no endpoint is named `{}`; the endpoints are: {}",
                request.endpoint,
                loaded
                    .config
                    .endpoints
                    .iter()
                    .map(|e| e.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
    let selected_objects: Vec<StoredObject> = store
        .objects(Some(&request.endpoint))
        .await
        .map_err(store_error)?
        .into_iter()
        .filter(|o| o.parked != request.failed)
        .collect();
    let (since, until) = (
        request.since.map(DateTime::<Utc>::from),
        request.until.map(DateTime::<Utc>::from),
    );
    let in_window = |record: &DeadLetter| {
        since.is_none_or(|since| record.failed_at >= since)
            && until.is_none_or(|until| record.failed_at < until)
    };
    let mut objects = Vec::new();
    let mut total = 0;
    for object in selected_objects {
        let Some(records) = store
            .read_if_present(&object.path)
            .await
            .map_err(store_error)?
        else {
            continue;
        };
        let (selected, rest): (Vec<DeadLetter>, Vec<DeadLetter>) =
            records.into_iter().partition(in_window);
        if selected.is_empty() {
            continue;
        }
        total += selected.len() as u64;
        objects.push((object, selected, rest));
    }
    let mut report = ReplayReport::default();
    if request.dry_run {
        report.rows = total;
        return Ok(report);
    }
    let sink_error = |source| Error::Sink {
        endpoint: request.endpoint.clone(),
        source: Box::new(source),
    };
    let (acks, mut ack_receiver) = mpsc::channel(16);
    let sink = build_sink(endpoint.sink.clone(), acks).map_err(sink_error)?;
    let (queue, batches) = mpsc::channel(1);
    let mut driver = tokio::spawn(drive_sink(sink, batches));
    let stopped = |problem: String| Error::EndpointStopped {
        endpoint: request.endpoint.clone(),
        problem,
    };
    for (ticket, (object, selected, rest)) in (0..).zip(objects) {
        let batch = DeadLetter::to_batch(&selected).map_err(sink_error)?;
        let ack = tokio::select! {
            ended = &mut driver => return Err(match ended {
                Ok(Err(error)) => sink_error(error),
                Ok(Ok(())) => stopped("its sink ended".to_owned()),
                Err(join) => stopped(format!("its sink panicked: {join}")),
            }),
            ack = async {
                queue.send(SinkBatch { ticket, batch: batch.clone() }).await.ok()?;
                ack_receiver.recv().await
            } => ack.ok_or_else(|| stopped("its sink ended".to_owned()))?,
        };
        if !ack.failed.is_empty() {
            let (rows, failed) = match &ack.failed_rows {
                Some(rows) => (
                    rows.clone(),
                    (0..)
                        .zip(&ack.failed)
                        .map(|(row, f)| FailedRow {
                            row,
                            error: f.error.clone(),
                        })
                        .collect(),
                ),
                None => (batch.clone(), ack.failed.clone()),
            };
            let records = DeadLetter::from_failed_rows(&request.endpoint, None, &rows, &failed)
                .map_err(sink_error)?;
            store.write(&records).await.map_err(store_error)?;
            report.failed_again += records.len() as u64;
        }
        if !rest.is_empty() {
            store
                .write_beside(&object.path, &rest)
                .await
                .map_err(store_error)?;
        }
        store.move_aside(&object.path).await.map_err(store_error)?;
        report.objects += 1;
        report.rows += selected.len() as u64;
        progress(report.rows, total);
    }
    drop(queue);
    match driver.await {
        Ok(Ok(())) => Ok(report),
        Ok(Err(error)) => Err(sink_error(error)),
        Err(join) => Err(stopped(format!("its sink panicked: {join}"))),
    }
}

/// Deletes every object of the store (of `endpoint` only, if given), replayed ones included;
/// returns how many.
pub async fn purge(loaded: &LoadedConfig, endpoint: Option<&str>) -> Result<usize> {
    let store = open(loaded)?;
    let objects = store.all_objects(endpoint).await.map_err(store_error)?;
    for path in &objects {
        store.delete(path).await.map_err(store_error)?;
    }
    Ok(objects.len())
}

fn open(loaded: &LoadedConfig) -> Result<DeadLetterStore> {
    DeadLetterStore::new(&loaded.config.dead_letters).map_err(store_error)
}

fn store_error(error: hubroute_sinks::Error) -> Error {
    Error::DeadLetters(Box::new(error))
}
