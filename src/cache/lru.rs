//! The expert cache's slot policy: which expert each slot holds, least recently used
//! first out, fixed slots (shared experts) never evicted, and per cache page the count of
//! each layer's experts in it.

use std::collections::HashMap;

/// Which expert each slot holds and when it was last used.
#[derive(Debug)]
pub(crate) struct LruPolicy {
    map: HashMap<(usize, usize), usize>,
    owner: Vec<Option<(usize, usize)>>,
    last_used: Vec<u64>,
    tick: u64,
    /// Slots per cache page, and per layer the number of its experts in each page.
    slots_per_page: usize,
    in_page: Vec<Vec<u32>>,
    /// Slots that are never evicted (shared experts, [`LruPolicy::insert_fixed`]).
    fixed: Vec<bool>,
    n_fixed: usize,
}

impl LruPolicy {
    pub fn new(slots: usize, slots_per_page: usize) -> Self {
        LruPolicy {
            map: HashMap::new(),
            owner: vec![None; slots],
            last_used: vec![0; slots],
            tick: 0,
            slots_per_page: slots_per_page.max(1),
            in_page: Vec::new(),
            fixed: vec![false; slots],
            n_fixed: 0,
        }
    }

    /// Places `key` in `slot` (which must be free) for good: it is never evicted.
    pub fn insert_fixed(&mut self, key: (usize, usize), slot: usize) {
        debug_assert!(self.owner[slot].is_none());
        self.owner[slot] = Some(key);
        self.map.insert(key, slot);
        self.count(key, slot, true);
        self.fixed[slot] = true;
        self.n_fixed += 1;
    }

    /// The pages holding at least one expert of `layer`.
    pub fn layer_pages(&self, layer: usize) -> Vec<usize> {
        self.in_page.get(layer).map_or_else(Vec::new, |counts| {
            (0..counts.len()).filter(|&p| counts[p] > 0).collect()
        })
    }

    fn count(&mut self, (layer, _): (usize, usize), slot: usize, add: bool) {
        let page = slot / self.slots_per_page;
        if self.in_page.len() <= layer {
            self.in_page.resize(layer + 1, Vec::new());
        }
        let counts = &mut self.in_page[layer];
        if counts.len() <= page {
            counts.resize(page + 1, 0);
        }
        if add {
            counts[page] += 1;
        } else {
            counts[page] = counts[page].saturating_sub(1);
        }
    }

    /// Slots that can hold a routed expert (all but the fixed ones).
    pub fn slots(&self) -> usize {
        self.owner.len() - self.n_fixed
    }

    /// The slot holding `key`, marked as just used.
    pub fn lookup(&mut self, key: (usize, usize)) -> Option<usize> {
        let slot = *self.map.get(&key)?;
        self.tick += 1;
        self.last_used[slot] = self.tick;
        Some(slot)
    }

    /// A slot for `key` (which must not be resident): a free one, else the least recently
    /// used slot not in `pinned`. Returns the slot and the evicted key, if any.
    pub fn insert(
        &mut self,
        key: (usize, usize),
        pinned: &[usize],
    ) -> Option<(usize, Option<(usize, usize)>)> {
        let slot = match self.owner.iter().position(Option::is_none) {
            Some(s) => s,
            None => (0..self.owner.len())
                .filter(|&s| !self.fixed[s] && !pinned.contains(&s))
                .min_by_key(|&s| self.last_used[s])?,
        };
        let evicted = self.owner[slot].take();
        if let Some(old) = evicted {
            self.map.remove(&old);
            self.count(old, slot, false);
        }
        self.owner[slot] = Some(key);
        self.map.insert(key, slot);
        self.count(key, slot, true);
        self.tick += 1;
        self.last_used[slot] = self.tick;
        Some((slot, evicted))
    }

    /// Forgets whatever `slot` holds (after a failed fill); fixed slots keep theirs.
    pub fn clear(&mut self, slot: usize) {
        if self.fixed[slot] {
            return;
        }
        if let Some(old) = self.owner[slot].take() {
            self.map.remove(&old);
            self.count(old, slot, false);
        }
        self.last_used[slot] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_least_recently_used_unpinned() {
        let mut p = LruPolicy::new(2, 1);
        let (a, _) = p.insert((0, 1), &[]).unwrap();
        let (b, _) = p.insert((0, 2), &[]).unwrap();
        assert_ne!(a, b);
        assert_eq!(p.lookup((0, 1)), Some(a)); // (0,2) is now the LRU
        let (c, ev) = p.insert((0, 3), &[]).unwrap();
        assert_eq!((c, ev), (b, Some((0, 2))));
        // With the LRU slot pinned, the other one goes.
        let (d, ev) = p.insert((1, 0), &[a]).unwrap();
        assert_eq!((d, ev), (c, Some((0, 3))));
        assert!(p.insert((2, 0), &[a, d]).is_none());
        assert_eq!(p.lookup((0, 2)), None);
    }

    #[test]
    fn fixed_slots_are_never_evicted_or_cleared() {
        let mut p = LruPolicy::new(3, 3);
        p.insert_fixed((0, 9), 1);
        assert_eq!(p.slots(), 2);
        assert_eq!(p.lookup((0, 9)), Some(1));
        let (a, _) = p.insert((0, 0), &[]).unwrap();
        let (b, _) = p.insert((0, 1), &[]).unwrap();
        assert_eq!((a, b), (0, 2));
        // Full: the LRU of the two free-to-evict slots goes, never the fixed one, even when
        // it is the least recently used.
        p.lookup((0, 0));
        p.lookup((0, 1));
        let (c, ev) = p.insert((0, 2), &[]).unwrap();
        assert_eq!((c, ev), (0, Some((0, 0))));
        assert!(p.insert((0, 3), &[0, 2]).is_none());
        p.clear(1);
        assert_eq!(p.lookup((0, 9)), Some(1));
        assert_eq!(p.layer_pages(0), vec![0]);
    }

    #[test]
    fn cleared_slot_is_reused_first() {
        let mut p = LruPolicy::new(3, 2);
        for e in 0..3 {
            p.insert((0, e), &[]).unwrap();
        }
        let s = p.lookup((0, 1)).unwrap();
        p.clear(s);
        assert_eq!(p.lookup((0, 1)), None);
        assert_eq!(p.insert((5, 5), &[]).unwrap(), (s, None));
    }

    #[test]
    fn layer_pages_follow_fills_and_evictions() {
        // 4 slots, 2 per page.
        let mut p = LruPolicy::new(4, 2);
        assert!(p.layer_pages(0).is_empty());
        let (a, _) = p.insert((0, 0), &[]).unwrap(); // slot 0, page 0
        let (b, _) = p.insert((1, 0), &[]).unwrap(); // slot 1, page 0
        p.insert((1, 1), &[]).unwrap(); // slot 2, page 1
        p.insert((1, 2), &[]).unwrap(); // slot 3, page 1
        assert_eq!((a, b), (0, 1));
        assert_eq!(p.layer_pages(0), vec![0]);
        assert_eq!(p.layer_pages(1), vec![0, 1]);
        assert!(p.layer_pages(7).is_empty());
        // Evicting layer 0's only expert (the LRU slot 0) for a layer-2 expert.
        assert_eq!(p.insert((2, 5), &[]).unwrap(), (0, Some((0, 0))));
        assert!(p.layer_pages(0).is_empty());
        assert_eq!(p.layer_pages(2), vec![0]);
        p.clear(0);
        assert!(p.layer_pages(2).is_empty());
        assert_eq!(p.layer_pages(1), vec![0, 1]);
    }
}
