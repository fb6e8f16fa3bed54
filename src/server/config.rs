//! What a server runs and how: [`ServerConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;

/// How a server is set up. [`Default`] serves the synthetic demo model on
/// `127.0.0.1:8000`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Checkpoint folder (`config.json`, safetensors, `tokenizer.json`); `None` serves the
    /// synthetic demo model ([`crate::synthetic::write_demo`]).
    pub model: Option<PathBuf>,
    /// The model's id in the API (`model` of requests, `/v1/models`); default: the
    /// folder's name (`synthetic-demo` for the demo).
    pub model_id: Option<String>,
    /// GPU memory for experts in bytes; default: the builder's for a model folder, a
    /// quarter of the experts for the demo.
    pub expert_cache_bytes: Option<u64>,
    /// Keep KV caches in f16.
    pub kv_f16: bool,
    /// Address to listen on (port 0: any free port, see
    /// [`ServerHandle::local_addr`](super::ServerHandle::local_addr)).
    pub addr: SocketAddr,
    /// Tokens of context of each request's session (prompt and reply); default the
    /// smaller of the model's `max_position_embeddings` and 8192.
    pub max_context: Option<usize>,
    /// Generations run at once, each in its own session on the shared model.
    pub max_concurrent: usize,
    /// Requests waiting for a generation slot; past it a request gets 429 with
    /// `Retry-After`.
    pub max_queue: usize,
    /// GPU memory the prompt cache may keep in finished sessions' states (0: off).
    pub prompt_cache_bytes: u64,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Stop on Ctrl-C / SIGTERM (the binary); tests stop through
    /// [`ServerHandle::shutdown`](super::ServerHandle::shutdown).
    pub stop_on_signal: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model: None,
            model_id: None,
            expert_cache_bytes: None,
            kv_f16: false,
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            max_context: None,
            max_concurrent: 2,
            max_queue: 16,
            prompt_cache_bytes: 2 << 30,
            max_body_bytes: 32 << 20,
            stop_on_signal: false,
        }
    }
}

impl ServerConfig {
    /// The defaults, serving `model` (`None`: the demo).
    pub fn new(model: Option<PathBuf>) -> Self {
        ServerConfig {
            model,
            ..Self::default()
        }
    }
}
