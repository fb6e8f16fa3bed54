//! A plain f32 CPU reference of the forward pass of every supported family: the oracle every GPU kernel is
//! tested against.
//!
//! The free functions are the individual operations on row-major `f32` slices
//! ([`rms_norm`], [`matmul`], [`rope`], [`attention`], [`router_topk`], [`swiglu`], ...);
//! [`ReferenceModel`] runs a whole model with them. The Gated DeltaNet token mixer of
//! Qwen3.5-MoE / Qwen3-Next linear-attention layers ([`causal_conv1d_silu`],
//! [`delta_gates`], [`gated_delta_rule`], [`gated_rms_norm`]) follows HF's eager torch
//! fallbacks the same way. Clarity beats speed here: everything is
//! computed in `f32` with sequential sums, in the order HF transformers' eager PyTorch
//! implementation (`modeling_qwen3_moe.py`) uses, and agrees with it to a few `1e-6` on
//! test-sized models.
//!
//! The RoPE tables of [`rope_tables`] are the single source of truth for positions: the
//! GPU uses the same tables.

mod forward;
mod linear_attn;
mod mla;
mod ops;
mod router;
mod weights;

pub use forward::{ReferenceModel, Routing, Trace};
pub use linear_attn::{
    causal_conv1d_silu, delta_gates, gated_delta_rule, gated_rms_norm, softplus, DeltaNetShape,
};
pub use mla::{MlaQuery, MlaWeights};
pub use ops::{
    add_bias, attention, attention_with, clamped_swiglu, matmul, rms_norm, rope, rope_inv_freq,
    rope_tables, rope_tables_scaled, silu, softmax_rows, swiglu, yarn_inv_freq,
};
pub use router::{router_sigmoid_groups, router_topk, router_topk_softmax};
pub use weights::{
    AttentionWeights, LayerWeights, LinearAttentionWeights, MixerWeights, MlpWeights, SwigluWeights,
};
