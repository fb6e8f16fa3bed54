//! Mixtral (`mixtral`): Mixtral-8x7B, Mixtral-8x22B.
//!
//! Every layer is Llama attention (no q/k norm, no biases, GQA, RoPE over the whole head,
//! half-split; a sliding window on every layer where `sliding_window` is set) followed by
//! routed SwiGLU experts: a softmax over every expert, the top k, renormalized. Released
//! checkpoints (and transformers' `save_pretrained`) name the MoE block `block_sparse_moe`,
//! its router `gate` and an expert's projections `w1` (gate), `w3` (up) and `w2` (down);
//! transformers' in-memory layout (`mlp.experts.gate_up_proj` `[E, 2I, H]`, gate rows
//! first, `mlp.gate`) also loads; mlx-community folders stack the experts in
//! `block_sparse_moe.switch_mlp`. Facts and sources: docs/families/mixtral.md.

mod config;
#[cfg(feature = "testkit")]
pub(crate) mod synthetic;

use super::{Family, Names};
use crate::config::{ModelConfig, Parser};
use crate::error::Result;

/// The Mixtral family.
pub(crate) struct Mixtral;

/// Released names first, then transformers' fused in-memory ones.
pub(crate) const NAMES: &[Names] = &[
    Names {
        router: "block_sparse_moe.gate",
        moe: "block_sparse_moe",
        expert_projs: ["w1", "w3", "w2"],
        ..Names::HF
    },
    Names::HF,
];

impl Family for Mixtral {
    fn model_types(&self) -> &'static [&'static str] {
        &["mixtral"]
    }

    fn config(&self, p: &Parser<'_>, model_type: String) -> Result<ModelConfig> {
        config::parse(p, model_type)
    }

    fn names(&self) -> &'static [Names] {
        NAMES
    }
}
