//! End-to-end decode speed against the memory-bandwidth bound, on a synthetic model.
//!
//! ```text
//! cargo bench --bench decode                 # Qwen3-30B-A3B shape, MLX 4-bit (~16 GB experts)
//! cargo bench --bench decode -- --small      # a small 4-bit model (for CI-sized machines)
//! cargo bench --bench decode -- --model qwen3.5-35b-a3b        # Qwen3.5-35B-A3B shape (~18 GB experts)
//! cargo bench --bench decode -- --model qwen3.5-397b-a17b-8l   # 8 of Qwen3.5-397B's 60 layers
//! cargo bench --bench decode -- --model gpt-oss-20b            # gpt-oss-20b shape, MXFP4 (~10 GB experts)
//! cargo bench --bench decode -- --model gpt-oss-120b-12l       # 12 of gpt-oss-120b's 36 layers (~20 GB)
//! cargo bench --bench decode -- --model glm-4.5-air-12l        # 12 of GLM-4.5-Air's 46 layers, 4-bit (~14 GB)
//! cargo bench --bench decode -- --model deepseek-v3-4l         # 4 of DeepSeek-V3's 61 layers (1 dense), 4-bit (~19 GB)
//! cargo bench --bench decode -- --model deepseek-v3-fp8-3l     # 3 of its layers (1 dense) as released, FP8 (~23 GB)
//! cargo bench --bench decode -- --model mixtral-8x7b-8l        # 8 of Mixtral-8x7B's 32 layers, 4-bit (~6.3 GB)
//! cargo bench --bench decode -- --model olmoe-1b-7b            # OLMoE-1B-7B, 4-bit (~3.6 GB)
//! MOESTREAM_PROFILE=1 cargo bench --bench decode -- --resident-only   # GPU time per kernel
//! cargo bench --bench decode -- --resident-only --long-context   # also after 2048 / 8192 tokens
//! cargo bench --bench decode -- --kv-f16     # the KV cache in f16 (ModelBuilder::kv_cache_dtype)
//! cargo bench --bench decode -- --spin-us 0  # readback waits block at once (ModelBuilder::readback_spin)
//! cargo bench --bench decode -- --int-activations  # 8+8-bit activation rows (f32: --f32-activations)
//! cargo bench --bench decode -- --realistic-routing  # the 25% cache follows a calibrated routing trace
//! cargo bench --bench decode -- --realistic-routing --direct  # ... streamed from a pack with direct I/O,
//!                                            # and a 512-token prefill streamed into an empty cache
//! cargo bench --bench decode -- --policy lfu # the expert cache's policy (lru, lfu, per-layer)
//! cargo bench --bench decode -- --streaming-only   # only the partial cache
//! cargo bench --bench decode -- --f16-prefill      # prefill mat-mats on tensor cores (ModelBuilder::f16_prefill)
//! ```
//! The model is written once to `$MOESTREAM_BENCH_DIR` (default `target/bench-models`).
//! For a fully resident expert cache and for one holding 25% of the experts, it prefills
//! a prompt, warms up, then times greedy decode and prints tokens/s, the expert-cache hit
//! rate, bytes read from storage, and the fraction of the memory-bandwidth bound reached:
//! `bound = copy_bandwidth / bytes_read_per_token`, where the bytes per token are the
//! resident weights a token reads (everything but the embedding table) plus the routed
//! experts (`moe_layers * top_k * expert_bytes`), and the copy bandwidth is measured by a
//! copy kernel in the same run.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use moestream::gpu::testing::GpuBench;
use moestream::synthetic::SyntheticSpec;
use moestream::{
    cache::CachePolicy,
    format::{AffineQuant, DType, WeightFormat},
    sampling::Sampler,
    store::{pack_experts, PackOptions, PackedStoreOptions},
    Model, PackedStore, Result, SamplingParams,
};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let small = args.iter().any(|a| a == "--small");
    // `--model NAME`: which synthetic shape (default qwen3-30b-a3b).
    let model_name = args
        .windows(2)
        .find(|w| w[0] == "--model")
        .map_or("qwen3-30b-a3b", |w| w[1].as_str());
    let (name, spec) = if small {
        let mut s = SyntheticSpec::default();
        s.quant = Some((4, 64));
        ("small-4bit", s)
    } else {
        match model_name {
            "qwen3-30b-a3b" => ("qwen3-30b-a3b-4bit", SyntheticSpec::qwen3_30b_a3b_4bit()),
            "qwen3.5-35b-a3b" => (
                "qwen3.5-35b-a3b-4bit",
                SyntheticSpec::qwen3_5_35b_a3b_4bit(),
            ),
            "qwen3.5-397b-a17b-8l" => (
                "qwen3.5-397b-a17b-8l-4bit",
                SyntheticSpec::qwen3_5_397b_a17b_4bit(8),
            ),
            "gpt-oss-20b" => ("gpt-oss-20b-mxfp4", SyntheticSpec::gpt_oss_20b()),
            "glm-4.5-air-12l" => ("glm-4.5-air-12l-4bit", SyntheticSpec::glm4_5_air_4bit(12)),
            "deepseek-v3-4l" => ("deepseek-v3-4l-4bit", SyntheticSpec::deepseek_v3_4bit(4)),
            "deepseek-v3-fp8-3l" => ("deepseek-v3-3l-fp8", SyntheticSpec::deepseek_v3_fp8(3)),
            "mixtral-8x7b-8l" => ("mixtral-8x7b-8l-4bit", SyntheticSpec::mixtral_8x7b_4bit(8)),
            "olmoe-1b-7b" => ("olmoe-1b-7b-4bit", SyntheticSpec::olmoe_1b_7b_4bit()),
            "gpt-oss-120b-12l" => ("gpt-oss-120b-12l-mxfp4", SyntheticSpec::gpt_oss_120b(12)),
            "gpt-oss-120b" => ("gpt-oss-120b-mxfp4", SyntheticSpec::gpt_oss_120b(36)),
            other => {
                return Err(moestream::Error::InvalidArgument(format!(
                    "--model {other}: one of qwen3-30b-a3b, qwen3.5-35b-a3b, qwen3.5-397b-a17b-8l, gpt-oss-20b, gpt-oss-120b-12l, gpt-oss-120b, glm-4.5-air-12l, deepseek-v3-4l, deepseek-v3-fp8-3l, mixtral-8x7b-8l, olmoe-1b-7b"
                )))
            }
        }
    };
    let root = std::env::var_os("MOESTREAM_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-models"))
        });
    let t0 = Instant::now();
    let dir = spec.write(root.join(name))?;
    println!(
        "model: {} ({:.1}s to write or find)",
        dir.display(),
        t0.elapsed().as_secs_f64()
    );

    let copy = common::copy_bandwidth(&GpuBench::new()?)?;
    println!("copy kernel: {copy:.1} GB/s");
    print_cooperative_matrices();

    // `--direct`: the partial cache streams from a pack of the experts read with direct
    // I/O (cold storage: no page cache), beside the raw sequential direct read of the
    // same files (the baseline of the streaming ratios).
    let direct = args.iter().any(|a| a == "--direct");
    let pack = if direct {
        let t = Instant::now();
        pack_experts(&dir, &PackOptions::new(), |_| Ok(()))?;
        let pack_dir = dir.join(moestream::store::PACK_DIR_NAME);
        let files = common::pack_files(&pack_dir)?;
        let seq = common::sequential_read(&files, true, 4 << 30);
        let par = common::parallel_read(&files, true, 4 << 30, 8);
        let raw = seq.max(par);
        println!(
            "pack: {} ({:.1}s to write or find); raw direct reads: sequential {seq:.2} GB/s, 8 in flight {par:.2} GB/s (baseline {raw:.2})",
            pack_dir.display(),
            t.elapsed().as_secs_f64()
        );
        Some((pack_dir, raw))
    } else {
        None
    };
    // `--policy lru|lfu|per-layer`: the expert cache's policy.
    let policy = match args
        .windows(2)
        .find(|w| w[0] == "--policy")
        .map(|w| w[1].as_str())
    {
        None | Some("lru") => CachePolicy::Lru,
        Some("lfu") => CachePolicy::Lfu,
        Some("per-layer") => CachePolicy::PerLayerLru,
        Some(other) => {
            return Err(moestream::Error::InvalidArgument(format!(
                "--policy {other}: one of lru, lfu, per-layer"
            )))
        }
    };

    // Bytes one decoded token reads.
    let (h, v) = (spec.hidden_size, spec.vocab_size);
    let fmt = match spec.quant {
        Some((bits, group)) => WeightFormat::Affine(AffineQuant::new(bits, group, spec.dtype)?),
        None => WeightFormat::Float(spec.dtype),
    };
    let embed_bytes = fmt.stored_bytes(v, h) as u64;
    let experts_total = spec.expert_bytes();
    let per_expert = experts_total / (spec.moe_layers() * spec.num_experts) as u64;
    let routed = (spec.moe_layers() * spec.top_k) as u64 * per_expert;

    // `--spin-us N`: how long readback waits poll before blocking
    // (`ModelBuilder::readback_spin`; default 300).
    let spin_us: Option<u64> = args
        .windows(2)
        .find(|w| w[0] == "--spin-us")
        .and_then(|w| w[1].parse().ok());
    let kv = if args.iter().any(|a| a == "--kv-f16") {
        DType::F16
    } else {
        DType::F32
    };
    for (label, budget) in [
        ("resident", experts_total + (64 << 20)),
        ("25% cache", experts_total / 4),
    ] {
        let streamed = label != "resident";
        // `--streaming-only`: skip the resident run.
        if !streamed && args.iter().any(|a| a == "--streaming-only") {
            continue;
        }
        let t = Instant::now();
        let build = || -> Result<Model> {
            let mut builder = Model::builder(&dir)
                .expert_cache_bytes(budget)
                .expert_cache_policy(policy)
                .kv_cache_dtype(kv);
            if let Some(us) = spin_us {
                builder = builder.readback_spin(std::time::Duration::from_micros(us));
            }
            // `--int-activations` / `--f32-activations`: ModelBuilder::f32_activations
            // (default: the builder's choice for the adapter and model).
            // `--f16-prefill`: ModelBuilder::f16_prefill (tensor cores where the adapter
            // has cooperative matrices).
            if args.iter().any(|a| a == "--f16-prefill") {
                builder = builder.f16_prefill(true);
            }
            if args.iter().any(|a| a == "--int-activations") {
                builder = builder.f32_activations(false);
            } else if args.iter().any(|a| a == "--f32-activations") {
                builder = builder.f32_activations(true);
            }
            if let (true, Some((pack_dir, _))) = (streamed, &pack) {
                let store = PackedStore::open_with(
                    pack_dir,
                    PackedStoreOptions::default().direct_io(true),
                )?;
                builder = builder.expert_store(Arc::new(store));
            }
            builder.build()
        };
        let model = build()?;
        if streamed {
            println!(
                "{label}: policy {policy:?}, {}",
                if pack.is_some() {
                    "experts from the pack, direct I/O"
                } else {
                    "experts from the checkpoint (page cache)"
                }
            );
        }
        println!("{label}: KV cache {kv:?}");
        if label == "resident" {
            let t = Instant::now();
            let st = model.preload_experts()?;
            println!(
                "preloaded {} experts ({:.2} GB) in {:.1}s",
                st.misses,
                st.bytes_read as f64 / 1e9,
                t.elapsed().as_secs_f64()
            );
        }
        let resident = model.resident_weight_bytes() - embed_bytes;
        let per_token = resident + routed;
        let bound = copy * 1e9 / per_token as f64;
        println!(
            "\n[{label}] loaded in {:.1}s on {}: {} expert slots of {} ({:.2} GB cache), {:.2} GB read per token",
            t.elapsed().as_secs_f64(),
            model.adapter().name,
            model.expert_cache_slots(),
            spec.num_layers * spec.num_experts,
            model.expert_cache_bytes() as f64 / 1e9,
            per_token as f64 / 1e9
        );
        let mut s = model.session(1024)?;
        // `--realistic-routing`: the partial cache's session follows a generated trace with
        // published statistics (moestream::routing; the logits are meaningless) instead of
        // the random model's own repetitive routing.
        let realistic = streamed && args.iter().any(|a| a == "--realistic-routing");
        let trace = if realistic {
            let header = moestream::routing::TraceHeader::for_model(model.config())?;
            let params = moestream::routing::GeneratorParams::default();
            let trace = moestream::routing::RoutingTrace::generate(header, &params, 4096)?;
            s.follow_routing(Some(trace.clone()))?;
            println!("routing: a calibrated generated trace (Session::follow_routing)");
            Some(trace)
        } else {
            None
        };
        println!(
            "session state: {:.1} MB ({:.1} MB of KV cache for 1024 tokens)",
            s.state_bytes() as f64 / 1e6,
            s.kv_cache_bytes() as f64 / 1e6
        );
        let prompt: Vec<u32> = (0..64).map(|i| (i * 7919 + 13) % v as u32).collect();
        let t = Instant::now();
        let mut logits = s.prefill(&prompt)?;
        println!(
            "prefill (first, compiles the kernels): {} tokens in {:.2}s",
            prompt.len(),
            t.elapsed().as_secs_f64()
        );
        let argmax = |l: &[f32]| {
            l.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i as u32)
        };
        let (warm, timed) = if small { (16, 32) } else { (48, 64) };
        for _ in 0..warm {
            logits = s.step(argmax(&logits))?;
        }
        let before = s.stats();
        let _ = moestream::gpu::testing::take_profile();
        let cpu0 = common::process_cpu_time();
        let busy1 = model.storage_busy_time();
        for _ in 0..timed {
            logits = s.step(argmax(&logits))?;
        }
        let cpu1 = common::process_cpu_time();
        let busy2 = model.storage_busy_time();
        let st = s.stats();
        let wall = (st.wall_time - before.wall_time).as_secs_f64();
        let tps = timed as f64 / wall;
        let cache = st.cache.since(&before.cache);
        let gpu = gpu_per_token(&before, &st, timed);
        println!(
            "decode: {tps:.2} tok/s ({:.1} ms/token, {gpu}); bandwidth bound {bound:.1} tok/s -> {:.3} of bound",
            1e3 / tps,
            tps / bound
        );
        if let (Some(a), Some(b)) = (cpu0, cpu1) {
            // The cost of the library's defaults to a battery: the readback spin
            // (`--spin-us`), the recording, the I/O threads.
            println!(
                "host CPU time: {:.2} ms/token ({:.0}% of one core)",
                (b - a).as_secs_f64() * 1e3 / timed as f64,
                100.0 * (b - a).as_secs_f64() / wall
            );
        }
        println!(
            "host: {:.1} ms/token recording GPU work, {:.1} ms/token waiting for the GPU; {} of {} steps resident ({} retried)",
            (st.record_time - before.record_time).as_secs_f64() * 1e3 / timed as f64,
            (st.gpu_wait_time - before.gpu_wait_time).as_secs_f64() * 1e3 / timed as f64,
            st.resident_steps - before.resident_steps,
            timed,
            st.resident_retries - before.resident_retries
        );
        println!(
            "experts: hit rate {:.1}%, {:.2} GB read from storage ({:.2} GB/s while waiting, {:.1} ms/token waiting)",
            100.0 * cache.hit_rate(),
            cache.bytes_read as f64 / 1e9,
            cache.read_throughput() / 1e9,
            cache.read_time.as_secs_f64() * 1e3 / timed as f64
        );
        if cache.misses > 0 {
            // Issue #20's streaming target: time per token against max(T_io, T_gpu), with
            // T_io the time spent waiting for reads and T_gpu the GPU time.
            let t_io = cache.read_time.as_secs_f64() / timed as f64;
            let t_gpu = match (st.gpu_time, before.gpu_time) {
                (Some(a), Some(b)) => (a - b).as_secs_f64() / timed as f64,
                _ => 0.0,
            };
            let busy = (busy2 - busy1).as_secs_f64() / wall;
            println!(
                "streaming: {:.1} ms/token = {:.2}x max(reads {:.1} ms, GPU {:.1} ms); storage busy {:.1}% of the wall time",
                1e3 / tps,
                (1.0 / tps) / t_io.max(t_gpu).max(1e-9),
                t_io * 1e3,
                t_gpu * 1e3,
                100.0 * busy
            );
            if let Some((_, raw)) = &pack {
                // The stricter T_io: the bytes read at the storage's raw sequential rate.
                let t_raw = cache.bytes_read as f64 / timed as f64 / (raw * 1e9);
                println!(
                    "streaming against the raw rate: {:.2}x max(the bytes at {raw:.2} GB/s: {:.1} ms, GPU {:.1} ms)",
                    (1.0 / tps) / t_raw.max(t_gpu).max(1e-9),
                    t_raw * 1e3,
                    t_gpu * 1e3
                );
            }
        }
        let profile = moestream::gpu::testing::take_profile();
        if !profile.is_empty() {
            // The Gated DeltaNet kernels' share (their projections are mat-vecs, counted
            // with the others).
            let total: f64 = profile.iter().map(|p| p.2).sum();
            let linear: f64 = profile
                .iter()
                .filter(|p| {
                    ["conv1d_silu", "gated_delta_net", "gated_rmsnorm"].contains(&p.0.as_str())
                })
                .map(|p| p.2)
                .sum();
            if linear > 0.0 {
                println!(
                    "linear-attention kernels (conv1d, delta rule, gated norm): {:.1}% of GPU time",
                    100.0 * linear / total
                );
            }
            println!("GPU profile per token (MOESTREAM_PROFILE: one timed pass per dispatch):");
            for (kernel, n, secs) in profile {
                println!(
                    "  {kernel:<16} {:>7.1} dispatches {:>8.3} ms {:>7.2} us each",
                    n as f64 / timed as f64,
                    secs * 1e3 / timed as f64,
                    secs * 1e6 / n as f64
                );
            }
        }
        // Prefill with warm kernels, in fresh sessions: the time to first token.
        for n in [64usize, 512] {
            let long: Vec<u32> = (0..n).map(|i| (i * 7919 + 13) as u32 % v as u32).collect();
            let mut fresh = model.session(1024)?;
            let t = Instant::now();
            fresh.prefill(&long)?;
            let secs = t.elapsed().as_secs_f64();
            println!(
                "prefill (warm): {n} tokens in {:.3}s, {:.0} tok/s",
                secs,
                n as f64 / secs
            );
            print_prefill_profile();
        }
        // Issue #20's streaming-prefill target: a 512-token prompt prefilled into an empty
        // expert cache (a fresh model) against the time to read, at the raw sequential
        // rate, each expert the prompt touches once.
        if let (Some(trace), Some((_, raw))) = (&trace, &pack) {
            let n = 512usize;
            let fresh_model = build()?;
            let mut ps = fresh_model.session(1024)?;
            ps.follow_routing(Some(trace.clone()))?;
            let h = trace.header();
            let mut touched = 0usize;
            for &layer in h.moe_layers() {
                let set: HashSet<u16> = (0..n)
                    .filter_map(|t| trace.experts(t, layer))
                    .flat_map(|e| e[..h.top_k()].iter().copied())
                    .collect();
                touched += set.len();
            }
            let per = fresh_model.total_expert_bytes() as f64
                / (h.moe_layers().len() * h.num_experts()) as f64;
            let ids: Vec<u32> = (0..n).map(|i| (i * 7919 + 13) as u32 % v as u32).collect();
            let busy0 = fresh_model.storage_busy_time();
            let t = Instant::now();
            ps.prefill(&ids)?;
            let secs = t.elapsed().as_secs_f64();
            let busy = (fresh_model.storage_busy_time() - busy0).as_secs_f64();
            let st = fresh_model.cache_stats();
            let once = touched as f64 * per / (raw * 1e9);
            println!(
                "streaming prefill: {n} tokens in {secs:.2}s ({:.0} tok/s); {} experts read ({:.2} GB) for {touched} touched; reading each once at the raw {raw:.2} GB/s takes {once:.2}s -> {:.2}x; storage busy {:.1}%",
                n as f64 / secs,
                st.misses,
                st.bytes_read as f64 / 1e9,
                secs / once,
                100.0 * busy / secs
            );
        }
        // What greedy generation reads back: the best logit only (`Session::step_top`),
        // instead of the whole vocabulary's logits; steps of the two kinds alternate, so
        // that both see the same context lengths (decode slows as the context grows).
        let mut next = argmax(&logits);
        let (mut top_secs, mut full_secs) = (0.0, 0.0);
        for _ in 0..timed / 2 {
            let t = Instant::now();
            next = s.step_top(next, 1)?.first().map_or(0, |c| c.id);
            top_secs += t.elapsed().as_secs_f64();
            let t = Instant::now();
            next = argmax(&s.step(next)?);
            full_secs += t.elapsed().as_secs_f64();
        }
        let half = (timed / 2) as f64;
        println!(
            "decode, alternating steps: top-1 readback (as greedy generation reads) {:.2} tok/s, all logits {:.2} tok/s",
            half / top_secs,
            half / full_secs
        );
        // Greedy decode as `generate` runs it: `step_top(_, 1)` in a row, so that each step
        // is submitted before the host reads back the one before it, the token picked on
        // the GPU (steps run ahead; `MOESTREAM_NO_RUN_AHEAD=1` turns that off).
        let before = s.stats();
        for _ in 0..timed {
            next = s.step_top(next, 1)?.first().map_or(0, |c| c.id);
        }
        println!(
            "greedy decode: {}",
            run_ahead_line(&before, &s.stats(), timed)
        );
        // Sampled decode as `generate` runs it with Qwen3's recommended sampling
        // (temperature 0.6, top-k 20, top-p 0.95), and with the largest top-k: the top k
        // read back, each step's successor run ahead with its token drawn on the GPU with
        // the sampler's next random number (`Session::step_top_sampling`, one workgroup
        // merging k candidates in k rounds), kept when the host's sampler agrees.
        for top_k in [20, 256] {
            let mut sampler = Sampler::new(SamplingParams {
                temperature: 0.6,
                top_k,
                top_p: 0.95,
                seed: Some(1),
                ..SamplingParams::greedy()
            });
            let before = s.stats();
            for _ in 0..timed {
                let top = s.step_top_sampling(next, top_k, sampler.next_draw())?;
                next = match sampler.sample_candidates(&top) {
                    Some(id) => id,
                    None => sampler.sample(&s.last_logits()?),
                };
            }
            println!(
                "sampled decode (t 0.6, top-k {top_k}, top-p 0.95): {}",
                run_ahead_line(&before, &s.stats(), timed)
            );
        }
        // `--ablate [K1+K2,K3,...]`: what each kernel (or set of kernels) costs inside a
        // real greedy step: the step's GPU time with its dispatches left out against the
        // step with them, alternating (every kernel alone when no list is given).
        if label == "resident" {
            if let Some(i) = args.iter().position(|a| a == "--ablate") {
                let sets = args.get(i + 1).filter(|a| !a.starts_with("--"));
                next = ablate(&s, next, sets.map(String::as_str))?;
            }
        }
        // `--long-context`: decode after a long prompt, where attention reads the KV cache
        // of every earlier token (its bytes are not in `bound`).
        if label == "resident" && args.iter().any(|a| a == "--long-context") {
            for ctx in [2048usize, 8192] {
                let mut long = model.session(ctx + 64)?;
                let _ = moestream::gpu::testing::take_profile();
                let t = Instant::now();
                for start in (0..ctx).step_by(512) {
                    let chunk: Vec<u32> = (start..(start + 512).min(ctx))
                        .map(|i| (i * 7919 + 13) as u32 % v as u32)
                        .collect();
                    logits = long.prefill(&chunk)?;
                }
                let prefill = t.elapsed().as_secs_f64();
                print_prefill_profile();
                for _ in 0..8 {
                    logits = long.step(argmax(&logits))?;
                }
                let before = long.stats();
                for _ in 0..32 {
                    logits = long.step(argmax(&logits))?;
                }
                let st = long.stats();
                let wall = (st.wall_time - before.wall_time).as_secs_f64();
                println!(
                    "decode after {ctx} tokens (prefilled in {prefill:.1}s): {:.2} tok/s ({:.1} ms/token)",
                    32.0 / wall,
                    wall * 1e3 / 32.0
                );
            }
        }
        if args.iter().any(|a| a == "--resident-only") {
            break;
        }
    }
    Ok(())
}

/// `--ablate`: for each set of kernels (`+`-joined names, `,` between sets; every kernel
/// alone when `sets` is None), greedy steps with the set's dispatches left out
/// (`moestream::gpu::testing::skip_kernels`: results wrong, times real) against steps
/// with them, in alternating rounds; prints the GPU and wall time per token each set
/// costs inside a real step. Returns the last token.
fn ablate(s: &moestream::Session, mut next: u32, sets: Option<&str>) -> Result<u32> {
    use moestream::gpu::kernels::Kernel;
    use moestream::gpu::testing::skip_kernels;
    // Kernels whose absence would change what the host does (the picked token decides
    // whether a step run ahead is kept), not only the GPU time.
    let keep = ["token_pick", "topk", "embedding", "qembedding"];
    let sets: Vec<Vec<&str>> = match sets {
        Some(list) => list
            .split(',')
            .map(|set| set.split('+').collect())
            .collect(),
        None => Kernel::ALL
            .iter()
            .map(|k| k.name())
            .filter(|n| !keep.contains(n))
            .map(|n| vec![n])
            .collect(),
    };
    const STEPS: usize = 24;
    const ROUNDS: usize = 3;
    // GPU and wall seconds per token of STEPS greedy steps.
    // Every run from the same context (decode slows as it grows), in a fork of the
    // session (a recurrent state cannot be truncated), after a few steps of warm-up.
    let run = |s: &moestream::Session, next: &mut u32| -> Result<(f64, f64)> {
        let mut s = s.fork()?;
        for _ in 0..4 {
            *next = s.step_top(*next, 1)?.first().map_or(0, |c| c.id);
        }
        let before = s.stats();
        for _ in 0..STEPS {
            *next = s.step_top(*next, 1)?.first().map_or(0, |c| c.id);
        }
        let st = s.stats();
        let gpu = gpu_secs(&before, &st).unwrap_or(f64::NAN);
        let wall = (st.wall_time - before.wall_time).as_secs_f64();
        Ok((gpu / STEPS as f64, wall / STEPS as f64))
    };
    println!("ablation: GPU (wall) us per token that a kernel's dispatches cost inside a greedy step ({ROUNDS} rounds of {STEPS} steps, median)");
    for set in sets {
        let (mut d_gpu, mut d_wall, mut base) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let (g0, w0) = run(s, &mut next)?;
            let unknown = skip_kernels(&set);
            if !unknown.is_empty() {
                skip_kernels(&[]);
                println!("  {}: no such kernel", unknown.join(", "));
                break;
            }
            let r = run(s, &mut next);
            skip_kernels(&[]);
            // A step without some kernels may fail (NaNs in the routing): said, not fatal.
            let (g1, w1) = match r {
                Ok(t) => t,
                Err(e) => {
                    println!("  {}: the step fails without it ({e})", set.join("+"));
                    break;
                }
            };
            d_gpu.push((g0 - g1) * 1e6);
            d_wall.push((w0 - w1) * 1e6);
            base.push(g0 * 1e6);
        }
        if d_gpu.len() == ROUNDS {
            let med = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            println!(
                "  {:<40} {:>8.1} us GPU ({:>8.1} wall) of {:.1}",
                set.join("+"),
                med(&mut d_gpu),
                med(&mut d_wall),
                med(&mut base)
            );
        }
    }
    Ok(next)
}

/// Prints whether the first adapter offers cooperative matrices (tensor cores, Apple's
/// simdgroup matrices) through wgpu, and in which shapes.
fn print_cooperative_matrices() {
    use moestream::wgpu;
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let Ok(adapter) =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
    else {
        return;
    };
    let on = adapter
        .features()
        .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
    let props = adapter.cooperative_matrix_properties();
    println!(
        "cooperative matrices on {}: feature {on}, {} configurations {:?}",
        adapter.get_info().name,
        props.len(),
        props
            .iter()
            .map(|p| format!(
                "{}x{}x{} {:?}->{:?}",
                p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type
            ))
            .collect::<Vec<_>>()
    );
}

/// Prints the kernels that took the most GPU time since the profile was last taken
/// (`MOESTREAM_PROFILE` set; else nothing).
fn print_prefill_profile() {
    let profile = moestream::gpu::testing::take_profile();
    if !profile.is_empty() {
        println!("GPU profile of this prefill:");
        for (kernel, k, secs) in profile.iter().take(8) {
            println!(
                "  {kernel:<16} {k:>7} dispatches {:>8.2} ms {:>8.1} us each",
                secs * 1e3,
                secs * 1e6 / *k as f64
            );
        }
    }
}

/// Tokens/s, ms/token and GPU time of `timed` decode steps between the session counters
/// `before` and `st`, and how many ran ahead (and were run again).
fn run_ahead_line(
    before: &moestream::session::SessionStats,
    st: &moestream::session::SessionStats,
    timed: usize,
) -> String {
    let wall = (st.wall_time - before.wall_time).as_secs_f64();
    format!(
        "{:.2} tok/s ({:.2} ms/token, {}); {} of {timed} steps run ahead, {} run again",
        timed as f64 / wall,
        wall * 1e3 / timed as f64,
        gpu_per_token(before, st, timed),
        st.steps_run_ahead - before.steps_run_ahead,
        st.steps_run_again - before.steps_run_again
    )
}

/// GPU time per token between two stats of a session that ran `tokens` tokens, as the
/// decode lines print it.
fn gpu_per_token(
    before: &moestream::session::SessionStats,
    after: &moestream::session::SessionStats,
    tokens: usize,
) -> String {
    match gpu_secs(before, after) {
        Some(secs) => format!("{:.1} ms/token GPU", secs * 1e3 / tokens as f64),
        None => "no GPU timestamps".into(),
    }
}

/// GPU seconds between two stats of a session (None without GPU timestamps).
fn gpu_secs(
    before: &moestream::session::SessionStats,
    after: &moestream::session::SessionStats,
) -> Option<f64> {
    Some((after.gpu_time? - before.gpu_time?).as_secs_f64())
}
