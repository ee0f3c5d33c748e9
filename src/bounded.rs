//! State that grows with its input (accounts and addresses learned from the wire) is kept
//! in maps with a limit. At the limit a map lets go of the eighth of its entries seen
//! longest ago, ties in key order, so the cost of the scan is shared by the next eighth
//! of insertions and what is dropped depends only on the input. The caller counts what is
//! dropped (`farmwatch_state_evicted_total`).

use std::collections::BTreeMap;

use crate::timestamp::Timestamp;

/// Makes room for one more entry in `map`, which holds at most `max`: when full, drops the
/// `max / 8` (at least one) entries whose `seen` is oldest. Returns how many it dropped.
pub fn make_room<K: Ord, V>(
    map: &mut BTreeMap<K, V>,
    max: usize,
    seen: impl Fn(&V) -> Timestamp,
) -> u64 {
    if map.len() < max || map.is_empty() {
        return 0;
    }
    let quota = (max / 8).clamp(1, map.len());
    let mut times: Vec<Timestamp> = map.values().map(&seen).collect();
    let (_, cutoff, _) = times.select_nth_unstable(quota - 1);
    let cutoff = *cutoff;
    // Everything older than the cutoff goes, then entries at the cutoff in key order until
    // the quota is met.
    let older = times.iter().filter(|t| **t < cutoff).count();
    let mut at_cutoff = quota - older;
    map.retain(|_, v| {
        let t = seen(v);
        if t < cutoff {
            return false;
        }
        if t == cutoff && at_cutoff > 0 {
            at_cutoff -= 1;
            return false;
        }
        true
    });
    quota as u64
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
}
