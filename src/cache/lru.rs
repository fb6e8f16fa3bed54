//! [`CachePolicy::Lru`](super::CachePolicy::Lru): the least recently used slot goes first.

use super::policy::{Key, Order};

/// No slot.
const NIL: usize = usize::MAX;

/// Doubly linked lists of slots (each slot in at most one list), for O(1) moves to the
/// back of a list on every use: a decode step marks every expert it used.
#[derive(Debug)]
pub(crate) struct Links {
    prev: Vec<usize>,
    next: Vec<usize>,
    linked: Vec<bool>,
}

/// One list of [`Links`]: its first (least recently used) and last slots.
#[derive(Debug, Clone, Copy)]
pub(crate) struct List {
    head: usize,
    tail: usize,
    pub len: usize,
}

impl Default for List {
    fn default() -> Self {
        List {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

impl Links {
    pub fn new(slots: usize) -> Self {
        Links {
            prev: vec![NIL; slots],
            next: vec![NIL; slots],
            linked: vec![false; slots],
        }
    }

    /// Takes `slot` out of `list` (which must hold it) if linked.
    pub fn unlink(&mut self, list: &mut List, slot: usize) {
        if !self.linked[slot] {
            return;
        }
        let (p, n) = (self.prev[slot], self.next[slot]);
        if p == NIL {
            list.head = n;
        } else {
            self.next[p] = n;
        }
        if n == NIL {
            list.tail = p;
        } else {
            self.prev[n] = p;
        }
        self.linked[slot] = false;
        list.len -= 1;
    }

    /// Appends `slot` (unlinked) to `list`.
    pub fn push_back(&mut self, list: &mut List, slot: usize) {
        self.prev[slot] = list.tail;
        self.next[slot] = NIL;
        if list.tail == NIL {
            list.head = slot;
        } else {
            self.next[list.tail] = slot;
        }
        list.tail = slot;
        self.linked[slot] = true;
        list.len += 1;
    }

    /// The first slot of `list`, from its front, that `pinned` does not name.
    pub fn first_unpinned(&self, list: &List, pinned: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut s = list.head;
        while s != NIL {
            if !pinned(s) {
                return Some(s);
            }
            s = self.next[s];
        }
        None
    }
}

/// Slots in the order of their last use, least recent first.
#[derive(Debug)]
pub(crate) struct Lru {
    links: Links,
    list: List,
}

impl Lru {
    pub fn new(slots: usize) -> Self {
        Lru {
            links: Links::new(slots),
            list: List::default(),
        }
    }
}

impl Order for Lru {
    fn used(&mut self, slot: usize, _key: Key, _tick: u64) {
        self.links.unlink(&mut self.list, slot);
        self.links.push_back(&mut self.list, slot);
    }

    fn filled(&mut self, slot: usize, key: Key, tick: u64) {
        self.used(slot, key, tick);
    }

    fn removed(&mut self, slot: usize, _key: Key) {
        self.links.unlink(&mut self.list, slot);
    }

    fn victim(&self, _key: Key, pinned: &dyn Fn(usize) -> bool) -> Option<usize> {
        self.links.first_unpinned(&self.list, pinned)
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

    #[test]
    fn matches_a_naive_least_recently_used_scan() {
        // Random uses, fills with random pins and clears, against a scan of last uses.
        let mut p = SlotPolicy::new(CachePolicy::Lru, 16, 4, &[0, 1]);
        let mut last: Vec<Option<((usize, usize), u64)>> = vec![None; 16];
        let (mut tick, mut rng) = (0u64, 0x2545_f491_4f6c_dd1du64);
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..20_000 {
            tick += 1;
            let key = ((next() % 2) as usize, (next() % 40) as usize);
            match next() % 4 {
                0 => {
                    let s = (next() % 16) as usize;
                    p.clear(s);
                    last[s] = None;
                }
                1 => {
                    let got = p.lookup(key);
                    let want = last.iter().position(|e| e.is_some_and(|(k, _)| k == key));
                    assert_eq!(got, want);
                    if let Some(s) = got {
                        last[s] = Some((key, tick));
                    }
                }
                _ => {
                    if p.lookup(key).is_some() {
                        let s = last.iter().position(|e| e.is_some_and(|(k, _)| k == key));
                        last[s.unwrap()] = Some((key, tick));
                        continue;
                    }
                    let pinned: Vec<usize> = (0..(next() % 20) as usize)
                        .map(|_| (next() % 16) as usize)
                        .collect();
                    let want = last.iter().position(Option::is_none).or_else(|| {
                        (0..16)
                            .filter(|s| !pinned.contains(s))
                            .min_by_key(|&s| last[s].map(|e| e.1))
                    });
                    let got = p.insert(key, &pinned).map(|(s, _)| s);
                    assert_eq!(got, want);
                    if let Some(s) = got {
                        last[s] = Some((key, tick));
                    }
                }
            }
        }
    }
}
