//! The resident (non-expert) weights, uploaded to the GPU once per model.

use crate::arch::{
    tensor, AttentionSpec, Ffn, LinearAttentionSpec, Mixer, MlaSpec, MoeSpec, Names,
};
use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::gpu::{Bind, Gpu, GpuMatrix, GpuVec};
use crate::store::ExpertStore;

/// The q, k and v projections: one matrix of `q_dim + 2 * kv_dim` rows (q, then k, then v)
/// when the three are stored alike, so a step runs one mat-vec for all three; separate
/// matrices otherwise (mixed-precision recipes quantize v_proj differently).
pub(crate) enum Qkv {
    Fused {
        w: GpuMatrix,
        bias: Option<GpuVec>,
    },
    Separate {
        q: GpuMatrix,
        k: GpuMatrix,
        v: GpuMatrix,
        q_bias: Option<GpuVec>,
        k_bias: Option<GpuVec>,
        v_bias: Option<GpuVec>,
    },
}

pub(crate) struct Attention {
    pub spec: AttentionSpec,
    pub qkv: Qkv,
    pub o: GpuMatrix,
    pub o_bias: Option<GpuVec>,
    /// q_norm and k_norm, where the variant has them.
    pub q_norm: Option<GpuVec>,
    pub k_norm: Option<GpuVec>,
    /// Per-head attention sinks, `[heads]` (gpt-oss).
    pub sinks: Option<GpuVec>,
}

/// How a latent-attention layer projects its queries.
pub(crate) enum MlaQuery {
    /// `q_a_proj` (+ bias), `q_a_layernorm`, `q_b_proj`.
    LowRank {
        a: GpuMatrix,
        a_bias: Option<GpuVec>,
        norm: GpuVec,
        b: GpuMatrix,
    },
    /// One `q_proj`.
    Full(GpuMatrix),
}

/// A multi-head latent attention layer (DeepSeek-V3, Kimi-K2), with `kv_b_proj` in its
/// absorbed per-head form, so that attention runs over the cached latent
/// (docs/families/deepseek_v3.md §4).
pub(crate) struct Mla {
    pub spec: MlaSpec,
    pub q: MlaQuery,
    /// `kv_a_proj_with_mqa`, `[rank + rope, hidden]`, and its bias.
    pub kv_a: GpuMatrix,
    pub kv_a_bias: Option<GpuVec>,
    /// `kv_a_layernorm`, `[rank]`.
    pub kv_norm: GpuVec,
    /// `[heads * rank, nope]`: per head W_UK transposed (mlx-lm's `embed_q`).
    pub embed_q: GpuMatrix,
    /// `[heads * v_head_dim, rank]`: per head W_UV (mlx-lm's `unembed_out`).
    pub unembed: GpuMatrix,
    pub o: GpuMatrix,
    pub o_bias: Option<GpuVec>,
}

/// A dense SwiGLU MLP.
pub(crate) struct DenseMlp {
    pub gate: GpuMatrix,
    pub up: GpuMatrix,
    pub down: GpuMatrix,
}

/// The shared expert of a MoE block and its gate (`[1, hidden]`): its output is scaled by
/// `sigmoid(gate . x)` per token.
pub(crate) struct SharedExpert {
    /// gate_proj and up_proj: one matrix of `2 inter` rows (gate, then up) when stored
    /// alike, so a step runs one mat-vec for both; separate otherwise.
    pub gate_up: GateUp,
    pub down: GpuMatrix,
    /// `shared_expert_gate`, `[1, hidden]`; `None` when it is the router's last row
    /// ([`Moe::router`]), so one mat-vec computes both.
    pub gate: Option<GpuMatrix>,
}

/// The gate and up projections of a SwiGLU MLP.
pub(crate) enum GateUp {
    Fused(GpuMatrix),
    Separate { gate: GpuMatrix, up: GpuMatrix },
}

/// The resident part of a MoE block (the routed experts stream through the cache).
pub(crate) struct Moe {
    pub spec: MoeSpec,
    /// `mlp.gate`, `[experts, hidden]`, or `[experts + 1, hidden]` with the shared expert's
    /// gate as its last row when the two are stored alike.
    pub router: GpuMatrix,
    /// The router's bias (gpt-oss).
    pub router_bias: Option<GpuVec>,
    /// The router's `e_score_correction_bias` (sigmoid routing: GLM-4.5, DeepSeek-V3).
    pub correction: Option<GpuVec>,
    pub shared: Option<Shared>,
}

/// Where a MoE block's shared expert runs.
pub(crate) enum Shared {
    /// In a fixed slot of the expert cache, as one more routing choice (expert id
    /// `spec.experts`) weighted by the sigmoid of the router's last logit (1 for an
    /// ungated one, `MoeSpec::shared_gate` false): it runs in the
    /// routed experts' dispatches, with none of its own (see [`crate::cache::SharedBlobs`]).
    /// Chosen where it is stored like the layer's routed experts and its gate like the
    /// router.
    Cached,
    /// Resident matrices with mat-vecs of their own.
    Resident(Box<SharedExpert>),
    /// An ungated shared expert (GLM-4.5, DeepSeek-V3) not stored like the routed ones:
    /// a dense MLP whose output is the routed experts' residual.
    Dense(Box<DenseMlp>),
}

/// A Gated DeltaNet layer's weights.
pub(crate) struct LinearAttention {
    pub spec: LinearAttentionSpec,
    /// The input projections as one matrix, rows `[q | k | v | z | b | a]`.
    pub proj: GpuMatrix,
    /// The layer's small tensors in one f32 buffer ([`LinearConsts`]).
    pub consts: GpuVec,
    pub at: LinearConsts,
    /// `out_proj`, `[hidden, value_heads * value_dim]`.
    pub out: GpuMatrix,
}

/// Where a linear-attention layer's small tensors sit in its constants buffer (in floats,
/// each at a 256-byte boundary, so each can also be bound on its own): the depthwise
/// convolution `[channels, conv_kernel]` at 0, `A_log` and `dt_bias` `[value_heads]`, the
/// gated RMSNorm's weight `[value_dim]` (plain, not zero-centred).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinearConsts {
    pub a_log: usize,
    pub dt_bias: usize,
    pub norm: usize,
    pub len: [usize; 4],
}

/// Floats per 256 bytes, the storage-binding offset alignment WebGPU guarantees.
const BIND_ALIGN_FLOATS: usize = 64;

impl LinearConsts {
    pub(super) fn new(conv: usize, heads: usize, dv: usize) -> Self {
        let up = |n: usize| n.div_ceil(BIND_ALIGN_FLOATS) * BIND_ALIGN_FLOATS;
        let a_log = up(conv);
        let dt_bias = a_log + up(heads);
        let norm = dt_bias + up(heads);
        LinearConsts {
            a_log,
            dt_bias,
            norm,
            len: [conv, heads, heads, dv],
        }
    }
}

impl LinearAttention {
    fn part(&self, offset: usize, len: usize) -> Bind<'_> {
        Bind {
            buffer: &self.consts.buffer,
            offset: (offset * 4) as u64,
            size: Some((len * 4) as u64),
        }
    }

    /// The depthwise convolution, `[channels, conv_kernel]`.
    pub fn conv(&self) -> Bind<'_> {
        self.part(0, self.at.len[0])
    }

    /// The convolution, `A_log` and `dt_bias` (the delta-rule kernel's constants: it reads
    /// them at 0, [`LinearConsts::a_log`] and [`LinearConsts::dt_bias`]).
    pub fn delta_consts(&self) -> Bind<'_> {
        self.part(0, self.at.dt_bias + self.at.len[2])
    }

    /// The gated RMSNorm's weight.
    pub fn norm(&self) -> Bind<'_> {
        self.part(self.at.norm, self.at.len[3])
    }
}

/// A layer's token mixer, as its plan says. (One per layer, built once: the variants' size
/// difference costs nothing worth a box.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum MixerWeights {
    Attention(Attention),
    LinearAttention(LinearAttention),
    Mla(Mla),
}

/// A layer's feed-forward block, as its plan says.
pub(crate) enum FfnWeights {
    Dense(DenseMlp),
    Moe(Moe),
}

pub(crate) struct Layer {
    pub input_norm: GpuVec,
    pub post_norm: GpuVec,
    pub mixer: MixerWeights,
    pub ffn: FfnWeights,
}

pub(crate) struct Weights {
    pub embed: GpuMatrix,
    /// `None` when the LM head is tied to the embedding.
    pub lm_head: Option<GpuMatrix>,
    pub final_norm: GpuVec,
    pub layers: Vec<Layer>,
}

impl Weights {
    pub fn lm_head(&self) -> &GpuMatrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Every resident matrix (the embedding and LM head, each layer's projections).
    pub fn matrices(&self) -> impl Iterator<Item = &GpuMatrix> {
        let layers = self.layers.iter().flat_map(|l| {
            let mixer: Vec<&GpuMatrix> = match &l.mixer {
                MixerWeights::Attention(a) => match &a.qkv {
                    Qkv::Fused { w, .. } => vec![w, &a.o],
                    Qkv::Separate { q, k, v, .. } => vec![q, k, v, &a.o],
                },
                MixerWeights::LinearAttention(a) => vec![&a.proj, &a.out],
                MixerWeights::Mla(a) => {
                    let mut v = match &a.q {
                        MlaQuery::LowRank { a, b, .. } => vec![a, b],
                        MlaQuery::Full(q) => vec![q],
                    };
                    v.extend([&a.kv_a, &a.embed_q, &a.unembed, &a.o]);
                    v
                }
            };
            let ffn: Vec<&GpuMatrix> = match &l.ffn {
                FfnWeights::Dense(d) => vec![&d.gate, &d.up, &d.down],
                FfnWeights::Moe(m) => {
                    let mut v = vec![&m.router];
                    if let Some(Shared::Resident(sh)) = &m.shared {
                        match &sh.gate_up {
                            GateUp::Fused(gu) => v.push(gu),
                            GateUp::Separate { gate, up } => v.extend([gate, up]),
                        }
                        v.push(&sh.down);
                        v.extend(&sh.gate);
                    }
                    if let Some(Shared::Dense(d)) = &m.shared {
                        v.extend([&d.gate, &d.up, &d.down]);
                    }
                    v
                }
            };
            mixer.into_iter().chain(ffn)
        });
        std::iter::once(&self.embed)
            .chain(self.lm_head.as_ref())
            .chain(layers)
    }

    /// Whether layer `l`'s shared expert rides in the expert cache ([`Shared::Cached`]).
    pub fn cached_shared(&self, l: usize) -> bool {
        self.layers.get(l).is_some_and(|layer| {
            matches!(&layer.ffn, FfnWeights::Moe(m) if matches!(m.shared, Some(Shared::Cached)))
        })
    }

    /// Whether any layer's shared expert rides in the expert cache.
    pub fn any_cached_shared(&self) -> bool {
        (0..self.layers.len()).any(|l| self.cached_shared(l))
    }

    /// Loads the resident weights; shared experts stored like `store`'s experts of their
    /// layer are left to the expert cache ([`Shared::Cached`]).
    pub fn load(
        gpu: &Gpu,
        cfg: &ModelConfig,
        ckpt: &Checkpoint,
        store: &dyn ExpertStore,
        progress: &dyn Fn(crate::model::LoadProgress),
    ) -> Result<Weights> {
        let names = crate::arch::names(cfg, ckpt)?;
        let family = crate::arch::family_of(cfg);
        let ld = super::loader::Loader {
            gpu,
            ckpt,
            store,
            names: &names,
            norm_shift: if family.zero_centred_norms() && !is_mlx(ckpt, cfg, &names) {
                1.0
            } else {
                0.0
            },
        };
        let h = cfg.hidden_size;
        let embed = ld.matrix(&names.embed(), cfg.vocab_size, h)?;
        let lm_head = if cfg.tie_word_embeddings && !ckpt.contains(names.lm_head) {
            None
        } else {
            Some(ld.matrix(names.lm_head, cfg.vocab_size, h)?)
        };
        let final_norm = ld.norm(&names.final_norm(), h)?;
        let total = cfg.layers.len();
        progress(crate::model::LoadProgress::Layers { done: 0, total });
        let mut layers = Vec::with_capacity(total);
        for (l, plan) in cfg.layers.iter().enumerate() {
            let n = |rest: &str| names.layer(l, rest);
            let mixer = match &plan.mixer {
                Mixer::Mla(spec) => MixerWeights::Mla(ld.mla(l, h, spec)?),
                Mixer::Attention(spec) => MixerWeights::Attention(ld.attention(l, h, spec)?),
                Mixer::LinearAttention(spec) => {
                    MixerWeights::LinearAttention(ld.linear_attention(
                        l,
                        h,
                        spec,
                        &family.linear_projection(&names, l, spec, ckpt)?,
                    )?)
                }
            };
            let ffn = match &plan.ffn {
                Ffn::Moe(spec) => FfnWeights::Moe(ld.moe(l, h, spec)?),
                Ffn::Dense { inter } => FfnWeights::Dense(ld.dense(&n(tensor::MLP), h, *inter)?),
            };
            layers.push(Layer {
                input_norm: ld.norm(&names.weight(l, tensor::INPUT_NORM), h)?,
                post_norm: ld.norm(&names.weight(l, tensor::POST_NORM), h)?,
                mixer,
                ffn,
            });
            progress(crate::model::LoadProgress::Layers {
                done: layers.len(),
                total,
            });
        }
        gpu.check()?;
        Ok(Weights {
            embed,
            lm_head,
            final_norm,
            layers,
        })
    }
}

/// Whether a checkpoint of a zero-centred-norm family was written by mlx-lm's converter,
/// which stores the norms as `1 + w` (and the conv1d weights as `[C, K, 1]` instead of
/// `[C, 1, K]`, which tells them apart); also any MLX-named checkpoint.
pub(crate) fn is_mlx(ckpt: &Checkpoint, cfg: &ModelConfig, names: &Names) -> bool {
    if names.prefix.starts_with("language_model.") {
        return true;
    }
    let linear = cfg
        .layers
        .iter()
        .position(|p| p.linear_attention().is_some());
    match linear {
        Some(l) => ckpt
            .entry(&names.weight(l, tensor::CONV1D))
            .is_ok_and(|e| e.shape.len() == 3 && e.shape[1] != 1 && e.shape[2] == 1),
        None => false,
    }
}
