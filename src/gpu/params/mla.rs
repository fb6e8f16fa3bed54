//! Parameters of the multi-head latent attention kernels (DeepSeek-V3, Kimi-K2).

use super::{Kernel, ParamsLayout};

kernel_params! {
    /// Parameters of [`Kernel::MlaLatent`](Kernel::MlaLatent)
    /// (`kernels/mla_latent.wgsl`): the query heads' RoPE dims into their absorbed rows,
    /// the token's normalized latent and rotated RoPE key into the latent cache.
    MlaLatentParams for MlaLatent {
        /// Tokens.
        n_tokens: u32,
        /// Query heads.
        heads: u32,
        /// The latent's width (`kv_lora_rank`).
        rank: u32,
        /// The RoPE dims (`qk_rope_head_dim`, even).
        rope: u32,
        /// The query's other dims per head (`qk_nope_head_dim`).
        nope: u32,
        /// Position of token 0 (its latent cache row).
        pos0: u32,
        /// The latent norm's epsilon.
        eps: f32,
        /// Float offset of the sin table in the RoPE buffer.
        sin_offset: u32,
        /// 1: RoPE pairs `(2i, 2i + 1)`; 0: `(i, i + rope / 2)`.
        interleave: u32,
        /// Padding.
        pad0: u32,
        /// Padding.
        pad1: u32,
        /// Padding.
        pad2: u32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::MlaAttention`](Kernel::MlaAttention)
    /// (`kernels/mla_attention.wgsl`): every query head over the latent cache.
    MlaAttentionParams for MlaAttention {
        /// Tokens (queries per head).
        n_tokens: u32,
        /// Query heads.
        heads: u32,
        /// The latent's width (a multiple of 4).
        rank: u32,
        /// The RoPE dims (a multiple of 4; `rank + rope` at most 1024).
        rope: u32,
        /// Position of query 0.
        pos0: u32,
        /// The softmax scale.
        scale: f32,
        /// Keys per range, with `n_splits` > 0.
        chunk: u32,
        /// 0: every key per workgroup, normalized outputs; else a decode step's key
        /// ranges ([`crate::gpu::kernels::attention_splits`]), partial softmax states for
        /// [`Kernel::AttentionMerge`].
        n_splits: u32,
    }
}
