//! A custom [`ExpertStore`]: simulate another device's storage and predict its decode speed.
//!
//! ```text
//! cargo run --release --example custom_store                          # synthetic model, iPhone-like storage
//! cargo run --release --example custom_store -- --device m3-max
//! cargo run --release --example custom_store -- --bandwidth-gbs 0.5 --latency-ms 1 --io-threads 2
//! cargo run --release --example custom_store -- --model DIR --expert-cache-bytes 4000000000
//! ```
//!
//! `ThrottledStore` wraps the model's own [`SafetensorsStore`] and delivers every expert no
//! earlier than the simulated device would. The same prompt is decoded twice, once with the
//! plain store and once through the throttled one, and the expert-cache statistics of both
//! runs are printed side by side with a predicted decode speed.
//!
//! This file is meant to be read: it is the worked example of `docs/storage.md`.
//!
//! # The storage model
//!
//! A read of `b` bytes issued at time `t` on a device with per-read latency `L` and
//! sustained bandwidth `B`:
//! - waits `L` (seek, command and flash-read time); latencies of reads in flight at the
//!   same time overlap, as on an SSD with a deep command queue;
//! - then transfers for `b / B` on a channel shared by all reads, one transfer after the
//!   other: it starts at `max(t + L, end of the previous transfer)`.
//!
//! So one read at a time takes `L + b / B`, and many reads in flight approach `B`. The
//! channel's "busy until" time sits behind a mutex, which is all the shared state the store
//! needs. The real read (usually from the OS page cache) happens meanwhile; the store then
//! sleeps until the simulated completion time. If the real read is slower than the
//! simulated device, the read is late ("overrun" below) and the prediction pessimistic.

#[path = "support/logging.rs"]
mod logging;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use moestream::synthetic::SyntheticSpec;
use moestream::{
    cache::CacheStats, checkpoint::Checkpoint, config::ModelConfig, store::ExpertLayout,
    ExpertStore, Model, SafetensorsStore,
};

// ---------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------

/// The storage of a device: sustained read bandwidth and the latency of one read.
#[derive(Debug, Clone)]
struct Storage {
    name: String,
    /// Bytes per second.
    bandwidth: f64,
    /// Latency of one read, overlapped between reads in flight.
    latency: Duration,
}

/// Counters of a [`ThrottledStore`].
#[derive(Debug, Default)]
struct ThrottleCounters {
    reads: AtomicU64,
    bytes: AtomicU64,
    /// Total time the channel was booked for transfers (ns).
    transfer_ns: AtomicU64,
    /// Reads whose real read finished after the simulated completion.
    late_reads: AtomicU64,
    /// Their total lateness (ns).
    late_ns: AtomicU64,
}

/// Wraps a store; every read completes no earlier than it would on `storage`.
struct ThrottledStore<S> {
    inner: S,
    storage: Storage,
    /// When the simulated transfer channel is free again.
    busy_until: Mutex<Instant>,
    counters: ThrottleCounters,
}

impl<S: ExpertStore> ThrottledStore<S> {
    fn new(inner: S, storage: Storage) -> Self {
        ThrottledStore {
            inner,
            storage,
            busy_until: Mutex::new(Instant::now()),
            counters: ThrottleCounters::default(),
        }
    }

    /// Books the simulated device for a read of `bytes` issued now; returns when it
    /// completes.
    fn book(&self, bytes: usize) -> Instant {
        let issued = Instant::now();
        let transfer = Duration::from_secs_f64(bytes as f64 / self.storage.bandwidth);
        // A poisoned lock only means another read panicked; the Instant inside is fine.
        let mut busy = self.busy_until.lock().unwrap_or_else(|p| p.into_inner());
        let start = (*busy).max(issued + self.storage.latency);
        *busy = start + transfer;
        self.counters
            .transfer_ns
            .fetch_add(transfer.as_nanos() as u64, Ordering::Relaxed);
        *busy
    }
}

/// Waits until `t`: sleeps most of the way, then yields, since a plain sleep can overshoot
/// by tens of microseconds, which matters for reads that take a few hundred.
fn wait_until(t: Instant) {
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        let left = t - now;
        if left > Duration::from_micros(300) {
            std::thread::sleep(left - Duration::from_micros(200));
        } else {
            std::thread::yield_now();
        }
    }
}

impl<S: ExpertStore> ExpertStore for ThrottledStore<S> {
    /// The layout is the wrapped store's: throttling does not change the bytes.
    fn layout(&self, layer: usize) -> Option<&ExpertLayout> {
        self.inner.layout(layer)
    }

    /// Called by the engine's I/O threads, several at once (one per read in flight).
    fn read_expert(&self, layer: usize, expert: usize, dst: &mut [u8]) -> moestream::Result<()> {
        let bytes = self.inner.layout(layer).map_or(0, |l| l.bytes);
        let done = self.book(bytes);
        // The real read. Its errors pass through unchanged: they already name the layer
        // and the expert, as the trait's contract asks.
        self.inner.read_expert(layer, expert, dst)?;
        let now = Instant::now();
        if now > done {
            let c = &self.counters;
            c.late_reads.fetch_add(1, Ordering::Relaxed);
            c.late_ns
                .fetch_add((now - done).as_nanos() as u64, Ordering::Relaxed);
        }
        wait_until(done);
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Forwarded: a store that can start reads early would do so here.
    fn prefetch(&self, layer: usize, experts: &[usize]) {
        self.inner.prefetch(layer, experts);
    }
}

// ---------------------------------------------------------------------------------------
// Running a model with it
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Device {
    /// iPhone-class NVMe: ~1.5 GB/s effective for reads of a few MB, 0.2 ms per read.
    Iphone,
    /// MacBook Pro M3 Max SSD: ~5 GB/s, 0.1 ms per read.
    M3Max,
}

impl Device {
    fn storage(self) -> Storage {
        let (name, gbs, ms) = match self {
            Device::Iphone => ("iphone", 1.5, 0.2),
            Device::M3Max => ("m3-max", 5.0, 0.1),
        };
        Storage {
            name: name.into(),
            bandwidth: gbs * 1e9,
            latency: Duration::from_secs_f64(ms / 1e3),
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    about = "Predict decode speed with another device's storage, via a throttled ExpertStore"
)]
struct Args {
    /// Checkpoint folder (config.json + safetensors). Default: the synthetic demo model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Storage preset.
    #[arg(long, value_enum, default_value = "iphone")]
    device: Device,
    /// Sustained read bandwidth in GB/s (overrides the preset's).
    #[arg(long)]
    bandwidth_gbs: Option<f64>,
    /// Latency of one read in milliseconds (overrides the preset's).
    #[arg(long)]
    latency_ms: Option<f64>,
    /// Expert-cache budget in bytes (default: a quarter of all experts).
    #[arg(long)]
    expert_cache_bytes: Option<u64>,
    /// Expert reads in flight at once.
    #[arg(long, default_value_t = moestream::model::DEFAULT_IO_THREADS)]
    io_threads: usize,
    /// Prompt token ids, comma-separated (default: 16 fixed ids).
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Tokens to decode (greedy).
    #[arg(long, default_value_t = 24)]
    max_tokens: usize,
    /// GPU time per decoded token on the target device, in ms, for the prediction
    /// (default: what this machine's GPU takes, measured in the unthrottled run).
    #[arg(long)]
    gpu_ms_per_token: Option<f64>,
}

/// Where the synthetic model is written (as in `examples/generate.rs`).
fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MOESTREAM_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("moestream");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache").join("moestream");
    }
    std::env::temp_dir().join("moestream")
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

/// What one generation run measured.
struct Run {
    tokens: Vec<u32>,
    /// Wall time of the decode steps.
    decode: Duration,
    /// Cache traffic of the decode steps (the prefill excluded).
    cache: CacheStats,
}

impl Run {
    fn per_token(&self, d: Duration) -> Duration {
        d / self.tokens.len().max(1) as u32
    }
}

/// Opens the model with `store`, prefills `prompt` and decodes `n` tokens greedily.
fn generate(
    dir: &Path,
    store: Arc<dyn ExpertStore>,
    budget: u64,
    args: &Args,
    prompt: &[u32],
) -> moestream::Result<Run> {
    let model = Model::builder(dir)
        .expert_store(store)
        .expert_cache_bytes(budget)
        .io_threads(args.io_threads)
        .build()?;
    let mut session = model.session(prompt.len() + args.max_tokens + 1)?;
    let mut next = argmax(&session.prefill(prompt)?);
    let after_prefill = session.stats().cache;
    let mut tokens = Vec::with_capacity(args.max_tokens);
    let t0 = Instant::now();
    for _ in 0..args.max_tokens {
        tokens.push(next);
        next = argmax(&session.step(next)?);
    }
    Ok(Run {
        tokens,
        decode: t0.elapsed(),
        cache: session.stats().cache.since(&after_prefill),
    })
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn run(args: Args) -> moestream::Result<()> {
    // The model: the one given, or the synthetic demo model (written once).
    let dir = match &args.model {
        Some(d) => d.clone(),
        None => {
            let dir = cache_dir().join("synthetic-default");
            println!(
                "No --model: using the SYNTHETIC demo model in {} (random weights).",
                dir.display()
            );
            SyntheticSpec::default().write(&dir)?
        }
    };
    let cfg = ModelConfig::from_path(&dir)?;

    // The storage to simulate.
    let mut storage = args.device.storage();
    if args.bandwidth_gbs.is_some() || args.latency_ms.is_some() {
        storage.name = "custom".into();
    }
    if let Some(gbs) = args.bandwidth_gbs {
        storage.bandwidth = gbs * 1e9;
    }
    if let Some(l) = args.latency_ms {
        storage.latency = Duration::from_secs_f64(l / 1e3);
    }

    // The store every run wraps: the checkpoint's own safetensors files.
    let ckpt = Arc::new(Checkpoint::open(&dir)?);
    let plain = Arc::new(SafetensorsStore::new(ckpt.clone(), &cfg)?);
    let expert_bytes: u64 = cfg
        .moe_layers()
        .iter()
        .filter_map(|&l| plain.layout(l))
        .map(|l| l.bytes as u64 * cfg.num_experts as u64)
        .sum();
    let budget = args.expert_cache_bytes.unwrap_or(expert_bytes / 4);
    let prompt = args
        .prompt_ids
        .clone()
        .unwrap_or_else(|| (1..=16).map(|i| (i * 97) % cfg.vocab_size as u32).collect());
    println!(
        "{} layers x {} experts (top-{}), {:.1} MiB of experts, cache budget {:.1} MiB, {} I/O threads",
        cfg.num_hidden_layers,
        cfg.num_experts,
        cfg.num_experts_per_tok,
        expert_bytes as f64 / 1048576.0,
        budget as f64 / 1048576.0,
        args.io_threads,
    );
    println!(
        "Simulated storage \"{}\": {:.2} GB/s, {:.3} ms per read",
        storage.name,
        storage.bandwidth / 1e9,
        storage.latency.as_secs_f64() * 1e3
    );

    // 1. Unthrottled: this machine's storage (likely the OS page cache by now).
    let base = generate(&dir, plain, budget, &args, &prompt)?;

    // 2. Throttled: the same reads, delivered at the simulated device's pace.
    let throttled = Arc::new(ThrottledStore::new(
        SafetensorsStore::new(ckpt, &cfg)?,
        storage.clone(),
    ));
    let slow = generate(&dir, throttled.clone(), budget, &args, &prompt)?;
    if slow.tokens != base.tokens {
        // A store changes timing, never results.
        return Err(moestream::Error::InvalidArgument(
            "the throttled run generated other tokens than the plain one".into(),
        ));
    }

    // Prediction: the GPU time per token (given, or this machine's, i.e. the unthrottled
    // decode time minus its read waits) plus the simulated read wait per token.
    let gpu = match args.gpu_ms_per_token {
        Some(ms) => Duration::from_secs_f64(ms / 1e3),
        None => base.per_token(base.decode.saturating_sub(base.cache.read_time)),
    };
    let predicted = gpu + slow.per_token(slow.cache.read_time);
    let n = base.tokens.len().max(1) as f64;

    println!();
    let row = |what: &str, a: String, b: String| println!("  {what:<26} {a:>14}  {b:>14}");
    row(
        &format!("decode, {} tokens", base.tokens.len()),
        "unthrottled".into(),
        storage.name.clone(),
    );
    row(
        "tokens/s (measured here)",
        format!("{:.2}", n / base.decode.as_secs_f64()),
        format!("{:.2}", n / slow.decode.as_secs_f64()),
    );
    row(
        "expert-cache hit rate",
        format!("{:.1}%", 100.0 * base.cache.hit_rate()),
        format!("{:.1}%", 100.0 * slow.cache.hit_rate()),
    );
    row(
        "expert reads per token",
        format!("{:.1}", base.cache.misses as f64 / n),
        format!("{:.1}", slow.cache.misses as f64 / n),
    );
    row(
        "MiB read per token",
        format!("{:.2}", base.cache.bytes_read as f64 / n / 1048576.0),
        format!("{:.2}", slow.cache.bytes_read as f64 / n / 1048576.0),
    );
    row(
        "waiting on reads per token",
        ms(base.per_token(base.cache.read_time)),
        ms(slow.per_token(slow.cache.read_time)),
    );
    println!();
    let c = &throttled.counters;
    let late = c.late_reads.load(Ordering::Relaxed);
    println!(
        "Throttled store: {} reads, {:.1} MiB, transfer channel busy {:.1} ms, {} reads late by {:.2} ms in all",
        c.reads.load(Ordering::Relaxed),
        c.bytes.load(Ordering::Relaxed) as f64 / 1048576.0,
        c.transfer_ns.load(Ordering::Relaxed) as f64 / 1e6,
        late,
        c.late_ns.load(Ordering::Relaxed) as f64 / 1e6,
    );
    println!(
        "Predicted decode on \"{}\" storage: {:.2} tokens/s ({} GPU + {} waiting on reads per token{})",
        storage.name,
        1.0 / predicted.as_secs_f64(),
        ms(gpu),
        ms(slow.per_token(slow.cache.read_time)),
        if args.gpu_ms_per_token.is_some() { "" } else { "; GPU time measured on this machine, pass --gpu-ms-per-token for the target's" },
    );
    if slow.cache.read_time > Duration::ZERO {
        println!(
            "Storage alone would allow at most {:.2} tokens/s at this cache budget.",
            n / slow.cache.read_time.as_secs_f64()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    logging::init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
