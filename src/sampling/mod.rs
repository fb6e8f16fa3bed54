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

mod generation_config;
mod logprobs;
mod params;
mod sampler;

pub use generation_config::GenerationConfig;
pub(crate) use logprobs::token_logprobs;
pub use logprobs::{TokenLogprob, MAX_LOGPROBS};
pub use params::{LogitsNeeded, SamplingParams, MAX_LOGIT_BIAS, MAX_PENALTY};
#[cfg(test)]
use sampler::{desc, top_p_count, Rng};
pub use sampler::{Candidate, NextDraw, Sampler};

#[cfg(test)]
mod tests;
