//! Checking a model against golden logits from HF transformers (`golden.json`).
//!
//! `golden.json` holds `{"ids": [...], "prompt_len": P, "logits": [[...], ...], "atol": x}`:
//! a prompt `ids[..P]` followed by the reference's greedy continuation, and the reference
//! logits at every position. [`check`] prefills the prompt in one call, feeds the rest one
//! token at a time, and compares the logits at the last prompt position and after every
//! decode step.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::Model;

/// Default absolute tolerance when `golden.json` names none.
pub const DEFAULT_ATOL: f32 = 2e-3;

/// The contents of a `golden.json`.
#[derive(Debug, Clone)]
pub struct Golden {
    /// Prompt followed by the greedy continuation.
    pub ids: Vec<u32>,
    /// Length of the prompt.
    pub prompt_len: usize,
    /// Reference logits at every position of `ids`.
    pub logits: Vec<Vec<f32>>,
    /// Absolute tolerance.
    pub atol: f32,
}

impl Golden {
    /// Reads `golden.json` from a fixture folder.
    pub fn load(dir: impl AsRef<Path>) -> Result<Golden> {
        let path = dir.as_ref().join("golden.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let bad = |reason: String| Error::Config {
            path: path.clone(),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let ids: Vec<u32> = v
            .get("ids")
            .and_then(|x| x.as_array())
            .ok_or_else(|| bad("missing `ids` list".into()))?
            .iter()
            .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("`ids` must be token ids".into()))?;
        let prompt_len = v
            .get("prompt_len")
            .and_then(|x| x.as_u64())
            .ok_or_else(|| bad("missing `prompt_len`".into()))? as usize;
        let logits: Vec<Vec<f32>> = v
            .get("logits")
            .and_then(|x| x.as_array())
            .ok_or_else(|| bad("missing `logits`".into()))?
            .iter()
            .map(|row| {
                row.as_array()
                    .and_then(|r| r.iter().map(|x| x.as_f64().map(|f| f as f32)).collect())
            })
            .collect::<Option<_>>()
            .ok_or_else(|| bad("`logits` must be a list of number lists".into()))?;
        let atol = v
            .get("atol")
            .and_then(|x| x.as_f64())
            .map_or(DEFAULT_ATOL, |a| a as f32);
        if prompt_len == 0 || prompt_len > ids.len() || logits.len() < ids.len() {
            return Err(bad(format!(
                "inconsistent sizes: {} ids, prompt_len {prompt_len}, {} logit rows",
                ids.len(),
                logits.len()
            )));
        }
        Ok(Golden {
            ids,
            prompt_len,
            logits,
            atol,
        })
    }
}

/// The outcome of [`check`].
#[derive(Debug, Clone)]
pub struct Report {
    /// The fixture folder.
    pub dir: PathBuf,
    /// Largest absolute logit difference seen.
    pub max_abs_diff: f32,
    /// Positions where the argmax agreed, of those checked.
    pub argmax_agree: usize,
    /// Positions whose argmax was checked (golden top-2 margin above 4 * atol).
    pub argmax_checked: usize,
    /// Positions compared.
    pub positions: usize,
    /// The tolerance used.
    pub atol: f32,
}

impl Report {
    /// Whether every compared logit is within tolerance and every checked argmax agrees.
    pub fn passed(&self) -> bool {
        self.max_abs_diff <= self.atol && self.argmax_agree == self.argmax_checked
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} max_abs_diff={:.3e} argmax={}/{}",
            if self.passed() { "PASS" } else { "FAIL" },
            self.dir.display(),
            self.max_abs_diff,
            self.argmax_agree,
            self.argmax_checked
        )
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

fn top2_margin(v: &[f32]) -> f32 {
    let mut a = f32::NEG_INFINITY;
    let mut b = f32::NEG_INFINITY;
    for &x in v {
        if x > a {
            b = a;
            a = x;
        } else if x > b {
            b = x;
        }
    }
    a - b
}

/// Runs `golden` on `model` in a fresh session and compares logits.
pub fn check(model: &Model, golden: &Golden, dir: &Path) -> Result<Report> {
    let mut report = Report {
        dir: dir.to_path_buf(),
        max_abs_diff: 0.0,
        argmax_agree: 0,
        argmax_checked: 0,
        positions: 0,
        atol: golden.atol,
    };
    let mut session = model.session(golden.ids.len())?;
    let p = golden.prompt_len;
    let mut compare = |got: &[f32], pos: usize| -> Result<()> {
        let want = &golden.logits[pos];
        if got.len() != want.len() {
            return Err(Error::InvalidArgument(format!(
                "golden logits at position {pos} have {} entries, the model gives {}",
                want.len(),
                got.len()
            )));
        }
        let diff = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(
                0.0f32,
                |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
            );
        report.max_abs_diff = report.max_abs_diff.max(diff);
        report.positions += 1;
        if top2_margin(want) > 4.0 * golden.atol {
            report.argmax_checked += 1;
            if argmax(got) == argmax(want) {
                report.argmax_agree += 1;
            }
        }
        Ok(())
    };
    let logits = session.prefill(&golden.ids[..p])?;
    compare(&logits, p - 1)?;
    for (pos, &id) in golden.ids.iter().enumerate().skip(p) {
        let logits = session.step(id)?;
        compare(&logits, pos)?;
    }
    Ok(report)
}
