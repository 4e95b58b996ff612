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
    let first = progress.push(position(9), 2);
    let second = progress.push(position(19), 1);
    let empty = progress.push(position(29), 0);
    assert!(progress.ack(second));
    assert_eq!(
        progress.committed(),
        None,
        "batch 1 is done but batch 0 is not"
    );
    assert!(progress.ack(first));
    assert_eq!(progress.committed(), None, "batch 0 still has one ticket");
    assert!(progress.ack(first));
    assert_eq!(
        progress.committed(),
        Some(&position(29)),
        "batch 2 routed nowhere is done too"
    );
    assert_eq!(progress.take_checkpoint(), Some(position(29)));
    assert_eq!(
        progress.take_checkpoint(),
        None,
        "unchanged since the last write"
    );
    assert_eq!(progress.in_flight(), 0);
    assert!(!progress.ack(first), "an extra ack is reported");
    assert!(
        !progress.ack(empty),
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
            .map(|(i, t)| progress.push(position(i64::try_from(i).expect("small") * 10 + 9), *t))
            .collect();
        let mut remaining: Vec<usize> = tickets
            .iter()
            .enumerate()
            .flat_map(|(batch, t)| std::iter::repeat_n(batch, *t))
            .collect();
        let mut acked = vec![0usize; tickets.len()];
        let mut last = None;
        for pick in order {
            if remaining.is_empty() {
                break;
            }
            let batch = remaining.swap_remove(pick.index(remaining.len()));
            prop_assert!(progress.ack(ids[batch]));
            acked[batch] += 1;
            let prefix = tickets.iter().zip(&acked).take_while(|(t, a)| *t == *a).count();
            let expected = prefix.checked_sub(1).map(|i| position(i64::try_from(i).expect("small") * 10 + 9));
            prop_assert_eq!(progress.committed(), expected.as_ref());
            prop_assert!(progress.committed().map(|p| p.sequence_number) >= last);
            last = progress.committed().map(|p| p.sequence_number);
        }
        prop_assert_eq!(progress.in_flight() == 0, remaining.is_empty() && progress.committed().is_some());
    }
}

#[test]
fn a_checkpoint_that_failed_to_save_is_offered_again() {
    let mut progress = PartitionProgress::default();
    let batch = progress.push(position(9), 1);
    progress.ack(batch);
    let taken = progress.take_checkpoint().expect("moved");
    assert_eq!(progress.take_checkpoint(), None, "taken once");
    progress.restore_checkpoint(taken.clone());
    assert_eq!(progress.take_checkpoint(), Some(taken));
    let later = progress.push(position(19), 1);
    progress.ack(later);
    progress.take_checkpoint();
    progress.restore_checkpoint(position(9));
    assert_eq!(
        progress.take_checkpoint(),
        Some(position(19)),
        "a newer committed position wins over the failed one"
    );
}
