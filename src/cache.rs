//! The GPU expert cache: fixed-size slots, bounded by a byte budget, filled from an
//! [`ExpertStore`], evicting the least recently used expert.
//!
//! Slots live in "pages", GPU buffers that each fit one storage binding. Kernels address an
//! expert by (page, slot within page). The slot map and the LRU order are host-side state
//! behind a mutex that is held from slot assignment until the GPU work using those slots
//! is submitted, so concurrent sessions can never overwrite a slot another session has
//! recorded work against but not yet submitted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::store::{ExpertLayout, ExpertStore};

/// Slot strides are a multiple of this many bytes.
const SLOT_ALIGN: u64 = 256;

/// Counters of expert-cache traffic. Each routed (layer, expert) needed by a forward pass
/// counts once per layer pass: as a hit when it was already resident, else as a miss that
/// read `layout.bytes` from the store.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CacheStats {
    /// Experts found resident.
    pub hits: u64,
    /// Experts read from the store.
    pub misses: u64,
    /// Bytes read from the store.
    pub bytes_read: u64,
    /// Resident experts evicted to make room.
    pub evictions: u64,
    /// Time spent reading from the store.
    pub read_time: Duration,
}

impl CacheStats {
    /// hits / (hits + misses), or 0 when nothing was routed.
    pub fn hit_rate(&self) -> f64 {
        let n = self.hits + self.misses;
        if n == 0 {
            0.0
        } else {
            self.hits as f64 / n as f64
        }
    }

    /// The counters accumulated since `earlier`.
    pub fn since(&self, earlier: &CacheStats) -> CacheStats {
        CacheStats {
            hits: self.hits - earlier.hits,
            misses: self.misses - earlier.misses,
            bytes_read: self.bytes_read - earlier.bytes_read,
            evictions: self.evictions - earlier.evictions,
            read_time: self.read_time.saturating_sub(earlier.read_time),
        }
    }

    pub(crate) fn add(&mut self, o: &CacheStats) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.bytes_read += o.bytes_read;
        self.evictions += o.evictions;
        self.read_time += o.read_time;
    }
}

/// Which expert each slot holds and when it was last used.
#[derive(Debug)]
pub(crate) struct LruPolicy {
    map: HashMap<(usize, usize), usize>,
    owner: Vec<Option<(usize, usize)>>,
    last_used: Vec<u64>,
    tick: u64,
}

impl LruPolicy {
    pub fn new(slots: usize) -> Self {
        LruPolicy {
            map: HashMap::new(),
            owner: vec![None; slots],
            last_used: vec![0; slots],
            tick: 0,
        }
    }

    pub fn slots(&self) -> usize {
        self.owner.len()
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
                .filter(|s| !pinned.contains(s))
                .min_by_key(|&s| self.last_used[s])?,
        };
        let evicted = self.owner[slot].take();
        if let Some(old) = evicted {
            self.map.remove(&old);
        }
        self.owner[slot] = Some(key);
        self.map.insert(key, slot);
        self.tick += 1;
        self.last_used[slot] = self.tick;
        Some((slot, evicted))
    }

    /// Forgets whatever `slot` holds (after a failed fill).
    pub fn clear(&mut self, slot: usize) {
        if let Some(old) = self.owner[slot].take() {
            self.map.remove(&old);
        }
        self.last_used[slot] = 0;
    }
}

pub(crate) struct CacheState {
    pub policy: LruPolicy,
    staging: Vec<u8>,
}

/// The expert cache of one model, shared by its sessions.
pub(crate) struct ExpertCache {
    pub layout: ExpertLayout,
    pub slot_bytes: u64,
    pub slots_per_page: usize,
    pub pages: Vec<wgpu::Buffer>,
    state: Mutex<CacheState>,
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_read: AtomicU64,
    evictions: AtomicU64,
    read_nanos: AtomicU64,
}

impl std::fmt::Debug for ExpertCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertCache")
            .field("slot_bytes", &self.slot_bytes)
            .field("pages", &self.pages.len())
            .finish()
    }
}

impl ExpertCache {
    /// A cache of as many slots as `budget` bytes hold, at most `max_experts`.
    pub fn new(gpu: &Gpu, layout: ExpertLayout, budget: u64, max_experts: usize) -> Result<Self> {
        let slot_bytes = (layout.bytes as u64).div_ceil(SLOT_ALIGN) * SLOT_ALIGN;
        let slots = ((budget / slot_bytes) as usize).min(max_experts.max(1));
        if slots == 0 {
            return Err(Error::InvalidArgument(format!(
                "expert cache budget of {budget} bytes is smaller than one expert slot ({slot_bytes} bytes)"
            )));
        }
        if slot_bytes > gpu.max_binding {
            return Err(Error::Gpu(format!(
                "one expert ({slot_bytes} bytes) exceeds the device's largest storage binding ({} bytes)",
                gpu.max_binding
            )));
        }
        let slots_per_page = ((gpu.max_binding / slot_bytes) as usize).min(slots);
        let mut pages = Vec::new();
        let mut left = slots;
        while left > 0 {
            let n = slots_per_page.min(left);
            pages.push(gpu.storage_buffer("expert cache page", n as u64 * slot_bytes));
            left -= n;
        }
        gpu.check()?;
        Ok(ExpertCache {
            slot_bytes,
            slots_per_page,
            pages,
            state: Mutex::new(CacheState {
                policy: LruPolicy::new(slots),
                staging: vec![0u8; layout.bytes],
            }),
            layout,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            read_nanos: AtomicU64::new(0),
        })
    }

    pub fn slots(&self) -> usize {
        self.lock().policy.slots()
    }

    pub fn lock(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (page, slot within the page) of a global slot index.
    pub fn locate(&self, slot: usize) -> (usize, usize) {
        (slot / self.slots_per_page, slot % self.slots_per_page)
    }

    /// Makes the experts `keys` resident and returns their slots, all pinned together.
    /// `keys.len()` must not exceed the slot count. Reads misses from `store` and queues
    /// their upload; the caller must submit the GPU work that uses the slots before
    /// dropping `state`.
    pub fn acquire(
        &self,
        gpu: &Gpu,
        state: &mut CacheState,
        store: &dyn ExpertStore,
        keys: &[(usize, usize)],
        stats: &mut CacheStats,
    ) -> Result<Vec<usize>> {
        let mut slots: Vec<Option<usize>> = keys.iter().map(|&k| state.policy.lookup(k)).collect();
        let mut pinned: Vec<usize> = slots.iter().flatten().copied().collect();
        for (i, &key) in keys.iter().enumerate() {
            if slots[i].is_some() {
                stats.hits += 1;
                continue;
            }
            let (slot, evicted) = state.policy.insert(key, &pinned).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "expert cache has {} slots, fewer than the {} experts needed at once",
                    state.policy.slots(),
                    keys.len()
                ))
            })?;
            let t0 = Instant::now();
            let read = store.read_expert(key.0, key.1, &mut state.staging);
            stats.read_time += t0.elapsed();
            if let Err(e) = read {
                state.policy.clear(slot);
                return Err(e);
            }
            if evicted.is_some() {
                stats.evictions += 1;
            }
            stats.misses += 1;
            stats.bytes_read += state.staging.len() as u64;
            let (page, local) = self.locate(slot);
            gpu.queue.write_buffer(
                &self.pages[page],
                local as u64 * self.slot_bytes,
                &state.staging,
            );
            pinned.push(slot);
            slots[i] = Some(slot);
        }
        Ok(slots.into_iter().flatten().collect())
    }

    /// Adds a pass's counters to the model-wide totals.
    pub fn record(&self, s: &CacheStats) {
        self.hits.fetch_add(s.hits, Ordering::Relaxed);
        self.misses.fetch_add(s.misses, Ordering::Relaxed);
        self.bytes_read.fetch_add(s.bytes_read, Ordering::Relaxed);
        self.evictions.fetch_add(s.evictions, Ordering::Relaxed);
        self.read_nanos
            .fetch_add(s.read_time.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            read_time: Duration::from_nanos(self.read_nanos.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LruPolicy;

    #[test]
    fn lru_evicts_least_recently_used_unpinned() {
        let mut p = LruPolicy::new(2);
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
    fn cleared_slot_is_reused_first() {
        let mut p = LruPolicy::new(3);
        for e in 0..3 {
            p.insert((0, e), &[]).unwrap();
        }
        let s = p.lookup((0, 1)).unwrap();
        p.clear(s);
        assert_eq!(p.lookup((0, 1)), None);
        assert_eq!(p.insert((5, 5), &[]).unwrap(), (s, None));
    }
}
