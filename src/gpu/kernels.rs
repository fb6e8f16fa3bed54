//! The WGSL compute kernels: one per file in `kernels/`, plus the shared helpers of
//! `kernels/include/` prepended to the kernels that need them: the dtype helpers
//! (`dtype.wgsl`) to every kernel that reads weights, the MLX affine-quantization helpers
//! (`quant.wgsl`) to the kernels that read quantized weights.
//!
//! Override constants (pipeline constants, see [`Kernel::constants`]): `WDT` is the weight
//! dtype of float kernels and the scale/bias dtype of quantized ones (0 = f32, 1 = f16,
//! 2 = bf16); `BITS` and `GROUP` are the bits per code and the group size of quantized
//! kernels. Each kernel's dispatch grid comes from the `*_groups` function of the same
//! name here, so callers need not know workgroup shapes.

use super::recorder::grid_of;

/// A compute kernel of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// Token embedding lookup.
    Embedding,
    /// RMSNorm over rows.
    RmsNorm,
    /// Decode mat-vec with f32 accumulation.
    MatVec,
    /// Prefill mat-mat with f32 accumulation.
    MatMul,
    /// Rotary position embedding (rotate-half form).
    Rope,
    /// Causal attention over the KV cache (prefill and decode).
    Attention,
    /// Router softmax, top-k and renormalization.
    Router,
    /// SwiGLU activation of dense MLPs.
    SwiGlu,
    /// Expert gate/up projections + SwiGLU through cache slots.
    MoeGateUp,
    /// Expert down projection scaled by the routing weight, through cache slots.
    MoeDown,
    /// Weighted expert combine + residual.
    MoeCombine,
    /// Decode mat-vec over MLX affine-quantized weights ([`qmatvec_groups`]). Reads x as
    /// vec4s: its `x_offset` must be a multiple of 4 (every output is NaN otherwise).
    QMatVec,
    /// Prefill mat-mat over MLX affine-quantized weights ([`qmatmul_groups`]).
    QMatMul,
    /// Token embedding lookup from an MLX affine-quantized table ([`qembedding_groups`]).
    QEmbedding,
    /// Expert gate/up projections + SwiGLU over quantized experts in cache slots
    /// ([`moe_gate_up_q_groups`]).
    MoeGateUpQ,
    /// Expert down projection over quantized experts in cache slots, scaled by the routing
    /// weight ([`moe_down_q_groups`]).
    MoeDownQ,
    /// Plain vec4 copy: the memory-bandwidth baseline of the benchmarks ([`copy_groups`]).
    Copy,
    /// Decode routing through the GPU slot table, without a host round trip.
    MoeRoute,
    /// Top-n logits per chunk of the vocabulary, for a small readback ([`topk_groups`]).
    TopK,
}

/// A shared WGSL file of `kernels/include/`, prepended to the kernels that use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Include {
    /// `dtype.wgsl`: the `WDT` override and f16/bf16 decoding.
    Dtype,
    /// `quant.wgsl`: the `BITS` / `GROUP` overrides and MLX affine code unpacking.
    Quant,
}

impl Include {
    /// File stem in `kernels/include/`.
    pub fn name(self) -> &'static str {
        match self {
            Include::Dtype => "dtype",
            Include::Quant => "quant",
        }
    }

    /// The WGSL text.
    pub fn source(self) -> &'static str {
        match self {
            Include::Dtype => DTYPE_INCLUDE,
            Include::Quant => QUANT_INCLUDE,
        }
    }
}

const DTYPE_INCLUDE: &str = include_str!("../../kernels/include/dtype.wgsl");
const QUANT_INCLUDE: &str = include_str!("../../kernels/include/quant.wgsl");

/// Rows per workgroup of [`Kernel::QMatVec`] (`ROWS` in `kernels/qmatvec.wgsl`).
const QMATVEC_ROWS: u32 = 4;
/// Rows and tokens per workgroup tile of [`Kernel::QMatMul`] (`TR`, `TT` in
/// `kernels/qmatmul.wgsl`).
const QMATMUL_ROWS: u32 = 32;
const QMATMUL_TOKENS: u32 = 32;
/// Output octets (8 values) per workgroup of [`Kernel::QEmbedding`] (its workgroup size).
const QEMBEDDING_OCTETS: u32 = 64;
/// Rows per workgroup of [`Kernel::MoeGateUpQ`] and [`Kernel::MoeDownQ`] (`ROWS` in their
/// WGSL).
const MOE_Q_ROWS: u32 = 4;

/// Logits per workgroup of [`Kernel::TopK`].
pub const TOPK_CHUNK: u32 = 2048;

/// Grid of [`Kernel::TopK`] over a vocabulary of `n_vocab` logits.
pub fn topk_groups(n_vocab: u32) -> (u32, u32) {
    (n_vocab.div_ceil(TOPK_CHUNK).max(1), 1)
}

/// Grid of [`Kernel::Copy`] over `vec4_words` 16-byte words.
pub fn copy_groups(vec4_words: u32) -> (u32, u32) {
    grid_of(vec4_words.div_ceil(256))
}

/// Grid of [`Kernel::QMatVec`] for a chunk of `rows` rows (any count: past 65535
/// workgroups the grid is 2-D, which the kernel linearizes).
pub fn qmatvec_groups(rows: u32) -> (u32, u32) {
    grid_of(rows.div_ceil(QMATVEC_ROWS))
}

/// Grid of [`Kernel::QMatMul`] for a chunk of `rows` rows and `n_tokens` tokens
/// (`rows <= 65535 * 32`, `n_tokens <= 65535 * 32`).
pub fn qmatmul_groups(rows: u32, n_tokens: u32) -> (u32, u32) {
    (
        rows.div_ceil(QMATMUL_ROWS).max(1),
        n_tokens.div_ceil(QMATMUL_TOKENS).max(1),
    )
}

/// Grid of [`Kernel::QEmbedding`] for `n_tokens` tokens of `hidden` columns (a multiple of
/// the group size, so of 8).
pub fn qembedding_groups(hidden: u32, n_tokens: u32) -> (u32, u32) {
    grid_of((hidden / 8 * n_tokens).div_ceil(QEMBEDDING_OCTETS))
}

/// Grid of [`Kernel::MoeGateUpQ`] for `n_assign` assignments (at most 65535 per dispatch)
/// of `inter` rows each.
pub fn moe_gate_up_q_groups(inter: u32, n_assign: u32) -> (u32, u32) {
    (inter.div_ceil(MOE_Q_ROWS).max(1), n_assign.max(1))
}

/// Grid of [`Kernel::MoeDownQ`] for `n_assign` assignments (at most 65535 per dispatch) of
/// `hidden` rows each.
pub fn moe_down_q_groups(hidden: u32, n_assign: u32) -> (u32, u32) {
    (hidden.div_ceil(MOE_Q_ROWS).max(1), n_assign.max(1))
}

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 19] = [
        Kernel::Embedding,
        Kernel::RmsNorm,
        Kernel::MatVec,
        Kernel::MatMul,
        Kernel::Rope,
        Kernel::Attention,
        Kernel::Router,
        Kernel::SwiGlu,
        Kernel::MoeGateUp,
        Kernel::MoeDown,
        Kernel::MoeCombine,
        Kernel::QMatVec,
        Kernel::QMatMul,
        Kernel::QEmbedding,
        Kernel::MoeGateUpQ,
        Kernel::MoeDownQ,
        Kernel::Copy,
        Kernel::MoeRoute,
        Kernel::TopK,
    ];

    /// File stem in `kernels/`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Embedding => "embedding",
            Kernel::RmsNorm => "rmsnorm",
            Kernel::MatVec => "matvec",
            Kernel::MatMul => "matmul",
            Kernel::Rope => "rope",
            Kernel::Attention => "attention",
            Kernel::Router => "router",
            Kernel::SwiGlu => "swiglu",
            Kernel::MoeGateUp => "moe_gate_up",
            Kernel::MoeDown => "moe_down",
            Kernel::MoeCombine => "moe_combine",
            Kernel::QMatVec => "qmatvec",
            Kernel::QMatMul => "qmatmul",
            Kernel::QEmbedding => "qembedding",
            Kernel::MoeGateUpQ => "moe_gate_up_q",
            Kernel::MoeDownQ => "moe_down_q",
            Kernel::Copy => "copy",
            Kernel::MoeRoute => "moe_route",
            Kernel::TopK => "topk",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Kernel::Embedding => include_str!("../../kernels/embedding.wgsl"),
            Kernel::RmsNorm => include_str!("../../kernels/rmsnorm.wgsl"),
            Kernel::MatVec => include_str!("../../kernels/matvec.wgsl"),
            Kernel::MatMul => include_str!("../../kernels/matmul.wgsl"),
            Kernel::Rope => include_str!("../../kernels/rope.wgsl"),
            Kernel::Attention => include_str!("../../kernels/attention.wgsl"),
            Kernel::Router => include_str!("../../kernels/router.wgsl"),
            Kernel::SwiGlu => include_str!("../../kernels/swiglu.wgsl"),
            Kernel::MoeGateUp => include_str!("../../kernels/moe_gate_up.wgsl"),
            Kernel::MoeDown => include_str!("../../kernels/moe_down.wgsl"),
            Kernel::MoeCombine => include_str!("../../kernels/moe_combine.wgsl"),
            Kernel::QMatVec => include_str!("../../kernels/qmatvec.wgsl"),
            Kernel::QMatMul => include_str!("../../kernels/qmatmul.wgsl"),
            Kernel::QEmbedding => include_str!("../../kernels/qembedding.wgsl"),
            Kernel::MoeGateUpQ => include_str!("../../kernels/moe_gate_up_q.wgsl"),
            Kernel::MoeDownQ => include_str!("../../kernels/moe_down_q.wgsl"),
            Kernel::Copy => include_str!("../../kernels/copy.wgsl"),
            Kernel::MoeRoute => include_str!("../../kernels/moe_route.wgsl"),
            Kernel::TopK => include_str!("../../kernels/topk.wgsl"),
        }
    }

    /// Whether the kernel reads weights in a stored dtype, selected by the `WDT` override
    /// constant (0 = f32, 1 = f16, 2 = bf16). For quantized kernels that is the dtype of
    /// the scales and biases.
    pub fn reads_weights(self) -> bool {
        matches!(
            self,
            Kernel::Embedding
                | Kernel::MatVec
                | Kernel::MatMul
                | Kernel::MoeGateUp
                | Kernel::MoeDown
        ) || self.is_quantized()
    }

    /// Whether the kernel reads MLX affine-quantized weights, shaped by the `BITS` and
    /// `GROUP` override constants (which it must be given: they have no default).
    pub fn is_quantized(self) -> bool {
        matches!(
            self,
            Kernel::QMatVec
                | Kernel::QMatMul
                | Kernel::QEmbedding
                | Kernel::MoeGateUpQ
                | Kernel::MoeDownQ
        )
    }

    /// The shared files prepended to the kernel's own, in order.
    pub fn includes(self) -> &'static [Include] {
        if self.is_quantized() {
            &[Include::Dtype, Include::Quant]
        } else if self.reads_weights() {
            &[Include::Dtype]
        } else {
            &[]
        }
    }

    /// The override constants a pipeline of this kernel is created with: none for kernels
    /// that read no weights; `WDT = wdt` (the weight dtype's shader code) for float-weight
    /// kernels; `WDT = wdt` (the scale dtype's code), `BITS` and `GROUP` from
    /// `quant = Some((bits, group_size))` for quantized kernels. `quant` is ignored by
    /// kernels that are not quantized.
    ///
    /// # Panics
    /// If the kernel is quantized and `quant` is `None` (its pipeline cannot be created
    /// without `BITS` and `GROUP`).
    pub fn constants(self, wdt: u32, quant: Option<(u32, u32)>) -> Vec<(&'static str, f64)> {
        let mut c = Vec::new();
        if self.reads_weights() {
            c.push(("WDT", f64::from(wdt)));
        }
        if self.is_quantized() {
            let (bits, group) = quant.unwrap_or_else(|| {
                panic!(
                    "kernel {} reads quantized weights: BITS and GROUP are required",
                    self.name()
                )
            });
            c.push(("BITS", f64::from(bits)));
            c.push(("GROUP", f64::from(group)));
        }
        c
    }

    /// The complete WGSL source as compiled (shared helpers prepended where needed).
    pub fn source(self) -> String {
        let mut src = String::new();
        for inc in self.includes() {
            src.push_str(inc.source());
            src.push('\n');
        }
        src.push_str(self.body());
        src
    }
}
