//! Parameters of the dense linear kernels (f32 and quantized, matrix-vector and
//! matrix-matrix) and their `flags` bits.

use super::{Kernel, ParamsLayout};

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
/// `flags` bit of [`QMatVecParams`], with [`LINEAR_X_Q8`] or [`LINEAR_X_INTERLEAVED`]: the
/// row is an RMSNorm's input not yet divided by its RMS, with its blocks' sums of squares
/// after it (left by [`Kernel::MoeCombineNorm`]); the kernel applies the norm (epsilon
/// `eps`) to its sums.
pub const LINEAR_X_NORM: u32 = 16;
/// `flags` bit of [`QMatVecParams`]: x is the raw input of an RMSNorm (f32, natural layout,
/// at `x_offset`) whose weight is bound in place of the residual; the kernel applies the
/// norm (epsilon `eps`) as it reads x. With [`LINEAR_NORM_OUT_Q8`] or
/// [`LINEAR_NORM_OUT_INTERLEAVED`] it also writes the normalized row into its last binding.
pub const LINEAR_X_RAW_NORM: u32 = 32;
/// `flags` bit of [`QMatVecParams`], with [`LINEAR_X_RAW_NORM`]: write the normalized row in
/// the 8+8-bit layout.
pub const LINEAR_NORM_OUT_Q8: u32 = 64;
/// `flags` bit of [`QMatVecParams`], with [`LINEAR_X_RAW_NORM`]: write the normalized row in
/// the interleaved layout (f32).
pub const LINEAR_NORM_OUT_INTERLEAVED: u32 = 128;

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
        /// [`LINEAR_BIAS`], [`LINEAR_RESIDUAL`], [`LINEAR_X_INTERLEAVED`], [`LINEAR_X_Q8`],
        /// [`LINEAR_X_NORM`].
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
        /// With [`LINEAR_X_NORM`]: the epsilon of the RMSNorm the kernel applies.
        eps: f32,
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
