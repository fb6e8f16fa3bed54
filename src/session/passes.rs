//! How a session's calls become GPU passes: recording a pass (now, or ahead of the step
//! that will want it), waiting for it and reading its results, and the routing a pass
//! records or follows.

use super::{Readout, Session, SessionStats, Want, RESIDENT_BACKOFF};
use crate::cache::CacheStats;
use crate::engine::pass::{Pass, TokenPick, RESIDENT_FIRST_CHUNK};
use crate::error::{Error, Result};
use crate::gpu::{PendingRead, Recorder};
use crate::routing::RoutingTrace;

/// A resident decode step recorded ahead (see [`Session::pass`]): its work, not yet
/// submitted, for the step at `pos` reading back `want`; its parameters wait in the
/// session's arena, so any other recording drops it. Or, when `running`, a step already
/// submitted with the GPU's pick of the token (a step run ahead). A greedy one is kept if
/// the next call asks for that token (`token`, the best candidate of the step before it,
/// once that step's readback is in), else waited for and dropped. A sampled one
/// (`sampled`: its token drawn on the GPU, not known to the host until its readback) is
/// kept by the next call with the same `want`, and run again if its readback says it ran
/// another token than the call's.
pub(super) struct Ahead {
    pos: usize,
    want: Want,
    rec: Recorded,
    running: bool,
    sampled: bool,
    token: Option<u32>,
}

/// How a recorded pass's readback came out.
enum Finished {
    /// Its results.
    Read(Readout),
    /// A resident pass found a chosen expert missing: nothing advanced.
    Missed,
    /// A step run ahead ran another token than its call asked for: nothing advanced.
    WrongToken,
}

/// A pass's GPU work, submitted (or recorded ahead), and what its recording counted.
struct Recorded {
    read: PendingRead,
    top: Option<usize>,
    stats: CacheStats,
    experts_routed: u64,
    record_time: std::time::Duration,
    wait_time: std::time::Duration,
    /// GPU nanoseconds of the readbacks during the pass; `None` without timestamps.
    gpu_ns: Option<f64>,
    /// The routing read back during the pass, when the session records it
    /// ([`Pass::routing`]).
    routing: Option<Vec<(usize, Vec<u32>, usize)>>,
    /// Whether the pass writes `Scratch::logits2` (else `logits`).
    logits2: bool,
}

/// An error of a pass, with the counters of the work done before it.
type Failed = Box<(Error, SessionStats)>;

/// A pass's routing: per MoE layer, (layer, the chosen ids of every token, ids per token).
type RoutedLayers = Vec<(usize, Vec<u32>, usize)>;

/// Environment variable that turns recording ahead off (`1`), for measuring what it
/// gains; on by default.
const NO_AHEAD_ENV: &str = "MOESTREAM_NO_RECORD_AHEAD";

fn record_ahead() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !switched_off(NO_AHEAD_ENV))
}

/// Whether the environment variable `var` turns something off (set, not empty, not `0`).
fn switched_off(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Environment variable that turns running greedy steps ahead off (`1`), for measuring
/// what it gains; on by default.
const NO_RUN_AHEAD_ENV: &str = "MOESTREAM_NO_RUN_AHEAD";

/// After a step run ahead is dropped by a step that did not want it, this many steps run
/// none ahead.
const RUN_AHEAD_BACKOFF: u32 = 16;

fn run_ahead() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !switched_off(NO_RUN_AHEAD_ENV))
}

impl Session {
    /// One batched pass over `ids` (at most `scratch.cap` of them) at the current position:
    /// a decode step (`decode`, one token, through the mat-vec kernels and, where it can,
    /// the resident path) or a prefill pass (any number of tokens, one included, through
    /// the mat-mat kernels, so that each token's results do not depend on how a prompt
    /// was split into passes: see [`Pass::decode`]).
    pub(super) fn run(&mut self, ids: &[u32], want: Want, decode: bool) -> Result<Readout> {
        let m = &*self.model.inner;
        let decode = decode && ids.len() == 1;
        let resident =
            decode && want != Want::Nothing && m.cache.is_some() && self.follow.is_none();
        let out = if resident && self.resident_backoff == 0 {
            match self.pass(ids, want, true, true)? {
                Some(out) => Some(out),
                None => {
                    tracing::trace!("resident step found an expert missing: running it again with routing readbacks");
                    self.resident_backoff = RESIDENT_BACKOFF;
                    None
                }
            }
        } else {
            if resident {
                self.resident_backoff -= 1;
            }
            None
        };
        let out = match out {
            Some(out) => out,
            None => self.pass(ids, want, false, decode)?.ok_or_else(|| {
                Error::Internal("a pass with routing readbacks reported a miss".into())
            })?,
        };
        self.has_logits = want != Want::Nothing;
        Ok(out)
    }

    /// One pass. A resident pass returns `None` when a chosen expert was not resident (its
    /// results are discarded; nothing advanced).
    ///
    /// A resident decode step records the next step ahead while the GPU runs it (assuming
    /// that step will be at the next position and read back the same), and a following
    /// `step` that matches submits that work at once: the GPU then idles between steps only
    /// for the readback and the submit, not for the host's recording of a whole step
    /// (~2 ms on a fast CPU, ~45% of a Qwen3-30B-A3B step's GPU time on an H100). The
    /// next token is written into the pass's input just before the submit.
    ///
    /// A greedy step (the best logit only, [`Session::step_top`] with `n` 1) goes further:
    /// the next step is submitted at once, behind this one, its token picked on the GPU
    /// from this one's best logit ([`Pass::pick_token`]), so the GPU does not idle between
    /// steps at all. The next `step` keeps it if it asks for that token (greedy
    /// generation always does); any other call waits for it and drops it: it wrote only
    /// the next position's KV entries (which the next real step overwrites) and the
    /// recurrent states not yet committed. Not with sliding-window caches, where that
    /// write would overwrite a key a later `truncate` may still need.
    fn pass(
        &mut self,
        ids: &[u32],
        want: Want,
        resident: bool,
        decode: bool,
    ) -> Result<Option<Readout>> {
        let t0 = std::time::Instant::now();
        let mut launched = None;
        let mut ran_ahead = false;
        if let Some(a) = self.ahead.take() {
            let fits = resident && a.pos == self.pos && a.want == want && ids.len() == 1;
            if a.running {
                if fits && (a.sampled || a.token == Some(ids[0])) {
                    launched = Some(a.rec);
                    ran_ahead = true;
                } else {
                    // The GPU ran a step nobody wants. If the call is the step it ran but
                    // with another token: not again for a while, in case the caller is not
                    // decoding greedily after all. (A call that reads back something else
                    // changed how it decodes; its steps run ahead at once.)
                    self.drain(a.rec);
                    if decode && fits {
                        self.run_ahead_backoff = RUN_AHEAD_BACKOFF;
                    }
                }
            } else if fits {
                let m = &*self.model.inner;
                m.gpu
                    .queue
                    .write_buffer(&self.scratch.ids, 0, bytemuck::cast_slice(ids));
                let mut rec = a.rec;
                let t = std::time::Instant::now();
                rec.read.launch(&m.gpu, &mut self.params);
                rec.record_time += t.elapsed();
                launched = Some(rec);
            }
        }
        let from_ahead = launched.is_some();
        let rec = match launched {
            Some(rec) => Ok(rec),
            None => self.record(Some(ids), self.pos, want, resident, decode, false, None),
        };
        // Record the next step while the GPU runs this one: it reads the states this one
        // writes (committed only after this one's readback says it ran). A greedy step's
        // next one is submitted now, with the GPU's pick of the token.
        if rec.is_ok()
            && resident
            && want != Want::Nothing
            && record_ahead()
            && self.pos + 2 <= self.max_context
        {
            // A sampled step's next one draws its token on the GPU with the sampler's next
            // number; it needs this step's top-k (the draw's) and the candidate lists to fit
            // the kernel.
            let draw = self.draw.filter(|d| {
                let chunks =
                    crate::gpu::kernels::topk_groups(self.model.inner.cfg.vocab_size as u32).0;
                matches!(want, Want::Top(n) if n >= d.top_k as usize)
                    && chunks <= crate::gpu::kernels::TOKEN_SAMPLE_MAX_CHUNKS
            });
            let running = (want == Want::Top(1) || draw.is_some())
                && run_ahead()
                && self.run_ahead_backoff == 0
                && !self.state.has_ring();
            self.run_ahead_backoff = self.run_ahead_backoff.saturating_sub(1);
            self.state.commit();
            // Recorded whole and submitted at once: the GPU is busy with this step, so
            // submitting in chunks as the recording goes (as a step asked for does) would
            // only add submits.
            let pick = running.then_some(TokenPick {
                n_top: match want {
                    Want::Top(n) => n as u32,
                    _ => 1,
                },
                draw,
            });
            let next = self.record(None, self.pos + 1, want, true, true, true, pick);
            self.state.uncommit();
            if let Ok(mut r) = next {
                if running {
                    let t = std::time::Instant::now();
                    r.read.launch(&self.model.inner.gpu, &mut self.params);
                    r.record_time += t.elapsed();
                }
                self.ahead = Some(Ahead {
                    pos: self.pos + 1,
                    want,
                    rec: r,
                    running,
                    sampled: running && draw.is_some(),
                    token: None,
                });
            }
        }
        let logits2 = rec.as_ref().is_ok_and(|r| r.logits2);
        let result = match rec {
            Ok(rec) => self.finish(rec, resident, ran_ahead.then_some(ids[0])),
            Err(e) => Err(e),
        };
        // (Errors come back with the stats of the work done before them.)
        let (out, mut stats, routed) = match result {
            Ok((out, stats, routed)) => (Ok(out), stats, routed),
            Err(failed) => {
                let (e, stats) = *failed;
                (Err(e), stats, None)
            }
        };
        let wrong = matches!(out, Ok(Finished::WrongToken));
        let out = out.map(|f| match f {
            Finished::Read(r) => Some(r),
            Finished::Missed | Finished::WrongToken => None,
        });
        let done = matches!(out, Ok(Some(_)));
        if done {
            // The token a greedy step run ahead ran: this one's best.
            if let (Some(a), Ok(Some(Readout::Top(c)))) = (self.ahead.as_mut(), &out) {
                if !a.sampled {
                    a.token = c.first().map(|c| c.id);
                }
            }
        } else {
            // The step recorded ahead assumed this one would advance.
            self.drop_ahead();
        }
        stats.tokens = if done { ids.len() as u64 } else { 0 };
        stats.passes = u64::from(done);
        if !done {
            stats.experts_routed = 0;
        }
        stats.wall_time = t0.elapsed();
        stats.resident_steps = u64::from(resident && done);
        stats.resident_retries = u64::from(resident && !wrong && matches!(out, Ok(None)));
        stats.steps_run_again = u64::from(wrong);
        stats.steps_recorded_ahead = u64::from(from_ahead && done);
        stats.steps_run_ahead = u64::from(ran_ahead && done);
        if let Some(cache) = &self.model.inner.cache {
            cache.record(&stats.cache);
        }
        self.last.add(&stats);
        self.stats.add(&stats);
        if wrong {
            // The GPU drew another token than the sampler (or the best differed): run the
            // step as asked, and none ahead for a while.
            self.run_ahead_backoff = RUN_AHEAD_BACKOFF;
            return self.pass(ids, want, resident, decode);
        }
        let out = out?;
        if out.is_some() {
            if let (Some(trace), Some(layers)) = (self.routing.as_mut(), routed.as_ref()) {
                record(trace, layers, ids.len())?;
            }
            self.pos += ids.len();
            self.state.commit();
            if want != Want::Nothing {
                self.logits_at = logits2;
            }
        }
        Ok(out)
    }

    /// Drops the step recorded or run ahead, if any; a step run ahead is waited for
    /// first (its readback buffer is being mapped).
    pub(super) fn drop_ahead(&mut self) {
        if let Some(a) = self.ahead.take() {
            if a.running {
                self.drain(a.rec);
            }
        }
    }

    /// Waits for a submitted pass whose results are not wanted.
    fn drain(&mut self, rec: Recorded) {
        if let Err(e) = rec.read.wait(&self.model.inner.gpu) {
            tracing::debug!("a step run ahead and dropped failed: {e}");
        }
    }

    /// The logits buffer holding the last pass's logits.
    pub(super) fn logits(&self) -> &wgpu::Buffer {
        if self.logits_at {
            &self.scratch.logits2
        } else {
            &self.scratch.logits
        }
    }

    /// Records a pass of `n` tokens from position `pos0` (the tokens `ids`, written into
    /// the pass's input now; `None` for a pass recorded ahead, whose one token is written
    /// at its launch), reading back `want`: submitted, its readback started; or with
    /// `deferred`, recorded ahead, not submitted. `decode`: a decode step's kernels
    /// ([`Pass::decode`]; a resident pass is one). `pick`: a step run ahead, its token
    /// picked on the GPU ([`Pass::pick_token`]).
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        ids: Option<&[u32]>,
        pos0: usize,
        want: Want,
        resident: bool,
        decode: bool,
        deferred: bool,
        pick: Option<TokenPick>,
    ) -> std::result::Result<Recorded, Failed> {
        let m = &*self.model.inner;
        let cfg = &m.cfg;
        let n = ids.map_or(1, <[u32]>::len);
        if let Some(ids) = ids {
            m.gpu
                .queue
                .write_buffer(&self.scratch.ids, 0, bytemuck::cast_slice(ids));
        }
        // Passes alternate between the two readback buffers and the two logits buffers, so
        // that a pass recorded (or run) ahead uses neither of the pass in flight.
        let logits2 = self.flip;
        let (staging, logits) = if logits2 {
            (&self.scratch.readback2, &self.scratch.logits2)
        } else {
            (&self.scratch.readback, &self.scratch.logits)
        };
        self.flip = !self.flip;
        let rec = if deferred {
            Recorder::deferred(&m.gpu, &mut self.params, self.timer.as_mut())
        } else {
            Recorder::new(&m.gpu, &mut self.params, self.timer.as_mut())
        };
        let mut pass = Pass {
            m,
            s: &self.scratch,
            state: &self.state,
            rec,
            n,
            pos0,
            decode: decode || resident,
            stats: CacheStats::default(),
            experts_routed: 0,
            resident,
            since_submit: 0,
            submit_chunk: RESIDENT_FIRST_CHUNK,
            routing: self.routing.as_ref().map(|_| Vec::new()),
            follow: self.follow.as_ref().map(|t| (t, pos0)),
            logits,
            pick_token: pick,
            fold_norm: None,
            unnormed: None,
        };
        let s = &self.scratch;
        let layers = cfg.num_hidden_layers;
        let k = cfg.num_experts_per_tok;
        let top = match want {
            Want::Top(n) => Some(n),
            _ => None,
        };
        let read = (|| -> Result<PendingRead> {
            if resident {
                pass.rec.clear(&s.route_log);
            }
            pass.embed();
            let all = &m.weights.layers;
            for (l, layer) in all.iter().enumerate() {
                pass.layer(l, layer, all.get(l + 1))?;
            }
            if want == Want::Nothing {
                // Wait for the pass (and collect its GPU time) with an empty readback.
                return Ok(pass.rec.read_begin(&[], staging));
            }
            // A resident pass reads back its miss flags and routing log; a step run ahead
            // (always resident) also the token it ran, checked against the one its call
            // asks for.
            let extra = [
                (&s.route_log, 0, (layers * 4) as u64),
                (&s.route_log, (layers * 4) as u64, (layers * k * 4) as u64),
                (&s.ids, 0, 4),
            ];
            let n = if resident {
                2 + usize::from(pick.is_some())
            } else {
                0
            };
            Ok(pass.readout_begin(top, &extra[..n], staging))
        })();
        let read = match read {
            Ok(r) => r,
            Err(e) => {
                let stats = SessionStats {
                    cache: pass.stats,
                    record_time: pass.rec.record_time,
                    gpu_wait_time: pass.rec.wait_time,
                    ..Default::default()
                };
                return Err(Box::new((e, stats)));
            }
        };
        Ok(Recorded {
            read,
            top,
            stats: pass.stats,
            experts_routed: pass.experts_routed,
            record_time: pass.rec.record_time,
            wait_time: pass.rec.wait_time,
            gpu_ns: pass.rec.gpu_ns(),
            routing: pass.routing,
            logits2,
        })
    }

    /// Waits for a recorded pass and reads its results ([`Finished`]: missed for a
    /// resident pass that found a chosen expert missing, a wrong token for a step run
    /// ahead, `token` the one its call asks for, that ran another); and, when the session
    /// records routing, the pass's routing. The stats come back on errors too.
    #[allow(clippy::type_complexity)]
    fn finish(
        &mut self,
        rec: Recorded,
        resident: bool,
        token: Option<u32>,
    ) -> std::result::Result<(Finished, SessionStats, Option<RoutedLayers>), Failed> {
        let m = &*self.model.inner;
        let cfg = &m.cfg;
        let mut stats = SessionStats {
            experts_routed: rec.experts_routed,
            cache: rec.stats,
            record_time: rec.record_time,
            gpu_wait_time: rec.wait_time,
            ..Default::default()
        };
        let t = std::time::Instant::now();
        let waited = rec.read.wait(&m.gpu);
        stats.gpu_wait_time += t.elapsed();
        let (mut parts, ns) = match waited {
            Ok(r) => r,
            Err(e) => return Err(Box::new((e, stats))),
        };
        stats.gpu_time = rec
            .gpu_ns
            .map(|g| std::time::Duration::from_nanos((g + ns) as u64));
        if parts.is_empty() {
            // A pass that read back nothing (a prefill chunk before the last).
            return Ok((
                Finished::Read(Readout::Full(Vec::new())),
                stats,
                rec.routing,
            ));
        }
        if token.is_some() {
            let ran = parts.pop().and_then(|b| {
                b.get(..4)
                    .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            });
            if ran != token {
                tracing::debug!(
                    "a step run ahead ran token {ran:?}, not {token:?}: running it again"
                );
                return Ok((Finished::WrongToken, stats, None));
            }
        }
        let rest = parts.split_off(1);
        let logits = crate::engine::pass::decode_readout(rec.top, &parts[0]);
        if !resident {
            return Ok((Finished::Read(logits), stats, rec.routing));
        }
        let layers = cfg.num_hidden_layers;
        let k = cfg.num_experts_per_tok;
        let miss: Vec<u32> = bytemuck::pod_collect_to_vec(&rest[0]);
        if miss.iter().take(layers).any(|&f| f != 0) {
            return Ok((Finished::Missed, stats, None));
        }
        // Tell the cache what was used, for its eviction order and the hit counters. (A
        // step recorded ahead learns whether the session records routing only now.)
        let log: Vec<u32> = bytemuck::pod_collect_to_vec(&rest[1]);
        let mut keys = Vec::new();
        let mut routing = self.routing.as_ref().map(|_| Vec::new());
        for l in cfg.moe_layers() {
            if let Some(r) = routing.as_mut() {
                r.push((l, log[l * k..(l + 1) * k].to_vec(), k));
            }
            let mut chosen: Vec<usize> = log[l * k..(l + 1) * k]
                .iter()
                .map(|&e| e as usize)
                .collect();
            chosen.sort_unstable();
            chosen.dedup();
            keys.extend(chosen.into_iter().map(|e| (l, e)));
        }
        if let Some(cache) = &m.cache {
            stats.cache.hits += cache.touch(&keys);
        }
        Ok((Finished::Read(logits), stats, routing))
    }
}

/// Appends the routing of a pass's `n` tokens (per MoE layer, in order: the ids of every
/// token, `kk` per token of which the first `top_k` are routed experts) to `trace`.
fn record(trace: &mut RoutingTrace, layers: &[(usize, Vec<u32>, usize)], n: usize) -> Result<()> {
    let h = trace.header();
    let k = h.top_k();
    let moe: Vec<usize> = layers.iter().map(|x| x.0).collect();
    if moe != h.moe_layers()
        || layers
            .iter()
            .any(|(_, ids, kk)| *kk < k || ids.len() < n * kk)
    {
        return Err(Error::Internal(format!(
            "recording routing: a pass routed MoE layers {moe:?}, the trace has {:?}",
            h.moe_layers()
        )));
    }
    let mut row = Vec::with_capacity(h.per_token());
    for t in 0..n {
        row.clear();
        for (_, ids, kk) in layers {
            row.extend_from_slice(&ids[t * kk..t * kk + k]);
        }
        trace
            .push_token(&row)
            .map_err(|e| Error::Internal(format!("recording routing: {e}")))?;
    }
    Ok(())
}
