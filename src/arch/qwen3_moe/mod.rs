//! Qwen3-MoE (`qwen3_moe`): Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder.
//!
//! Every layer is softmax attention (q/k RMSNorm per head, full RoPE, optional biases)
//! followed by routed experts (softmax top-k, optional renormalization) or, in the layers
//! `decoder_sparse_step` / `mlp_only_layers` name, a dense SwiGLU MLP. Tensor names are
//! transformers' (`model.layers.{l}.self_attn.q_proj.weight`, ...); mlx-community
//! checkpoints use the same names with stacked `switch_mlp` experts.

mod config;
#[cfg(feature = "testkit")]
pub(crate) mod synthetic;

use super::{Family, Names};
use crate::config::{ModelConfig, Parser};
use crate::error::Result;

/// The Qwen3-MoE family.
pub(crate) struct Qwen3Moe;

impl Family for Qwen3Moe {
    fn model_types(&self) -> &'static [&'static str] {
        &["qwen3_moe"]
    }

    fn config(&self, p: &Parser<'_>, model_type: String) -> Result<ModelConfig> {
        config::parse(p, model_type)
    }

    fn names(&self) -> &'static [Names] {
        &[Names::HF]
    }
}
