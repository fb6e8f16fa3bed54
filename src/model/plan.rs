//! [`MemoryPlan`]: what a model and its sessions will take on the GPU, computed from
//! `config.json` and the checkpoint's headers before anything is loaded.

use std::sync::Arc;

use super::{CacheSize, Opened};
use crate::cache::ExpertCache;
use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::engine::sizes::{resident_sizes, ResidentSizes};
use crate::engine::state::{SessionLayout, SessionParams};
use crate::error::{Error, Result};
use crate::gpu::binding_limit;

/// The GPU memory a model will take, computed by [`ModelBuilder::plan`] from
/// `config.json`, the checkpoint's headers and the expert store's layouts (no weight data
/// is read, nothing is allocated), for the builder's options and a device's limits.
///
/// Its numbers are what [`ModelBuilder::build`] then allocates, to the byte:
/// [`resident_weight_bytes`](Self::resident_weight_bytes) is
/// [`Model::resident_weight_bytes`], [`expert_cache_bytes`](Self::expert_cache_bytes) is
/// [`Model::expert_cache_bytes`], and a [`session`](Self::session)'s
/// [`SessionPlan`] gives [`Session::state_bytes`](crate::Session::state_bytes) and
/// [`Session::scratch_bytes`](crate::Session::scratch_bytes). `build` runs the same plan
/// first (so a buffer past a device limit fails before any weight is read) and allocates
/// the sizes it gives; a load that differed would be an [`Error::Internal`].
///
/// A plan fails with [`Error::DeviceLimit`] naming the first buffer that does not fit the
/// device: one row of a weight matrix or one expert slot larger than a storage binding,
/// a session's KV cache of one layer for too long a context, ...
///
/// ```no_run
/// # fn main() -> moestream::Result<()> {
/// let builder = moestream::Model::builder("models/Qwen3-30B-A3B-4bit").expert_cache_bytes(4 << 30);
/// // On an iPhone whose buffers are capped at 1 GiB, whatever the adapter reports:
/// let mut limits = moestream::wgpu::Limits::default();
/// limits.max_buffer_size = 1 << 30;
/// limits.max_storage_buffer_binding_size = 1 << 30;
/// let plan = builder.plan_with_limits(&limits)?;
/// let session = plan.session(8192)?;
/// println!(
///     "weights {} MiB, expert cache {} MiB ({} experts), 8k-token session {} MiB",
///     plan.resident_weight_bytes() >> 20,
///     plan.expert_cache_bytes() >> 20,
///     plan.expert_cache_slots(),
///     session.bytes() >> 20,
/// );
/// # Ok(()) }
/// ```
///
/// [`ModelBuilder::plan`]: crate::ModelBuilder::plan
/// [`ModelBuilder::build`]: crate::ModelBuilder::build
/// [`Model::resident_weight_bytes`]: crate::Model::resident_weight_bytes
/// [`Model::expert_cache_bytes`]: crate::Model::expert_cache_bytes
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    cfg: Arc<ModelConfig>,
    resident: ResidentSizes,
    cache: Option<CacheGeometry>,
    total_expert_bytes: u64,
    session: SessionParams,
}

/// A session's GPU memory for a context length ([`MemoryPlan::session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionPlan {
    /// The context length planned for.
    pub max_context: usize,
    /// The sequence state: KV caches of the attention layers (of latent attention: the
    /// latent caches; of a short sliding window: its ring), and the three copies of the
    /// convolution and recurrent states of linear-attention layers. What
    /// [`Session::state_bytes`](crate::Session::state_bytes) reports.
    pub state_bytes: u64,
    /// The KV and latent caches alone (part of `state_bytes`), in the model's KV cache
    /// dtype: [`Session::kv_cache_bytes`](crate::Session::kv_cache_bytes).
    pub kv_cache_bytes: u64,
    /// The scratch buffers: one pass's activations, the RoPE tables, the logits and their
    /// readback: [`Session::scratch_bytes`](crate::Session::scratch_bytes).
    pub scratch_bytes: u64,
    /// Tokens one prefill pass takes (at most
    /// [`MAX_PASS_TOKENS`](crate::session::MAX_PASS_TOKENS); fewer where a pass's
    /// activations would not fit one binding).
    pub tokens_per_pass: usize,
    /// The session's largest single buffer.
    pub largest_buffer: PlannedBuffer,
}

impl SessionPlan {
    /// All the session allocates: `state_bytes + scratch_bytes`.
    pub fn bytes(&self) -> u64 {
        self.state_bytes.saturating_add(self.scratch_bytes)
    }
}

/// One GPU buffer of a plan: what it holds and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlannedBuffer {
    /// What it holds (a tensor's name, "an expert cache page", a session buffer, ...).
    pub what: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// The expert cache's slots and pages, as `ExpertCache::new` lays them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CacheGeometry {
    /// Slots for routed experts.
    pub slots: usize,
    /// Fixed slots of shared experts (one per MoE layer where they ride in the cache).
    pub shared: usize,
    /// Bytes of one slot (the largest expert, 256-byte aligned).
    pub slot_bytes: u64,
    /// Slots of each page, in order.
    pub pages: Vec<usize>,
}

impl CacheGeometry {
    /// Bytes of all pages.
    pub fn bytes(&self) -> u64 {
        self.pages
            .iter()
            .map(|&n| (n as u64).saturating_mul(self.slot_bytes))
            .fold(0, u64::saturating_add)
    }

    /// The pages of a cache of `slots` routed slots of `largest`-byte experts (and with
    /// `shared`, one fixed slot per MoE layer): whole slots per page of at most
    /// `page_bytes` (and a binding), whole layers per page where a page holds one or
    /// more. The checks and layout of `ExpertCache::new`.
    fn new(
        largest: usize,
        (slots, page_bytes): (usize, Option<u64>),
        (moe_layers, num_experts, shared): (usize, usize, bool),
        (max_binding, limit_name): (u64, &'static str),
    ) -> Result<Self> {
        let slot_bytes = ExpertCache::slot_size(largest);
        if slots == 0 {
            return Err(Error::InvalidArgument(
                "the expert cache needs at least one slot".into(),
            ));
        }
        if slot_bytes > max_binding {
            return Err(Error::DeviceLimit {
                what: "one expert cache slot (the largest expert)".into(),
                requested: slot_bytes,
                limit_name,
                limit: max_binding,
            });
        }
        let page_limit = page_bytes.map_or(max_binding, |b| b.min(max_binding));
        if slot_bytes > page_limit {
            return Err(Error::InvalidArgument(format!(
                "an expert cache page of {page_limit} bytes cannot hold one expert slot ({slot_bytes} bytes)"
            )));
        }
        let n_shared = if shared { moe_layers } else { 0 };
        let per_layer = num_experts + usize::from(shared);
        let total = slots.saturating_add(n_shared);
        let mut per_page = usize::try_from(page_limit / slot_bytes)
            .unwrap_or(usize::MAX)
            .min(total);
        if per_page < total && per_page >= per_layer && num_experts > 0 {
            per_page -= per_page % per_layer;
        }
        let mut pages = Vec::with_capacity(total.div_ceil(per_page.max(1)));
        let mut left = total;
        while left > 0 {
            let n = per_page.min(left);
            pages.push(n);
            left -= n;
        }
        Ok(CacheGeometry {
            slots,
            shared: n_shared,
            slot_bytes,
            pages,
        })
    }
}

impl MemoryPlan {
    /// The plan of `opened` with the builder's cache options and KV dtype on a device of
    /// `limits`.
    pub(super) fn new(
        opened: &Opened,
        (cache_size, page_bytes): (CacheSize, Option<u64>),
        kv_dtype: DType,
        limits: &wgpu::Limits,
    ) -> Result<Self> {
        let cfg = &opened.cfg;
        let store = opened.store.as_ref();
        let binding = binding_limit(limits);
        let resident = resident_sizes(cfg, &opened.ckpt, store, binding)?;
        let moe_layers = cfg.moe_layers();
        let total_experts = moe_layers.len().saturating_mul(cfg.num_experts);
        let mut largest = 0;
        let mut total_expert_bytes = 0u64;
        for &l in &moe_layers {
            let bytes = store.layout(l).map_or(0, |x| x.bytes);
            largest = largest.max(bytes);
            total_expert_bytes = total_expert_bytes
                .saturating_add((bytes as u64).saturating_mul(cfg.num_experts as u64));
        }
        let cache = if total_experts > 0 {
            let slot = ExpertCache::slot_size(largest);
            let slots = match cache_size {
                CacheSize::Minimal => cfg.num_experts_per_tok,
                CacheSize::Bytes(budget) => {
                    let n = usize::try_from(budget / slot).unwrap_or(usize::MAX);
                    if n == 0 {
                        return Err(Error::InvalidArgument(format!(
                            "expert cache budget of {budget} bytes is smaller than one expert slot ({slot} bytes)"
                        )));
                    }
                    n
                }
            }
            .min(total_experts);
            let shared = !resident.cached_shared.is_empty();
            Some(CacheGeometry::new(
                largest,
                (slots, page_bytes),
                (moe_layers.len(), cfg.num_experts, shared),
                binding,
            )?)
        } else {
            None
        };
        let choices = cfg.num_experts_per_tok.max(1)
            + usize::from(cache.as_ref().is_some_and(|c| c.shared > 0));
        Ok(MemoryPlan {
            cfg: Arc::new(cfg.clone()),
            resident,
            session: SessionParams {
                kv_dtype,
                choices,
                cache_pages: cache.as_ref().map_or(1, |c| c.pages.len()),
                binding,
                max_buffer: limits.max_buffer_size,
            },
            cache,
            total_expert_bytes,
        })
    }

    /// The expert cache's layout (`None`: a model without experts).
    pub(crate) fn cache(&self) -> Option<&CacheGeometry> {
        self.cache.as_ref()
    }

    /// The sizes of a session of `max_context` tokens (what `Session::new` allocates).
    pub(crate) fn session_layout(&self, max_context: usize) -> Result<SessionLayout> {
        SessionLayout::new(&self.cfg, &self.session, max_context)
    }

    /// Bytes of the resident (non-expert) weights on the GPU: every matrix (in its stored
    /// format, split into chunks that each fit a binding), norm weight, bias and constant
    /// buffer. [`Model::resident_weight_bytes`](crate::Model::resident_weight_bytes) after
    /// the load.
    pub fn resident_weight_bytes(&self) -> u64 {
        self.resident.bytes
    }

    /// Bytes of the GPU expert cache: its slots for routed experts and the fixed slots of
    /// shared experts that ride in it ([`Model::expert_cache_bytes`](crate::Model::expert_cache_bytes)).
    pub fn expert_cache_bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, CacheGeometry::bytes)
    }

    /// Slots for routed experts in the expert cache
    /// ([`Model::expert_cache_slots`](crate::Model::expert_cache_slots)).
    pub fn expert_cache_slots(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.slots)
    }

    /// Bytes of one expert slot: the largest expert of the model, 256-byte aligned (0
    /// without experts).
    pub fn expert_slot_bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.slot_bytes)
    }

    /// Bytes of all experts of the model ([`Model::total_expert_bytes`](crate::Model::total_expert_bytes)):
    /// what a cache holding every expert would take, before slot alignment.
    pub fn total_expert_bytes(&self) -> u64 {
        self.total_expert_bytes
    }

    /// The model's GPU memory: resident weights and the expert cache (sessions apart;
    /// small fixed buffers, such as the expert slot table of 4 bytes per expert, apart).
    pub fn model_bytes(&self) -> u64 {
        self.resident_weight_bytes()
            .saturating_add(self.expert_cache_bytes())
    }

    /// The model's largest single buffer: a chunk of a resident matrix or an expert cache
    /// page.
    pub fn largest_buffer(&self) -> PlannedBuffer {
        let resident = self
            .resident
            .largest
            .clone()
            .map(|(what, bytes)| PlannedBuffer { what, bytes });
        let page = self.cache.as_ref().and_then(|c| {
            c.pages.iter().max().map(|&n| PlannedBuffer {
                what: "an expert cache page".into(),
                bytes: (n as u64).saturating_mul(c.slot_bytes),
            })
        });
        [resident, page]
            .into_iter()
            .flatten()
            .max_by_key(|b| b.bytes)
            .unwrap_or(PlannedBuffer {
                what: String::new(),
                bytes: 0,
            })
    }

    /// The largest storage binding planned against: the smaller of the device's
    /// `max_storage_buffer_binding_size` and `max_buffer_size`, rounded down to 16 bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.session.binding.0
    }

    /// The element type of the sessions' KV caches.
    pub fn kv_cache_dtype(&self) -> DType {
        self.session.kv_dtype
    }

    /// A session of `max_context` tokens: its state and scratch bytes. An
    /// [`Error::DeviceLimit`] if one of its buffers would not fit the device (a layer's
    /// KV cache for too long a context), as [`Model::session`](crate::Model::session)
    /// would fail; [`Error::InvalidArgument`] for a `max_context` of 0.
    pub fn session(&self, max_context: usize) -> Result<SessionPlan> {
        let layout = self.session_layout(max_context)?;
        let (what, bytes) = layout.largest();
        Ok(SessionPlan {
            max_context,
            state_bytes: layout.state_bytes(),
            kv_cache_bytes: layout.kv_bytes(),
            scratch_bytes: layout.scratch.bytes(),
            tokens_per_pass: layout.scratch.cap,
            largest_buffer: PlannedBuffer { what, bytes },
        })
    }
}
