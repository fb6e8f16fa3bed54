//! Text generation on a [`Session`]: [`Session::generate`] streams [`GenerationEvent`]s
//! for a text, chat or token-id [`Prompt`] with [`GenerateOptions`], or
//! [`Generation::complete`] collects them into a [`Completion`] (with [`GenerationStats`]);
//! [`Chat`] keeps a conversation and its KV cache across turns, prefilling only each
//! turn's new tokens. The main types are also at the crate root.

use std::time::Instant;

use crate::chat::ChatMessage;
use crate::error::{Error, Result};
use crate::sampling::{token_logprobs, Candidate, LogitsNeeded, Sampler, TokenLogprob};
use crate::session::{Session, SessionStats, MAX_PASS_TOKENS, MAX_TOP};
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

mod conversation;
mod events;
mod options;

pub use conversation::Chat;
pub use events::{Completion, FinishReason, GenerationEvent, GenerationStats};
pub use options::{CancelHandle, GenerateOptions, Prompt, DEFAULT_MAX_TOKENS};

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
                        Some(top) => self
                            .session
                            .step_top_sampling(id, top, self.sampler.next_draw())
                            .map(Scores::Top),
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
