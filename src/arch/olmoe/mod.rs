//! OLMoE (`olmoe`): OLMoE-1B-7B.
//!
//! Every layer is attention with RMSNorms of q and k over each token's whole projection
//! (weights `[heads * head_dim]` and `[kv_heads * head_dim]`, before the split into heads),
//! an optional `clip_qkv` clamp of the normed q and k and of v, RoPE over the whole head
//! (half-split), followed by routed SwiGLU experts: a softmax over every expert, the top
//! k, not renormalized (`norm_topk_prob: false` in the releases). Tensor names are
//! transformers' (`mlp.gate`, per-expert `mlp.experts.{e}.{gate,up,down}_proj`);
//! mlx-community folders stack the experts in `mlp.switch_mlp` and quantize the router
//! like every other matrix. Facts and sources: docs/families/olmoe.md.

mod config;
#[cfg(feature = "testkit")]
pub(crate) mod synthetic;

use super::{Family, Names};
use crate::config::{ModelConfig, Parser};
use crate::error::Result;

/// The OLMoE family.
pub(crate) struct Olmoe;

impl Family for Olmoe {
    fn model_types(&self) -> &'static [&'static str] {
        &["olmoe"]
    }

    fn config(&self, p: &Parser<'_>, model_type: String) -> Result<ModelConfig> {
        config::parse(p, model_type)
    }

    fn names(&self) -> &'static [Names] {
        &[Names::HF]
    }
}
