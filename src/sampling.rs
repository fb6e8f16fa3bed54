//! Picking the next token: greedy, or sampling with temperature, top-k, top-p and min-p,
//! with a logit bias and repetition, presence and frequency penalties; seeded and
//! deterministic. Defaults come from `generation_config.json` ([`GenerationConfig`]).
//! Also the log-probabilities reported with generated tokens ([`TokenLogprob`]).
//!
//! The [`Sampler`] works from full logits ([`Sampler::sample`]) or from a truncated list of
//! the largest logits ([`Sampler::sample_candidates`], for a GPU-side top-N readback); it
//! says how many logits it needs ([`SamplingParams::logits_needed`]) and, given a
//! truncated list, answers only when the list determines the same result as the full
//! logits would.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// How the next token is chosen. The default is greedy (argmax).
///
/// The processing order: logit bias, repetition penalty, presence and frequency penalties
/// (these make the adjusted logits), then temperature, top-k, top-p, min-p and a draw from
/// what is left (transformers' order from the repetition penalty on; the bias and the
/// OpenAI-style penalties come first as in vLLM and llama.cpp).
///
/// Build one from [`greedy`](Self::greedy) or [`with_temperature`](Self::with_temperature)
/// and the `with_*` methods, or with struct update syntax
/// (`SamplingParams { top_k: 40, ..SamplingParams::with_temperature(0.7) }`).
///
/// ```
/// use moestream::SamplingParams;
/// let p = SamplingParams::with_temperature(0.7)
///     .with_top_p(0.9)
///     .with_frequency_penalty(0.5)
///     .with_logit_bias(13, -100.0) // never token 13
///     .with_seed(1);
/// assert!(p.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 (or less) means greedy.
    pub temperature: f32,
    /// Keep the `top_k` largest logits (ties with the k-th kept); 0 turns it off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`;
    /// 1 turns it off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 turns it off.
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of tokens already in the context by
    /// this; 1 turns it off. Applies to every token of the context (prompt and output),
    /// once per distinct token. Must be positive.
    pub repetition_penalty: f32,
    /// OpenAI's presence penalty: subtracted once from the logit of every token generated
    /// at least once so far in this generation (sampled tokens only: the prompt and earlier
    /// turns of a [`Chat`](crate::Chat) do not count). In [-2, 2]; negative values favour
    /// repetition; 0 turns it off.
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty: subtracted from the logit of each token once per time it
    /// was generated so far in this generation (same tokens as
    /// [`presence_penalty`](Self::presence_penalty)). With `c` that count, a logit becomes
    /// `logit - (c * frequency_penalty + presence_penalty)` when `c > 0`. In [-2, 2]; 0
    /// turns it off.
    pub frequency_penalty: f32,
    /// Added to a token's logit before anything else (OpenAI's `logit_bias`): token id to
    /// a bias in [-100, 100]; -100 in effect bans a token, +100 in effect forces it. Ids
    /// must be below the model's vocabulary size (checked when a generation starts; a
    /// [`Sampler`] used directly ignores ids past the logits it is given).
    pub logit_bias: BTreeMap<u32, f32>,
    /// Seed of the random draws; `None` seeds from the clock.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::greedy()
    }
}

/// Largest [`presence_penalty`](SamplingParams::presence_penalty) and
/// [`frequency_penalty`](SamplingParams::frequency_penalty) magnitude (OpenAI's range).
pub const MAX_PENALTY: f32 = 2.0;

/// Largest [`logit_bias`](SamplingParams::logit_bias) magnitude (OpenAI's range).
pub const MAX_LOGIT_BIAS: f32 = 100.0;

/// Extra logits read back beyond what top-k needs when adjustments can lower the
/// candidates (see [`SamplingParams::logits_needed`]).
const ADJUSTED_MARGIN: usize = 32;

/// How many logits a [`Sampler`] needs to pick a token exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsNeeded {
    /// Only the largest logit and its id.
    Argmax,
    /// The `n` largest logits and their ids (more are fine; with penalties or a negative
    /// logit bias some extra help, see [`Sampler::sample_candidates`]).
    Top(usize),
    /// All of them.
    Full,
}

impl SamplingParams {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: BTreeMap::new(),
            seed: None,
        }
    }

    /// Sampling at `temperature` with no truncation.
    pub fn with_temperature(temperature: f32) -> Self {
        SamplingParams {
            temperature,
            ..Self::greedy()
        }
    }

    /// Whether the choice is greedy (no random draw).
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.temperature.is_nan()
    }

    /// Checks the values are in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.temperature.is_nan() {
            return bad("temperature must be a number".into());
        }
        if !(self.top_p >= 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in [0, 1], found {}", self.top_p));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return bad(format!("min_p must be in [0, 1], found {}", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty must be positive, found {}",
                self.repetition_penalty
            ));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if v.is_nan() || v.abs() > MAX_PENALTY {
                return bad(format!(
                    "{name} must be in [-{MAX_PENALTY}, {MAX_PENALTY}], found {v}"
                ));
            }
        }
        for (id, b) in &self.logit_bias {
            if b.is_nan() || b.abs() > MAX_LOGIT_BIAS {
                return bad(format!(
                    "logit_bias of token {id} must be in [-{MAX_LOGIT_BIAS}, {MAX_LOGIT_BIAS}], found {b}"
                ));
            }
        }
        Ok(())
    }

    /// [`validate`](Self::validate), and checks that every
    /// [`logit_bias`](Self::logit_bias) id is below `vocab_size` (a generation runs this
    /// with the model's vocabulary size).
    pub fn validate_for_vocab(&self, vocab_size: usize) -> Result<()> {
        self.validate()?;
        match self
            .logit_bias
            .keys()
            .find(|&&id| id as usize >= vocab_size)
        {
            Some(id) => Err(Error::InvalidArgument(format!(
                "logit_bias names token {id}, past the vocabulary of {vocab_size} tokens"
            ))),
            None => Ok(()),
        }
    }

    /// How many of the largest logits a token choice needs (see [`LogitsNeeded`]).
    ///
    /// Adjustments that only lower logits (a negative logit bias, a repetition penalty
    /// above 1, positive presence and frequency penalties) add a margin of 32 plus the
    /// number of biased tokens to the top-N read; one that can raise a logit past the top-N
    /// (a positive bias, a repetition penalty below 1, a negative presence or frequency
    /// penalty) needs [`Full`](LogitsNeeded::Full) logits.
    pub fn logits_needed(&self) -> LogitsNeeded {
        if self.can_raise() {
            return LogitsNeeded::Full;
        }
        let margin = if self.is_adjusted() {
            ADJUSTED_MARGIN.saturating_add(self.logit_bias.len())
        } else {
            0
        };
        if self.is_greedy() {
            return if margin > 0 {
                LogitsNeeded::Top(margin)
            } else {
                LogitsNeeded::Argmax
            };
        }
        if self.top_k > 0 {
            return LogitsNeeded::Top(self.top_k.saturating_add(margin));
        }
        LogitsNeeded::Full
    }

    /// Whether any logit may be changed before temperature (bias or penalties).
    fn is_adjusted(&self) -> bool {
        !self.logit_bias.is_empty()
            || self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }

    /// Whether an adjustment may raise a logit (then a top-N list cannot decide).
    fn can_raise(&self) -> bool {
        let (r, p, f) = (
            self.repetition_penalty,
            self.presence_penalty,
            self.frequency_penalty,
        );
        self.logit_bias.values().any(|&b| b > 0.0 || b.is_nan())
            || r < 1.0
            || p < 0.0
            || f < 0.0
            || r.is_nan()
            || p.is_nan()
            || f.is_nan()
    }

    /// With this seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// With this [`top_k`](Self::top_k).
    pub fn with_top_k(mut self, top_k: usize) -> Self {
        self.top_k = top_k;
        self
    }

    /// With this [`top_p`](Self::top_p).
    pub fn with_top_p(mut self, top_p: f32) -> Self {
        self.top_p = top_p;
        self
    }

    /// With this [`min_p`](Self::min_p).
    pub fn with_min_p(mut self, min_p: f32) -> Self {
        self.min_p = min_p;
        self
    }

    /// With this [`repetition_penalty`](Self::repetition_penalty).
    pub fn with_repetition_penalty(mut self, penalty: f32) -> Self {
        self.repetition_penalty = penalty;
        self
    }

    /// With this [`presence_penalty`](Self::presence_penalty).
    pub fn with_presence_penalty(mut self, penalty: f32) -> Self {
        self.presence_penalty = penalty;
        self
    }

    /// With this [`frequency_penalty`](Self::frequency_penalty).
    pub fn with_frequency_penalty(mut self, penalty: f32) -> Self {
        self.frequency_penalty = penalty;
        self
    }

    /// With a [`logit_bias`](Self::logit_bias) of `bias` on token `id` (replacing any
    /// earlier bias of that token).
    pub fn with_logit_bias(mut self, id: u32, bias: f32) -> Self {
        self.logit_bias.insert(id, bias);
        self
    }
}

/// One entry of a truncated logits list: a token id and its logit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Token id.
    pub id: u32,
    /// Its logit.
    pub logit: f32,
}

/// Chooses tokens with [`SamplingParams`]; keeps the random state, the tokens the
/// repetition penalty applies to ([`observe`](Self::observe)) and the counts of generated
/// tokens the presence and frequency penalties use ([`observe_output`](Self::observe_output)).
/// The same seed, params and inputs give the same tokens.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    seen: Seen,
    /// Times each token was generated (only with a presence or frequency penalty).
    counts: HashMap<u32, u32>,
    scratch: Vec<Candidate>,
    adjusted: Vec<f32>,
}

impl Sampler {
    /// A sampler with an empty history.
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(clock_seed);
        Sampler {
            params,
            rng: Rng::new(seed),
            seen: Seen::default(),
            counts: HashMap::new(),
            scratch: Vec::new(),
            adjusted: Vec::new(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records a token of the context (for the repetition penalty): the prompt's tokens.
    pub fn observe(&mut self, id: u32) {
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(id);
        }
    }

    /// Records tokens of the context.
    pub fn observe_all(&mut self, ids: &[u32]) {
        for &id in ids {
            self.observe(id);
        }
    }

    /// Records a generated (sampled) token: it counts for the presence and frequency
    /// penalties and, as with [`observe`](Self::observe), the repetition penalty.
    pub fn observe_output(&mut self, id: u32) {
        self.observe(id);
        if self.params.presence_penalty != 0.0 || self.params.frequency_penalty != 0.0 {
            *self.counts.entry(id).or_default() += 1;
        }
    }

    /// Forgets the recorded tokens (context and generated).
    pub fn clear_history(&mut self) {
        self.seen.clear();
        self.counts.clear();
    }

    /// Whether [`adjust`](Self::adjust) may change this token's logit.
    fn touched(&self, id: u32) -> bool {
        self.params.logit_bias.contains_key(&id)
            || self.seen.contains(id)
            || self.counts.contains_key(&id)
    }

    /// The logit after the bias, the repetition penalty and the presence and frequency
    /// penalties (in that order). The full and the truncated paths both use this, so they
    /// see the same values.
    fn adjust(&self, id: u32, logit: f32) -> f32 {
        let p = &self.params;
        let mut v = logit;
        if let Some(b) = p.logit_bias.get(&id) {
            v += b;
        }
        if p.repetition_penalty != 1.0 && self.seen.contains(id) {
            v = if v < 0.0 {
                v * p.repetition_penalty
            } else {
                v / p.repetition_penalty
            };
        }
        if let Some(&c) = self.counts.get(&id) {
            v -= c as f32 * p.frequency_penalty + p.presence_penalty;
        }
        v
    }

    /// Writes the adjusted logits of `raw` into `out` (a copy of `raw`): only the
    /// tokens with a bias or a history change.
    fn adjust_all(&self, raw: &[f32], out: &mut Vec<f32>) {
        out.clear();
        out.extend_from_slice(raw);
        let ids = self
            .params
            .logit_bias
            .keys()
            .copied()
            .chain(self.seen.iter())
            .chain(self.counts.keys().copied());
        for id in ids {
            if let Some(&x) = raw.get(id as usize) {
                out[id as usize] = self.adjust(id, x);
            }
        }
    }

    /// The next token from the full logits (one per vocabulary entry). NaN logits count
    /// as minus infinity. Returns 0 for an empty slice.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let mut adjusted = std::mem::take(&mut self.adjusted);
        let logits = if self.params.is_adjusted() {
            self.adjust_all(logits, &mut adjusted);
            &adjusted[..]
        } else {
            logits
        };
        let id = if self.params.is_greedy() {
            let mut best: Option<(u32, f32)> = None;
            for (i, &v) in logits.iter().enumerate() {
                if v.is_nan() {
                    continue;
                }
                if best.is_none_or(|(_, b)| v > b) {
                    best = Some((i as u32, v));
                }
            }
            best.map_or(0, |(i, _)| i)
        } else {
            let mut cands = std::mem::take(&mut self.scratch);
            cands.clear();
            cands.extend(logits.iter().enumerate().map(|(i, &x)| Candidate {
                id: i as u32,
                logit: x,
            }));
            let id = self.draw(&mut cands);
            self.scratch = cands;
            id
        };
        self.adjusted = adjusted;
        id
    }

    /// The next token from a truncated list: the largest logits with their ids (any
    /// order), e.g. a GPU-side top-N readback. Returns `None` when the list does not
    /// determine the token the full logits would give (then call
    /// [`sample`](Self::sample) with all logits; no random number is used up):
    /// - an adjustment that can raise a logit (see [`SamplingParams::logits_needed`]):
    ///   always `None`;
    /// - greedy: the list must hold a token no adjustment touches, or its best adjusted
    ///   logit must beat the list's smallest raw logit;
    /// - top-k: likewise `top_k` such tokens, or a `top_k`-th largest adjusted logit above
    ///   the smallest raw one (top-p and min-p then work on them);
    /// - no top-k: min-p alone must cut inside the list; top-p or plain temperature
    ///   sampling need the full logits.
    pub fn sample_candidates(&mut self, candidates: &[Candidate]) -> Option<u32> {
        if candidates.is_empty() {
            return None;
        }
        let p = &self.params;
        if p.can_raise() {
            return None;
        }
        let adjusted = p.is_adjusted();
        let untouched = if adjusted {
            candidates.iter().filter(|c| !self.touched(c.id)).count()
        } else {
            candidates.len()
        };
        let clean = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
        // Every token outside the list has a raw logit at most this, and adjustments only
        // lower logits.
        let floor = candidates
            .iter()
            .map(|c| clean(c.logit))
            .fold(f32::INFINITY, f32::min);
        if p.is_greedy() {
            let mut best: Option<(u32, f32)> = None;
            for c in candidates {
                let v = clean(self.adjust(c.id, c.logit));
                if best.is_none_or(|(bid, b)| v > b || (v == b && c.id < bid)) {
                    best = Some((c.id, v));
                }
            }
            let (id, v) = best?;
            return (untouched > 0 || v > floor).then_some(id);
        }
        if p.top_k > 0 {
            if candidates.len() < p.top_k {
                return None;
            }
            if untouched < p.top_k {
                let mut vals: Vec<f32> = candidates
                    .iter()
                    .map(|c| clean(self.adjust(c.id, c.logit)))
                    .collect();
                vals.sort_by(|a, b| b.total_cmp(a));
                if vals[p.top_k - 1] <= floor {
                    return None;
                }
            }
        } else if p.top_p < 1.0 || p.min_p <= 0.0 {
            return None;
        } else {
            // min-p alone: every token outside the list (adjusted logit at most the list's
            // smallest raw logit) must fall below the cut.
            let top = candidates
                .iter()
                .map(|c| clean(self.adjust(c.id, c.logit)))
                .fold(f32::NEG_INFINITY, f32::max);
            let rel = ((f64::from(floor) - f64::from(top)) / f64::from(p.temperature)).exp();
            if rel >= f64::from(p.min_p) || rel.is_nan() {
                return None;
            }
        }
        let mut cands = std::mem::take(&mut self.scratch);
        cands.clear();
        cands.extend(candidates.iter().map(|c| Candidate {
            id: c.id,
            logit: self.adjust(c.id, c.logit),
        }));
        // The list's order must not matter: draw from id order, as from full logits.
        cands.sort_by_key(|c| c.id);
        let id = self.draw(&mut cands);
        self.scratch = cands;
        Some(id)
    }

    /// Temperature, top-k, top-p, min-p, then a draw. `cands` holds adjusted logits in id
    /// order; the draw walks what is left in id order, so a truncated list and the full
    /// logits give the same token for the same random number.
    fn draw(&mut self, cands: &mut Vec<Candidate>) -> u32 {
        let SamplingParams {
            temperature: t,
            top_k,
            top_p,
            min_p,
            ..
        } = self.params;
        for c in cands.iter_mut() {
            c.logit = if c.logit.is_nan() {
                f32::NEG_INFINITY
            } else {
                c.logit / t
            };
        }
        let mut by_id = true;
        if top_k > 0 && top_k < cands.len() {
            let k = top_k;
            cands.select_nth_unstable_by(k - 1, desc);
            let threshold = cands[k - 1].logit;
            // transformers keeps every token tied with the k-th.
            let mut keep = k;
            for i in k..cands.len() {
                if cands[i].logit >= threshold {
                    cands.swap(keep, i);
                    keep += 1;
                }
            }
            cands.truncate(keep);
            by_id = false;
        }
        if top_p < 1.0 {
            let n = top_p_count(cands, top_p);
            cands.truncate(n);
            by_id = false;
        }
        let max = cands
            .iter()
            .map(|c| c.logit)
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            // Nothing is possible; fall back to the smallest id left.
            return cands.iter().map(|c| c.id).min().unwrap_or(0);
        }
        if min_p > 0.0 {
            let cut = f64::from(min_p).ln();
            let max64 = f64::from(max);
            cands.retain(|c| f64::from(c.logit) - max64 >= cut);
        }
        if !by_id {
            // Stable and run-adaptive: top-p leaves long runs already in id order.
            cands.sort_by_key(|c| c.id);
        }
        let weights: Vec<f64> = cands
            .iter()
            .map(|c| (f64::from(c.logit) - f64::from(max)).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut u = self.rng.next_f64() * total;
        for (c, w) in cands.iter().zip(&weights) {
            if u < *w {
                return c.id;
            }
            u -= w;
        }
        // Rounding: the last token with a weight.
        cands
            .iter()
            .zip(&weights)
            .rev()
            .find(|(_, w)| **w > 0.0)
            .map_or(cands[0].id, |(c, _)| c.id)
    }
}

/// A set of token ids (a bitset: the lookups run once per vocabulary entry per token).
#[derive(Debug, Clone, Default)]
struct Seen {
    bits: Vec<u64>,
}

impl Seen {
    fn insert(&mut self, id: u32) {
        let (w, b) = ((id / 64) as usize, id % 64);
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        self.bits[w] |= 1 << b;
    }

    fn contains(&self, id: u32) -> bool {
        self.bits
            .get((id / 64) as usize)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    fn clear(&mut self) {
        self.bits.clear();
    }

    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.bits.iter().enumerate().flat_map(|(w, &word)| {
            (0..64u32)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w as u32 * 64 + b)
        })
    }
}

/// Largest [`GenerateOptions::logprobs`](crate::GenerateOptions::logprobs) (OpenAI's
/// limit on `top_logprobs`).
pub const MAX_LOGPROBS: usize = 20;

/// A token and its log-probability under the model: the natural logarithm of its softmax
/// probability over the raw logits (before temperature, penalties and logit bias, as
/// OpenAI reports them).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct TokenLogprob {
    /// Token id.
    pub id: u32,
    /// `ln p(id)`, at most 0; minus infinity for a token the model rules out.
    pub logprob: f32,
}

/// The log-probability of token `id` under `logits` (log-softmax, NaN counting as minus
/// infinity) and the `n` most likely tokens, most likely first (ties to the lower id).
pub(crate) fn token_logprobs(logits: &[f32], id: u32, n: usize) -> (f32, Vec<TokenLogprob>) {
    let clean = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let max = logits
        .iter()
        .map(|&x| clean(x))
        .fold(f32::NEG_INFINITY, f32::max);
    let lse = if max.is_infinite() {
        f64::from(max)
    } else {
        let m = f64::from(max);
        let sum: f64 = logits
            .iter()
            .map(|&x| (f64::from(clean(x)) - m).exp())
            .sum();
        m + sum.ln()
    };
    let logprob = |x: f32| {
        let x = clean(x);
        if x == f32::INFINITY {
            // An infinite logit takes all the mass (shared with any other).
            let k = logits.iter().filter(|&&y| y == f32::INFINITY).count();
            return -(k as f32).ln();
        }
        let v = f64::from(x) - lse;
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v as f32
        }
    };
    let chosen = logits
        .get(id as usize)
        .map_or(f32::NEG_INFINITY, |&x| logprob(x));
    // The n best in one pass: a short sorted list, ties kept in id order.
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    if n > 0 {
        for (i, &x) in logits.iter().enumerate() {
            let x = clean(x);
            if top.len() == n && top.last().is_some_and(|&(_, y)| x <= y) {
                continue;
            }
            let at = top.partition_point(|&(_, y)| y >= x);
            top.insert(at, (i as u32, x));
            top.truncate(n);
        }
    }
    let top = top
        .into_iter()
        .map(|(id, x)| TokenLogprob {
            id,
            logprob: logprob(x),
        })
        .collect();
    (chosen, top)
}

/// Descending logit, then ascending id: a total order.
fn desc(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// Applies top-p: keeps token j (in descending order) while the probability of the tokens
/// before it is below `top_p` (transformers' rule), at least one; returns how many are
/// kept, moved to the front of `cands` in a deterministic order. Large lists are bucketed
/// by logit so that only the bucket where the cut falls is sorted.
fn top_p_count(cands: &mut Vec<Candidate>, top_p: f32) -> usize {
    let n = cands.len();
    if n == 0 {
        return 0;
    }
    let (lo, hi) = cands
        .iter()
        .filter(|c| c.logit > f32::NEG_INFINITY)
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), c| {
            (lo.min(c.logit), hi.max(c.logit))
        });
    if hi == f32::NEG_INFINITY {
        return n;
    }
    let max = f64::from(hi);
    let weight = |c: &Candidate| f64::from((c.logit - hi).exp());
    // Keeps the sorted slice's tokens while the mass before them is below the target.
    let cut = |sorted: &[Candidate], mut before: f64, target: f64| {
        for (j, c) in sorted.iter().enumerate() {
            if j > 0 && before >= target {
                return j;
            }
            before += weight(c);
        }
        sorted.len()
    };
    const BINS: usize = 4096;
    let range = f64::from(hi) - f64::from(lo);
    if n <= BINS || range <= 0.0 || range.is_nan() {
        let target = f64::from(top_p) * cands.iter().map(weight).sum::<f64>();
        cands.sort_by(desc);
        return cut(cands, 0.0, target).max(1);
    }
    // Bin 0 holds the largest logits; one pass computes every weight and bin.
    let scale = BINS as f64 / range;
    let mut mass = vec![0.0f64; BINS];
    let mut bins: Vec<u16> = Vec::with_capacity(n);
    for c in cands.iter() {
        let b = if c.logit == f32::NEG_INFINITY {
            BINS - 1
        } else {
            (((max - f64::from(c.logit)) * scale) as usize).min(BINS - 1)
        };
        bins.push(b as u16);
        mass[b] += weight(c);
    }
    let target = f64::from(top_p) * mass.iter().sum::<f64>();
    let mut before = 0.0;
    let mut boundary = BINS - 1;
    for (b, m) in mass.iter().enumerate() {
        if before + m >= target {
            boundary = b;
            break;
        }
        before += m;
    }
    // Whole bins above the boundary (id order), then the boundary bin sorted and cut.
    let boundary = boundary as u16;
    let mut above: Vec<Candidate> = Vec::new();
    let mut edge: Vec<Candidate> = Vec::new();
    for (c, &b) in cands.iter().zip(&bins) {
        match b.cmp(&boundary) {
            std::cmp::Ordering::Less => above.push(*c),
            std::cmp::Ordering::Equal => edge.push(*c),
            std::cmp::Ordering::Greater => {}
        }
    }
    edge.sort_by(desc);
    let keep_edge = if above.is_empty() {
        cut(&edge, 0.0, target).max(1)
    } else {
        // Every token above is kept; the edge continues from their mass.
        let mut j = 0;
        let mut b = before;
        while j < edge.len() && b < target {
            b += weight(&edge[j]);
            j += 1;
        }
        j
    };
    let kept = above.len() + keep_edge;
    above.extend_from_slice(&edge[..keep_edge]);
    *cands = above;
    kept
}

fn clock_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// xoshiro256** seeded with SplitMix64: small, fast, the same on every platform.
#[derive(Debug, Clone)]
struct Rng {
    s: [u64; 4],
}

impl Rng {
    fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible_and_uniform_enough() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<f64> = (0..1000).map(|_| a.next_f64()).collect();
        let ys: Vec<f64> = (0..1000).map(|_| b.next_f64()).collect();
        assert_eq!(xs, ys);
        let mean = xs.iter().sum::<f64>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
    }

    #[test]
    fn bucketed_top_p_keeps_what_a_full_sort_keeps() {
        let mut rng = Rng::new(3);
        for (n, spread, top_p) in [
            (20_000, 3.0, 0.9f32),
            (50_000, 20.0, 0.5),
            (10_000, 0.01, 0.95),
            (30_000, 8.0, 0.999),
        ] {
            let mut cands: Vec<Candidate> = (0..n)
                .map(|i| Candidate {
                    id: i,
                    logit: (rng.next_f64() * spread) as f32,
                })
                .collect();
            cands[7].logit = f32::NEG_INFINITY;
            let mut sorted = cands.clone();
            sorted.sort_by(desc);
            let max = f64::from(sorted[0].logit);
            let total: f64 = sorted
                .iter()
                .map(|c| (f64::from(c.logit) - max).exp())
                .sum();
            let target = f64::from(top_p) * total;
            let mut before = 0.0;
            let mut want = sorted.len();
            for (j, c) in sorted.iter().enumerate() {
                if j > 0 && before >= target {
                    want = j;
                    break;
                }
                before += (f64::from(c.logit) - max).exp();
            }
            let mut want_ids: Vec<u32> = sorted[..want].iter().map(|c| c.id).collect();
            let k = top_p_count(&mut cands, top_p);
            let mut got: Vec<u32> = cands[..k].iter().map(|c| c.id).collect();
            want_ids.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, want_ids, "n {n} spread {spread} top_p {top_p}");
        }
    }

    fn greedy_with(f: impl FnOnce(SamplingParams) -> SamplingParams) -> Sampler {
        Sampler::new(f(SamplingParams::greedy()))
    }

    #[test]
    fn presence_and_frequency_penalties_follow_the_openai_formula() {
        // logit - (count * frequency + presence) for tokens generated count > 0 times.
        let logits = [2.0, 1.45, 0.0];
        let mut s = greedy_with(|p| p.with_presence_penalty(0.2).with_frequency_penalty(0.1));
        assert_eq!(s.sample(&logits), 0);
        // Prompt tokens do not count.
        s.observe_all(&[0, 0, 0, 0, 0, 0]);
        assert_eq!(s.sample(&logits), 0);
        for expect in [0, 0, 0, 1] {
            // 2.0 - (c * 0.1 + 0.2) for c = 1, 2, 3: 1.7, 1.6, 1.5 > 1.45; c = 4: 1.4.
            s.observe_output(0);
            assert_eq!(s.sample(&logits), expect);
        }
        assert_eq!(s.adjust(0, 2.0), 2.0 - (4.0 * 0.1 + 0.2));
        assert_eq!(s.adjust(1, 1.45), 1.45);
        // Presence alone: once, whatever the count.
        let mut s = greedy_with(|p| p.with_presence_penalty(0.6));
        s.observe_output(0);
        assert_eq!(s.sample(&logits), 1); // 1.4 < 1.45
        for _ in 0..4 {
            s.observe_output(0);
        }
        assert_eq!(s.adjust(0, 2.0), 2.0 - 0.6);
        assert_eq!(s.sample(&logits), 1);
        // Frequency alone grows with the count.
        let mut s = greedy_with(|p| p.with_frequency_penalty(0.3));
        s.observe_output(0);
        assert_eq!(s.sample(&logits), 0); // 1.7
        s.observe_output(0);
        assert_eq!(s.sample(&logits), 1); // 1.4
                                          // Negative penalties favour repetition.
        let mut s = greedy_with(|p| p.with_frequency_penalty(-0.6));
        s.observe_output(1);
        assert_eq!(s.sample(&logits), 1); // 2.05
                                          // Forgotten with the history.
        s.clear_history();
        assert_eq!(s.sample(&logits), 0);
        // Sampling sees the same adjusted logits: presence 2 on token 0 of two equal
        // logits leaves it e^-2 / (1 + e^-2) of the draws.
        let mut s = Sampler::new(
            SamplingParams::with_temperature(1.0)
                .with_presence_penalty(2.0)
                .with_seed(5),
        );
        s.observe_output(0);
        let n = 20_000;
        let zeros = (0..n).filter(|_| s.sample(&[0.0, 0.0]) == 0).count();
        let want = (-2.0f64).exp() / (1.0 + (-2.0f64).exp());
        assert!((zeros as f64 / n as f64 - want).abs() < 0.01, "{zeros}");
    }

    #[test]
    fn logit_bias_forces_bans_and_comes_before_the_repetition_penalty() {
        let logits = [3.0, 1.0, -2.0, 0.5];
        assert_eq!(
            greedy_with(|p| p.with_logit_bias(2, 100.0)).sample(&logits),
            2
        );
        assert_eq!(
            greedy_with(|p| p.with_logit_bias(0, -100.0)).sample(&logits),
            1
        );
        // Ids past the logits are ignored by a bare sampler.
        assert_eq!(
            greedy_with(|p| p.with_logit_bias(9, 100.0)).sample(&logits),
            0
        );
        // Sampling: a banned token is never drawn, a forced one always.
        let mut s = Sampler::new(
            SamplingParams::with_temperature(1.0)
                .with_logit_bias(0, -100.0)
                .with_seed(3),
        );
        assert!((0..2000).all(|_| s.sample(&[5.0, 0.0, 0.0]) != 0));
        let mut s = Sampler::new(
            SamplingParams::with_temperature(1.0)
                .with_logit_bias(2, 100.0)
                .with_seed(3),
        );
        assert!((0..2000).all(|_| s.sample(&[5.0, 0.0, 0.0]) == 2));
        // Bias first: (1.0 + 1.0) / 2 = 1.0 < 1.2 (penalty first would give 1.5).
        let mut s = greedy_with(|p| p.with_logit_bias(0, 1.0).with_repetition_penalty(2.0));
        s.observe(0);
        assert_eq!(s.sample(&[1.0, 1.2]), 1);
    }

    #[test]
    fn raising_adjustments_need_the_full_logits() {
        let cands = [
            Candidate { id: 0, logit: 5.0 },
            Candidate { id: 1, logit: 4.0 },
        ];
        for p in [
            SamplingParams::greedy().with_logit_bias(7, 0.5),
            SamplingParams::greedy().with_presence_penalty(-0.1),
            SamplingParams::greedy().with_frequency_penalty(-0.1),
            SamplingParams::greedy().with_repetition_penalty(0.9),
            SamplingParams::with_temperature(1.0)
                .with_top_k(5)
                .with_logit_bias(1, 2.0),
        ] {
            assert_eq!(p.logits_needed(), LogitsNeeded::Full, "{p:?}");
            assert_eq!(Sampler::new(p).sample_candidates(&cands), None);
        }
        // Lowering ones: top-N plus a margin (and the number of biased tokens).
        let p = SamplingParams::greedy()
            .with_logit_bias(7, -3.0)
            .with_logit_bias(8, 0.0)
            .with_presence_penalty(0.5);
        assert_eq!(p.logits_needed(), LogitsNeeded::Top(34));
        let p = SamplingParams::with_temperature(1.0)
            .with_top_k(10)
            .with_frequency_penalty(1.0);
        assert_eq!(p.logits_needed(), LogitsNeeded::Top(42));
    }

    /// The `n` best of `logits` as a GPU top-N readback gives them: best first, ties to the
    /// lower id.
    fn top_n(logits: &[f32], n: usize) -> Vec<Candidate> {
        let mut c: Vec<Candidate> = logits
            .iter()
            .enumerate()
            .map(|(i, &logit)| Candidate {
                id: i as u32,
                logit,
            })
            .collect();
        c.sort_by(desc);
        c.truncate(n);
        c
    }

    #[test]
    fn adjusted_candidates_give_the_full_result_or_none() {
        let mut rng = Rng::new(11);
        let vocab = 300;
        let (mut decided, mut undecided) = (0, 0);
        for trial in 0..128u64 {
            let mut pick = |n: u64| rng.next_u64() % n;
            let base = match pick(4) {
                0 => SamplingParams::greedy(),
                1 => SamplingParams::with_temperature(0.8).with_top_k(1 + pick(30) as usize),
                2 => SamplingParams::with_temperature(1.3)
                    .with_top_k(1 + pick(30) as usize)
                    .with_top_p(0.9)
                    .with_min_p(0.05),
                _ => SamplingParams::with_temperature(0.7).with_min_p(0.3),
            };
            let mut p = base
                .with_repetition_penalty([1.0, 1.3][pick(2) as usize])
                .with_presence_penalty([0.0, 0.4, 2.0][pick(3) as usize])
                .with_frequency_penalty([0.0, 0.7][pick(2) as usize])
                .with_seed(trial);
            for _ in 0..pick(6) {
                p.logit_bias
                    .insert(pick(vocab as u64) as u32, -(pick(101) as f32));
            }
            let n = match p.logits_needed() {
                LogitsNeeded::Argmax => 1,
                LogitsNeeded::Top(n) => n,
                LogitsNeeded::Full => 40, // min-p alone: a list may still decide it
            };
            // Logits near a fixed profile; the prompt is random or the profile's best
            // tokens (then the whole list may be penalized while tokens past it are not).
            let mut rng2 = Rng::new(trial);
            let profile: Vec<f32> = (0..vocab).map(|_| (rng2.next_f64() * 8.0) as f32).collect();
            let prompt: Vec<u32> = if pick(2) == 0 {
                (0..pick(400)).map(|_| pick(vocab as u64) as u32).collect()
            } else {
                top_n(&profile, pick(90) as usize)
                    .iter()
                    .map(|c| c.id)
                    .collect()
            };
            let mut full = Sampler::new(p.clone());
            let mut part = Sampler::new(p.clone());
            full.observe_all(&prompt);
            part.observe_all(&prompt);
            for _ in 0..30 {
                let logits: Vec<f32> = profile
                    .iter()
                    .map(|&x| x + (rng2.next_f64() * 0.5) as f32)
                    .collect();
                let want = full.sample(&logits);
                let got = match part.sample_candidates(&top_n(&logits, n)) {
                    Some(id) => {
                        decided += 1;
                        id
                    }
                    None => {
                        undecided += 1;
                        part.sample(&logits)
                    }
                };
                assert_eq!(got, want, "trial {trial}: {p:?}");
                full.observe_output(want);
                part.observe_output(want);
            }
        }
        // Both paths ran.
        assert!(decided > 300 && undecided > 300, "{decided} {undecided}");
    }

    #[test]
    fn validation_names_the_field() {
        let err = |p: SamplingParams| match p.validate_for_vocab(512) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("{other:?}"),
        };
        let g = SamplingParams::greedy;
        for (p, field) in [
            (g().with_presence_penalty(f32::NAN), "presence_penalty"),
            (g().with_presence_penalty(2.5), "presence_penalty"),
            (g().with_frequency_penalty(-2.01), "frequency_penalty"),
            (
                g().with_frequency_penalty(f32::INFINITY),
                "frequency_penalty",
            ),
            (g().with_logit_bias(3, 100.5), "logit_bias"),
            (g().with_logit_bias(3, f32::NAN), "logit_bias"),
            (g().with_logit_bias(512, 1.0), "logit_bias"),
        ] {
            let m = err(p);
            assert!(m.contains(field), "{m}");
        }
        assert!(err(g().with_logit_bias(600, 1.0)).contains("600"));
        let edge = g()
            .with_presence_penalty(-2.0)
            .with_frequency_penalty(2.0)
            .with_logit_bias(511, -100.0)
            .with_logit_bias(0, 100.0);
        assert!(edge.validate_for_vocab(512).is_ok());
    }

    #[test]
    fn token_logprobs_are_a_log_softmax_of_the_raw_logits() {
        let logits = [1.0f32, 3.0, f32::NAN, 3.0, -2.0, 0.5];
        let (lp, top) = token_logprobs(&logits, 4, 4);
        let lse = logits
            .iter()
            .filter(|x| !x.is_nan())
            .map(|&x| f64::from(x).exp())
            .sum::<f64>()
            .ln();
        assert!((f64::from(lp) - (-2.0 - lse)).abs() < 1e-6, "{lp}");
        let ids: Vec<u32> = top.iter().map(|t| t.id).collect();
        assert_eq!(ids, [1, 3, 0, 5]);
        assert!((f64::from(top[0].logprob) - (3.0 - lse)).abs() < 1e-6);
        assert_eq!(token_logprobs(&logits, 2, 0), (f32::NEG_INFINITY, vec![]));
        let total: f64 = token_logprobs(&logits, 0, 6)
            .1
            .iter()
            .map(|t| f64::from(t.logprob).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        assert_eq!(token_logprobs(&[f32::INFINITY, 0.0], 0, 0).0, 0.0);
    }

    #[test]
    fn top_p_count_follows_transformers() {
        // probabilities 0.5, 0.3, 0.2 (logits = ln p)
        let mk = || {
            vec![
                Candidate {
                    id: 2,
                    logit: 0.2f32.ln(),
                },
                Candidate {
                    id: 0,
                    logit: 0.5f32.ln(),
                },
                Candidate {
                    id: 1,
                    logit: 0.3f32.ln(),
                },
            ]
        };
        assert_eq!(top_p_count(&mut mk(), 0.5), 1);
        assert_eq!(top_p_count(&mut mk(), 0.51), 2);
        assert_eq!(top_p_count(&mut mk(), 0.79), 2);
        assert_eq!(top_p_count(&mut mk(), 0.81), 3);
        assert_eq!(top_p_count(&mut mk(), 0.0), 1);
    }
}
