//! [`CachePolicy::PerLayerLru`](super::CachePolicy::PerLayerLru): LRU within per-layer
//! partitions of equal share.

use std::collections::HashMap;

use super::lru::{Links, List};
use super::policy::{Key, Order};

/// Per layer, its resident slots in the order of their last use, and its share.
#[derive(Debug)]
pub(crate) struct PerLayerLru {
    links: Links,
    /// Per layer, its resident slots, least recently used first.
    layers: HashMap<usize, List>,
    /// Each slot's last use (to compare the fronts of different layers' lists).
    last: Vec<u64>,
    /// The MoE layers, in order (a layer's index here sets its share).
    moe_layers: Vec<usize>,
    /// Slots for routed experts (all but the fixed ones).
    capacity: usize,
}

impl PerLayerLru {
    pub fn new(slots: usize, moe_layers: &[usize]) -> Self {
        PerLayerLru {
            links: Links::new(slots),
            layers: HashMap::new(),
            last: vec![0; slots],
            moe_layers: moe_layers.to_vec(),
            capacity: slots,
        }
    }

    /// A layer's share: an equal part of the routed slots, the remainder going one each
    /// to the first layers. A layer the policy was not told of gets the equal part.
    fn quota(&self, layer: usize) -> usize {
        let n = self.moe_layers.len().max(1);
        let (base, rem) = (self.capacity / n, self.capacity % n);
        match self.moe_layers.iter().position(|&l| l == layer) {
            Some(i) => base + usize::from(i < rem),
            None => base,
        }
    }

    fn held(&self, layer: usize) -> usize {
        self.layers.get(&layer).map_or(0, |l| l.len)
    }

    /// The least recently used unpinned slot of `layer`, with its last use.
    fn oldest(&self, layer: usize, pinned: &dyn Fn(usize) -> bool) -> Option<(u64, usize)> {
        let list = self.layers.get(&layer)?;
        let s = self.links.first_unpinned(list, pinned)?;
        Some((self.last[s], s))
    }

    /// The least recently used unpinned slot among the layers `which` accepts.
    fn oldest_of(
        &self,
        which: impl Fn(usize) -> bool,
        pinned: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        self.layers
            .keys()
            .filter(|&&l| which(l))
            .filter_map(|&l| self.oldest(l, pinned))
            .min()
            .map(|(_, s)| s)
    }
}

impl Order for PerLayerLru {
    fn used(&mut self, slot: usize, (layer, _): Key, tick: u64) {
        let list = self.layers.entry(layer).or_default();
        self.links.unlink(list, slot);
        self.links.push_back(list, slot);
        self.last[slot] = tick;
    }

    fn filled(&mut self, slot: usize, key: Key, tick: u64) {
        self.used(slot, key, tick);
    }

    fn removed(&mut self, slot: usize, (layer, _): Key) {
        if let Some(list) = self.layers.get_mut(&layer) {
            self.links.unlink(list, slot);
        }
    }

    fn victim(&self, (layer, _): Key, pinned: &dyn Fn(usize) -> bool) -> Option<usize> {
        // At or over its share: the layer's own least recently used.
        if self.held(layer) >= self.quota(layer) {
            if let Some((_, s)) = self.oldest(layer, pinned) {
                return Some(s);
            }
        }
        // Under its share (or all of its own pinned): take from a layer over its share,
        // else from anyone.
        self.oldest_of(|l| self.held(l) > self.quota(l), pinned)
            .or_else(|| self.oldest_of(|_| true, pinned))
    }

    fn fixed(&mut self, _slot: usize) {
        self.capacity = self.capacity.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::super::policy::{CachePolicy, SlotPolicy};

    #[test]
    fn a_layer_at_its_share_evicts_its_own_least_recently_used() {
        // 4 slots, layers 0 and 1: 2 each.
        let mut p = SlotPolicy::new(CachePolicy::PerLayerLru, 4, 4, &[0, 1]);
        p.insert((0, 0), &[]).unwrap();
        p.insert((0, 1), &[]).unwrap();
        p.insert((1, 0), &[]).unwrap(); // the globally least recently used of layer 1
        p.insert((1, 1), &[]).unwrap();
        p.lookup((0, 0));
        p.lookup((0, 1));
        // Global LRU would evict (1, 0); layer 0 is at its share, so it evicts its own.
        let (_, ev) = p.insert((0, 2), &[]).unwrap();
        assert_eq!(ev, Some((0, 0)));
        let (_, ev) = p.insert((1, 2), &[]).unwrap();
        assert_eq!(ev, Some((1, 0)));
        let (_, ev) = p.insert((0, 3), &[]).unwrap();
        assert_eq!(ev, Some((0, 1)));
    }

    #[test]
    fn a_layer_under_its_share_takes_from_one_over_it() {
        // 4 slots, layers 0, 1: layer 0 filled the cache alone (as a preload does).
        let mut p = SlotPolicy::new(CachePolicy::PerLayerLru, 4, 4, &[0, 1]);
        for e in 0..4 {
            p.insert((0, e), &[]).unwrap();
        }
        p.lookup((0, 0));
        // Layer 1 holds nothing, under its share: it takes layer 0's least recently used.
        let (_, ev) = p.insert((1, 0), &[]).unwrap();
        assert_eq!(ev, Some((0, 1)));
        let (_, ev) = p.insert((1, 1), &[]).unwrap();
        assert_eq!(ev, Some((0, 2)));
        // Now both are at their share: layer 1 evicts its own.
        let (_, ev) = p.insert((1, 2), &[]).unwrap();
        assert_eq!(ev, Some((1, 0)));
    }

    #[test]
    fn a_layer_whose_own_slots_are_pinned_borrows() {
        // 3 slots, layers 0, 1, 2: one each. A layer pass of layer 0 needing 2 experts
        // borrows beyond its share rather than failing.
        let mut p = SlotPolicy::new(CachePolicy::PerLayerLru, 3, 3, &[0, 1, 2]);
        let (a, _) = p.insert((0, 0), &[]).unwrap();
        p.insert((1, 0), &[]).unwrap();
        p.insert((2, 0), &[]).unwrap();
        let (_, ev) = p.insert((0, 1), &[a]).unwrap();
        assert_eq!(ev, Some((1, 0)));
    }

    #[test]
    fn shares_exclude_fixed_slots() {
        // 5 slots, one fixed (a shared expert): 4 routed slots, 2 per layer.
        let mut p = SlotPolicy::new(CachePolicy::PerLayerLru, 5, 5, &[0, 1]);
        p.insert_fixed((0, 99), 4);
        for e in 0..3 {
            p.insert((0, e), &[]).unwrap();
        }
        p.insert((1, 0), &[]).unwrap();
        // Layer 1 (1 of 2) is under its share: it takes from layer 0 (3 of 2).
        let (_, ev) = p.insert((1, 1), &[]).unwrap();
        assert_eq!(ev, Some((0, 0)));
        // Layer 0 (2 of 2) at its share: its own.
        let (_, ev) = p.insert((0, 5), &[]).unwrap();
        assert_eq!(ev, Some((0, 1)));
        assert_eq!(p.lookup((0, 99)), Some(4));
    }
}
