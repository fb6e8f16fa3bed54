//! What a generation gives back: the [`GenerationEvent`]s it streams, why it ended
//! ([`FinishReason`]), and the [`Completion`] and [`GenerationStats`] collected from them.

use std::time::Duration;

#[cfg(doc)] // for rustdoc links
use super::{Chat, GenerateOptions};
use crate::cache::CacheStats;
use crate::sampling::TokenLogprob;
use crate::session::SessionStats;

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FinishReason {
    /// The model produced this end-of-sequence token (it is not part of the text).
    EndOfSequence(u32),
    /// The text reached this stop string (not part of the text).
    StopString(String),
    /// [`GenerateOptions::max_tokens`] tokens were generated.
    MaxTokens,
    /// The generation was cancelled.
    Cancelled,
    /// The session's context is full.
    ContextFull,
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FinishReason::EndOfSequence(id) => write!(f, "end of sequence (token {id})"),
            FinishReason::StopString(s) => write!(f, "stop string {s:?}"),
            FinishReason::MaxTokens => f.write_str("max tokens"),
            FinishReason::Cancelled => f.write_str("cancelled"),
            FinishReason::ContextFull => f.write_str("context full"),
        }
    }
}

/// Counters of one generation.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct GenerationStats {
    /// Tokens of the prompt (for a [`Chat`] turn, the whole rendered conversation).
    pub prompt_tokens: usize,
    /// Prompt tokens already in the KV cache (not run again).
    pub cached_prompt_tokens: usize,
    /// Tokens sampled (including a final end-of-sequence token).
    pub generated_tokens: usize,
    /// From the `generate` call to the first sampled token.
    pub time_to_first_token: Option<Duration>,
    /// Wall time of the prefill.
    pub prefill_time: Duration,
    /// Decode steps run (one per generated token fed back to the model).
    pub decode_steps: usize,
    /// Wall time of the decode steps.
    pub decode_time: Duration,
    /// From the `generate` call to the end.
    pub total_time: Duration,
    /// Expert-cache traffic of this generation.
    pub cache: CacheStats,
    /// The session's counters over its life, at the end of this generation.
    pub session: SessionStats,
}

impl GenerationStats {
    /// Prompt tokens run per second of prefill.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        per_second(
            self.prompt_tokens - self.cached_prompt_tokens,
            self.prefill_time,
        )
    }

    /// Decode steps per second.
    pub fn decode_tokens_per_second(&self) -> f64 {
        per_second(self.decode_steps, self.decode_time)
    }
}

fn per_second(n: usize, t: Duration) -> f64 {
    let s = t.as_secs_f64();
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// The end of a generation.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Completion {
    /// Why it ended.
    pub reason: FinishReason,
    /// Text not yet emitted by [`GenerationEvent::Token`]s (a held-back partial stop
    /// string that did not complete, or an incomplete character at the end).
    pub text: String,
    /// The whole generated text (without the stop string or end-of-sequence token).
    pub output: String,
    /// Every sampled token id (including a final end-of-sequence token, and tokens at and
    /// after a stop string).
    pub tokens: Vec<u32>,
    /// With [`GenerateOptions::logprobs`]: the log-probability of each of
    /// [`tokens`](Self::tokens) (also the end-of-sequence token, which has no
    /// [`GenerationEvent::Token`]); empty otherwise.
    pub logprobs: Vec<f32>,
    /// With [`GenerateOptions::logprobs`]: the most likely tokens at each of
    /// [`tokens`](Self::tokens), as in [`GenerationEvent::Token`]; empty otherwise.
    pub top_logprobs: Vec<Vec<TokenLogprob>>,
    /// Timings and counters.
    pub stats: GenerationStats,
}

/// One step of a generation.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GenerationEvent {
    /// A sampled token and the text it completes: never a partial character, and empty
    /// while held back (an incomplete UTF-8 sequence, or text that may start a stop
    /// string). Match it with `GenerationEvent::Token { id, text, .. }`: more fields may
    /// come.
    #[non_exhaustive]
    Token {
        /// The token id.
        id: u32,
        /// New text.
        text: String,
        /// With [`GenerateOptions::logprobs`]: the token's log-probability under the
        /// model (see [`TokenLogprob`]); `None` otherwise.
        logprob: Option<f32>,
        /// With [`GenerateOptions::logprobs`] `Some(n)`: the `n` most likely tokens at this
        /// position, most likely first (ties to the lower id; the chosen token is among
        /// them only if it is that likely); empty otherwise.
        top_logprobs: Vec<TokenLogprob>,
    },
    /// The last event.
    Done(Box<Completion>),
}

impl GenerationEvent {
    /// The new text of this event (for `Done`, the remaining text).
    pub fn text(&self) -> &str {
        match self {
            GenerationEvent::Token { text, .. } => text,
            GenerationEvent::Done(c) => &c.text,
        }
    }
}
