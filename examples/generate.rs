//! Greedy generation with expert streaming, printing throughput and expert-cache stats.
//!
//! ```text
//! cargo run --release --example generate                       # synthetic demo model
//! cargo run --release --example generate -- --model DIR --prompt-ids 9707,11,1879
//! ```
//! Without `--model`, a small synthetic random-weight Qwen3-MoE model is written to a cache
//! folder (once) and run with an expert-cache budget of a quarter of its experts, so experts
//! really stream from storage. Its output tokens are meaningless: the weights are random.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use moestream::synthetic::SyntheticSpec;
use moestream::Model;

#[derive(Parser, Debug)]
#[command(about = "Generate tokens with moestream (greedy), streaming experts from storage")]
struct Args {
    /// Checkpoint folder (config.json + safetensors). Default: a synthetic demo model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt token ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Tokens to generate.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Expert-cache budget in bytes (default: all experts for --model, 25% for the demo).
    #[arg(long)]
    expert_cache_bytes: Option<u64>,
    /// Maximum context of the session.
    #[arg(long, default_value_t = 2048)]
    max_context: usize,
}

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

fn run(args: Args) -> moestream::Result<()> {
    let (dir, default_budget) = match &args.model {
        Some(d) => (d.clone(), None),
        None => {
            let spec = SyntheticSpec::default();
            let dir = cache_dir().join("synthetic-default");
            println!(
                "No --model given: using a SYNTHETIC random-weight Qwen3-MoE model (its output is meaningless)."
            );
            println!("Writing it to {} (once) ...", dir.display());
            let dir = spec.write(&dir)?;
            (dir, Some(spec.expert_bytes() / 4))
        }
    };
    let mut builder = Model::builder(&dir);
    if let Some(b) = args.expert_cache_bytes.or(default_budget) {
        builder = builder.expert_cache_bytes(b);
    }
    let t_load = Instant::now();
    let model = builder.build()?;
    let cfg = model.config();
    println!(
        "Loaded {} in {:.2}s on {} ({}): {} layers, {} experts/layer, top-{}, resident weights {:.1} MiB, expert cache {:.1} of {:.1} MiB ({} slots)",
        dir.display(),
        t_load.elapsed().as_secs_f64(),
        model.adapter().name,
        model.adapter().backend,
        cfg.num_hidden_layers,
        cfg.num_experts,
        cfg.num_experts_per_tok,
        model.resident_weight_bytes() as f64 / 1048576.0,
        model.expert_cache_bytes() as f64 / 1048576.0,
        model.total_expert_bytes() as f64 / 1048576.0,
        model.expert_cache_slots(),
    );
    let prompt = args
        .prompt_ids
        .clone()
        .unwrap_or_else(|| (1..=16).map(|i| (i * 97) % cfg.vocab_size as u32).collect());
    let mut session = model.session(args.max_context)?;
    println!("Prompt ids: {prompt:?}");
    let t0 = Instant::now();
    let logits = session.prefill(&prompt)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let after_prefill = session.stats();
    let mut next = argmax(&logits);
    print!("Generated ids:");
    let t1 = Instant::now();
    let mut generated = 0;
    for _ in 0..args.max_tokens {
        print!(" {next}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        if cfg.eos_token_ids.contains(&next) || session.position() >= session.max_context() {
            break;
        }
        let logits = session.step(next)?;
        generated += 1;
        next = argmax(&logits);
    }
    println!();
    let decode_s = t1.elapsed().as_secs_f64();
    let total = session.stats();
    let decode = total.cache.since(&after_prefill.cache);
    println!(
        "prefill: {} tokens in {:.3}s ({:.1} tok/s); decode: {} tokens in {:.3}s ({:.2} tok/s)",
        prompt.len(),
        prefill_s,
        prompt.len() as f64 / prefill_s,
        generated,
        decode_s,
        generated as f64 / decode_s.max(1e-9)
    );
    println!(
        "expert cache: hit rate {:.1}% overall, {:.1}% in decode; {:.1} MiB read from storage ({} expert reads, {:.3}s reading)",
        100.0 * total.cache.hit_rate(),
        100.0 * decode.hit_rate(),
        total.cache.bytes_read as f64 / 1048576.0,
        total.cache.misses,
        total.cache.read_time.as_secs_f64(),
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
