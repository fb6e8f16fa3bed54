//! [`TraceStats`]: the statistics of a routing trace that matter to an expert cache,
//! measured the way published routing analyses report them.

use super::trace::RoutingTrace;

/// Routing statistics of a trace, each the mean over its MoE layers: how much consecutive
/// tokens reuse experts, and how unevenly a layer's experts are chosen. Compare a recorded
/// trace's with a generated one's ([`GeneratorParams`](super::GeneratorParams)), or with
/// the published figures in docs/performance.md.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct TraceStats {
    /// Tokens in the trace.
    pub tokens: usize,
    /// Of the experts a token chose in a layer, the fraction the next token chose again
    /// (`top_k / num_experts` for uniform routing without stickiness).
    pub reuse: f64,
    /// The fraction of a layer's experts that, most chosen first, take 90% of its choices
    /// (about 0.9 for uniform routing over a long trace; lower when skewed).
    pub coverage_90: f64,
    /// `1 - H / ln(num_experts)`, `H` the entropy of the layer's choice frequencies: 0 for
    /// perfectly even routing, 1 when one expert takes every choice.
    pub concentration: f64,
    /// The most chosen expert's share of the layer's choices (`1 / num_experts` when even).
    pub top_share: f64,
}

impl RoutingTrace {
    /// The trace's [`TraceStats`].
    ///
    /// ```
    /// # fn main() -> moestream::Result<()> {
    /// use moestream::routing::{GeneratorParams, RoutingTrace, TraceHeader};
    /// let header = TraceHeader::new("qwen3_moe", 4, vec![0, 1, 2, 3], 128, 8)?;
    /// let uniform = RoutingTrace::generate(header, &GeneratorParams::uniform(), 2000)?;
    /// let s = uniform.stats();
    /// assert!((s.reuse - 8.0 / 128.0).abs() < 0.01);
    /// assert!(s.concentration < 0.01);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> TraceStats {
        let h = self.header();
        let (n, k, layers) = (h.num_experts(), h.top_k(), h.moe_layers().len());
        let tokens = self.len();
        let mut out = TraceStats {
            tokens,
            ..TraceStats::default()
        };
        if tokens == 0 {
            return out;
        }
        let mut counts = vec![0u64; n];
        for i in 0..layers {
            counts.fill(0);
            let mut again = 0u64;
            for t in 0..tokens {
                let ids = &self.token(t)[i * k..(i + 1) * k];
                for &e in ids {
                    counts[e as usize] += 1;
                }
                if t + 1 < tokens {
                    let next = &self.token(t + 1)[i * k..(i + 1) * k];
                    again += ids.iter().filter(|e| next.contains(e)).count() as u64;
                }
            }
            if tokens > 1 {
                out.reuse += again as f64 / ((tokens - 1) * k) as f64;
            }
            let total = (tokens * k) as f64;
            let mut sorted = counts.clone();
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            let mut cum = 0u64;
            let needed = sorted
                .iter()
                .position(|&c| {
                    cum += c;
                    cum as f64 >= 0.9 * total
                })
                .map_or(n, |p| p + 1);
            out.coverage_90 += needed as f64 / n as f64;
            out.top_share += sorted[0] as f64 / total;
            let entropy: f64 = counts
                .iter()
                .filter(|&&c| c > 0)
                .map(|&c| {
                    let p = c as f64 / total;
                    -p * p.ln()
                })
                .sum();
            out.concentration += if n > 1 {
                1.0 - entropy / (n as f64).ln()
            } else {
                1.0
            };
        }
        let l = layers as f64;
        out.reuse /= l;
        out.coverage_90 /= l;
        out.top_share /= l;
        out.concentration /= l;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::generator::{GeneratorParams, Popularity};
    use super::super::trace::{RoutingTrace, TraceHeader};

    fn generate(n: usize, k: usize, p: &GeneratorParams, tokens: usize) -> RoutingTrace {
        let h = TraceHeader::new("m", 4, vec![0, 1, 2, 3], n, k).unwrap();
        RoutingTrace::generate(h, p, tokens).unwrap()
    }

    #[test]
    fn hand_made_trace() {
        let h = TraceHeader::new("m", 1, vec![0], 4, 2).unwrap();
        let mut t = RoutingTrace::new(h);
        for ids in [[0, 1], [1, 2], [1, 0], [3, 1]] {
            t.push_token(&ids).unwrap();
        }
        let s = t.stats();
        assert_eq!(s.tokens, 4);
        // Reused: {1} of {0,1}, {1} of {1,2}, {1} of {1,0}: 3 of 6.
        assert!((s.reuse - 0.5).abs() < 1e-12);
        // Counts 0:2 1:4 2:1 3:1 of 8: 90% (7.2) needs all four experts.
        assert!((s.coverage_90 - 1.0).abs() < 1e-12);
        assert!((s.top_share - 0.5).abs() < 1e-12);
        assert!(s.concentration > 0.0 && s.concentration < 1.0);
        assert_eq!(RoutingTrace::new(t.header().clone()).stats().tokens, 0);
    }

    #[test]
    fn uniform_generator_has_uniform_statistics() {
        let s = generate(128, 8, &GeneratorParams::uniform(), 4000).stats();
        assert!((s.reuse - 8.0 / 128.0).abs() < 0.005, "{s:?}");
        assert!((s.coverage_90 - 0.89).abs() < 0.03, "{s:?}");
        assert!(s.concentration < 0.005, "{s:?}");
        assert!(s.top_share < 1.5 / 128.0, "{s:?}");
    }

    #[test]
    fn stickiness_sets_reuse() {
        // Uniform popularity: an expert not kept is drawn again with probability about
        // (k - (k-1) s) / (n - (k-1) s).
        for s in [0.1, 0.3, 0.7] {
            let mut p = GeneratorParams::uniform();
            p.stickiness = s;
            let got = generate(64, 4, &p, 4000).stats().reuse;
            let (n, k) = (64.0, 4.0);
            let want = s + (1.0 - s) * (k - (k - 1.0) * s) / (n - (k - 1.0) * s);
            assert!(
                (got - want).abs() < 0.015,
                "stickiness {s}: reuse {got}, want {want}"
            );
        }
    }

    #[test]
    fn popularity_sets_skew() {
        let mut last = (1.0, 0.0);
        for decay in [0.0, 2.0, 4.6, 8.0] {
            let mut p = GeneratorParams::uniform();
            p.popularity = Popularity::Exponential { decay };
            let s = generate(128, 8, &p, 4000).stats();
            assert!(
                s.coverage_90 < last.0 && s.concentration > last.1,
                "{decay}: {s:?}"
            );
            last = (s.coverage_90, s.concentration);
            if decay == 4.6 {
                // exp(-4.6 r / 128): 90% of the weight in the first ~62 ranks (48%).
                assert!((s.coverage_90 - 0.49).abs() < 0.04, "{s:?}");
            }
        }
        // Zipf with exponent 1 over 128: the top expert weighs 1 / H(128) = 18%; drawn
        // without replacement among 8 its share of the choices is lower, but far above even.
        let mut p = GeneratorParams::uniform();
        p.popularity = Popularity::Zipf { exponent: 1.0 };
        let s = generate(128, 8, &p, 4000).stats();
        assert!(s.top_share > 0.08 && s.top_share < 0.19, "{s:?}");
    }
}
