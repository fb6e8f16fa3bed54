//! Text generation with expert streaming: streams the text to stdout, then prints time to
//! first token, tokens/s and expert-cache stats (to stderr).
//!
//! ```text
//! cargo run --release --example generate                       # synthetic demo model
//! cargo run --release --example generate -- --model DIR --prompt "Tell me about MoE" --chat
//! cargo run --release --example generate -- --model DIR --prompt "Once upon a time" \
//!     --temperature 0.7 --top-p 0.9 --seed 1 --max-tokens 200
//! cargo run --release --example generate -- --model DIR --prompt "Hi" --chat --print-prompt-ids
//! cargo run --release --example generate -- --model DIR --prompt-ids 9707,11,1879
//! cargo run --release --example generate -- --model DIR --prompt "Hi" --record-routing run.trace
//! ```
//! `--record-routing FILE` writes the experts every token chose in each MoE layer (prompt
//! and generated) as a routing trace (`moestream::routing`), to replay through the expert
//! cache: `cargo bench --bench routing -- --trace FILE`.
//! Sampling defaults come from the model's `generation_config.json` (greedy without one);
//! the flags override them (`--temperature 0` is greedy). `--print-prompt-ids` prints the
//! prompt's token ids as one JSON array and exits without loading the weights (the folder
//! needs only the tokenizer files).
//!
//! Without `--model`, a small synthetic random-weight Qwen3-MoE model with a made-up word
//! tokenizer is written to a cache folder (once) and run with an expert-cache budget of a
//! quarter of its experts, so experts really stream from storage. Its output is
//! meaningless: the weights are random.

#[path = "support/demo.rs"]
mod demo;

#[path = "support/logging.rs"]
mod logging;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use moestream::{ChatMessage, GenerateOptions, GenerationConfig, Model, Prompt, Tokenizer};

#[derive(Parser, Debug)]
#[command(about = "Generate text with moestream, streaming experts from storage")]
struct Args {
    /// Checkpoint folder (config.json, safetensors, tokenizer.json). Default: a synthetic
    /// demo model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt text.
    #[arg(long, conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// Prompt token ids, comma-separated (instead of --prompt).
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Make the prompt one user message of a conversation, through the chat template.
    #[arg(long)]
    chat: bool,
    /// A system message before the user message (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Extra chat-template variables as a JSON object, e.g. '{"enable_thinking": false}'.
    #[arg(long)]
    chat_template_kwargs: Option<String>,
    /// Print the prompt's token ids as one JSON array and exit.
    #[arg(long)]
    print_prompt_ids: bool,
    /// Tokens to generate (default: generation_config.json's max_new_tokens, else 256; 32
    /// for the demo).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling: keep the most likely tokens up to this probability.
    #[arg(long)]
    top_p: Option<f32>,
    /// Keep the k most likely tokens (0: off).
    #[arg(long)]
    top_k: Option<usize>,
    /// Drop tokens less likely than this fraction of the most likely one.
    #[arg(long)]
    min_p: Option<f32>,
    /// Penalize tokens already in the context (1: off).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Random seed (sampling is deterministic for a given seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when the text contains this (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep going past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Expert-cache budget: bytes, or with a unit (8G, 512M; default: 2 GiB for --model,
    /// 25% for the demo).
    #[arg(long)]
    expert_cache_bytes: Option<moestream::units::ByteSize>,
    /// Keep the KV cache in f16 (half the memory per token of context).
    #[arg(long)]
    kv_f16: bool,
    /// Maximum context of the session.
    #[arg(long, default_value_t = 2048)]
    max_context: usize,
    /// Record the routing (the experts each token chose in each MoE layer) and write it to
    /// this file as a routing trace.
    #[arg(long)]
    record_routing: Option<PathBuf>,
}

fn run(args: Args) -> moestream::Result<()> {
    let (dir, default_budget) = match &args.model {
        Some(d) => {
            demo::check_model_dir(d)?;
            (d.clone(), None)
        }
        None if args.print_prompt_ids => {
            // Only the tokenizer is needed.
            let dir = moestream::synthetic::demo_dir();
            std::fs::create_dir_all(&dir).map_err(|e| moestream::Error::Io {
                path: dir.clone(),
                cause: e,
            })?;
            moestream::synthetic::write_demo_tokenizer(
                &dir,
                moestream::synthetic::SyntheticSpec::default().vocab_size,
            )?;
            (dir, None)
        }
        None => {
            let (dir, budget) = demo::demo_model()?;
            (dir, Some(budget))
        }
    };
    let has_tokenizer = dir.join("tokenizer.json").exists();
    let tokenizer = if has_tokenizer {
        Some(Tokenizer::from_dir(&dir)?)
    } else {
        None
    };
    let mut options = GenerateOptions::from_generation_config(&GenerationConfig::from_dir(&dir)?);
    if let Some(k) = &args.chat_template_kwargs {
        options.chat = options.chat.kwargs_json(k)?;
    }

    // The prompt.
    let prompt = match (&args.prompt_ids, &args.prompt) {
        (Some(ids), _) => Prompt::Ids(ids.clone()),
        (None, Some(text)) if args.chat => {
            let mut messages = Vec::new();
            if let Some(s) = &args.system {
                messages.push(ChatMessage::system(s.clone()));
            }
            messages.push(ChatMessage::user(text.clone()));
            Prompt::Chat(messages)
        }
        (None, Some(text)) => Prompt::Text(text.clone()),
        (None, None) if tokenizer.is_some() && args.model.is_none() => {
            // The demo: a few of its made-up words.
            let text = "kalo mipa user rute basi";
            if args.chat {
                Prompt::Chat(vec![ChatMessage::user(text)])
            } else {
                Prompt::Text(text.into())
            }
        }
        (None, None) => {
            return Err(moestream::Error::InvalidArgument(
                "give --prompt TEXT (or --prompt-ids) with --model".into(),
            ))
        }
    };
    let need_tokenizer = |what: &str| {
        moestream::Error::InvalidArgument(format!(
            "{what} needs a tokenizer, and {} has no tokenizer.json (use --prompt-ids)",
            dir.display()
        ))
    };
    let prompt_ids = match (&prompt, &tokenizer) {
        (Prompt::Ids(ids), _) => ids.clone(),
        (Prompt::Text(t), Some(tok)) => tok.encode(t, true)?,
        (Prompt::Chat(m), Some(tok)) => tok.encode_chat(m, &options.chat)?,
        _ => return Err(need_tokenizer("--prompt")),
    };
    if args.print_prompt_ids {
        println!("{}", serde_json::to_string(&prompt_ids).unwrap_or_default());
        return Ok(());
    }

    // Options: generation_config.json's defaults, then the flags.
    let s = &mut options.sampling;
    demo::apply_sampling_flags(s, args.temperature, args.top_p, args.top_k, args.seed);
    if let Some(p) = args.min_p {
        s.min_p = p;
    }
    if let Some(p) = args.repetition_penalty {
        s.repetition_penalty = p;
    }
    options.max_tokens = args
        .max_tokens
        .or(GenerationConfig::from_dir(&dir)?.max_new_tokens)
        .unwrap_or(if args.model.is_some() { 256 } else { 32 });
    options.stop = args.stop.clone();
    options.ignore_eos = args.ignore_eos;

    // The model.
    let mut builder = Model::builder(&dir);
    if let Some(b) = args.expert_cache_bytes.map(u64::from).or(default_budget) {
        builder = builder.expert_cache_bytes(b);
    }
    if args.kv_f16 {
        builder = builder.kv_cache_dtype(moestream::format::DType::F16);
    }
    let t_load = Instant::now();
    let model = builder.build()?;
    let cfg = model.config();
    eprintln!(
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
    let s = &options.sampling;
    eprintln!(
        "Prompt: {} tokens; sampling: {}",
        prompt_ids.len(),
        if s.is_greedy() {
            "greedy".to_string()
        } else {
            format!(
                "temperature {}, top-k {}, top-p {}, min-p {}, seed {}",
                s.temperature,
                s.top_k,
                s.top_p,
                s.min_p,
                s.seed.map_or("random".into(), |x| x.to_string())
            )
        }
    );
    let mut session = model.session(args.max_context)?;
    eprintln!(
        "KV cache: {:.1} MiB ({:?}) for {} tokens",
        session.kv_cache_bytes() as f64 / 1048576.0,
        model.kv_cache_dtype(),
        session.max_context()
    );

    if args.record_routing.is_some() {
        session.record_routing()?;
    }
    let Some(tokenizer) = tokenizer else {
        // No tokenizer: greedy ids, as before tokenizer support.
        ids_only(
            &mut session,
            &prompt_ids,
            &options,
            cfg.eos_token_ids.clone(),
        )?;
        return save_routing(&mut session, args.record_routing.as_deref());
    };
    // Ctrl-C stops the generation (on Unix) and still prints its statistics.
    let interrupt = demo::Interrupt::install();
    let mut options = options;
    options.cancel = Some(interrupt.handle());
    let c = interrupt.generating(|| {
        let generation = session.generate(&tokenizer, Prompt::Ids(prompt_ids), &options)?;
        demo::stream_text(generation, &mut std::io::stdout())
    })?;
    save_routing(&mut session, args.record_routing.as_deref())?;
    let Some(c) = c else {
        return Ok(());
    };
    let st = &c.stats;
    let total = session.stats();
    eprintln!(
        "finished: {}; prefill: {} tokens in {:.3}s ({:.1} tok/s); time to first token {:.3}s; decode: {} tokens in {:.3}s ({:.2} tok/s)",
        c.reason,
        st.prompt_tokens - st.cached_prompt_tokens,
        st.prefill_time.as_secs_f64(),
        st.prefill_tokens_per_second(),
        st.time_to_first_token.map_or(0.0, |d| d.as_secs_f64()),
        st.decode_steps,
        st.decode_time.as_secs_f64(),
        st.decode_tokens_per_second(),
    );
    eprintln!(
        "expert cache: hit rate {:.1}% overall; {:.1} MiB read from storage ({} expert reads, {:.3}s reading)",
        100.0 * total.cache.hit_rate(),
        total.cache.bytes_read as f64 / 1048576.0,
        total.cache.misses,
        total.cache.read_time.as_secs_f64(),
    );
    Ok(())
}

/// Writes the session's recorded routing to `path` (when recording).
fn save_routing(
    session: &mut moestream::Session,
    path: Option<&std::path::Path>,
) -> moestream::Result<()> {
    let (Some(path), Some(trace)) = (path, session.take_routing_trace()) else {
        return Ok(());
    };
    trace.write(path)?;
    let s = trace.stats();
    eprintln!(
        "routing trace: {} tokens x {} MoE layers written to {} (reuse {:.1}%, 90% of choices on {:.0}% of experts)",
        trace.len(),
        trace.header().moe_layers().len(),
        path.display(),
        100.0 * s.reuse,
        100.0 * s.coverage_90
    );
    Ok(())
}

/// Greedy generation printing token ids, for checkpoints without a tokenizer.
fn ids_only(
    session: &mut moestream::Session,
    prompt: &[u32],
    options: &GenerateOptions,
    eos: Vec<u32>,
) -> moestream::Result<()> {
    let mut sampler = moestream::sampling::Sampler::new(options.sampling.clone());
    sampler.observe_all(prompt);
    let t0 = Instant::now();
    let logits = session.prefill(prompt)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let after_prefill = session.stats();
    let mut next = sampler.sample(&logits);
    print!("Generated ids:");
    let t1 = Instant::now();
    let mut generated = 0;
    for _ in 0..options.max_tokens {
        print!(" {next}");
        let _ = std::io::stdout().flush();
        if (!options.ignore_eos && eos.contains(&next))
            || session.position() >= session.max_context()
        {
            break;
        }
        sampler.observe(next);
        let logits = session.step(next)?;
        generated += 1;
        next = sampler.sample(&logits);
    }
    println!();
    let decode_s = t1.elapsed().as_secs_f64();
    let total = session.stats();
    let decode = total.cache.since(&after_prefill.cache);
    eprintln!(
        "prefill: {} tokens in {:.3}s ({:.1} tok/s); decode: {} tokens in {:.3}s ({:.2} tok/s)",
        prompt.len(),
        prefill_s,
        prompt.len() as f64 / prefill_s,
        generated,
        decode_s,
        generated as f64 / decode_s.max(1e-9)
    );
    eprintln!(
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
    logging::init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
