//! `config.json`: the model's hyper-parameters, in either spelling transformers writes.
//!
//! Released checkpoints write `rope_theta`, `num_experts`, `torch_dtype`; transformers v5
//! `save_pretrained` writes `rope_parameters: {rope_theta, rope_type}`,
//! `num_local_experts`, `dtype`. Both are accepted.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The model types this version runs.
pub const SUPPORTED_MODEL_TYPES: &str = "qwen3_moe";

/// Hyper-parameters of a Qwen3-MoE style model, as read from `config.json`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ModelConfig {
    /// `model_type` (`"qwen3_moe"`).
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
        Parser { obj, path }.parse()
    }

    /// Whether decoder layer `layer` uses routed experts (else a dense MLP).
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.num_experts > 0
            && !self.mlp_only_layers.contains(&layer)
            && (layer + 1) % self.decoder_sparse_step == 0
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

struct Parser<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl Parser<'_> {
    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Config {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.err(format!("`{key}` must be a non-negative integer, found {v}"))
                }),
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(format!("missing required field `{key}`")))
    }

    fn positive(&self, key: &str) -> Result<usize> {
        let n = self.usize(key)?;
        if n == 0 {
            return Err(self.err(format!("`{key}` must be positive")));
        }
        Ok(n)
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be a number, found {v}"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be true or false, found {v}"))),
        }
    }

    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        let bad = || self.err(format!("`{key}` must be a token id or a list of token ids"));
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(bad)
                })
                .collect(),
            Some(v) => Ok(vec![v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(bad)?]),
        }
    }

    fn rope(&self) -> Result<(f64, f64)> {
        // (theta, partial_rotary_factor)
        let mut theta = self.opt_f64("rope_theta")?;
        let mut partial = self.opt_f64("partial_rotary_factor")?;
        let mut rope_type: Option<String> = None;
        for key in ["rope_parameters", "rope_scaling"] {
            let Some(v) = self.get(key) else { continue };
            let Some(params) = v.as_object() else {
                return Err(self.err(format!("`{key}` must be an object or null, found {v}")));
            };
            if let Some(t) = params.get("rope_theta").filter(|v| !v.is_null()) {
                theta = Some(t.as_f64().ok_or_else(|| {
                    self.err(format!("`{key}.rope_theta` must be a number, found {t}"))
                })?);
            }
            if let Some(p) = params.get("partial_rotary_factor").filter(|v| !v.is_null()) {
                partial = Some(p.as_f64().ok_or_else(|| {
                    self.err(format!("`{key}.partial_rotary_factor` must be a number"))
                })?);
            }
            for tkey in ["rope_type", "type"] {
                if let Some(t) = params.get(tkey).and_then(Value::as_str) {
                    rope_type = Some(t.to_string());
                }
            }
        }
        if let Some(t) = rope_type {
            if t != "default" {
                return Err(self.err(format!(
                    "rope_type {t:?} is not supported (only \"default\" RoPE is)"
                )));
            }
        }
        let theta = theta.unwrap_or(10000.0);
        if !(theta.is_finite() && theta > 0.0) {
            return Err(self.err(format!(
                "rope theta must be a positive number, found {theta}"
            )));
        }
        let partial = partial.unwrap_or(1.0);
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(self.err(format!(
                "partial_rotary_factor must be in (0, 1], found {partial}"
            )));
        }
        Ok((theta, partial))
    }

    fn parse(&self) -> Result<ModelConfig> {
        let model_type = match self.get("model_type") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(self.err(format!("`model_type` must be a string, found {v}"))),
            None => return Err(self.err("missing required field `model_type`")),
        };
        if model_type != "qwen3_moe" {
            return Err(Error::UnsupportedModel {
                path: self.path.to_path_buf(),
                model_type,
                supported: SUPPORTED_MODEL_TYPES,
            });
        }
        if let Some(act) = self.get("hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(self.err(format!("hidden_act {act} is not supported (only \"silu\")")));
            }
        }
        for key in ["quantization", "quantization_config"] {
            let Some(q) = self.get(key) else { continue };
            if let Some(method) = q.get("quant_method").and_then(Value::as_str) {
                return Err(self.err(format!(
                    "`{key}.quant_method` {method:?} is not supported (MLX affine quantization is)"
                )));
            }
            if let Some(mode) = q.get("mode").and_then(Value::as_str) {
                if mode != "affine" {
                    return Err(self.err(format!(
                        "`{key}.mode` {mode:?} is not supported (only \"affine\")"
                    )));
                }
            }
        }
        let hidden_size = self.positive("hidden_size")?;
        let num_attention_heads = self.positive("num_attention_heads")?;
        let num_key_value_heads = self
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(self.err(format!(
                "num_attention_heads ({num_attention_heads}) must be a positive multiple of num_key_value_heads ({num_key_value_heads})"
            )));
        }
        let head_dim = match self.opt_usize("head_dim")? {
            Some(d) => d,
            None => hidden_size / num_attention_heads,
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(self.err(format!(
                "head_dim must be a positive even number, found {head_dim}"
            )));
        }
        let (rope_theta, partial) = self.rope()?;
        // transformers' qwen3_moe rotates the whole head whatever `partial_rotary_factor`
        // says; the factor is validated and kept for architectures that honour it.
        let _ = partial;
        let rotary_dim = head_dim;
        let num_experts = match self.opt_usize("num_experts")? {
            Some(n) => n,
            None => self.opt_usize("num_local_experts")?.unwrap_or(0),
        };
        let num_experts_per_tok = self.opt_usize("num_experts_per_tok")?.unwrap_or(0);
        if num_experts > 0 && (num_experts_per_tok == 0 || num_experts_per_tok > num_experts) {
            return Err(self.err(format!(
                "num_experts_per_tok must be in 1..={num_experts}, found {num_experts_per_tok}"
            )));
        }
        let decoder_sparse_step = self.opt_usize("decoder_sparse_step")?.unwrap_or(1);
        if decoder_sparse_step == 0 {
            return Err(self.err("`decoder_sparse_step` must be positive"));
        }
        let num_hidden_layers = self.positive("num_hidden_layers")?;
        let mlp_only_layers = match self.get("mlp_only_layers") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64().map(|n| n as usize).ok_or_else(|| {
                        self.err("`mlp_only_layers` must be a list of layer indices")
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            Some(v) => return Err(self.err(format!("`mlp_only_layers` must be a list, found {v}"))),
        };
        let rms_norm_eps = self.opt_f64("rms_norm_eps")?.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps >= 0.0) {
            return Err(self.err("`rms_norm_eps` must be a non-negative number"));
        }
        let dtype = self
            .get("dtype")
            .or_else(|| self.get("torch_dtype"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let moe_intermediate_size = if num_experts > 0 {
            self.positive("moe_intermediate_size")?
        } else {
            self.opt_usize("moe_intermediate_size")?.unwrap_or(0)
        };
        let cfg = ModelConfig {
            model_type,
            vocab_size: self.positive("vocab_size")?,
            hidden_size,
            intermediate_size: self.opt_usize("intermediate_size")?.unwrap_or(0),
            moe_intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: rms_norm_eps as f32,
            rope_theta,
            rotary_dim,
            num_experts,
            num_experts_per_tok,
            norm_topk_prob: self.opt_bool("norm_topk_prob")?.unwrap_or(false),
            decoder_sparse_step,
            mlp_only_layers,
            tie_word_embeddings: self.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: self.opt_bool("attention_bias")?.unwrap_or(false),
            max_position_embeddings: self.opt_usize("max_position_embeddings")?.unwrap_or(32768),
            dtype,
            eos_token_ids: self.token_ids("eos_token_id")?,
            bos_token_id: self.token_ids("bos_token_id")?.first().copied(),
        };
        if (0..cfg.num_hidden_layers).any(|l| !cfg.is_moe_layer(l)) && cfg.intermediate_size == 0 {
            return Err(self.err("`intermediate_size` is required: the model has dense MLP layers"));
        }
        Ok(cfg)
    }
}
