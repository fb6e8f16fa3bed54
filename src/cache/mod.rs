//! The GPU expert cache: fixed-size slots within a byte budget
//! ([`ModelBuilder::expert_cache_bytes`](crate::ModelBuilder::expert_cache_bytes)), shared
//! by every session of a model, filled from the model's [`ExpertStore`] and evicting as
//! its [`CachePolicy`] says (least recently used by default;
//! [`ModelBuilder::expert_cache_policy`](crate::ModelBuilder::expert_cache_policy)). Its
//! traffic is counted in [`CacheStats`] ([`Model::cache_stats`](crate::Model::cache_stats),
//! and per session in [`SessionStats`](crate::session::SessionStats)).

// Slots live in "pages", GPU buffers that each fit one storage binding. Kernels address an
// expert by (page, slot within page). The slot map and the eviction order are host-side state
// behind a mutex that is held from slot assignment until the GPU work using those slots
// is submitted, so concurrent sessions can never overwrite a slot another session has
// recorded work against but not yet submitted.

use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::io::{Done, IoPool, Job};
use crate::store::{AlignedBuf, ExpertStore};

mod lfu;
mod lru;
mod partitioned;
mod policy;

pub(crate) use policy::SlotPolicy;
pub use policy::{CachePolicy, LFU_AGING_PERIOD};

/// Slot table entry of an expert that is not resident.
const NOT_RESIDENT: u32 = u32::MAX;

/// Slot strides are a multiple of this many bytes.
const SLOT_ALIGN: u64 = 256;

/// Environment variable (`1`) that turns off, for measuring (`benches/ab.sh`), the early
/// uploads of [`ExpertCache::acquire`]: each expert read is then copied to the GPU only
/// when the caller submits its work, after the last of the layer's reads.
pub(crate) const NO_EARLY_UPLOAD_ENV: &str = "MOESTREAM_NO_EARLY_UPLOAD";

fn early_uploads() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(NO_EARLY_UPLOAD_ENV).is_none_or(|v| v != "1"))
}

/// Counters of expert-cache traffic. Each distinct (layer, expert) a forward pass needs
/// counts once per layer pass: as a hit when it was already resident, else as a miss that
/// read the expert's bytes from the store. `read_time` is the time the pass waited for
/// reads (all reads of a layer are in flight together).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Experts found resident.
    pub hits: u64,
    /// Experts read from the store.
    pub misses: u64,
    /// Bytes read from the store.
    pub bytes_read: u64,
    /// Resident experts evicted to make room.
    pub evictions: u64,
    /// Time spent waiting for reads from the store.
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

    /// Bytes read per second of waiting, or 0 when nothing was read.
    pub fn read_throughput(&self) -> f64 {
        let s = self.read_time.as_secs_f64();
        if s > 0.0 {
            self.bytes_read as f64 / s
        } else {
            0.0
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

pub(crate) struct CacheState {
    pub policy: SlotPolicy,
    /// Staging buffers for reads not in flight.
    bufs: Vec<AlignedBuf>,
}

/// The expert cache of one model, shared by its sessions.
pub(crate) struct ExpertCache {
    pub slot_bytes: u64,
    pub slots_per_page: usize,
    pub pages: Vec<wgpu::Buffer>,
    slots: usize,
    /// Bytes of each staging buffer (the largest expert blob).
    staging_bytes: usize,
    state: Mutex<CacheState>,
    io: IoPool,
    totals: Mutex<CacheStats>,
    /// The slot of every (layer, expert) on the GPU (`u32::MAX` when not resident), read by
    /// the decode routing kernel. Writes keep it safe to read at any submit: an evicted
    /// expert's entry is cleared before its slot is overwritten, and a new expert's entry is
    /// set only after its data.
    pub table: wgpu::Buffer,
    /// Table entries per layer: the routed experts, then the shared expert's where it has
    /// a slot.
    table_stride: usize,
    /// Per layer, the fixed slot of its shared expert, if it has one.
    shared_slots: Vec<Option<usize>>,
}

/// The shared experts that ride in the cache, one fixed slot per MoE layer: their bytes
/// per layer, in the layer's expert layout (`None` for a layer whose shared expert does
/// not ride in the cache). The routing then treats a layer's shared
/// expert as one more choice (expert id `num_experts`, [`ExpertCache::shared_slot`]), so
/// it runs in the same dispatches as the routed experts.
pub(crate) type SharedBlobs<'a> = &'a dyn Fn(usize) -> Result<Option<Vec<u8>>>;

impl std::fmt::Debug for ExpertCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertCache")
            .field("slot_bytes", &self.slot_bytes)
            .field("slots", &self.slots)
            .field("pages", &self.pages.len())
            .field("shared", &self.shared_slots.iter().flatten().count())
            .finish()
    }
}

impl ExpertCache {
    /// A cache of `slots` slots for routed experts, each as large as the largest expert of
    /// `store` over `moe_layers`, evicting by `policy`, read by `io_threads` threads; with
    /// `shared`, one more fixed slot per MoE layer holding its shared expert.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &Gpu,
        store: Arc<dyn ExpertStore>,
        moe_layers: &[usize],
        (num_layers, num_experts): (usize, usize),
        (slots, page_bytes): (usize, Option<u64>),
        policy: CachePolicy,
        io_threads: usize,
        shared: Option<SharedBlobs<'_>>,
    ) -> Result<Self> {
        let mut largest = 0;
        for &l in moe_layers {
            let layout = store.layout(l).ok_or_else(|| {
                Error::InvalidArgument(format!("the expert store has no layout for MoE layer {l}"))
            })?;
            largest = largest.max(layout.bytes);
        }
        let slot_bytes = (largest as u64).div_ceil(SLOT_ALIGN) * SLOT_ALIGN;
        if slots == 0 {
            return Err(Error::InvalidArgument(
                "the expert cache needs at least one slot".into(),
            ));
        }
        if slot_bytes > gpu.max_binding {
            return Err(Error::DeviceLimit {
                what: "one expert cache slot (the largest expert)".into(),
                requested: slot_bytes,
                limit_name: "largest storage binding",
                limit: gpu.max_binding,
            });
        }
        let page_limit = page_bytes.map_or(gpu.max_binding, |b| b.min(gpu.max_binding));
        if slot_bytes > page_limit {
            return Err(Error::InvalidArgument(format!(
                "an expert cache page of {page_limit} bytes cannot hold one expert slot ({slot_bytes} bytes)"
            )));
        }
        let n_shared = if shared.is_some() {
            moe_layers.len()
        } else {
            0
        };
        let per_layer = num_experts + usize::from(shared.is_some());
        let total = slots + n_shared;
        let mut slots_per_page = ((page_limit / slot_bytes) as usize).min(total);
        // Pages of whole layers where a page holds one or more: a model preloaded layer by
        // layer then has each layer's experts (and its shared expert) in one page, so a
        // resident decode step runs each layer's expert kernels once instead of once per
        // page it straddles (8 of the 40 layers of Qwen3.5-35B-A3B straddled two pages on
        // an H100: 16 dispatches of ~630 per token).
        if slots_per_page < total && slots_per_page >= per_layer && num_experts > 0 {
            slots_per_page -= slots_per_page % per_layer;
        }
        let mut pages = Vec::new();
        let mut left = total;
        while left > 0 {
            let n = slots_per_page.min(left);
            pages.push(gpu.storage_buffer("expert cache page", n as u64 * slot_bytes));
            left -= n;
        }
        let mut table = vec![NOT_RESIDENT; num_layers * per_layer];
        let mut policy = SlotPolicy::new(policy, total, slots_per_page, moe_layers);
        let mut shared_slots = vec![None; num_layers];
        if let Some(blob) = shared {
            // Where a preload of every routed expert, layer by layer into the free slots
            // in order, leaves each layer's shared expert beside its routed ones (in its
            // page): after them. With fewer slots than that, at the end.
            let everything = slots >= moe_layers.len() * num_experts;
            for (i, &l) in moe_layers.iter().enumerate() {
                let slot = if everything {
                    i * per_layer + num_experts
                } else {
                    slots + i
                };
                let Some(bytes) = blob(l)? else { continue };
                if bytes.len() as u64 > slot_bytes {
                    return Err(Error::InvalidArgument(format!(
                        "the shared expert of layer {l} ({} bytes) does not fit an expert slot ({slot_bytes} bytes)",
                        bytes.len()
                    )));
                }
                let (page, local) = (slot / slots_per_page, slot % slots_per_page);
                gpu.queue
                    .write_buffer(&pages[page], local as u64 * slot_bytes, &bytes);
                policy.insert_fixed((l, num_experts), slot);
                table[l * per_layer + num_experts] = slot as u32;
                shared_slots[l] = Some(slot);
            }
        }
        let table = gpu.upload("expert slot table", bytemuck::cast_slice(&table));
        gpu.check()?;
        let io = IoPool::new(store, io_threads)?;
        Ok(ExpertCache {
            slot_bytes,
            slots_per_page,
            pages,
            slots,
            staging_bytes: largest,
            state: Mutex::new(CacheState {
                policy,
                bufs: Vec::new(),
            }),
            io,
            totals: Mutex::new(CacheStats::default()),
            table,
            table_stride: per_layer,
            shared_slots,
        })
    }

    fn set_table(&self, gpu: &Gpu, (layer, expert): (usize, usize), value: u32) {
        let at = ((layer * self.table_stride + expert) * 4) as u64;
        gpu.queue
            .write_buffer(&self.table, at, &value.to_le_bytes());
    }

    /// Slot-table entries per layer (the routing kernel's stride).
    pub fn table_stride(&self) -> usize {
        self.table_stride
    }

    /// The fixed slot of layer `l`'s shared expert, where it rides in the cache.
    pub fn shared_slot(&self, l: usize) -> Option<usize> {
        self.shared_slots.get(l).copied().flatten()
    }

    /// Whether the layers' shared experts ride in the cache as one more routing choice.
    pub fn has_shared(&self) -> bool {
        self.shared_slots.iter().any(Option::is_some)
    }

    /// GPU bytes of all slots, the shared experts' included: the pages' sizes.
    pub fn bytes(&self) -> u64 {
        self.pages.iter().map(wgpu::Buffer::size).sum()
    }

    /// The policy choosing what to evict.
    pub fn policy(&self) -> CachePolicy {
        self.lock().policy.kind()
    }

    /// Wall time during which at least one expert read was in flight, since the cache was
    /// made.
    pub fn storage_busy_time(&self) -> Duration {
        self.io.busy_time()
    }

    /// Marks the experts `keys` as just used, as a step that ran without a routing
    /// readback used them; returns how many are (still) resident.
    pub fn touch(&self, keys: &[(usize, usize)]) -> u64 {
        let mut state = self.lock();
        keys.iter()
            .filter(|&&k| state.policy.lookup(k).is_some())
            .count() as u64
    }

    /// Bytes of one slot.
    pub fn slot_size(slot_bytes_of_largest_expert: usize) -> u64 {
        (slot_bytes_of_largest_expert as u64).div_ceil(SLOT_ALIGN) * SLOT_ALIGN
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn lock(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (page, slot within the page) of a global slot index.
    pub fn locate(&self, slot: usize) -> (usize, usize) {
        (slot / self.slots_per_page, slot % self.slots_per_page)
    }

    /// Makes the experts `keys` resident and returns their slots, all pinned together.
    /// `keys.len()` must not exceed the slot count. Misses are read from `store` by the I/O
    /// threads, all at once up to the queue depth, and each upload is submitted as its read
    /// lands while other reads are in flight (the last is left to the caller's submit); the
    /// caller must submit the GPU work that uses the slots before dropping `state`. On a
    /// failed read, the slots being filled are freed and the first error is returned.
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
        stats.hits += pinned.len() as u64;
        // Everything that calls into the store's code (which may fail or panic) happens
        // before any slot changes hands: blob sizes, and the prefetch hint (a panicking
        // hint is ignored).
        let mut sizes = Vec::with_capacity(keys.len());
        for &(layer, expert) in keys {
            let layout = store.layout(layer).ok_or_else(|| Error::ExpertRead {
                layer,
                expert,
                reason: "the store has no layout for this layer".into(),
                cause: None,
            })?;
            sizes.push(layout.bytes.min(self.staging_bytes));
        }
        if let Some(&(layer, _)) = keys.first() {
            let experts: Vec<usize> = keys
                .iter()
                .zip(&slots)
                .filter(|(_, s)| s.is_none())
                .map(|(k, _)| k.1)
                .collect();
            if !experts.is_empty() && keys.iter().all(|k| k.0 == layer) {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    store.prefetch(layer, &experts)
                }));
            }
        }
        // Assign a slot to every miss first, so all reads can be in flight together.
        let mut misses: Vec<(usize, usize)> = Vec::new(); // (index in keys, slot)
        for (i, &key) in keys.iter().enumerate() {
            if slots[i].is_some() {
                continue;
            }
            let Some((slot, evicted)) = state.policy.insert(key, &pinned) else {
                for &(_, s) in &misses {
                    state.policy.clear(s);
                }
                return Err(Error::InvalidArgument(format!(
                    "expert cache has {} slots, fewer than the {} experts needed at once",
                    state.policy.slots(),
                    keys.len()
                )));
            };
            if let Some(old) = evicted {
                tracing::trace!(layer = old.0, expert = old.1, slot, "expert evicted");
                stats.evictions += 1;
                self.set_table(gpu, old, NOT_RESIDENT);
            }
            pinned.push(slot);
            slots[i] = Some(slot);
            misses.push((i, slot));
        }
        if misses.is_empty() {
            return Ok(slots.into_iter().flatten().collect());
        }
        while state.bufs.len() < self.io.threads() {
            state.bufs.push(AlignedBuf::new(self.staging_bytes));
        }
        let t0 = Instant::now();
        let (tx, rx) = channel::<Done>();
        let mut written = vec![false; misses.len()];
        let mut next = 0;
        let mut in_flight = 0;
        let mut error: Option<Error> = None;
        loop {
            while error.is_none() && next < misses.len() {
                let Some(buf) = state.bufs.pop() else { break };
                let (layer, expert) = keys[misses[next].0];
                let job = Job {
                    layer,
                    expert,
                    tag: next,
                    buf,
                    reply: tx.clone(),
                };
                match self.io.submit(job) {
                    Ok(()) => {
                        next += 1;
                        in_flight += 1;
                    }
                    Err(job) => {
                        state.bufs.push(job.buf);
                        error = Some(Error::IoThreads("the I/O threads have stopped".into()));
                    }
                }
            }
            if in_flight == 0 {
                break;
            }
            let Ok(done) = rx.recv() else {
                error.get_or_insert_with(|| Error::IoThreads("an I/O thread died".into()));
                break;
            };
            in_flight -= 1;
            match done.result {
                Ok(()) => {
                    let (i, slot) = misses[done.tag];
                    let (page, local) = self.locate(slot);
                    gpu.queue.write_buffer(
                        &self.pages[page],
                        local as u64 * self.slot_bytes,
                        &done.buf[..sizes[i]],
                    );
                    self.set_table(gpu, keys[i], slot as u32);
                    // Other reads still to come: hand this upload to the GPU now, so that
                    // its copy overlaps them instead of waiting for the caller's submit.
                    if (in_flight > 0 || next < misses.len()) && early_uploads() {
                        gpu.queue.submit([]);
                    }
                    tracing::trace!(
                        layer = keys[i].0,
                        expert = keys[i].1,
                        slot,
                        bytes = sizes[i],
                        "expert cache miss read"
                    );
                    written[done.tag] = true;
                    stats.misses += 1;
                    stats.bytes_read += sizes[i] as u64;
                }
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
            state.bufs.push(done.buf);
        }
        stats.read_time += t0.elapsed();
        if let Some(e) = error {
            for (k, &(_, slot)) in misses.iter().enumerate() {
                if !written[k] {
                    state.policy.clear(slot);
                }
            }
            return Err(e);
        }
        Ok(slots.into_iter().flatten().collect())
    }

    /// Adds a pass's counters to the model-wide totals.
    pub fn record(&self, s: &CacheStats) {
        let mut t = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        t.add(s);
    }

    pub fn stats(&self) -> CacheStats {
        *self.totals.lock().unwrap_or_else(|p| p.into_inner())
    }
}
