//! The flow table's deadlines by second of packet time.
//!
//! The next [`RING_SLOTS`] seconds are a ring of buckets indexed by second: scheduling a
//! flow and finding what is due cost an index and a bit scan, not a tree search, and a
//! bucket keeps its room from lap to lap. A deadline beyond the ring (an established TCP
//! connection's hour, a long interim interval) waits in a sorted map until it is due; it
//! is rescheduled at most once per check, so the map sees few entries.

use std::collections::BTreeMap;

/// Seconds the ring covers. 24 KB of bucket headers per table (64 tables a sensor); UDP,
/// half-open, closing and short TCP deadlines fall inside it.
const RING_SLOTS: u64 = 1024;
const WORDS: usize = RING_SLOTS as usize / 64;

/// Entries of type `T` (what names a flow) by slot (second), taken out in slot order and,
/// within a slot, in the order they were added.
pub struct Wheel<T> {
    /// Bucket `slot % RING_SLOTS` holds the entries of `slot` for the slots in
    /// `(done, done + RING_SLOTS]`: one slot per bucket.
    ring: Vec<Vec<T>>,
    /// Bit `i` set: bucket `i` is not empty.
    occupied: [u64; WORDS],
    /// Slots outside the ring's window, beyond it (or, for a flow whose packet came late,
    /// before it): taken out in order with the ring's.
    far: BTreeMap<u64, Vec<T>>,
    /// Every slot up to this one has been taken out.
    done: u64,
    /// No entry is in a slot before this one (the earliest slot when last looked for, or
    /// an entry's added since): most packets' question, whether anything is due, is
    /// answered by comparing with it.
    earliest: u64,
}

impl<T> Default for Wheel<T> {
    fn default() -> Wheel<T> {
        Wheel::new()
    }
}

impl<T> Wheel<T> {
    pub fn new() -> Wheel<T> {
        Wheel {
            ring: (0..RING_SLOTS).map(|_| Vec::new()).collect(),
            occupied: [0; WORDS],
            far: BTreeMap::new(),
            done: 0,
            earliest: u64::MAX,
        }
    }

    fn in_ring(&self, slot: u64) -> bool {
        slot > self.done && slot - self.done <= RING_SLOTS
    }

    pub fn push(&mut self, slot: u64, entry: T) {
        self.earliest = self.earliest.min(slot);
        if self.in_ring(slot) {
            let i = (slot % RING_SLOTS) as usize;
            self.ring[i].push(entry);
            self.occupied[i / 64] |= 1 << (i % 64);
        } else {
            self.far.entry(slot).or_default().push(entry);
        }
    }

    /// The earliest slot that has entries.
    pub fn first(&self) -> Option<u64> {
        let ring = self.first_in_ring();
        let far = self.far.first_key_value().map(|(slot, _)| *slot);
        match (ring, far) {
            (Some(r), Some(f)) => Some(r.min(f)),
            (r, f) => r.or(f),
        }
    }

    /// Whether an entry may be due by `until`: false for most packets, which then need not
    /// look further ([`first_due`](Self::first_due) answers exactly).
    #[inline]
    pub fn may_be_due(&self, until: u64) -> bool {
        until >= self.earliest
    }

    /// The earliest slot that has entries, if it is not after `until`.
    pub fn first_due(&mut self, until: u64) -> Option<u64> {
        if !self.may_be_due(until) {
            return None;
        }
        let first = self.first();
        self.earliest = first.unwrap_or(u64::MAX);
        first.filter(|&slot| slot <= until)
    }

    /// The earliest slot of the ring that has entries: the first set bit from the bucket
    /// after `done`, wrapping around.
    fn first_in_ring(&self) -> Option<u64> {
        let start = ((self.done + 1) % RING_SLOTS) as usize;
        let (word, bit) = (start / 64, start % 64);
        let ahead = (0..=WORDS).find_map(|k| {
            let w = (word + k) % WORDS;
            let mut bits = self.occupied[w];
            if k == 0 {
                bits &= u64::MAX << bit;
            } else if k == WORDS {
                // Back at the first word: the buckets before `start`.
                bits &= !(u64::MAX << bit);
            }
            (bits != 0).then(|| w * 64 + bits.trailing_zeros() as usize)
        })?;
        let distance = (ahead + RING_SLOTS as usize - start) % RING_SLOTS as usize;
        Some(self.done + 1 + distance as u64)
    }

    /// Takes out the entries of `slot` (added before it was passed over, far ones first:
    /// they were added while the slot was still beyond the ring), leaving `into` their
    /// list. Every slot before the earliest one taken counts as done.
    pub fn take(&mut self, slot: u64, into: &mut Vec<T>) {
        into.clear();
        if let Some(far) = self.far.remove(&slot) {
            *into = far;
        }
        if self.in_ring(slot) {
            let i = (slot % RING_SLOTS) as usize;
            if into.is_empty() {
                // The bucket keeps the room `into` had; nothing is copied.
                std::mem::swap(into, &mut self.ring[i]);
            } else {
                into.append(&mut self.ring[i]);
            }
            self.occupied[i / 64] &= !(1 << (i % 64));
        }
        self.done = self.done.max(slot);
    }

    /// Every slot up to `slot` has been taken out: the ring moves on.
    #[inline]
    pub fn pass(&mut self, slot: u64) {
        debug_assert!(self.first().is_none_or(|first| first > slot));
        self.done = self.done.max(slot);
    }

    /// Takes out the entry added last to the earliest slot.
    pub fn pop_first(&mut self) -> Option<(u64, T)> {
        let slot = self.first()?;
        if self.in_ring(slot) {
            let i = (slot % RING_SLOTS) as usize;
            if let Some(entry) = self.ring[i].pop() {
                if self.ring[i].is_empty() {
                    self.occupied[i / 64] &= !(1 << (i % 64));
                }
                return Some((slot, entry));
            }
        }
        let mut far = self.far.first_entry()?;
        let entry = far.get_mut().pop();
        if far.get().is_empty() {
            far.remove();
        }
        entry.map(|e| (slot, e))
    }

    pub fn clear(&mut self) {
        self.ring.iter_mut().for_each(Vec::clear);
        self.occupied = [0; WORDS];
        self.far.clear();
        self.earliest = u64::MAX;
    }

    /// The entries of `slot`, in the order they were added.
    #[cfg(test)]
    pub fn entries(&self, slot: u64) -> impl Iterator<Item = &T> {
        let ring = self
            .in_ring(slot)
            .then(|| &self.ring[(slot % RING_SLOTS) as usize]);
        self.far.get(&slot).into_iter().chain(ring).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(w: &mut Wheel<u32>, until: u64) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        let mut list = Vec::new();
        while let Some(slot) = w.first_due(until) {
            w.take(slot, &mut list);
            out.extend(list.iter().map(|&e| (slot, e)));
        }
        w.pass(until);
        out
    }

    /// Slots come out in order, entries of a slot in the order added, wherever they were
    /// kept: in the ring, far beyond it, or across a jump in time longer than the ring.
    #[test]
    fn entries_come_out_in_slot_order() {
        let mut w = Wheel::new();
        w.push(5000, 1);
        w.push(3, 2);
        w.push(1025, 3);
        w.push(3, 4);
        w.push(1024, 5);
        assert_eq!(w.first(), Some(3));
        assert_eq!(drain(&mut w, 1024), [(3, 2), (3, 4), (1024, 5)]);
        // 5000 is inside the ring's window now; it was added far, the new entry in the ring.
        w.push(5000, 6);
        w.push(2000, 7);
        assert_eq!(
            drain(&mut w, 1_000_000),
            [(1025, 3), (2000, 7), (5000, 1), (5000, 6)]
        );
        assert_eq!(w.first(), None);
        // A slot already passed (a late packet's deadline) is first out next time.
        w.push(10, 8);
        w.push(1_000_001, 9);
        assert_eq!(drain(&mut w, 1_000_001), [(10, 8), (1_000_001, 9)]);
    }

    #[test]
    fn pop_first_takes_the_last_entry_of_the_earliest_slot() {
        let mut w = Wheel::new();
        for (slot, e) in [(9, 1), (7, 2), (7, 3), (3000, 4)] {
            w.push(slot, e);
        }
        let popped: Vec<_> = std::iter::from_fn(|| w.pop_first()).collect();
        assert_eq!(popped, [(7, 3), (7, 2), (9, 1), (3000, 4)]);
    }

    /// Every bucket of the ring maps back to its slot, whichever bucket `done` is at.
    #[test]
    fn the_ring_wraps() {
        for start in [0, 63, 64, 1000, 1023, 1024, 5555] {
            for d in [1, 2, 63, 64, 65, 1023, 1024] {
                let mut w = Wheel::new();
                w.pass(start);
                w.push(start + d, 1);
                w.push(start + d + 1024, 2);
                assert_eq!(w.first(), Some(start + d));
                assert_eq!(drain(&mut w, start + d), [(start + d, 1)]);
                assert_eq!(w.first(), Some(start + d + 1024));
            }
        }
    }
}
