//! The crate's one error type.

use std::path::PathBuf;

/// Result alias used throughout moestream.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure moestream reports. Each variant names what was wrong: the file, the
/// tensor, the layer or expert, the shapes involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error on a file.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// `config.json` is missing a field, has a wrong type or an inconsistent value.
    #[error("{path}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The checkpoint's architecture is not one moestream runs.
    #[error("{path}: unsupported model_type {model_type:?} (supported: {supported})")]
    UnsupportedModel {
        /// The config file.
        path: PathBuf,
        /// The `model_type` found.
        model_type: String,
        /// The model types this version supports.
        supported: &'static str,
    },

    /// A safetensors file (or its index) is malformed or truncated.
    #[error("{path}: invalid safetensors file: {reason}")]
    Safetensors {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A tensor the model needs is absent from the checkpoint.
    #[error("tensor {name:?} is missing from the checkpoint in {dir}")]
    MissingTensor {
        /// The tensor's name.
        name: String,
        /// The checkpoint folder.
        dir: PathBuf,
    },

    /// A tensor has a shape other than the config implies.
    #[error("tensor {name:?} in {path}: expected shape {expected:?}, found {found:?}")]
    Shape {
        /// The tensor's name.
        name: String,
        /// The file it is in.
        path: PathBuf,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape stored.
        found: Vec<usize>,
    },

    /// A tensor has a dtype moestream cannot use where it is.
    #[error(
        "tensor {name:?} in {path}: dtype {found} is not supported here (expected {expected})"
    )]
    Dtype {
        /// The tensor's name.
        name: String,
        /// The file it is in.
        path: PathBuf,
        /// The dtype stored.
        found: String,
        /// What is accepted.
        expected: &'static str,
    },

    /// A quantized tensor's parts (codes, scales, biases) do not describe a supported
    /// quantization.
    #[error("quantized tensor {name:?} in {path}: {reason}")]
    Quantization {
        /// The tensor's name.
        name: String,
        /// The file it is in.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// Reading an expert from an [`ExpertStore`](crate::ExpertStore) failed.
    #[error("expert store: layer {layer}, expert {expert}: {reason}")]
    ExpertRead {
        /// Decoder layer index.
        layer: usize,
        /// Expert index within the layer.
        expert: usize,
        /// What went wrong.
        reason: String,
        /// The underlying error, where there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// An expert pack (a `moestream-pack` folder, see [`PackedStore`](crate::PackedStore))
    /// is malformed, incomplete (e.g. a truncated layer file, an interrupted conversion),
    /// or was made from a different checkpoint than the one it sits next to.
    #[error("expert pack {path}: {reason}")]
    Pack {
        /// The pack folder, or the file in it that is wrong.
        path: PathBuf,
        /// What is wrong, and what to do about it.
        reason: String,
    },

    /// The session's KV cache cannot hold the tokens asked for.
    #[error("context overflow: {needed} tokens needed, the session holds at most {capacity}")]
    ContextOverflow {
        /// Tokens the call would bring the context to.
        needed: usize,
        /// The session's maximum context.
        capacity: usize,
    },

    /// A token id is not below the vocabulary size.
    #[error("token id {id} at input position {index} is out of range (vocab size {vocab_size})")]
    TokenOutOfRange {
        /// The bad id.
        id: u32,
        /// Its index in the input.
        index: usize,
        /// The model's vocabulary size.
        vocab_size: usize,
    },

    /// A tokenizer could not be loaded (a missing or malformed `tokenizer.json` or
    /// `tokenizer_config.json`), or encoding or decoding failed.
    #[error("tokenizer{}: {reason}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Tokenizer {
        /// The file involved, if any.
        path: Option<PathBuf>,
        /// What went wrong.
        reason: String,
    },

    /// A chat template failed to compile or to render, or called `raise_exception` (the
    /// reason is then the template's message, e.g. "Conversation roles must alternate").
    #[error("{template}: {reason}")]
    Template {
        /// Which template: its file, and its name for named templates.
        template: String,
        /// What went wrong.
        reason: String,
    },

    /// A caller-supplied argument or option is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// No usable GPU adapter was found, or the one asked for is absent.
    #[error("GPU adapter: {0}")]
    Adapter(String),

    /// The GPU device reported an error (validation, out of memory, device lost), or a
    /// model needs more than the device's limits allow.
    #[error("GPU: {0}")]
    Gpu(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
