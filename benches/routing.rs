//! Expert-cache hit rate on realistic routing, per cache policy and cache size, next to
//! uniform routing; then a replay through the real cache and I/O path.
//!
//! ```text
//! cargo bench --bench routing                          # Qwen3-30B-A3B shape, calibrated generator
//! cargo bench --bench routing -- --trace run.trace     # also a recorded trace (generate --record-routing)
//! cargo bench --bench routing -- --tokens 4000 --seed 3
//! cargo bench --bench routing -- --no-replay           # the host-side table only (no GPU)
//! cargo bench --bench routing -- --direct --cache 10   # replay with direct I/O, 10% cache
//! cargo bench --bench routing -- --layers 4 --replay-tokens 64 --io-threads 16
//! cargo bench --bench routing -- --direct --prompt 512   # then a 512-token prompt (0: none)
//! ```
//!
//! The table is computed on the host ([`moestream::routing::simulate`]: the expert cache's
//! own slot bookkeeping, no GPU or I/O): for each policy, the hit rate of decode steps at
//! 5, 10, 25, 50 and 75% of the experts, on a trace of the calibrated generator
//! ([`GeneratorParams::default`]: per-layer popularity and token-to-token stickiness fitted
//! to published measurements, docs/performance.md), on uniform routing (the baseline), and
//! on `--trace FILE` if given. The first 10% of each trace's tokens warm the cache and are
//! not counted.
//!
//! The replay runs a calibrated trace (or the `--trace` file's first `--layers` MoE layers)
//! through [`Model::replay_routing`]: a synthetic model of Qwen3-30B-A3B's expert shape
//! (2.65 MB 4-bit experts, `--layers` layers, default 8), written once to
//! `$MOESTREAM_BENCH_DIR` (default `target/bench-models`) and packed, read through its
//! `PackedStore` (direct I/O with `--direct`, else buffered with the files evicted from
//! the page cache first) into a GPU cache of `--cache` percent of the experts (default
//! 25), for each policy. `--replay-tokens` tokens (default 128) are timed after as many
//! warm-up tokens; it prints time per token, hit rate, bytes read per token, read
//! throughput over the wall time and the disk's busy fraction (wall time with at least one
//! read in flight). Then a `--prompt` of 512 tokens (0: none) is replayed as one prefill
//! pass asks for its experts ([`Model::replay_prompt`]), into an empty cache, against
//! reading the same bytes at the storage's raw rate measured just before.

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use moestream::routing::{simulate, GeneratorParams, RoutingTrace, TraceHeader};
use moestream::synthetic::SyntheticSpec;
use moestream::{
    cache::CachePolicy,
    store::{pack_experts, PackOptions, PackedStoreOptions},
    Error, ExpertStore, Model, PackedStore, Result,
};

const POLICIES: [(CachePolicy, &str); 3] = [
    (CachePolicy::Lru, "LRU"),
    (CachePolicy::Lfu, "LFU"),
    (CachePolicy::PerLayerLru, "per-layer LRU"),
];

const SIZES: [f64; 5] = [0.05, 0.10, 0.25, 0.50, 0.75];

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
}

/// Tokens `from..to` of `t`, keeping only its first `layers` MoE layers.
fn slice(t: &RoutingTrace, from: usize, to: usize, layers: usize) -> Result<RoutingTrace> {
    let h = t.header();
    let moe = &h.moe_layers()[..layers.min(h.moe_layers().len())];
    let header = TraceHeader::new(
        h.model_type(),
        moe.len(),
        (0..moe.len()).collect(),
        h.num_experts(),
        h.top_k(),
    )?;
    let mut out = RoutingTrace::new(header);
    let mut row = Vec::new();
    for tok in from..to.min(t.len()) {
        row.clear();
        for &l in moe {
            let ids = t.experts(tok, l).unwrap_or(&[]);
            row.extend(ids.iter().map(|&e| u32::from(e)));
        }
        out.push_token(&row)?;
    }
    Ok(out)
}

/// Hit rate of the tokens after the first tenth (which warm the cache up).
fn hit_rate(t: &RoutingTrace, policy: CachePolicy, slots: usize) -> Result<f64> {
    let warm = t.len() / 10;
    let h = t.header();
    let all = simulate(t, policy, slots)?;
    let first = simulate(&slice(t, 0, warm, h.moe_layers().len())?, policy, slots)?;
    let later = all.hits - first.hits;
    let total = (all.hits + all.misses) - (first.hits + first.misses);
    Ok(if total > 0 {
        later as f64 / total as f64
    } else {
        0.0
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let tokens: usize = arg(&args, "--tokens").unwrap_or(2000);
    let seed: u64 = arg(&args, "--seed").unwrap_or(0);
    let trace_file: Option<PathBuf> = arg(&args, "--trace");

    // Qwen3-30B-A3B's routing shape.
    let q = SyntheticSpec::qwen3_30b_a3b_4bit();
    let header = TraceHeader::new(
        "qwen3_moe",
        q.num_layers,
        (0..q.num_layers).collect(),
        q.num_experts,
        q.top_k,
    )?;
    let t0 = Instant::now();
    let calibrated = RoutingTrace::generate(
        header.clone(),
        &GeneratorParams::default().seed(seed),
        tokens,
    )?;
    let uniform = RoutingTrace::generate(header, &GeneratorParams::uniform().seed(seed), tokens)?;
    let mut traces = vec![("calibrated", calibrated), ("uniform", uniform)];
    if let Some(f) = &trace_file {
        traces.push(("--trace", RoutingTrace::read(f)?));
    }
    println!(
        "routing traces ({:.1}s to make): Qwen3-30B-A3B shape ({} layers x {} experts, top-{}), {tokens} tokens, seed {seed}{}",
        t0.elapsed().as_secs_f64(),
        q.num_layers,
        q.num_experts,
        q.top_k,
        trace_file
            .as_ref()
            .map(|f| format!("; --trace {}", f.display()))
            .unwrap_or_default()
    );
    println!(
        "{:<12} {:>7} {:>7} {:>9} {:>7} {:>8}  (means over MoE layers)",
        "trace", "tokens", "reuse", "90% cov.", "conc.", "top exp."
    );
    for (name, t) in &traces {
        let s = t.stats();
        println!(
            "{name:<12} {:>7} {:>6.1}% {:>8.1}% {:>7.3} {:>7.2}%",
            s.tokens,
            100.0 * s.reuse,
            100.0 * s.coverage_90,
            s.concentration,
            100.0 * s.top_share
        );
    }

    let t0 = Instant::now();
    println!("\nhit rate of decode steps by cache size (% of each trace's experts), host-side simulation, first 10% of tokens warming up:");
    print!("{:<14} {:<12}", "policy", "trace");
    for s in SIZES {
        print!(" {:>6.0}%", 100.0 * s);
    }
    println!();
    for (policy, pname) in POLICIES {
        for (tname, t) in &traces {
            let h = t.header();
            let experts = h.moe_layers().len() * h.num_experts();
            print!("{pname:<14} {tname:<12}");
            for s in SIZES {
                let slots = ((experts as f64 * s).round() as usize).max(h.top_k());
                print!(" {:>6.1}%", 100.0 * hit_rate(t, policy, slots)?);
            }
            println!();
        }
    }
    println!("({:.1}s)", t0.elapsed().as_secs_f64());

    if args.iter().any(|a| a == "--no-replay") {
        return Ok(());
    }
    replay(
        &args,
        &traces[traces.len() - 1].1,
        trace_file.is_some(),
        seed,
    )
}

/// Replays a trace (the `--trace` file's, else a calibrated one of the replay model's
/// shape) through a packed synthetic model's cache and storage, for each policy.
fn replay(args: &[String], file_trace: &RoutingTrace, from_file: bool, seed: u64) -> Result<()> {
    let layers: usize = arg(args, "--layers").unwrap_or(8);
    let timed: usize = arg(args, "--replay-tokens").unwrap_or(128);
    let cache_pct: f64 = arg(args, "--cache").unwrap_or(25.0);
    let io_threads: usize =
        arg(args, "--io-threads").unwrap_or(moestream::model::DEFAULT_IO_THREADS);
    let direct = args.iter().any(|a| a == "--direct");

    let mut spec = SyntheticSpec::qwen3_30b_a3b_4bit();
    let trace = if from_file {
        let t = slice(file_trace, 0, 2 * timed, layers)?;
        spec.num_experts = t.header().num_experts();
        spec.top_k = t.header().top_k();
        spec.num_layers = t.header().num_layers();
        t
    } else {
        spec.num_layers = layers;
        let h = TraceHeader::new(
            "qwen3_moe",
            layers,
            (0..layers).collect(),
            spec.num_experts,
            spec.top_k,
        )?;
        RoutingTrace::generate(h, &GeneratorParams::default().seed(seed + 1), 2 * timed)?
    };
    if trace.len() < 2 {
        return Err(Error::InvalidArgument(
            "the trace to replay has fewer than 2 tokens".into(),
        ));
    }
    spec.vocab_size = 4096; // the resident weights do not matter here
    let root = std::env::var_os("MOESTREAM_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-models"))
        });
    let name = if spec.num_experts == 128 && spec.top_k == 8 {
        format!("storage-{}l", spec.num_layers) // the storage bench's model
    } else {
        format!(
            "routing-{}l-{}e-top{}",
            spec.num_layers, spec.num_experts, spec.top_k
        )
    };
    let t0 = Instant::now();
    let dir = spec.write(root.join(name))?;
    pack_experts(&dir, &PackOptions::new(), |_| Ok(()))?;
    let pack_dir = dir.join(moestream::store::PACK_DIR_NAME);
    let pack_files = common::pack_files(&pack_dir)?;
    let half = trace.len() / 2;
    let warm = slice(&trace, 0, half, layers)?;
    let timed_trace = slice(&trace, half, trace.len(), layers)?;
    let experts = spec.moe_layers() * spec.num_experts;
    let per_expert = spec.expert_bytes() / experts as u64;
    println!(
        "\nreplay through the real cache and I/O path: {} ({} layers x {} experts of {:.2} MB, top-{}; {:.1}s to write or find), {} of the trace's tokens timed after {} warm-up, {}, {io_threads} I/O threads, cache {cache_pct}% of the experts:",
        dir.display(),
        spec.num_layers,
        spec.num_experts,
        per_expert as f64 / 1e6,
        spec.top_k,
        t0.elapsed().as_secs_f64(),
        timed_trace.len(),
        warm.len(),
        if direct { "direct I/O" } else { "buffered reads, page cache dropped first" },
    );
    for (policy, pname) in POLICIES {
        let store =
            PackedStore::open_with(&pack_dir, PackedStoreOptions::default().direct_io(direct))?;
        // A slot is the expert's blob rounded up to 256 bytes.
        let slot = store
            .layout(0)
            .map_or(per_expert, |l| l.bytes as u64)
            .div_ceil(256)
            * 256;
        let budget = (experts as f64 * cache_pct / 100.0).round() as u64 * slot;
        let model = Model::builder(&dir)
            .expert_store(Arc::new(store))
            .expert_cache_bytes(budget.max(1))
            .expert_cache_policy(policy)
            .io_threads(io_threads)
            .build()?;
        model.replay_routing(&warm)?;
        if !direct {
            common::evict(&pack_files);
        }
        let r = model.replay_routing(&timed_trace)?;
        let n = r.tokens.max(1) as f64;
        println!(
            "{pname:<14} {:>8.2} ms/token, hit rate {:>5.1}%, {:>6.1} MB read/token, {:>6.2} GB/s over the wall time ({:.2} GB/s while waiting), disk busy {:>5.1}% ({} slots)",
            r.time_per_token().as_secs_f64() * 1e3,
            100.0 * r.cache.hit_rate(),
            r.cache.bytes_read as f64 / n / 1e6,
            r.read_throughput() / 1e9,
            r.cache.read_throughput() / 1e9,
            100.0 * r.busy_fraction(),
            model.expert_cache_slots()
        );
    }
    prompt(
        args,
        &spec,
        &trace,
        &dir,
        &pack_files,
        direct,
        io_threads,
        seed,
    )
}

/// Replays a `--prompt`-token prompt (default 512; 0 skips it) through an empty cache of
/// the same size as the decode replays (LRU), against reading the same bytes at the
/// storage's raw rate (the better of one sequential stream and 8 reads in flight, measured
/// just before): issue #20's streaming-prefill target without the compute.
#[allow(clippy::too_many_arguments)]
fn prompt(
    args: &[String],
    spec: &SyntheticSpec,
    trace: &RoutingTrace,
    dir: &std::path::Path,
    pack_files: &[PathBuf],
    direct: bool,
    io_threads: usize,
    seed: u64,
) -> Result<()> {
    let tokens: usize = arg(args, "--prompt").unwrap_or(512);
    if tokens == 0 {
        return Ok(());
    }
    let cache_pct: f64 = arg(args, "--cache").unwrap_or(25.0);
    let layers = trace.header().num_layers();
    let prompt = RoutingTrace::generate(
        trace.header().clone(),
        &GeneratorParams::default().seed(seed + 2),
        tokens,
    )?;
    let pack_dir = dir.join(moestream::store::PACK_DIR_NAME);
    let store = PackedStore::open_with(&pack_dir, PackedStoreOptions::default().direct_io(direct))?;
    let experts = spec.moe_layers() * spec.num_experts;
    let slot = store.layout(0).map_or(0, |l| l.bytes as u64).div_ceil(256) * 256;
    let budget = (experts as f64 * cache_pct / 100.0).round() as u64 * slot;
    let model = Model::builder(dir)
        .expert_store(Arc::new(store))
        .expert_cache_bytes(budget.max(1))
        .io_threads(io_threads)
        .build()?;
    common::evict(pack_files);
    let limit = 4u64 << 30;
    let seq = common::sequential_read(pack_files, direct, limit);
    common::evict(pack_files);
    let par = common::parallel_read(pack_files, direct, limit, 8);
    common::evict(pack_files);
    let raw = seq.max(par);
    let r = model.replay_prompt(&prompt)?;
    let bytes = r.cache.bytes_read as f64;
    let at_raw = bytes / (raw * 1e9);
    println!(
        "\nprompt of {tokens} tokens ({} of {} layers' experts touched, each read once: {:.2} GB) into an empty {cache_pct}% cache: {:.2} s, {:.2}x the {:.2} s to read those bytes at the raw {raw:.2} GB/s (sequential {seq:.2}, 8 in flight {par:.2}), disk busy {:.1}%",
        r.cache.misses,
        layers * spec.num_experts,
        bytes / 1e9,
        r.wall_time.as_secs_f64(),
        r.wall_time.as_secs_f64() / at_raw.max(1e-9),
        at_raw,
        100.0 * r.busy_fraction()
    );
    Ok(())
}
