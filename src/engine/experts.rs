//! The expert kernels of a MoE block: how a layer's experts are laid out in a cache slot
//! (`ExpertKernels`), their grids, and the gate/up and down dispatches over one page of
//! the cache (per assignment, or tiled for prefill).

use super::pass::{Pass, XLayout};
use crate::arch::ExpertActivation;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::WeightFormat;
use crate::gpu::kernels::{self, Kernel};
use crate::gpu::params::{
    MoeDownParams, MoeDownQParams, MoeDownQmmParams, MoeGateUpParams, MoeGateUpQParams,
    MoeGateUpQmmParams, EXPERT_BIAS, EXPERT_CLAMPED,
};
use crate::gpu::Size;
use crate::model::ModelInner;
use crate::store::{ExpertLayout, ExpertTensor};

/// Rows per team (0: the kernel's default), team (0 for the float kernels) and grid of an
/// expert projection of `rows` rows of `cols` values over `count` assignments: the
/// quantized team kernels, or the float kernels' one workgroup per row and assignment.
/// (`moe_gate_up_q_groups` and `moe_down_q_groups` size their grids alike; a grid's
/// workgroups along x do not depend on `count`, but the team may.)
pub(super) fn expert_grid(
    m: &ModelInner,
    quantized: bool,
    rows: usize,
    cols: usize,
    count: u32,
) -> (u32, u32, (u32, u32)) {
    if quantized {
        let rpt = kernels::expert_rows_per_team(rows as u32);
        let team = m.gpu.expert_team(rows, cols, count as usize, rpt);
        (
            rpt,
            team,
            kernels::moe_gate_up_q_groups(rows as u32, count, team, rpt),
        )
    } else {
        (0, 0, (rows as u32, count))
    }
}

impl Pass<'_> {
    /// The layout the gate/up kernel of experts whose gate is in `gate` format reads x in
    /// ([`Pass::x_layout`]): quantized kernels read a decode token's x interleaved (or in
    /// 8+8-bit blocks), and write h interleaved when the down projection is quantized too.
    pub(super) fn expert_x_layout(&self, gate: WeightFormat) -> XLayout {
        self.x_layout(gate, self.decode, self.m.cfg.hidden_size)
    }

    /// The gate/up and down kernels of `count` assignments from `start`, over one page. With
    /// `indirect = Some((args, offset))` the grids are read on the GPU (gate/up's at
    /// `offset`, down's 12 bytes later, as the resident routing kernel writes them) and
    /// `count` is only an upper bound.
    pub(super) fn experts(
        &mut self,
        kernels: &ExpertKernels,
        page: &wgpu::Buffer,
        start: u32,
        count: u32,
        indirect: Option<(&wgpu::Buffer, u64)>,
    ) {
        let s = self.s;
        let cfg = &self.m.cfg;
        let (hs, is) = (cfg.hidden_size as u32, kernels.inter as u32);
        let quant = kernels.gate_up.quant();
        let down_quant = kernels.down.quant();
        let x_layout = self.expert_x_layout(kernels.gate_format);
        let ep = kernels.epilogue;
        let h_il = quant.is_some() && down_quant.is_some();
        let (h, i) = (cfg.hidden_size, kernels.inter);
        let (rpt, team, groups) = expert_grid(self.m, quant.is_some(), i, h, count);
        // A 2- to 6-bit down projection reads h in the quad 8+8-bit layout (integer dot
        // products), where gate/up's workgroups compute whole quads.
        let h_quads = h_il
            && !self.m.f32_activations
            && kernels.down.reads_quads()
            && kernels::writes_quad_h(team, rpt);
        let mut binds = vec![
            page.into(),
            s.row_in(x_layout).into(),
            (&s.assign).into(),
            (&s.moe_h).into(),
        ];
        if quant.is_some() {
            binds.push(page.into()); // the page again as words (`ws`, include/qblock.wgsl)
        }
        // The grid: direct, or read on the GPU `skip` bytes past the page's arguments.
        let size = |groups: (u32, u32), skip: u64| match indirect {
            None => Size::Direct(groups),
            Some((args, at)) => Size::Indirect(args, at + skip),
        };
        match kernels.gate_up {
            GateUpSlot::Float {
                dtype,
                gate_off,
                up_off,
                slot_elems,
            } => {
                let p = MoeGateUpParams {
                    hidden: hs,
                    inter: is,
                    assign_base: start,
                    n_assign: count,
                    gate_off,
                    up_off,
                    slot_elems,
                    act: ep.act,
                    gate_bias: ep.gate_bias,
                    up_bias: ep.up_bias,
                    alpha: ep.alpha,
                    limit: ep.limit,
                };
                self.rec.dispatch_sized(
                    Kernel::MoeGateUp,
                    Some(dtype),
                    None,
                    rpt,
                    p.words(),
                    &binds,
                    size(groups, 0),
                );
            }
            GateUpSlot::Quant {
                scale_dtype,
                quant,
                code,
                slot_words,
                gate,
                up,
            } => {
                let x_flags = match x_layout {
                    XLayout::Natural => 0,
                    XLayout::Interleaved => MoeGateUpQParams::X_INTERLEAVED,
                    XLayout::Q8 => MoeGateUpQParams::X_Q8,
                };
                let p = MoeGateUpQParams {
                    hidden: hs,
                    inter: is,
                    assign_base: start,
                    n_assign: count,
                    slot_words,
                    gate_q: gate[0],
                    gate_s: gate[1],
                    gate_b: gate[2],
                    up_q: up[0],
                    up_s: up[1],
                    up_b: up[2],
                    team,
                    flags: x_flags
                        | if h_il {
                            MoeGateUpQParams::H_INTERLEAVED
                        } else {
                            0
                        }
                        | if h_quads {
                            MoeGateUpQParams::H_QUAD_Q8
                        } else {
                            0
                        },
                    act: ep.act,
                    gate_bias: ep.gate_bias,
                    up_bias: ep.up_bias,
                    alpha: ep.alpha,
                    limit: ep.limit,
                    ..Default::default()
                };
                if let Some(code) = code {
                    let k = Kernel::MoeGateUpQ;
                    let g = size(groups, 0);
                    self.rec
                        .record(k, code, Some(quant), rpt, p.words(), &binds, g);
                } else {
                    self.rec.dispatch_sized(
                        Kernel::MoeGateUpQ,
                        Some(scale_dtype),
                        Some(quant),
                        rpt,
                        p.words(),
                        &binds,
                        size(groups, 0),
                    );
                }
            }
        }
        let (rpt, team, groups) = expert_grid(self.m, down_quant.is_some(), h, i, count);
        let mut binds = vec![
            page.into(),
            (&s.moe_h).into(),
            (&s.assign).into(),
            (&s.assign_w).into(),
            (&s.moe_o).into(),
        ];
        if down_quant.is_some() {
            binds.push(page.into());
        }
        match kernels.down {
            DownSlot::Float {
                dtype,
                down_off,
                slot_elems,
            } => {
                let p = MoeDownParams {
                    hidden: hs,
                    inter: is,
                    assign_base: start,
                    n_assign: count,
                    down_off,
                    slot_elems,
                    act: ep.act & EXPERT_BIAS,
                    down_bias: ep.down_bias,
                };
                self.rec.dispatch_sized(
                    Kernel::MoeDown,
                    Some(dtype),
                    None,
                    rpt,
                    p.words(),
                    &binds,
                    size(groups, 12),
                );
            }
            DownSlot::Quant {
                scale_dtype,
                quant,
                code,
                slot_words,
                down,
            } => {
                let p = MoeDownQParams {
                    hidden: hs,
                    inter: is,
                    assign_base: start,
                    n_assign: count,
                    slot_words,
                    down_q: down[0],
                    down_s: down[1],
                    down_b: down[2],
                    team,
                    flags: if h_quads {
                        MoeDownQParams::H_QUAD_Q8
                    } else if h_il {
                        MoeDownQParams::H_INTERLEAVED
                    } else {
                        0
                    },
                    act: ep.act & EXPERT_BIAS,
                    down_bias: ep.down_bias,
                };
                if let Some(code) = code {
                    let k = Kernel::MoeDownQ;
                    let g = size(groups, 12);
                    self.rec
                        .record(k, code, Some(quant), rpt, p.words(), &binds, g);
                } else {
                    self.rec.dispatch_sized(
                        Kernel::MoeDownQ,
                        Some(scale_dtype),
                        Some(quant),
                        rpt,
                        p.words(),
                        &binds,
                        size(groups, 12),
                    );
                }
            }
        }
    }

    /// The prefill mat-mat kernel to run: `coop` (on cooperative matrices) where the model
    /// asked for them (`ModelBuilder::f16_prefill` on an adapter that has them) and the K
    /// dimension `k` is a multiple of their 64-column K tiles, else `plain`.
    pub(super) fn tiled(&self, plain: Kernel, coop: Kernel, k: u32) -> Kernel {
        if self.m.gpu.summary.cooperative_matrices && k % 64 == 0 {
            coop
        } else {
            plain
        }
    }

    /// The gate/up and down mat-mat kernels of `n_tiles` tiles of assignments from tile
    /// `tile_base` (of `Scratch::tiles`), over one page of quantized experts.
    pub(super) fn experts_tiled(
        &mut self,
        kernels: &ExpertKernels,
        page: &wgpu::Buffer,
        tile_base: u32,
        n_tiles: u32,
    ) {
        let s = self.s;
        let cfg = &self.m.cfg;
        let (hs, is) = (cfg.hidden_size as u32, kernels.inter as u32);
        let (
            GateUpSlot::Quant {
                scale_dtype: gate_up_dtype,
                quant: gate_up_quant,
                code: gate_up_code,
                slot_words,
                gate,
                up,
            },
            DownSlot::Quant {
                scale_dtype: down_dtype,
                quant: down_quant,
                code: down_code,
                down,
                ..
            },
        ) = (kernels.gate_up, kernels.down)
        else {
            unreachable!("tiled experts are quantized");
        };
        let ep = kernels.epilogue;
        let p = MoeGateUpQmmParams {
            hidden: hs,
            inter: is,
            tile_base,
            slot_words,
            gate_q: gate[0],
            gate_s: gate[1],
            gate_b: gate[2],
            up_q: up[0],
            up_s: up[1],
            up_b: up[2],
            act: ep.act,
            gate_bias: ep.gate_bias,
            up_bias: ep.up_bias,
            alpha: ep.alpha,
            limit: ep.limit,
            ..Default::default()
        };
        let binds = [
            page.into(),
            (&s.xn).into(),
            (&s.assign).into(),
            (&s.tiles).into(),
            (&s.moe_h).into(),
        ];
        let groups = Size::Direct(kernels::moe_gate_up_qmm_groups(is, n_tiles));
        let kernel = self.tiled(Kernel::MoeGateUpQmm, Kernel::MoeGateUpQmmCoop, hs);
        let code = gate_up_code.unwrap_or_else(|| gate_up_dtype.shader_code());
        let q = Some(gate_up_quant);
        self.rec
            .record(kernel, code, q, 0, p.words(), &binds, groups);
        let p = MoeDownQmmParams {
            hidden: hs,
            inter: is,
            tile_base,
            slot_words,
            down_q: down[0],
            down_s: down[1],
            down_b: down[2],
            act: ep.act & EXPERT_BIAS,
            down_bias: ep.down_bias,
            ..Default::default()
        };
        let binds = [
            page.into(),
            (&s.moe_h).into(),
            (&s.assign).into(),
            (&s.tiles).into(),
            (&s.assign_w).into(),
            (&s.moe_o).into(),
        ];
        let groups = Size::Direct(kernels::moe_down_qmm_groups(hs, n_tiles));
        let kernel = self.tiled(Kernel::MoeDownQmm, Kernel::MoeDownQmmCoop, is);
        let code = down_code.unwrap_or_else(|| down_dtype.shader_code());
        self.rec
            .record(kernel, code, Some(down_quant), 0, p.words(), &binds, groups);
    }
}

/// Where an expert's gate and up projections sit in a cache slot, by weight format.
#[derive(Debug, Clone, Copy)]
pub(super) enum GateUpSlot {
    /// Float weights ([`Kernel::MoeGateUp`]): element offsets of gate and up, elements per
    /// slot.
    Float {
        dtype: DType,
        gate_off: u32,
        up_off: u32,
        slot_elems: u32,
    },
    /// Quantized weights ([`Kernel::MoeGateUpQ`], [`Kernel::MoeGateUpQmm`]): words per slot
    /// and the word offsets of gate's and up's codes, scales and biases.
    Quant {
        scale_dtype: DType,
        quant: (u32, u32),
        /// The `WDT` code of a format other than MLX affine: MXFP4
        /// ([`kernels::WDT_MXFP4`]) or FP8 ([`kernels::WDT_FP8`]); `scale_dtype` then unused.
        code: Option<u32>,
        slot_words: u32,
        gate: [u32; 3],
        up: [u32; 3],
    },
}

impl GateUpSlot {
    /// (bits, group size) of quantized weights.
    pub fn quant(&self) -> Option<(u32, u32)> {
        match self {
            GateUpSlot::Float { .. } => None,
            GateUpSlot::Quant { quant, .. } => Some(*quant),
        }
    }
}

/// Where an expert's down projection sits in a cache slot, by weight format.
#[derive(Debug, Clone, Copy)]
pub(super) enum DownSlot {
    /// Float weights ([`Kernel::MoeDown`]): element offset of down, elements per slot.
    Float {
        dtype: DType,
        down_off: u32,
        slot_elems: u32,
    },
    /// Quantized weights ([`Kernel::MoeDownQ`], [`Kernel::MoeDownQmm`]): words per slot and
    /// the word offsets of down's codes, scales and biases.
    Quant {
        scale_dtype: DType,
        quant: (u32, u32),
        /// The `WDT` code of a format other than MLX affine: MXFP4
        /// ([`kernels::WDT_MXFP4`]) or FP8 ([`kernels::WDT_FP8`]); `scale_dtype` then unused.
        code: Option<u32>,
        slot_words: u32,
        down: [u32; 3],
    },
}

impl DownSlot {
    /// (bits, group size) of quantized weights.
    pub fn quant(&self) -> Option<(u32, u32)> {
        match self {
            DownSlot::Float { .. } => None,
            DownSlot::Quant { quant, .. } => Some(*quant),
        }
    }

    /// Whether the weights are 2- to 6-bit affine codes, which can be dotted with h in the
    /// quad 8+8-bit layout.
    fn reads_quads(&self) -> bool {
        matches!(self, DownSlot::Quant { quant: (bits, _), code: None, .. }
            if kernels::reads_q8_activations(*bits))
    }
}

/// The biases and activation of an expert's projections: the kernels' `act` word, the
/// word offsets of the gate, up and down biases inside a slot, alpha and limit.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Epilogue {
    pub act: u32,
    pub gate_bias: u32,
    pub up_bias: u32,
    pub down_bias: u32,
    pub alpha: f32,
    pub limit: f32,
}

/// Checks that the expert kernels run experts of layer `l` laid out as `lay` (at
/// `Model::build`, and again where the kernels are chosen): an
/// [`Error::InvalidArgument`] naming what they do not take.
pub(crate) fn check_layout(l: usize, lay: &ExpertLayout) -> Result<()> {
    let [g, u, _] = &lay.tensors;
    if g.format != u.format {
        return Err(Error::InvalidArgument(format!(
            "layer {l}: expert gate ({}) and up ({}) projections in different formats are not supported",
            g.format, u.format
        )));
    }
    // The FP8 kernels read rows in blocks of 32 codes (as every quantized format's).
    if let Some(t) = lay
        .tensors
        .iter()
        .find(|t| t.format == WeightFormat::Fp8Block && t.cols % 32 != 0)
    {
        return Err(Error::InvalidArgument(format!(
            "layer {l}: FP8 experts of {} x {}: the GPU kernels need FP8 expert rows of a multiple of 32 values",
            t.rows, t.cols
        )));
    }
    Ok(())
}

/// How a layer's experts are computed, from their layout in a cache slot.
pub(super) struct ExpertKernels {
    pub gate_up: GateUpSlot,
    pub down: DownSlot,
    pub epilogue: Epilogue,
    /// Width of an expert (rows of gate and up).
    pub inter: usize,
    /// The gate's weight format, which says how the gate/up kernel reads x
    /// ([`Pass::expert_x_layout`]).
    pub gate_format: WeightFormat,
}

impl ExpertKernels {
    pub(super) fn new(
        l: usize,
        lay: &ExpertLayout,
        slot_bytes: u64,
        activation: ExpertActivation,
    ) -> Result<Self> {
        check_layout(l, lay)?;
        let [g, u, d] = &lay.tensors;
        let slot_words = (slot_bytes / 4) as u32;
        // Word offsets of a quantized tensor's codes, scales and biases in a slot.
        let q_offsets = |t: &ExpertTensor| -> [u32; 3] {
            let parts = t.format.parts(t.rows, t.cols);
            [
                (t.offset / 4) as u32,
                ((t.offset + parts.scales.0) / 4) as u32,
                ((t.offset + parts.biases.0) / 4) as u32,
            ]
        };
        let gate_up = match (g.format, u.format) {
            (WeightFormat::Float(a), WeightFormat::Float(b)) if a == b => {
                let es = a.size();
                GateUpSlot::Float {
                    dtype: a,
                    gate_off: (g.offset / es) as u32,
                    up_off: (u.offset / es) as u32,
                    slot_elems: (slot_bytes as usize / es) as u32,
                }
            }
            (WeightFormat::Affine(a), WeightFormat::Affine(b)) if a == b => GateUpSlot::Quant {
                scale_dtype: a.scale_dtype,
                quant: (a.bits, a.group_size),
                code: None,
                slot_words,
                gate: q_offsets(g),
                up: q_offsets(u),
            },
            (a, b) if a == b && matches!(a, WeightFormat::Mxfp4 | WeightFormat::Fp8Block) => {
                let (code, quant) = super::pass::quant_constants(a);
                GateUpSlot::Quant {
                    scale_dtype: DType::F32,
                    quant: quant.unwrap_or((8, 128)),
                    code: Some(code),
                    slot_words,
                    gate: q_offsets(g),
                    up: q_offsets(u),
                }
            }
            (a, b) => {
                return Err(Error::InvalidArgument(format!(
                    "layer {l}: expert gate ({a}) and up ({b}) projections in different formats are not supported"
                )))
            }
        };
        let down = match d.format {
            WeightFormat::Float(a) => {
                let es = a.size();
                DownSlot::Float {
                    dtype: a,
                    down_off: (d.offset / es) as u32,
                    slot_elems: (slot_bytes as usize / es) as u32,
                }
            }
            WeightFormat::Affine(q) => DownSlot::Quant {
                scale_dtype: q.scale_dtype,
                quant: (q.bits, q.group_size),
                code: None,
                slot_words,
                down: q_offsets(d),
            },
            f @ (WeightFormat::Mxfp4 | WeightFormat::Fp8Block) => {
                let (code, quant) = super::pass::quant_constants(f);
                DownSlot::Quant {
                    scale_dtype: DType::F32,
                    quant: quant.unwrap_or((8, 128)),
                    code: Some(code),
                    slot_words,
                    down: q_offsets(d),
                }
            }
        };
        let mut epilogue = Epilogue::default();
        match (g.bias, u.bias, d.bias) {
            (Some(gb), Some(ub), Some(db)) => {
                epilogue.act |= EXPERT_BIAS;
                epilogue.gate_bias = (gb / 4) as u32;
                epilogue.up_bias = (ub / 4) as u32;
                epilogue.down_bias = (db / 4) as u32;
            }
            (None, None, None) => {}
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "layer {l}: expert biases on some projections only are not supported"
                )))
            }
        }
        match activation {
            ExpertActivation::SwiGlu => {}
            ExpertActivation::ClampedSwiGlu { alpha, limit } => {
                epilogue.act |= EXPERT_CLAMPED;
                epilogue.alpha = alpha;
                epilogue.limit = limit;
            }
        }
        Ok(ExpertKernels {
            gate_up,
            down,
            epilogue,
            inter: g.rows,
            gate_format: g.format,
        })
    }
}
