//! `moestream-server`: an OpenAI-compatible HTTP server for one model (docs/server.md).
//!
//! ```text
//! cargo run --release --features server --bin moestream-server -- --model DIR \
//!     [--expert-cache-bytes 8G] [--port 8000] [--host 127.0.0.1] [--max-context 8192]
//! cargo run --release --features server --bin moestream-server   # the synthetic demo model
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use moestream::server::{ServerConfig, ServerHandle};
use moestream::units::ByteSize;

#[derive(Parser, Debug)]
#[command(
    about = "An OpenAI-compatible server for a Mixture-of-Experts model, experts streamed from storage"
)]
struct Args {
    /// Checkpoint folder (config.json, safetensors, tokenizer.json). Default: a synthetic
    /// demo model (random weights: its output is meaningless).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The model's id in the API (default: the folder's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Expert-cache budget: bytes, or with a unit (8G, 512M; default: 2 GiB for --model,
    /// a quarter of the experts for the demo).
    #[arg(long)]
    expert_cache_bytes: Option<ByteSize>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Context of each request, prompt and reply (default: the model's, at most 8192).
    #[arg(long)]
    max_context: Option<usize>,
    /// Generations run at once.
    #[arg(long, default_value_t = 2)]
    max_concurrent: usize,
    /// Requests that may wait for a slot; more get 429.
    #[arg(long, default_value_t = 16)]
    max_queue: usize,
    /// GPU memory the prompt cache keeps finished requests' states in (0: off).
    #[arg(long, default_value = "2G")]
    prompt_cache_bytes: ByteSize,
    /// Keep KV caches in f16 (half the memory per token).
    #[arg(long)]
    kv_f16: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = ServerConfig::new(args.model.clone());
    config.model_id = args.served_model_name;
    config.expert_cache_bytes = args.expert_cache_bytes.map(u64::from);
    config.addr = SocketAddr::new(args.host, args.port);
    config.max_context = args.max_context;
    config.max_concurrent = args.max_concurrent.max(1);
    config.max_queue = args.max_queue;
    config.prompt_cache_bytes = args.prompt_cache_bytes.bytes();
    config.kv_f16 = args.kv_f16;
    config.stop_on_signal = true;
    if args.model.is_none() {
        eprintln!(
            "No --model given: serving a SYNTHETIC random-weight Qwen3-MoE model with a made-up \
             word tokenizer (its output is meaningless), written once to {}.",
            moestream::synthetic::demo_dir().display()
        );
    }
    eprintln!("Loading ...");
    let server = match ServerHandle::start(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "Serving model `{}` at http://{} (OpenAI API under /v1; /health, /metrics). Ctrl-C stops.",
        server.model_id(),
        server.local_addr()
    );
    match server.wait() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
