//! Running one request's generation on a blocking thread: its session from the prompt
//! cache (or a new one), its events sent to the HTTP side through a channel, its session
//! at the end of its prompt kept by the prompt cache when it finishes, dropped at once
//! when it fails or its client goes away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::metrics::{Finished, Outcome};
use super::state::App;
use crate::error::Result;
use crate::generation::{CancelHandle, FinishReason, GenerateOptions, Generation, GenerationEvent};
use crate::session::Session;

/// Events waiting for a slow client before the generation waits for it.
const CHANNEL: usize = 64;

/// What to generate.
pub(crate) struct Job {
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
    /// When the request arrived (time to first token counts from here).
    pub arrived: Instant,
}

/// Cancels the generation when dropped (the client went away), unless disarmed first.
pub(crate) struct CancelGuard(Option<CancelHandle>);

impl CancelGuard {
    /// The generation finished: nothing to cancel.
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.cancel();
        }
    }
}

/// Starts `job` on a blocking thread holding `permit` (its generation slot) until it ends.
pub(crate) fn spawn(
    app: Arc<App>,
    job: Job,
    permit: OwnedSemaphorePermit,
) -> (mpsc::Receiver<Result<GenerationEvent>>, CancelGuard) {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let cancel = CancelHandle::new();
    let guard = CancelGuard(Some(cancel.clone()));
    tokio::task::spawn_blocking(move || {
        let _slot = permit;
        run(&app, job, cancel, &tx);
    });
    (rx, guard)
}

fn run(app: &App, mut job: Job, cancel: CancelHandle, tx: &mpsc::Sender<Result<GenerationEvent>>) {
    job.options.cancel = Some(cancel.clone());
    let reused = app.cache().lookup(&job.prompt);
    let (mut session, mut context) = match reused {
        Some(r) => (r.session, r.tokens),
        None => match app.model.session(app.max_context) {
            Ok(s) => (s, Vec::new()),
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                app.metrics.finished(&failed(&job));
                return;
            }
        },
    };
    let cached = context.len();
    let mut finished = failed(&job);
    finished.cached_prompt_tokens = cached;
    let mut done = None;
    // What the prompt cache keeps is the session at the end of the prompt, with only
    // states that prefill passes computed (`prompt_cache`): a session that can be cut
    // back is cut back when the reply is done; one with recurrent states is forked once
    // the prompt is prefilled, before the first decode step.
    let prompt_len = job.prompt.len();
    let fork_at_prompt_end = {
        let cache = app.cache();
        !cache.rewinds() && cache.admits(session.state_bytes())
    };
    let mut at_prompt_end: Option<Session> = None;
    {
        let generation = Generation::start(
            &mut session,
            &app.tokenizer,
            Some(&mut context),
            None,
            &job.prompt,
            cached,
            &job.options,
        );
        let mut generation = match generation {
            Ok(g) => g,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                app.metrics.finished(&finished);
                return;
            }
        };
        let mut first = true;
        while let Some(event) = generation.next() {
            match event {
                Ok(e @ GenerationEvent::Token { .. }) => {
                    if first {
                        first = false;
                        app.metrics.first_token(job.arrived.elapsed());
                    }
                    if tx.blocking_send(Ok(e)).is_err() {
                        // The client went away: the next event is the cancelled end.
                        cancel.cancel();
                    }
                    // The first token was sampled from the prefill's logits and its decode
                    // step has not run yet: the session is at the prompt's end. (Forked
                    // after the token went out, so as not to delay it; a fork that fails
                    // leaves nothing to keep.)
                    let s = generation.session();
                    if fork_at_prompt_end && at_prompt_end.is_none() && s.position() == prompt_len {
                        at_prompt_end = s.fork().ok();
                    }
                }
                Ok(GenerationEvent::Done(c)) => {
                    let s = &c.stats;
                    finished = Finished {
                        outcome: if c.reason == FinishReason::Cancelled {
                            Outcome::Cancelled
                        } else {
                            Outcome::Completed
                        },
                        prompt_tokens: s.prompt_tokens,
                        cached_prompt_tokens: s.cached_prompt_tokens,
                        generated_tokens: s.generated_tokens,
                        prefill: s.prefill_time,
                        decode: s.decode_time,
                        decode_steps: s.decode_steps,
                    };
                    if first && !c.tokens.is_empty() {
                        app.metrics.first_token(job.arrived.elapsed());
                    }
                    done = Some(c);
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                }
            }
        }
    }
    // Counted and cached before the client hears of the end, so that its next request
    // sees both.
    app.metrics.finished(&finished);
    if finished.outcome == Outcome::Completed {
        let kept = if session.position() == prompt_len {
            // No decode step ran (the reply ended at its first token).
            Some(session)
        } else if session.truncate(prompt_len).is_ok() {
            Some(session)
        } else {
            // Recurrent states (or a sliding-window ring cut back too far): the fork.
            drop(session);
            at_prompt_end
        };
        if let Some(s) = kept {
            if context.len() >= prompt_len {
                context.truncate(prompt_len);
                app.cache().insert(s, context);
            }
        }
    } else {
        // The session (its KV cache and states) is freed now.
        drop(session);
    }
    if let Some(c) = done {
        let _ = tx.blocking_send(Ok(GenerationEvent::Done(c)));
    }
}

fn failed(job: &Job) -> Finished {
    Finished {
        outcome: Outcome::Failed,
        prompt_tokens: job.prompt.len(),
        cached_prompt_tokens: 0,
        generated_tokens: 0,
        prefill: Duration::ZERO,
        decode: Duration::ZERO,
        decode_steps: 0,
    }
}
