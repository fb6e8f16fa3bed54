//! The WGSL compute kernels: one per file in `kernels/`, plus the shared dtype helpers
//! (`kernels/include/dtype.wgsl`) prepended to the kernels that read weights.

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
}

const DTYPE_INCLUDE: &str = include_str!("../../kernels/include/dtype.wgsl");

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 11] = [
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
        }
    }

    /// Whether the kernel reads weights in a stored dtype, selected by the `WDT` override
    /// constant (0 = f32, 1 = f16, 2 = bf16).
    pub fn reads_weights(self) -> bool {
        matches!(
            self,
            Kernel::Embedding
                | Kernel::MatVec
                | Kernel::MatMul
                | Kernel::MoeGateUp
                | Kernel::MoeDown
        )
    }

    /// The complete WGSL source as compiled (shared helpers prepended where needed).
    pub fn source(self) -> String {
        if self.reads_weights() {
            format!("{DTYPE_INCLUDE}\n{}", self.body())
        } else {
            self.body().to_string()
        }
    }
}
