//! The linear maps of a pass (y = x W^T, + bias, + residual) by weight format: mat-vecs
//! for a decode step's row, mat-mats for a prefill pass's rows, and the layouts a
//! quantized mat-vec reads its row in (natural, interleaved, 8+8-bit blocks), including a
//! row a norm was folded into.

use super::pass::{grid, Pass};
use super::state::Scratch;
use crate::format::WeightFormat;
use crate::gpu::kernels::{self, Kernel};
use crate::gpu::params::{
    MatMulParams, MatVecParams, QMatMulParams, QMatVecParams, LINEAR_BIAS,
    LINEAR_NORM_OUT_INTERLEAVED, LINEAR_NORM_OUT_Q8, LINEAR_RESIDUAL, LINEAR_X_INTERLEAVED,
    LINEAR_X_NORM, LINEAR_X_Q8, LINEAR_X_RAW_NORM,
};
use crate::gpu::Size;
use crate::gpu::{GpuMatrix, GpuVec};

/// The layout of a mat-vec's input row (`kernels/include/interleave.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum XLayout {
    /// Values in order.
    Natural,
    /// Interleaved for the team kernels' loads.
    Interleaved,
    /// 8+8-bit blocks for integer dot products with 2- to 6-bit codes.
    Q8,
}

impl XLayout {
    /// The layout a quantized kernel of `bits` reads a decode row in (f32 values unless
    /// 2- to 6-bit and not `f32_activations`, see `ModelBuilder::f32_activations`).
    pub(crate) fn for_bits(bits: u32, f32_activations: bool) -> XLayout {
        if kernels::reads_q8_activations(bits) && !f32_activations {
            XLayout::Q8
        } else {
            XLayout::Interleaved
        }
    }
}

impl Scratch {
    /// The buffer holding the normalized decode row in `layout`.
    pub(crate) fn row_in(&self, layout: XLayout) -> &wgpu::Buffer {
        match layout {
            XLayout::Natural => &self.xn,
            XLayout::Interleaved => &self.xi,
            XLayout::Q8 => &self.xq,
        }
    }
}

/// Whether a normalization of `len` values also writes its row in the interleaved layout
/// (`kernels/include/interleave.wgsl`): a `vector` row (the one row of a decode step, or
/// the row the logits are read from) whose length the layout allows.
pub(crate) fn interleaves(vector: bool, len: usize) -> bool {
    vector && len % 32 == 0
}

/// A norm a quantized mat-vec applies to its raw input row ([`LINEAR_X_RAW_NORM`]): the
/// norm's weight and the layout of the normalized row it writes for the row's other
/// readers (the post-attention norm a decode step folds into the MoE router,
/// [`Pass::folded_post_norm`]).
pub(crate) type RawNorm<'a> = (&'a GpuVec, XLayout);

/// Environment variable (`1`, `2` or `4`) that sets, for measuring (`benches/ab.sh`), the
/// rows per team of the decode mat-vecs of 2049 to 16384 rows (a fused q/k/v, an MoE
/// model's dense FFN; not the LM head); unset, [`kernels::qmatvec_rows_per_team`]. The
/// `qmatvec` bench times the 30B's q/k/v at 8.55 us with 2 rows and 6.49 with 4,
/// serialized; inside a step it is unmeasured.
const QMATVEC_ROWS_ENV: &str = "MOESTREAM_QMATVEC_ROWS";

fn wide_rows_per_team() -> Option<u32> {
    static ROWS: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| {
        std::env::var(QMATVEC_ROWS_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|n| [1, 2, 4].contains(n))
    })
}

impl<'a> Pass<'a> {
    /// y = x W^T (+ bias) (+ resid) for `self.n` tokens, x in layout `x.1` (other than
    /// natural only for a quantized `w` and a decode step, see [`Pass::input`]): mat-vecs
    /// for a decode step, mat-mats for a prefill pass ([`Pass::decode`]).
    pub(crate) fn linear(
        &mut self,
        w: &GpuMatrix,
        x: (&wgpu::Buffer, XLayout),
        y: &wgpu::Buffer,
        bias: Option<&GpuVec>,
        resid: Option<&wgpu::Buffer>,
    ) {
        self.linear_n(w, x, y, bias, resid, self.n, self.decode, None);
    }

    /// The input of a linear map by `w` of the pass's rows of `len` values normalized by
    /// [`Pass::rmsnorm`]: in a decode step, where the norm wrote the other layouts and `w`
    /// is quantized, the 8+8-bit copy `xq` for 2- to 6-bit weights (integer dot products)
    /// or the interleaved copy `xi` (fewer cache lines per load); else `xn`.
    pub(crate) fn input(&self, w: &GpuMatrix, len: usize) -> (&'a wgpu::Buffer, XLayout) {
        self.input_of(w, self.decode, len)
    }

    /// [`Pass::input`] of a `vector` row or of the pass's rows.
    pub(super) fn input_of(
        &self,
        w: &GpuMatrix,
        vector: bool,
        len: usize,
    ) -> (&'a wgpu::Buffer, XLayout) {
        let layout = self.x_layout(w.format, vector, len);
        (self.s.row_in(layout), layout)
    }

    /// The layout in which the kernels of weights in `format` read a `vector` row (or the
    /// pass's rows) of `len` values: quantized mat-vecs read a decode row interleaved, or
    /// in 8+8-bit blocks for 2- to 6-bit codes; everything else the natural layout.
    pub(super) fn x_layout(&self, format: WeightFormat, vector: bool, len: usize) -> XLayout {
        match format {
            WeightFormat::Affine(q) if interleaves(vector, len) => {
                XLayout::for_bits(q.bits, self.m.f32_activations)
            }
            // MXFP4 and FP8 codes are not spread for integer dot products: f32 rows.
            WeightFormat::Mxfp4 | WeightFormat::Fp8Block if interleaves(vector, len) => {
                XLayout::Interleaved
            }
            _ => XLayout::Natural,
        }
    }

    /// [`Pass::linear`] of `n` rows: by the mat-vec kernels for a `vector` row (n = 1),
    /// else by the mat-mat kernels. With `raw`, `x` is a raw row (natural layout) that a
    /// quantized mat-vec normalizes ([`RawNorm`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear_n(
        &mut self,
        w: &GpuMatrix,
        (x, layout): (&wgpu::Buffer, XLayout),
        y: &wgpu::Buffer,
        bias: Option<&GpuVec>,
        resid: Option<&wgpu::Buffer>,
        n: usize,
        vector: bool,
        raw: Option<RawNorm<'a>>,
    ) {
        let dummy = &self.m.gpu.dummy;
        debug_assert!(!vector || n == 1);
        debug_assert!(
            raw.is_none()
                || (vector
                    && layout == XLayout::Natural
                    && matches!(w.format, WeightFormat::Affine(_)))
        );
        debug_assert!(
            layout == XLayout::Natural
                || (vector
                    && matches!(
                        w.format,
                        WeightFormat::Affine(_) | WeightFormat::Mxfp4 | WeightFormat::Fp8Block
                    ))
        );
        // A row the combine left unnormalized is read in its layout only.
        let unnormed = self
            .unnormed
            .is_some_and(|l| l == layout && std::ptr::eq(x, self.s.row_in(l)));
        debug_assert!(
            self.unnormed.is_none()
                || unnormed
                || ![&self.s.xn, &self.s.xi, &self.s.xq]
                    .into_iter()
                    .any(|b| std::ptr::eq(x, b)),
            "a mat-vec reads a stale row of a norm folded into the combine"
        );
        let flags = if bias.is_some() { LINEAR_BIAS } else { 0 }
            | if resid.is_some() { LINEAR_RESIDUAL } else { 0 }
            | match raw {
                None => 0,
                Some((_, XLayout::Q8)) => LINEAR_X_RAW_NORM | LINEAR_NORM_OUT_Q8,
                Some(_) => LINEAR_X_RAW_NORM | LINEAR_NORM_OUT_INTERLEAVED,
            }
            | match layout {
                XLayout::Natural => 0,
                XLayout::Interleaved => LINEAR_X_INTERLEAVED,
                XLayout::Q8 => LINEAR_X_Q8,
            }
            | if unnormed { LINEAR_X_NORM } else { 0 };
        let eps = self.m.cfg.rms_norm_eps;
        let bias_buf = bias.map_or(dummy, |b| &b.buffer);
        let resid_buf = match raw {
            Some((g, _)) => &g.buffer,
            None => resid.unwrap_or(dummy),
        };
        // Where the router writes the normalized row (else y again, unused).
        let norm_out = raw.map_or(y, |(_, l)| self.s.row_in(l));
        for (buf, row0, rows) in &w.chunks {
            let binds = [
                buf.into(),
                x.into(),
                bias_buf.into(),
                resid_buf.into(),
                y.into(),
            ];
            let (r, c, r0) = (*rows as u32, w.cols as u32, *row0 as u32);
            match w.format {
                WeightFormat::Float(dt) if vector => {
                    let p = MatVecParams {
                        rows: r,
                        cols: c,
                        row_base: r0,
                        flags,
                        x_offset: 0,
                        ..Default::default()
                    };
                    self.rec
                        .dispatch(Kernel::MatVec, Some(dt), p.words(), &binds, grid(*rows))
                }
                WeightFormat::Float(dt) => {
                    let p = MatMulParams {
                        rows: r,
                        cols: c,
                        n_tokens: n as u32,
                        row_base: r0,
                        out_stride: w.rows as u32,
                        flags,
                        ..Default::default()
                    };
                    self.rec.dispatch(
                        Kernel::MatMul,
                        Some(dt),
                        p.words(),
                        &binds,
                        (rows.div_ceil(16) as u32, n.div_ceil(16) as u32),
                    )
                }
                WeightFormat::Affine(_) | WeightFormat::Mxfp4 | WeightFormat::Fp8Block => {
                    let parts = w.format.parts(*rows, w.cols);
                    let (sw, bw) = ((parts.scales.0 / 4) as u32, (parts.biases.0 / 4) as u32);
                    let (code, quant) = quant_constants(w.format);
                    if vector {
                        let team = self.m.gpu.qmatvec_team(*rows, w.cols);
                        let rpt = match wide_rows_per_team() {
                            Some(n) if r > 2048 && r <= 16384 => n,
                            _ => kernels::qmatvec_rows_per_team(r),
                        };
                        // The weights again as words (`ws`, include/qblock.wgsl).
                        let [b0, b1, b2, b3, b4] = binds;
                        let b6 = norm_out.into();
                        let p = QMatVecParams {
                            rows: r,
                            cols: c,
                            row_base: r0,
                            flags,
                            x_offset: 0,
                            scales_word: sw,
                            biases_word: bw,
                            team,
                            eps,
                            ..Default::default()
                        };
                        self.rec.record(
                            Kernel::QMatVec,
                            code,
                            quant,
                            rpt,
                            p.words(),
                            &[b0, b1, b2, b3, b4, buf.into(), b6],
                            Size::Direct(kernels::qmatvec_groups(r, team, rpt)),
                        );
                    } else {
                        let p = QMatMulParams {
                            rows: r,
                            cols: c,
                            n_tokens: n as u32,
                            row_base: r0,
                            out_stride: w.rows as u32,
                            flags,
                            scales_word: sw,
                            biases_word: bw,
                        };
                        // Tensor cores where asked for (every prefill pass alike).
                        let kernel = self.tiled(Kernel::QMatMul, Kernel::QMatMulCoop, c);
                        let groups = if kernel == Kernel::QMatMulCoop {
                            kernels::qmatmul_coop_groups(r, n as u32)
                        } else {
                            kernels::qmatmul_groups(r, n as u32)
                        };
                        self.rec.record(
                            kernel,
                            code,
                            quant,
                            0,
                            p.words(),
                            &binds,
                            Size::Direct(groups),
                        );
                    }
                }
            }
        }
    }
}

/// The `WDT` code and `Some((bits, group))` of a quantized matrix's kernels (`(0, None)`
/// for a float one).
pub(crate) fn quant_constants(f: WeightFormat) -> (u32, Option<(u32, u32)>) {
    match f {
        WeightFormat::Affine(q) => (q.scale_dtype.shader_code(), Some((q.bits, q.group_size))),
        WeightFormat::Mxfp4 => (kernels::WDT_MXFP4, Some((4, 32))),
        WeightFormat::Fp8Block => (kernels::WDT_FP8, Some((8, 128))),
        WeightFormat::Float(d) => (d.shader_code(), None),
    }
}
