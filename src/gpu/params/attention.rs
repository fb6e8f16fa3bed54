//! Parameters of the attention kernels: the per-head norm and RoPE, attention (whole,
//! split and merged), and the output gate.

use super::{Kernel, ParamsLayout};

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
    /// ([`attention_splits`](crate::gpu::kernels::attention_splits)).
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
        /// [`ATTENTION_MAX_SPLITS`](crate::gpu::kernels::ATTENTION_MAX_SPLITS)).
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
