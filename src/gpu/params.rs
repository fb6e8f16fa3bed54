//! Typed uniform parameters of every kernel: each struct mirrors its kernel's WGSL `Params`
//! struct field for field (`u32` / `f32` only, explicit `pad*` fields up to a multiple of 16
//! bytes, in the WGSL struct too), so a dispatch cannot pass its words in the wrong order.
//! [`words`](Conv1dSiluParams::words) gives the words for the `&[u32]` dispatch API;
//! `FIELDS` names the fields in order, and [`ALL`] lists every struct's layout (the tests
//! compare each with its kernels' WGSL struct through naga, and require a struct for every
//! kernel that declares a uniform). Flag words keep their bits as named constants
//! ([`LINEAR_BIAS`], [`MoeGateUpQParams::X_Q8`], ...).

use super::kernels::Kernel;

/// The layout of a parameter struct, for the tests that compare it with its kernels' WGSL
/// `Params` struct ([`ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamsLayout {
    /// The struct's name.
    pub name: &'static str,
    /// The kernels that take it (their WGSL `Params` structs are alike).
    pub kernels: &'static [Kernel],
    /// The field names in order.
    pub fields: &'static [&'static str],
    /// The field types in order (`"u32"` or `"f32"`).
    pub types: &'static [&'static str],
    /// Its size in bytes (a multiple of 16).
    pub size: usize,
}

/// Defines a `#[repr(C)]` parameter struct, its `FIELDS`, `KERNEL`, `KERNELS` and `LAYOUT`
/// constants and `words`.
macro_rules! kernel_params {
    (
        $(#[$meta:meta])*
        $name:ident for $kernel:ident $(, $more:ident)* {
            $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $name {
            /// The kernel these parameters are for (the first of [`KERNELS`](Self::KERNELS)).
            pub const KERNEL: Kernel = Kernel::$kernel;
            /// Every kernel these parameters are for.
            pub const KERNELS: &'static [Kernel] = &[Kernel::$kernel $(, Kernel::$more)*];
            /// The field names in order, as in the kernel's WGSL `Params` struct.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];
            /// The struct's layout, as [`ALL`](crate::gpu::params::ALL) lists it.
            pub const LAYOUT: ParamsLayout = ParamsLayout {
                name: stringify!($name),
                kernels: Self::KERNELS,
                fields: Self::FIELDS,
                types: &[$(stringify!($ty)),*],
                size: std::mem::size_of::<Self>(),
            };

            /// The parameters as the uniform's words.
            pub fn words(&self) -> &[u32] {
                bytemuck::cast_slice(std::slice::from_ref(self))
            }
        }
    };
}

mod linear_attention;
mod mla;
pub use linear_attention::{Conv1dSiluParams, GatedDeltaNetParams, GatedRmsNormParams};
pub use mla::{MlaAttentionParams, MlaLatentParams};

kernel_params! {
    /// Parameters of `kernels/sigmoid_gate.wgsl`.
    SigmoidGateParams for SigmoidGate {
        /// Tokens.
        n: u32,
        /// Values per token of x.
        width: u32,
        /// Values per head.
        head_dim: u32,
        /// Floats per token of the gate buffer.
        g_stride: u32,
        /// Offset of head 0's gate in a token's row.
        g_offset: u32,
        /// Floats from one head's gate to the next.
        g_head_stride: u32,
        /// Padding.
        pad0: u32,
        /// Padding.
        pad1: u32,
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

kernel_params! {
    /// Parameters of [`Kernel::Embedding`] (`kernels/embedding.wgsl`): `out[t, :] =
    /// table[ids[t], :]` for the ids inside one row chunk of the table.
    EmbeddingParams for Embedding {
        /// Values per row (the hidden size).
        hidden: u32,
        /// Tokens.
        n_tokens: u32,
        /// First table row of the chunk.
        row_start: u32,
        /// Rows of the chunk.
        row_count: u32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::RmsNorm`] (`kernels/rmsnorm.wgsl`).
    RmsNormParams for RmsNorm {
        /// Values per row.
        n: u32,
        /// Rows (one workgroup each).
        rows: u32,
        /// The norm's epsilon.
        eps: f32,
        /// Element offset of the first row of x.
        x_offset: u32,
        /// Element offset of the first row of y.
        y_offset: u32,
        /// [`RmsNormParams::INTERLEAVED`], [`RmsNormParams::Q8`].
        flags: u32,
        /// Padding.
        pad0: u32,
        /// Padding.
        pad1: u32,
    }
}

impl RmsNormParams {
    /// `flags` bit: also write each row to `yi` in the interleaved layout
    /// (`kernels/include/interleave.wgsl`; `n` a multiple of 32).
    pub const INTERLEAVED: u32 = 1;
    /// `flags` bit: also write each row to `yq` in the 8+8-bit layout of that file.
    pub const Q8: u32 = 2;
}

/// `flags` bit of the linear kernels ([`MatVecParams`], [`MatMulParams`], [`QMatVecParams`],
/// [`QMatMulParams`]): add the bias.
pub const LINEAR_BIAS: u32 = 1;
/// `flags` bit of the linear kernels: add the residual.
pub const LINEAR_RESIDUAL: u32 = 2;
/// `flags` bit of [`QMatVecParams`]: the row of x is in the interleaved layout
/// (`kernels/include/interleave.wgsl`).
pub const LINEAR_X_INTERLEAVED: u32 = 4;
/// `flags` bit of [`QMatVecParams`]: x is one row in the 8+8-bit layout of that file, at the
/// start of the buffer (2- to 6-bit weights only; the outputs are NaN otherwise).
pub const LINEAR_X_Q8: u32 = 8;

kernel_params! {
    /// Parameters of [`Kernel::MatVec`] (`kernels/matvec.wgsl`): `y[row_base + r] =
    /// dot(W[r, :], x) (+ bias) (+ resid)` over a row chunk of float weights.
    MatVecParams for MatVec {
        /// Rows of the chunk.
        rows: u32,
        /// Columns (the length of x).
        cols: u32,
        /// The chunk's first row in y (and in bias and resid).
        row_base: u32,
        /// [`LINEAR_BIAS`], [`LINEAR_RESIDUAL`].
        flags: u32,
        /// Element offset of x.
        x_offset: u32,
        /// 0, or a batch of per-head mat-vecs: `heads` stacked matrices of `rows` rows,
        /// grid (rows, heads, tokens).
        heads: u32,
        /// Floats from one group's x row to the next (group = token * heads + head).
        x_stride: u32,
        /// Floats from one group's y rows to the next.
        y_stride: u32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::MatMul`] (`kernels/matmul.wgsl`): `y[t, row_base + r] =
    /// dot(W[r, :], x[t, :]) (+ bias) (+ resid)` over a row chunk of float weights.
    MatMulParams for MatMul {
        /// Rows of the chunk.
        rows: u32,
        /// Columns (values per token of x).
        cols: u32,
        /// Tokens.
        n_tokens: u32,
        /// The chunk's first row in y's rows (and in bias and resid).
        row_base: u32,
        /// Values per token of y and resid (all rows of the matrix).
        out_stride: u32,
        /// [`LINEAR_BIAS`], [`LINEAR_RESIDUAL`].
        flags: u32,
        /// Padding.
        pad0: u32,
        /// Padding.
        pad1: u32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::HeadNormRope`] (`kernels/head_norm_rope.wgsl`): per-head
    /// RMSNorm and RoPE of the query heads and the key heads of a layer (the keys written
    /// into the K cache, their values copied into the V cache).
    HeadNormRopeParams for HeadNormRope {
        /// Tokens.
        n_tokens: u32,
        /// Dims per head (at most 256).
        head_dim: u32,
        /// Half the rotary dims (`rotary_dim / 2`).
        rotary_half: u32,
        /// Position of token 0.
        pos0: u32,
        /// The norm's epsilon.
        eps: f32,
        /// Floats per token in x and v_src.
        x_stride: u32,
        /// Query heads of the dispatch (0: none).
        q_heads: u32,
        /// Float offset of query head 0 in a token's row of x.
        q_offset: u32,
        /// Key heads of the dispatch (0: none).
        k_heads: u32,
        /// Float offset of key head 0 in a token's row of x.
        k_offset: u32,
        /// Element offset of the keys (and values) written in the KV cache.
        k_out: u32,
        /// 1: copy the key heads' values from v_src into the V cache.
        copy_v: u32,
        /// Float offset of value head 0 in a token's row of v_src.
        v_offset: u32,
        /// Float offset of the sin table in `rope` (the cos table at 0).
        sin_offset: u32,
        /// Floats from one query head to the next in x (`head_dim`, or `2 head_dim` where
        /// q_proj yields `[q | gate]` per head).
        q_head_stride: u32,
        /// 1: RMSNorm each head (with its weights) before the rotation; 0: rotate the
        /// heads as they are (attention without q/k norms).
        norm: u32,
        /// Floats of `cap` KV rows of a ring-buffer cache (a sliding-window layer's): each
        /// key and value is written twice, at its row and `ring` floats from it (the other
        /// half of the ring's `2 cap` rows); 0 for a plain cache.
        ring: u32,
        /// 1: one RMSNorm over all of a token's query (key) heads, weights of that width
        /// (OLMoE); 0: per head.
        whole: u32,
        /// Above 0: q, k (normed) and v clamped to `[-clip, clip]` before RoPE (`clip_qkv`).
        clip: f32,
        /// Padding.
        pad0: u32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::Attention`] (`kernels/attention.wgsl`) and
    /// [`Kernel::AttentionTiled`] (`kernels/attention_tiled.wgsl`): causal attention of
    /// `n_tokens` queries from position `pos0` over the KV cache.
    AttentionParams for Attention, AttentionTiled {
        /// Queries.
        n_tokens: u32,
        /// Position of query 0 (which sees keys `0 ..= pos0`).
        pos0: u32,
        /// Query heads.
        n_heads: u32,
        /// Key/value heads.
        n_kv_heads: u32,
        /// Dims per head (at most 256).
        head_dim: u32,
        /// The score scale (`1 / sqrt(head_dim)` rounded to f32).
        scale: f32,
        /// A sliding window: each query sees only the last this many keys up to its own
        /// (0: every earlier key).
        window: u32,
        /// 1: attention sinks, one logit per head in the sinks buffer (gpt-oss).
        sinks: u32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::AttentionSplit`] (`kernels/attention_split.wgsl`): the
    /// partial softmax states of one decode query's key ranges
    /// ([`attention_splits`](super::kernels::attention_splits)).
    AttentionSplitParams for AttentionSplit {
        /// Position of the query (which sees keys `0 ..= pos0`).
        pos0: u32,
        /// Query heads.
        n_heads: u32,
        /// Key/value heads.
        n_kv_heads: u32,
        /// Dims per head (a multiple of 4, at most 256).
        head_dim: u32,
        /// The score scale (`1 / sqrt(head_dim)` rounded to f32).
        scale: f32,
        /// Keys per range.
        chunk: u32,
        /// Key ranges per head.
        n_splits: u32,
        /// The first key attended to: 0, or where a sliding window starts (the split
        /// ranges cover `key0 ..= pos0`).
        key0: u32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::AttentionMerge`] (`kernels/attention_merge.wgsl`).
    AttentionMergeParams for AttentionMerge {
        /// Heads.
        n_heads: u32,
        /// Dims per head.
        head_dim: u32,
        /// Key ranges per head (at most
        /// [`ATTENTION_MAX_SPLITS`](super::kernels::ATTENTION_MAX_SPLITS)).
        n_splits: u32,
        /// [`AttentionMergeParams::INTERLEAVED`], [`AttentionMergeParams::GATED`].
        flags: u32,
        /// With [`AttentionMergeParams::GATED`]: float offset of head 0's output gate in
        /// the gate buffer.
        g_offset: u32,
        /// Floats from one head's output gate to the next.
        g_head_stride: u32,
        /// Padding.
        pad0: u32,
        /// Padding.
        pad1: u32,
    }
}

impl AttentionMergeParams {
    /// `flags` bit: write the output in the interleaved layout
    /// (`kernels/include/interleave.wgsl`).
    pub const INTERLEAVED: u32 = 1;
    /// `flags` bit: multiply each output by the sigmoid of its output gate (gated
    /// attention, Qwen3.5), as [`Kernel::SigmoidGate`] does in a prefill.
    pub const GATED: u32 = 2;
    /// `flags` bit: attention sinks (gpt-oss), one logit per head in the sinks buffer.
    pub const SINKS: u32 = 4;
}

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
    /// Parameters of [`Kernel::SwiGlu`] (`kernels/swiglu.wgsl`).
    SwiGluParams for SwiGlu {
        /// Values.
        n: u32,
        /// Padding.
        pad0: u32,
        /// Padding.
        pad1: u32,
        /// Padding.
        pad2: u32,
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
    /// Parameters of [`Kernel::QMatVec`] (`kernels/qmatvec.wgsl`): `y[row_base + r] =
    /// dot(W[r, :], x[x_offset..]) (+ bias) (+ resid)` over a row chunk of quantized
    /// weights.
    QMatVecParams for QMatVec {
        /// Rows of the chunk.
        rows: u32,
        /// Columns (codes per row).
        cols: u32,
        /// The chunk's first row in y (and in bias and resid).
        row_base: u32,
        /// [`LINEAR_BIAS`], [`LINEAR_RESIDUAL`], [`LINEAR_X_INTERLEAVED`], [`LINEAR_X_Q8`].
        flags: u32,
        /// Float offset of x (a multiple of 4).
        x_offset: u32,
        /// Word offset of the scales in the chunk's buffer.
        scales_word: u32,
        /// Word offset of the biases in the chunk's buffer.
        biases_word: u32,
        /// Invocations per team (a power of two from 4 to 64; the subgroup size in the
        /// subgroup variant).
        team: u32,
        /// 0, or a batch of per-head mat-vecs: `heads` stacked matrices of `rows` rows,
        /// the grid's y the head, its z the token ([`crate::gpu::kernels::head_batch_groups`]).
        heads: u32,
        /// Floats from one group's x row to the next (group = token * heads + head).
        x_stride: u32,
        /// Floats from one group's y rows to the next.
        y_stride: u32,
        /// Padding.
        pad0: u32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::QMatMul`] (`kernels/qmatmul.wgsl`) and
    /// [`Kernel::QMatMulCoop`]: `y[t, row_base + r] = dot(W[r, :], x[t, :]) (+ bias)
    /// (+ resid)` over a row chunk of quantized weights.
    QMatMulParams for QMatMul, QMatMulCoop {
        /// Rows of the chunk.
        rows: u32,
        /// Columns (codes per row).
        cols: u32,
        /// Tokens.
        n_tokens: u32,
        /// The chunk's first row in y's rows (and in bias and resid).
        row_base: u32,
        /// Values per token of y and resid (all rows of the matrix).
        out_stride: u32,
        /// [`LINEAR_BIAS`], [`LINEAR_RESIDUAL`].
        flags: u32,
        /// Word offset of the scales in the chunk's buffer.
        scales_word: u32,
        /// Word offset of the biases in the chunk's buffer.
        biases_word: u32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::QEmbedding`] (`kernels/qembedding.wgsl`): embedding lookup
    /// from one row chunk of a quantized table.
    QEmbeddingParams for QEmbedding {
        /// Values per row (the hidden size).
        hidden: u32,
        /// Tokens.
        n_tokens: u32,
        /// First table row of the chunk.
        row_start: u32,
        /// Rows of the chunk.
        row_count: u32,
        /// Word offset of the scales in the chunk's buffer.
        scales_word: u32,
        /// Word offset of the biases in the chunk's buffer.
        biases_word: u32,
        /// Padding.
        pad0: u32,
        /// Padding.
        pad1: u32,
    }
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
    /// projection; [`writes_quad_h`](super::kernels::writes_quad_h)).
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

kernel_params! {
    /// Parameters of [`Kernel::Copy`] (`kernels/copy.wgsl`).
    CopyParams for Copy {
        /// 16-byte words to copy.
        n: u32,
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
    /// Parameters of [`Kernel::TopK`] (`kernels/topk.wgsl`).
    TopKParams for TopK {
        /// Logits.
        n_vocab: u32,
        /// Logits per workgroup ([`TOPK_CHUNK`](super::kernels::TOPK_CHUNK)).
        chunk: u32,
        /// Candidates per chunk.
        n_top: u32,
        /// Padding.
        pad0: u32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::TokenPick`] (`kernels/token_pick.wgsl`).
    TokenPickParams for TokenPick {
        /// Chunks of [`Kernel::TopK`]'s output.
        n_chunks: u32,
        /// Candidates per chunk (the first is the chunk's best).
        n_top: u32,
        /// Padding.
        pad0: u32,
        /// Padding.
        pad1: u32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::SubgroupProbe`] (`kernels/subgroup_probe.wgsl`).
    SubgroupProbeParams for SubgroupProbe {
        /// Invocations that write their subgroup's size (the workgroup's 64).
        n: u32,
        /// Padding.
        pad0: u32,
        /// Padding.
        pad1: u32,
        /// Padding.
        pad2: u32,
    }
}

/// The layout of every parameter struct: each kernel that declares a `Params` uniform has
/// one (the tests check them against the WGSL through naga).
pub const ALL: &[ParamsLayout] = &[
    EmbeddingParams::LAYOUT,
    RmsNormParams::LAYOUT,
    MatVecParams::LAYOUT,
    MatMulParams::LAYOUT,
    HeadNormRopeParams::LAYOUT,
    AttentionParams::LAYOUT,
    AttentionSplitParams::LAYOUT,
    AttentionMergeParams::LAYOUT,
    RouterParams::LAYOUT,
    SwiGluParams::LAYOUT,
    MoeGateUpParams::LAYOUT,
    MoeDownParams::LAYOUT,
    MoeCombineParams::LAYOUT,
    QMatVecParams::LAYOUT,
    QMatMulParams::LAYOUT,
    QEmbeddingParams::LAYOUT,
    MoeGateUpQParams::LAYOUT,
    MoeDownQParams::LAYOUT,
    MoeGateUpQmmParams::LAYOUT,
    MoeDownQmmParams::LAYOUT,
    CopyParams::LAYOUT,
    MoeRouteParams::LAYOUT,
    TopKParams::LAYOUT,
    TokenPickParams::LAYOUT,
    SubgroupProbeParams::LAYOUT,
    Conv1dSiluParams::LAYOUT,
    GatedDeltaNetParams::LAYOUT,
    GatedRmsNormParams::LAYOUT,
    SigmoidGateParams::LAYOUT,
    SharedSwiGluParams::LAYOUT,
    MlaLatentParams::LAYOUT,
    MlaAttentionParams::LAYOUT,
];

/// The layout of the parameter struct of `kernel`, if it has one.
pub fn layout_of(kernel: Kernel) -> Option<&'static ParamsLayout> {
    ALL.iter().find(|l| l.kernels.contains(&kernel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, Result};

    #[test]
    fn sizes_are_multiples_of_16_bytes_and_words_follow_fields() {
        assert_eq!(std::mem::size_of::<Conv1dSiluParams>(), 32);
        assert_eq!(std::mem::size_of::<GatedDeltaNetParams>(), 64);
        assert_eq!(std::mem::size_of::<GatedRmsNormParams>(), 32);
        assert_eq!(Conv1dSiluParams::FIELDS.len(), 8);
        assert_eq!(GatedDeltaNetParams::FIELDS.len(), 16);
        assert_eq!(GatedRmsNormParams::FIELDS.len(), 8);
        let p = GatedDeltaNetParams::new(3, 2, 4, 16, 8, 100, 90, 94).unwrap();
        assert_eq!(
            p.words(),
            &[
                3,
                2,
                4,
                16,
                8,
                100,
                90,
                94,
                0.25f32.to_bits(),
                0,
                0,
                0,
                0,
                0,
                0,
                0
            ]
        );
        let p = GatedDeltaNetParams::new(1, 2, 4, 16, 8, 100, 90, 94)
            .unwrap()
            .with_conv(4, 3)
            .unwrap()
            .with_consts(256, 320);
        assert_eq!(&p.words()[10..14], &[4, 3, 256, 320]);
        rejected(
            GatedDeltaNetParams::new(2, 2, 4, 16, 8, 100, 90, 94)
                .unwrap()
                .with_conv(4, 0),
            "one token",
        );
        let p = GatedRmsNormParams::new(7, 4, 16, 1e-6, 100, 5).unwrap();
        assert_eq!(p.words(), &[7, 4, 16, 1e-6f32.to_bits(), 100, 5, 0, 0]);
        let p = Conv1dSiluParams::new(7, 40, 4, 100, 3).unwrap();
        assert_eq!(p.words(), &[7, 40, 4, 100, 3, 0, 0, 0]);
    }

    #[test]
    fn every_struct_is_padded_to_16_bytes_and_serves_distinct_kernels() {
        let mut seen = Vec::new();
        for l in ALL {
            assert_eq!(l.size % 16, 0, "{}", l.name);
            assert_eq!(l.size, 4 * l.fields.len(), "{}", l.name);
            for k in l.kernels {
                assert!(!seen.contains(k), "{}: {k:?} has two structs", l.name);
                seen.push(*k);
                assert_eq!(layout_of(*k), Some(l));
            }
        }
    }

    #[test]
    fn the_pipeline_flags_word_is_the_flags_field() {
        let (word, _) = Kernel::MoeDownQ.pipeline_flags().unwrap();
        assert_eq!(MoeDownQParams::FIELDS[word], "flags");
        let p = MoeDownQParams {
            flags: 3,
            ..Default::default()
        };
        assert_eq!(p.words()[word], 3);
    }

    fn rejected<T: std::fmt::Debug>(r: Result<T>, needle: &str) {
        match r {
            Err(Error::InvalidArgument(msg)) => assert!(msg.contains(needle), "{msg}"),
            other => panic!("expected an InvalidArgument naming {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn delta_net_rejects_wide_keys() {
        rejected(
            GatedDeltaNetParams::new(1, 1, 1, 257, 8, 10, 0, 1),
            "key dim 257",
        );
    }

    #[test]
    fn delta_net_rejects_uneven_heads() {
        rejected(
            GatedDeltaNetParams::new(1, 2, 3, 16, 8, 10, 0, 1),
            "not a multiple",
        );
    }

    #[test]
    fn conv_rejects_wide_kernels() {
        rejected(Conv1dSiluParams::new(1, 8, 9, 8, 0), "kernel width 9");
    }
}
