//! Expert-read throughput of each store against a raw sequential read of the same files,
//! measured in the same run, cold and warm.
//!
//! ```text
//! cargo bench --bench storage                  # 8 layers of Qwen3-30B-A3B-sized 4-bit experts
//! cargo bench --bench storage -- --layers 2    # smaller
//! ```
//! The model is a synthetic Qwen3-30B-A3B-shaped 4-bit checkpoint (2.65 MB per expert, as
//! MLX 4-bit group 64 with bf16 scales stores it), written once to `$MOESTREAM_BENCH_DIR`
//! (default `target/bench-models`) and packed next to itself. Each store then reads every
//! expert once, in a shuffled order, with 8 reads in flight (as the engine's I/O pool
//! does), into 16 KiB-aligned buffers. "Cold" evicts the files from the OS page cache first
//! (`posix_fadvise(DONTNEED)`; direct I/O bypasses the cache anyway), "warm" reads them
//! again. The baseline is a sequential read of the pack's layer files in 16 MiB chunks
//! (direct I/O when cold). Ratios are store GB/s over baseline GB/s.

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use moestream::synthetic::SyntheticSpec;
use moestream::{
    checkpoint::Checkpoint, config::ModelConfig, store::AlignedBuf, ExpertStore, Result,
    SafetensorsStore,
};
use moestream::{
    store::{pack_experts, PackOptions, PackedStoreOptions},
    PackedStore,
};

const IN_FLIGHT: usize = 8;

/// GB/s reading every expert of `layers` once, shuffled, `IN_FLIGHT` at a time.
fn experts(store: &dyn ExpertStore, layers: &[usize], n_experts: usize) -> Result<f64> {
    let mut order: Vec<(usize, usize)> = layers
        .iter()
        .flat_map(|&l| (0..n_experts).map(move |e| (l, e)))
        .collect();
    let mut state = 0x1234_5678u64;
    for i in (1..order.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (state >> 33) as usize % (i + 1));
    }
    let bytes: u64 = order
        .iter()
        .map(|&(l, _)| store.layout(l).map_or(0, |x| x.bytes as u64))
        .sum();
    let largest = layers
        .iter()
        .filter_map(|&l| store.layout(l))
        .map(|x| x.bytes)
        .max()
        .unwrap_or(0);
    let next = AtomicUsize::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..IN_FLIGHT)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut buf = AlignedBuf::new(largest);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(l, e)) = order.get(i) else {
                            return Ok(());
                        };
                        store.read_expert(l, e, &mut buf)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| moestream::Error::InvalidArgument("a reader panicked".into()))??;
        }
        Ok(())
    })?;
    Ok(bytes as f64 / t0.elapsed().as_secs_f64() / 1e9)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let layers = args
        .iter()
        .position(|a| a == "--layers")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(8usize);
    let mut spec = SyntheticSpec::qwen3_30b_a3b_4bit();
    spec.num_layers = layers;
    spec.vocab_size = 4096; // the resident weights do not matter here
    let root = std::env::var_os("MOESTREAM_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-models"))
        });
    let dir = spec.write(root.join(format!("storage-{layers}l")))?;
    let t = Instant::now();
    pack_experts(&dir, &PackOptions::new(), |_| Ok(()))?;
    println!(
        "model {} ({} layers x {} experts), packed in {:.1}s",
        dir.display(),
        layers,
        spec.num_experts,
        t.elapsed().as_secs_f64()
    );

    let cfg = ModelConfig::from_path(&dir)?;
    let ckpt = Arc::new(Checkpoint::open(&dir)?);
    let moe = cfg.moe_layers();
    let safetensors = SafetensorsStore::new(ckpt.clone(), &cfg)?;
    let pack_dir = dir.join(moestream::store::PACK_DIR_NAME);
    let packed = PackedStore::open_with(&pack_dir, PackedStoreOptions::default())?;
    let packed_direct =
        PackedStore::open_with(&pack_dir, PackedStoreOptions::default().direct_io(true))?;
    let packed_nock = PackedStore::open_with(
        &pack_dir,
        PackedStoreOptions::default().verify_checksums(false),
    )?;
    let pack_files = common::pack_files(&pack_dir)?;
    let st_files: Vec<PathBuf> = ckpt.files().iter().map(|f| f.path.clone()).collect();
    let all: Vec<PathBuf> = pack_files.iter().chain(&st_files).cloned().collect();
    let expert_bytes = spec.expert_bytes() as f64 / (layers * spec.num_experts) as f64;
    println!(
        "{:.2} MB per expert, {:.2} GB of experts; direct I/O active: {}",
        expert_bytes / 1e6,
        spec.expert_bytes() as f64 / 1e9,
        packed_direct.direct_io_active()
    );

    common::evict(&all);
    let cold_seq = common::sequential_read(&pack_files, true, u64::MAX);
    let warm_seq = {
        common::sequential_read(&pack_files, false, u64::MAX);
        common::sequential_read(&pack_files, false, u64::MAX)
    };
    println!("raw sequential read of the pack files: cold (direct) {cold_seq:.2} GB/s, warm {warm_seq:.2} GB/s");

    let stores: [(&str, &dyn ExpertStore, &[PathBuf]); 4] = [
        ("safetensors (buffered)", &safetensors, &st_files),
        ("packed (buffered, checksums)", &packed, &pack_files),
        ("packed (buffered, no checksums)", &packed_nock, &pack_files),
        ("packed (direct, checksums)", &packed_direct, &pack_files),
    ];
    println!(
        "{:<34} {:>10} {:>8} {:>10} {:>8}",
        "store", "cold GB/s", "ratio", "warm GB/s", "ratio"
    );
    for (name, store, files) in stores {
        common::evict(files);
        let cold = experts(store, &moe, spec.num_experts)?;
        experts(store, &moe, spec.num_experts)?;
        let warm = experts(store, &moe, spec.num_experts)?;
        println!(
            "{name:<34} {cold:>10.2} {:>8.3} {warm:>10.2} {:>8.3}",
            cold / cold_seq,
            warm / warm_seq
        );
    }
    Ok(())
}
