//! Checkpoint advancement: examples plus a property test over random ack orders.

use proptest::prelude::*;

use super::*;

fn position(sequence_number: i64) -> Position {
    Position {
        sequence_number,
        offset: (sequence_number * 100).to_string(),
    }
}

#[test]
fn checkpoint_waits_for_the_oldest_batch() {
    let mut progress = PartitionProgress::default();
    let first = progress.push(position(9), vec![0, 1]);
    let second = progress.push(position(19), vec![0]);
    let empty = progress.push(position(29), vec![]);
    assert!(progress.ack(second, 0));
    assert_eq!(
        progress.committed(),
        None,
        "batch 1 is done but batch 0 is not"
    );
    assert!(progress.ack(first, 1));
    assert_eq!(progress.committed(), None, "batch 0 still has one ticket");
    assert!(!progress.ack(first, 1), "endpoint 1 acked batch 0 already");
    assert!(progress.ack(first, 0));
    assert_eq!(
        progress.committed(),
        Some(&position(29)),
        "batch 2 routed nowhere is done too"
    );
    assert_eq!(
        progress.take_checkpoint(2).and_then(|p| p.partition),
        Some(position(29))
    );
    assert_eq!(
        progress.take_checkpoint(2),
        None,
        "unchanged since the last write"
    );
    assert_eq!(progress.in_flight(), 0);
    assert!(!progress.ack(first, 0), "an extra ack is reported");
    assert!(
        !progress.ack(empty, 0),
        "an ack of a batch without tickets is reported"
    );
}

proptest! {
    /// Whatever order tickets are acked in, the checkpoint is the end of the longest prefix of
    /// fully acked batches (computed independently from the ack counts) and never moves back.
    #[test]
    fn checkpoint_is_the_longest_fully_acked_prefix(
        tickets in prop::collection::vec(0usize..4, 1..30),
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..120),
    ) {
        let mut progress = PartitionProgress::default();
        let ids: Vec<BatchId> = tickets
            .iter()
            .enumerate()
            .map(|(i, t)| progress.push(position(i64::try_from(i).expect("small") * 10 + 9), (0..*t).collect()))
            .collect();
        let mut remaining: Vec<(usize, usize)> = tickets
            .iter()
            .enumerate()
            .flat_map(|(batch, t)| (0..*t).map(move |endpoint| (batch, endpoint)))
            .collect();
        let mut acked = vec![0usize; tickets.len()];
        let mut last = None;
        for pick in order {
            if remaining.is_empty() {
                break;
            }
            let (batch, endpoint) = remaining.swap_remove(pick.index(remaining.len()));
            prop_assert!(progress.ack(ids[batch], endpoint));
            acked[batch] += 1;
            let prefix = tickets.iter().zip(&acked).take_while(|(t, a)| *t == *a).count();
            let expected = prefix.checked_sub(1).map(|i| position(i64::try_from(i).expect("small") * 10 + 9));
            prop_assert_eq!(progress.committed(), expected.as_ref());
            prop_assert!(progress.committed().map(|p| p.sequence_number) >= last);
            last = progress.committed().map(|p| p.sequence_number);
            for endpoint in 0..4 {
                // Independently: the end of the longest prefix of batches whose ticket of
                // `endpoint` (if any) is acked, never behind the partition's checkpoint.
                let own = (0..tickets.len())
                    .take_while(|b| !remaining.contains(&(*b, endpoint)))
                    .last()
                    .map(|b| i64::try_from(b).expect("small") * 10 + 9);
                prop_assert_eq!(progress.endpoint_position(endpoint), own);
                prop_assert!(own >= progress.committed().map(|p| p.sequence_number));
            }
        }
        prop_assert_eq!(progress.in_flight() == 0, remaining.is_empty() && progress.committed().is_some());
    }
}

#[test]
fn a_checkpoint_that_failed_to_save_is_offered_again() {
    let mut progress = PartitionProgress::default();
    let batch = progress.push(position(9), vec![0]);
    progress.ack(batch, 0);
    let taken = progress.take_checkpoint(1).expect("moved");
    assert_eq!(progress.take_checkpoint(1), None, "taken once");
    progress.restore_checkpoint();
    assert_eq!(progress.take_checkpoint(1), Some(taken));
    let later = progress.push(position(19), vec![0]);
    progress.ack(later, 0);
    progress.take_checkpoint(1);
    progress.restore_checkpoint();
    assert_eq!(
        progress.take_checkpoint(1).and_then(|p| p.partition),
        Some(position(19)),
        "a newer committed position wins over the failed one"
    );
}

#[test]
fn each_endpoint_moves_on_its_own_and_never_below_its_floor() {
    // Endpoint 0 had settled up to 25 before a restart, endpoint 1 up to 5.
    let mut progress = PartitionProgress::resuming(vec![Some(25), Some(5)]);
    let first = progress.push(position(9), vec![0, 1]);
    let second = progress.push(position(19), vec![1]);
    let third = progress.push(position(29), vec![0]);
    assert!(progress.ack(third, 0));
    assert!(progress.ack(first, 0));
    // Endpoint 0 has nothing outstanding: its position is the newest batch's end.
    assert_eq!(progress.endpoint_position(0), Some(29));
    assert_eq!(progress.endpoint_position(1), Some(5), "its floor");
    assert_eq!(progress.committed(), None);
    assert!(progress.ack(first, 1));
    assert_eq!(progress.endpoint_position(1), Some(9));
    assert_eq!(progress.committed(), Some(&position(9)));
    let taken = progress.take_checkpoint(3).expect("moved");
    assert_eq!(taken.partition, Some(position(9)));
    assert_eq!(
        taken.endpoints,
        [Some(29), Some(9), Some(29)],
        "an endpoint without rows follows the newest batch"
    );
    assert!(progress.ack(second, 1));
    assert_eq!(progress.committed(), Some(&position(29)));
}
