//! DeepSeek-V3 (`deepseek_v3`; Kimi-K2's `kimi_k2` configs use it too).
//!
//! Layers are multi-head latent attention (low-rank q and kv projections with their
//! RMSNorms, a compressed latent plus one shared RoPE key per token, interleaved YaRN
//! RoPE, a softmax scale with YaRN's mscale) followed, after `first_k_dense_replace` dense
//! layers, by GLM-4.5's sigmoid routing (correction bias, expert groups, scaling) and
//! ungated shared experts (`mlp.shared_experts`). The config and plan are read here; the
//! CPU reference runs latent attention (`reference::MlaWeights`), the GPU engine does not
//! yet (a typed error says so).
//! Facts and sources: docs/families/deepseek_v3.md.

pub(crate) mod absorb;
mod config;
#[cfg(feature = "testkit")]
pub(crate) mod synthetic;

use super::{Family, Names};
use crate::config::{ModelConfig, Parser};
use crate::error::Result;

/// The DeepSeek-V3 family.
pub(crate) struct DeepseekV3;

/// Hugging Face names, with the shared experts at `mlp.shared_experts`.
const NAMES: &[Names] = &[Names {
    shared: "mlp.shared_experts",
    ..Names::HF
}];

impl Family for DeepseekV3 {
    fn model_types(&self) -> &'static [&'static str] {
        &["deepseek_v3", "kimi_k2"]
    }

    fn config(&self, p: &Parser<'_>, model_type: String) -> Result<ModelConfig> {
        config::parse(p, model_type)
    }

    fn names(&self) -> &'static [Names] {
        NAMES
    }
}
