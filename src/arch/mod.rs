//! Model families: what is particular to each architecture, in one module per family.
//!
//! A family (the crate-internal `Family` trait) parses its `config.json` spellings into a
//! [`ModelConfig`] with a [`LayerPlan`] per layer, and names the tensor-naming schemes of
//! its checkpoints. Everything downstream (weights, expert stores, the forward pass,
//! session state, the CPU reference) follows the plan. Adding a family: a module here, its
//! entry in the family list, and kernels for any block the engine lacks
//! (docs/architecture.md, "Adding a family"). This module's public part is the plan: the
//! blocks a layer can run and their variants.

pub(crate) mod deepseek_v3;
pub(crate) mod glm4_moe;
pub(crate) mod gpt_oss;
pub(crate) mod mixtral;
mod names;
pub(crate) mod olmoe;
mod plan;
pub(crate) mod qwen3_5;
pub(crate) mod qwen3_moe;

pub(crate) use names::{tensor, Names};
pub use plan::{
    AttentionSpec, ExpertActivation, Ffn, LayerPlan, LinearAttentionSpec, Mixer, MlaSpec, MoeSpec,
    RouterKind,
};

use crate::checkpoint::Checkpoint;
use crate::config::{ModelConfig, Parser};
use crate::error::Result;

/// What one model family provides to the engine.
pub(crate) trait Family: Sync {
    /// The `model_type` values of its configs.
    fn model_types(&self) -> &'static [&'static str];

    /// Parses and validates a config of this family (`model_type` already read), deriving
    /// the plan of its layers.
    fn config(&self, p: &Parser<'_>, model_type: String) -> Result<ModelConfig>;

    /// The naming schemes its checkpoints use, most common first.
    fn names(&self) -> &'static [Names];

    /// Whether its RMSNorms multiply by `1 + w` in Hugging Face checkpoints (Qwen3.5's
    /// zero-centred norms). mlx-lm's converter stores `1 + w` instead; such checkpoints
    /// are told apart by their conv1d layout (`Names`, `crate::engine::weights`).
    fn zero_centred_norms(&self) -> bool {
        false
    }

    /// The rows of the fused input projection of linear-attention layer `l`, in the
    /// engine's order `[q | k | v | z | b | a]` (`LinearAttentionSpec::projection_rows`),
    /// as slices of the checkpoint's matrices. Only families with linear attention have it.
    fn linear_projection(
        &self,
        names: &Names,
        l: usize,
        spec: &LinearAttentionSpec,
        ckpt: &Checkpoint,
    ) -> Result<Vec<RowSlice>> {
        let _ = (names, spec, ckpt);
        Err(crate::error::Error::InvalidArgument(format!(
            "layer {l}: this model family has no linear-attention layers"
        )))
    }
}

/// Rows `start..start + count` of the matrix `prefix` (`prefix.weight`, or MLX codes,
/// scales and biases) of `rows` rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowSlice {
    pub prefix: String,
    pub rows: usize,
    pub start: usize,
    pub count: usize,
}

/// Every family this version runs.
static FAMILIES: &[&dyn Family] = &[
    &qwen3_moe::Qwen3Moe,
    &qwen3_5::Qwen35,
    &gpt_oss::GptOss,
    &mixtral::Mixtral,
    &olmoe::Olmoe,
    &glm4_moe::Glm4Moe,
    &deepseek_v3::DeepseekV3,
];

/// The model types this version runs, for messages.
pub(crate) const SUPPORTED: &str =
    "qwen3_moe, qwen3_5_moe, qwen3_5_moe_text, qwen3_next, gpt_oss, mixtral, olmoe, glm4_moe, deepseek_v3, kimi_k2";

/// The family of a `model_type`.
pub(crate) fn family(model_type: &str) -> Option<&'static dyn Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.model_types().contains(&model_type))
}

/// The family of a parsed config.
pub(crate) fn family_of(cfg: &ModelConfig) -> &'static dyn Family {
    family(&cfg.model_type).unwrap_or(&qwen3_moe::Qwen3Moe)
}

/// The tensor names of `ckpt`, a checkpoint of `cfg`'s family.
pub(crate) fn names(cfg: &ModelConfig, ckpt: &Checkpoint) -> Result<Names> {
    Names::detect(ckpt, family_of(cfg).names())
}
