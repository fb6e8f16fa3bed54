#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod arch;
mod cache;
mod chat;
mod checkpoint;
mod config;
mod dtype;
mod engine;
mod error;
mod format;
mod generate;
#[cfg(feature = "testkit")]
pub mod golden;
#[cfg(feature = "testkit")]
pub mod gpu;
#[cfg(not(feature = "testkit"))]
#[allow(dead_code)]
mod gpu;
mod io;
mod model;
#[cfg(feature = "testkit")]
pub mod reference;
// The engine uses its RoPE tables; the rest is for tests (public with `testkit`).
#[cfg(not(feature = "testkit"))]
#[allow(dead_code, unused_imports)]
mod reference;
pub mod routing;
mod sampling;
#[cfg(feature = "server")]
pub mod server;
mod session;
mod store;
#[cfg(feature = "testkit")]
pub mod synthetic;
mod tokenizer;
pub mod units;

/// The `wgpu` crate moestream runs on, re-exported so that its types in moestream's API
/// ([`ModelBuilder::wgpu_device`] takes an application's `Adapter`, `Device` and `Queue`;
/// [`ModelBuilder::plan_with_limits`] a `Limits`) are the ones an application names:
/// use `moestream::wgpu` (or depend on the same major version of `wgpu`).
pub use wgpu;

pub use cache::{CachePolicy, CacheStats, LFU_AGING_PERIOD};
pub use chat::{ChatMessage, ChatOptions, ChatTemplate, ChatTemplates};
pub use checkpoint::{Checkpoint, CheckpointFile, MatrixView, TensorEntry, TensorView};
pub use config::{ModelConfig, Yarn, SUPPORTED_MODEL_TYPES};
pub use dtype::DType;
pub use error::{Error, Result};
pub use format::{AffineQuant, WeightFormat};
pub use generate::{
    CancelHandle, Chat, Completion, FinishReason, GenerateOptions, Generation, GenerationEvent,
    GenerationStats, Prompt, DEFAULT_MAX_TOKENS,
};
pub use gpu::{AdapterChoice, AdapterSummary, ADAPTER_ENV};
pub use model::{
    LoadProgress, MemoryPlan, Model, ModelBuilder, PlannedBuffer, SessionPlan,
    DEFAULT_EXPERT_CACHE_BYTES, DEFAULT_IO_THREADS, DEFAULT_READBACK_SPIN,
};
pub use sampling::{
    Candidate, GenerationConfig, LogitsNeeded, Sampler, SamplingParams, TokenLogprob,
    MAX_LOGIT_BIAS, MAX_LOGPROBS, MAX_PENALTY,
};
pub use session::{Session, SessionStats, MAX_PASS_TOKENS, MAX_TOP};
pub use store::{
    checkpoint_identity, pack_experts, pack_experts_from, PackOptions, PackOutcome, PackProgress,
    PackSummary, PackedStore, PackedStoreOptions, PACK_DIR_NAME, PACK_FORMAT, PACK_VERSION,
};
pub use store::{
    AlignedBuf, ExpertLayout, ExpertRole, ExpertStore, ExpertTensor, MemoryStore, SafetensorsStore,
    READ_ALIGN,
};
#[cfg(feature = "tokenizers")]
pub use tokenizer::HfTokenizer;
pub use tokenizer::{IncrementalDecoder, SpecialTokens, TextTokenizer, Tokenizer};
