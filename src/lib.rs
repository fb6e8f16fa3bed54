#![doc = include_str!("../README.md")]
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
