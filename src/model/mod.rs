//! [`Model`]: a checkpoint opened on the GPU, shared by any number of [`Session`]s, and
//! what goes with loading one: the [`ModelBuilder`] and its defaults (`DEFAULT_*`), the
//! progress it reports ([`LoadProgress`]) (`builder.rs`); the configuration, checkpoint
//! headers and expert store opened and checked first (`open.rs`); and the GPU memory a
//! model and its sessions will take, computed before anything is allocated
//! ([`MemoryPlan`], [`SessionPlan`], [`PlannedBuffer`]; [`ModelBuilder::plan`]; `plan.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cache::{CachePolicy, CacheStats, ExpertCache};
use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::engine::weights::Weights;
use crate::error::Result;
use crate::gpu::{AdapterSummary, Gpu};
use crate::session::Session;
use crate::store::ExpertStore;

mod builder;
mod open;
mod plan;

pub(crate) use builder::CacheSize;
pub use builder::{
    LoadProgress, ModelBuilder, DEFAULT_EXPERT_CACHE_BYTES, DEFAULT_IO_THREADS,
    DEFAULT_READBACK_SPIN,
};
pub(crate) use open::Opened;
pub use plan::{MemoryPlan, PlannedBuffer, SessionPlan};

pub(crate) struct ModelInner {
    pub dir: PathBuf,
    pub cfg: ModelConfig,
    pub gpu: Gpu,
    pub weights: Weights,
    pub store: Arc<dyn ExpertStore>,
    pub cache: Option<ExpertCache>,
    /// Decode rows stay f32 (no 8+8-bit rows are written or read): asked for with
    /// [`ModelBuilder::f32_activations`], defaulted on adapters without integer dot
    /// products, or a model without 2- to 6-bit matrices.
    pub f32_activations: bool,
    /// The sessions' KV cache elements: f32 or f16 ([`ModelBuilder::kv_cache_dtype`]).
    pub kv_cache_dtype: DType,
    /// The memory plan the load followed; sessions are sized by it.
    pub plan: MemoryPlan,
    /// Bytes of GPU memory the resident weights took.
    pub resident_bytes: u64,
}

/// A Qwen3-MoE checkpoint on the GPU: all non-expert weights resident, experts streamed
/// from an [`ExpertStore`] through a bounded GPU cache.
///
/// `Model` is cheap to clone (it is a handle) and `Send + Sync`: any number of
/// [`Session`]s, on any threads, share its weights and its expert cache.
///
/// ```no_run
/// # fn main() -> moestream::Result<()> {
/// let model = moestream::Model::builder("path/to/Qwen3-30B-A3B")
///     .expert_cache_bytes(8 << 30)
///     .build()?;
/// let mut session = model.session(4096)?;
/// let logits = session.prefill(&[9707, 11, 1879])?;
/// let next = logits
///     .iter()
///     .enumerate()
///     .max_by(|a, b| a.1.total_cmp(b.1))
///     .map(|(i, _)| i as u32)
///     .unwrap_or(0);
/// let logits = session.step(next)?;
/// # let _ = logits; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Model {
    pub(crate) inner: Arc<ModelInner>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("dir", &self.inner.dir)
            .field("adapter", &self.inner.gpu.summary.name)
            .finish()
    }
}

impl Model {
    /// Options for opening the checkpoint in `dir`.
    pub fn builder(dir: impl AsRef<Path>) -> ModelBuilder {
        ModelBuilder::new(dir.as_ref())
    }

    /// Opens the checkpoint in `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Model> {
        Model::builder(dir).build()
    }

    /// A new session with room for `max_context` tokens.
    pub fn session(&self, max_context: usize) -> Result<Session> {
        Session::new(self.clone(), max_context)
    }

    /// The element type of the sessions' KV caches ([`ModelBuilder::kv_cache_dtype`]).
    pub fn kv_cache_dtype(&self) -> DType {
        self.inner.kv_cache_dtype
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.inner.cfg
    }

    /// The adapter the model runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.inner.gpu.summary
    }

    /// The expert store.
    pub fn expert_store(&self) -> &Arc<dyn ExpertStore> {
        &self.inner.store
    }

    /// Expert-cache counters summed over every session of this model.
    pub fn cache_stats(&self) -> CacheStats {
        self.inner
            .cache
            .as_ref()
            .map(ExpertCache::stats)
            .unwrap_or_default()
    }

    /// Loads experts into the GPU cache ahead of use, layer by layer, until the cache is full
    /// or every expert is resident, and returns what was read. With a budget that holds
    /// every expert, decoding then never waits on storage and routes on the GPU without a
    /// readback per layer.
    pub fn preload_experts(&self) -> Result<CacheStats> {
        let inner = &*self.inner;
        let Some(cache) = &inner.cache else {
            return Ok(CacheStats::default());
        };
        let mut stats = CacheStats::default();
        let keys: Vec<(usize, usize)> = inner
            .cfg
            .moe_layers()
            .into_iter()
            .flat_map(|l| (0..inner.cfg.num_experts).map(move |e| (l, e)))
            .take(cache.slots())
            .collect();
        let mut state = cache.lock();
        for group in keys.chunks(inner.cfg.num_experts.max(1)) {
            cache.acquire(
                &inner.gpu,
                &mut state,
                inner.store.as_ref(),
                group,
                &mut stats,
            )?;
        }
        drop(state);
        // Apply the queued uploads now rather than at the first step.
        inner.gpu.queue.submit(None);
        inner.gpu.check()?;
        cache.record(&stats);
        Ok(stats)
    }

    /// The expert cache's eviction policy ([`ModelBuilder::expert_cache_policy`]).
    pub fn expert_cache_policy(&self) -> CachePolicy {
        self.inner
            .cache
            .as_ref()
            .map_or_else(CachePolicy::default, ExpertCache::policy)
    }

    /// Wall time, since the model was built, during which at least one expert read from
    /// the store was in flight (all sessions together): over a stretch of decoding, its
    /// share of the wall time is the storage's busy fraction (1 when reads never pause,
    /// low when the GPU or the host keeps storage waiting).
    pub fn storage_busy_time(&self) -> std::time::Duration {
        self.inner
            .cache
            .as_ref()
            .map_or(std::time::Duration::ZERO, ExpertCache::storage_busy_time)
    }

    /// Number of expert slots for routed experts in the GPU cache (0 for a model without
    /// experts). Shared experts stored like the routed ones take one more slot per MoE
    /// layer, counted in [`Model::expert_cache_bytes`] but not here.
    pub fn expert_cache_slots(&self) -> usize {
        self.inner.cache.as_ref().map_or(0, ExpertCache::slots)
    }

    /// Bytes of GPU memory the expert cache takes (its pages: the slots of routed experts
    /// and the fixed slots of shared experts).
    pub fn expert_cache_bytes(&self) -> u64 {
        self.inner.cache.as_ref().map_or(0, ExpertCache::bytes)
    }

    /// Bytes of all experts of the model (what a fully resident cache would hold).
    pub fn total_expert_bytes(&self) -> u64 {
        let cfg = &self.inner.cfg;
        cfg.moe_layers()
            .iter()
            .filter_map(|&l| self.inner.store.layout(l))
            .map(|layout| layout.bytes as u64 * cfg.num_experts as u64)
            .sum()
    }

    /// Bytes of GPU memory the resident (non-expert) weights take: every buffer of their
    /// matrices, norm weights, biases and constants
    /// ([`MemoryPlan::resident_weight_bytes`] predicted it).
    pub fn resident_weight_bytes(&self) -> u64 {
        self.inner.resident_bytes
    }

    /// The memory plan the model was loaded by (for this model's options and device):
    /// e.g. [`MemoryPlan::session`] to size a session before creating it.
    pub fn memory_plan(&self) -> &MemoryPlan {
        &self.inner.plan
    }
}
