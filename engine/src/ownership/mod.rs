//! Which partitions this instance reads, and, with a shared checkpoint store, how several
//! instances (and the official event processors) split a consumer group's partitions between them.
//!
//! With a local checkpoint store there is one instance and it owns every partition for good. With
//! a shared store (Azure Blob or S3) every instance runs the official processors' protocol on the
//! ownership records of [`ObjectStoreCheckpointStore`]: every `load_balancing_interval` it reads
//! each partition's record, renews its own claims, claims what [`plan`] says, and publishes the set
//! it owns on a `watch` channel; the pipeline starts a partition's receiver when it appears there
//! and stops it when it disappears. A claim is a conditional write, so two instances never both
//! win the same version of a record.
//!
//! A claim is trusted for `ownership_expiry` after the request that wrote it was *sent*, which is
//! never later than the record's `Last-Modified` other instances judge it by; when renewals fail
//! that long (the store is unreachable), the partitions are given up before anyone else may take
//! them. A checkpoint is written only after a fresh read of the record shows this instance as its
//! owner ([`PartitionOwnership::may_checkpoint`]), so an instance that lost a partition never moves
//! the new owner's checkpoint back.

mod metrics;
mod plan;

pub(crate) use metrics::OwnershipMetrics;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::checkpoint::{CheckpointKey, ObjectStoreCheckpointStore, OwnershipVersion};
use crate::config::{BalancingStrategy, CheckpointConfig};
use plan::{Fleet, Record};

/// The partitions this instance owns, shared by the balancer, the pipeline and the HTTP server.
#[derive(Debug, Clone)]
pub(crate) struct PartitionOwnership {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Every partition of the source, in the source's order.
    partitions: Vec<String>,
    owned: watch::Sender<BTreeSet<String>>,
    metrics: OwnershipMetrics,
    /// `None` for a single instance.
    shared: Option<Shared>,
}

/// The state of load balancing over a shared store.
#[derive(Debug)]
struct Shared {
    store: ObjectStoreCheckpointStore,
    /// The checkpoint key of every partition, keyed by partition.
    keys: BTreeMap<String, CheckpointKey>,
    owner_id: String,
    interval: Duration,
    expiry: Duration,
    strategy: BalancingStrategy,
    /// This instance's claims.
    held: Mutex<BTreeMap<String, Held>>,
    /// When the records were last read completely: the store's reachability.
    reached: Mutex<Instant>,
}

/// One claim this instance holds.
#[derive(Debug, Clone)]
struct Held {
    version: OwnershipVersion,
    /// When the request that wrote the claim was sent.
    renewed: Instant,
    /// The last renewal got no clear answer (a timeout, or a refused condition): `version` may be
    /// stale, and the next read of the record decides whether the claim is still ours.
    uncertain: bool,
}

/// What `/healthz` and `/routes` say about ownership.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OwnershipStatus {
    /// This instance's owner id; `None` for a single instance.
    pub(crate) owner_id: Option<String>,
    /// Partitions owned now.
    pub(crate) owned: Vec<String>,
    /// Seconds since the shared store was last read completely (`None` for a single instance).
    pub(crate) seconds_since_store_read: Option<f64>,
    /// False once the store has been unreachable for longer than the ownership expiry.
    pub(crate) healthy: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PartitionOwnership {
    /// A single instance: every partition, for good.
    pub(crate) fn single(partitions: Vec<String>, metrics: OwnershipMetrics) -> Self {
        let all: BTreeSet<String> = partitions.iter().cloned().collect();
        let owned: Vec<(&str, f64)> = partitions.iter().map(|p| (p.as_str(), 0.0)).collect();
        metrics.set_owned(&partitions, &owned);
        Self {
            inner: Arc::new(Inner {
                partitions,
                owned: watch::Sender::new(all),
                metrics,
                shared: None,
            }),
        }
    }

    /// One of several instances sharing `store`, owning nothing until [`Self::run`] claims
    /// partitions. Fails when the store cannot do the conditional writes claims need.
    pub(crate) async fn shared(
        store: ObjectStoreCheckpointStore,
        keys: Vec<CheckpointKey>,
        config: &CheckpointConfig,
        metrics: OwnershipMetrics,
    ) -> Result<Self> {
        if let Some(key) = keys.first() {
            store.check_conditional_writes(key).await?;
        }
        let owner_id = config
            .owner_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let partitions: Vec<String> = keys.iter().map(|k| k.partition.clone()).collect();
        metrics.set_owned(&partitions, &[]);
        tracing::info!(
            %owner_id,
            interval = ?config.load_balancing_interval,
            expiry = ?config.ownership_expiry,
            strategy = ?config.strategy,
            "sharing partitions with other instances through the checkpoint store"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                partitions,
                owned: watch::Sender::new(BTreeSet::new()),
                metrics,
                shared: Some(Shared {
                    store,
                    keys: keys.into_iter().map(|k| (k.partition.clone(), k)).collect(),
                    owner_id,
                    interval: config.load_balancing_interval,
                    expiry: config.ownership_expiry,
                    strategy: config.strategy,
                    held: Mutex::new(BTreeMap::new()),
                    reached: Mutex::new(Instant::now()),
                }),
            }),
        })
    }

    /// The partitions owned now, and every change after.
    pub(crate) fn watch(&self) -> watch::Receiver<BTreeSet<String>> {
        self.inner.owned.subscribe()
    }

    /// Whether the owned set never changes (a single instance).
    pub(crate) fn is_static(&self) -> bool {
        self.inner.shared.is_none()
    }

    /// Renews claims and balances about every `load_balancing_interval` (80 to 100 % of it, at
    /// random); returns at once for a single instance. The first cycle runs immediately. Once
    /// `draining` is cancelled (the engine is shutting down) no partition is claimed any more, but
    /// claims are still renewed until `stop`.
    pub(crate) async fn run(&self, draining: CancellationToken, stop: CancellationToken) {
        let Some(shared) = &self.inner.shared else {
            return;
        };
        // Renewals run on their own clock, so that a slow read of every record never delays them
        // past the expiry while the store still takes writes.
        let renewing = Self::every(shared.interval, &stop, || self.renew(shared));
        let balancing = Self::every(shared.interval, &draining, || self.balance(shared));
        tokio::join!(renewing, balancing);
    }

    /// Runs `cycle` about every `interval` until `stop`. Instances started together would
    /// otherwise act in lockstep, each renewing its claims just as the others try to steal them.
    async fn every<F, Fut>(interval: Duration, stop: &CancellationToken, mut cycle: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            let started = Instant::now();
            tokio::select! {
                () = stop.cancelled() => return,
                () = cycle() => {}
            }
            let pause = interval.mul_f64(rand::random_range(0.8..=1.0));
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(started + pause) => {}
            }
        }
    }

    /// Renews every held claim with the version this instance last wrote, then gives up claims
    /// that could not be renewed within the expiry.
    async fn renew(&self, shared: &Shared) {
        let renewals: Vec<(String, Option<OwnershipVersion>)> = lock(&shared.held)
            .iter()
            .map(|(p, claim)| (p.clone(), Some(claim.version.clone())))
            .collect();
        self.claim_all(shared, renewals, &BTreeMap::new(), shared.expiry / 3)
            .await;
        self.expire(shared);
        self.publish(shared);
    }

    /// One cycle: read every record, claim and steal, expire, publish.
    async fn balance(&self, shared: &Shared) {
        let started = Instant::now();
        // A store that hangs must not hold the cycle for ever.
        let patience = shared.expiry / 2;
        let now = chrono::Utc::now();
        let read = tokio::time::timeout(patience, self.read_records(shared))
            .await
            .unwrap_or_else(|_| {
                Err(crate::Error::Checkpoint {
                    location: "ownership records".to_owned(),
                    problem: format!("no answer within {patience:?}"),
                })
            });
        let records = match read {
            Ok(records) => {
                *lock(&shared.reached) = started;
                records
            }
            Err(error) => {
                tracing::warn!(%error, "reading partition ownership failed; keeping current claims until they expire");
                self.expire(shared);
                self.publish(shared);
                return;
            }
        };
        {
            let mut held = lock(&shared.held);
            held.retain(|partition, claim| {
                let current = records.get(partition);
                // Our own id under another version is a renewal of ours whose answer was lost.
                let still_mine = current.is_some_and(|(record, version)| {
                    if record.owner_id == shared.owner_id && claim.uncertain {
                        claim.version.clone_from(version);
                        claim.uncertain = false;
                    }
                    record.owner_id == shared.owner_id
                });
                if !still_mine {
                    tracing::info!(%partition, owner = current.map_or("", |(r, _)| r.owner_id.as_str()), "partition taken by another instance");
                    self.inner.metrics.lost("taken");
                }
                still_mine
            });
        }
        let plain: BTreeMap<String, Record> = records
            .iter()
            .map(|(p, (record, _))| (p.clone(), record.clone()))
            .collect();
        let plan = Fleet {
            partitions: &self.inner.partitions,
            records: &plain,
            owner_id: &shared.owner_id,
            now,
            expiry: shared.expiry,
        }
        .plan(shared.strategy, &mut rand::rng());
        let claims: Vec<(String, Option<OwnershipVersion>)> = {
            let held = lock(&shared.held);
            plan.renew
                .iter()
                .chain(&plan.claim)
                .chain(plan.steal.keys())
                .filter(|p| !held.contains_key(*p))
                .map(|p| (p.clone(), records.get(p).map(|(_, v)| v.clone())))
                .collect()
        };
        self.claim_all(shared, claims, &plan.steal, patience).await;
        self.expire(shared);
        self.publish(shared);
        if started.elapsed() > shared.interval {
            tracing::warn!(took = ?started.elapsed(), interval = ?shared.interval, "a balancing cycle took longer than the load-balancing interval; is the checkpoint store slow?");
        }
        tracing::debug!(
            claimed = plan.claim.len(),
            stealing = ?plan.steal,
            held = lock(&shared.held).len(),
            took = ?started.elapsed(),
            "balancing cycle done"
        );
    }

    /// Claims `partitions` concurrently, each conditional on its version (`None`: no record yet),
    /// waiting at most `patience`. A partition already held is a renewal; one that is refused or
    /// unanswered is left to the next read of its record (the refusal may answer a retry of a write
    /// that succeeded). The partitions in `steal` are taken from their live owners (the map's
    /// values): each record is read again just before its claim, because that owner renews it
    /// every cycle and a version read at the start of the cycle is likely stale by now.
    async fn claim_all(
        &self,
        shared: &Shared,
        partitions: Vec<(String, Option<OwnershipVersion>)>,
        steal: &BTreeMap<String, String>,
        patience: Duration,
    ) {
        let renewing: BTreeSet<String> = {
            let held = lock(&shared.held);
            partitions
                .iter()
                .map(|(p, _)| p)
                .filter(|p| held.contains_key(*p))
                .cloned()
                .collect()
        };
        let mut claims = JoinSet::new();
        for (partition, current) in partitions {
            let Some(key) = shared.keys.get(&partition).cloned() else {
                continue;
            };
            let store = shared.store.clone();
            let owner_id = shared.owner_id.clone();
            let victim = steal.get(&partition).cloned();
            claims.spawn(async move {
                let current = match victim {
                    None => current,
                    Some(victim) => match store.ownership(&key).await {
                        Ok(Some(record)) if record.owner_id == victim => Some(record.version),
                        Ok(_) => return (partition, Instant::now(), Ok(None)),
                        Err(error) => return (partition, Instant::now(), Err(error)),
                    },
                };
                let sent = Instant::now();
                let outcome = store.claim(&key, &owner_id, current.as_ref()).await;
                (partition, sent, outcome)
            });
        }
        let deadline = Instant::now() + patience;
        let mut answered = BTreeSet::new();
        while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, claims.join_next()).await {
            let Ok((partition, sent, outcome)) = joined else {
                continue;
            };
            let renewal = renewing.contains(&partition);
            if renewal && matches!(outcome, Ok(Some(_))) {
                answered.insert(partition.clone());
            }
            match outcome {
                Ok(Some(version)) => {
                    if !renewal {
                        let stolen = steal.contains_key(&partition);
                        self.inner.metrics.claimed(true);
                        if stolen {
                            self.inner.metrics.stole();
                        }
                        tracing::info!(%partition, stolen, "partition claimed");
                    }
                    lock(&shared.held).insert(
                        partition,
                        Held {
                            version,
                            renewed: sent,
                            uncertain: false,
                        },
                    );
                }
                Ok(None) if !renewal => {
                    tracing::info!(%partition, "another instance claimed the partition first");
                    self.inner.metrics.claimed(false);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%partition, %error, "claiming a partition failed");
                }
            }
        }
        let mut held = lock(&shared.held);
        for partition in renewing.difference(&answered) {
            if let Some(claim) = held.get_mut(partition) {
                claim.uncertain = true;
            }
        }
    }

    /// Reads every partition's record concurrently.
    async fn read_records(
        &self,
        shared: &Shared,
    ) -> Result<BTreeMap<String, (Record, OwnershipVersion)>> {
        let mut reads = JoinSet::new();
        for (partition, key) in &shared.keys {
            let store = shared.store.clone();
            let (partition, key) = (partition.clone(), key.clone());
            reads.spawn(async move { (partition, store.ownership(&key).await) });
        }
        let mut records = BTreeMap::new();
        let mut failure = None;
        while let Some(joined) = reads.join_next().await {
            let Ok((partition, read)) = joined else {
                continue;
            };
            match read {
                Ok(Some(ownership)) => {
                    records.insert(
                        partition,
                        (
                            Record {
                                owner_id: ownership.owner_id,
                                last_modified: ownership.last_modified,
                            },
                            ownership.version,
                        ),
                    );
                }
                Ok(None) => {}
                Err(error) => failure = Some(error),
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(records),
        }
    }

    /// Gives up claims not renewed within the expiry: others may take them now.
    fn expire(&self, shared: &Shared) {
        let now = Instant::now();
        lock(&shared.held).retain(|partition, claim| {
            let live = claim.renewed + shared.expiry > now;
            if !live {
                tracing::warn!(%partition, expiry = ?shared.expiry, "claim not renewed within the ownership expiry; stopping the partition");
                self.inner.metrics.lost("expired");
            }
            live
        });
    }

    fn publish(&self, shared: &Shared) {
        let now = Instant::now();
        let held = lock(&shared.held);
        let ages: Vec<(&str, f64)> = held
            .iter()
            .map(|(p, claim)| (p.as_str(), (now - claim.renewed).as_secs_f64()))
            .collect();
        self.inner.metrics.set_owned(&self.inner.partitions, &ages);
        let owned: BTreeSet<String> = held.keys().cloned().collect();
        drop(held);
        self.inner.owned.send_if_modified(|current| {
            let changed = *current != owned;
            if changed {
                tracing::info!(owned = ?owned, "owned partitions changed");
                current.clone_from(&owned);
            }
            changed
        });
    }

    /// Another reader took `partition`'s AMQP link. A single instance stops reading it (as before
    /// load balancing existed); a shared one forgets its claim, so the partition comes back only if
    /// a later cycle claims it again.
    pub(crate) fn link_stolen(&self, partition: &str) {
        let Some(shared) = &self.inner.shared else {
            return;
        };
        if lock(&shared.held).remove(partition).is_some() {
            self.inner.metrics.lost("link_stolen");
            self.publish(shared);
        }
    }

    /// Whether this instance may write `partition`'s checkpoint now: always for a single instance;
    /// with a shared store, only while it holds the claim and a fresh read of the record names it
    /// the owner.
    pub(crate) async fn may_checkpoint(&self, partition: &str) -> bool {
        let Some(shared) = &self.inner.shared else {
            return true;
        };
        if !lock(&shared.held).contains_key(partition) {
            return false;
        }
        let Some(key) = shared.keys.get(partition) else {
            return false;
        };
        match shared.store.ownership(key).await {
            Ok(Some(record)) => record.owner_id == shared.owner_id,
            Ok(None) => false,
            Err(error) => {
                tracing::warn!(%partition, %error, "cannot confirm ownership before a checkpoint; retrying at the next interval");
                false
            }
        }
    }

    /// Releases every claim (an empty owner id), so that other instances take the partitions at
    /// their next cycle instead of after the expiry. Called once the final checkpoints are written.
    pub(crate) async fn release(&self) {
        let Some(shared) = &self.inner.shared else {
            return;
        };
        let held = std::mem::take(&mut *lock(&shared.held));
        for (partition, claim) in held {
            let Some(key) = shared.keys.get(&partition) else {
                continue;
            };
            let mut version = claim.version;
            let released = loop {
                match shared.store.claim(key, "", Some(&version)).await {
                    Ok(Some(_)) => break Ok(true),
                    // Refused: a renewal of ours whose answer was lost, or another owner.
                    Ok(None) => match shared.store.ownership(key).await {
                        Ok(Some(record))
                            if record.owner_id == shared.owner_id && record.version != version =>
                        {
                            version = record.version;
                        }
                        Ok(_) => break Ok(false),
                        Err(error) => break Err(error),
                    },
                    Err(error) => break Err(error),
                }
            };
            match released {
                Ok(true) => tracing::info!(%partition, "partition released"),
                Ok(false) => {
                    tracing::info!(%partition, "partition already taken by another instance");
                }
                Err(error) => {
                    tracing::warn!(%partition, %error, "releasing a partition failed; others take it once the claim expires");
                }
            }
        }
        self.publish(shared);
    }

    /// What `/healthz` and `/routes` report.
    pub(crate) fn status(&self) -> OwnershipStatus {
        let owned: Vec<String> = self.inner.owned.borrow().iter().cloned().collect();
        match &self.inner.shared {
            None => OwnershipStatus {
                owner_id: None,
                owned,
                seconds_since_store_read: None,
                healthy: true,
            },
            Some(shared) => {
                let since = lock(&shared.reached).elapsed();
                OwnershipStatus {
                    owner_id: Some(shared.owner_id.clone()),
                    owned,
                    seconds_since_store_read: Some(since.as_secs_f64()),
                    healthy: since <= shared.expiry,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
