//! What a session owns on the GPU: the per-layer sequence state (a KV cache per attention
//! layer, a recurrent state per linear-attention layer), allocated once per session, and the
//! scratch buffers of one pass.

use crate::arch::{Mixer, MlaSpec};
use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Timer};
use crate::model::ModelInner;
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
/// see: `cap` = window + the most tokens a pass takes - 1 positions, each written twice
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

fn check_size(gpu: &Gpu, what: &str, bytes: usize) -> Result<()> {
    if bytes as u64 > gpu.max_binding {
        return Err(Error::DeviceLimit {
            what: what.to_string(),
            requested: bytes as u64,
            limit_name: "largest storage binding",
            limit: gpu.max_binding,
        });
    }
    Ok(())
}

impl SequenceState {
    /// Allocates every layer's state for `max_context` tokens.
    pub fn new(
        gpu: &Gpu,
        cfg: &ModelConfig,
        kv_dtype: DType,
        max_context: usize,
    ) -> Result<SequenceState> {
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
                    let bytes = max_context
                        .checked_mul(width * kv_dtype.size())
                        .ok_or_else(|| {
                            Error::InvalidArgument(format!(
                                "max_context {max_context} is too large"
                            ))
                        })?;
                    check_size(gpu, "the latent cache of one layer", bytes)?;
                    LayerState::Latent {
                        cache: gpu.storage_buffer("latent cache", bytes as u64),
                    }
                }
                Mixer::Attention(a) => {
                    // A sliding window shorter than the context: a ring of its keys.
                    let ring = a
                        .sliding_window
                        .map(|window| KvRing {
                            cap: window + MAX_PASS_TOKENS.min(max_context) - 1,
                            window,
                        })
                        .filter(|r| 2 * r.cap < max_context);
                    let rows = ring.map_or(max_context, |r| 2 * r.cap);
                    let kv_bytes = rows
                        .checked_mul(a.kv_heads * a.head_dim * kv_dtype.size())
                        .ok_or_else(|| {
                            Error::InvalidArgument(format!(
                                "max_context {max_context} is too large"
                            ))
                        })?;
                    check_size(gpu, "the KV cache of one layer", kv_bytes)?;
                    LayerState::Kv {
                        k: gpu.storage_buffer("k cache", kv_bytes as u64),
                        v: gpu.storage_buffer("v cache", kv_bytes as u64),
                        ring,
                    }
                }
                Mixer::LinearAttention(la) => {
                    let conv = la.conv_state_floats() * 4;
                    let state = la.state_floats() * 4;
                    check_size(gpu, "the recurrent state of one layer", state)?;
                    LayerState::Recurrent {
                        conv: [0, 1].map(|_| gpu.storage_buffer("conv state", conv as u64)),
                        state: [0, 1].map(|_| gpu.storage_buffer("recurrent state", state as u64)),
                    }
                }
            });
        }
        Ok(SequenceState {
            layers,
            cur: 0,
            max_context,
        })
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

impl Scratch {
    /// The scratch buffers of a session of `max_context` tokens on model `m`.
    pub fn new(m: &ModelInner, max_context: usize) -> Result<Scratch> {
        let cfg = &m.cfg;
        let gpu = &m.gpu;
        // The widest per-token activation decides how many tokens fit one pass.
        let k = cfg.num_experts_per_tok.max(1);
        // Choices per token: one more where shared experts ride in the expert cache.
        let kk = k + usize::from(m.cache.as_ref().is_some_and(|c| c.has_shared()));
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
            a.heads * (a.cache_width() + a.v_head_dim.max(a.qk_nope_head_dim + a.qk_rope_head_dim))
        });
        let per_token = 4 * [
            cfg.hidden_size,
            2 * cfg.shared_expert_intermediate_size,
            cfg.num_attention_heads * cfg.head_dim * 2 + 2 * cfg.num_key_value_heads * cfg.head_dim,
            mlp,
            cfg.num_experts + 1,
            kk * cfg.hidden_size,
            kk * cfg.moe_intermediate_size,
            la_rows_max,
            lat_heads,
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        let cap = MAX_PASS_TOKENS
            .min(max_context)
            .min((gpu.max_binding as usize / per_token).max(1));
        let (cos, sin) = crate::reference::rope_tables_scaled(
            cfg.rope_theta,
            cfg.rotary_dim,
            max_context,
            cfg.rope_scaling.as_ref(),
        );
        let buf = |label: &str, floats: usize| gpu.storage_buffer(label, (floats * 4) as u64);
        let h = cfg.hidden_size;
        let qd = cfg.num_attention_heads * cfg.head_dim * if cfg.attn_output_gate { 2 } else { 1 };
        // q also holds a latent-attention layer's values; qr its absorbed queries, attn
        // its heads' latent outputs.
        let q_w = qd.max(mla.map_or(0, |a| a.heads * a.v_head_dim));
        let qr_w = qd.max(mla.map_or(0, |a| a.heads * a.cache_width()));
        let attn_w = qd.max(mla.map_or(0, |a| a.heads * a.kv_lora_rank));
        // The decode row's other layouts, for the q norm's output too.
        let row_w = h.max(ql);
        let kvd = cfg.num_key_value_heads * cfg.head_dim;
        let la = cfg.linear_attention;
        let la_rows = la.map_or(0, |a| a.projection_rows());
        let la_ch = la.map_or(0, |a| a.conv_channels());
        let la_v = la.map_or(0, |a| a.value_width());
        let topk_words =
            crate::gpu::kernels::topk_groups(cfg.vocab_size as u32).0 as usize * MAX_TOP * 2;
        let readback_bytes = (((cfg.vocab_size * 4).max(topk_words * 4)
            + cfg.num_hidden_layers * (k + 1) * 4)
            .max(cap * kk * 8) as u64)
            .div_ceil(16)
            * 16
            + Timer::READBACK_BYTES;
        // Assignment rows: one per (token, choice) of a pass, and every choice per cache
        // page for a resident decode step.
        let pages = m.cache.as_ref().map_or(1, |c| c.pages.len());
        let rows = (cap * kk).max(pages * kk);
        let scratch = Scratch {
            cap,
            ids: buf("ids", cap),
            x: buf("x", cap * h),
            h: buf("h", cap * h),
            xn: buf("xn", cap * h),
            xi: buf("xi", row_w),
            xq: buf("xq", row_w / 32 * 18),
            q: buf("q", cap * q_w),
            k: buf("k", cap * kvd),
            v: buf("v", cap * kvd),
            qkv: buf("qkv", cap * (qd + 2 * kvd)),
            qr: buf("qr", cap * qr_w),
            attn: buf("attn", cap * attn_w),
            attn_part: buf(
                "attention partials",
                crate::gpu::kernels::attention_part_floats(
                    cfg.num_attention_heads as u32,
                    cfg.head_dim.max(mla.map_or(0, |a| a.kv_lora_rank)) as u32,
                ) as usize,
            ),
            mlp_g: buf("mlp_g", cap * mlp),
            mlp_u: buf("mlp_u", cap * mlp),
            mlp_a: buf("mlp_a", cap * mlp),
            router_logits: buf("router_logits", cap * (cfg.num_experts + 1)),
            route_ids: buf("route_ids", cap * kk),
            route_w: buf("route_w", cap * kk),
            assign: buf("assign", rows * 2),
            assign_w: buf("assign_w", rows),
            tiles: buf("tiles", rows * 2),
            route: buf("route", cap * kk),
            route_log: buf("route log", cfg.num_hidden_layers * (1 + k)),
            topk: buf("top-k candidates", topk_words),
            moe_args: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("expert grids"),
                size: (pages.max(1) * 24) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::INDIRECT,
                mapped_at_creation: false,
            }),
            moe_h: buf("moe_h", rows * cfg.moe_intermediate_size),
            moe_o: buf("moe_o", rows * h),
            shared_o: buf("shared_o", cap * h),
            shared_g: buf("shared_g", cap),
            shared_gu: buf("shared_gu", cap * 2 * cfg.shared_expert_intermediate_size),
            la_proj: buf("la_proj", cap * la_rows),
            la_y: buf("la_y", cap * la_ch),
            la_o: buf("la_o", cap * la_v),
            la_n: buf("la_n", cap * la_v),
            lat_q: buf("lat_q", cap * ql),
            lat_qn: buf("lat_qn", cap * ql),
            lat_kv: buf("lat_kv", cap * lat_w),
            logits: buf("logits", cfg.vocab_size),
            readback: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: readback_bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            readback2: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback 2"),
                size: readback_bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            rope_sin: cos.len() as u32,
            rope: gpu.upload("rope", bytemuck::cast_slice(&[cos, sin].concat())),
        };
        Ok(scratch)
    }
}
