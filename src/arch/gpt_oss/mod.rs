//! gpt-oss (`gpt_oss`): gpt-oss-20b and gpt-oss-120b.
//!
//! Every layer is softmax attention followed by routed experts. What differs from the Qwen
//! families (facts and sources: docs/families/gpt_oss.md):
//! - attention: no q/k norm; q/k/v/o biases; a learned sink logit per query head joins
//!   each softmax's denominator; layers alternate between a sliding window of
//!   `sliding_window` keys (the query's own included) and full attention (`layer_types`);
//!   YaRN-scaled RoPE over the whole head, half-split;
//! - the router (`mlp.router`, with a bias) takes the top k logits, then a softmax over
//!   those k;
//! - experts carry biases and a clamped SwiGLU (`(clamp(up) + 1) * g * sigmoid(1.702 g)`,
//!   `g = min(gate, limit)`); in Hugging Face checkpoints the experts are stacked
//!   `mlp.experts.gate_up_proj` `[E, H, 2I]` (input-major, gate and up interleaved by
//!   column) and `mlp.experts.down_proj` `[E, I, H]`, with `*_bias` beside them.

mod config;
pub(crate) mod experts;
pub(crate) mod store;
#[cfg(feature = "testkit")]
pub(crate) mod synthetic;

use super::{Family, Names};
use crate::config::{ModelConfig, Parser};
use crate::error::Result;

/// The gpt-oss family.
pub(crate) struct GptOss;

/// Hugging Face names, with the router at `mlp.router`.
const NAMES: &[Names] = &[Names {
    router: ROUTER,
    ..Names::HF
}];

/// gpt-oss's router module.
pub(crate) const ROUTER: &str = "mlp.router";

impl Family for GptOss {
    fn model_types(&self) -> &'static [&'static str] {
        &["gpt_oss"]
    }

    fn config(&self, p: &Parser<'_>, model_type: String) -> Result<ModelConfig> {
        config::parse(p, model_type)
    }

    fn names(&self) -> &'static [Names] {
        NAMES
    }
}
