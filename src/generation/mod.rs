//! Text generation on a [`Session`]: [`Session::generate`] streams [`GenerationEvent`]s
//! for a text, chat or token-id [`Prompt`] with [`GenerateOptions`], or
//! [`Generation::complete`] collects them into a [`Completion`] (with [`GenerationStats`]);
//! [`Chat`] keeps a conversation and its KV cache across turns, prefilling only each
//! turn's new tokens. The main types are also at the crate root.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::CacheStats;
use crate::chat::{ChatMessage, ChatOptions};
use crate::error::{Error, Result};
use crate::sampling::{
    token_logprobs, Candidate, GenerationConfig, LogitsNeeded, Sampler, SamplingParams,
    TokenLogprob, MAX_LOGPROBS,
};
use crate::session::{Session, SessionStats, MAX_PASS_TOKENS, MAX_TOP};
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

mod conversation;

pub use conversation::Chat;

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
    fn validate_for(&self, session: &Session) -> Result<()> {
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

/// What a step read back for sampling: every logit, or the best few (read back from the GPU
/// instead of the whole vocabulary when the sampler can decide from them).
enum Scores {
    Full(Vec<f32>),
    Top(Vec<Candidate>),
}

enum State {
    Prefill,
    Sample(Scores),
    Step(u32),
    Finish(FinishReason),
    Done,
}

/// A running generation: an iterator of [`GenerationEvent`]s ending with
/// [`GenerationEvent::Done`] (or an error). Dropping it stops the generation; the session
/// keeps the tokens run so far.
pub struct Generation<'s> {
    session: &'s mut Session,
    tokenizer: Tokenizer,
    /// The ids in the session's KV cache, kept in step (for a [`Chat`]).
    context: Option<&'s mut Vec<u32>>,
    /// Where the reply goes when the generation finishes (for a [`Chat`]).
    reply_to: Option<&'s mut Vec<ChatMessage>>,
    pending: Vec<u32>,
    state: State,
    sampler: Sampler,
    eos: Vec<u32>,
    stop: Vec<String>,
    max_tokens: usize,
    /// [`GenerateOptions::logprobs`].
    logprobs: Option<usize>,
    /// Per sampled token, with `logprobs`: its log-probability and the best alternatives.
    token_logprobs: Vec<f32>,
    token_top: Vec<Vec<TokenLogprob>>,
    detok: IncrementalDecoder,
    held: String,
    output: String,
    tokens: Vec<u32>,
    cancel: CancelHandle,
    stats: GenerationStats,
    t0: Instant,
    before: SessionStats,
}

impl std::fmt::Debug for Generation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("pending_prompt", &self.pending.len())
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Session {
    /// Generates from `prompt`, appended to whatever the session's context holds (call
    /// [`reset`](Session::reset) first for a fresh start). Nothing runs until the first
    /// `next()`; the prompt is encoded (and checked against the context size) here.
    ///
    /// ```no_run
    /// # fn main() -> moestream::Result<()> {
    /// use moestream::{ChatMessage, GenerateOptions, GenerationConfig, Model, Tokenizer};
    /// let dir = "path/to/Qwen3-30B-A3B";
    /// let model = Model::open(dir)?;
    /// let tokenizer = Tokenizer::from_dir(dir)?;
    /// let mut options = GenerateOptions::from_generation_config(&GenerationConfig::from_dir(dir)?);
    /// options.max_tokens = 200;
    /// options.sampling.seed = Some(1);
    /// let mut session = model.session(4096)?;
    /// let prompt = vec![ChatMessage::user("Write a haiku about experts.")];
    /// for event in session.generate(&tokenizer, prompt, &options)? {
    ///     print!("{}", event?.text());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn generate<'s>(
        &'s mut self,
        tokenizer: &Tokenizer,
        prompt: impl Into<Prompt>,
        options: &GenerateOptions,
    ) -> Result<Generation<'s>> {
        let ids = match prompt.into() {
            Prompt::Text(text) => tokenizer.encode(&text, self.position() == 0)?,
            Prompt::Chat(messages) => tokenizer.encode_chat(&messages, &options.chat)?,
            Prompt::Ids(ids) => ids,
        };
        Generation::start(self, tokenizer, None, None, &ids, 0, options)
    }
}

impl<'s> Generation<'s> {
    /// `prompt` is the whole prompt; its first `cached` tokens are already in the session.
    /// (Also the server's entry, which brings its own session from its prompt cache.)
    pub(crate) fn start(
        session: &'s mut Session,
        tokenizer: &Tokenizer,
        context: Option<&'s mut Vec<u32>>,
        reply_to: Option<&'s mut Vec<ChatMessage>>,
        prompt: &[u32],
        cached: usize,
        options: &GenerateOptions,
    ) -> Result<Self> {
        let t0 = Instant::now();
        Self::check(session, prompt.len() - cached.min(prompt.len()), options)?;
        let pending = prompt[cached..].to_vec();
        let mut eos = options.eos_token_ids.clone();
        for id in session
            .model()
            .config()
            .eos_token_ids
            .iter()
            .copied()
            .chain(tokenizer.eos_token_id())
        {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        if options.ignore_eos {
            eos.clear();
        }
        let mut sampler = Sampler::new(options.sampling.clone());
        // The prompt counts for the repetition penalty only (presence and frequency
        // penalties count the generated tokens, observed as they are sampled).
        sampler.observe_all(prompt);
        let stats = GenerationStats {
            prompt_tokens: prompt.len(),
            cached_prompt_tokens: cached,
            ..GenerationStats::default()
        };
        let before = session.stats();
        Ok(Generation {
            detok: IncrementalDecoder::new(prompt, options.skip_special_tokens),
            session,
            tokenizer: tokenizer.clone(),
            context,
            reply_to,
            pending,
            state: State::Prefill,
            sampler,
            eos,
            stop: options
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            max_tokens: options.max_tokens,
            logprobs: options.logprobs,
            token_logprobs: Vec::new(),
            token_top: Vec::new(),
            held: String::new(),
            output: String::new(),
            tokens: Vec::new(),
            cancel: options.cancel.clone().unwrap_or_default(),
            stats,
            t0,
            before,
        })
    }

    /// Whether `new_tokens` more prompt tokens can start a generation on `session`.
    fn check(session: &Session, new_tokens: usize, options: &GenerateOptions) -> Result<()> {
        options.validate_for(session)?;
        if new_tokens == 0 {
            return Err(Error::InvalidArgument(
                "the prompt is empty (nothing to generate from)".into(),
            ));
        }
        let needed = session.position() + new_tokens;
        if needed > session.max_context() {
            return Err(Error::ContextOverflow {
                needed,
                capacity: session.max_context(),
            });
        }
        Ok(())
    }

    /// A handle that cancels this generation.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// The session.
    pub fn session(&self) -> &Session {
        self.session
    }

    /// Runs to the end and returns the [`Completion`] (its `output` is the whole text).
    pub fn complete(self) -> Result<Completion> {
        for event in self {
            if let GenerationEvent::Done(c) = event? {
                return Ok(*c);
            }
        }
        Err(Error::InvalidArgument(
            "the generation had already finished".into(),
        ))
    }

    /// Text that the stop strings let through: returns what can be emitted now, and the
    /// stop string if one was reached.
    fn filter_stops(&mut self, delta: &str) -> (String, Option<String>) {
        if self.stop.is_empty() {
            return (delta.to_string(), None);
        }
        self.held.push_str(delta);
        let hit = self
            .stop
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|i| (i, s)))
            .min_by_key(|(i, _)| *i);
        if let Some((i, s)) = hit {
            let s = s.clone();
            let emit = self.held[..i].to_string();
            self.held.clear();
            return (emit, Some(s));
        }
        // Hold back the longest tail that could start a stop string.
        let keep = self
            .stop
            .iter()
            .filter_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|&k| s.is_char_boundary(k))
                    .find(|&k| self.held.ends_with(&s[..k]))
            })
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let emit = self.held[..cut].to_string();
        self.held.drain(..cut);
        (emit, None)
    }

    fn fail(&mut self, e: Error) -> Option<Result<GenerationEvent>> {
        self.state = State::Done;
        Some(Err(e))
    }

    fn finish(&mut self, reason: FinishReason) -> Result<Completion> {
        let mut text = String::new();
        let mut reason = reason;
        if !matches!(reason, FinishReason::StopString(_)) {
            let rest = self.detok.finish(self.tokenizer.backend().as_ref())?;
            self.held.push_str(&rest);
            let hit = self
                .stop
                .iter()
                .filter_map(|s| self.held.find(s.as_str()).map(|i| (i, s)))
                .min_by_key(|(i, _)| *i);
            match hit {
                Some((i, s)) => {
                    reason = FinishReason::StopString(s.clone());
                    text = self.held[..i].to_string();
                }
                None => text = std::mem::take(&mut self.held),
            }
        }
        self.held.clear();
        self.output.push_str(&text);
        if let Some(history) = self.reply_to.as_deref_mut() {
            history.push(ChatMessage::assistant(self.output.clone()));
        }
        let after = self.session.stats();
        let mut stats = std::mem::take(&mut self.stats);
        stats.generated_tokens = self.tokens.len();
        stats.total_time = self.t0.elapsed();
        stats.cache = after.cache.since(&self.before.cache);
        stats.session = after;
        Ok(Completion {
            reason,
            text,
            output: self.output.clone(),
            tokens: self.tokens.clone(),
            logprobs: self.token_logprobs.clone(),
            top_logprobs: self.token_top.clone(),
            stats,
        })
    }
}

impl Generation<'_> {
    /// How many of the best logits to read back per token, or `None` for all of them
    /// (also when log-probabilities are asked: they need the whole distribution).
    fn top_n(&self) -> Option<usize> {
        if self.logprobs.is_some() {
            return None;
        }
        match self.sampler.params().logits_needed() {
            LogitsNeeded::Argmax => Some(1),
            LogitsNeeded::Top(n) if n <= MAX_TOP => Some(n),
            _ => None,
        }
    }
}

impl Iterator for Generation<'_> {
    type Item = Result<GenerationEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match std::mem::replace(&mut self.state, State::Done) {
                State::Done => return None,
                State::Prefill => {
                    if self.cancel.is_cancelled() {
                        self.state = State::Finish(FinishReason::Cancelled);
                        continue;
                    }
                    let n = self.pending.len().min(MAX_PASS_TOKENS);
                    let t = Instant::now();
                    let result = match self.top_n() {
                        Some(top) if n == self.pending.len() => self
                            .session
                            .prefill_top(&self.pending[..n], top)
                            .map(Scores::Top),
                        _ => self.session.prefill(&self.pending[..n]).map(Scores::Full),
                    };
                    self.stats.prefill_time += t.elapsed();
                    match result {
                        Ok(logits) => {
                            let chunk: Vec<u32> = self.pending.drain(..n).collect();
                            if let Some(ctx) = self.context.as_deref_mut() {
                                ctx.extend_from_slice(&chunk);
                            }
                            self.state = if self.pending.is_empty() {
                                State::Sample(logits)
                            } else {
                                State::Prefill
                            };
                        }
                        Err(e) => return self.fail(e),
                    }
                }
                State::Sample(logits) => {
                    if self.cancel.is_cancelled() {
                        self.state = State::Finish(FinishReason::Cancelled);
                        continue;
                    }
                    if self.tokens.len() >= self.max_tokens {
                        // max_tokens 0: only the prefill.
                        self.state = State::Finish(FinishReason::MaxTokens);
                        continue;
                    }
                    let (id, full) = match logits {
                        Scores::Full(l) => (self.sampler.sample(&l), Some(l)),
                        Scores::Top(c) => match self.sampler.sample_candidates(&c) {
                            Some(id) => (id, None),
                            // The candidates do not decide it: read every logit.
                            None => match self.session.last_logits() {
                                Ok(l) => (self.sampler.sample(&l), Some(l)),
                                Err(e) => return self.fail(e),
                            },
                        },
                    };
                    if self.stats.time_to_first_token.is_none() {
                        self.stats.time_to_first_token = Some(self.t0.elapsed());
                    }
                    // With logprobs the step read every logit (see top_n).
                    let (logprob, top_logprobs) = match (self.logprobs, &full) {
                        (Some(n), Some(l)) => {
                            let (lp, top) = token_logprobs(l, id, n);
                            self.token_logprobs.push(lp);
                            self.token_top.push(top.clone());
                            (Some(lp), top)
                        }
                        _ => (None, Vec::new()),
                    };
                    self.tokens.push(id);
                    if self.eos.contains(&id) {
                        self.state = State::Finish(FinishReason::EndOfSequence(id));
                        continue;
                    }
                    self.sampler.observe_output(id);
                    let delta = match self.detok.push(self.tokenizer.backend().as_ref(), id) {
                        Ok(d) => d,
                        Err(e) => return self.fail(e),
                    };
                    let (text, stop) = self.filter_stops(&delta);
                    self.output.push_str(&text);
                    self.state = if let Some(s) = stop {
                        State::Finish(FinishReason::StopString(s))
                    } else if self.tokens.len() >= self.max_tokens {
                        State::Finish(FinishReason::MaxTokens)
                    } else if self.session.position() >= self.session.max_context() {
                        State::Finish(FinishReason::ContextFull)
                    } else {
                        State::Step(id)
                    };
                    return Some(Ok(GenerationEvent::Token {
                        id,
                        text,
                        logprob,
                        top_logprobs,
                    }));
                }
                State::Step(id) => {
                    if self.cancel.is_cancelled() {
                        self.state = State::Finish(FinishReason::Cancelled);
                        continue;
                    }
                    let t = Instant::now();
                    let result = match self.top_n() {
                        Some(top) => self.session.step_top(id, top).map(Scores::Top),
                        None => self.session.step(id).map(Scores::Full),
                    };
                    self.stats.decode_time += t.elapsed();
                    match result {
                        Ok(logits) => {
                            self.stats.decode_steps += 1;
                            if let Some(ctx) = self.context.as_deref_mut() {
                                ctx.push(id);
                            }
                            self.state = State::Sample(logits);
                        }
                        Err(e) => return self.fail(e),
                    }
                }
                State::Finish(reason) => {
                    return match self.finish(reason) {
                        Ok(c) => Some(Ok(GenerationEvent::Done(Box::new(c)))),
                        Err(e) => self.fail(e),
                    };
                }
            }
        }
    }
}
