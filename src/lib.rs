#![doc = include_str!("../README.md")]
//!
//! ## Where things are
//!
//! The crate root holds what nearly every application names: [`Model`], [`ModelBuilder`],
//! [`Session`], the expert stores ([`ExpertStore`], [`SafetensorsStore`], [`PackedStore`],
//! [`MemoryStore`]), generation ([`GenerateOptions`], [`Prompt`], [`Generation`],
//! [`GenerationEvent`], [`Completion`], [`FinishReason`], [`CancelHandle`], [`Chat`],
//! [`SamplingParams`], [`GenerationConfig`]), text ([`Tokenizer`], [`ChatMessage`]), errors
//! ([`Error`], [`Result`]) and [`wgpu`]. The rest is grouped by what it holds, in the order
//! data flows from a checkpoint folder to generated text:
//!
//! | module | holds |
//! | --- | --- |
//! | [`config`] | `config.json`: [`ModelConfig`](config::ModelConfig), [`Yarn`](config::Yarn), the supported model types |
//! | [`checkpoint`] | the safetensors files: [`Checkpoint`](checkpoint::Checkpoint), tensor and matrix views |
//! | [`format`](mod@format) | how weights are stored: [`DType`](format::DType), [`WeightFormat`](format::WeightFormat), [`AffineQuant`](format::AffineQuant) |
//! | [`store`] | where experts come from: the [`ExpertStore`] trait and its layout types, the stores, packing ([`pack_experts`](store::pack_experts)) |
//! | [`cache`] | the GPU expert cache: [`CachePolicy`](cache::CachePolicy), [`CacheStats`](cache::CacheStats) |
//! | [`adapter`] | which GPU: [`AdapterChoice`](adapter::AdapterChoice), [`AdapterSummary`](adapter::AdapterSummary) |
//! | [`model`] | [`Model`], [`ModelBuilder`], the memory plan, load progress, defaults |
//! | [`session`] | [`Session`], [`SessionStats`](session::SessionStats), its limits |
//! | [`sampling`] | [`SamplingParams`], [`Sampler`](sampling::Sampler), [`GenerationConfig`], log-probabilities |
//! | [`tokenizer`] | [`Tokenizer`], the [`TextTokenizer`](tokenizer::TextTokenizer) trait, [`HfTokenizer`](tokenizer::HfTokenizer) (feature `tokenizers`), incremental decoding |
//! | [`chat`] | chat templates: [`ChatMessage`], [`ChatOptions`](chat::ChatOptions), [`ChatTemplates`](chat::ChatTemplates) |
//! | [`generation`] | [`Session::generate`] and its types, [`GenerationStats`](generation::GenerationStats) |
//! | [`routing`] | routing traces, for benchmarking the expert cache |
//! | [`arch`] | the per-family layer plans (documentation; not covered by the semver promise) |
//!
//! What is stable, and how it is versioned: `docs/api.md`.
#![warn(missing_docs)]

pub mod adapter;
pub mod arch;
pub mod cache;
pub mod chat;
pub mod checkpoint;
pub mod config;
mod dtype;
mod engine;
mod error;
pub mod format;
pub mod generation;
#[cfg(feature = "testkit")]
pub mod golden;
#[cfg(feature = "testkit")]
pub mod gpu;
#[cfg(not(feature = "testkit"))]
#[allow(dead_code)]
mod gpu;
mod io;
pub mod model;
#[cfg(feature = "testkit")]
pub mod reference;
// The engine uses its RoPE tables; the rest is for tests (public with `testkit`).
#[cfg(not(feature = "testkit"))]
#[allow(dead_code, unused_imports)]
mod reference;
pub mod routing;
pub mod sampling;
#[cfg(feature = "server")]
pub mod server;
pub mod session;
pub mod store;
#[cfg(feature = "testkit")]
pub mod synthetic;
pub mod tokenizer;
pub mod units;

/// The `wgpu` crate moestream runs on, re-exported so that its types in moestream's API
/// ([`ModelBuilder::wgpu_device`] takes an application's `Adapter`, `Device` and `Queue`;
/// [`ModelBuilder::plan_with_limits`] a `Limits`) are the ones an application names:
/// use `moestream::wgpu` (or depend on the same major version of `wgpu`).
pub use wgpu;

#[doc(inline)]
pub use chat::ChatMessage;
#[doc(inline)]
pub use error::{Error, Result};
#[doc(inline)]
pub use generation::{
    CancelHandle, Chat, Completion, FinishReason, GenerateOptions, Generation, GenerationEvent,
    Prompt,
};
#[doc(inline)]
pub use model::{Model, ModelBuilder};
#[doc(inline)]
pub use sampling::{GenerationConfig, SamplingParams};
#[doc(inline)]
pub use session::Session;
#[doc(inline)]
pub use store::{ExpertStore, MemoryStore, PackedStore, SafetensorsStore};
#[doc(inline)]
pub use tokenizer::Tokenizer;
