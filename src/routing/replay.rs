//! [`Model::replay_routing`] and [`Model::replay_prompt`]: a trace's expert choices
//! through a model's real expert cache and I/O path, without the model's dense compute.

use std::time::{Duration, Instant};

use super::trace::RoutingTrace;
use crate::cache::CacheStats;
use crate::error::{Error, Result};
use crate::model::Model;

/// What [`Model::replay_routing`] or [`Model::replay_prompt`] measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct ReplayStats {
    /// Tokens replayed.
    pub tokens: u64,
    /// The expert cache's hits, misses, bytes read, evictions and time waiting for reads.
    pub cache: CacheStats,
    /// Wall time of the replay.
    pub wall_time: Duration,
    /// Of the wall time, how long at least one expert read was in flight.
    pub storage_busy: Duration,
}

impl ReplayStats {
    /// Wall time per token (zero for an empty replay).
    pub fn time_per_token(&self) -> Duration {
        match u32::try_from(self.tokens) {
            Ok(n) if n > 0 => self.wall_time / n,
            _ => Duration::ZERO,
        }
    }

    /// The fraction of the wall time with at least one read in flight: near 1 when
    /// storage is the bottleneck and never waits.
    pub fn busy_fraction(&self) -> f64 {
        let w = self.wall_time.as_secs_f64();
        if w > 0.0 {
            self.storage_busy.as_secs_f64() / w
        } else {
            0.0
        }
    }

    /// Bytes read per second of wall time (the storage bandwidth the replay sustained;
    /// [`CacheStats::read_throughput`] is per second of waiting instead).
    pub fn read_throughput(&self) -> f64 {
        let w = self.wall_time.as_secs_f64();
        if w > 0.0 {
            self.cache.bytes_read as f64 / w
        } else {
            0.0
        }
    }
}

impl Model {
    /// Replays `trace` through this model's expert cache and expert store, as decode steps
    /// would ask for its experts, without running any of the model's compute: for each
    /// token, each MoE layer's experts are made resident (hits marked used, misses read from
    /// the store by the I/O threads and uploaded into their slots) under the cache's policy,
    /// one layer after the other, each layer's uploads finished on the GPU before the next
    /// layer's experts are asked for (as a decode's next router waits for them). A
    /// benchmarking tool: the time per token is what storage, the uploads and the cache cost
    /// a decode whose kernels took no time, and [`ReplayStats`] has the disk's busy
    /// fraction. Build the model with the store to measure
    /// ([`ModelBuilder::expert_store`](crate::ModelBuilder::expert_store), e.g. a
    /// [`PackedStore`](crate::PackedStore) with direct I/O), the cache size
    /// and policy and the I/O threads to compare. The cache keeps what the replay left in
    /// it, and the model's [`cache_stats`](Model::cache_stats) count the replay.
    ///
    /// The trace must describe this model's MoE layers and expert count (a trace recorded on
    /// the real model replays through a synthetic model of its shape); otherwise an
    /// [`Error::InvalidArgument`]. Read errors are the store's ([`Error::ExpertRead`]).
    ///
    /// ```no_run
    /// # fn main() -> moestream::Result<()> {
    /// use moestream::routing::{GeneratorParams, RoutingTrace, TraceHeader};
    /// let model = moestream::Model::builder("path/to/model")
    ///     .expert_cache_bytes(4 << 30)
    ///     .build()?;
    /// let header = TraceHeader::for_model(model.config())?;
    /// let trace = RoutingTrace::generate(header, &GeneratorParams::default(), 256)?;
    /// let r = model.replay_routing(&trace)?;
    /// println!(
    ///     "{:.2} ms/token, hit rate {:.1}%, {:.2} GB/s, disk busy {:.0}%",
    ///     r.time_per_token().as_secs_f64() * 1e3,
    ///     100.0 * r.cache.hit_rate(),
    ///     r.read_throughput() / 1e9,
    ///     100.0 * r.busy_fraction()
    /// );
    /// # Ok(()) }
    /// ```
    pub fn replay_routing(&self, trace: &RoutingTrace) -> Result<ReplayStats> {
        self.replay(trace, false)
    }

    /// Replays `trace` as the routing of one prompt: each MoE layer's experts chosen by any
    /// of the trace's tokens are made resident once, the layer's reads all in flight
    /// together (in groups of at most the cache's slot count), as a prefill pass asks for
    /// them, then the layer's uploads finish before the next layer's. The read time
    /// against reading the same bytes at the storage's raw rate is what streaming a
    /// prompt's experts costs beyond the reads (issue #20's prefill target, without the
    /// compute). Errors as [`replay_routing`](Self::replay_routing).
    ///
    /// ```no_run
    /// # fn main() -> moestream::Result<()> {
    /// use moestream::routing::{GeneratorParams, RoutingTrace, TraceHeader};
    /// let model = moestream::Model::builder("path/to/model")
    ///     .expert_cache_bytes(4 << 30)
    ///     .build()?;
    /// let header = TraceHeader::for_model(model.config())?;
    /// let prompt = RoutingTrace::generate(header, &GeneratorParams::default(), 512)?;
    /// let r = model.replay_prompt(&prompt)?;
    /// println!("{} experts read in {:?}", r.cache.misses, r.wall_time);
    /// # Ok(()) }
    /// ```
    pub fn replay_prompt(&self, trace: &RoutingTrace) -> Result<ReplayStats> {
        self.replay(trace, true)
    }

    /// [`replay_routing`](Self::replay_routing) (`prompt` false: one step per token) or
    /// [`replay_prompt`](Self::replay_prompt) (one step for all tokens).
    fn replay(&self, trace: &RoutingTrace, prompt: bool) -> Result<ReplayStats> {
        let inner = &*self.inner;
        let cfg = &inner.cfg;
        let h = trace.header();
        let moe = cfg.moe_layers();
        if h.moe_layers() != moe.as_slice() || h.num_experts() != cfg.num_experts {
            return Err(Error::InvalidArgument(format!(
                "the routing trace ({} experts in MoE layers {:?}) does not describe this model ({} experts in MoE layers {:?})",
                h.num_experts(),
                h.moe_layers(),
                cfg.num_experts,
                moe
            )));
        }
        let cache = inner.cache.as_ref().ok_or_else(|| {
            Error::InvalidArgument("the model has no expert cache to replay through".into())
        })?;
        let gpu = &inner.gpu;
        let k = h.top_k();
        let busy0 = cache.storage_busy_time();
        let t0 = Instant::now();
        let mut stats = CacheStats::default();
        let mut keys: Vec<(usize, usize)> = Vec::with_capacity(k);
        let steps = if prompt { 1 } else { trace.len() };
        let result = (|| -> Result<()> {
            for step in 0..steps {
                let tokens = if prompt {
                    0..trace.len()
                } else {
                    step..step + 1
                };
                for (i, &layer) in moe.iter().enumerate() {
                    keys.clear();
                    for t in tokens.clone() {
                        let row = &trace.token(t)[i * k..(i + 1) * k];
                        keys.extend(row.iter().map(|&e| (layer, e as usize)));
                    }
                    keys.sort_unstable();
                    keys.dedup();
                    let mut state = cache.lock();
                    let group = state.policy.slots().max(1);
                    for chunk in keys.chunks(group) {
                        cache.acquire(gpu, &mut state, inner.store.as_ref(), chunk, &mut stats)?;
                    }
                    drop(state);
                    // Hand the uploads to the GPU as a step's expert kernels would, and wait
                    // for them: a decode's next layer routes only after this layer's
                    // experts have run, so their uploads are on its critical path.
                    gpu.queue.submit([]);
                    let _ = gpu.device.poll(wgpu::PollType::wait_indefinitely());
                }
            }
            let _ = gpu.device.poll(wgpu::PollType::wait_indefinitely());
            gpu.check()
        })();
        cache.record(&stats);
        result?;
        Ok(ReplayStats {
            tokens: trace.len() as u64,
            cache: stats,
            wall_time: t0.elapsed(),
            storage_busy: cache.storage_busy_time().saturating_sub(busy0),
        })
    }
}
