//! `config.json`: the model's hyper-parameters, in every spelling its family's checkpoints
//! use, and the per-layer plan derived from them.
//!
//! The `model_type` picks the family ([`crate::arch`]), whose module parses the rest: e.g.
//! released Qwen3-MoE checkpoints write `rope_theta`, `num_experts`, `torch_dtype`, while
//! transformers v5 `save_pretrained` writes `rope_parameters: {rope_theta, rope_type}`,
//! `num_local_experts`, `dtype`; both are accepted.

use std::path::Path;

use serde_json::{Map, Value};

use crate::arch::{self, LayerPlan, LinearAttentionSpec};
use crate::error::{Error, Result};

mod parser;

pub(crate) use parser::Parser;

/// The model types this version runs.
pub const SUPPORTED_MODEL_TYPES: &str = arch::SUPPORTED;

/// Most decoder layers a config may declare.
pub(crate) const MAX_LAYERS: usize = 4096;

/// Most routed experts per MoE layer a config may declare (the largest released models
/// have 512), so that nothing sized by it is allocated before it is known to be sane.
pub(crate) const MAX_EXPERTS: usize = 1 << 16;

/// Hyper-parameters of a model, as read from `config.json`, and the plan of its layers.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ModelConfig {
    /// `model_type` (e.g. `"qwen3_moe"`); for a composite (vision-language) config, that of
    /// the top level.
    pub model_type: String,
    /// Vocabulary size (rows of the embedding and of the LM head).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the dense MLP of non-MoE layers.
    pub intermediate_size: usize,
    /// Width of one expert.
    pub moe_intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); divides `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// Width of one attention head (independent of hidden/heads).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f64,
    /// Leading dims of each head that RoPE rotates (even, <= `head_dim`).
    pub rotary_dim: usize,
    /// Routed experts per MoE layer.
    pub num_experts: usize,
    /// Experts chosen per token.
    pub num_experts_per_tok: usize,
    /// Renormalize the top-k routing weights to sum to 1.
    pub norm_topk_prob: bool,
    /// Every `decoder_sparse_step`-th layer is MoE (unless in `mlp_only_layers`).
    pub decoder_sparse_step: usize,
    /// Layers forced to a dense MLP.
    pub mlp_only_layers: Vec<usize>,
    /// The LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Projections carry biases (q/k/v/o).
    pub attention_bias: bool,
    /// Maximum positions the model was trained for.
    pub max_position_embeddings: usize,
    /// The stored dtype named in the config (`dtype` / `torch_dtype`), if any.
    pub dtype: Option<String>,
    /// End-of-sequence token ids.
    pub eos_token_ids: Vec<u32>,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<u32>,
    /// The shape of the linear-attention (Gated DeltaNet) layers, if the model has any.
    pub linear_attention: Option<LinearAttentionSpec>,
    /// Width of the shared expert of MoE layers (0: none).
    pub shared_expert_intermediate_size: usize,
    /// Attention layers gate their output by `sigmoid` of a second half of q_proj.
    pub attn_output_gate: bool,
    /// YaRN scaling of the RoPE frequencies (`rope_type: "yarn"`), if any.
    pub rope_scaling: Option<Yarn>,
    /// What each decoder layer runs, derived by the model's family.
    pub layers: Vec<LayerPlan>,
}

/// YaRN RoPE scaling (transformers' `_compute_yarn_parameters`): each rotary frequency
/// blends its original value with the value divided by `factor` along a linear ramp over
/// the dims between the correction dims of `beta_fast` and `beta_slow` rotations in
/// `original_max_position_embeddings` positions (rounded outward with `truncate`), and
/// the cosines and sines are multiplied by `attention_factor`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Yarn {
    /// The context extension factor.
    pub factor: f64,
    /// Rotations that bound the extrapolated (unchanged) dims (default 32).
    pub beta_fast: f64,
    /// Rotations that bound the interpolated dims (default 1).
    pub beta_slow: f64,
    /// The pretraining context length.
    pub original_max_position_embeddings: usize,
    /// Round the correction range to whole dims (transformers' default: true).
    pub truncate: bool,
    /// The cos/sin scale (default `0.1 ln(factor) + 1`, or from `mscale` /
    /// `mscale_all_dim`).
    pub attention_factor: f64,
}

impl ModelConfig {
    /// Reads and validates `config.json` from a checkpoint folder (or a file path).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("config.json");
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Self::from_json_str(&text, &path)
    }

    /// Parses and validates config JSON text; `path` is used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: format!("not valid JSON: {e}"),
        })?;
        let obj = value.as_object().ok_or_else(|| Error::Config {
            path: path.to_path_buf(),
            reason: "the top level is not a JSON object".into(),
        })?;
        let parser = Parser { obj, path };
        let model_type = parser.model_type()?;
        let family = arch::family(&model_type).ok_or_else(|| Error::UnsupportedModel {
            path: path.to_path_buf(),
            model_type: model_type.clone(),
            supported: SUPPORTED_MODEL_TYPES,
        })?;
        let cfg = family.config(&parser, model_type)?;
        let experts = cfg
            .layers
            .iter()
            .filter_map(|p| p.moe().map(|m| m.experts))
            .chain([cfg.num_experts])
            .max()
            .unwrap_or(0);
        if experts > MAX_EXPERTS {
            return Err(parser.err(format!(
                "{experts} experts per layer is above the supported maximum of {MAX_EXPERTS}"
            )));
        }
        Ok(cfg)
    }

    /// Whether decoder layer `layer` uses routed experts (else a dense MLP).
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.layers.get(layer).is_some_and(|p| p.moe().is_some())
    }

    /// Indices of the MoE layers.
    pub fn moe_layers(&self) -> Vec<usize> {
        (0..self.num_hidden_layers)
            .filter(|&l| self.is_moe_layer(l))
            .collect()
    }

    /// Query heads per key/value head.
    pub fn gqa_group(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}
