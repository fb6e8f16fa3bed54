//! Tensor names: where a family's checkpoints keep each weight.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};

/// The naming scheme of one checkpoint: the prefix of the decoder's tensors and the LM
/// head's name, found by [`Names::detect`] among a family's candidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    /// Prefix of the decoder's tensors (`model.`, `model.language_model.`, ...).
    pub prefix: &'static str,
    /// Full name of the LM head.
    pub lm_head: &'static str,
}

impl Names {
    /// Hugging Face text models: `model.*`, `lm_head.weight`.
    pub const HF: Names = Names {
        prefix: "model.",
        lm_head: "lm_head.weight",
    };

    /// The first of `candidates` whose embedding the checkpoint holds.
    pub fn detect(ckpt: &Checkpoint, candidates: &[Names]) -> Result<Names> {
        candidates
            .iter()
            .find(|n| ckpt.contains(&n.embed()))
            .cloned()
            .ok_or_else(|| Error::MissingTensor {
                name: candidates
                    .iter()
                    .map(Names::embed)
                    .collect::<Vec<_>>()
                    .join(" or "),
                dir: ckpt.dir().to_path_buf(),
            })
    }

    pub fn embed(&self) -> String {
        format!("{}embed_tokens.weight", self.prefix)
    }

    pub fn final_norm(&self) -> String {
        format!("{}norm.weight", self.prefix)
    }

    /// `{prefix}layers.{l}.{rest}`.
    pub fn layer(&self, l: usize, rest: &str) -> String {
        format!("{}layers.{l}.{rest}", self.prefix)
    }

    /// Per-expert tensor: `{prefix}layers.{l}.mlp.experts.{e}.{proj}.weight`.
    pub fn expert(&self, l: usize, e: usize, proj: &str) -> String {
        self.layer(l, &format!("mlp.experts.{e}.{proj}.weight"))
    }

    /// Fused expert tensor (transformers v5): `{prefix}layers.{l}.mlp.experts.{which}`.
    pub fn fused_experts(&self, l: usize, which: &str) -> String {
        self.layer(l, &format!("mlp.experts.{which}"))
    }
}
