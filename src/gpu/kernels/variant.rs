//! What a kernel's source is assembled from: the [`Variant`] of optional GPU features it is
//! compiled for, and the shared [`Include`] files of `kernels/include/` prepended to it.

/// Which optional GPU features a kernel is compiled for. The device picks the variant
/// once, from what the adapter offers ([`crate::adapter::AdapterSummary`] says which); every
/// kernel also exists in the portable variant ([`Variant::PORTABLE`]), which needs nothing
/// beyond WebGPU core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Variant {
    /// Team sums of the quantized mat-vec kernels by subgroup reduction
    /// (`include/team_subgroup.wgsl`) instead of workgroup memory and barriers
    /// (`include/team_workgroup.wgsl`). Needs the `subgroups` feature.
    pub subgroups: bool,
    /// f16 weights and scales converted by the hardware (`unpack2x16float`,
    /// `include/half_native.wgsl`) instead of integer operations (`include/half_int.wgsl`).
    /// Needs native f16 conversion (wgpu's `SHADER_F16_IN_F32` downlevel flag, which
    /// llvmpipe without native f16 lacks).
    pub f16: bool,
}

impl Variant {
    /// Nothing beyond WebGPU core.
    pub const PORTABLE: Variant = Variant {
        subgroups: false,
        f16: false,
    };
    /// Every combination.
    pub const ALL: [Variant; 4] = [
        Variant::PORTABLE,
        Variant {
            subgroups: true,
            f16: false,
        },
        Variant {
            subgroups: false,
            f16: true,
        },
        Variant {
            subgroups: true,
            f16: true,
        },
    ];

    /// A variant with the given features.
    pub fn new(subgroups: bool, f16: bool) -> Self {
        Variant { subgroups, f16 }
    }

    /// A short name for messages: `portable`, `subgroups`, `f16` or `subgroups+f16`.
    pub fn name(self) -> &'static str {
        match (self.subgroups, self.f16) {
            (false, false) => "portable",
            (true, false) => "subgroups",
            (false, true) => "f16",
            (true, true) => "subgroups+f16",
        }
    }
}

/// A shared WGSL file of `kernels/include/`, prepended to the kernels that use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Include {
    /// `dtype.wgsl`: the `WDT` override and f16/bf16 decoding.
    Dtype,
    /// `quant.wgsl`: the `BITS` / `GROUP` overrides and MLX affine code unpacking.
    Quant,
    /// `half_int.wgsl`: f16 to f32 by integer operations (portable).
    HalfInt,
    /// `half_native.wgsl`: f16 to f32 by the hardware (`unpack2x16float`).
    HalfNative,
    /// `qblock.wgsl`: dot products of 32-code blocks of quantized rows.
    QBlock,
    /// `team_workgroup.wgsl`: team sums through workgroup memory (portable).
    TeamWorkgroup,
    /// `team_subgroup.wgsl`: team sums by subgroup reduction (`subgroups`).
    TeamSubgroup,
    /// `top_k.wgsl`: softmax and top-k routing of one token by a workgroup.
    TopK,
    /// `interleave.wgsl`: the interleaved layout of activation rows that the team kernels
    /// read with fewer cache lines per load.
    Interleave,
    /// `qtile.wgsl`: dequantizing an octet of a row into a prefill mat-mat tile.
    QTile,
    /// `kv_native.wgsl`: KV cache elements in f32 or f16 (the `KVDT` override), converted
    /// by the hardware.
    KvNative,
    /// `kv_f32.wgsl`: KV cache elements in f32 only (portable).
    KvF32,
    /// `expert_act.wgsl`: the expert gate/up kernels' activation (SwiGLU or gpt-oss's
    /// clamped SwiGLU).
    ExpertAct,
    /// `best.wgsl`: the order of logit candidates (larger logit, then smaller id) and the
    /// workgroup reduction to the best one, shared by the top-k and token-pick kernels.
    Best,
    /// `q8_row.wgsl`: writing a row in the 8+8-bit layout, an octet per invocation.
    Q8Row,
    /// `routed_sum.wgsl`: a token's routed expert rows added up in choice order, shared
    /// by the MoE combine kernels.
    RoutedSum,
}

impl Include {
    /// File stem in `kernels/include/`.
    pub fn name(self) -> &'static str {
        match self {
            Include::Dtype => "dtype",
            Include::Quant => "quant",
            Include::HalfInt => "half_int",
            Include::HalfNative => "half_native",
            Include::QBlock => "qblock",
            Include::TeamWorkgroup => "team_workgroup",
            Include::TeamSubgroup => "team_subgroup",
            Include::TopK => "top_k",
            Include::Interleave => "interleave",
            Include::QTile => "qtile",
            Include::KvNative => "kv_native",
            Include::KvF32 => "kv_f32",
            Include::ExpertAct => "expert_act",
            Include::Best => "best",
            Include::Q8Row => "q8_row",
            Include::RoutedSum => "routed_sum",
        }
    }

    /// The WGSL text.
    pub fn source(self) -> &'static str {
        match self {
            Include::Dtype => include_str!("../../../kernels/include/dtype.wgsl"),
            Include::Quant => include_str!("../../../kernels/include/quant.wgsl"),
            Include::HalfInt => include_str!("../../../kernels/include/half_int.wgsl"),
            Include::HalfNative => include_str!("../../../kernels/include/half_native.wgsl"),
            Include::QBlock => include_str!("../../../kernels/include/qblock.wgsl"),
            Include::TeamWorkgroup => include_str!("../../../kernels/include/team_workgroup.wgsl"),
            Include::TeamSubgroup => include_str!("../../../kernels/include/team_subgroup.wgsl"),
            Include::TopK => include_str!("../../../kernels/include/top_k.wgsl"),
            Include::Interleave => include_str!("../../../kernels/include/interleave.wgsl"),
            Include::QTile => include_str!("../../../kernels/include/qtile.wgsl"),
            Include::KvNative => include_str!("../../../kernels/include/kv_native.wgsl"),
            Include::KvF32 => include_str!("../../../kernels/include/kv_f32.wgsl"),
            Include::ExpertAct => include_str!("../../../kernels/include/expert_act.wgsl"),
            Include::Best => include_str!("../../../kernels/include/best.wgsl"),
            Include::Q8Row => include_str!("../../../kernels/include/q8_row.wgsl"),
            Include::RoutedSum => include_str!("../../../kernels/include/routed_sum.wgsl"),
        }
    }
}
