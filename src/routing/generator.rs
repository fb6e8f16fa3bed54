//! [`RoutingTrace::generate`]: routing with stated statistics (per-layer expert popularity,
//! token-to-token stickiness), seeded.

use super::rng::SplitMix64;
use super::trace::{RoutingTrace, TraceHeader};
use crate::error::{Error, Result};

/// The calibrated popularity decay: the least popular expert of a layer is `e^-4.8`
/// (1/120) times as likely as the most popular. Fitted to per-layer expert counts
/// published for Qwen3-30B-A3B (docs/performance.md, "realistic routing"): 45-51% of a
/// layer's experts take 90% of its choices, and `1 - normalized entropy` is 0.11-0.15;
/// generated traces measure 48% and 0.12.
pub const CALIBRATED_DECAY: f64 = 4.8;

/// The calibrated stickiness: the excess over chance of Mixtral 8x7B's repeated expert
/// assignments between consecutive tokens (arXiv:2401.04088, Table 5), averaged over the
/// layers it reports (docs/performance.md, "realistic routing").
pub const CALIBRATED_STICKINESS: f64 = 0.09;

/// How popular each expert of a layer is. Each layer ranks its experts by a random
/// permutation of its own (seeded), so the popular experts differ from layer to layer.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Popularity {
    /// Every expert equally likely: the baseline.
    Uniform,
    /// The expert of popularity rank `r` (from 0) weighs `1 / (r + 1)^exponent`.
    Zipf {
        /// The exponent `s` (0: uniform; larger: more skewed).
        exponent: f64,
    },
    /// The expert of popularity rank `r` (from 0) of `n` weighs `exp(-decay * r / n)`: the
    /// least popular is about `e^-decay` times as likely as the most popular, whatever the
    /// number of experts. The calibrated default ([`CALIBRATED_DECAY`]): unlike a Zipf law,
    /// it matches both the head and the tail of published per-expert counts.
    Exponential {
        /// The decay over the whole ranking (0: uniform).
        decay: f64,
    },
}

impl Popularity {
    /// The weight of popularity rank `r` of `n`.
    fn weight(&self, r: usize, n: usize) -> f64 {
        match *self {
            Popularity::Uniform => 1.0,
            Popularity::Zipf { exponent } => ((r + 1) as f64).powf(-exponent),
            Popularity::Exponential { decay } => (-decay * r as f64 / n as f64).exp(),
        }
    }

    fn check(&self) -> Result<()> {
        let (name, v) = match *self {
            Popularity::Uniform => return Ok(()),
            Popularity::Zipf { exponent } => ("Zipf exponent", exponent),
            Popularity::Exponential { decay } => ("exponential decay", decay),
        };
        if !(0.0..=64.0).contains(&v) {
            return Err(Error::InvalidArgument(format!(
                "routing generator: the {name} {v} is not in 0..=64"
            )));
        }
        Ok(())
    }
}

/// The statistics [`RoutingTrace::generate`] gives its traces.
///
/// Each token chooses `top_k` distinct experts per MoE layer: first, each expert the
/// previous token chose in that layer is kept with probability
/// [`stickiness`](Self::stickiness); the rest are drawn by [`popularity`](Self::popularity)
/// without replacement. So the chance that an expert chosen at token `t` is chosen again at
/// `t + 1` (a trace's measured [`reuse`](super::TraceStats::reuse)) is `stickiness` plus, for
/// the others, the chance that the draws pick it again.
///
/// ```
/// use moestream::routing::{GeneratorParams, Popularity};
/// let realistic = GeneratorParams::default(); // calibrated to published measurements
/// let baseline = GeneratorParams::uniform();   // uniform popularity, no stickiness
/// let mut mine = GeneratorParams::default().seed(7);
/// mine.popularity = Popularity::Zipf { exponent: 0.8 };
/// mine.stickiness = 0.3;
/// assert_ne!(mine, realistic);
/// # let _ = baseline;
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GeneratorParams {
    /// How popular each expert of a layer is.
    pub popularity: Popularity,
    /// The probability (0 to 1) that an expert a token chose in a layer is chosen again by
    /// the next token, over and above chance.
    pub stickiness: f64,
    /// The seed: the same parameters and seed give the same trace.
    pub seed: u64,
}

impl Default for GeneratorParams {
    /// The calibrated statistics: [`Popularity::Exponential`] with [`CALIBRATED_DECAY`],
    /// [`CALIBRATED_STICKINESS`], seed 0.
    fn default() -> Self {
        GeneratorParams {
            popularity: Popularity::Exponential {
                decay: CALIBRATED_DECAY,
            },
            stickiness: CALIBRATED_STICKINESS,
            seed: 0,
        }
    }
}

impl GeneratorParams {
    /// The baseline: every expert equally likely, no stickiness.
    pub fn uniform() -> Self {
        GeneratorParams {
            popularity: Popularity::Uniform,
            stickiness: 0.0,
            seed: 0,
        }
    }

    /// These parameters with another seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// Draws without replacement: attempts of the fast rejection path per choice before the
/// exact one takes over (only near-exhausted, heavily skewed layers get there).
const REJECTIONS_PER_CHOICE: usize = 64;

impl RoutingTrace {
    /// A trace of `tokens` tokens of `header`'s shape with the statistics of `params`
    /// ([`GeneratorParams`]). Deterministic for a given seed. An [`Error::InvalidArgument`]
    /// for a stickiness outside 0..=1 or a popularity parameter outside 0..=64.
    ///
    /// ```
    /// # fn main() -> moestream::Result<()> {
    /// use moestream::routing::{GeneratorParams, RoutingTrace, TraceHeader};
    /// let header = TraceHeader::new("qwen3_moe", 48, (0..48).collect(), 128, 8)?;
    /// let trace = RoutingTrace::generate(header, &GeneratorParams::default(), 256)?;
    /// assert_eq!(trace.len(), 256);
    /// let stats = trace.stats();
    /// assert!(stats.reuse > 0.09 && stats.coverage_90 < 0.6);
    /// # Ok(()) }
    /// ```
    pub fn generate(header: TraceHeader, params: &GeneratorParams, tokens: usize) -> Result<Self> {
        if !(0.0..=1.0).contains(&params.stickiness) {
            return Err(Error::InvalidArgument(format!(
                "routing generator: stickiness {} is not in 0..=1",
                params.stickiness
            )));
        }
        params.popularity.check()?;
        let (n, k, layers) = (
            header.num_experts(),
            header.top_k(),
            header.moe_layers().len(),
        );
        let mut rng = SplitMix64::new(params.seed);
        // Cumulative weights by popularity rank, and each layer's rank -> expert map.
        let mut cumulative = Vec::with_capacity(n);
        let mut sum = 0.0;
        for r in 0..n {
            sum += params.popularity.weight(r, n);
            cumulative.push(sum);
        }
        let perms: Vec<Vec<u16>> = (0..layers)
            .map(|_| {
                let mut p: Vec<u16> = (0..n).map(|e| e as u16).collect();
                for i in (1..n).rev() {
                    p.swap(i, rng.below(i + 1));
                }
                p
            })
            .collect();
        let mut trace = RoutingTrace::new(header);
        let mut prev: Vec<u16> = Vec::new();
        let mut row: Vec<u16> = Vec::with_capacity(layers * k);
        let mut chosen: Vec<u16> = Vec::with_capacity(k);
        for _ in 0..tokens {
            row.clear();
            for (layer, perm) in perms.iter().enumerate() {
                chosen.clear();
                if let Some(last) = prev.get(layer * k..(layer + 1) * k) {
                    for &e in last {
                        if rng.unit() < params.stickiness {
                            chosen.push(e);
                        }
                    }
                }
                draw(&mut rng, &cumulative, perm, k, &mut chosen);
                row.extend_from_slice(&chosen);
            }
            trace.push_unchecked(&row);
            std::mem::swap(&mut prev, &mut row);
        }
        Ok(trace)
    }
}

/// Fills `chosen` up to `k` distinct experts drawn by the weights (`cumulative`, by rank)
/// through the layer's rank -> expert map `perm`, without replacement.
fn draw(rng: &mut SplitMix64, cumulative: &[f64], perm: &[u16], k: usize, chosen: &mut Vec<u16>) {
    let total = cumulative.last().copied().unwrap_or(0.0);
    let mut attempts = 0;
    while chosen.len() < k && attempts < REJECTIONS_PER_CHOICE * k {
        attempts += 1;
        let u = rng.unit() * total;
        let r = cumulative.partition_point(|&c| c <= u).min(perm.len() - 1);
        let e = perm[r];
        if !chosen.contains(&e) {
            chosen.push(e);
        }
    }
    // Exact sequential draws over the experts not chosen yet.
    while chosen.len() < k {
        let left: Vec<(usize, f64)> = (0..perm.len())
            .filter(|&r| !chosen.contains(&perm[r]))
            .map(|r| {
                (
                    r,
                    cumulative[r] - if r > 0 { cumulative[r - 1] } else { 0.0 },
                )
            })
            .collect();
        let sum: f64 = left.iter().map(|x| x.1).sum();
        let mut u = rng.unit() * sum;
        let mut pick = left.last().map_or(0, |x| x.0);
        for &(r, w) in &left {
            if u < w {
                pick = r;
                break;
            }
            u -= w;
        }
        chosen.push(perm[pick]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(n: usize, k: usize, layers: usize) -> TraceHeader {
        TraceHeader::new("m", layers, (0..layers).collect(), n, k).unwrap()
    }

    #[test]
    fn seeded_distinct_and_in_range() {
        let p = GeneratorParams::default().seed(3);
        let a = RoutingTrace::generate(header(64, 6, 4), &p, 300).unwrap();
        let b = RoutingTrace::generate(header(64, 6, 4), &p, 300).unwrap();
        assert_eq!(a, b);
        let c = RoutingTrace::generate(header(64, 6, 4), &p.clone().seed(4), 300).unwrap();
        assert_ne!(a, c);
        for t in 0..a.len() {
            for l in 0..4 {
                let ids = a.experts(t, l).unwrap();
                let mut v = ids.to_vec();
                v.sort_unstable();
                v.dedup();
                assert_eq!(v.len(), 6, "token {t} layer {l}: {ids:?}");
                assert!(v.iter().all(|&e| e < 64));
            }
        }
    }

    #[test]
    fn every_expert_chosen_when_top_k_is_all_of_them() {
        // Heavy skew with k = n: the exact path finishes what rejection cannot.
        let p = GeneratorParams {
            popularity: Popularity::Exponential { decay: 40.0 },
            ..GeneratorParams::default()
        };
        let t = RoutingTrace::generate(header(16, 16, 2), &p, 20).unwrap();
        for tok in 0..20 {
            let mut v = t.experts(tok, 1).unwrap().to_vec();
            v.sort_unstable();
            assert_eq!(v, (0..16).collect::<Vec<u16>>());
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        let p = GeneratorParams {
            stickiness: 1.5,
            ..GeneratorParams::default()
        };
        assert!(RoutingTrace::generate(header(8, 2, 1), &p, 1).is_err());
        let mut p = GeneratorParams::default().seed(9);
        p.popularity = Popularity::Zipf { exponent: f64::NAN };
        assert!(RoutingTrace::generate(header(8, 2, 1), &p, 1).is_err());
        p.popularity = Popularity::Exponential { decay: -1.0 };
        assert!(RoutingTrace::generate(header(8, 2, 1), &p, 1).is_err());
    }
}
