//! The expert cache's slot bookkeeping, shared by every eviction policy: which expert each
//! slot holds, fixed slots (shared experts) that are never evicted, per cache page the count
//! of each layer's experts in it, and the free slots. Which resident expert a miss evicts is
//! the policy's ([`CachePolicy`]): `lru.rs`, `lfu.rs`, `partitioned.rs`.

use std::collections::{BTreeSet, HashMap};

use super::lfu::Lfu;
use super::lru::Lru;
use super::partitioned::PerLayerLru;

/// A routed expert: (decoder layer, expert index).
pub(crate) type Key = (usize, usize);

/// Which resident expert the GPU expert cache evicts when a miss finds no free slot
/// ([`ModelBuilder::expert_cache_policy`](crate::ModelBuilder::expert_cache_policy)).
///
/// Every policy keeps the cache's guarantees: experts in use by the layer being run are
/// never evicted, a shared expert's fixed slot never is, and a free slot is always taken
/// before anything is evicted. They differ only in the victim. Which one wins depends on
/// the routing: measure with [`routing::simulate`](crate::routing::simulate) on a trace of
/// your model (`cargo bench --bench routing`; docs/performance.md has the table for
/// routing with published statistics).
///
/// ```no_run
/// # fn main() -> moestream::Result<()> {
/// use moestream::{cache::CachePolicy, Model};
/// let model = Model::builder("models/Qwen3-30B-A3B-4bit")
///     .expert_cache_bytes(4 << 30)
///     .expert_cache_policy(CachePolicy::Lfu)
///     .build()?;
/// assert_eq!(model.expert_cache_policy(), CachePolicy::Lfu);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum CachePolicy {
    /// Least recently used, one pool shared by all layers (the default).
    #[default]
    Lru,
    /// Least frequently used, with aging so that it adapts: each expert's use count
    /// (kept while it is not resident too) is halved every [`LFU_AGING_PERIOD`] uses per
    /// slot of the cache; ties go to the least recently used. Keeps the experts a workload
    /// prefers resident through bursts of one-off choices.
    Lfu,
    /// Least recently used within per-layer partitions: each MoE layer is entitled to an
    /// equal share of the slots. A layer at or over its share evicts its own least
    /// recently used expert; one under its share takes the least recently used slot of a
    /// layer over its share (so shares fill up as the layers are first used, and
    /// rebalance after a cache filled by another pattern).
    PerLayerLru,
}

/// The LFU policy halves every use count after this many uses per cache slot (a cache of
/// 1536 slots ages every 24576 expert uses, about 64 tokens of Qwen3-30B-A3B).
pub const LFU_AGING_PERIOD: u64 = 16;

/// The eviction order of one policy. Slots enter it when filled, are touched on each use,
/// and leave when evicted or cleared; fixed slots never enter it.
pub(crate) trait Order: std::fmt::Debug + Send {
    /// `slot` (holding `key`) was used again at `tick`.
    fn used(&mut self, slot: usize, key: Key, tick: u64);
    /// `slot` now holds `key`, used at `tick`.
    fn filled(&mut self, slot: usize, key: Key, tick: u64);
    /// `slot` (which held `key`) was evicted or cleared.
    fn removed(&mut self, slot: usize, key: Key);
    /// The slot to evict for `key` when no slot is free, never one that `pinned` names.
    fn victim(&self, key: Key, pinned: &dyn Fn(usize) -> bool) -> Option<usize>;
    /// `slot` holds a shared expert for good: one slot fewer for routed experts.
    fn fixed(&mut self, _slot: usize) {}
}

/// Which expert each slot holds, the free slots, and the policy's eviction order.
#[derive(Debug)]
pub(crate) struct SlotPolicy {
    kind: CachePolicy,
    map: HashMap<Key, usize>,
    owner: Vec<Option<Key>>,
    /// Slots holding nothing, lowest first.
    free: BTreeSet<usize>,
    tick: u64,
    /// Slots per cache page, and per layer the number of its experts in each page.
    slots_per_page: usize,
    in_page: Vec<Vec<u32>>,
    /// Slots that are never evicted (shared experts, [`SlotPolicy::insert_fixed`]).
    fixed: Vec<bool>,
    n_fixed: usize,
    order: Box<dyn Order>,
}

impl SlotPolicy {
    /// `slots` slots in pages of `slots_per_page`, evicting by `kind`; `moe_layers` are the
    /// layers whose experts it holds (the per-layer policy's partitions).
    pub fn new(
        kind: CachePolicy,
        slots: usize,
        slots_per_page: usize,
        moe_layers: &[usize],
    ) -> Self {
        let order: Box<dyn Order> = match kind {
            CachePolicy::Lru => Box::new(Lru::new(slots)),
            CachePolicy::Lfu => Box::new(Lfu::new(slots, LFU_AGING_PERIOD)),
            CachePolicy::PerLayerLru => Box::new(PerLayerLru::new(slots, moe_layers)),
        };
        SlotPolicy {
            kind,
            map: HashMap::new(),
            owner: vec![None; slots],
            free: (0..slots).collect(),
            tick: 0,
            slots_per_page: slots_per_page.max(1),
            in_page: Vec::new(),
            fixed: vec![false; slots],
            n_fixed: 0,
            order,
        }
    }

    /// The policy evicting.
    pub fn kind(&self) -> CachePolicy {
        self.kind
    }

    /// Places `key` in `slot` (which must be free) for good: it is never evicted.
    pub fn insert_fixed(&mut self, key: Key, slot: usize) {
        debug_assert!(self.owner[slot].is_none());
        self.owner[slot] = Some(key);
        self.free.remove(&slot);
        self.map.insert(key, slot);
        self.count(key, slot, true);
        self.fixed[slot] = true;
        self.n_fixed += 1;
        self.order.fixed(slot);
    }

    /// The pages holding at least one expert of `layer`.
    pub fn layer_pages(&self, layer: usize) -> Vec<usize> {
        self.in_page.get(layer).map_or_else(Vec::new, |counts| {
            (0..counts.len()).filter(|&p| counts[p] > 0).collect()
        })
    }

    fn count(&mut self, (layer, _): Key, slot: usize, add: bool) {
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
    pub fn lookup(&mut self, key: Key) -> Option<usize> {
        let slot = *self.map.get(&key)?;
        self.tick += 1;
        if !self.fixed[slot] {
            self.order.used(slot, key, self.tick);
        }
        Some(slot)
    }

    /// A slot for `key` (which must not be resident): a free one, else the one the policy
    /// evicts, never one in `pinned`. Returns the slot and the evicted key, if any; `None`
    /// when every slot is fixed or pinned.
    pub fn insert(&mut self, key: Key, pinned: &[usize]) -> Option<(usize, Option<Key>)> {
        let slot = match self.free.first() {
            Some(&s) => s,
            None => self.order.victim(key, &|s| pinned.contains(&s))?,
        };
        self.free.remove(&slot);
        let evicted = self.owner[slot].take();
        if let Some(old) = evicted {
            self.map.remove(&old);
            self.count(old, slot, false);
            self.order.removed(slot, old);
        }
        self.owner[slot] = Some(key);
        self.map.insert(key, slot);
        self.count(key, slot, true);
        self.tick += 1;
        self.order.filled(slot, key, self.tick);
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
            self.order.removed(slot, old);
        }
        self.free.insert(slot);
    }

    /// Makes room for `keys` (one layer pass's distinct experts, at most [`slots`](Self::slots)
    /// of them) as [`ExpertCache::acquire`](super::ExpertCache::acquire) does, without
    /// reading anything: hits are marked used, every miss gets a slot. Returns (hits,
    /// misses, evictions), or `None` when the keys do not fit.
    pub fn simulate(&mut self, keys: &[Key]) -> Option<(u64, u64, u64)> {
        let mut pinned: Vec<usize> = keys.iter().filter_map(|&k| self.lookup(k)).collect();
        let hits = pinned.len() as u64;
        let (mut misses, mut evictions) = (0, 0);
        for &key in keys {
            if self.map.contains_key(&key) {
                continue;
            }
            let (slot, evicted) = self.insert(key, &pinned)?;
            pinned.push(slot);
            misses += 1;
            evictions += u64::from(evicted.is_some());
        }
        Some((hits, misses, evictions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [CachePolicy; 3] = [CachePolicy::Lru, CachePolicy::Lfu, CachePolicy::PerLayerLru];

    fn policy(kind: CachePolicy, slots: usize, per_page: usize) -> SlotPolicy {
        SlotPolicy::new(kind, slots, per_page, &[0, 1, 2])
    }

    #[test]
    fn pinned_slots_are_never_evicted() {
        for kind in ALL {
            let mut p = policy(kind, 2, 1);
            let (a, _) = p.insert((0, 1), &[]).unwrap();
            let (b, _) = p.insert((0, 2), &[]).unwrap();
            assert_ne!(a, b);
            // Whatever the policy prefers, a pinned slot stays.
            let (c, ev) = p.insert((0, 3), &[a]).unwrap();
            assert_eq!((c, ev), (b, Some((0, 2))), "{kind:?}");
            let (d, ev) = p.insert((0, 4), &[c]).unwrap();
            assert_eq!((d, ev), (a, Some((0, 1))), "{kind:?}");
            assert!(p.insert((2, 0), &[a, c]).is_none(), "{kind:?}");
            assert_eq!(p.lookup((0, 2)), None);
        }
    }

    #[test]
    fn fixed_slots_are_never_evicted_or_cleared() {
        for kind in ALL {
            let mut p = policy(kind, 3, 3);
            p.insert_fixed((0, 9), 1);
            assert_eq!(p.slots(), 2);
            assert_eq!(p.lookup((0, 9)), Some(1));
            let (a, _) = p.insert((0, 0), &[]).unwrap();
            let (b, _) = p.insert((0, 1), &[]).unwrap();
            assert_eq!((a, b), (0, 2));
            // Full: one of the two free-to-evict slots goes, never the fixed one, even
            // when it is the least recently and least frequently used.
            p.lookup((0, 0));
            p.lookup((0, 1));
            let (c, ev) = p.insert((0, 2), &[]).unwrap();
            assert!(c != 1 && ev.is_some(), "{kind:?}");
            assert!(p.insert((0, 3), &[0, 2]).is_none(), "{kind:?}");
            p.clear(1);
            assert_eq!(p.lookup((0, 9)), Some(1));
            assert_eq!(p.layer_pages(0), vec![0]);
        }
    }

    #[test]
    fn cleared_slot_is_reused_first() {
        for kind in ALL {
            let mut p = policy(kind, 3, 2);
            for e in 0..3 {
                p.insert((0, e), &[]).unwrap();
            }
            let s = p.lookup((0, 1)).unwrap();
            p.clear(s);
            assert_eq!(p.lookup((0, 1)), None);
            assert_eq!(p.insert((5, 5), &[]).unwrap(), (s, None), "{kind:?}");
        }
    }

    #[test]
    fn free_slots_fill_lowest_first() {
        for kind in ALL {
            let mut p = policy(kind, 4, 2);
            let got: Vec<usize> = [(0, 0), (1, 3), (2, 1), (0, 7)]
                .iter()
                .map(|&k| p.insert(k, &[]).unwrap().0)
                .collect();
            assert_eq!(got, vec![0, 1, 2, 3], "{kind:?}");
        }
    }

    #[test]
    fn layer_pages_follow_fills_and_evictions() {
        // 4 slots, 2 per page.
        let mut p = policy(CachePolicy::Lru, 4, 2);
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

    #[test]
    fn simulate_counts_like_acquire() {
        let mut p = policy(CachePolicy::Lru, 3, 3);
        assert_eq!(p.simulate(&[(0, 0), (0, 1)]), Some((0, 2, 0)));
        assert_eq!(p.simulate(&[(0, 1), (0, 2)]), Some((1, 1, 0)));
        // Full: (0, 0) is the least recently used; (0, 1) and (0, 3) are this pass's.
        assert_eq!(p.simulate(&[(0, 1), (0, 3)]), Some((1, 1, 1)));
        assert_eq!(p.lookup((0, 0)), None);
        // More keys than slots do not fit.
        assert_eq!(p.simulate(&[(1, 0), (1, 1), (1, 2), (1, 3)]), None);
    }
}
