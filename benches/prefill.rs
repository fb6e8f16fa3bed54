//! Short prefill passes: time per pass of n tokens after a context of 1024, the expert
//! cache resident, on a synthetic model.
//!
//! ```text
//! cargo bench --bench prefill                 # 8 of Qwen3-30B-A3B's 48 layers, MLX 4-bit
//! cargo bench --bench prefill -- --small      # a small 4-bit model
//! MOESTREAM_PREFILL_EXPERT_MATVECS=1 cargo bench --bench prefill   # the per-assignment
//!     # expert mat-vecs below 8 assignments per expert, as before split-invariant prefill
//! ```
//! What a prompt-cache hit pays for its new tokens. A prefill pass runs the tiled expert
//! mat-mats whatever its length, so that its results do not depend on how a prompt was split
//! (docs/architecture.md, "Split-invariant prefill"); before, passes with fewer than 8
//! assignments per expert ran the per-assignment mat-vecs, and
//! `MOESTREAM_PREFILL_EXPERT_MATVECS=1` brings that back to compare. A decode step (`step`)
//! is timed too, for scale. The model is written once to `$MOESTREAM_BENCH_DIR` (default
//! `target/bench-models`).

use std::path::PathBuf;
use std::time::Instant;

use moestream::synthetic::SyntheticSpec;
use moestream::{Model, Result};

fn main() -> Result<()> {
    // `--small`: a small 4-bit model (for CI-sized machines and software GPUs).
    let small = std::env::args().any(|a| a == "--small");
    let (name, spec) = if small {
        let mut s = SyntheticSpec::default();
        s.quant = Some((4, 64));
        ("small-4bit", s)
    } else {
        let mut s = SyntheticSpec::qwen3_30b_a3b_4bit();
        s.num_layers = 8;
        ("qwen3-30b-a3b-4bit-8l", s)
    };
    let root = std::env::var_os("MOESTREAM_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-models"))
        });
    let t = Instant::now();
    let dir = spec.write(root.join(name))?;
    println!(
        "model: {} ({:.1}s to write or find)",
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    let model = Model::builder(&dir)
        .expert_cache_bytes(spec.expert_bytes() + (64 << 20))
        .build()?;
    model.preload_experts()?;
    let matvecs = std::env::var_os("MOESTREAM_PREFILL_EXPERT_MATVECS").is_some_and(|v| v == "1");
    println!(
        "{} ({} experts per matrix, top-{}), {}",
        model.adapter().name,
        spec.num_experts,
        spec.top_k,
        if matvecs {
            "expert mat-vecs below 8 assignments per expert (as before)"
        } else {
            "tiled expert mat-mats in every prefill pass"
        }
    );
    let v = spec.vocab_size as u32;
    let ids: Vec<u32> = (0..2048u32).map(|i| (i * 7919 + 13) % v).collect();
    let ctx = 1024;
    let mut s = model.session(4096)?;
    s.prefill(&ids[..ctx])?;
    let reps = 9;
    let median = |mut t: Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    // Warm up every pass length's kernels once.
    for n in [1, 2, 4, 8, 16, 32, 64, 128, 256, 512] {
        s.truncate(ctx)?;
        s.prefill_top(&ids[ctx..ctx + n], 1)?;
    }
    println!("tokens  prefill pass ms  ms/token");
    for n in [1, 2, 4, 8, 16, 32, 64, 128, 256, 512] {
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            s.truncate(ctx)?;
            let t = Instant::now();
            s.prefill_top(&ids[ctx..ctx + n], 1)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let ms = median(times);
        println!("{n:6}  {ms:15.2}  {:8.3}", ms / n as f64);
    }
    let mut times = Vec::with_capacity(reps);
    s.truncate(ctx)?;
    s.prefill_top(&ids[ctx..ctx + 1], 1)?;
    for i in 0..reps {
        let t = Instant::now();
        s.step_top(ids[ctx + 1 + i], 1)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("decode step: {:.2} ms", median(times));
    Ok(())
}
