//! What every request shares: the model, its tokenizer and defaults, the generation slots
//! and their queue, the prompt cache and the counters.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::ServerConfig;
use super::errors::ApiError;
use super::metrics::{Gauges, Metrics};
use super::prompt_cache::PromptCache;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::sampling::{GenerationConfig, SamplingParams};
use crate::tokenizer::Tokenizer;

/// The shared state of a running server.
pub(crate) struct App {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub model_id: String,
    /// Unix time the server started (`created` of `/v1/models`).
    pub created: u64,
    /// Sampling defaults: `generation_config.json`'s values where it has them, OpenAI's
    /// otherwise (temperature 1, no truncation).
    pub sampling: SamplingParams,
    /// `generation_config.json`'s end-of-sequence ids.
    pub eos_token_ids: Vec<u32>,
    pub max_context: usize,
    pub slots: Slots,
    cache: Mutex<PromptCache>,
    pub metrics: Metrics,
}

impl App {
    /// Loads the model named by `config` (the demo without one).
    pub fn load(config: &ServerConfig) -> Result<App> {
        let (dir, demo_budget, default_id) = match &config.model {
            Some(dir) => {
                if !dir.is_dir() {
                    return Err(Error::InvalidArgument(format!(
                        "--model {}: no such folder",
                        dir.display()
                    )));
                }
                let name = dir
                    .canonicalize()
                    .ok()
                    .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "model".into());
                (dir.clone(), None, name)
            }
            None => {
                let (dir, budget) = crate::synthetic::write_demo(crate::synthetic::demo_dir())?;
                (dir, Some(budget), "synthetic-demo".to_string())
            }
        };
        let tokenizer = Tokenizer::from_dir(&dir)?;
        let gc = GenerationConfig::from_dir(&dir)?;
        let mut builder = Model::builder(&dir);
        if let Some(b) = config.expert_cache_bytes.or(demo_budget) {
            builder = builder.expert_cache_bytes(b);
        }
        if config.kv_f16 {
            builder = builder.kv_cache_dtype(crate::format::DType::F16);
        }
        let model = builder.build()?;
        let cfg = model.config();
        let max_context = config
            .max_context
            .unwrap_or_else(|| cfg.max_position_embeddings.clamp(1, 8192));
        if max_context < 2 {
            return Err(Error::InvalidArgument(
                "max_context must be at least 2".into(),
            ));
        }
        let rewind = !cfg.layers.iter().any(|l| l.linear_attention().is_some());
        let sampling = SamplingParams {
            temperature: gc.temperature.unwrap_or(1.0),
            top_k: gc.top_k.unwrap_or(0),
            top_p: gc.top_p.unwrap_or(1.0),
            min_p: gc.min_p.unwrap_or(0.0),
            repetition_penalty: gc.repetition_penalty.unwrap_or(1.0),
            ..SamplingParams::greedy()
        };
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(App {
            model,
            tokenizer,
            model_id: config.model_id.clone().unwrap_or(default_id),
            created,
            sampling,
            eos_token_ids: gc.eos_token_ids.clone(),
            max_context,
            slots: Slots::new(config.max_concurrent.max(1), config.max_queue),
            cache: Mutex::new(PromptCache::new(config.prompt_cache_bytes, rewind)),
            metrics: Metrics::default(),
        })
    }

    /// The prompt cache (a poisoned lock is taken over: its entries stay consistent).
    pub fn cache(&self) -> MutexGuard<'_, PromptCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a request's `model`.
    pub fn check_model(&self, model: Option<&str>) -> std::result::Result<(), ApiError> {
        match model {
            None => Err(ApiError::invalid(
                "You must provide a model parameter",
                Some("model"),
            )),
            Some(m) if m == self.model_id => Ok(()),
            Some(m) => Err(ApiError::unknown_model(m, &self.model_id)),
        }
    }

    /// The values `/metrics` reads at scrape time.
    pub fn gauges(&self) -> Gauges {
        let cache = self.cache();
        Gauges {
            queue: self.slots.waiting(),
            active: self.slots.active(),
            max_concurrent: self.slots.max,
            prompt_cache_entries: cache.len(),
            prompt_cache_bytes: cache.bytes(),
            expert_cache: self.model.cache_stats(),
        }
    }
}

/// Generation slots and the queue in front of them.
pub(crate) struct Slots {
    permits: Arc<Semaphore>,
    max: usize,
    max_queue: usize,
    waiting: AtomicUsize,
}

/// Counts a queued request until dropped (also when the client goes away while waiting).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Slots {
    fn new(max: usize, max_queue: usize) -> Self {
        Slots {
            permits: Arc::new(Semaphore::new(max)),
            max,
            max_queue,
            waiting: AtomicUsize::new(0),
        }
    }

    /// Requests waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Slots taken.
    pub fn active(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// A slot: at once if one is free, after waiting in the queue otherwise; 429 when the
    /// queue is full.
    pub async fn acquire(&self) -> std::result::Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(p);
        }
        let before = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        if before >= self.max_queue {
            return Err(ApiError::overloaded(before));
        }
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("the server is shutting down"))
    }
}
