//! Typed uniform parameters of kernels: each struct mirrors its kernel's WGSL `Params`
//! struct field for field (`u32` / `f32` only, explicit `pad*` fields up to a multiple of 16
//! bytes), so a dispatch cannot pass its words in the wrong order. [`words`](Conv1dSiluParams::words)
//! gives the words for the `&[u32]` dispatch API; `FIELDS` names the fields in order (the
//! tests compare them and the size with the WGSL struct, through naga).

use super::kernels::{Kernel, CONV1D_MAX_KERNEL, DELTA_NET_MAX_KEY_DIM};
use crate::error::{Error, Result};

/// Defines a `#[repr(C)]` parameter struct, its `FIELDS` and `KERNEL` constants and `words`.
macro_rules! kernel_params {
    (
        $(#[$meta:meta])*
        $name:ident for $kernel:ident {
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
            /// The kernel these parameters are for.
            pub const KERNEL: Kernel = Kernel::$kernel;
            /// The field names in order, as in the kernel's WGSL `Params` struct.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// The parameters as the uniform's words.
            pub fn words(&self) -> &[u32] {
                bytemuck::cast_slice(std::slice::from_ref(self))
            }
        }
    };
}

kernel_params! {
    /// Parameters of [`Kernel::Conv1dSilu`] (`kernels/conv1d_silu.wgsl`).
    Conv1dSiluParams for Conv1dSilu {
        /// Tokens of the dispatch (1 for a decode step).
        n_tokens: u32,
        /// Conv channels C (`2 Hk Dk + Hv Dv`): the conv weight is `[C, k]`, the conv state
        /// `[k - 1, C]`, the output `[n_tokens, C]`.
        channels: u32,
        /// Kernel width (1 ..= [`CONV1D_MAX_KERNEL`]).
        k: u32,
        /// Floats per token row of the input (the projection buffer).
        stride: u32,
        /// Float offset of channel 0 in a token's input row.
        offset: u32,
        /// 1: the state before the first token is zero (`state_in` is not read).
        fresh: u32,
        /// Padding.
        pad1: u32,
        /// Padding.
        pad2: u32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::GatedDeltaNet`] (`kernels/gated_delta_net.wgsl`).
    GatedDeltaNetParams for GatedDeltaNet {
        /// Tokens of the dispatch (1 for a decode step).
        n_tokens: u32,
        /// Key (and query) heads Hk.
        key_heads: u32,
        /// Value heads Hv (a multiple of Hk).
        value_heads: u32,
        /// Dims per key head Dk (at most
        /// [`DELTA_NET_MAX_KEY_DIM`]).
        dk: u32,
        /// Dims per value head Dv.
        dv: u32,
        /// Floats per token row of the projection buffer that holds b and a.
        stride: u32,
        /// Float offset of b (Hv values) in a token's projection row.
        b_offset: u32,
        /// Float offset of a (Hv values) in a token's projection row.
        a_offset: u32,
        /// The query scale `1 / sqrt(Dk)` rounded to f32 (as HF multiplies by it).
        q_scale: f32,
        /// 1: the state starts at zero (`state_in` is not read).
        fresh: u32,
        /// Padding.
        pad1: u32,
        /// Padding.
        pad2: u32,
    }
}

kernel_params! {
    /// Parameters of [`Kernel::GatedRmsNorm`] (`kernels/gated_rmsnorm.wgsl`).
    GatedRmsNormParams for GatedRmsNorm {
        /// Tokens of the dispatch.
        n_tokens: u32,
        /// Value heads Hv.
        heads: u32,
        /// Dims per value head Dv (the normalized row length).
        dv: u32,
        /// The norm's epsilon (the model's `rms_norm_eps`).
        eps: f32,
        /// Floats per token row of the projection buffer that holds z.
        stride: u32,
        /// Float offset of z (Hv Dv values) in a token's projection row.
        z_offset: u32,
        /// Padding.
        pad0: u32,
        /// Padding.
        pad1: u32,
    }
}

impl Conv1dSiluParams {
    /// The parameters of a dispatch over `n_tokens` tokens of `channels` conv channels read
    /// at `offset` of input rows of `stride` floats, kernel width `k`.
    /// [`Error::InvalidArgument`] if `k` is 0 or above [`CONV1D_MAX_KERNEL`], or a row's
    /// channels do not fit its stride (the kernel would write nothing, or read the next
    /// row).
    pub fn new(n_tokens: u32, channels: u32, k: u32, stride: u32, offset: u32) -> Result<Self> {
        if !(1..=CONV1D_MAX_KERNEL).contains(&k) {
            return Err(Error::InvalidArgument(format!(
                "conv1d_silu: kernel width {k} outside 1..={CONV1D_MAX_KERNEL}"
            )));
        }
        if u64::from(offset) + u64::from(channels) > u64::from(stride) {
            return Err(Error::InvalidArgument(format!(
                "conv1d_silu: {channels} channels at offset {offset} overrun rows of {stride}"
            )));
        }
        Ok(Conv1dSiluParams {
            n_tokens,
            channels,
            k,
            stride,
            offset,
            ..Default::default()
        })
    }
}

impl GatedDeltaNetParams {
    /// The parameters of a dispatch over `n_tokens` tokens of a layer of `key_heads` x
    /// `dk` / `value_heads` x `dv` heads whose b and a sit at `b_offset` and `a_offset` of
    /// projection rows of `stride` floats, with `q_scale = 1 / sqrt(dk)` as HF computes it
    /// (in f64, then rounded to f32).
    ///
    /// [`Error::InvalidArgument`] if `dk` is 0 or above [`DELTA_NET_MAX_KEY_DIM`], `dv` is
    /// 0, or `value_heads` is not a positive multiple of `key_heads`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        n_tokens: u32,
        key_heads: u32,
        value_heads: u32,
        dk: u32,
        dv: u32,
        stride: u32,
        b_offset: u32,
        a_offset: u32,
    ) -> Result<Self> {
        if !((1..=DELTA_NET_MAX_KEY_DIM).contains(&dk) && dv > 0) {
            return Err(Error::InvalidArgument(format!(
                "gated_delta_net: key dim {dk} outside 1..={DELTA_NET_MAX_KEY_DIM}, or value dim 0"
            )));
        }
        if !(key_heads > 0 && value_heads > 0 && value_heads % key_heads == 0) {
            return Err(Error::InvalidArgument(format!(
                "gated_delta_net: {value_heads} value heads are not a multiple of {key_heads} key heads"
            )));
        }
        Ok(GatedDeltaNetParams {
            n_tokens,
            key_heads,
            value_heads,
            dk,
            dv,
            stride,
            b_offset,
            a_offset,
            q_scale: (1.0 / f64::from(dk).sqrt()) as f32,
            ..Default::default()
        })
    }
}

impl GatedRmsNormParams {
    /// The parameters of a dispatch over `n_tokens` tokens of `heads` value heads of `dv`
    /// dims, z at `z_offset` of projection rows of `stride` floats.
    ///
    /// [`Error::InvalidArgument`] if `dv` is 0.
    pub fn new(
        n_tokens: u32,
        heads: u32,
        dv: u32,
        eps: f32,
        stride: u32,
        z_offset: u32,
    ) -> Result<Self> {
        if dv == 0 {
            return Err(Error::InvalidArgument("gated_rmsnorm: value dim 0".into()));
        }
        Ok(GatedRmsNormParams {
            n_tokens,
            heads,
            dv,
            eps,
            stride,
            z_offset,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_multiples_of_16_bytes_and_words_follow_fields() {
        assert_eq!(std::mem::size_of::<Conv1dSiluParams>(), 32);
        assert_eq!(std::mem::size_of::<GatedDeltaNetParams>(), 48);
        assert_eq!(std::mem::size_of::<GatedRmsNormParams>(), 32);
        assert_eq!(Conv1dSiluParams::FIELDS.len(), 8);
        assert_eq!(GatedDeltaNetParams::FIELDS.len(), 12);
        assert_eq!(GatedRmsNormParams::FIELDS.len(), 8);
        let p = GatedDeltaNetParams::new(3, 2, 4, 16, 8, 100, 90, 94).unwrap();
        assert_eq!(
            p.words(),
            &[3, 2, 4, 16, 8, 100, 90, 94, 0.25f32.to_bits(), 0, 0, 0]
        );
        let p = GatedRmsNormParams::new(7, 4, 16, 1e-6, 100, 5).unwrap();
        assert_eq!(p.words(), &[7, 4, 16, 1e-6f32.to_bits(), 100, 5, 0, 0]);
        let p = Conv1dSiluParams::new(7, 40, 4, 100, 3).unwrap();
        assert_eq!(p.words(), &[7, 40, 4, 100, 3, 0, 0, 0]);
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
