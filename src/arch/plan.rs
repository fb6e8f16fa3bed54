//! The per-layer plan: which engine block each decoder layer runs, with its variant.
//!
//! A family module turns its `config.json` into a [`LayerPlan`] per layer; the engine
//! (weights, forward pass, session state, CPU reference) follows the plan and never asks
//! which family it runs.

/// How a layer mixes information across tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Mixer {
    /// Softmax attention over a KV cache.
    Attention(AttentionSpec),
    /// Gated DeltaNet linear attention over a recurrent state (Qwen3.5, Qwen3-Next).
    LinearAttention(LinearAttentionSpec),
    /// Multi-head latent attention (DeepSeek-V3, Kimi-K2): low-rank q and kv projections,
    /// a cache of the compressed latent and one shared RoPE key per token.
    Mla(MlaSpec),
}

/// The shape of a multi-head latent attention layer (docs/families/deepseek_v3.md §3b).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct MlaSpec {
    /// Query heads (as many key/value heads).
    pub heads: usize,
    /// `q_lora_rank`: q through `q_a_proj` -> `q_a_layernorm` -> `q_b_proj`; `None`: one
    /// `q_proj`.
    pub q_lora_rank: Option<usize>,
    /// `kv_lora_rank` (r): the cached latent's width.
    pub kv_lora_rank: usize,
    /// `qk_nope_head_dim` (dn): the per-head key dims from the latent.
    pub qk_nope_head_dim: usize,
    /// `qk_rope_head_dim` (dr): the rotated dims, one key shared by all heads.
    pub qk_rope_head_dim: usize,
    /// `v_head_dim` (dv).
    pub v_head_dim: usize,
    /// The softmax scale, `(dn + dr)^-0.5`, times YaRN's `mscale(factor,
    /// mscale_all_dim)^2` where that is set.
    pub scale: f32,
    /// RoPE pairs `(2i, 2i + 1)` (`rope_interleave`, the default) rather than
    /// `(i, i + dr / 2)`.
    pub rope_interleave: bool,
    /// `q_a_proj`, `kv_a_proj_with_mqa` and `o_proj` carry biases (`attention_bias`).
    pub bias: bool,
}

impl MlaSpec {
    /// Values a token's latent cache holds per layer: `kv_lora_rank + qk_rope_head_dim`.
    pub fn cache_width(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }
}

/// The variant of a softmax-attention layer.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct AttentionSpec {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Leading dims of each head that RoPE rotates (even, <= `head_dim`).
    pub rotary_dim: usize,
    /// RMSNorm of q and k (`q_norm`, `k_norm`) before RoPE: per head (weights of
    /// `head_dim`), or with `qk_norm_whole` over a token's whole projection.
    pub qk_norm: bool,
    /// The q/k norms span all of a token's query (key) heads, weights `[heads * head_dim]`
    /// (`[kv_heads * head_dim]`), as OLMoE's do.
    pub qk_norm_whole: bool,
    /// `clip_qkv`: q and k (after their norms) and v clamped to `[-c, c]` before RoPE
    /// (OLMoE).
    pub clip_qkv: Option<f32>,
    /// q_proj also yields a per-head output gate (rows `[q | gate]` per head); the attention
    /// output is multiplied by `sigmoid(gate)` before o_proj (Qwen3.5, Qwen3-Next).
    pub output_gate: bool,
    /// q/k/v projections carry biases.
    pub bias: bool,
    /// o_proj carries a bias (with `bias` in every family but GLM-4.5's, whose
    /// `attention_bias` covers q/k/v only).
    pub o_bias: bool,
    /// A learned logit per query head (`self_attn.sinks`) joins each softmax's
    /// denominator, with no value (gpt-oss).
    pub sinks: bool,
    /// A query sees only the last this many keys, itself included (a sliding-window
    /// layer; `None`: every earlier key).
    pub sliding_window: Option<usize>,
}

/// The shape of a Gated DeltaNet layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinearAttentionSpec {
    /// Query/key heads (`linear_num_key_heads`).
    pub key_heads: usize,
    /// Value heads (`linear_num_value_heads`, a multiple of `key_heads`).
    pub value_heads: usize,
    /// Width of a query/key head.
    pub key_dim: usize,
    /// Width of a value head.
    pub value_dim: usize,
    /// Width of the causal depthwise convolution (`linear_conv_kernel_dim`).
    pub conv_kernel: usize,
}

impl LinearAttentionSpec {
    /// Channels of the convolution: q, k and v (`2 key_heads key_dim + value_heads value_dim`).
    pub fn conv_channels(&self) -> usize {
        2 * self.key_heads * self.key_dim + self.value_heads * self.value_dim
    }

    /// Width of the value (and output) row, `value_heads * value_dim`.
    pub fn value_width(&self) -> usize {
        self.value_heads * self.value_dim
    }

    /// Rows of the fused input projection: q, k, v, z, b, a.
    pub fn projection_rows(&self) -> usize {
        self.conv_channels() + self.value_width() + 2 * self.value_heads
    }

    /// f32 values of the recurrent state (`[value_heads, key_dim, value_dim]`).
    pub fn state_floats(&self) -> usize {
        self.value_heads * self.key_dim * self.value_dim
    }

    /// f32 values of the convolution state (the last `conv_kernel - 1` inputs).
    pub fn conv_state_floats(&self) -> usize {
        (self.conv_kernel - 1) * self.conv_channels()
    }
}

/// A layer's feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Ffn {
    /// A dense SwiGLU MLP of this width.
    Dense {
        /// `intermediate_size`.
        inter: usize,
    },
    /// Routed experts.
    Moe(MoeSpec),
}

/// How a MoE block turns router logits into expert weights.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum RouterKind {
    /// Softmax over every expert, then the top k (renormalized with `norm_topk_prob`):
    /// Qwen3-MoE, Qwen3.5, Mixtral.
    SoftmaxTopK,
    /// The top k logits, then a softmax over those k only: gpt-oss.
    TopKSoftmax,
    /// GLM-4.5, DeepSeek-V3: experts ranked by `sigmoid(logit) + e_score_correction_bias`
    /// (the router's `e_score_correction_bias`), among the `topk_groups` best of `groups`
    /// equal groups (a group's score the sum of its two best), weighted by their unbiased
    /// sigmoids (renormalized with `norm_topk_prob`) times `scale`.
    Sigmoid {
        /// `n_group`.
        groups: usize,
        /// `topk_group`.
        topk_groups: usize,
        /// `routed_scaling_factor`.
        scale: f32,
    },
}

/// The activation of an expert's gate and up projections.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ExpertActivation {
    /// `silu(gate) * up`.
    SwiGlu,
    /// gpt-oss: with `g = min(gate, limit)`, `(clamp(up, -limit, limit) + 1) * g *
    /// sigmoid(alpha g)`.
    ClampedSwiGlu {
        /// The sigmoid's slope (1.702).
        alpha: f32,
        /// The clamp (`swiglu_limit`, 7).
        limit: f32,
    },
}

/// The variant of a MoE block.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct MoeSpec {
    /// Routed experts.
    pub experts: usize,
    /// Experts chosen per token.
    pub top_k: usize,
    /// Width of one expert.
    pub inter: usize,
    /// Renormalize the top-k softmax weights to sum to 1.
    pub norm_topk_prob: bool,
    /// A shared expert every token runs, of this width (`None`: none), its output scaled by
    /// `sigmoid(shared_expert_gate . x)` where `shared_gate`.
    pub shared_expert: Option<usize>,
    /// The shared expert has a sigmoid gate (Qwen3.5, Qwen3-Next; GLM-4.5's and
    /// DeepSeek-V3's have none).
    pub shared_gate: bool,
    /// How the router's logits become weights.
    pub router: RouterKind,
    /// The router carries a bias.
    pub router_bias: bool,
    /// The experts' activation.
    pub activation: ExpertActivation,
    /// The experts' projections carry biases.
    pub expert_bias: bool,
}

/// What one decoder layer runs: `h = x + mixer(norm(x))`, `out = h + ffn(norm(h))`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LayerPlan {
    /// The token mixer.
    pub mixer: Mixer,
    /// The feed-forward block.
    pub ffn: Ffn,
}

impl LayerPlan {
    /// The attention variant, for an attention layer.
    pub fn attention(&self) -> Option<&AttentionSpec> {
        match &self.mixer {
            Mixer::Attention(a) => Some(a),
            _ => None,
        }
    }

    /// The linear-attention shape, for a linear-attention layer.
    pub fn linear_attention(&self) -> Option<&LinearAttentionSpec> {
        match &self.mixer {
            Mixer::LinearAttention(a) => Some(a),
            _ => None,
        }
    }

    /// The latent-attention shape, for a multi-head latent attention layer.
    pub fn mla(&self) -> Option<&MlaSpec> {
        match &self.mixer {
            Mixer::Mla(a) => Some(a),
            _ => None,
        }
    }

    /// The MoE variant, for a MoE layer.
    pub fn moe(&self) -> Option<&MoeSpec> {
        match &self.ffn {
            Ffn::Moe(m) => Some(m),
            Ffn::Dense { .. } => None,
        }
    }
}
