//! What a server runs and how: [`ServerConfig`], and the byte sizes its flags take.

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

/// A byte count as people write it: `8G`, `512M`, `1.5GiB`, `4000000000`, `64k` (K, M, G,
/// T in powers of 1024, with or without `B` / `iB`; a plain number is bytes); `0` is
/// allowed (e.g. to turn the prompt cache off).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 8G, 512M, 4000000000)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?} (K, M, G or T)"
            ))
        }
    };
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is not a usable size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("4000000000"), Ok(4_000_000_000));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("8X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("-1G").is_err());
    }
}
