//! Parameters of the mixture-of-experts kernels: routing, the shared expert, the experts'
//! gate/up and down projections (f32 and quantized, per token and tiled) and the combine.

use super::{Kernel, ParamsLayout};

/// Routing weights: the chosen experts' softmax probabilities over all experts.
pub const ROUTING_SOFTMAX: u32 = 0;
/// Routing weights: those probabilities renormalized to sum to 1 (`norm_topk_prob`).
pub const ROUTING_SOFTMAX_NORM: u32 = 1;
/// Routing weights: a softmax over the chosen experts' logits only (gpt-oss).
pub const ROUTING_TOPK_SOFTMAX: u32 = 2;
/// Routing (GLM-4.5, DeepSeek-V3): experts chosen by `sigmoid(logit) + correction bias`
/// among the `topk_groups` best of `groups` groups (a group's score the sum of its two
/// best), weighted by their unbiased sigmoids times `scale`.
pub const ROUTING_SIGMOID: u32 = 3;
/// [`ROUTING_SIGMOID`] with the chosen sigmoids renormalized (`/ (sum + 1e-20)`) before
/// the scale.
pub const ROUTING_SIGMOID_NORM: u32 = 4;

kernel_params! {
    /// Parameters of [`Kernel::Router`] (`kernels/router.wgsl`).
    RouterParams for Router {
        /// Experts (at most 1024).
        n_experts: u32,
        /// Experts chosen per token.
        top_k: u32,
        /// How the chosen experts are weighted: [`ROUTING_SOFTMAX`],
        /// [`ROUTING_SOFTMAX_NORM`], [`ROUTING_TOPK_SOFTMAX`], [`ROUTING_SIGMOID`],
        /// [`ROUTING_SIGMOID_NORM`].
        routing: u32,
        /// Tokens.
        n_tokens: u32,
        /// Floats from one token's logits to the next (`n_experts`, or one more where the
        /// router's mat-vec also computes the shared expert's gate).
        logit_stride: u32,
        /// 1: one more choice per token, the shared expert (id `n_experts`, weighted by
        /// the sigmoid of the logit after the routed ones); 2: the same, weighted 1 (an
        /// ungated shared expert, GLM-4.5, DeepSeek-V3).
        shared_expert: u32,
        /// Expert groups ([`ROUTING_SIGMOID`]; 1 otherwise).
        groups: u32,
        /// Groups kept.
        topk_groups: u32,
        /// Factor of the weights ([`ROUTING_SIGMOID`]).
        scale: f32,
        /// Padding.
        pad0: u32,
        /// Padding.
        pad1: u32,
        /// Padding.
        pad2: u32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::MoeRoute`] (`kernels/moe_route.wgsl`): decode routing
    /// through the GPU slot table.
    MoeRouteParams for MoeRoute {
        /// Experts chosen per token.
        top_k: u32,
        /// The layer's first entry in the slot table (`layer * (n_experts + shared)`).
        table_base: u32,
        /// The layer (its miss flag in `route_log`).
        layer: u32,
        /// Cache slots per page.
        slots_per_page: u32,
        /// Cache pages.
        n_pages: u32,
        /// Workgroups along x of the gate/up kernel.
        gate_up_x: u32,
        /// Workgroups along x of the down kernel.
        down_x: u32,
        /// Bit p: the kernels of page p (< 32) were recorded; pages from 32 on always are.
        page_mask: u32,
        /// Where this layer's chosen ids go in `route_log` (after the miss flags).
        log_base: u32,
        /// Experts of the layer.
        n_experts: u32,
        /// How the chosen experts are weighted: [`ROUTING_SOFTMAX`],
        /// [`ROUTING_SOFTMAX_NORM`], [`ROUTING_TOPK_SOFTMAX`], [`ROUTING_SIGMOID`],
        /// [`ROUTING_SIGMOID_NORM`].
        routing: u32,
        /// 1: one more choice, the layer's shared expert (slot table entry `n_experts`),
        /// gated; 2: ungated (weight 1).
        shared_expert: u32,
        /// Expert groups ([`ROUTING_SIGMOID`]; 1 otherwise).
        groups: u32,
        /// Groups kept.
        topk_groups: u32,
        /// Factor of the weights ([`ROUTING_SIGMOID`]).
        scale: f32,
        /// Padding.
        pad0: u32,
    }
}

kernel_params! {
    /// Parameters of `kernels/shared_swiglu.wgsl`.
    SharedSwiGluParams for SharedSwiGlu {
        /// Tokens.
        n: u32,
        /// Width of the shared expert.
        inter: u32,
        /// Floats per token of the gate projection's buffer.
        g_stride: u32,
        /// Offset of the gate projection in a token's row.
        g_offset: u32,
        /// Floats per token of the up projection's buffer.
        u_stride: u32,
        /// Offset of the up projection in a token's row.
        u_offset: u32,
        /// Floats per token of the gate logits' buffer.
        s_stride: u32,
        /// Offset of the gate logit in a token's row.
        s_offset: u32,
    }
}

/// The expert kernels' `act` bit: each projection adds its bias (f32, one per row,
/// at the word offset its parameters give inside a slot) before the activation or the
/// routing weight.
pub const EXPERT_BIAS: u32 = 1;
/// The gate/up kernels' `act` bit: the clamped SwiGLU of gpt-oss, `(clamp(u, -limit, limit)
/// + 1) * g * sigmoid(alpha g)` with `g = min(gate, limit)`, instead of `silu(g) * u`.
pub const EXPERT_CLAMPED: u32 = 2;

kernel_params! {
    /// Parameters of [`Kernel::MoeGateUp`] (`kernels/moe_gate_up.wgsl`): gate/up + SwiGLU
    /// of float experts in cache slots.
    MoeGateUpParams for MoeGateUp {
        /// Hidden size (columns of gate and up).
        hidden: u32,
        /// Expert width (rows of gate and up).
        inter: u32,
        /// First assignment of the dispatch.
        assign_base: u32,
        /// Assignments of the dispatch.
        n_assign: u32,
        /// Element offset of the gate tensor inside a slot.
        gate_off: u32,
        /// Element offset of the up tensor inside a slot.
        up_off: u32,
        /// Elements per slot (even).
        slot_elems: u32,
        /// [`EXPERT_BIAS`], [`EXPERT_CLAMPED`]: biases after each projection, the clamped
        /// SwiGLU (gpt-oss) instead of SwiGLU.
        act: u32,
        /// Word offset of the gate bias (f32) inside a slot.
        gate_bias: u32,
        /// Word offset of the up bias (f32) inside a slot.
        up_bias: u32,
        /// The clamped SwiGLU's sigmoid slope.
        alpha: f32,
        /// The clamped SwiGLU's limit.
        limit: f32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::MoeDown`] (`kernels/moe_down.wgsl`): down projection of float
    /// experts in cache slots, scaled by the routing weight.
    MoeDownParams for MoeDown {
        /// Hidden size (rows of down).
        hidden: u32,
        /// Expert width (columns of down).
        inter: u32,
        /// First assignment of the dispatch.
        assign_base: u32,
        /// Assignments of the dispatch.
        n_assign: u32,
        /// Element offset of the down tensor inside a slot.
        down_off: u32,
        /// Elements per slot (even).
        slot_elems: u32,
        /// [`EXPERT_BIAS`]: add the down bias.
        act: u32,
        /// Word offset of the down bias (f32) inside a slot.
        down_bias: u32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::MoeCombine`] (`kernels/moe_combine.wgsl`).
    MoeCombineParams for MoeCombine {
        /// Values per token.
        hidden: u32,
        /// Tokens.
        n_tokens: u32,
        /// Experts per token.
        top_k: u32,
        /// Padding.
        pad0: u32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::MoeCombineNorm`] (`kernels/moe_combine_norm.wgsl`): the
    /// combine of one decode token that also leaves the next RMSNorm's input for the
    /// mat-vecs.
    MoeCombineNormParams for MoeCombineNorm {
        /// Values per token (a multiple of 32).
        hidden: u32,
        /// Experts per token.
        top_k: u32,
        /// [`MoeCombineNormParams::Q8`], else the row is written interleaved (f32).
        flags: u32,
        /// Padding.
        pad0: u32,
    }
}

impl MoeCombineNormParams {
    /// `flags`: the norm's input in the 8+8-bit layout.
    pub const Q8: u32 = 1;
}

kernel_params! {
    /// Parameters of [`Kernel::MoeGateUpQ`] (`kernels/moe_gate_up_q.wgsl`): gate/up +
    /// SwiGLU of quantized experts in cache slots.
    MoeGateUpQParams for MoeGateUpQ {
        /// Hidden size (columns of gate and up).
        hidden: u32,
        /// Expert width (rows of gate and up).
        inter: u32,
        /// First assignment of the dispatch.
        assign_base: u32,
        /// Assignments of the dispatch.
        n_assign: u32,
        /// Words per slot (a multiple of 4).
        slot_words: u32,
        /// Word offset of the gate codes inside a slot (16-byte aligned).
        gate_q: u32,
        /// Word offset of the gate scales inside a slot.
        gate_s: u32,
        /// Word offset of the gate biases inside a slot.
        gate_b: u32,
        /// Word offset of the up codes inside a slot (16-byte aligned).
        up_q: u32,
        /// Word offset of the up scales inside a slot.
        up_s: u32,
        /// Word offset of the up biases inside a slot.
        up_b: u32,
        /// Invocations per team.
        team: u32,
        /// [`MoeGateUpQParams::X_INTERLEAVED`], [`MoeGateUpQParams::H_INTERLEAVED`],
        /// [`MoeGateUpQParams::X_Q8`], [`MoeGateUpQParams::H_QUAD_Q8`].
        flags: u32,
        /// [`EXPERT_BIAS`], [`EXPERT_CLAMPED`]: biases after each projection, the clamped
        /// SwiGLU (gpt-oss) instead of SwiGLU.
        act: u32,
        /// Word offset of the gate bias (f32) inside a slot.
        gate_bias: u32,
        /// Word offset of the up bias (f32) inside a slot.
        up_bias: u32,
        /// The clamped SwiGLU's sigmoid slope.
        alpha: f32,
        /// The clamped SwiGLU's limit.
        limit: f32,
        /// Padding.
        pad0: u32,
        /// Padding.
        pad1: u32,
    }
}

impl MoeGateUpQParams {
    /// `flags` bit: the rows of x are in the interleaved layout
    /// (`kernels/include/interleave.wgsl`).
    pub const X_INTERLEAVED: u32 = 1;
    /// `flags` bit: write the rows of h in the interleaved layout.
    pub const H_INTERLEAVED: u32 = 2;
    /// `flags` bit: x is one row (token 0) in the 8+8-bit layout (2- to 6-bit experts only;
    /// h is NaN otherwise).
    pub const X_Q8: u32 = 4;
    /// `flags` bit: write the rows of h in the quad 8+8-bit layout (for a 2- to 6-bit down
    /// projection; [`writes_quad_h`](crate::gpu::kernels::writes_quad_h)).
    pub const H_QUAD_Q8: u32 = 8;
}

kernel_params! {
    /// Parameters of [`Kernel::MoeDownQ`] (`kernels/moe_down_q.wgsl`): down projection of
    /// quantized experts in cache slots, scaled by the routing weight.
    MoeDownQParams for MoeDownQ {
        /// Hidden size (rows of down).
        hidden: u32,
        /// Expert width (columns of down).
        inter: u32,
        /// First assignment of the dispatch.
        assign_base: u32,
        /// Assignments of the dispatch.
        n_assign: u32,
        /// Words per slot (a multiple of 4).
        slot_words: u32,
        /// Word offset of the down codes inside a slot (16-byte aligned).
        down_q: u32,
        /// Word offset of the down scales inside a slot.
        down_s: u32,
        /// Word offset of the down biases inside a slot.
        down_b: u32,
        /// Invocations per team.
        team: u32,
        /// [`MoeDownQParams::H_INTERLEAVED`], [`MoeDownQParams::H_QUAD_Q8`]; also the
        /// kernel's `FLAGS` pipeline constant ([`Kernel::pipeline_flags`]).
        flags: u32,
        /// [`EXPERT_BIAS`]: add the down bias.
        act: u32,
        /// Word offset of the down bias (f32) inside a slot.
        down_bias: u32,
    }
}

impl MoeDownQParams {
    /// `flags` bit: the rows of h are in the interleaved layout
    /// (`kernels/include/interleave.wgsl`).
    pub const H_INTERLEAVED: u32 = 1;
    /// `flags` bit: the rows of h are in the quad 8+8-bit layout (2- to 6-bit experts only;
    /// the output is NaN otherwise).
    pub const H_QUAD_Q8: u32 = 2;
    /// The index of the `flags` word among the uniform's words.
    pub const FLAGS_WORD: usize = std::mem::offset_of!(MoeDownQParams, flags) / 4;
}

kernel_params! {
    /// Parameters of [`Kernel::MoeGateUpQmm`] (`kernels/moe_gate_up_qmm.wgsl`): prefill
    /// gate/up + SwiGLU of quantized experts over tiles of one expert's assignments.
    MoeGateUpQmmParams for MoeGateUpQmm, MoeGateUpQmmCoop {
        /// Hidden size (columns of gate and up).
        hidden: u32,
        /// Expert width (rows of gate and up).
        inter: u32,
        /// First tile of the dispatch (in the tiles buffer).
        tile_base: u32,
        /// Words per slot (a multiple of 4).
        slot_words: u32,
        /// Word offset of the gate codes inside a slot.
        gate_q: u32,
        /// Word offset of the gate scales inside a slot.
        gate_s: u32,
        /// Word offset of the gate biases inside a slot.
        gate_b: u32,
        /// Word offset of the up codes inside a slot.
        up_q: u32,
        /// Word offset of the up scales inside a slot.
        up_s: u32,
        /// Word offset of the up biases inside a slot.
        up_b: u32,
        /// [`EXPERT_BIAS`], [`EXPERT_CLAMPED`]: biases after each projection, the clamped
        /// SwiGLU (gpt-oss) instead of SwiGLU.
        act: u32,
        /// Word offset of the gate bias (f32) inside a slot.
        gate_bias: u32,
        /// Word offset of the up bias (f32) inside a slot.
        up_bias: u32,
        /// The clamped SwiGLU's sigmoid slope.
        alpha: f32,
        /// The clamped SwiGLU's limit.
        limit: f32,
        /// Padding.
        pad0: u32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::MoeDownQmm`] (`kernels/moe_down_qmm.wgsl`): prefill down
    /// projection of quantized experts over tiles of one expert's assignments.
    MoeDownQmmParams for MoeDownQmm, MoeDownQmmCoop {
        /// Hidden size (rows of down).
        hidden: u32,
        /// Expert width (columns of down).
        inter: u32,
        /// First tile of the dispatch (in the tiles buffer).
        tile_base: u32,
        /// Words per slot (a multiple of 4).
        slot_words: u32,
        /// Word offset of the down codes inside a slot.
        down_q: u32,
        /// Word offset of the down scales inside a slot.
        down_s: u32,
        /// Word offset of the down biases inside a slot.
        down_b: u32,
        /// [`EXPERT_BIAS`]: add the down bias.
        act: u32,
        /// Word offset of the down bias (f32) inside a slot.
        down_bias: u32,
        /// Padding.
        pad0: u32,
        /// Padding.
        pad1: u32,
        /// Padding.
        pad2: u32,
    }
}
