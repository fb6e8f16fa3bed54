//! [`simulate`]: a cache policy's hit rate on a routing trace, on the host alone.

use super::trace::RoutingTrace;
use crate::cache::{CachePolicy, CacheStats, SlotPolicy};
use crate::error::{Error, Result};

/// Runs `trace` through an expert cache of `slots` slots evicting by `policy`, with the
/// cache's own slot bookkeeping but no GPU, store or I/O: each token's experts, layer by
/// layer, as a decode step asks the cache for them (a layer's distinct experts at once,
/// all pinned until they have slots). Returns the hits, misses and evictions
/// (`bytes_read` and `read_time` stay 0). Fast: millions of expert lookups per second, for
/// hit-rate curves over cache sizes and policies (`cargo bench --bench routing`).
///
/// `slots` counts routed experts (as [`Model::expert_cache_slots`](crate::Model::expert_cache_slots)
/// does); an [`Error::InvalidArgument`] when it is 0.
///
/// ```
/// # fn main() -> moestream::Result<()> {
/// use moestream::routing::{simulate, GeneratorParams, RoutingTrace, TraceHeader};
/// use moestream::cache::CachePolicy;
/// let header = TraceHeader::new("qwen3_moe", 48, (0..48).collect(), 128, 8)?;
/// let trace = RoutingTrace::generate(header, &GeneratorParams::default(), 500)?;
/// let quarter = 48 * 128 / 4;
/// let lru = simulate(&trace, CachePolicy::Lru, quarter)?;
/// let lfu = simulate(&trace, CachePolicy::Lfu, quarter)?;
/// println!("LRU {:.1}%, LFU {:.1}%", 100.0 * lru.hit_rate(), 100.0 * lfu.hit_rate());
/// assert_eq!(lru.hits + lru.misses, 500 * 48 * 8);
/// # Ok(()) }
/// ```
pub fn simulate(trace: &RoutingTrace, policy: CachePolicy, slots: usize) -> Result<CacheStats> {
    if slots == 0 {
        return Err(Error::InvalidArgument(
            "simulate: the cache needs at least one slot".into(),
        ));
    }
    let h = trace.header();
    let k = h.top_k();
    let mut cache = SlotPolicy::new(policy, slots, slots, h.moe_layers());
    let mut stats = CacheStats::default();
    let mut keys: Vec<(usize, usize)> = Vec::with_capacity(k);
    for t in 0..trace.len() {
        let row = trace.token(t);
        for (i, &layer) in h.moe_layers().iter().enumerate() {
            keys.clear();
            keys.extend(row[i * k..(i + 1) * k].iter().map(|&e| (layer, e as usize)));
            keys.sort_unstable();
            for group in keys.chunks(slots) {
                let (hits, misses, evictions) = cache.simulate(group).ok_or_else(|| {
                    Error::Internal(format!(
                        "simulate: {} experts did not fit {slots} free slots",
                        group.len()
                    ))
                })?;
                stats.hits += hits;
                stats.misses += misses;
                stats.evictions += evictions;
            }
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{GeneratorParams, TraceHeader};

    fn trace(params: &GeneratorParams) -> RoutingTrace {
        let h = TraceHeader::new("m", 8, (0..8).collect(), 64, 4).unwrap();
        RoutingTrace::generate(h, params, 1500).unwrap()
    }

    #[test]
    fn counts_every_choice_and_bounds_hold() {
        let t = trace(&GeneratorParams::default());
        let choices = (t.len() * 8 * 4) as u64;
        for policy in [CachePolicy::Lru, CachePolicy::Lfu, CachePolicy::PerLayerLru] {
            let mut last = -1.0;
            for slots in [1, 4, 64, 256, 511, 512] {
                let s = simulate(&t, policy, slots).unwrap();
                assert_eq!(s.hits + s.misses, choices, "{policy:?} {slots}");
                // Every miss beyond the first `slots` evicts.
                assert_eq!(s.evictions, s.misses.saturating_sub(slots as u64));
                // LRU has the inclusion property: more slots never hit less.
                if policy == CachePolicy::Lru {
                    assert!(s.hit_rate() >= last, "{slots} slots");
                }
                last = s.hit_rate();
            }
            // Everything fits: only the 512 cold misses.
            let all = simulate(&t, policy, 512).unwrap();
            assert_eq!(all.misses, 512, "{policy:?}");
            assert!(simulate(&t, policy, 0).is_err());
        }
    }

    #[test]
    fn uniform_lru_hit_rate_is_the_cache_fraction() {
        // Uniform routing without reuse: any policy hits about slots / experts.
        let t = trace(&GeneratorParams::uniform());
        for policy in [CachePolicy::Lru, CachePolicy::Lfu, CachePolicy::PerLayerLru] {
            let s = simulate(&t, policy, 128).unwrap();
            assert!(
                (s.hit_rate() - 0.25).abs() < 0.03,
                "{policy:?}: {}",
                s.hit_rate()
            );
        }
        // Skewed routing beats it, LFU (which keeps the popular experts) most.
        let t = trace(&GeneratorParams::default());
        let lru = simulate(&t, CachePolicy::Lru, 128).unwrap().hit_rate();
        let lfu = simulate(&t, CachePolicy::Lfu, 128).unwrap().hit_rate();
        assert!(lru > 0.3 && lfu > lru, "LRU {lru}, LFU {lfu}");
    }
}
