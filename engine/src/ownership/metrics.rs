//! Partition ownership's Prometheus metrics, registered into the engine's registry by
//! `pipeline::metrics`: what this instance owns, what it won, lost and stole, how fresh its claims
//! are, and every request it sends to a shared checkpoint store (the cost of running several
//! instances).

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::checkpoint::StoreOperations;

type Labels = Vec<(&'static str, String)>;

/// Every ownership metric. Handles are cheap clones sharing one value.
#[derive(Debug, Clone, Default)]
pub(crate) struct OwnershipMetrics {
    owned: Gauge,
    partition_owned: Family<Labels, Gauge>,
    claims: Family<Labels, Counter>,
    pub(super) lost: Family<Labels, Counter>,
    pub(super) steals: Counter,
    age: Family<Labels, Gauge<f64, AtomicU64>>,
    pub(crate) store_operations: StoreOperations,
}

fn partition(partition: &str) -> Labels {
    vec![("partition", partition.to_owned())]
}

impl OwnershipMetrics {
    /// Registers every series under the registry's prefix (`hubroute_`).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "partitions_owned",
            "Partitions this instance owns and reads",
            self.owned.clone(),
        );
        registry.register(
            "partition_owned",
            "1 while this instance owns the partition, else 0",
            self.partition_owned.clone(),
        );
        registry.register(
            "ownership_claims",
            "Claims of partitions this instance did not own (unowned, released, expired or stolen), \
             by outcome (won, lost: another instance wrote the record first)",
            self.claims.clone(),
        );
        registry.register(
            "ownership_lost",
            "Partitions this instance owned and gave up, by reason (taken: another instance claimed \
             it; expired: not renewed within ownership_expiry; link_stolen: another reader took the \
             AMQP link)",
            self.lost.clone(),
        );
        registry.register(
            "ownership_steals",
            "Partitions this instance took from a live owner holding more than its share",
            self.steals.clone(),
        );
        registry.register(
            "partition_ownership_age_seconds",
            "Seconds since this instance last renewed its claim of the partition; claims older than \
             ownership_expiry are void",
            self.age.clone(),
        );
        registry.register(
            "checkpoint_store_requests",
            "Requests sent to the shared checkpoint store by operation (read, write, claim, delete)",
            self.store_operations.clone(),
        );
    }

    pub(crate) fn claimed(&self, won: bool) {
        let outcome = if won { "won" } else { "lost" };
        self.claims
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc();
    }

    pub(crate) fn lost(&self, reason: &'static str) {
        self.lost
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    pub(crate) fn stole(&self) {
        self.steals.inc();
    }

    /// Publishes what is owned: `owned` holds each owned partition with its claim's age.
    pub(crate) fn set_owned<'a>(
        &self,
        partitions: impl IntoIterator<Item = &'a String>,
        owned: &[(&str, f64)],
    ) {
        self.owned
            .set(i64::try_from(owned.len()).unwrap_or(i64::MAX));
        for id in partitions {
            let age = owned.iter().find(|(p, _)| *p == id).map(|(_, age)| *age);
            self.partition_owned
                .get_or_create(&partition(id))
                .set(i64::from(age.is_some()));
            match age {
                Some(age) => {
                    self.age.get_or_create(&partition(id)).set(age);
                }
                None => {
                    self.age.remove(&partition(id));
                }
            }
        }
    }
}
