//! The expert kernels' dispatches of a MoE block: their grids, the layout they read x in,
//! and the gate/up and down dispatches over one page of the cache (per assignment, or
//! tiled for prefill). What they read a slot with is `super::expert_kernels`.

use super::expert_kernels::{DownSlot, ExpertKernels, GateUpSlot};
use super::linear::XLayout;
use super::pass::Pass;
use crate::format::WeightFormat;
use crate::gpu::kernels::{self, Kernel};
use crate::gpu::params::{
    MoeDownParams, MoeDownQParams, MoeDownQmmParams, MoeGateUpParams, MoeGateUpQParams,
    MoeGateUpQmmParams, EXPERT_BIAS,
};
use crate::gpu::Size;
use crate::model::ModelInner;

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
