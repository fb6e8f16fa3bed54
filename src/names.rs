//! Tensor names of Qwen3-MoE checkpoints, as transformers writes them.

pub(crate) fn layer(l: usize, rest: &str) -> String {
    format!("model.layers.{l}.{rest}")
}

pub(crate) const EMBED: &str = "model.embed_tokens.weight";
pub(crate) const FINAL_NORM: &str = "model.norm.weight";
pub(crate) const LM_HEAD: &str = "lm_head.weight";

/// Per-expert tensor: `model.layers.{l}.mlp.experts.{e}.{proj}.weight`.
pub(crate) fn expert(l: usize, e: usize, proj: &str) -> String {
    format!("model.layers.{l}.mlp.experts.{e}.{proj}.weight")
}

/// Fused expert tensor (transformers v5): `model.layers.{l}.mlp.experts.{gate_up_proj|down_proj}`.
pub(crate) fn fused_experts(l: usize, which: &str) -> String {
    format!("model.layers.{l}.mlp.experts.{which}")
}
