//! Starting and stopping partition routers as this instance gains and loses partitions.
//!
//! The supervisor follows [`PartitionOwnership`](crate::ownership::PartitionOwnership)'s owned
//! set: a partition that appears gets a receiver and a router, one that disappears has its
//! receiver stopped (its router routes what was already received, and those rows still commit).
//! A partition is *active* from its start until it is lost; only active partitions have their
//! checkpoints written. Before a partition starts, every endpoint with parked rows of it (from an
//! earlier run, or from the instance that owned it before) is parked, so its new rows queue up
//! behind the old ones, which this instance replays. A partition won back starts again only once the rows of its previous
//! period are settled, with fresh progress and the store's checkpoint, so nothing from the old
//! period can move the new owner's checkpoint back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hubroute_sinks::SinkBatch;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::router::{Floors, Router};
use super::{SOURCE_QUEUE, Shared};
use crate::checkpoint::{CheckpointStore, EndpointPositions};

/// How often a partition won back is checked for unsettled rows of its previous period.
const RESTART_POLL: Duration = Duration::from_millis(100);

/// Runs routers for the owned partitions until `shutdown`, then waits for them to drain. With a
/// single instance it also ends once every router has ended by itself (as the engine always has).
/// `checkpoints` is read for the positions a partition's endpoints had settled before it starts.
pub(super) async fn supervise(
    shared: Arc<Shared>,
    checkpoints: Arc<dyn CheckpointStore>,
    queues: Vec<mpsc::Sender<SinkBatch>>,
    shutdown: CancellationToken,
) {
    let mut owned = shared.ownership.watch();
    let mut routers: JoinSet<usize> = JoinSet::new();
    // Partitions whose router runs, with the token that stops its receiver.
    let mut running: HashMap<usize, CancellationToken> = HashMap::new();
    // Partitions started in their current ownership period: a router that ended by itself (its
    // link was stolen) is not restarted until the partition is lost and won again.
    let mut started: HashSet<usize> = HashSet::new();
    let mut poll = tokio::time::interval(RESTART_POLL);
    loop {
        let wanted: HashSet<usize> = {
            let owned = owned.borrow_and_update();
            shared
                .partitions
                .iter()
                .enumerate()
                .filter(|(_, p)| owned.contains(&p.id))
                .map(|(index, _)| index)
                .collect()
        };
        for (index, stop) in &running {
            if !wanted.contains(index) && !stop.is_cancelled() {
                let partition = &shared.partitions[*index];
                tracing::info!(partition = %partition.id, "partition lost: stopping its receiver");
                partition.active.store(false, Ordering::SeqCst);
                stop.cancel();
            }
        }
        started.retain(|index| {
            let keep = wanted.contains(index);
            if !keep {
                shared.partitions[*index]
                    .active
                    .store(false, Ordering::SeqCst);
            }
            keep
        });
        for &index in &wanted {
            let partition = &shared.partitions[index];
            if started.contains(&index) || running.contains_key(&index) {
                continue;
            }
            if !shared.ledger.is_settled(index) {
                continue;
            }
            if let Err(error) = shared.park_for_partition(&partition.id).await {
                tracing::warn!(partition = %partition.id, %error, "cannot tell whether the partition has parked rows; starting it later");
                continue;
            }
            let floors = endpoint_floors(&shared, checkpoints.as_ref(), &partition.id).await;
            if !shared.ledger.restart(index, floors.clone()) {
                continue;
            }
            partition.active.store(true, Ordering::SeqCst);
            let stop = shutdown.child_token();
            let (downstream, batches) = mpsc::channel(SOURCE_QUEUE);
            let receiver = shared.source.spawn(&partition.id, downstream, stop.clone());
            let span = tracing::info_span!("partition", partition = %partition.id);
            let router = Router {
                shared: Arc::clone(&shared),
                partition: index,
                floors: Floors::new(floors),
                queues: queues.clone(),
                shutdown: shutdown.clone(),
            }
            .run(batches, receiver)
            .instrument(span);
            routers.spawn(async move {
                router.await;
                index
            });
            started.insert(index);
            running.insert(index, stop);
        }
        if shared.ownership.is_static() && running.is_empty() {
            break;
        }
        let waiting = wanted.iter().any(|index| !started.contains(index));
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = owned.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            Some(ended) = routers.join_next(), if !routers.is_empty() => {
                if let Ok(index) = ended {
                    running.remove(&index);
                }
            }
            _ = poll.tick(), if waiting => {}
        }
    }
    drop(queues);
    while routers.join_next().await.is_some() {}
}

/// The positions each endpoint (by index) had settled in `partition` before this period, as
/// stored beside its checkpoint. Unreadable positions only cost duplicates: they are logged and
/// every endpoint resumes from the checkpoint.
async fn endpoint_floors(
    shared: &Shared,
    checkpoints: &dyn CheckpointStore,
    partition: &str,
) -> Vec<Option<i64>> {
    let key = shared.source.checkpoint_key(partition);
    let stored = match checkpoints.load_endpoints(&key).await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(%partition, %error, "cannot read the endpoint positions; every endpoint resumes from the checkpoint");
            EndpointPositions::new()
        }
    };
    shared
        .endpoints
        .iter()
        .map(|e| stored.get(&e.name).copied())
        .collect()
}
