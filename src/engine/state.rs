//! What a session owns on the GPU: the per-layer sequence state (a KV cache per attention
//! layer, a recurrent state per linear-attention layer), allocated once per session, and the
//! scratch buffers of one pass.

use crate::arch::{Mixer, MlaSpec};
use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::{storage_size, Gpu, Timer};
use crate::session::{MAX_PASS_TOKENS, MAX_TOP};

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
    /// last inputs) and recurrent state (`[value_heads, key_dim, value_dim]` f32), twice:
    /// a pass's kernels read the committed copy (nothing at position 0) and write the
    /// other, which becomes the committed one only when the pass succeeds ([`SequenceState::commit`]). Unlike a KV cache, a
    /// recurrent state cannot be rewound, so a failed or discarded pass (an expert read
    /// error, a resident step that found an expert missing) must leave it untouched.
    Recurrent {
        conv: [wgpu::Buffer; 2],
        state: [wgpu::Buffer; 2],
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
    /// Which copy of the recurrent states is committed (0 or 1).
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
fn mul(a: usize, b: usize) -> u64 {
    (a as u64).saturating_mul(b as u64)
}

impl SessionParams {
    /// An error unless a storage buffer of `bytes` fits one binding.
    fn fits(&self, what: impl FnOnce() -> String, bytes: u64) -> Result<()> {
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
                    2 * (storage_size(conv) + storage_size(state))
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
                    conv: [0, 1].map(|_| gpu.storage_buffer("conv state", conv)),
                    state: [0, 1].map(|_| gpu.storage_buffer("recurrent state", state)),
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
                let (a, b) = (self.cur, 1 - self.cur);
                Ok(((&conv[a], &state[a]), (&conv[b], &state[b])))
            }
            _ => Err(Error::Internal(format!("layer {l} has no recurrent state"))),
        }
    }

    /// Makes the states a successful pass wrote the committed ones.
    pub fn commit(&mut self) {
        if self.has_recurrent() {
            self.cur = 1 - self.cur;
        }
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

    /// GPU memory of every layer's state (both copies of the recurrent states).
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

/// GPU buffers of a session sized for `cap` tokens per pass.
pub(crate) struct Scratch {
    pub cap: usize,
    pub ids: wgpu::Buffer,
    pub x: wgpu::Buffer,
    pub h: wgpu::Buffer,
    pub xn: wgpu::Buffer,
    /// A single normalized row (decode) again, in the interleaved layout of
    /// `kernels/include/interleave.wgsl` that the quantized mat-vec kernels read fastest.
    pub xi: wgpu::Buffer,
    /// The same row in the 8+8-bit layout that the 2- to 6-bit kernels read (18 words per 32
    /// values).
    pub xq: wgpu::Buffer,
    pub q: wgpu::Buffer,
    pub k: wgpu::Buffer,
    pub v: wgpu::Buffer,
    /// q, k and v of a fused projection: `[tokens, q_dim + 2 kv_dim]`.
    pub qkv: wgpu::Buffer,
    pub qr: wgpu::Buffer,
    pub attn: wgpu::Buffer,
    /// Partial softmax states of the split decode attention (`kernels/attention_split.wgsl`).
    pub attn_part: wgpu::Buffer,
    pub mlp_g: wgpu::Buffer,
    pub mlp_u: wgpu::Buffer,
    pub mlp_a: wgpu::Buffer,
    pub router_logits: wgpu::Buffer,
    pub route_ids: wgpu::Buffer,
    pub route_w: wgpu::Buffer,
    pub assign: wgpu::Buffer,
    pub assign_w: wgpu::Buffer,
    /// Tiles of one expert's assignments for the prefill expert mat-mat kernels:
    /// (first assignment, count) pairs (`kernels::moe_qmm_tiles`).
    pub tiles: wgpu::Buffer,
    pub route: wgpu::Buffer,
    /// Top-n candidates per vocabulary chunk, as `kernels/topk.wgsl` writes them.
    pub topk: wgpu::Buffer,
    /// What the resident routing kernel logs for the host: per layer a miss flag (set when
    /// a chosen expert is not resident), then per layer the `top_k` experts it chose.
    pub route_log: wgpu::Buffer,
    /// Per cache page: the indirect grids of the expert kernels of a resident step.
    pub moe_args: wgpu::Buffer,
    pub moe_h: wgpu::Buffer,
    pub moe_o: wgpu::Buffer,
    /// A MoE block's shared expert: the residual plus its gated output `[tokens, hidden]`
    /// and its gate's logits.
    pub shared_o: wgpu::Buffer,
    pub shared_g: wgpu::Buffer,
    /// The shared expert's fused gate and up projections, `[tokens, 2 inter]`.
    pub shared_gu: wgpu::Buffer,
    /// Linear attention: the fused input projection `[tokens, projection_rows]`, the
    /// convolution's output `[tokens, channels]`, the delta rule's output and the gated
    /// norm's, `[tokens, value_heads * value_dim]` each.
    pub la_proj: wgpu::Buffer,
    pub la_y: wgpu::Buffer,
    pub la_o: wgpu::Buffer,
    pub la_n: wgpu::Buffer,
    /// Latent attention: `q_a_proj`'s output and its normed copy `[tokens, q_lora_rank]`,
    /// `kv_a_proj_with_mqa`'s `[tokens, kv_lora_rank + qk_rope_head_dim]`.
    pub lat_q: wgpu::Buffer,
    pub lat_qn: wgpu::Buffer,
    pub lat_kv: wgpu::Buffer,
    pub logits: wgpu::Buffer,
    pub readback: wgpu::Buffer,
    /// A second readback buffer: a decode step recorded ahead reads into the one that the
    /// step in flight does not.
    pub readback2: wgpu::Buffer,
    /// The RoPE tables: cos `[max_context, rotary_dim / 2]`, then sin from float
    /// `rope_sin` on.
    pub rope: wgpu::Buffer,
    pub rope_sin: u32,
}

/// The sizes of a session's [`Scratch`] buffers: f32 counts of the storage buffers, bytes
/// of the others (`_bytes`), and the tokens a pass takes (`cap`).
#[derive(Debug, Clone)]
pub(crate) struct ScratchLayout {
    pub cap: usize,
    pub ids: u64,
    pub x: u64,
    pub h: u64,
    pub xn: u64,
    pub xi: u64,
    pub xq: u64,
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub qkv: u64,
    pub qr: u64,
    pub attn: u64,
    pub attn_part: u64,
    pub mlp_g: u64,
    pub mlp_u: u64,
    pub mlp_a: u64,
    pub router_logits: u64,
    pub route_ids: u64,
    pub route_w: u64,
    pub assign: u64,
    pub assign_w: u64,
    pub tiles: u64,
    pub route: u64,
    pub topk: u64,
    pub route_log: u64,
    pub moe_args_bytes: u64,
    pub moe_h: u64,
    pub moe_o: u64,
    pub shared_o: u64,
    pub shared_g: u64,
    pub shared_gu: u64,
    pub la_proj: u64,
    pub la_y: u64,
    pub la_o: u64,
    pub la_n: u64,
    pub lat_q: u64,
    pub lat_qn: u64,
    pub lat_kv: u64,
    pub logits: u64,
    pub readback_bytes: u64,
    /// The RoPE tables, cos then sin, `[max_context, rotary_dim / 2]` each.
    pub rope: u64,
}

impl ScratchLayout {
    /// The scratch of a session of `max_context` tokens; a [`Error::DeviceLimit`] naming
    /// the first buffer that would not fit.
    pub fn new(cfg: &ModelConfig, p: &SessionParams, max_context: usize) -> Result<Self> {
        // The widest per-token activation decides how many tokens fit one pass.
        let k = cfg.num_experts_per_tok.max(1);
        // Choices per token: one more where shared experts ride in the expert cache.
        let kk = p.choices.max(k);
        let mlp = cfg
            .intermediate_size
            .max(cfg.shared_expert_intermediate_size);
        let la_rows_max = cfg.linear_attention.map_or(0, |a| a.projection_rows());
        // Latent attention: q_lora_rank, the cache row, the absorbed queries
        // `[heads, rank + rope]`, the heads' latent outputs `[heads, rank]` and values.
        let mla = cfg.layers.iter().find_map(|p| p.mla());
        let ql = mla.and_then(|a| a.q_lora_rank).unwrap_or(0);
        let lat_w = mla.map_or(0, MlaSpec::cache_width);
        let lat_heads = mla.map_or(0, |a| {
            mul(
                a.heads,
                a.cache_width() + a.v_head_dim.max(a.qk_nope_head_dim + a.qk_rope_head_dim),
            )
        });
        let h = cfg.hidden_size;
        let per_token = [
            h as u64,
            mul(2, cfg.shared_expert_intermediate_size),
            mul(cfg.num_attention_heads, cfg.head_dim)
                .saturating_mul(2)
                .saturating_add(mul(2 * cfg.num_key_value_heads, cfg.head_dim)),
            mlp as u64,
            (cfg.num_experts as u64).saturating_add(1),
            mul(kk, h),
            mul(kk, cfg.moe_intermediate_size),
            la_rows_max as u64,
            lat_heads,
        ]
        .into_iter()
        .max()
        .unwrap_or(1)
        .saturating_mul(4)
        .max(1);
        let cap = MAX_PASS_TOKENS.min(max_context).min(
            usize::try_from(p.binding.0 / per_token)
                .unwrap_or(usize::MAX)
                .max(1),
        );
        let qd = mul(cfg.num_attention_heads, cfg.head_dim)
            .saturating_mul(if cfg.attn_output_gate { 2 } else { 1 });
        // q also holds a latent-attention layer's values; qr its absorbed queries, attn
        // its heads' latent outputs.
        let q_w = qd.max(mla.map_or(0, |a| mul(a.heads, a.v_head_dim)));
        let qr_w = qd.max(mla.map_or(0, |a| mul(a.heads, a.cache_width())));
        let attn_w = qd.max(mla.map_or(0, |a| mul(a.heads, a.kv_lora_rank)));
        // The decode row's other layouts, for the q norm's output too.
        let row_w = h.max(ql) as u64;
        let kvd = mul(cfg.num_key_value_heads, cfg.head_dim);
        let la = cfg.linear_attention;
        let la_rows = la.map_or(0, |a| a.projection_rows()) as u64;
        let la_ch = la.map_or(0, |a| a.conv_channels()) as u64;
        let la_v = la.map_or(0, |a| a.value_width()) as u64;
        let vocab = u32::try_from(cfg.vocab_size).unwrap_or(u32::MAX);
        let topk_words = mul(
            crate::gpu::kernels::topk_groups(vocab).0 as usize,
            MAX_TOP * 2,
        );
        let layers = cfg.num_hidden_layers;
        let readback_bytes = mul(cfg.vocab_size, 4)
            .max(topk_words.saturating_mul(4))
            .saturating_add(mul(layers, (k + 1) * 4))
            .max(mul(cap, kk * 8))
            .div_ceil(16)
            .saturating_mul(16)
            .saturating_add(Timer::READBACK_BYTES);
        // Assignment rows: one per (token, choice) of a pass, and every choice per cache
        // page for a resident decode step.
        let pages = p.cache_pages.max(1);
        let rows = mul(cap, kk).max(mul(pages, kk));
        let c = cap as u64;
        let rope = mul(max_context, cfg.rotary_dim / 2).saturating_mul(2);
        let layout = ScratchLayout {
            cap,
            ids: c,
            x: mul(cap, h),
            h: mul(cap, h),
            xn: mul(cap, h),
            xi: row_w,
            xq: row_w / 32 * 18,
            q: c.saturating_mul(q_w),
            k: c.saturating_mul(kvd),
            v: c.saturating_mul(kvd),
            qkv: c.saturating_mul(qd.saturating_add(kvd.saturating_mul(2))),
            qr: c.saturating_mul(qr_w),
            attn: c.saturating_mul(attn_w),
            attn_part: crate::gpu::kernels::attention_part_floats(
                cfg.num_attention_heads as u32,
                cfg.head_dim.max(mla.map_or(0, |a| a.kv_lora_rank)) as u32,
            ),
            mlp_g: mul(cap, mlp),
            mlp_u: mul(cap, mlp),
            mlp_a: mul(cap, mlp),
            router_logits: mul(cap, cfg.num_experts.saturating_add(1)),
            route_ids: mul(cap, kk),
            route_w: mul(cap, kk),
            assign: rows.saturating_mul(2),
            assign_w: rows,
            tiles: rows.saturating_mul(2),
            route: mul(cap, kk),
            topk: topk_words,
            route_log: mul(layers, 1 + k),
            moe_args_bytes: mul(pages, 24),
            moe_h: rows.saturating_mul(cfg.moe_intermediate_size as u64),
            moe_o: rows.saturating_mul(h as u64),
            shared_o: mul(cap, h),
            shared_g: c,
            shared_gu: mul(cap, cfg.shared_expert_intermediate_size).saturating_mul(2),
            la_proj: c.saturating_mul(la_rows),
            la_y: c.saturating_mul(la_ch),
            la_o: c.saturating_mul(la_v),
            la_n: c.saturating_mul(la_v),
            lat_q: mul(cap, ql),
            lat_qn: mul(cap, ql),
            lat_kv: mul(cap, lat_w),
            logits: cfg.vocab_size as u64,
            readback_bytes,
            rope,
        };
        for (label, floats) in layout.storage() {
            p.fits(
                || format!("the session's {label} buffer ({max_context} tokens)"),
                floats.saturating_mul(4),
            )?;
        }
        if readback_bytes > p.max_buffer {
            return Err(Error::DeviceLimit {
                what: "the session's readback buffer".into(),
                requested: readback_bytes,
                limit_name: "max_buffer_size",
                limit: p.max_buffer,
            });
        }
        Ok(layout)
    }

    /// Every storage buffer: its label and f32 count.
    fn storage(&self) -> [(&'static str, u64); 39] {
        let ScratchLayout {
            cap: _,
            ids,
            x,
            h,
            xn,
            xi,
            xq,
            q,
            k,
            v,
            qkv,
            qr,
            attn,
            attn_part,
            mlp_g,
            mlp_u,
            mlp_a,
            router_logits,
            route_ids,
            route_w,
            assign,
            assign_w,
            tiles,
            route,
            topk,
            route_log,
            moe_args_bytes: _,
            moe_h,
            moe_o,
            shared_o,
            shared_g,
            shared_gu,
            la_proj,
            la_y,
            la_o,
            la_n,
            lat_q,
            lat_qn,
            lat_kv,
            logits,
            readback_bytes: _,
            rope,
        } = *self;
        [
            ("ids", ids),
            ("x", x),
            ("h", h),
            ("xn", xn),
            ("xi", xi),
            ("xq", xq),
            ("q", q),
            ("k", k),
            ("v", v),
            ("qkv", qkv),
            ("qr", qr),
            ("attn", attn),
            ("attention partials", attn_part),
            ("mlp_g", mlp_g),
            ("mlp_u", mlp_u),
            ("mlp_a", mlp_a),
            ("router_logits", router_logits),
            ("route_ids", route_ids),
            ("route_w", route_w),
            ("assign", assign),
            ("assign_w", assign_w),
            ("tiles", tiles),
            ("route", route),
            ("top-k candidates", topk),
            ("route log", route_log),
            ("moe_h", moe_h),
            ("moe_o", moe_o),
            ("shared_o", shared_o),
            ("shared_g", shared_g),
            ("shared_gu", shared_gu),
            ("la_proj", la_proj),
            ("la_y", la_y),
            ("la_o", la_o),
            ("la_n", la_n),
            ("lat_q", lat_q),
            ("lat_qn", lat_qn),
            ("lat_kv", lat_kv),
            ("logits", logits),
            ("rope", rope),
        ]
    }

    /// GPU bytes of the scratch buffers ([`Scratch::bytes`]).
    pub fn bytes(&self) -> u64 {
        self.storage()
            .iter()
            .map(|&(_, floats)| storage_size(floats.saturating_mul(4)))
            .fold(0, u64::saturating_add)
            .saturating_add(self.moe_args_bytes)
            // Two readback buffers (`Scratch::readback`, `readback2`).
            .saturating_add(self.readback_bytes.saturating_mul(2))
    }

    /// The largest scratch buffer: what it is and its bytes.
    pub fn largest(&self) -> (String, u64) {
        self.storage()
            .iter()
            .map(|&(label, floats)| (label, storage_size(floats.saturating_mul(4))))
            .chain([("readback", self.readback_bytes)])
            .max_by_key(|&(_, b)| b)
            .map_or((String::new(), 0), |(l, b)| {
                (format!("the session's {l} buffer"), b)
            })
    }
}

impl Scratch {
    /// The scratch buffers of a session of `max_context` tokens on a model of `cfg`, as
    /// `layout` ([`ScratchLayout::new`]) sizes them.
    pub fn new(
        gpu: &Gpu,
        cfg: &ModelConfig,
        layout: &ScratchLayout,
        max_context: usize,
    ) -> Result<Scratch> {
        let (cos, sin) = crate::reference::rope_tables_scaled(
            cfg.rope_theta,
            cfg.rotary_dim,
            max_context,
            cfg.rope_scaling.as_ref(),
        );
        if (cos.len() + sin.len()) as u64 != layout.rope {
            return Err(Error::Internal(format!(
                "the RoPE tables have {} values, the session layout {}",
                cos.len() + sin.len(),
                layout.rope
            )));
        }
        let rope_sin = u32::try_from(cos.len())
            .map_err(|_| Error::Internal("the RoPE tables exceed 2^32 values".into()))?;
        let l = layout;
        let buf = |label: &str, floats: u64| gpu.storage_buffer(label, floats.saturating_mul(4));
        Ok(Scratch {
            cap: l.cap,
            ids: buf("ids", l.ids),
            x: buf("x", l.x),
            h: buf("h", l.h),
            xn: buf("xn", l.xn),
            xi: buf("xi", l.xi),
            xq: buf("xq", l.xq),
            q: buf("q", l.q),
            k: buf("k", l.k),
            v: buf("v", l.v),
            qkv: buf("qkv", l.qkv),
            qr: buf("qr", l.qr),
            attn: buf("attn", l.attn),
            attn_part: buf("attention partials", l.attn_part),
            mlp_g: buf("mlp_g", l.mlp_g),
            mlp_u: buf("mlp_u", l.mlp_u),
            mlp_a: buf("mlp_a", l.mlp_a),
            router_logits: buf("router_logits", l.router_logits),
            route_ids: buf("route_ids", l.route_ids),
            route_w: buf("route_w", l.route_w),
            assign: buf("assign", l.assign),
            assign_w: buf("assign_w", l.assign_w),
            tiles: buf("tiles", l.tiles),
            route: buf("route", l.route),
            route_log: buf("route log", l.route_log),
            topk: buf("top-k candidates", l.topk),
            moe_args: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("expert grids"),
                size: l.moe_args_bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::INDIRECT,
                mapped_at_creation: false,
            }),
            moe_h: buf("moe_h", l.moe_h),
            moe_o: buf("moe_o", l.moe_o),
            shared_o: buf("shared_o", l.shared_o),
            shared_g: buf("shared_g", l.shared_g),
            shared_gu: buf("shared_gu", l.shared_gu),
            la_proj: buf("la_proj", l.la_proj),
            la_y: buf("la_y", l.la_y),
            la_o: buf("la_o", l.la_o),
            la_n: buf("la_n", l.la_n),
            lat_q: buf("lat_q", l.lat_q),
            lat_qn: buf("lat_qn", l.lat_qn),
            lat_kv: buf("lat_kv", l.lat_kv),
            logits: buf("logits", l.logits),
            readback: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: l.readback_bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            readback2: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback 2"),
                size: l.readback_bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            rope_sin,
            rope: gpu.upload("rope", bytemuck::cast_slice(&[cos, sin].concat())),
        })
    }

    /// GPU bytes of the scratch buffers (every field: a buffer added to [`Scratch`] must
    /// be counted here, and sized by [`ScratchLayout`]).
    pub fn bytes(&self) -> u64 {
        let Scratch {
            cap: _,
            ids,
            x,
            h,
            xn,
            xi,
            xq,
            q,
            k,
            v,
            qkv,
            qr,
            attn,
            attn_part,
            mlp_g,
            mlp_u,
            mlp_a,
            router_logits,
            route_ids,
            route_w,
            assign,
            assign_w,
            tiles,
            route,
            topk,
            route_log,
            moe_args,
            moe_h,
            moe_o,
            shared_o,
            shared_g,
            shared_gu,
            la_proj,
            la_y,
            la_o,
            la_n,
            lat_q,
            lat_qn,
            lat_kv,
            logits,
            readback,
            readback2,
            rope,
            rope_sin: _,
        } = self;
        [
            ids,
            x,
            h,
            xn,
            xi,
            xq,
            q,
            k,
            v,
            qkv,
            qr,
            attn,
            attn_part,
            mlp_g,
            mlp_u,
            mlp_a,
            router_logits,
            route_ids,
            route_w,
            assign,
            assign_w,
            tiles,
            route,
            topk,
            route_log,
            moe_args,
            moe_h,
            moe_o,
            shared_o,
            shared_g,
            shared_gu,
            la_proj,
            la_y,
            la_o,
            la_n,
            lat_q,
            lat_qn,
            lat_kv,
            logits,
            readback,
            readback2,
            rope,
        ]
        .iter()
        .map(|b| b.size())
        .sum()
    }
}
