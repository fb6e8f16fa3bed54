//! Parameters of the Gated DeltaNet kernels (Qwen3.5-MoE / Qwen3-Next linear attention):
//! the short convolution, the delta rule, the gated RMSNorm.

use super::{Kernel, ParamsLayout};
use crate::error::{Error, Result};
use crate::gpu::kernels::{CONV1D_MAX_KERNEL, DELTA_NET_MAX_KEY_DIM};

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
        /// 1: the states start at zero (`state_in` and `conv_in` are not read).
        fresh: u32,
        /// 0: the conv output is read from `y`; else the width of the layer's causal
        /// convolution, which the kernel then runs itself for a decode step
        /// ([`with_conv`](GatedDeltaNetParams::with_conv)).
        conv_k: u32,
        /// Float offset of the conv's channel 0 in a token's projection row.
        conv_offset: u32,
        /// Float offset of `A_log` (Hv values) in the constants binding.
        a_log_at: u32,
        /// Float offset of `dt_bias` (Hv values) in the constants binding.
        dt_bias_at: u32,
        /// Padding.
        pad0: u32,
        /// Padding.
        pad1: u32,
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

    /// The same dispatch with the layer's causal convolution of width `k` run inside it
    /// (its input channels from `offset` of the projection row, taps at the start of the
    /// constants binding, conv state read from `conv_in` and written to `conv_out`), for a
    /// decode step: one dispatch instead of `conv1d_silu` and this one.
    ///
    /// [`Error::InvalidArgument`] unless `n_tokens` is 1 and `k` is in
    /// 1..=[`CONV1D_MAX_KERNEL`].
    pub fn with_conv(mut self, k: u32, offset: u32) -> Result<Self> {
        if self.n_tokens != 1 || !(1..=CONV1D_MAX_KERNEL).contains(&k) {
            return Err(Error::InvalidArgument(format!(
                "gated_delta_net: a fused convolution needs one token (not {}) and a width in \
                 1..={CONV1D_MAX_KERNEL} (not {k})",
                self.n_tokens
            )));
        }
        self.conv_k = k;
        self.conv_offset = offset;
        Ok(self)
    }

    /// Where `A_log` and `dt_bias` sit in the constants binding (floats).
    pub fn with_consts(mut self, a_log_at: u32, dt_bias_at: u32) -> Self {
        self.a_log_at = a_log_at;
        self.dt_bias_at = dt_bias_at;
        self
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
