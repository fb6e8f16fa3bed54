//! Expert routing as data, for benchmarking the expert cache on realistic routing: traces
//! of which experts each token chose in each MoE layer, recorded from a model
//! ([`Session::record_routing`](crate::Session::record_routing)) or generated with stated
//! statistics ([`RoutingTrace::generate`], [`GeneratorParams`]), their statistics
//! ([`TraceStats`]), a cache policy's hit rate on them computed on the host
//! ([`simulate()`]), and their replay through a model's expert cache and storage, token by
//! token ([`Model::replay_routing`](crate::Model::replay_routing)) or as one prompt
//! ([`Model::replay_prompt`](crate::Model::replay_prompt)).
//!
//! Greedy decoding of a random-weight model loops, so its routing repeats and flatters any
//! cache; these tools let a benchmark use routing with the statistics of real models
//! instead (docs/performance.md has the calibration and its sources).
//!
//! # Trace files
//!
//! A text format, one token per line, version 1:
//!
//! ```text
//! moestream-routing-trace 1
//! model_type qwen3_moe
//! num_layers 48
//! moe_layers 0-47
//! num_experts 128
//! top_k 8
//! tokens
//! 17 3 99 64 5 110 41 8 | 2 77 ... | ...
//! ```
//!
//! The first line names the format and its version. The header's keys (each once, in any
//! order) describe the model: `model_type` (one word, informational), `num_layers`
//! (decoder layers, at most [`MAX_TRACE_LAYERS`]), `moe_layers` (the decoder layers with
//! routed experts: comma-separated numbers or `a-b` ranges, strictly increasing, below
//! `num_layers`), `num_experts` (per MoE layer, at most [`MAX_TRACE_EXPERTS`]) and `top_k`
//! (experts a token chooses per layer, at most [`MAX_TRACE_TOP_K`]). After the line
//! `tokens`, each line is one token: for each MoE layer in order, `top_k` distinct expert
//! ids separated by spaces, the layers separated by `|` (a recorded trace keeps the
//! router's rank order). Blank lines and lines starting with `#` are skipped anywhere
//! after the first line; `\r\n` line ends are accepted.
//!
//! Reading is safe on hostile input: every malformation is an
//! [`Error::RoutingTrace`](crate::Error::RoutingTrace) naming the file, the line, and where
//! it applies the token and the decoder layer; lines are read with a length limit, and no
//! buffer is sized from a number in the file before the header has been validated.
//!
//! ```
//! # fn main() -> moestream::Result<()> {
//! use moestream::routing::{simulate, GeneratorParams, RoutingTrace, TraceHeader};
//! use moestream::cache::CachePolicy;
//! let header = TraceHeader::new("qwen3_moe", 48, (0..48).collect(), 128, 8)?;
//! let realistic = RoutingTrace::generate(header.clone(), &GeneratorParams::default(), 300)?;
//! let uniform = RoutingTrace::generate(header, &GeneratorParams::uniform(), 300)?;
//! let slots = 48 * 128 / 4; // a quarter of the experts
//! for policy in [CachePolicy::Lru, CachePolicy::Lfu, CachePolicy::PerLayerLru] {
//!     let real = simulate(&realistic, policy, slots)?.hit_rate();
//!     let base = simulate(&uniform, policy, slots)?.hit_rate();
//!     println!("{policy:?}: {:.1}% (uniform routing {:.1}%)", 100.0 * real, 100.0 * base);
//! }
//! # Ok(()) }
//! ```

mod generator;
mod read;
mod replay;
mod rng;
mod simulate;
mod stats;
mod trace;

pub use generator::{GeneratorParams, Popularity, CALIBRATED_DECAY, CALIBRATED_STICKINESS};
pub use replay::ReplayStats;
pub use simulate::simulate;
pub use stats::TraceStats;
pub use trace::{
    RoutingTrace, TraceHeader, MAX_TRACE_EXPERTS, MAX_TRACE_LAYERS, MAX_TRACE_TOP_K, TRACE_MAGIC,
    TRACE_VERSION,
};
