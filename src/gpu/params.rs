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

mod attention;
mod linear;
mod linear_attention;
mod mla;
mod moe;
pub use attention::{
    AttentionMergeParams, AttentionParams, AttentionSplitParams, HeadNormRopeParams,
    SigmoidGateParams,
};
pub use linear::{
    MatMulParams, MatVecParams, QMatMulParams, QMatVecParams, LINEAR_BIAS,
    LINEAR_NORM_OUT_INTERLEAVED, LINEAR_NORM_OUT_Q8, LINEAR_RESIDUAL, LINEAR_X_INTERLEAVED,
    LINEAR_X_NORM, LINEAR_X_Q8, LINEAR_X_RAW_NORM,
};
pub use linear_attention::{Conv1dSiluParams, GatedDeltaNetParams, GatedRmsNormParams};
pub use mla::{MlaAttentionParams, MlaLatentParams};
pub use moe::{
    MoeCombineNormParams, MoeCombineParams, MoeDownParams, MoeDownQParams, MoeDownQmmParams,
    MoeGateUpParams, MoeGateUpQParams, MoeGateUpQmmParams, MoeRouteParams, RouterParams,
    SharedSwiGluParams, EXPERT_BIAS, EXPERT_CLAMPED, ROUTING_SIGMOID, ROUTING_SIGMOID_NORM,
    ROUTING_SOFTMAX, ROUTING_SOFTMAX_NORM, ROUTING_TOPK_SOFTMAX,
};

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
    /// Parameters of [`Kernel::TokenSample`] (`kernels/token_sample.wgsl`).
    TokenSampleParams for TokenSample {
        /// Chunks of [`Kernel::TopK`]'s output.
        n_chunks: u32,
        /// Candidates per chunk.
        n_top: u32,
        /// Candidates the draw is among (at most 256).
        top_k: u32,
        /// Vocabulary ids per chunk ([`TOPK_CHUNK`](super::kernels::TOPK_CHUNK)).
        chunk: u32,
        /// Temperature (above 0).
        temperature: f32,
        /// Top-p (1: off).
        top_p: f32,
        /// Min-p (0: off).
        min_p: f32,
        /// The sampler's next uniform number in [0, 1).
        u: f32,
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
    MoeCombineNormParams::LAYOUT,
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
    TokenSampleParams::LAYOUT,
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
    fn every_parameter_block_fits_the_immediates() {
        // `MOESTREAM_IMMEDIATES` passes each block as immediate data, which devices offer
        // 128 bytes of (Vulkan's guaranteed minimum; `gpu::MAX_PARAMS_BYTES`).
        for l in ALL {
            assert!(
                l.size <= crate::gpu::MAX_PARAMS_BYTES as usize,
                "{}: {} bytes",
                l.name,
                l.size
            );
        }
    }

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
