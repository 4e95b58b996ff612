//! Several instances balancing over one in-memory store: shares, hand-over, loss and the
//! checkpoint gate.

use std::sync::Arc;

use object_store::memory::InMemory;

use super::*;

fn config(strategy: BalancingStrategy) -> CheckpointConfig {
    CheckpointConfig {
        load_balancing_interval: Duration::from_secs(1),
        ownership_expiry: Duration::from_secs(5),
        strategy,
        ..CheckpointConfig::default()
    }
}

fn keys(count: usize) -> Vec<CheckpointKey> {
    (0..count)
        .map(|p| CheckpointKey {
            fully_qualified_namespace: "ns.servicebus.windows.net".to_owned(),
            event_hub: "hub".to_owned(),
            consumer_group: "$Default".to_owned(),
            partition: p.to_string(),
        })
        .collect()
}

async fn fleet(
    store: &ObjectStoreCheckpointStore,
    instances: usize,
    partitions: usize,
    strategy: BalancingStrategy,
) -> Vec<PartitionOwnership> {
    let mut fleet = Vec::new();
    for i in 0..instances {
        let config = CheckpointConfig {
            owner_id: Some(format!("instance-{i}")),
            ..config(strategy)
        };
        fleet.push(
            PartitionOwnership::shared(
                store.clone(),
                keys(partitions),
                &config,
                OwnershipMetrics::default(),
            )
            .await
            .unwrap(),
        );
    }
    fleet
}

async fn cycle(fleet: &[PartitionOwnership]) {
    for instance in fleet {
        let shared = instance.inner.shared.as_ref().unwrap();
        instance.renew(shared).await;
        instance.balance(shared).await;
    }
}

fn owned(instance: &PartitionOwnership) -> BTreeSet<String> {
    instance.watch().borrow().clone()
}

/// Every partition owned by exactly one instance, each holding `least..=most`.
fn assert_fair(fleet: &[PartitionOwnership], partitions: usize, least: usize, most: usize) {
    let mut seen = BTreeSet::new();
    for instance in fleet {
        let owned = owned(instance);
        assert!(
            (least..=most).contains(&owned.len()),
            "{:?}",
            fleet.iter().map(owned_len).collect::<Vec<_>>()
        );
        for partition in owned {
            assert!(seen.insert(partition.clone()), "{partition} has two owners");
        }
    }
    assert_eq!(seen.len(), partitions);
}

fn owned_len(instance: &PartitionOwnership) -> usize {
    owned(instance).len()
}

#[tokio::test]
async fn three_instances_split_eight_partitions_within_three_cycles() {
    for strategy in [BalancingStrategy::Greedy, BalancingStrategy::Balanced] {
        let store = ObjectStoreCheckpointStore::new(Arc::new(InMemory::new()));
        let fleet = fleet(&store, 3, 8, strategy).await;
        for _ in 0..3 {
            cycle(&fleet).await;
        }
        let mut shares: BTreeMap<String, usize> = BTreeMap::new();
        for key in keys(8) {
            let record = store.ownership(&key).await.unwrap().expect("claimed");
            *shares.entry(record.owner_id).or_default() += 1;
        }
        let mut shares: Vec<usize> = shares.into_values().collect();
        shares.sort_unstable();
        assert_eq!(
            shares,
            [2, 3, 3],
            "{strategy:?}: the records after three cycles"
        );
        // An instance that lost a partition notices at its next cycle (or, reading, when the new
        // owner's receiver steals its link).
        cycle(&fleet).await;
        assert_fair(&fleet, 8, 2, 3);
        let steals: u64 = fleet.iter().map(|i| i.inner.metrics.steals.get()).sum();
        let lost: u64 = fleet
            .iter()
            .map(|i| {
                i.inner
                    .metrics
                    .lost
                    .get_or_create(&vec![("reason", "taken".to_owned())])
                    .get()
            })
            .sum();
        assert_eq!(
            steals, lost,
            "{strategy:?}: every steal is a loss elsewhere"
        );
    }
}

#[tokio::test]
async fn a_released_instance_hands_its_partitions_over_at_the_next_cycle() {
    let store = ObjectStoreCheckpointStore::new(Arc::new(InMemory::new()));
    let fleet = fleet(&store, 2, 4, BalancingStrategy::Greedy).await;
    for _ in 0..3 {
        cycle(&fleet).await;
    }
    assert_fair(&fleet, 4, 2, 2);
    let leaving = owned(&fleet[0]);
    fleet[0].release().await;
    assert!(owned(&fleet[0]).is_empty());
    for partition in &leaving {
        let key = &keys(4)[partition.parse::<usize>().unwrap()];
        assert_eq!(store.ownership(key).await.unwrap().unwrap().owner_id, "");
    }
    cycle(&fleet[1..]).await;
    assert_eq!(
        owned_len(&fleet[1]),
        4,
        "released partitions are claimable at once"
    );
}

#[tokio::test]
async fn a_partition_taken_by_another_instance_stops_and_its_checkpoint_is_refused() {
    let store = ObjectStoreCheckpointStore::new(Arc::new(InMemory::new()));
    let fleet = fleet(&store, 1, 2, BalancingStrategy::Greedy).await;
    cycle(&fleet).await;
    let me = &fleet[0];
    assert_eq!(owned_len(me), 2);
    assert!(me.may_checkpoint("0").await);
    let key = &keys(2)[0];
    let record = store.ownership(key).await.unwrap().unwrap();
    store
        .claim(key, "thief", Some(&record.version))
        .await
        .unwrap()
        .expect("the thief's claim wins");
    assert!(
        !me.may_checkpoint("0").await,
        "a fresh read shows the new owner before the next cycle"
    );
    assert!(me.may_checkpoint("1").await);
    cycle(&fleet).await;
    assert_eq!(owned(me), BTreeSet::from(["1".to_owned()]));
    assert_eq!(
        me.inner
            .metrics
            .lost
            .get_or_create(&vec![("reason", "taken".to_owned())])
            .get(),
        1
    );
    me.link_stolen("1");
    assert!(owned(me).is_empty());
    assert!(!me.may_checkpoint("1").await, "not without the claim");
}

#[tokio::test]
async fn a_single_instance_owns_every_partition_and_may_always_checkpoint() {
    let single = PartitionOwnership::single(
        vec!["0".to_owned(), "1".to_owned()],
        OwnershipMetrics::default(),
    );
    assert!(single.is_static());
    assert_eq!(owned_len(&single), 2);
    assert!(single.may_checkpoint("1").await);
    single.link_stolen("1");
    assert_eq!(
        owned_len(&single),
        2,
        "a single instance's set never changes"
    );
    assert!(single.status().healthy);
}

#[tokio::test]
async fn a_renewal_whose_answer_was_lost_is_not_mistaken_for_a_loss() {
    let store = ObjectStoreCheckpointStore::new(Arc::new(InMemory::new()));
    let fleet = fleet(&store, 1, 1, BalancingStrategy::Greedy).await;
    cycle(&fleet).await;
    let me = &fleet[0];
    let key = &keys(1)[0];
    // The store applied a renewal whose answer never came back: the record is ours, at a
    // version this instance has not seen.
    let record = store.ownership(key).await.unwrap().unwrap();
    store
        .claim(key, "instance-0", Some(&record.version))
        .await
        .unwrap()
        .unwrap();
    cycle(&fleet).await;
    cycle(&fleet).await;
    assert_eq!(owned_len(me), 1);
    let lost = me
        .inner
        .metrics
        .lost
        .get_or_create(&vec![("reason", "taken".to_owned())])
        .get();
    assert_eq!(lost, 0);
    let held = lock(&me.inner.shared.as_ref().unwrap().held);
    assert!(!held["0"].uncertain, "the next read settled the version");
}

#[tokio::test]
async fn release_succeeds_after_a_renewal_whose_answer_was_lost() {
    let store = ObjectStoreCheckpointStore::new(Arc::new(InMemory::new()));
    let fleet = fleet(&store, 1, 1, BalancingStrategy::Greedy).await;
    cycle(&fleet).await;
    let key = &keys(1)[0];
    let record = store.ownership(key).await.unwrap().unwrap();
    store
        .claim(key, "instance-0", Some(&record.version))
        .await
        .unwrap()
        .unwrap();
    fleet[0].release().await;
    assert_eq!(store.ownership(key).await.unwrap().unwrap().owner_id, "");
}
