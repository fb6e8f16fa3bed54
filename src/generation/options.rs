//! What a generation is asked: its [`Prompt`], its [`GenerateOptions`] (with
//! [`DEFAULT_MAX_TOKENS`]), and the [`CancelHandle`] that stops it from another thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::chat::{ChatMessage, ChatOptions};
use crate::error::{Error, Result};
use crate::sampling::{GenerationConfig, SamplingParams, MAX_LOGPROBS};
use crate::session::Session;
#[cfg(doc)] // for rustdoc links
use {
    super::{Completion, FinishReason, Generation, GenerationEvent},
    crate::sampling::TokenLogprob,
    crate::session::MAX_PASS_TOKENS,
};

/// Default [`GenerateOptions::max_tokens`].
pub const DEFAULT_MAX_TOKENS: usize = 512;

/// Stops a running generation from another thread (or from inside the loop). Clones share
/// the flag; a cancelled handle stays cancelled until [`reset`](Self::reset).
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    /// A handle that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the generations using this handle to stop: the next event is
    /// [`FinishReason::Cancelled`] (a prefill stops between passes of
    /// [`MAX_PASS_TOKENS`]).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Clears the flag.
    pub fn reset(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// What to generate and when to stop.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// How tokens are chosen (default: greedy).
    pub sampling: SamplingParams,
    /// Most tokens to generate (default [`DEFAULT_MAX_TOKENS`]).
    pub max_tokens: usize,
    /// Stop when the text contains one of these; the stop string itself (and anything
    /// after it) is not emitted. Matches across token boundaries.
    pub stop: Vec<String>,
    /// End-of-sequence ids besides the model's: generation stops on these, on
    /// `config.json`'s `eos_token_id` and on the tokenizer's `eos_token`. E.g. from
    /// `generation_config.json` ([`from_generation_config`](Self::from_generation_config)).
    pub eos_token_ids: Vec<u32>,
    /// Do not stop on end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    /// Decode without special tokens (default: keep them; end-of-sequence tokens are never
    /// part of the text).
    pub skip_special_tokens: bool,
    /// How a chat prompt is rendered (template, tools, template variables).
    pub chat: ChatOptions,
    /// A handle to cancel with; [`Generation::cancel_handle`] gives one in any case.
    pub cancel: Option<CancelHandle>,
    /// Report log-probabilities: `Some(n)` gives each [`GenerationEvent::Token`] the
    /// chosen token's log-probability and the `n` most likely tokens (`n` at most
    /// [`MAX_LOGPROBS`]; 0 for the chosen token's only), and fills
    /// [`Completion::logprobs`]. They are of the model's raw distribution (see
    /// [`TokenLogprob`]). Needs every logit of each step read back from the GPU, not only
    /// the best few, so it costs some speed. `None` (the default) turns it off.
    pub logprobs: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            sampling: SamplingParams::greedy(),
            max_tokens: DEFAULT_MAX_TOKENS,
            stop: Vec::new(),
            eos_token_ids: Vec::new(),
            ignore_eos: false,
            skip_special_tokens: false,
            chat: ChatOptions::default(),
            cancel: None,
            logprobs: None,
        }
    }
}

impl GenerateOptions {
    /// Defaults from `generation_config.json`: its sampling parameters (see
    /// [`GenerationConfig::sampling`]), `eos_token_id` and `max_new_tokens`.
    pub fn from_generation_config(config: &GenerationConfig) -> Self {
        GenerateOptions {
            sampling: config.sampling(),
            max_tokens: config.max_new_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            eos_token_ids: config.eos_token_ids.clone(),
            ..Self::default()
        }
    }

    /// Checks the values are in range: [`SamplingParams::validate`] and
    /// [`logprobs`](Self::logprobs). A generation also checks the
    /// [`logit_bias`](SamplingParams::logit_bias) ids against the model's vocabulary.
    pub fn validate(&self) -> Result<()> {
        self.sampling.validate()?;
        match self.logprobs {
            Some(n) if n > MAX_LOGPROBS => Err(Error::InvalidArgument(format!(
                "logprobs must be at most {MAX_LOGPROBS}, found {n}"
            ))),
            _ => Ok(()),
        }
    }

    /// [`validate`](Self::validate), and the logit bias ids against the session's model.
    pub(super) fn validate_for(&self, session: &Session) -> Result<()> {
        self.validate()?;
        self.sampling
            .validate_for_vocab(session.model().config().vocab_size)
    }
}

/// A prompt: text, a conversation (rendered with the chat template and
/// [`GenerateOptions::chat`]), or token ids.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Prompt {
    /// Plain text, encoded as transformers' `tokenizer(text)` does (with the tokenizer's
    /// added special tokens, e.g. a BOS) when the session is empty, without them when it
    /// continues a context.
    Text(String),
    /// Chat messages; the prompt is `apply_chat_template(messages,
    /// add_generation_prompt=True)`.
    Chat(Vec<ChatMessage>),
    /// Token ids, as they are.
    Ids(Vec<u32>),
}

impl From<&str> for Prompt {
    fn from(s: &str) -> Self {
        Prompt::Text(s.to_string())
    }
}

impl From<String> for Prompt {
    fn from(s: String) -> Self {
        Prompt::Text(s)
    }
}

impl From<Vec<ChatMessage>> for Prompt {
    fn from(m: Vec<ChatMessage>) -> Self {
        Prompt::Chat(m)
    }
}

impl From<&[ChatMessage]> for Prompt {
    fn from(m: &[ChatMessage]) -> Self {
        Prompt::Chat(m.to_vec())
    }
}

impl From<Vec<u32>> for Prompt {
    fn from(ids: Vec<u32>) -> Self {
        Prompt::Ids(ids)
    }
}

impl From<&[u32]> for Prompt {
    fn from(ids: &[u32]) -> Self {
        Prompt::Ids(ids.to_vec())
    }
}
