//! What a session owns on the GPU: the per-layer sequence state (a KV cache per attention
//! layer, a recurrent state per linear-attention layer), allocated once per session, and
//! the layout both it and the scratch buffers of one pass ([`super::scratch`]) follow.

use crate::arch::Mixer;
use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::{storage_size, Gpu};
use crate::session::MAX_PASS_TOKENS;

/// Copies of each recurrent state a session keeps ([`LayerState::Recurrent`]): the
/// committed one, the one the pass in flight writes, and the one a step run ahead of its
/// call writes.
pub(crate) const STATE_COPIES: usize = 3;

/// The sequence state of one decoder layer.
pub(crate) enum LayerState {
    /// Keys and values, each `[rows, kv_heads, head_dim]` of the model's KV cache dtype
    /// (f32 or f16): `rows` = `max_context`, or for a sliding-window layer whose window
    /// is short a ring ([`KvRing`]) of `2 * ring` rows.
    Kv {
        k: wgpu::Buffer,
        v: wgpu::Buffer,
        ring: Option<KvRing>,
    },
    /// A Gated DeltaNet layer's convolution state (`[conv_kernel - 1, channels]` f32, the
    /// last inputs) and recurrent state (`[value_heads, key_dim, value_dim]` f32), in
    /// [`STATE_COPIES`] copies used in turn: a pass's kernels read the committed copy
    /// (nothing at position 0) and write the next, which becomes the committed one only
    /// when the pass succeeds ([`SequenceState::commit`]). Unlike a KV cache, a recurrent
    /// state cannot be rewound, so a failed or discarded pass (an expert read error, a
    /// resident step that found an expert missing) must leave it untouched; a third copy
    /// lets a decode step run ahead of its call (reading the copy the step before it
    /// writes, writing the one after) while that step may still be discarded.
    Recurrent {
        conv: [wgpu::Buffer; STATE_COPIES],
        state: [wgpu::Buffer; STATE_COPIES],
    },
    /// A latent-attention layer's cache, `[max_context, kv_lora_rank + qk_rope_head_dim]`
    /// of the KV cache dtype: per token its normalized latent and rotated RoPE key.
    Latent { cache: wgpu::Buffer },
}

/// The KV cache of a sliding-window layer that keeps only the keys its window can still
/// see: `cap` = window + the most tokens a pass takes - 1 positions (rounded up to a
/// multiple of 64, [`ring_cap`]), each written twice
/// (rows `p % cap` and `p % cap + cap`, [`Kernel::HeadNormRope`]'s `ring`). The keys a
/// pass reads (from its first query's window start `lo` to its last token) are then
/// contiguous rows from position `shift = cap * (lo / cap)`, which the pass subtracts from
/// every position it gives the attention kernels (their masks see only differences).
///
/// [`Kernel::HeadNormRope`]: crate::gpu::kernels::Kernel::HeadNormRope
#[derive(Debug, Clone, Copy)]
pub(crate) struct KvRing {
    /// Positions held.
    pub cap: usize,
    /// The layer's window.
    pub window: usize,
}

/// The positions a sliding-window ring holds: the window and the most tokens a pass takes
/// less one, rounded up to a multiple of the tiled attention's 64 keys per tile, so that
/// every shift is one too and a query's tiles hold the same positions in every pass
/// (`kernels/attention_tiled.wgsl`; split-invariant prefill, [`Pass::decode`]).
///
/// [`Pass::decode`]: super::pass::Pass::decode
fn ring_cap(window: usize, max_context: usize) -> usize {
    window
        .saturating_add(MAX_PASS_TOKENS.min(max_context) - 1)
        .next_multiple_of(64)
}

impl KvRing {
    /// The position a pass starting at `pos0` subtracts from its positions.
    pub fn shift(&self, pos0: usize) -> usize {
        let lo = (pos0 + 1).saturating_sub(self.window);
        self.cap * (lo / self.cap)
    }
}

/// The per-layer sequence state of a session, as the model's plan says.
pub(crate) struct SequenceState {
    pub layers: Vec<LayerState>,
    /// Which copy of the recurrent states is committed (below [`STATE_COPIES`]).
    pub cur: usize,
    /// The positions a KV or latent cache holds (rings apart).
    pub max_context: usize,
}

/// The size of one layer's sequence state ([`LayerState`]), before allocation.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LayerStateSize {
    /// Bytes of each of the keys and values buffers.
    Kv { bytes: u64, ring: Option<KvRing> },
    /// Bytes of each copy of the convolution and recurrent states.
    Recurrent { conv: u64, state: u64 },
    /// Bytes of the latent cache.
    Latent { bytes: u64 },
}

/// What a session on a model allocates, from the model's plan alone: the sizes of its
/// per-layer sequence state and of its scratch buffers for a context of `max_context`
/// tokens. [`SequenceState::new`] and [`Scratch::new`] allocate exactly these, and the
/// memory plan reports them, so the two cannot disagree.
#[derive(Debug, Clone)]
pub(crate) struct SessionLayout {
    pub max_context: usize,
    pub layers: Vec<LayerStateSize>,
    pub scratch: ScratchLayout,
}

/// What a session's sizes depend on besides the config and the context length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionParams {
    /// The KV caches' element type.
    pub kv_dtype: DType,
    /// Expert choices per token: `num_experts_per_tok`, one more where shared experts
    /// ride in the expert cache.
    pub choices: usize,
    /// Buffers ("pages") of the expert cache (1 without one).
    pub cache_pages: usize,
    /// The largest storage binding and the wgpu limit that sets it.
    pub binding: (u64, &'static str),
    /// The device's `max_buffer_size`.
    pub max_buffer: u64,
}

/// `a * b` in u64, saturating: a size that saturates fails the limit checks instead of
/// wrapping around.
pub(super) fn mul(a: usize, b: usize) -> u64 {
    (a as u64).saturating_mul(b as u64)
}

impl SessionParams {
    /// An error unless a storage buffer of `bytes` fits one binding.
    pub(super) fn fits(&self, what: impl FnOnce() -> String, bytes: u64) -> Result<()> {
        if bytes > self.binding.0 {
            return Err(Error::DeviceLimit {
                what: what(),
                requested: bytes,
                limit_name: self.binding.1,
                limit: self.binding.0,
            });
        }
        Ok(())
    }
}

impl SessionLayout {
    /// The sizes of a session of `max_context` tokens; a [`Error::DeviceLimit`] naming the
    /// first buffer that would not fit one binding, before anything is allocated.
    pub fn new(cfg: &ModelConfig, p: &SessionParams, max_context: usize) -> Result<Self> {
        if max_context == 0 {
            return Err(Error::InvalidArgument(
                "max_context must be at least 1".into(),
            ));
        }
        let kv_dtype = p.kv_dtype;
        let mut layers = Vec::with_capacity(cfg.layers.len());
        for (l, plan) in cfg.layers.iter().enumerate() {
            layers.push(match &plan.mixer {
                Mixer::Mla(spec) => {
                    let width = spec.cache_width();
                    if kv_dtype == DType::F16 && width % 8 != 0 {
                        return Err(Error::InvalidArgument(format!(
                            "layer {l}: an f16 latent cache needs kv_lora_rank + qk_rope_head_dim ({width}) to be a multiple of 8"
                        )));
                    }
                    let bytes = mul(max_context, width).saturating_mul(kv_dtype.size() as u64);
                    p.fits(|| format!("the latent cache of layer {l} ({max_context} tokens)"), bytes)?;
                    LayerStateSize::Latent { bytes }
                }
                Mixer::Attention(a) => {
                    // A sliding window shorter than the context: a ring of its keys.
                    let ring = a
                        .sliding_window
                        .map(|window| KvRing {
                            cap: ring_cap(window, max_context),
                            window,
                        })
                        .filter(|r| r.cap.saturating_mul(2) < max_context);
                    let rows = ring.map_or(max_context, |r| 2 * r.cap);
                    let bytes = mul(rows, a.kv_heads * a.head_dim)
                        .saturating_mul(kv_dtype.size() as u64);
                    p.fits(|| format!("the KV cache of layer {l} ({max_context} tokens)"), bytes)?;
                    LayerStateSize::Kv { bytes, ring }
                }
                Mixer::LinearAttention(la) => {
                    let conv = mul(la.conv_state_floats(), 4);
                    let state = mul(la.state_floats(), 4);
                    p.fits(|| format!("the recurrent state of layer {l}"), state)?;
                    p.fits(|| format!("the convolution state of layer {l}"), conv)?;
                    LayerStateSize::Recurrent { conv, state }
                }
            });
        }
        Ok(SessionLayout {
            max_context,
            layers,
            scratch: ScratchLayout::new(cfg, p, max_context)?,
        })
    }

    /// GPU bytes of the KV and latent caches ([`SequenceState::kv_bytes`]).
    pub fn kv_bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|s| match *s {
                LayerStateSize::Kv { bytes, .. } => 2 * storage_size(bytes),
                LayerStateSize::Latent { bytes } => storage_size(bytes),
                LayerStateSize::Recurrent { .. } => 0,
            })
            .fold(0, u64::saturating_add)
    }

    /// GPU bytes of the sequence state ([`SequenceState::bytes`]).
    pub fn state_bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|s| match *s {
                LayerStateSize::Kv { bytes, .. } => 2 * storage_size(bytes),
                LayerStateSize::Latent { bytes } => storage_size(bytes),
                LayerStateSize::Recurrent { conv, state } => {
                    STATE_COPIES as u64 * (storage_size(conv) + storage_size(state))
                }
            })
            .fold(0, u64::saturating_add)
    }

    /// The largest single buffer of the session: what it is and its bytes.
    pub fn largest(&self) -> (String, u64) {
        let mut best = self.scratch.largest();
        for (l, s) in self.layers.iter().enumerate() {
            let (what, bytes) = match *s {
                LayerStateSize::Kv { bytes, .. } => ("KV cache (keys or values)", bytes),
                LayerStateSize::Latent { bytes } => ("latent cache", bytes),
                LayerStateSize::Recurrent { conv, state } => (
                    "recurrent state",
                    storage_size(conv).max(storage_size(state)),
                ),
            };
            let bytes = storage_size(bytes);
            if bytes > best.1 {
                best = (format!("the {what} of layer {l}"), bytes);
            }
        }
        best
    }
}

impl SequenceState {
    /// Allocates every layer's state as `layout` says.
    pub fn new(gpu: &Gpu, layout: &SessionLayout) -> SequenceState {
        let layers = layout
            .layers
            .iter()
            .map(|s| match *s {
                LayerStateSize::Latent { bytes } => LayerState::Latent {
                    cache: gpu.storage_buffer("latent cache", bytes),
                },
                LayerStateSize::Kv { bytes, ring } => LayerState::Kv {
                    k: gpu.storage_buffer("k cache", bytes),
                    v: gpu.storage_buffer("v cache", bytes),
                    ring,
                },
                LayerStateSize::Recurrent { conv, state } => LayerState::Recurrent {
                    conv: [(); STATE_COPIES].map(|_| gpu.storage_buffer("conv state", conv)),
                    state: [(); STATE_COPIES].map(|_| gpu.storage_buffer("recurrent state", state)),
                },
            })
            .collect();
        SequenceState {
            layers,
            cur: 0,
            max_context: layout.max_context,
        }
    }

    /// The recurrent state of linear-attention layer `l` a pass reads (`committed`) and
    /// writes: ((conv, state) read, (conv, state) written).
    #[allow(clippy::type_complexity)]
    pub fn recurrent(
        &self,
        l: usize,
    ) -> Result<(
        (&wgpu::Buffer, &wgpu::Buffer),
        (&wgpu::Buffer, &wgpu::Buffer),
    )> {
        match self.layers.get(l) {
            Some(LayerState::Recurrent { conv, state }) => {
                let (a, b) = (self.cur, (self.cur + 1) % STATE_COPIES);
                Ok(((&conv[a], &state[a]), (&conv[b], &state[b])))
            }
            _ => Err(Error::Internal(format!("layer {l} has no recurrent state"))),
        }
    }

    /// Makes the states a successful pass wrote the committed ones.
    pub fn commit(&mut self) {
        self.cur = (self.cur + 1) % STATE_COPIES;
    }

    /// Undoes a [`commit`](Self::commit) (after recording a pass ahead of one in flight,
    /// as if that one had committed).
    pub fn uncommit(&mut self) {
        self.cur = (self.cur + STATE_COPIES - 1) % STATE_COPIES;
    }

    /// Whether a layer keeps a sliding-window ring of keys.
    pub fn has_ring(&self) -> bool {
        self.layers
            .iter()
            .any(|s| matches!(s, LayerState::Kv { ring: Some(_), .. }))
    }

    /// Whether any layer keeps a recurrent state (which cannot be truncated).
    pub fn has_recurrent(&self) -> bool {
        self.layers
            .iter()
            .any(|s| matches!(s, LayerState::Recurrent { .. }))
    }

    /// The KV cache of attention layer `l`, and its ring if it keeps only a window.
    #[allow(clippy::type_complexity)]
    pub fn kv(&self, l: usize) -> Result<(&wgpu::Buffer, &wgpu::Buffer, Option<KvRing>)> {
        match self.layers.get(l) {
            Some(LayerState::Kv { k, v, ring }) => Ok((k, v, *ring)),
            _ => Err(Error::Internal(format!("layer {l} has no KV cache"))),
        }
    }

    /// The latent cache of latent-attention layer `l`.
    pub fn latent(&self, l: usize) -> Result<&wgpu::Buffer> {
        match self.layers.get(l) {
            Some(LayerState::Latent { cache }) => Ok(cache),
            _ => Err(Error::Internal(format!("layer {l} has no latent cache"))),
        }
    }

    /// Whether the context can be cut from `pos` tokens back to `len` (0 < len < pos):
    /// KV and latent caches keep their entries (later ones are overwritten), but a
    /// recurrent state has no record of earlier positions, and a sliding window's ring may
    /// have overwritten keys the window at `len` still needs.
    pub fn check_rewind(&self, pos: usize, len: usize) -> Result<()> {
        for (l, s) in self.layers.iter().enumerate() {
            match s {
                LayerState::Recurrent { .. } => {
                    return Err(Error::InvalidArgument(format!(
                        "cannot truncate the context from {pos} to {len} tokens: layer {l} \
                         keeps a recurrent state (linear attention), which cannot be rewound; \
                         truncate to 0, or fork the session before the tokens to drop"
                    )))
                }
                LayerState::Kv { ring: Some(r), .. } => {
                    // The next pass reads keys from len - window on; position q sits in row
                    // q % cap until position q + cap overwrites it.
                    let first = len.saturating_sub(r.window);
                    if first + r.cap < pos {
                        return Err(Error::InvalidArgument(format!(
                            "cannot truncate the context from {pos} to {len} tokens: layer {l}'s \
                             sliding-window cache holds only the last {} positions",
                            r.cap
                        )));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Records copies of `from`'s committed state for its first `pos` tokens into this
    /// state (allocated for the same model and context) and takes its committed index.
    pub fn copy_from(&mut self, from: &SequenceState, pos: usize, enc: &mut wgpu::CommandEncoder) {
        let prefix = |b: &wgpu::Buffer, rows: usize, max_rows: usize| -> u64 {
            // Whole rows of the first `pos` positions (a multiple of 4 bytes: every row is).
            let row = b.size() / max_rows.max(1) as u64;
            (row * rows.min(max_rows) as u64).min(b.size())
        };
        for (dst, src) in self.layers.iter().zip(&from.layers) {
            match (dst, src) {
                (LayerState::Kv { k, v, ring }, LayerState::Kv { k: sk, v: sv, .. }) => {
                    let n = if ring.is_some() {
                        sk.size()
                    } else {
                        prefix(sk, pos, self.max_context)
                    };
                    enc.copy_buffer_to_buffer(sk, 0, k, 0, n);
                    enc.copy_buffer_to_buffer(sv, 0, v, 0, n);
                }
                (LayerState::Latent { cache }, LayerState::Latent { cache: sc }) => {
                    let n = prefix(sc, pos, self.max_context);
                    enc.copy_buffer_to_buffer(sc, 0, cache, 0, n);
                }
                (
                    LayerState::Recurrent { conv, state },
                    LayerState::Recurrent {
                        conv: sconv,
                        state: sstate,
                    },
                ) => {
                    let c = from.cur;
                    enc.copy_buffer_to_buffer(&sconv[c], 0, &conv[c], 0, sconv[c].size());
                    enc.copy_buffer_to_buffer(&sstate[c], 0, &state[c], 0, sstate[c].size());
                }
                _ => {}
            }
        }
        self.cur = from.cur;
    }

    /// GPU memory of the KV caches (latent caches included).
    pub fn kv_bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|s| match s {
                LayerState::Kv { k, v, .. } => k.size() + v.size(),
                LayerState::Latent { cache } => cache.size(),
                LayerState::Recurrent { .. } => 0,
            })
            .sum()
    }

    /// GPU memory of every layer's state (every copy of the recurrent states).
    pub fn bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|s| match s {
                LayerState::Kv { k, v, .. } => k.size() + v.size(),
                LayerState::Latent { cache } => cache.size(),
                LayerState::Recurrent { conv, state } => {
                    conv.iter().chain(state).map(wgpu::Buffer::size).sum()
                }
            })
            .sum()
    }
}

pub(crate) use super::scratch::{Scratch, ScratchLayout};
