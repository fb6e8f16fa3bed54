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

mod grids;
mod variant;

pub use grids::*;
pub use variant::{Include, Variant};

/// Environment variable naming a folder of kernel sources that replace the built-in ones
/// (see [`Kernel::source_for`]); for kernel development only.
pub const KERNELS_DIR_ENV: &str = "MOESTREAM_KERNELS_DIR";

/// How every kernel declares its parameters: one uniform struct at binding 0.
pub const PARAMS_UNIFORM: &str = "@group(0) @binding(0) var<uniform> p: Params;";

/// A kernel's source with its parameters declared as immediate data instead
/// (`var<immediate>`, Vulkan push constants, Metal `setBytes`; the `MOESTREAM_IMMEDIATES`
/// path); `None` if the source does not declare them as [`PARAMS_UNIFORM`].
pub fn with_immediate_params(source: &str) -> Option<String> {
    source
        .contains(PARAMS_UNIFORM)
        .then(|| source.replace(PARAMS_UNIFORM, "var<immediate> p: Params;"))
}

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
    /// Per-head RMSNorm + rotary position embedding (rotate-half form), optionally copying
    /// the values into the value cache.
    HeadNormRope,
    /// Causal attention over the KV cache, one workgroup per (head, query) (decode of
    /// heads whose size is not a multiple of 4; see the kernels below).
    Attention,
    /// Causal attention for prefill, 16 queries per workgroup sharing each key and value
    /// read ([`attention_tiled_groups`]; head_dim a multiple of 4).
    AttentionTiled,
    /// Decode attention over one key range per workgroup ([`attention_splits`]): partial
    /// softmax states, combined by [`Kernel::AttentionMerge`].
    AttentionSplit,
    /// Combines the partial softmax states of [`Kernel::AttentionSplit`] per head.
    AttentionMerge,
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
    /// [`Kernel::MoeCombine`] of one decode token that also leaves the next RMSNorm's
    /// input for the quantized mat-vecs (the row times the norm's weight, in the 8+8-bit or
    /// the interleaved layout, with its blocks' sums of squares), so that the norm has no
    /// dispatch of its own ([`params::MoeCombineNormParams`](super::params::MoeCombineNormParams); the mat-vecs
    /// read it with [`params::LINEAR_X_NORM`](super::params::LINEAR_X_NORM)).
    MoeCombineNorm,
    /// Decode mat-vec over MLX affine-quantized weights ([`qmatvec_groups`]). Reads x as
    /// vec4s: its `x_offset` must be a multiple of 4 (every output is NaN otherwise).
    QMatVec,
    /// Prefill mat-mat over MLX affine-quantized weights ([`qmatmul_groups`]).
    QMatMul,
    /// [`Kernel::QMatMul`] on cooperative matrices (16x16x16 f16 tiles summed in f32;
    /// [`qmatmul_coop_groups`]), where the adapter has them
    /// ([`Kernel::needs_cooperative_matrices`]).
    QMatMulCoop,
    /// Token embedding lookup from an MLX affine-quantized table ([`qembedding_groups`]).
    QEmbedding,
    /// Expert gate/up projections + SwiGLU over quantized experts in cache slots
    /// ([`moe_gate_up_q_groups`]).
    MoeGateUpQ,
    /// Expert down projection over quantized experts in cache slots, scaled by the routing
    /// weight ([`moe_down_q_groups`]).
    MoeDownQ,
    /// Prefill expert gate/up projections + SwiGLU over quantized experts in cache slots,
    /// as a mat-mat over tiles of one expert's assignments ([`moe_qmm_tiles`],
    /// [`moe_gate_up_qmm_groups`]).
    MoeGateUpQmm,
    /// [`Kernel::MoeGateUpQmm`] on cooperative matrices (f16 tiles summed in f32), where
    /// the adapter has them ([`Kernel::needs_cooperative_matrices`]; same grid).
    MoeGateUpQmmCoop,
    /// Prefill expert down projection over quantized experts in cache slots, scaled by the
    /// routing weight, as a mat-mat over tiles of one expert's assignments
    /// ([`moe_qmm_tiles`], [`moe_down_qmm_groups`]).
    MoeDownQmm,
    /// [`Kernel::MoeDownQmm`] on cooperative matrices (f16 tiles summed in f32), where the
    /// adapter has them ([`Kernel::needs_cooperative_matrices`]; same grid).
    MoeDownQmmCoop,
    /// Plain vec4 copy: the memory-bandwidth baseline of the benchmarks ([`copy_groups`]).
    Copy,
    /// Decode routing through the GPU slot table, without a host round trip.
    MoeRoute,
    /// Top-n logits per chunk of the vocabulary, for a small readback ([`topk_groups`]).
    TopK,
    /// The best of [`Kernel::TopK`]'s candidates as the next step's token, on the GPU
    /// (one workgroup; [`params::TokenPickParams`](super::params::TokenPickParams)).
    TokenPick,
    /// The token a sampler will draw (temperature, top-k, top-p, min-p, the host's next
    /// uniform number) from [`Kernel::TopK`]'s candidates, as the next step's token, on the
    /// GPU (one workgroup; [`params::TokenSampleParams`](super::params::TokenSampleParams)).
    TokenSample,
    /// Measures the subgroup size (only compiled with [`Variant::subgroups`]).
    SubgroupProbe,
    /// Causal depthwise conv + SiLU of a Gated DeltaNet layer's q/k/v channels over a
    /// decode step or a prefill, updating the conv state ([`conv1d_silu_groups`],
    /// [`params::Conv1dSiluParams`](super::params::Conv1dSiluParams)).
    Conv1dSilu,
    /// The gated delta rule of a Gated DeltaNet layer over a decode step or a prefill, the
    /// recurrent state in registers ([`gated_delta_net_groups`],
    /// [`params::GatedDeltaNetParams`](super::params::GatedDeltaNetParams)).
    GatedDeltaNet,
    /// The output gate of gated attention: `x *= sigmoid(gate)` in place
    /// ([`params::SigmoidGateParams`](super::params::SigmoidGateParams), grid [`grid`] over
    /// the values).
    SigmoidGate,
    /// The activation of a MoE block's shared expert with its sigmoid gate folded in,
    /// `silu(gate) * up * sigmoid(sg)` ([`params::SharedSwiGluParams`](super::params::SharedSwiGluParams),
    /// grid [`grid`] over the values).
    SharedSwiGlu,
    /// The gated RMSNorm (`norm(o) * w * silu(z)`) per token and value head of a Gated
    /// DeltaNet layer ([`gated_rmsnorm_groups`],
    /// [`params::GatedRmsNormParams`](super::params::GatedRmsNormParams)).
    GatedRmsNorm,
    /// Multi-head latent attention's per-token step: the query heads' RoPE dims, the
    /// token's normalized latent and RoPE key into the latent cache
    /// ([`params::MlaLatentParams`](super::params::MlaLatentParams), grid (heads + 1,
    /// tokens)).
    MlaLatent,
    /// Multi-head latent attention over the latent cache, one workgroup per (head, query)
    /// ([`params::MlaAttentionParams`](super::params::MlaAttentionParams), grid (heads,
    /// tokens)).
    MlaAttention,
}

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 38] = [
        Kernel::MlaLatent,
        Kernel::MlaAttention,
        Kernel::SigmoidGate,
        Kernel::SharedSwiGlu,
        Kernel::Embedding,
        Kernel::RmsNorm,
        Kernel::MatVec,
        Kernel::MatMul,
        Kernel::HeadNormRope,
        Kernel::Attention,
        Kernel::AttentionTiled,
        Kernel::AttentionSplit,
        Kernel::AttentionMerge,
        Kernel::Router,
        Kernel::SwiGlu,
        Kernel::MoeGateUp,
        Kernel::MoeDown,
        Kernel::MoeCombine,
        Kernel::MoeCombineNorm,
        Kernel::QMatVec,
        Kernel::QMatMul,
        Kernel::QMatMulCoop,
        Kernel::QEmbedding,
        Kernel::MoeGateUpQ,
        Kernel::MoeDownQ,
        Kernel::MoeGateUpQmm,
        Kernel::MoeGateUpQmmCoop,
        Kernel::MoeDownQmm,
        Kernel::MoeDownQmmCoop,
        Kernel::Copy,
        Kernel::MoeRoute,
        Kernel::TopK,
        Kernel::TokenPick,
        Kernel::TokenSample,
        Kernel::SubgroupProbe,
        Kernel::Conv1dSilu,
        Kernel::GatedDeltaNet,
        Kernel::GatedRmsNorm,
    ];

    /// File stem in `kernels/`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Embedding => "embedding",
            Kernel::RmsNorm => "rmsnorm",
            Kernel::MatVec => "matvec",
            Kernel::MatMul => "matmul",
            Kernel::HeadNormRope => "head_norm_rope",
            Kernel::Attention => "attention",
            Kernel::AttentionTiled => "attention_tiled",
            Kernel::AttentionSplit => "attention_split",
            Kernel::AttentionMerge => "attention_merge",
            Kernel::Router => "router",
            Kernel::SwiGlu => "swiglu",
            Kernel::MoeGateUp => "moe_gate_up",
            Kernel::MoeDown => "moe_down",
            Kernel::MoeCombine => "moe_combine",
            Kernel::MoeCombineNorm => "moe_combine_norm",
            Kernel::QMatVec => "qmatvec",
            Kernel::QMatMul => "qmatmul",
            Kernel::QMatMulCoop => "qmatmul_coop",
            Kernel::QEmbedding => "qembedding",
            Kernel::MoeGateUpQ => "moe_gate_up_q",
            Kernel::MoeDownQ => "moe_down_q",
            Kernel::MoeGateUpQmm => "moe_gate_up_qmm",
            Kernel::MoeGateUpQmmCoop => "moe_gate_up_qmm_coop",
            Kernel::MoeDownQmm => "moe_down_qmm",
            Kernel::MoeDownQmmCoop => "moe_down_qmm_coop",
            Kernel::Copy => "copy",
            Kernel::MoeRoute => "moe_route",
            Kernel::TopK => "topk",
            Kernel::TokenPick => "token_pick",
            Kernel::TokenSample => "token_sample",
            Kernel::SubgroupProbe => "subgroup_probe",
            Kernel::Conv1dSilu => "conv1d_silu",
            Kernel::GatedDeltaNet => "gated_delta_net",
            Kernel::GatedRmsNorm => "gated_rmsnorm",
            Kernel::SigmoidGate => "sigmoid_gate",
            Kernel::SharedSwiGlu => "shared_swiglu",
            Kernel::MlaLatent => "mla_latent",
            Kernel::MlaAttention => "mla_attention",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Kernel::Embedding => include_str!("../../../kernels/embedding.wgsl"),
            Kernel::RmsNorm => include_str!("../../../kernels/rmsnorm.wgsl"),
            Kernel::MatVec => include_str!("../../../kernels/matvec.wgsl"),
            Kernel::MatMul => include_str!("../../../kernels/matmul.wgsl"),
            Kernel::HeadNormRope => include_str!("../../../kernels/head_norm_rope.wgsl"),
            Kernel::Attention => include_str!("../../../kernels/attention.wgsl"),
            Kernel::AttentionTiled => include_str!("../../../kernels/attention_tiled.wgsl"),
            Kernel::AttentionSplit => include_str!("../../../kernels/attention_split.wgsl"),
            Kernel::AttentionMerge => include_str!("../../../kernels/attention_merge.wgsl"),
            Kernel::Router => include_str!("../../../kernels/router.wgsl"),
            Kernel::SwiGlu => include_str!("../../../kernels/swiglu.wgsl"),
            Kernel::MoeGateUp => include_str!("../../../kernels/moe_gate_up.wgsl"),
            Kernel::MoeDown => include_str!("../../../kernels/moe_down.wgsl"),
            Kernel::MoeCombine => include_str!("../../../kernels/moe_combine.wgsl"),
            Kernel::MoeCombineNorm => include_str!("../../../kernels/moe_combine_norm.wgsl"),
            Kernel::QMatVec => include_str!("../../../kernels/qmatvec.wgsl"),
            Kernel::QMatMul => include_str!("../../../kernels/qmatmul.wgsl"),
            Kernel::QMatMulCoop => include_str!("../../../kernels/qmatmul_coop.wgsl"),
            Kernel::QEmbedding => include_str!("../../../kernels/qembedding.wgsl"),
            Kernel::MoeGateUpQ => include_str!("../../../kernels/moe_gate_up_q.wgsl"),
            Kernel::MoeDownQ => include_str!("../../../kernels/moe_down_q.wgsl"),
            Kernel::MoeGateUpQmm => include_str!("../../../kernels/moe_gate_up_qmm.wgsl"),
            Kernel::MoeGateUpQmmCoop => {
                include_str!("../../../kernels/moe_gate_up_qmm_coop.wgsl")
            }
            Kernel::MoeDownQmm => include_str!("../../../kernels/moe_down_qmm.wgsl"),
            Kernel::MoeDownQmmCoop => include_str!("../../../kernels/moe_down_qmm_coop.wgsl"),
            Kernel::Copy => include_str!("../../../kernels/copy.wgsl"),
            Kernel::MoeRoute => include_str!("../../../kernels/moe_route.wgsl"),
            Kernel::TopK => include_str!("../../../kernels/topk.wgsl"),
            Kernel::TokenPick => include_str!("../../../kernels/token_pick.wgsl"),
            Kernel::TokenSample => include_str!("../../../kernels/token_sample.wgsl"),
            Kernel::SubgroupProbe => include_str!("../../../kernels/subgroup_probe.wgsl"),
            Kernel::Conv1dSilu => include_str!("../../../kernels/conv1d_silu.wgsl"),
            Kernel::GatedDeltaNet => include_str!("../../../kernels/gated_delta_net.wgsl"),
            Kernel::GatedRmsNorm => include_str!("../../../kernels/gated_rmsnorm.wgsl"),
            Kernel::SigmoidGate => include_str!("../../../kernels/sigmoid_gate.wgsl"),
            Kernel::SharedSwiGlu => include_str!("../../../kernels/shared_swiglu.wgsl"),
            Kernel::MlaLatent => include_str!("../../../kernels/mla_latent.wgsl"),
            Kernel::MlaAttention => include_str!("../../../kernels/mla_attention.wgsl"),
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
                | Kernel::QMatMulCoop
                | Kernel::QEmbedding
                | Kernel::MoeGateUpQ
                | Kernel::MoeDownQ
                | Kernel::MoeGateUpQmm
                | Kernel::MoeGateUpQmmCoop
                | Kernel::MoeDownQmm
                | Kernel::MoeDownQmmCoop
        )
    }

    /// Whether the kernel writes or reads the KV cache as elements of the `KVDT` override
    /// constant (`include/kv_*.wgsl`), set from the dispatch's dtype: f32 (the default) or,
    /// in variants with native f16 conversion, f16.
    pub fn uses_kv_cache(self) -> bool {
        matches!(
            self,
            Kernel::HeadNormRope
                | Kernel::AttentionSplit
                | Kernel::AttentionTiled
                | Kernel::MlaLatent
                | Kernel::MlaAttention
        )
    }

    /// Whether the kernel sums over teams of invocations (`team_sum`), by subgroup
    /// reduction in the subgroup variant.
    pub fn uses_teams(self) -> bool {
        matches!(
            self,
            Kernel::QMatVec | Kernel::MoeGateUpQ | Kernel::MoeDownQ
        )
    }

    /// The uniform parameter word (its index) whose bits under the mask also specialize
    /// this kernel's pipeline, as its `FLAGS` override constant: a pipeline is compiled per
    /// value, so the driver drops the code of the other input layouts. (The expert down
    /// projection: with its f32-h loops compiled in beside the quad 8+8-bit ones, it ran
    /// 10% slower on an H200: 60.7 against 55.0 us for 128 experts.) The recorder sets
    /// `FLAGS` from the dispatch's parameters, so it always matches them. (The index is
    /// that of the `flags` field of the kernel's parameter struct, [`super::params`].)
    pub fn pipeline_flags(self) -> Option<(usize, u32)> {
        use super::params::MoeDownQParams as P;
        match self {
            Kernel::MoeDownQ => Some((P::FLAGS_WORD, P::H_INTERLEAVED | P::H_QUAD_Q8)),
            _ => None,
        }
    }

    /// Whether the kernel exists only in subgroup variants.
    pub fn needs_subgroups(self) -> bool {
        self == Kernel::SubgroupProbe
    }

    /// Whether the kernel needs cooperative matrices and shader f16 (wgpu's
    /// `EXPERIMENTAL_COOPERATIVE_MATRIX` and `SHADER_F16`; its source enables them) and a
    /// subgroup size of 32 ([`crate::adapter::AdapterSummary::cooperative_matrices`]). It is in no
    /// [`Variant`]: the engine picks it per dispatch where the device has them.
    pub fn needs_cooperative_matrices(self) -> bool {
        matches!(
            self,
            Kernel::QMatMulCoop | Kernel::MoeGateUpQmmCoop | Kernel::MoeDownQmmCoop
        )
    }

    /// Whether the kernel exists in `variant` (kernels that need cooperative matrices
    /// exist in none).
    pub fn has_variant(self, variant: Variant) -> bool {
        (variant.subgroups || !self.needs_subgroups()) && !self.needs_cooperative_matrices()
    }

    /// The shared files prepended to the kernel's own in the portable variant, in order.
    pub fn includes(self) -> Vec<Include> {
        self.includes_for(Variant::PORTABLE)
    }

    /// The shared files prepended to the kernel's own in `variant`, in order.
    pub fn includes_for(self, variant: Variant) -> Vec<Include> {
        let mut v = Vec::new();
        if self.reads_weights() {
            v.push(if variant.f16 {
                Include::HalfNative
            } else {
                Include::HalfInt
            });
            v.push(Include::Dtype);
        }
        if self.is_quantized() {
            v.push(Include::Quant);
        }
        if matches!(
            self,
            Kernel::QMatMul
                | Kernel::QMatMulCoop
                | Kernel::MoeGateUpQmm
                | Kernel::MoeGateUpQmmCoop
                | Kernel::MoeDownQmm
                | Kernel::MoeDownQmmCoop
        ) {
            v.push(Include::QTile);
        }
        if matches!(self, Kernel::Router | Kernel::MoeRoute) {
            v.push(Include::TopK);
        }
        if matches!(self, Kernel::TopK | Kernel::TokenPick | Kernel::TokenSample) {
            v.push(Include::Best);
        }
        if matches!(
            self,
            Kernel::MoeGateUp
                | Kernel::MoeGateUpQ
                | Kernel::MoeGateUpQmm
                | Kernel::MoeGateUpQmmCoop
        ) {
            v.push(Include::ExpertAct);
        }
        if matches!(
            self,
            Kernel::RmsNorm
                | Kernel::AttentionMerge
                | Kernel::MoeGateUpQ
                | Kernel::MoeCombineNorm
                | Kernel::QMatVec
        ) {
            v.push(Include::Interleave);
        }
        if matches!(
            self,
            Kernel::RmsNorm | Kernel::MoeCombineNorm | Kernel::QMatVec
        ) {
            v.push(Include::Q8Row);
        }
        if matches!(self, Kernel::MoeCombine | Kernel::MoeCombineNorm) {
            v.push(Include::RoutedSum);
        }
        if self.uses_kv_cache() {
            v.push(if variant.f16 {
                Include::KvNative
            } else {
                Include::KvF32
            });
        }
        if self.uses_teams() {
            v.push(Include::QBlock);
            v.push(if variant.subgroups {
                Include::TeamSubgroup
            } else {
                Include::TeamWorkgroup
            });
        }
        v
    }

    /// The override constants a pipeline of this kernel is created with: none for kernels
    /// that read no weights; `WDT = wdt` (the weight dtype's shader code) for float-weight
    /// kernels; `WDT = wdt` (the scale dtype's code), `BITS` and `GROUP` from
    /// `quant = Some((bits, group_size))` for quantized kernels, and `ROWS = 4` (rows per
    /// team, which the engine may lower per matrix) for the team kernels
    /// ([`Kernel::uses_teams`]), `FLAGS = 0` for kernels with [`Kernel::pipeline_flags`]
    /// (set per dispatch). `quant` is ignored by kernels that are not quantized.
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
        if self.uses_teams() {
            // Rows per team; the engine may ask for 2 or 1 instead
            // (`qmatvec_rows_per_team`, `expert_rows_per_team`).
            c.push(("ROWS", 4.0));
        }
        if self.uses_kv_cache() {
            // The KV cache's element dtype code (0 f32, 1 f16), given as the dispatch's dtype.
            c.push(("KVDT", f64::from(wdt)));
        }
        if self.pipeline_flags().is_some() {
            // Set per dispatch from its parameters (`pipeline_flags`).
            c.push(("FLAGS", 0.0));
        }
        c
    }

    /// The complete WGSL source of the portable variant (shared helpers prepended).
    pub fn source(self) -> String {
        self.source_for(Variant::PORTABLE)
    }

    /// The complete WGSL source of `variant`: the shared helpers, then the kernel's file.
    ///
    /// For kernel development, `MOESTREAM_KERNELS_DIR` names a folder laid out as
    /// `kernels/` whose files replace the built-in copies (those it lacks are built in), so
    /// a kernel can be changed and measured without rebuilding.
    pub fn source_for(self, variant: Variant) -> String {
        let dir = std::env::var_os(KERNELS_DIR_ENV).map(std::path::PathBuf::from);
        let read = |rel: String, builtin: &str| -> String {
            dir.as_ref()
                .and_then(|d| std::fs::read_to_string(d.join(rel)).ok())
                .unwrap_or_else(|| builtin.to_string())
        };
        let mut src = String::new();
        let body = read(format!("{}.wgsl", self.name()), self.body());
        // The body's `enable` directives go first: WGSL wants them before any declaration.
        let is_enable = |l: &str| l.trim_start().starts_with("enable ");
        for line in body.lines().filter(|l| is_enable(l)) {
            src.push_str(line);
            src.push('\n');
        }
        for inc in self.includes_for(variant) {
            src.push_str(&read(format!("include/{}.wgsl", inc.name()), inc.source()));
            src.push('\n');
        }
        for line in body.lines().filter(|l| !is_enable(l)) {
            src.push_str(line);
            src.push('\n');
        }
        src
    }
}
