//! The reference model's weights, all as `f32`: per layer its token mixer and its MLP.

use super::ops::{add_bias, clamped_swiglu, matmul, swiglu};
use crate::arch::{AttentionSpec, ExpertActivation, LinearAttentionSpec, MoeSpec};

/// A SwiGLU MLP: `down(silu(gate(x)) * up(x))`. Used for dense layers and for each expert.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SwigluWeights {
    /// `gate_proj`, `[inter, hidden]`.
    pub gate: Vec<f32>,
    /// `up_proj`, `[inter, hidden]`.
    pub up: Vec<f32>,
    /// `down_proj`, `[hidden, inter]`.
    pub down: Vec<f32>,
    /// Width of the hidden layer (`inter`).
    pub inter: usize,
    /// Biases of gate `[inter]`, up `[inter]` and down `[hidden]` (gpt-oss's experts).
    pub bias: Option<[Vec<f32>; 3]>,
}

impl SwigluWeights {
    /// Applies the MLP to `x` (`n x hidden`), returning `n x hidden`.
    pub fn forward(&self, x: &[f32], n: usize, hidden: usize) -> Vec<f32> {
        self.forward_with(x, n, hidden, ExpertActivation::SwiGlu)
    }

    /// [`forward`](Self::forward) with the biases (where present, added to each
    /// projection's output) and the given activation.
    pub fn forward_with(
        &self,
        x: &[f32],
        n: usize,
        hidden: usize,
        act: ExpertActivation,
    ) -> Vec<f32> {
        let mut g = matmul(&self.gate, self.inter, hidden, x, n);
        let mut u = matmul(&self.up, self.inter, hidden, x, n);
        if let Some([gb, ub, _]) = &self.bias {
            add_bias(&mut g, gb);
            add_bias(&mut u, ub);
        }
        let a = match act {
            ExpertActivation::ClampedSwiGlu { alpha, limit } => {
                clamped_swiglu(&g, &u, alpha, limit)
            }
            _ => swiglu(&g, &u),
        };
        let mut y = matmul(&self.down, hidden, self.inter, &a, n);
        if let Some([_, _, db]) = &self.bias {
            add_bias(&mut y, db);
        }
        y
    }
}

/// The feed-forward part of a decoder layer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum MlpWeights {
    /// A dense SwiGLU MLP of width `intermediate_size`.
    Dense(SwigluWeights),
    /// Routed experts.
    Moe {
        /// The variant.
        spec: MoeSpec,
        /// Router, `mlp.gate.weight` (gpt-oss: `mlp.router.weight`), `[num_experts, hidden]`.
        router: Vec<f32>,
        /// The router's bias, `[num_experts]` (gpt-oss).
        router_bias: Option<Vec<f32>>,
        /// The router's `e_score_correction_bias`, `[num_experts]` (sigmoid routing).
        correction: Option<Vec<f32>>,
        /// Every expert of the layer, in index order, width `moe_intermediate_size`.
        experts: Vec<SwigluWeights>,
        /// The shared expert and its gate (`mlp.shared_expert_gate.weight`, `[hidden]`;
        /// `None` for an ungated shared expert).
        shared: Option<(SwigluWeights, Option<Vec<f32>>)>,
    },
}

/// The weights of a softmax-attention layer, as f32.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AttentionWeights {
    /// The variant.
    pub spec: AttentionSpec,
    /// `self_attn.q_proj.weight`, `[heads * head_dim, hidden]`, or with an output gate
    /// `[heads * 2 head_dim, hidden]` (`[q | gate]` per head).
    pub q_proj: Vec<f32>,
    /// `self_attn.k_proj.weight`, `[kv_heads * head_dim, hidden]`.
    pub k_proj: Vec<f32>,
    /// `self_attn.v_proj.weight`, `[kv_heads * head_dim, hidden]`.
    pub v_proj: Vec<f32>,
    /// `self_attn.o_proj.weight`, `[hidden, heads * head_dim]`.
    pub o_proj: Vec<f32>,
    /// Biases of q, k, v, o (in that order), present iff the variant has them.
    pub qkvo_bias: Option<[Vec<f32>; 4]>,
    /// `self_attn.q_norm.weight`, `[head_dim]` (`1 + w` for zero-centred norms).
    pub q_norm: Vec<f32>,
    /// `self_attn.k_norm.weight`, `[head_dim]`.
    pub k_norm: Vec<f32>,
    /// `self_attn.sinks`, `[heads]` (gpt-oss).
    pub sinks: Option<Vec<f32>>,
}

/// The weights of a Gated DeltaNet layer, as f32.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LinearAttentionWeights {
    /// The shape.
    pub spec: LinearAttentionSpec,
    /// The input projections as one matrix, rows `[q | k | v | z | b | a]`, `[rows,
    /// hidden]` (Qwen3-Next's grouped `in_proj_qkvz` / `in_proj_ba` de-interleaved).
    pub proj: Vec<f32>,
    /// `conv1d.weight`, `[channels, conv_kernel]`.
    pub conv: Vec<f32>,
    /// `A_log`, `[value_heads]`.
    pub a_log: Vec<f32>,
    /// `dt_bias`, `[value_heads]`.
    pub dt_bias: Vec<f32>,
    /// `norm.weight`, `[value_dim]`.
    pub norm: Vec<f32>,
    /// `out_proj.weight`, `[hidden, value_heads * value_dim]`.
    pub out_proj: Vec<f32>,
}

/// A layer's token mixer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum MixerWeights {
    /// Softmax attention.
    Attention(AttentionWeights),
    /// Gated DeltaNet.
    LinearAttention(LinearAttentionWeights),
    /// Multi-head latent attention.
    Mla(super::MlaWeights),
}

/// The weights of one decoder layer, as f32.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LayerWeights {
    /// `input_layernorm.weight`, `[hidden]`.
    pub input_norm: Vec<f32>,
    /// The token mixer.
    pub mixer: MixerWeights,
    /// `post_attention_layernorm.weight`, `[hidden]`.
    pub post_norm: Vec<f32>,
    /// The MLP.
    pub mlp: MlpWeights,
}
