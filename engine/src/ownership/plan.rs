//! One load-balancing decision, as a pure function of the ownership records, the clock and a
//! random source: which partitions this instance renews, claims and steals (reference §5.3).
//!
//! The Python processor's rules, with .NET's refinement of "below the fair share": with `P`
//! partitions and `N` active owners (this instance included), every owner should hold `P / N` or
//! `P / N + 1`, and exactly `P % N` of them the larger count. An instance below that claims
//! unowned, released or expired partitions up to the larger count, and when nothing is claimable it
//! steals from the most loaded owner, but only from one holding at least two more than itself, so
//! two instances never trade a partition back and forth. `greedy` takes its whole shortfall in one
//! cycle (as .NET's greedy strategy does), `balanced` one partition per cycle (as Python does). Python's rule alone (steal only below `P / N`) can leave
//! one instance with `P / N + 2` for ever (8 partitions, 3 instances: 4, 2, 2).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::seq::IndexedRandom as _;
use rand::{Rng, RngExt as _};

use crate::config::BalancingStrategy;

/// A partition's ownership record as the plan reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// Empty when released.
    pub(crate) owner_id: String,
    pub(crate) last_modified: DateTime<Utc>,
}

/// What one cycle writes: every partition in it is claimed for this instance.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// This instance's live claims, renewed every cycle.
    pub(crate) renew: BTreeSet<String>,
    /// Unowned, released or expired partitions to take.
    pub(crate) claim: BTreeSet<String>,
    /// Partitions to take from live owners that hold too many, with the owner of each.
    pub(crate) steal: BTreeMap<String, String>,
}

/// The fleet as one cycle sees it.
#[derive(Debug)]
pub(crate) struct Fleet<'a> {
    pub(crate) partitions: &'a [String],
    /// Records by partition; a partition without one was never claimed.
    pub(crate) records: &'a BTreeMap<String, Record>,
    pub(crate) owner_id: &'a str,
    pub(crate) now: DateTime<Utc>,
    pub(crate) expiry: Duration,
}

impl Fleet<'_> {
    /// Live claims (a non-empty owner, written less than `expiry` ago) by owner.
    fn active(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut active: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for partition in self.partitions {
            if let Some(record) = self.records.get(partition)
                && self.is_live(record)
            {
                active
                    .entry(record.owner_id.as_str())
                    .or_default()
                    .push(partition);
            }
        }
        active
    }

    fn is_live(&self, record: &Record) -> bool {
        let expiry = chrono::Duration::from_std(self.expiry).unwrap_or(chrono::Duration::MAX);
        !record.owner_id.is_empty() && record.last_modified + expiry > self.now
    }

    /// Decides this cycle's claims.
    pub(crate) fn plan(&self, strategy: BalancingStrategy, rng: &mut impl Rng) -> Plan {
        let active = self.active();
        let mine: BTreeSet<String> = active
            .get(self.owner_id)
            .map(|owned| owned.iter().map(|p| (*p).to_owned()).collect())
            .unwrap_or_default();
        let claimable: Vec<&String> = self
            .partitions
            .iter()
            .filter(|p| self.records.get(*p).is_none_or(|r| !self.is_live(r)))
            .collect();
        let owners = active.len() + usize::from(!active.contains_key(self.owner_id));
        let total = self.partitions.len();
        let (least, remainder) = (total / owners, total % owners);
        let most = least + usize::from(remainder > 0);
        let mut plan = Plan {
            renew: mine,
            ..Plan::default()
        };
        let own = plan.renew.len();
        if !claimable.is_empty() {
            if own < most {
                let wanted = match strategy {
                    BalancingStrategy::Greedy => most - own,
                    BalancingStrategy::Balanced => 1,
                };
                plan.claim = claimable
                    .sample(rng, wanted.min(claimable.len()))
                    .map(|p| (*p).clone())
                    .collect();
            }
            return plan;
        }
        let others_above_least = active
            .iter()
            .filter(|(owner, owned)| **owner != self.owner_id && owned.len() > least)
            .count();
        let target = if own < least {
            least
        } else if own == least && remainder > 0 && others_above_least < remainder {
            most
        } else {
            return plan;
        };
        let wanted = match strategy {
            BalancingStrategy::Greedy => target - own,
            BalancingStrategy::Balanced => 1,
        };
        let mut others: BTreeMap<&str, Vec<&str>> = active;
        others.remove(self.owner_id);
        // `holding`: what this instance holds once the steals planned so far succeed.
        for holding in own..own + wanted {
            let Some(most_loaded) = others
                .values()
                .map(Vec::len)
                .filter(|held| *held > holding + 1)
                .max()
            else {
                break;
            };
            let victims: Vec<&str> = others
                .iter()
                .filter(|(_, owned)| owned.len() == most_loaded)
                .map(|(owner, _)| *owner)
                .collect();
            let Some(victim) = victims.choose(rng).copied() else {
                break;
            };
            let owned = others.get_mut(victim).expect("a victim is an owner");
            let taken = owned.swap_remove(rng.random_range(0..owned.len()));
            plan.steal.insert(taken.to_owned(), victim.to_owned());
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;

    fn partitions(count: usize) -> Vec<String> {
        (0..count).map(|p| p.to_string()).collect()
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    const EXPIRY: Duration = Duration::from_secs(60);

    /// Records giving `owners[i]` partition `i` (`""` for released), written `age` seconds ago.
    fn records(owners: &[(&str, i64)]) -> BTreeMap<String, Record> {
        owners
            .iter()
            .enumerate()
            .filter(|(_, (owner, _))| *owner != "-")
            .map(|(partition, (owner, age))| {
                (
                    partition.to_string(),
                    Record {
                        owner_id: (*owner).to_owned(),
                        last_modified: now() - chrono::Duration::seconds(*age),
                    },
                )
            })
            .collect()
    }

    fn plan_of(
        me: &str,
        partitions: &[String],
        records: &BTreeMap<String, Record>,
        strategy: BalancingStrategy,
        seed: u64,
    ) -> Plan {
        Fleet {
            partitions,
            records,
            owner_id: me,
            now: now(),
            expiry: EXPIRY,
        }
        .plan(strategy, &mut StdRng::seed_from_u64(seed))
    }

    #[test]
    fn a_lone_instance_claims_everything_greedily_or_one_at_a_time() {
        let all = partitions(8);
        let none = BTreeMap::new();
        let greedy = plan_of("a", &all, &none, BalancingStrategy::Greedy, 1);
        assert_eq!(greedy.claim.len(), 8);
        let balanced = plan_of("a", &all, &none, BalancingStrategy::Balanced, 1);
        assert_eq!((balanced.claim.len(), balanced.steal.len()), (1, 0));
    }

    #[test]
    fn unowned_released_and_expired_partitions_are_claimable_live_ones_are_not() {
        let all = partitions(4);
        // 0: b's live claim, 1: released, 2: c's expired claim, 3: never claimed.
        let records = records(&[("b", 5), ("", 5), ("c", 61), ("-", 0)]);
        let plan = plan_of("a", &all, &records, BalancingStrategy::Greedy, 3);
        // Two owners (a, b): a may hold 2.
        assert_eq!(plan.claim.len(), 2);
        assert!(!plan.claim.contains("0"), "{plan:?}");
        assert!(plan.renew.is_empty() && plan.steal.is_empty());
    }

    #[test]
    fn own_live_claims_are_renewed_and_nothing_more_is_taken_at_the_fair_share() {
        let all = partitions(4);
        let records = records(&[("a", 9), ("a", 1), ("b", 2), ("b", 3)]);
        let plan = plan_of("a", &all, &records, BalancingStrategy::Greedy, 4);
        assert_eq!(
            plan,
            Plan {
                renew: ["0".to_owned(), "1".to_owned()].into(),
                ..Plan::default()
            }
        );
    }

    #[test]
    fn below_the_fair_share_an_instance_steals_one_partition_from_the_most_loaded_owner() {
        let all = partitions(8);
        let records = records(&[
            ("b", 1),
            ("b", 1),
            ("b", 1),
            ("b", 1),
            ("b", 1),
            ("c", 1),
            ("c", 1),
            ("c", 1),
        ]);
        let greedy = plan_of("a", &all, &records, BalancingStrategy::Greedy, 5);
        // a's share is 2; b (5) gives one, then still holds 4 and gives the second.
        assert_eq!(greedy.steal.len(), 2, "{greedy:?}");
        for (partition, victim) in &greedy.steal {
            assert!(
                partition.parse::<usize>().unwrap() < 5 && victim == "b",
                "{greedy:?}"
            );
        }
        assert!(greedy.claim.is_empty() && greedy.renew.is_empty());
        let balanced = plan_of("a", &all, &records, BalancingStrategy::Balanced, 5);
        assert_eq!(balanced.steal.len(), 1, "{balanced:?}");
    }

    #[test]
    fn an_owner_two_above_the_largest_share_loses_one_to_an_instance_at_the_smallest() {
        // 8 partitions, 3 owners: shares are 3, 3, 2. b holds 4, a and c 2.
        let all = partitions(8);
        let records = records(&[
            ("b", 1),
            ("b", 1),
            ("b", 1),
            ("b", 1),
            ("a", 1),
            ("a", 1),
            ("c", 1),
            ("c", 1),
        ]);
        let plan = plan_of("a", &all, &records, BalancingStrategy::Balanced, 6);
        assert_eq!(plan.steal.values().collect::<Vec<_>>(), ["b"], "{plan:?}");
        // At 3, 3, 2 nobody steals: not from an owner only one above.
        let settled = records_of(&["b", "b", "b", "a", "a", "a", "c", "c"]);
        for me in ["a", "b", "c"] {
            let plan = plan_of(me, &all, &settled, BalancingStrategy::Greedy, 7);
            assert_eq!((plan.claim.len(), plan.steal.len()), (0, 0), "{me}");
        }
    }

    fn records_of(owners: &[&str]) -> BTreeMap<String, Record> {
        records(&owners.iter().map(|o| (*o, 1)).collect::<Vec<_>>())
    }

    /// Instances balancing in turns over one set of records (claims always win here: the store's
    /// conditional writes are tested elsewhere) end with `P / N` or `P / N + 1` each.
    #[test]
    fn instances_balancing_in_turns_converge_to_fair_shares_and_stay_there() {
        for (count, instances, strategy) in [
            (8, 3, BalancingStrategy::Greedy),
            (8, 3, BalancingStrategy::Balanced),
            (32, 4, BalancingStrategy::Greedy),
            (32, 5, BalancingStrategy::Balanced),
            (2, 3, BalancingStrategy::Greedy),
        ] {
            let all = partitions(count);
            let names: Vec<String> = (0..instances).map(|i| format!("i{i}")).collect();
            let mut records = BTreeMap::new();
            let mut rng = StdRng::seed_from_u64(count as u64 * 31 + instances as u64);
            let mut rounds = 0;
            let shares = |records: &BTreeMap<String, Record>| {
                let mut held: BTreeMap<&str, usize> =
                    names.iter().map(|n| (n.as_str(), 0)).collect();
                for record in records.values() {
                    *held.get_mut(record.owner_id.as_str()).unwrap() += 1;
                }
                held.into_values().collect::<Vec<_>>()
            };
            let fair = |shares: &[usize]| {
                let (least, most) = (count / instances, count.div_ceil(instances));
                shares.iter().sum::<usize>() == count
                    && shares.iter().all(|s| (least..=most).contains(s))
            };
            while !fair(&shares(&records)) {
                rounds += 1;
                assert!(
                    rounds <= 4 * count,
                    "{count}/{instances}: {:?}",
                    shares(&records)
                );
                for name in &names {
                    let plan = Fleet {
                        partitions: &all,
                        records: &records,
                        owner_id: name,
                        now: now(),
                        expiry: EXPIRY,
                    }
                    .plan(strategy, &mut rng);
                    for partition in plan.claim.iter().chain(plan.steal.keys()) {
                        records.insert(
                            partition.clone(),
                            Record {
                                owner_id: name.clone(),
                                last_modified: now(),
                            },
                        );
                    }
                }
            }
            for name in &names {
                let plan = Fleet {
                    partitions: &all,
                    records: &records,
                    owner_id: name,
                    now: now(),
                    expiry: EXPIRY,
                }
                .plan(strategy, &mut rng);
                assert!(
                    plan.claim.is_empty() && plan.steal.is_empty(),
                    "{count}/{instances}: a balanced fleet stays put: {plan:?}"
                );
            }
        }
    }
}
