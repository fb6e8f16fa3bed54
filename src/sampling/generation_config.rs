//! `generation_config.json`: end-of-sequence ids and the checkpoint's sampling defaults.

use std::path::Path;

use serde_json::Value;

use super::SamplingParams;
use crate::error::{Error, Result};

/// `generation_config.json`: end-of-sequence ids and sampling defaults. Missing fields are
/// `None`; [`sampling`](Self::sampling) fills them as transformers does.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct GenerationConfig {
    /// `eos_token_id` (an id or a list).
    pub eos_token_ids: Vec<u32>,
    /// `bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `pad_token_id`.
    pub pad_token_id: Option<u32>,
    /// `do_sample`: sample (true) or pick greedily (false, transformers' default).
    pub do_sample: Option<bool>,
    /// `temperature` (transformers' default 1.0).
    pub temperature: Option<f32>,
    /// `top_k` (transformers' default 50).
    pub top_k: Option<usize>,
    /// `top_p` (default 1.0).
    pub top_p: Option<f32>,
    /// `min_p` (default off).
    pub min_p: Option<f32>,
    /// `repetition_penalty` (default 1.0).
    pub repetition_penalty: Option<f32>,
    /// `max_new_tokens`.
    pub max_new_tokens: Option<usize>,
}

impl GenerationConfig {
    /// Reads `generation_config.json` from a checkpoint folder; a folder without one gives
    /// the empty config.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join("generation_config.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_json_str(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Parses `generation_config.json` text; `path` is used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let err = |reason: String| Error::Config {
            path: path.to_path_buf(),
            reason,
        };
        let v: Value =
            serde_json::from_str(text).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| err("the top level is not a JSON object".into()))?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        let ids = |k: &str| -> Result<Vec<u32>> {
            match get(k) {
                None => Ok(Vec::new()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| id(x).ok_or_else(|| err(format!("`{k}` must hold token ids"))))
                    .collect(),
                Some(x) => {
                    Ok(vec![id(x).ok_or_else(|| {
                        err(format!("`{k}` must be a token id or a list"))
                    })?])
                }
            }
        };
        let float = |k: &str| -> Result<Option<f32>> {
            get(k)
                .map(|x| {
                    x.as_f64()
                        .map(|f| f as f32)
                        .ok_or_else(|| err(format!("`{k}` must be a number, found {x}")))
                })
                .transpose()
        };
        let count = |k: &str| -> Result<Option<usize>> {
            get(k)
                .map(|x| {
                    x.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| err(format!("`{k}` must be a non-negative integer")))
                })
                .transpose()
        };
        Ok(GenerationConfig {
            eos_token_ids: ids("eos_token_id")?,
            bos_token_id: ids("bos_token_id")?.first().copied(),
            pad_token_id: ids("pad_token_id")?.first().copied(),
            do_sample: match get("do_sample") {
                None => None,
                Some(x) => Some(
                    x.as_bool()
                        .ok_or_else(|| err("`do_sample` must be true or false".into()))?,
                ),
            },
            temperature: float("temperature")?,
            top_k: count("top_k")?,
            top_p: float("top_p")?,
            min_p: float("min_p")?,
            repetition_penalty: float("repetition_penalty")?,
            max_new_tokens: count("max_new_tokens")?,
        })
    }

    /// The sampling parameters transformers' `generate` would use: greedy unless
    /// `do_sample` is true; then temperature 1.0, top-k 50, top-p 1.0, no min-p unless
    /// given. The repetition penalty applies either way.
    pub fn sampling(&self) -> SamplingParams {
        let repetition_penalty = self.repetition_penalty.unwrap_or(1.0);
        if self.do_sample != Some(true) {
            return SamplingParams {
                repetition_penalty,
                ..SamplingParams::greedy()
            };
        }
        SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(50),
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty,
            ..SamplingParams::greedy()
        }
    }
}
