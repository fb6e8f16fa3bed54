#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod checkpoint;
mod config;
mod dtype;
mod error;
mod names;
pub mod reference;
mod store;

pub use checkpoint::{Checkpoint, CheckpointFile, TensorEntry, TensorView};
pub use config::{ModelConfig, SUPPORTED_MODEL_TYPES};
pub use dtype::DType;
pub use error::{Error, Result};
pub use store::{ExpertLayout, ExpertRole, ExpertStore, ExpertTensor, MemoryStore, SafetensorsStore};
