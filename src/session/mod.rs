//! [`Session`]: one conversation's KV cache and scratch buffers on a shared [`Model`]; its
//! counters ([`SessionStats`]) and limits ([`MAX_PASS_TOKENS`], [`MAX_TOP`]).

use crate::cache::CacheStats;
use crate::engine::pass::Readout;
use crate::engine::state::{Scratch, SequenceState};
use crate::error::{Error, Result};
use crate::gpu::{ParamArena, Recorder, Timer};
use crate::model::Model;
use crate::routing::{RoutingTrace, TraceHeader};
use crate::sampling::{Candidate, NextDraw};

mod passes;

use passes::Ahead;

/// Longest run of tokens one batched pass processes; longer prompts are prefilled in
/// passes of this many tokens.
pub const MAX_PASS_TOKENS: usize = 512;

/// Counters of a session: of its last `prefill`/`step` call ([`Session::last_stats`]) or
/// accumulated over its life ([`Session::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct SessionStats {
    /// Tokens run through the model (prompt and generated).
    pub tokens: u64,
    /// Forward passes (one per prefill chunk or step).
    pub passes: u64,
    /// (token, expert) routing choices made by the MoE layers.
    pub experts_routed: u64,
    /// Expert-cache traffic: hits, misses, bytes read, time waiting for reads.
    pub cache: CacheStats,
    /// Wall-clock time of the calls.
    pub wall_time: std::time::Duration,
    /// Time the GPU spent executing the calls' kernels, where the adapter has timestamp
    /// queries (`None` otherwise).
    pub gpu_time: Option<std::time::Duration>,
    /// Host time spent recording and submitting GPU work.
    pub record_time: std::time::Duration,
    /// Host time spent waiting for the GPU (the routing readback of each MoE layer and the
    /// logits).
    pub gpu_wait_time: std::time::Duration,
    /// Decode steps run without a routing readback, every chosen expert already resident.
    pub resident_steps: u64,
    /// Resident decode attempts that found an expert missing and were run again with
    /// routing readbacks (their cost is included in the times above).
    pub resident_retries: u64,
    /// Resident decode steps whose GPU work had been recorded ahead, while the GPU ran
    /// the step before, and was submitted at once when the step was asked for.
    pub steps_recorded_ahead: u64,
    /// Decode steps that the GPU had already run ahead of the call, with its own pick of
    /// the token, while the host read back the step before (also counted in
    /// `steps_recorded_ahead`): greedy steps ([`Session::step_top`] with `n` 1), and the
    /// sampled steps of [`Generation`](crate::Generation) with a top-k.
    pub steps_run_ahead: u64,
    /// Steps run ahead whose token (drawn on the GPU) was not the one the call asked for
    /// (the sampler drew another: rounding at a boundary), so they were run again.
    pub steps_run_again: u64,
}

impl SessionStats {
    fn add(&mut self, o: &SessionStats) {
        self.tokens += o.tokens;
        self.passes += o.passes;
        self.experts_routed += o.experts_routed;
        self.cache.add(&o.cache);
        self.wall_time += o.wall_time;
        self.record_time += o.record_time;
        self.resident_steps += o.resident_steps;
        self.resident_retries += o.resident_retries;
        self.steps_recorded_ahead += o.steps_recorded_ahead;
        self.steps_run_ahead += o.steps_run_ahead;
        self.steps_run_again += o.steps_run_again;
        self.gpu_wait_time += o.gpu_wait_time;
        self.gpu_time = match (self.gpu_time, o.gpu_time) {
            (Some(a), Some(b)) => Some(a + b),
            (None, Some(b)) if self.passes == o.passes => Some(b),
            _ => None,
        };
    }

    /// Tokens per second of wall time.
    pub fn tokens_per_second(&self) -> f64 {
        let s = self.wall_time.as_secs_f64();
        if s > 0.0 {
            self.tokens as f64 / s
        } else {
            0.0
        }
    }
}

/// One sequence being processed: a KV cache with a maximum context, on a shared [`Model`].
///
/// ```no_run
/// # fn main() -> moestream::Result<()> {
/// let model = moestream::Model::open("path/to/model")?;
/// let mut s = model.session(2048)?;
/// let logits = s.prefill(&[1, 2, 3])?;   // logits of the last prompt token
/// let logits = s.step(4)?;               // logits after one more token
/// s.reset();                             // empty context, buffers kept
/// # let _ = logits; Ok(()) }
/// ```
pub struct Session {
    model: Model,
    max_context: usize,
    pos: usize,
    /// Per-layer sequence state: KV caches, recurrent states.
    state: SequenceState,
    scratch: Scratch,
    params: ParamArena,
    timer: Option<Timer>,
    stats: SessionStats,
    last: SessionStats,
    /// Whether the logits buffer holds the last position's logits.
    has_logits: bool,
    /// Which logits buffer holds them: `Scratch::logits2` if set, else `logits` (passes
    /// alternate between the two with `flip`, so that a step run ahead of its call does
    /// not overwrite the logits of the step before it).
    logits_at: bool,
    /// Decode steps to run with routing readbacks before trying the resident path again.
    resident_backoff: u32,
    /// Greedy steps to run before running one ahead again (after a step run ahead was
    /// not wanted).
    run_ahead_backoff: u32,
    /// The routing recorded since [`Session::record_routing`], if recording.
    routing: Option<RoutingTrace>,
    /// The routing the session follows instead of its routers' ([`Session::follow_routing`]).
    follow: Option<RoutingTrace>,
    /// The next resident decode step, recorded while the GPU ran the last one.
    ahead: Option<Ahead>,
    /// The sampler's next draw, during a call of [`Session::step_top_sampling`]: a step
    /// run ahead of the next call picks its token with it.
    draw: Option<NextDraw>,
    /// Which of the two readback buffers the next recorded pass reads into (a step
    /// recorded ahead reads into the other one than the step in flight).
    flip: bool,
}

/// Largest `n` of [`Session::step_top`] and [`Session::prefill_top`].
pub const MAX_TOP: usize = 256;

/// What a pass reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Nothing,
    Full,
    Top(usize),
}

impl Readout {
    fn into_full(self) -> Vec<f32> {
        match self {
            Readout::Full(v) => v,
            Readout::Top(_) => Vec::new(),
        }
    }

    fn into_top(self) -> Vec<Candidate> {
        match self {
            Readout::Top(c) => c,
            Readout::Full(_) => Vec::new(),
        }
    }
}

/// After a resident attempt misses, this many steps use routing readbacks before the next.
const RESIDENT_BACKOFF: u32 = 16;

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("position", &self.pos)
            .field("max_context", &self.max_context)
            .finish()
    }
}

impl Session {
    pub(crate) fn new(model: Model, max_context: usize) -> Result<Session> {
        if max_context == 0 {
            return Err(Error::InvalidArgument(
                "max_context must be at least 1".into(),
            ));
        }
        let m = &model.inner;
        let gpu = &m.gpu;
        // The sizes the memory plan reports (`MemoryPlan::session`), checked against the
        // device's limits before anything is allocated.
        let layout = m.plan.session_layout(max_context)?;
        let state = SequenceState::new(gpu, &layout);
        let scratch = Scratch::new(gpu, &m.cfg, &layout.scratch, max_context)?;
        let timer = Timer::new(gpu);
        gpu.check()?;
        Ok(Session {
            model,
            max_context,
            pos: 0,
            state,
            scratch,
            params: ParamArena::default(),
            timer,
            stats: SessionStats::default(),
            last: SessionStats::default(),
            has_logits: false,
            logits_at: false,
            resident_backoff: 0,
            run_ahead_backoff: 0,
            routing: None,
            follow: None,
            ahead: None,
            draw: None,
            flip: false,
        })
    }

    /// Runs a whole prompt (appended to whatever the context holds) in batched passes and
    /// returns the logits at its last position.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.prefill_as(ids, Want::Full).map(Readout::into_full)
    }

    /// As [`prefill`](Self::prefill), returning only the `n` best logits of the last
    /// position (best first; ties to the lower id), computed on the GPU so that only a few
    /// bytes are read back. `n` is clamped to `1..=`[`MAX_TOP`].
    pub fn prefill_top(&mut self, ids: &[u32], n: usize) -> Result<Vec<Candidate>> {
        self.prefill_as(ids, Want::Top(n.clamp(1, MAX_TOP)))
            .map(Readout::into_top)
    }

    fn prefill_as(&mut self, ids: &[u32], want: Want) -> Result<Readout> {
        let _span =
            tracing::trace_span!("prefill", tokens = ids.len(), position = self.pos).entered();
        if ids.is_empty() {
            return Err(Error::InvalidArgument(
                "prefill needs at least one token".into(),
            ));
        }
        self.check_tokens(ids)?;
        self.last = SessionStats::default();
        let start = self.pos;
        let traced = self.routing.as_ref().map(RoutingTrace::len);
        let mut last = Readout::Full(Vec::new());
        let chunks: Vec<&[u32]> = ids.chunks(self.scratch.cap).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let want = if i + 1 == chunks.len() {
                want
            } else {
                Want::Nothing
            };
            match self.run(chunk, want, false) {
                Ok(l) => last = l,
                Err(e) => {
                    // All or nothing: a failed prefill leaves the context as it was. The
                    // recurrent states of linear-attention layers cannot be rewound past
                    // the chunks already run, so there the context is emptied instead.
                    self.pos = if i > 0 && self.state.has_recurrent() {
                        0
                    } else {
                        start
                    };
                    if let (Some(trace), Some(len)) = (self.routing.as_mut(), traced) {
                        trace.truncate(len);
                    }
                    return Err(e);
                }
            }
        }
        Ok(last)
    }

    /// Runs one token and returns the logits after it.
    pub fn step(&mut self, id: u32) -> Result<Vec<f32>> {
        self.step_as(id, Want::Full).map(Readout::into_full)
    }

    /// As [`step`](Self::step), returning only the `n` best logits (see
    /// [`prefill_top`](Self::prefill_top)).
    pub fn step_top(&mut self, id: u32, n: usize) -> Result<Vec<Candidate>> {
        self.step_as(id, Want::Top(n.clamp(1, MAX_TOP)))
            .map(Readout::into_top)
    }

    /// As [`step_top`](Self::step_top), for a caller that chooses the next token with a
    /// [`Sampler`](crate::sampling::Sampler) whose next draw is `draw`
    /// ([`Sampler::next_draw`](crate::sampling::Sampler::next_draw)): the step after this
    /// one is submitted at once, behind this one, its token drawn on the GPU as the sampler
    /// will draw it, so that the GPU does not idle while the host reads back and samples.
    /// The next call keeps that step only if it ran the token the call asks for, and runs
    /// the step again otherwise: results never depend on it. `n` must be at least the
    /// draw's top-k for the step to run ahead; with `draw` `None` this is `step_top`.
    /// ([`Generation`](crate::Generation) steps this way when its sampling has a top-k.)
    ///
    /// ```no_run
    /// # fn main() -> moestream::Result<()> {
    /// use moestream::sampling::Sampler;
    /// use moestream::SamplingParams;
    ///
    /// let model = moestream::Model::open("path/to/model")?;
    /// let mut s = model.session(2048)?;
    /// let params = SamplingParams { temperature: 0.6, top_k: 20, top_p: 0.95, ..SamplingParams::default() };
    /// let mut sampler = Sampler::new(params);
    /// let mut next = sampler.sample(&s.prefill(&[1, 2, 3])?);
    /// for _ in 0..16 {
    ///     let top = s.step_top_sampling(next, 20, sampler.next_draw())?;
    ///     next = match sampler.sample_candidates(&top) {
    ///         Some(id) => id,
    ///         None => sampler.sample(&s.last_logits()?),
    ///     };
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn step_top_sampling(
        &mut self,
        id: u32,
        n: usize,
        draw: Option<NextDraw>,
    ) -> Result<Vec<Candidate>> {
        self.draw = draw;
        let out = self.step_top(id, n);
        self.draw = None;
        out
    }

    fn step_as(&mut self, id: u32, want: Want) -> Result<Readout> {
        let _span = tracing::trace_span!("step", position = self.pos).entered();
        self.check_tokens(&[id])?;
        self.last = SessionStats::default();
        self.run(&[id], want, true)
    }

    /// All logits of the last position of the most recent successful `prefill` or `step`
    /// (for example when [`step_top`](Self::step_top)'s candidates were not enough).
    pub fn last_logits(&mut self) -> Result<Vec<f32>> {
        if !self.has_logits {
            return Err(Error::InvalidArgument(
                "no logits yet: run prefill or step first".into(),
            ));
        }
        // Recording uses the parameter arena that a step recorded ahead waits in (and a
        // step run ahead may be reading into either readback buffer).
        self.drop_ahead();
        let m = &*self.model.inner;
        let logits = self.logits().clone();
        let mut rec = Recorder::new(&m.gpu, &mut self.params, None);
        let bytes = (m.cfg.vocab_size * 4) as u64;
        let out = rec.read(&[(&logits, 0, bytes)], &self.scratch.readback)?;
        Ok(bytemuck::pod_collect_to_vec(&out[0]))
    }

    /// Empties the context; the session's buffers are kept for reuse.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.has_logits = false;
        self.drop_ahead();
    }

    /// Cuts the context back to its first `len` tokens: the next `prefill` or `step`
    /// continues from position `len`, as if the tokens after it had never been run (to
    /// regenerate a reply, or to edit the last turn of a conversation). Nothing is
    /// recomputed: a KV cache keeps its earlier entries.
    ///
    /// A model with linear-attention layers (Qwen3.5, Qwen3-Next) keeps a recurrent state
    /// that holds no record of earlier positions, so there `len` must be 0 or the current
    /// position; to come back to a point of a conversation, [`fork`](Self::fork) the
    /// session there first. A sliding-window layer's short cache (gpt-oss) can be cut back
    /// by fewer than [`MAX_PASS_TOKENS`] tokens. Otherwise, and when `len` exceeds the
    /// position, an [`Error::InvalidArgument`] that leaves the session as it was.
    ///
    /// ```no_run
    /// # fn main() -> moestream::Result<()> {
    /// let model = moestream::Model::open("path/to/model")?;
    /// let mut s = model.session(2048)?;
    /// s.prefill(&[1, 2, 3, 4, 5])?;
    /// s.truncate(3)?; // the context is [1, 2, 3] again
    /// let logits = s.prefill(&[9, 9])?; // as if run on [1, 2, 3, 9, 9]
    /// # let _ = logits; Ok(()) }
    /// ```
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.pos {
            return Err(Error::InvalidArgument(format!(
                "cannot truncate the context to {len} tokens: it holds {}",
                self.pos
            )));
        }
        if len == self.pos {
            return Ok(());
        }
        if len > 0 {
            self.state.check_rewind(self.pos, len)?;
        }
        self.pos = len;
        self.has_logits = false;
        self.drop_ahead();
        Ok(())
    }

    /// A new session on the same model holding a copy of this one's context (its KV
    /// caches and recurrent states up to [`position`](Self::position), and its last
    /// logits), with the same maximum context. The two then run independently: branch a
    /// conversation, sample several replies to one prompt, or keep a prefilled system
    /// prompt to start new conversations from. The copy is made on the GPU.
    ///
    /// ```no_run
    /// # fn main() -> moestream::Result<()> {
    /// let model = moestream::Model::open("path/to/model")?;
    /// let mut base = model.session(2048)?;
    /// base.prefill(&[1, 2, 3])?; // a shared prefix
    /// let mut a = base.fork()?;
    /// let mut b = base.fork()?;
    /// let la = a.prefill(&[4])?; // [1, 2, 3, 4]
    /// let lb = b.prefill(&[5])?; // [1, 2, 3, 5]
    /// # let _ = (la, lb); Ok(()) }
    /// ```
    pub fn fork(&self) -> Result<Session> {
        let mut s = Session::new(self.model.clone(), self.max_context)?;
        let gpu = &self.model.inner.gpu;
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fork"),
            });
        s.state.copy_from(&self.state, self.pos, &mut enc);
        if self.has_logits {
            let n = self.logits().size().min(s.scratch.logits.size());
            enc.copy_buffer_to_buffer(self.logits(), 0, &s.scratch.logits, 0, n);
        }
        gpu.queue.submit([enc.finish()]);
        gpu.check()?;
        s.pos = self.pos;
        s.has_logits = self.has_logits;
        Ok(s)
    }

    /// Starts recording this session's routing: from now on, every token that a
    /// successful [`prefill`](Self::prefill) or [`step`](Self::step) (or
    /// [`generate`](Self::generate)) runs appends the experts it chose in each MoE layer, in
    /// the router's rank order, to a [`RoutingTrace`] (a shared expert is not a choice and
    /// is not recorded). Starting again discards what was recorded. A failed call records
    /// nothing (a prefill of several passes undoes the passes it recorded), and tokens run
    /// again after a [`truncate`](Self::truncate) are recorded again: the trace is the
    /// sequence of requests the expert cache saw. Recording changes no result: it keeps the
    /// expert ids the engine reads back anyway (with a partial cache, each MoE layer's
    /// routing; on resident decode steps, the routing log of the step's one readback).
    /// [`fork`](Self::fork)ed sessions do not record. An [`Error::InvalidArgument`] for a
    /// model without MoE layers.
    ///
    /// ```no_run
    /// # fn main() -> moestream::Result<()> {
    /// let model = moestream::Model::open("path/to/model")?;
    /// let mut s = model.session(2048)?;
    /// s.record_routing()?;
    /// s.prefill(&[1, 2, 3])?;
    /// s.step(4)?;
    /// let trace = s.take_routing_trace().expect("recording");
    /// assert_eq!(trace.len(), 4);
    /// trace.write("routing.trace")?;
    /// # Ok(()) }
    /// ```
    pub fn record_routing(&mut self) -> Result<()> {
        let header = TraceHeader::for_model(&self.model.inner.cfg)?;
        self.routing = Some(RoutingTrace::new(header));
        Ok(())
    }

    /// The routing recorded so far, if recording ([`record_routing`](Self::record_routing)).
    pub fn routing_trace(&self) -> Option<&RoutingTrace> {
        self.routing.as_ref()
    }

    /// A benchmarking tool: from now on every MoE layer of this session runs the experts
    /// `trace` chose for token `position % trace.len()` instead of those its router
    /// chooses (the router's weights kept), through the real expert cache, store and
    /// kernels: decode and prefill timed under realistic routing (a recorded trace, or
    /// [`RoutingTrace::generate`](crate::routing::RoutingTrace::generate)'s) on any
    /// checkpoint of the same shape. **The logits are meaningless.** Every step then reads
    /// its routing back (no resident steps). `None` goes back to the model's own routing.
    /// An [`Error::InvalidArgument`] for an empty trace or one of another shape (MoE
    /// layers, experts per layer, top-k).
    pub fn follow_routing(&mut self, trace: Option<RoutingTrace>) -> Result<()> {
        if let Some(t) = &trace {
            let want = TraceHeader::for_model(&self.model.inner.cfg)?;
            let h = t.header();
            if t.is_empty()
                || h.moe_layers() != want.moe_layers()
                || h.num_experts() != want.num_experts()
                || h.top_k() != want.top_k()
            {
                return Err(Error::InvalidArgument(format!(
                    "a routing trace to follow must have tokens and the model's shape (MoE layers {:?}, {} experts, top-{}); this one has {} tokens, MoE layers {:?}, {} experts, top-{}",
                    want.moe_layers(),
                    want.num_experts(),
                    want.top_k(),
                    t.len(),
                    h.moe_layers(),
                    h.num_experts(),
                    h.top_k()
                )));
            }
        }
        self.drop_ahead();
        self.follow = trace;
        Ok(())
    }

    /// Stops recording and returns what was recorded (`None` if not recording).
    pub fn take_routing_trace(&mut self) -> Option<RoutingTrace> {
        self.routing.take()
    }

    /// Tokens in the context.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The most tokens the context holds.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// GPU memory of the KV cache in bytes: keys and values of every layer for
    /// [`max_context`](Self::max_context) tokens, in the model's
    /// [`kv_cache_dtype`](crate::Model::kv_cache_dtype).
    pub fn kv_cache_bytes(&self) -> u64 {
        self.state.kv_bytes()
    }

    /// GPU memory of the session's sequence state in bytes: the KV caches of the attention
    /// layers ([`kv_cache_bytes`](Self::kv_cache_bytes)) and the recurrent and convolution
    /// states of the linear-attention layers, all allocated when the session is created.
    pub fn state_bytes(&self) -> u64 {
        self.state.bytes()
    }

    /// GPU memory of the session's scratch buffers in bytes: the activations of one pass
    /// of up to [`MAX_PASS_TOKENS`] tokens, the RoPE tables for
    /// [`max_context`](Self::max_context) positions, the logits and their readback.
    /// [`state_bytes`](Self::state_bytes) plus this is what
    /// [`SessionPlan::bytes`](crate::model::SessionPlan::bytes) predicted. (Not counted: the
    /// uniform parameters of the dispatches, 64 KiB blocks allocated as the session records
    /// its first passes, and a few KiB of timestamp queries.)
    pub fn scratch_bytes(&self) -> u64 {
        self.scratch.bytes()
    }

    /// The model this session runs on.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Counters accumulated over the session's life.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Counters of the last `prefill` or `step` call (including a failed one).
    pub fn last_stats(&self) -> SessionStats {
        self.last
    }

    fn check_tokens(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.model.inner.cfg.vocab_size;
        if let Some((index, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
            return Err(Error::TokenOutOfRange {
                id,
                index,
                vocab_size: vocab,
            });
        }
        let needed = self.pos + ids.len();
        if needed > self.max_context {
            return Err(Error::ContextOverflow {
                needed,
                capacity: self.max_context,
            });
        }
        Ok(())
    }
}

// Added for `crate::generation::Chat` (multi-turn prefix reuse); kept separate from the
// session's own code.
impl Session {
    /// Keeps the first `len` tokens of the context where [`truncate`](Self::truncate) can
    /// (no-op if it holds fewer), else none, and returns the tokens kept: a model with
    /// linear-attention layers cannot rewind their recurrent states, nor a sliding-window
    /// ring keys it has overwritten, so there the caller prefills again from the start,
    /// which gives exactly the logits of a fresh prefill.
    pub(crate) fn truncate_context(&mut self, len: usize) -> usize {
        if len < self.pos && self.truncate(len).is_err() {
            self.reset();
        }
        self.pos
    }
}
