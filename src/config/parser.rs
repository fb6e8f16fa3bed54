//! [`Parser`]: typed access to a `config.json` object (errors name the file and the
//! field), and the spellings every family shares: RoPE with YaRN, attention heads,
//! activation and quantization checks.

use super::*;

/// A config's RoPE: its base, the rotated fraction of a head, and YaRN scaling if any.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RopeParams {
    pub theta: f64,
    pub partial: f64,
    pub yarn: Option<Yarn>,
}

/// Typed access to the fields of a `config.json` object, with errors naming the file and
/// the field; the family modules parse their configs with it.
pub(crate) struct Parser<'a> {
    pub obj: &'a Map<String, Value>,
    pub path: &'a Path,
}

impl<'a> Parser<'a> {
    /// A parser of the nested object `key` (e.g. a composite config's `text_config`), or
    /// `None` if absent.
    pub fn nested(&self, key: &str) -> Result<Option<Parser<'a>>> {
        match self.obj.get(key).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(Value::Object(obj)) => Ok(Some(Parser {
                obj,
                path: self.path,
            })),
            Some(v) => Err(self.err(format!("`{key}` must be an object, found {v}"))),
        }
    }

    /// `model_type`, required.
    pub fn model_type(&self) -> Result<String> {
        match self.get("model_type") {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(self.err(format!("`model_type` must be a string, found {v}"))),
            None => Err(self.err("missing required field `model_type`")),
        }
    }

    pub fn err(&self, reason: impl Into<String>) -> Error {
        Error::Config {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    /// Whether `key` is present with the value `null` ([`Parser::get`] sees no such key).
    pub fn is_null(&self, key: &str) -> bool {
        self.obj.get(key).is_some_and(Value::is_null)
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
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

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(format!("missing required field `{key}`")))
    }

    pub fn positive(&self, key: &str) -> Result<usize> {
        let n = self.usize(key)?;
        if n == 0 {
            return Err(self.err(format!("`{key}` must be positive")));
        }
        Ok(n)
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be a number, found {v}"))),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be true or false, found {v}"))),
        }
    }

    pub fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
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

    /// The RoPE of the config: `rope_theta` and `partial_rotary_factor` at the top level
    /// or inside `rope_parameters` / `rope_scaling` (default 10000 and 1), and YaRN
    /// scaling where `rope_type` (or `type`) is `"yarn"`; other rope types are an error.
    pub fn rope(&self) -> Result<RopeParams> {
        self.rope_or(10000.0)
    }

    /// The dims of a head RoPE rotates: `int(head_dim * partial_rotary_factor)` (as
    /// transformers), the factor from the config (top level, `rope_parameters` or
    /// `rope_scaling`) or else the family's default; an even number in `2..=head_dim`.
    pub fn rotary_dim(
        &self,
        rope: &RopeParams,
        head_dim: usize,
        default_partial: f64,
    ) -> Result<usize> {
        let given = self.get("partial_rotary_factor").is_some()
            || ["rope_parameters", "rope_scaling"].iter().any(|k| {
                self.get(k)
                    .is_some_and(|r| r.get("partial_rotary_factor").is_some())
            });
        let partial = if given { rope.partial } else { default_partial };
        let rotary_dim = (head_dim as f64 * partial) as usize;
        if rotary_dim == 0 || rotary_dim % 2 != 0 || rotary_dim > head_dim {
            return Err(self.err(format!(
                "partial_rotary_factor {partial} of head_dim {head_dim} gives {rotary_dim} rotary dims; an even number in 2..={head_dim} is needed"
            )));
        }
        Ok(rotary_dim)
    }

    /// [`Parser::rope`] with a family's default base.
    pub fn rope_or(&self, default_theta: f64) -> Result<RopeParams> {
        let mut theta = self.opt_f64("rope_theta")?;
        let mut partial = self.opt_f64("partial_rotary_factor")?;
        let mut rope_type: Option<String> = None;
        let mut yarn_params: Option<&Map<String, Value>> = None;
        for key in ["rope_parameters", "rope_scaling"] {
            let Some(v) = self.get(key) else { continue };
            if v.is_null() {
                continue;
            }
            let Some(params) = v.as_object() else {
                return Err(self.err(format!("`{key}` must be an object or null, found {v}")));
            };
            yarn_params = Some(params);
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
        let yarn = match rope_type.as_deref() {
            None | Some("default") => None,
            Some("yarn") => Some(self.yarn(yarn_params)?),
            Some(t) => {
                return Err(self.err(format!(
                    "rope_type {t:?} is not supported (\"default\" and \"yarn\" are)"
                )))
            }
        };
        let theta = theta.unwrap_or(default_theta);
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
        Ok(RopeParams {
            theta,
            partial,
            yarn,
        })
    }

    /// YaRN's parameters from a rope object (`rope_parameters` / `rope_scaling`).
    fn yarn(&self, params: Option<&Map<String, Value>>) -> Result<Yarn> {
        let num = |key: &str| -> Result<Option<f64>> {
            match params.and_then(|p| p.get(key)).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => match v.as_f64() {
                    Some(x) if x.is_finite() => Ok(Some(x)),
                    _ => Err(self.err(format!("YaRN's `{key}` must be a number, found {v}"))),
                },
            }
        };
        let original = match num("original_max_position_embeddings")? {
            Some(n) if (1.0..=1e9).contains(&n) && n.fract() == 0.0 => n as usize,
            Some(n) => {
                return Err(self.err(format!(
                    "YaRN's `original_max_position_embeddings` must be a positive whole number, found {n}"
                )))
            }
            None => {
                return Err(self.err(
                    "YaRN RoPE needs `original_max_position_embeddings` in its rope parameters",
                ))
            }
        };
        let factor = match num("factor")? {
            Some(f) => f,
            None => {
                let max = self.opt_usize("max_position_embeddings")?.ok_or_else(|| {
                    self.err("YaRN RoPE needs `factor` or `max_position_embeddings`")
                })?;
                max as f64 / original as f64
            }
        };
        if !(factor > 0.0 && factor <= 1e6) {
            return Err(self.err(format!(
                "YaRN's `factor` must be in (0, 1e6], found {factor}"
            )));
        }
        let mscale = |scale: f64, m: f64| {
            if scale <= 1.0 {
                1.0
            } else {
                0.1 * m * scale.ln() + 1.0
            }
        };
        let attention_factor = match (
            num("attention_factor")?,
            num("mscale")?,
            num("mscale_all_dim")?,
        ) {
            (Some(a), _, _) => a,
            (None, Some(m), Some(a)) if m != 0.0 && a != 0.0 => {
                mscale(factor, m) / mscale(factor, a)
            }
            _ => mscale(factor, 1.0),
        };
        // transformers: `get("beta_fast") or 32` (a zero is the default too).
        let beta = |key: &str, default: f64| -> Result<f64> {
            Ok(num(key)?.filter(|&b| b != 0.0).unwrap_or(default))
        };
        let (beta_fast, beta_slow) = (beta("beta_fast", 32.0)?, beta("beta_slow", 1.0)?);
        if !(beta_fast > 0.0 && beta_slow > 0.0) {
            return Err(self.err(format!(
                "YaRN's beta_fast and beta_slow must be positive, found {beta_fast} and {beta_slow}"
            )));
        }
        let truncate = match params
            .and_then(|p| p.get("truncate"))
            .filter(|v| !v.is_null())
        {
            None => true,
            Some(v) => v.as_bool().ok_or_else(|| {
                self.err(format!("YaRN's `truncate` must be a boolean, found {v}"))
            })?,
        };
        Ok(Yarn {
            factor,
            beta_fast,
            beta_slow,
            original_max_position_embeddings: original,
            truncate,
            attention_factor,
        })
    }

    /// `hidden_act` must be SiLU where given.
    pub fn check_silu(&self) -> Result<()> {
        if let Some(act) = self.get("hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(self.err(format!("hidden_act {act} is not supported (only \"silu\")")));
            }
        }
        Ok(())
    }

    /// `quantization` / `quantization_config`, where present, must be MLX affine.
    pub fn check_quantization(&self) -> Result<()> {
        self.check_quantization_with(&[])
    }

    /// [`Parser::check_quantization`], also accepting the `quant_method`s and MLX `mode`s
    /// named (gpt-oss's `"mxfp4"`: the released experts, and mlx-lm's MXFP4 quantization).
    pub fn check_quantization_with(&self, methods: &[&str]) -> Result<()> {
        for key in ["quantization", "quantization_config"] {
            let Some(q) = self.get(key) else { continue };
            if let Some(method) = q
                .get("quant_method")
                .and_then(Value::as_str)
                .filter(|m| !methods.contains(m))
            {
                return Err(self.err(format!(
                    "`{key}.quant_method` {method:?} is not supported (MLX affine quantization is)"
                )));
            }
            if let Some(mode) = q.get("mode").and_then(Value::as_str) {
                if mode != "affine" && !methods.contains(&mode) {
                    return Err(self.err(format!(
                        "`{key}.mode` {mode:?} is not supported (\"affine\"{})",
                        methods
                            .iter()
                            .map(|m| format!(" or {m:?}"))
                            .collect::<String>()
                    )));
                }
            }
        }
        Ok(())
    }

    /// `layer_types` where present: per layer, whether its entry is `marked` (every entry
    /// must be `marked` or `other`, one per layer); `None` without the key.
    pub fn layer_types(
        &self,
        layers: usize,
        marked: &str,
        other: &str,
    ) -> Result<Option<Vec<bool>>> {
        match self.get("layer_types") {
            None => Ok(None),
            Some(Value::Array(items)) => {
                if items.len() != layers {
                    return Err(self.err(format!(
                        "`layer_types` has {} entries for {layers} layers",
                        items.len()
                    )));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(l, v)| match v.as_str() {
                        Some(t) if t == marked => Ok(true),
                        Some(t) if t == other => Ok(false),
                        _ => Err(self.err(format!(
                            "`layer_types[{l}]` is {v}; this version knows \"{marked}\" and \"{other}\""
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some)
            }
            Some(v) => Err(self.err(format!("`layer_types` must be a list, found {v}"))),
        }
    }

    /// A list of layer indices (`mlp_only_layers`), empty if absent.
    pub fn layer_list(&self, key: &str) -> Result<Vec<usize>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| self.err(format!("`{key}` must be a list of layer indices")))
                })
                .collect(),
            Some(v) => Err(self.err(format!("`{key}` must be a list, found {v}"))),
        }
    }

    /// `num_hidden_layers`: positive and at most [`MAX_LAYERS`], so that nothing sized by
    /// it is allocated before it is known to be sane.
    pub fn num_hidden_layers(&self) -> Result<usize> {
        let n = self.positive("num_hidden_layers")?;
        if n > MAX_LAYERS {
            return Err(self.err(format!(
                "num_hidden_layers {n} is above the supported maximum of {MAX_LAYERS}"
            )));
        }
        Ok(n)
    }

    /// `rms_norm_eps` (default 1e-6), a finite non-negative number.
    pub fn rms_norm_eps(&self) -> Result<f32> {
        let eps = self.opt_f64("rms_norm_eps")?.unwrap_or(1e-6);
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(self.err("`rms_norm_eps` must be a non-negative number"));
        }
        Ok(eps as f32)
    }

    /// The stored dtype named by `dtype` or `torch_dtype`.
    pub fn dtype(&self) -> Option<String> {
        self.get("dtype")
            .or_else(|| self.get("torch_dtype"))
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// Query and key/value heads and the head width: `num_attention_heads` (positive),
    /// `num_key_value_heads` (default: the query heads; must divide them) and `head_dim`
    /// (default `hidden / heads`; positive and even).
    pub fn attention_heads(&self, hidden_size: usize) -> Result<(usize, usize, usize)> {
        self.attention_heads_with(hidden_size, None)
    }

    /// [`Parser::attention_heads`] with a family's default `num_key_value_heads` (`None`:
    /// as many as the query heads; Mixtral's 8).
    pub fn attention_heads_with(
        &self,
        hidden_size: usize,
        default_kv: Option<usize>,
    ) -> Result<(usize, usize, usize)> {
        let num_attention_heads = self.positive("num_attention_heads")?;
        let num_key_value_heads = self
            .opt_usize("num_key_value_heads")?
            .unwrap_or(default_kv.unwrap_or(num_attention_heads));
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
        Ok((num_attention_heads, num_key_value_heads, head_dim))
    }
}
