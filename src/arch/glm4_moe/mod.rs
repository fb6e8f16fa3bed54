//! GLM-4.5 / GLM-4.6 MoE (`glm4_moe`): GLM-4.5, GLM-4.5-Air, GLM-4.6.
//!
//! Every layer is attention (q/k/v biases but no o_proj bias, optional per-head q/k norms,
//! RoPE over the first half of each head, half-split) followed, after the first
//! `first_k_dense_replace` dense layers, by routed experts chosen by `sigmoid(logit) +
//! e_score_correction_bias` within the best `topk_group` of `n_group` groups, weighted by
//! their sigmoids (renormalized) times `routed_scaling_factor`, plus ungated shared
//! experts (`mlp.shared_experts`, width `moe_intermediate_size * n_shared_experts`).
//! Released checkpoints carry a multi-token-prediction layer after the last decoder layer,
//! which is not used. Facts and sources: docs/families/glm4_moe.md.

pub(crate) mod config;
#[cfg(feature = "testkit")]
pub(crate) mod synthetic;

use super::{Family, Names};
use crate::config::{ModelConfig, Parser};
use crate::error::Result;

/// The GLM-4.5 MoE family.
pub(crate) struct Glm4Moe;

/// Hugging Face names, with the shared experts at `mlp.shared_experts`.
const NAMES: &[Names] = &[Names {
    shared: "mlp.shared_experts",
    ..Names::HF
}];

impl Family for Glm4Moe {
    fn model_types(&self) -> &'static [&'static str] {
        &["glm4_moe"]
    }

    fn config(&self, p: &Parser<'_>, model_type: String) -> Result<ModelConfig> {
        config::parse(p, model_type)
    }

    fn names(&self) -> &'static [Names] {
        NAMES
    }
}
