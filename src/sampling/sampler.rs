//! The [`Sampler`]: a token from full logits or from a truncated candidate list, with the
//! penalties' token history and a seeded generator.

use std::collections::HashMap;

use super::SamplingParams;

/// One entry of a truncated logits list: a token id and its logit.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Candidate {
    /// Token id.
    pub id: u32,
    /// Its logit.
    pub logit: f32,
}

impl Candidate {
    /// Token `id` with logit `logit` (for [`Sampler::sample_candidates`] on a list an
    /// application made; the struct is `#[non_exhaustive]`).
    pub const fn new(id: u32, logit: f32) -> Self {
        Candidate { id, logit }
    }
}

/// A sampler's next draw, as a GPU reproduces it to pick a step's token ahead of the host
/// ([`Sampler::next_draw`], [`Session::step_top_sampling`]).
///
/// [`Session::step_top_sampling`]: crate::Session::step_top_sampling
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NextDraw {
    /// Candidates drawn among (the top-k).
    pub(crate) top_k: u32,
    /// Temperature (above 0).
    pub(crate) temperature: f32,
    /// Top-p (1: off).
    pub(crate) top_p: f32,
    /// Min-p (0: off).
    pub(crate) min_p: f32,
    /// The uniform number in [0, 1) of the next draw.
    pub(crate) u: f32,
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

    /// What a decode step run ahead needs to draw, on the GPU, the token this sampler will
    /// draw next from a top-k list ([`Session::step_top_sampling`]): the truncation, the
    /// temperature and the random number of the next draw (the generator does not
    /// advance). `None` where the GPU cannot tell: greedy (`step_top` with `n` 1 runs
    /// ahead by itself), an adjusted logit (bias or penalties, which depend on the
    /// history), no top-k, or a top-k past [`MAX_TOP`](crate::session::MAX_TOP).
    ///
    /// [`Session::step_top_sampling`]: crate::Session::step_top_sampling
    pub fn next_draw(&self) -> Option<NextDraw> {
        let p = &self.params;
        if p.is_greedy() || p.is_adjusted() || p.top_k == 0 || p.top_k > crate::session::MAX_TOP {
            return None;
        }
        // The same generator state gives the same number when `draw` uses it.
        let u = self.rng.clone().next_f64();
        Some(NextDraw {
            top_k: p.top_k as u32,
            temperature: p.temperature,
            top_p: p.top_p,
            min_p: p.min_p,
            u: (u as f32).min(1.0 - f32::EPSILON),
        })
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
    pub(super) fn adjust(&self, id: u32, logit: f32) -> f32 {
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

/// Descending logit, then ascending id: a total order.
pub(super) fn desc(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// Applies top-p: keeps token j (in descending order) while the probability of the tokens
/// before it is below `top_p` (transformers' rule), at least one; returns how many are
/// kept, moved to the front of `cands` in a deterministic order. Large lists are bucketed
/// by logit so that only the bucket where the cut falls is sorted.
pub(super) fn top_p_count(cands: &mut Vec<Candidate>, top_p: f32) -> usize {
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
pub(super) struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
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

    pub(super) fn next_u64(&mut self) -> u64 {
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
    pub(super) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}
