//! What a caller asks of the sampler: [`SamplingParams`], and how many logits they need.

use std::collections::BTreeMap;

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
    /// [`Sampler`](super::Sampler) used directly ignores ids past the logits it is given).
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

/// How many logits a [`Sampler`](super::Sampler) needs to pick a token exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogitsNeeded {
    /// Only the largest logit and its id.
    Argmax,
    /// The `n` largest logits and their ids (more are fine; with penalties or a negative
    /// logit bias some extra help, see [`Sampler::sample_candidates`](super::Sampler::sample_candidates)).
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
    pub(super) fn is_adjusted(&self) -> bool {
        !self.logit_bias.is_empty()
            || self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }

    /// Whether an adjustment may raise a logit (then a top-N list cannot decide).
    pub(super) fn can_raise(&self) -> bool {
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
