//! Interactive multi-turn chat in the terminal. Each turn reuses the KV cache of the
//! conversation so far and prefills only the new tokens.
//!
//! ```text
//! cargo run --release --example chat -- --model DIR [--system "You are terse."]
//! printf 'Hello\nAnd again\n/quit\n' | cargo run --release --example chat -- --model DIR
//! cargo run --release --example chat                      # synthetic demo model
//! ```
//! Commands: `/reset` (new conversation, the system message kept), `/quit` (or end of
//! input). Ctrl-C stops the reply being written (on Unix) and, at the prompt, leaves.
//! Lines are read from stdin, so piped input works too (it is echoed after `> `).
//! Sampling defaults come from `generation_config.json`; the flags override them.

#[path = "support/demo.rs"]
mod demo;

#[path = "support/logging.rs"]
mod logging;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use moestream::{
    Chat, ChatMessage, FinishReason, GenerateOptions, GenerationConfig, Model, Tokenizer,
};

#[derive(Parser, Debug)]
#[command(about = "Chat with a model in the terminal (moestream)")]
struct Args {
    /// Checkpoint folder (config.json, safetensors, tokenizer files with a chat template).
    /// Default: a synthetic demo model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// System message.
    #[arg(long)]
    system: Option<String>,
    /// Extra chat-template variables as a JSON object, e.g. '{"enable_thinking": false}'.
    #[arg(long)]
    chat_template_kwargs: Option<String>,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling threshold.
    #[arg(long)]
    top_p: Option<f32>,
    /// Keep the k most likely tokens (0: off).
    #[arg(long)]
    top_k: Option<usize>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Expert-cache budget: bytes, or with a unit (8G, 512M).
    #[arg(long)]
    expert_cache_bytes: Option<moestream::units::ByteSize>,
    /// Keep the KV cache in f16 (half the memory per token of context).
    #[arg(long)]
    kv_f16: bool,
    /// Maximum context (tokens of the whole conversation).
    #[arg(long, default_value_t = 8192)]
    max_context: usize,
}

fn run(args: Args) -> moestream::Result<()> {
    let (dir, default_budget) = match &args.model {
        Some(d) => {
            demo::check_model_dir(d)?;
            (d.clone(), None)
        }
        None => {
            let (dir, budget) = demo::demo_model()?;
            (dir, Some(budget))
        }
    };
    let tokenizer = Tokenizer::from_dir(&dir)?;
    if tokenizer.chat_templates().is_empty() {
        return Err(moestream::Error::InvalidArgument(format!(
            "{} has no chat template (chat_template.jinja or tokenizer_config.json)",
            dir.display()
        )));
    }
    let mut options = GenerateOptions::from_generation_config(&GenerationConfig::from_dir(&dir)?);
    if let Some(k) = &args.chat_template_kwargs {
        options.chat = options.chat.kwargs_json(k)?;
    }
    let s = &mut options.sampling;
    demo::apply_sampling_flags(s, args.temperature, args.top_p, args.top_k, args.seed);
    options.max_tokens = args.max_tokens;
    let interrupt = demo::Interrupt::install();
    options.cancel = Some(interrupt.handle());

    let mut builder = Model::builder(&dir);
    if let Some(b) = args.expert_cache_bytes.map(u64::from).or(default_budget) {
        builder = builder.expert_cache_bytes(b);
    }
    if args.kv_f16 {
        builder = builder.kv_cache_dtype(moestream::format::DType::F16);
    }
    let model = builder.build()?;
    eprintln!(
        "{} on {} ({}). /reset starts over, /quit (or end of input) leaves, Ctrl-C stops a reply.",
        dir.display(),
        model.adapter().name,
        model.adapter().backend
    );
    let mut chat = Chat::new(model.session(args.max_context)?, tokenizer, options);
    let start = |chat: &mut Chat| {
        if let Some(s) = &args.system {
            chat.push(ChatMessage::system(s.clone()));
        }
    };
    start(&mut chat);

    let interactive = std::io::stdin().is_terminal();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut out = std::io::stdout();
    loop {
        if interactive {
            let _ = write!(out, "> ");
            let _ = out.flush();
        }
        let Some(line) = lines.next() else { break };
        let line = line.map_err(|e| moestream::Error::Io {
            path: PathBuf::from("<stdin>"),
            cause: e,
        })?;
        let line = line.trim();
        if !interactive {
            let _ = writeln!(out, "> {line}");
        }
        match line {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                chat.reset();
                start(&mut chat);
                eprintln!("[new conversation]");
                continue;
            }
            _ => {}
        }
        let reply = interrupt.generating(|| match chat.send(line) {
            Ok(generation) => demo::stream_text(generation, &mut out).map(Some),
            Err(e) => {
                // E.g. the template rejects the conversation, or it no longer fits.
                eprintln!("[error: {e}]");
                Ok(None)
            }
        })?;
        if let Some(c) = reply.flatten() {
            let st = &c.stats;
            eprintln!(
                "[{}; {} tokens, {:.2} tok/s, first token after {:.2}s; prompt {} tokens, {} from cache; expert hit rate {:.1}%, {:.1} MiB read]",
                c.reason,
                st.generated_tokens,
                st.decode_tokens_per_second(),
                st.time_to_first_token.map_or(0.0, |d| d.as_secs_f64()),
                st.prompt_tokens,
                st.cached_prompt_tokens,
                100.0 * st.cache.hit_rate(),
                st.cache.bytes_read as f64 / 1048576.0,
            );
            if c.reason == FinishReason::ContextFull {
                eprintln!("[the context is full: /reset to start over]");
            }
        }
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
