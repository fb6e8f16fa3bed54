//! The crate's one error type.

use std::path::PathBuf;

/// Result alias used throughout moestream.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure moestream reports. Each variant names what was wrong: the file, the
/// tensor, the layer or expert, the shapes involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error on a file. (Display prints the cause; it is not also
    /// chained as [`std::error::Error::source`], so a report prints it once.)
    #[error("I/O error on {}: {cause}", path.display())]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
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

    /// Reading an expert from an [`ExpertStore`](crate::ExpertStore) failed. Display prints
    /// the cause after the reason (once: it is not chained as `source()` too).
    #[error("expert store: layer {layer}, expert {expert}: {reason}{}", cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    ExpertRead {
        /// Decoder layer index.
        layer: usize,
        /// Expert index within the layer.
        expert: usize,
        /// What went wrong.
        reason: String,
        /// The underlying error, where there is one.
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
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

    /// A routing trace file ([`RoutingTrace`](crate::routing::RoutingTrace)) is malformed:
    /// a bad header, a line too long, an expert id out of range or repeated within a layer,
    /// the wrong number of layers or experts on a token's line. Says where: the file, and
    /// where known the line, the token (counted from 0) and the decoder layer.
    #[error("routing trace {}{}: {reason}", path.display(), trace_location(*line, *token, *layer))]
    RoutingTrace {
        /// The trace file (or the name the reader was given).
        path: PathBuf,
        /// The line (counted from 1), where the problem is on one.
        line: Option<usize>,
        /// The token (counted from 0), where the problem is in a token's routing.
        token: Option<usize>,
        /// The decoder layer, where the problem is in one layer's experts.
        layer: Option<usize>,
        /// What is wrong.
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

    /// The GPU could not allocate memory for `what` (a buffer of `requested` bytes where
    /// known). Retryable with less: a smaller expert cache or context
    /// ([`Error::is_retryable`]).
    #[error("GPU out of memory: {what}{}", requested.map(|b| format!(" ({b} bytes)")).unwrap_or_default())]
    GpuOutOfMemory {
        /// What was being allocated.
        what: String,
        /// Its size in bytes, where known.
        requested: Option<u64>,
    },

    /// Something needs a buffer or binding larger than a limit of the device (e.g. the
    /// largest storage binding: 128 MiB on some mobile GPUs). Retryable only where `what`
    /// scales with an option (an expert cache page, a context length).
    #[error("{what} needs {requested} bytes, more than the device's {limit_name} ({limit} bytes)")]
    DeviceLimit {
        /// What needs it (a tensor, one expert, a layer's KV cache...).
        what: String,
        /// Bytes needed.
        requested: u64,
        /// Which limit (`max_storage_buffer_binding_size`, ...).
        limit_name: &'static str,
        /// The device's value of that limit.
        limit: u64,
    },

    /// A wgpu device handed to [`ModelBuilder::wgpu_device`](crate::ModelBuilder::wgpu_device)
    /// lacks a capability moestream's kernels need: `what` names the wgpu limit (e.g.
    /// `max_storage_buffers_per_shader_stage`) or the downlevel flag (then `needed` is 1 and
    /// `found` 0). Create the device with at least [`wgpu::Limits::default()`] (WebGPU's
    /// defaults) or with the adapter's own [`limits`](wgpu::Adapter::limits), which also
    /// allow the largest buffers. Not retryable: the same device fails the same way.
    #[error("the GPU device's {what} is {found}, below the {needed} moestream needs")]
    DeviceRequirement {
        /// The limit or capability (as wgpu names it).
        what: &'static str,
        /// The least value moestream needs.
        needed: u64,
        /// The device's value.
        found: u64,
    },

    /// The GPU device was lost (a driver reset or a removed GPU): the model must be opened
    /// again.
    #[error("GPU device lost: {0}")]
    DeviceLost(String),

    /// The GPU rejected a command (wgpu validation): a moestream bug or a driver problem.
    #[error("GPU validation error: {0}")]
    GpuValidation(String),

    /// The GPU failed otherwise: mapping a readback buffer, waiting for submitted work, an
    /// internal error of the driver.
    #[error("GPU: {0}")]
    Gpu(String),

    /// The threads that read experts from storage could not start or have stopped (a
    /// storage failure, not a GPU one; the expert store's own read errors are
    /// [`Error::ExpertRead`]).
    #[error("expert I/O threads: {0}")]
    IoThreads(String),

    /// The OpenAI-compatible server (feature `server`) could not start: its address could
    /// not be bound, or its runtime or threads could not be created.
    #[error("server: {0}")]
    Server(String),

    /// A moestream invariant was broken (a bug: please report it with the message).
    #[error("internal error: {0}")]
    Internal(String),
}

/// ", line 3, token 1, layer 5" for the parts known.
fn trace_location(line: Option<usize>, token: Option<usize>, layer: Option<usize>) -> String {
    let mut s = String::new();
    for (name, v) in [("line", line), ("token", token), ("layer", layer)] {
        if let Some(v) = v {
            s.push_str(&format!(", {name} {v}"));
        }
    }
    s
}

impl Error {
    /// The operating-system error underneath, if any: of [`Error::Io`], or the cause of an
    /// [`Error::ExpertRead`] when it is an I/O error (e.g. to tell a vanished file,
    /// `NotFound`, from a short read, `UnexpectedEof`). Causes are printed by Display,
    /// not chained as `source()`, so this is how to reach them.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            Error::Io { cause, .. } => Some(cause),
            Error::ExpertRead { cause: Some(c), .. } => {
                let mut e: Option<&(dyn std::error::Error + 'static)> = Some(c.as_ref());
                while let Some(err) = e {
                    if let Some(io) = err.downcast_ref::<std::io::Error>() {
                        return Some(io);
                    }
                    e = err.source();
                }
                None
            }
            _ => None,
        }
    }

    /// Whether the same call may succeed if retried, perhaps with smaller sizes: out of
    /// GPU memory (retry with a smaller expert cache or context), an expert read that
    /// failed (storage errors may be transient; a failed step leaves its session as it
    /// was), I/O errors and stopped I/O threads. Device loss, validation, device limits
    /// and input errors (a context overflow included) are not: the same input fails the
    /// same way.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::GpuOutOfMemory { .. }
                | Error::ExpertRead { .. }
                | Error::Io { .. }
                | Error::IoThreads(_)
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause,
        }
    }
}
