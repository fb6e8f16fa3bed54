//! [`CachePolicy::Lfu`](super::CachePolicy::Lfu): the least frequently used slot goes
//! first, ties to the least recently used; use counts survive eviction and are halved
//! every `period` uses per slot, so a formerly popular expert ages out.

use std::collections::HashMap;

use super::policy::{Key, Order};

/// Use counts: per slot for the resident experts (a use costs two array writes), in a map
/// for the experts evicted (their history, taken back when they return).
#[derive(Debug)]
pub(crate) struct Lfu {
    /// Uses of experts not resident, aged.
    history: HashMap<Key, u32>,
    /// Per slot, (uses, last use) of the expert it holds.
    slot: Vec<Option<(u32, u64)>>,
    /// Uses since the counts were last halved, and how many between halvings.
    uses: u64,
    age_every: u64,
}

impl Lfu {
    /// A policy for `slots` slots that halves its counts every `period * slots` uses.
    pub fn new(slots: usize, period: u64) -> Self {
        Lfu {
            history: HashMap::new(),
            slot: vec![None; slots],
            uses: 0,
            age_every: (period * slots as u64).max(1),
        }
    }

    /// Halves every count, forgetting evicted experts that reach zero.
    fn age(&mut self) {
        self.uses = 0;
        self.history.retain(|_, c| {
            *c /= 2;
            *c > 0
        });
        for (c, _) in self.slot.iter_mut().flatten() {
            *c /= 2;
        }
    }
}

impl Order for Lfu {
    fn used(&mut self, slot: usize, _key: Key, tick: u64) {
        self.uses += 1;
        if self.uses >= self.age_every {
            self.age();
        }
        let (c, t) = self.slot[slot].get_or_insert((0, 0));
        *c = c.saturating_add(1);
        *t = tick;
    }

    fn filled(&mut self, slot: usize, key: Key, tick: u64) {
        let c = self.history.remove(&key).unwrap_or(0);
        self.slot[slot] = Some((c, tick));
        self.used(slot, key, tick);
    }

    fn removed(&mut self, slot: usize, key: Key) {
        if let Some((c, _)) = self.slot[slot].take() {
            if c > 0 {
                self.history.insert(key, c);
            }
        }
    }

    /// The resident slot of fewest uses, least recently used among equals: a scan of the
    /// slots, paid only on a miss (which then waits for a read).
    fn victim(&self, _key: Key, pinned: &dyn Fn(usize) -> bool) -> Option<usize> {
        self.slot
            .iter()
            .enumerate()
            .filter_map(|(s, e)| e.map(|e| (e, s)))
            .filter(|&(_, s)| !pinned(s))
            .min()
            .map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::super::policy::{CachePolicy, SlotPolicy, LFU_AGING_PERIOD};

    #[test]
    fn evicts_least_frequently_used_then_least_recently() {
        let mut p = SlotPolicy::new(CachePolicy::Lfu, 3, 3, &[0]);
        for e in 0..3 {
            p.insert((0, e), &[]).unwrap();
        }
        // Counts: (0,0) 4, (0,1) 2, (0,2) 2 (used last).
        for _ in 0..3 {
            p.lookup((0, 0));
        }
        p.lookup((0, 1));
        p.lookup((0, 2));
        // (0,1) and (0,2) tie on count: the less recent goes first; the frequent one last
        // although it was used longest ago.
        let (_, ev) = p.insert((0, 3), &[]).unwrap();
        assert_eq!(ev, Some((0, 1)));
        // The newcomer has one use: it is the next victim.
        let (_, ev) = p.insert((0, 4), &[]).unwrap();
        assert_eq!(ev, Some((0, 3)));
        let (_, ev) = p.insert((0, 5), &[]).unwrap();
        assert_eq!(ev, Some((0, 4)));
        // Pinned, the least frequent survives and the next one goes.
        let s5 = p.lookup((0, 5)).unwrap();
        let (_, ev) = p.insert((0, 6), &[s5]).unwrap();
        assert_eq!(ev, Some((0, 2)));
    }

    #[test]
    fn counts_survive_eviction() {
        let mut p = SlotPolicy::new(CachePolicy::Lfu, 2, 2, &[0]);
        p.insert((0, 0), &[]).unwrap();
        for _ in 0..5 {
            p.lookup((0, 0));
        }
        p.insert((0, 1), &[]).unwrap();
        // (0,0) evicted only when pinned out; back, it keeps its history (7 uses) and
        // outlasts (0,1) and newcomers.
        let s1 = p.lookup((0, 1)).unwrap();
        let (_, ev) = p.insert((0, 2), &[s1]).unwrap();
        assert_eq!(ev, Some((0, 0)));
        let s2 = p.lookup((0, 2)).unwrap();
        let (_, ev) = p.insert((0, 0), &[s2]).unwrap();
        assert_eq!(ev, Some((0, 1)));
        let (_, ev) = p.insert((0, 3), &[]).unwrap();
        assert_eq!(ev, Some((0, 2)));
    }

    #[test]
    fn aging_lets_a_formerly_popular_expert_go() {
        let slots = 2;
        let mut p = SlotPolicy::new(CachePolicy::Lfu, slots, 2, &[0]);
        p.insert((0, 0), &[]).unwrap();
        p.insert((0, 1), &[]).unwrap();
        // (0,0) was popular early on: 20 uses.
        for _ in 0..20 {
            p.lookup((0, 0));
        }
        // Then only (0,1) is used, for several aging periods: its count overtakes the
        // halved count of (0,0), which becomes the victim.
        let period = LFU_AGING_PERIOD as usize * slots;
        for _ in 0..3 * period {
            p.lookup((0, 1));
        }
        let (_, ev) = p.insert((0, 2), &[]).unwrap();
        assert_eq!(ev, Some((0, 0)));
        // Without aging (a fresh policy, same uses within one period) the popular one
        // would have stayed.
        let mut q = SlotPolicy::new(CachePolicy::Lfu, slots, 2, &[0]);
        q.insert((0, 0), &[]).unwrap();
        q.insert((0, 1), &[]).unwrap();
        for _ in 0..20 {
            q.lookup((0, 0));
        }
        for _ in 0..8 {
            q.lookup((0, 1));
        }
        let (_, ev) = q.insert((0, 2), &[]).unwrap();
        assert_eq!(ev, Some((0, 1)));
    }
}
