//! State that grows with its input (accounts and addresses learned from the wire) is kept
//! in maps with a limit. At the limit a map lets go of the eighth of its entries seen
//! longest ago, ties in key order, so the cost of the scan is shared by the next eighth
//! of insertions and what is dropped depends only on the input. The caller counts what is
//! dropped (`farmwatch_state_evicted_total`).

use std::collections::BTreeMap;

use crate::timestamp::Timestamp;

/// Makes room for one more entry in `map`, which holds at most `max`: when full, drops the
/// `max / 8` (at least one) entries whose `seen` is oldest, as [`oldest`] chooses them.
/// Returns how many it dropped.
pub fn make_room<K: Ord + Clone, V>(
    map: &mut BTreeMap<K, V>,
    max: usize,
    seen: impl Fn(&V) -> Timestamp,
) -> u64 {
    if map.len() < max || map.is_empty() {
        return 0;
    }
    let entries = map.iter().map(|(k, v)| (seen(v), k.clone())).collect();
    let gone = oldest(entries, max / 8);
    for key in &gone {
        map.remove(key);
    }
    gone.len() as u64
}

/// The `quota` (at least one) of `entries` seen longest ago, ties in the order of their
/// `O` (for a map not ordered by key, `O` is its key order and then what to remove).
pub fn oldest<O: Ord>(mut entries: Vec<(Timestamp, O)>, quota: usize) -> Vec<O> {
    if entries.is_empty() {
        return Vec::new();
    }
    let quota = quota.clamp(1, entries.len());
    entries.select_nth_unstable(quota - 1);
    entries.truncate(quota);
    entries.into_iter().map(|(_, o)| o).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_the_oldest_eighth_ties_in_key_order() {
        let mut map: BTreeMap<u32, Timestamp> = (0..16)
            .map(|k| (k, Timestamp::from_secs(u64::from(k % 4))))
            .collect();
        assert_eq!(make_room(&mut map, 17, |t| *t), 0);
        assert_eq!(make_room(&mut map, 16, |t| *t), 2);
        // Keys 0, 4, 8, 12 were seen at second 0: the first two go.
        assert_eq!(map.len(), 14);
        assert!(!map.contains_key(&0) && !map.contains_key(&4));
        assert!(map.contains_key(&8) && map.contains_key(&12));
        let mut small: BTreeMap<u32, Timestamp> = [(1, Timestamp::from_secs(5))].into();
        assert_eq!(make_room(&mut small, 1, |t| *t), 1);
        assert!(small.is_empty());
    }

    /// A map not ordered by key (its entries in any order) lets go of what a map ordered by
    /// it would.
    #[test]
    fn oldest_chooses_alike_in_any_order() {
        let map: BTreeMap<u32, Timestamp> = (0..64)
            .map(|k| (k, Timestamp::from_secs(u64::from((k * 7) % 5))))
            .collect();
        for max in [1, 8, 16, 40, 64] {
            let mut kept = map.clone();
            let dropped = make_room(&mut kept, max, |t| *t);
            let mut gone = oldest(map.iter().map(|(k, t)| (*t, *k)).rev().collect(), max / 8);
            gone.sort();
            let expected: Vec<u32> = map
                .keys()
                .filter(|k| !kept.contains_key(k))
                .copied()
                .collect();
            assert_eq!(gone, expected, "max {max}");
            assert_eq!(dropped, gone.len() as u64);
        }
        assert!(oldest::<u32>(Vec::new(), 4).is_empty());
    }
}
