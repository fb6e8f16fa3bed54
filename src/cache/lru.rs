//! [`CachePolicy::Lru`](super::CachePolicy::Lru): the least recently used slot goes first.

use std::collections::BTreeSet;

use super::policy::{Key, Order};

/// Slots in the order of their last use.
#[derive(Debug)]
pub(crate) struct Lru {
    /// (last use, slot), oldest first.
    order: BTreeSet<(u64, usize)>,
    last: Vec<u64>,
}

impl Lru {
    pub fn new(slots: usize) -> Self {
        Lru {
            order: BTreeSet::new(),
            last: vec![0; slots],
        }
    }
}

impl Order for Lru {
    fn used(&mut self, slot: usize, _key: Key, tick: u64) {
        self.order.remove(&(self.last[slot], slot));
        self.last[slot] = tick;
        self.order.insert((tick, slot));
    }

    fn filled(&mut self, slot: usize, key: Key, tick: u64) {
        self.used(slot, key, tick);
    }

    fn removed(&mut self, slot: usize, _key: Key) {
        self.order.remove(&(self.last[slot], slot));
    }

    fn victim(&self, _key: Key, pinned: &dyn Fn(usize) -> bool) -> Option<usize> {
        self.order.iter().map(|&(_, s)| s).find(|&s| !pinned(s))
    }
}

#[cfg(test)]
mod tests {
    use super::super::policy::{CachePolicy, SlotPolicy};

    #[test]
    fn evicts_least_recently_used_unpinned() {
        let mut p = SlotPolicy::new(CachePolicy::Lru, 2, 1, &[0]);
        let (a, _) = p.insert((0, 1), &[]).unwrap();
        let (b, _) = p.insert((0, 2), &[]).unwrap();
        assert_eq!(p.lookup((0, 1)), Some(a)); // (0,2) is now the LRU
        let (c, ev) = p.insert((0, 3), &[]).unwrap();
        assert_eq!((c, ev), (b, Some((0, 2))));
        // With the LRU slot pinned, the other one goes.
        let (d, ev) = p.insert((1, 0), &[a]).unwrap();
        assert_eq!((d, ev), (c, Some((0, 3))));
    }

    #[test]
    fn eviction_order_is_recency_not_frequency() {
        // 3 slots: (0,0) used often but long ago, (0,1) and (0,2) once, recently.
        let mut p = SlotPolicy::new(CachePolicy::Lru, 3, 3, &[0]);
        for e in 0..3 {
            p.insert((0, e), &[]).unwrap();
        }
        for _ in 0..10 {
            p.lookup((0, 0));
        }
        p.lookup((0, 1));
        p.lookup((0, 2));
        let order: Vec<_> = (10..13)
            .map(|e| p.insert((0, e), &[]).unwrap().1.unwrap())
            .collect();
        assert_eq!(order, vec![(0, 0), (0, 1), (0, 2)]);
    }
}
