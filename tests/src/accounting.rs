//! Counting every delivery of records put as `key:index`: what was lost, what came twice, and
//! whether each key's records arrived in order, for apps whose only record of what they got
//! is what they print (the unchanged KCL and Lambda samples).

use std::collections::BTreeMap;

/// What a history of deliveries adds up to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Accounting {
    /// Records put and never delivered.
    pub lost: usize,
    /// Deliveries of a record that had been delivered before.
    pub duplicates: usize,
    /// Order violations: a key's record delivered while an earlier one of the same key had
    /// not been (a gap), named with the key and indexes.
    pub out_of_order: Vec<String>,
    /// Deliveries of a key or index that was never put.
    pub unknown: Vec<String>,
}

impl Accounting {
    /// Nothing lost, nothing out of order, nothing unknown.
    pub fn holds(&self) -> bool {
        self.lost == 0 && self.out_of_order.is_empty() && self.unknown.is_empty()
    }
}

/// Accounts for `deliveries` (in the order the app saw them: `(key, index)`) of `per_key`
/// records for each of `keys`.
///
/// Per key, each delivery must be the next record after the previous delivery, or an earlier
/// one (a redelivery from a checkpoint, which then continues in order from there); a jump
/// forward past a record not yet delivered is out of order.
pub fn account(deliveries: &[(String, usize)], keys: &[String], per_key: usize) -> Accounting {
    let mut out = Accounting::default();
    // key -> (last delivered, highest delivered)
    let mut state: BTreeMap<&str, (Option<usize>, Option<usize>)> =
        keys.iter().map(|k| (k.as_str(), (None, None))).collect();
    for (key, i) in deliveries {
        let Some((last, high)) = state.get_mut(key.as_str()) else {
            out.unknown.push(format!("{key}:{i}"));
            continue;
        };
        if *i >= per_key {
            out.unknown.push(format!("{key}:{i}"));
            continue;
        }
        let next = last.map_or(0, |l| l + 1);
        if *i > next {
            out.out_of_order.push(format!(
                "{key}: {i} after {}",
                last.map_or("nothing".to_string(), |l| l.to_string())
            ));
        }
        if high.is_some_and(|h| *i <= h) {
            out.duplicates += 1;
        }
        *last = Some(*i);
        *high = Some(high.map_or(*i, |h| h.max(*i)));
    }
    for (_, high) in state.values() {
        out.lost += per_key - high.map_or(0, |h| h + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(history: &[(&str, usize)], per_key: usize) -> Accounting {
        let d: Vec<(String, usize)> = history.iter().map(|(k, i)| (k.to_string(), *i)).collect();
        account(&d, &["a".into(), "b".into()], per_key)
    }

    #[test]
    fn a_clean_history_holds() {
        let a = run(&[("a", 0), ("b", 0), ("a", 1), ("b", 1)], 2);
        assert!(a.holds(), "{a:?}");
        assert_eq!(a.duplicates, 0);
    }

    #[test]
    fn a_missing_record_is_lost_and_a_gap_is_out_of_order() {
        let a = run(&[("a", 0), ("a", 1), ("b", 0)], 2);
        assert_eq!(a.lost, 1);
        assert!(!a.holds());
        let gap = run(
            &[("a", 0), ("a", 2), ("a", 1), ("b", 0), ("b", 1), ("b", 2)],
            3,
        );
        assert_eq!(gap.out_of_order, vec!["a: 2 after 0".to_string()]);
        assert_eq!(gap.lost, 0);
        assert!(!gap.holds());
        let first = run(&[("a", 1), ("a", 0), ("b", 0), ("b", 1)], 2);
        assert!(
            !first.holds(),
            "the first delivery of a key must be its first record"
        );
    }

    #[test]
    fn a_redelivery_from_a_checkpoint_is_counted_not_refused() {
        let a = run(
            &[
                ("a", 0),
                ("a", 1),
                ("a", 2),
                ("a", 1),
                ("a", 2),
                ("a", 3),
                ("b", 0),
                ("b", 1),
                ("b", 2),
                ("b", 3),
            ],
            4,
        );
        assert!(a.holds(), "{a:?}");
        assert_eq!(a.duplicates, 2);
        // A redelivery that skips a record is still out of order.
        let skip = run(&[("a", 0), ("a", 1), ("a", 2), ("a", 0), ("a", 2)], 3);
        assert_eq!(skip.out_of_order.len(), 1);
    }

    #[test]
    fn a_record_never_put_is_reported() {
        let a = run(&[("a", 0), ("c", 0), ("a", 7), ("b", 0)], 1);
        assert_eq!(a.unknown, vec!["c:0".to_string(), "a:7".to_string()]);
        assert!(!a.holds());
    }
}
