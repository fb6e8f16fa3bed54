//! The MoE block: routing, expert loading through the cache, the expert kernels.

use std::collections::BTreeMap;

use super::pass::{grid, interleaves, Pass, XLayout};
use super::weights::{GateUp, Moe, SharedExpert};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::WeightFormat;
use crate::gpu::kernels::{self, Kernel};
use crate::gpu::params::{
    MoeCombineParams, MoeDownParams, MoeDownQParams, MoeDownQmmParams, MoeGateUpParams,
    MoeGateUpQParams, MoeGateUpQmmParams, MoeRouteParams, RouterParams, SharedSwiGluParams,
};
use crate::gpu::Size;
use crate::model::ModelInner;
use crate::store::{ExpertLayout, ExpertTensor};

/// Average assignments per expert of a pass from which quantized experts run as tiled
/// mat-mats (`kernels/moe_*_qmm.wgsl`): on the H200, 64-token prefills of Qwen3-30B-A3B
/// (4 per expert) are faster with per-assignment mat-vecs, 512-token ones (32) 2x faster
/// tiled.
const TILED_EXPERT_ASSIGNMENTS: usize = 8;

/// Rows per team (0: the kernel's default), team (0 for the float kernels) and grid of an
/// expert projection of `rows` rows of `cols` values over `count` assignments: the
/// quantized team kernels, or the float kernels' one workgroup per row and assignment.
/// (`moe_gate_up_q_groups` and `moe_down_q_groups` size their grids alike; a grid's
/// workgroups along x do not depend on `count`, but the team may.)
pub(crate) fn expert_grid(
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

impl<'a> Pass<'a> {
    /// `x = h + routed experts (+ the gated shared expert)` over the normalized rows.
    pub(crate) fn moe(&mut self, l: usize, moe: &Moe) -> Result<()> {
        let s = self.s;
        let (h, n) = (self.m.cfg.hidden_size, self.n);
        // The router's logits (and, as its last row, the shared expert's gate logit).
        let router = &moe.router;
        self.linear(
            router,
            self.input(router, n, h),
            &s.router_logits,
            None,
            None,
        );
        // The residual the combine adds the routed experts to: h, or h plus the gated
        // shared expert (computed first, from the same normalized rows).
        let resid = match &moe.shared {
            Some(sh) => {
                self.shared_expert(sh, moe);
                &s.shared_o
            }
            None => &s.h,
        };
        self.routed_experts(l, moe, resid)
    }

    /// `shared_o = h + sigmoid(sg . xn) * down(silu(gate(xn)) * up(xn))`, the gate's logit
    /// sg from the router's last row or its own mat-vec.
    fn shared_expert(&mut self, sh: &SharedExpert, moe: &Moe) {
        let s = self.s;
        let (h, n) = (self.m.cfg.hidden_size, self.n);
        let (s_stride, s_offset) = match &sh.gate {
            Some(gate) => {
                self.linear(gate, self.input(gate, n, h), &s.shared_g, None, None);
                (1, 0)
            }
            None => (moe.router.rows, moe.spec.experts),
        };
        let sg = if sh.gate.is_some() {
            &s.shared_g
        } else {
            &s.router_logits
        };
        let inter = sh.down.cols;
        let (gb, ub, gs, go, us, uo) = match &sh.gate_up {
            GateUp::Fused(gu) => {
                self.linear(gu, self.input(gu, n, h), &s.shared_gu, None, None);
                (&s.shared_gu, &s.shared_gu, 2 * inter, 0, 2 * inter, inter)
            }
            GateUp::Separate { gate, up } => {
                self.linear(gate, self.input(gate, n, h), &s.mlp_g, None, None);
                self.linear(up, self.input(up, n, h), &s.mlp_u, None, None);
                (&s.mlp_g, &s.mlp_u, inter, 0, inter, 0)
            }
        };
        let p = SharedSwiGluParams {
            n: n as u32,
            inter: inter as u32,
            g_stride: gs as u32,
            g_offset: go as u32,
            u_stride: us as u32,
            u_offset: uo as u32,
            s_stride: s_stride as u32,
            s_offset: s_offset as u32,
        };
        self.rec.dispatch(
            Kernel::SharedSwiGlu,
            None,
            p.words(),
            &[gb.into(), ub.into(), sg.into(), (&s.mlp_a).into()],
            grid((n * inter).div_ceil(64)),
        );
        self.linear(
            &sh.down,
            (&s.mlp_a, XLayout::Natural),
            &s.shared_o,
            None,
            Some(&s.h),
        );
    }

    /// `x = h + sum_j w_j expert_j(xn)` for the experts the router picks.
    fn routed_experts(&mut self, l: usize, moe: &Moe, resid: &wgpu::Buffer) -> Result<()> {
        let m = self.m;
        let s = self.s;
        let cfg = &m.cfg;
        let spec = &moe.spec;
        let (n, k, ne) = (self.n, spec.top_k, spec.experts);
        if self.resident {
            // The routing kernel routes from the logits itself.
            return self.moe_resident(l, spec, resid);
        }
        let p = RouterParams {
            n_experts: ne as u32,
            top_k: k as u32,
            norm_topk: u32::from(spec.norm_topk_prob),
            n_tokens: n as u32,
            logit_stride: moe.router.rows as u32,
            ..Default::default()
        };
        self.rec.dispatch(
            Kernel::Router,
            None,
            p.words(),
            &[
                (&s.router_logits).into(),
                (&s.route_ids).into(),
                (&s.route_w).into(),
            ],
            grid(n),
        );
        let bytes = (n * k * 4) as u64;
        let parts = self.rec.read(
            &[(&s.route_ids, 0, bytes), (&s.route_w, 0, bytes)],
            &s.readback,
        )?;
        let ids: Vec<u32> = bytemuck::pod_collect_to_vec(&parts[0]);
        let wts: Vec<f32> = bytemuck::pod_collect_to_vec(&parts[1]);

        // Group the (token, choice) pairs by expert.
        self.experts_routed += ids.len() as u64;
        let mut by_expert: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (flat, &e) in ids.iter().enumerate() {
            if e as usize >= ne {
                return Err(Error::Gpu(format!(
                    "router of layer {l} returned expert id {e} (the layer has {ne} experts)"
                )));
            }
            by_expert.entry(e as usize).or_default().push(flat);
        }
        let experts: Vec<usize> = by_expert.keys().copied().collect();
        let cache = m
            .cache
            .as_ref()
            .ok_or_else(|| Error::Gpu("MoE layer without an expert cache".into()))?;
        let lay = m.store.layout(l).ok_or_else(|| Error::ExpertRead {
            layer: l,
            expert: experts.first().copied().unwrap_or(0),
            reason: "the expert store has no layout for this layer".into(),
            source: None,
        })?;
        let kernels = ExpertKernels::new(l, lay, cache.slot_bytes)?;
        let hs = cfg.hidden_size as u32;
        let mut route = vec![0u32; n * k];
        let mut pairs: Vec<u32> = Vec::with_capacity(2 * n * k);
        let mut aw: Vec<f32> = Vec::with_capacity(n * k);
        // Quantized experts with 8 or more assignments each on average: mat-mat kernels over
        // tiles of each expert's assignments (one weight read per tile of up to 32 instead
        // of one per assignment; with fewer, the per-assignment mat-vecs are faster).
        let tiled = n * k >= TILED_EXPERT_ASSIGNMENTS * ne
            && kernels.gate_up.quant().is_some()
            && kernels.down.quant().is_some();
        let mut tiles: Vec<u32> = Vec::new();
        let mut state = cache.lock();
        let group_size = state.policy.slots();
        for group in experts.chunks(group_size) {
            let keys: Vec<(usize, usize)> = group.iter().map(|&e| (l, e)).collect();
            let slots =
                cache.acquire(&m.gpu, &mut state, m.store.as_ref(), &keys, &mut self.stats)?;
            let mut order: Vec<usize> = (0..group.len()).collect();
            order.sort_by_key(|&i| slots[i]);
            let a0 = aw.len();
            // Runs of consecutive assignments within one cache page.
            let mut runs: Vec<(usize, usize, usize)> = Vec::new();
            for i in order {
                let (page, local) = cache.locate(slots[i]);
                let start = aw.len();
                for &flat in &by_expert[&group[i]] {
                    route[flat] = aw.len() as u32;
                    pairs.push((flat / k) as u32);
                    pairs.push(local as u32);
                    aw.push(wts[flat]);
                }
                match runs.last_mut() {
                    Some(r) if r.0 == page => r.2 += aw.len() - start,
                    _ => runs.push((page, start, aw.len() - start)),
                }
            }
            let q = &m.gpu.queue;
            q.write_buffer(
                &s.assign,
                (a0 * 8) as u64,
                bytemuck::cast_slice(&pairs[2 * a0..]),
            );
            q.write_buffer(
                &s.assign_w,
                (a0 * 4) as u64,
                bytemuck::cast_slice(&aw[a0..]),
            );
            let t0 = tiles.len();
            for (page, start, count) in runs {
                if tiled {
                    let slots: Vec<u32> =
                        (start..start + count).map(|a| pairs[2 * a + 1]).collect();
                    let base = tiles.len() / 2;
                    tiles.extend(kernels::moe_qmm_tiles(start as u32, &slots));
                    let n_tiles = tiles.len() / 2 - base;
                    self.experts_tiled(&kernels, &cache.pages[page], base as u32, n_tiles as u32);
                } else {
                    self.experts(
                        &kernels,
                        &cache.pages[page],
                        start as u32,
                        count as u32,
                        None,
                    );
                }
            }
            if tiles.len() > t0 {
                q.write_buffer(
                    &s.tiles,
                    (t0 * 4) as u64,
                    bytemuck::cast_slice(&tiles[t0..]),
                );
            }
            // Submit while the slots are pinned by the lock.
            self.rec.submit();
        }
        drop(state);
        m.gpu
            .queue
            .write_buffer(&s.route, 0, bytemuck::cast_slice(&route));
        let p = MoeCombineParams {
            hidden: hs,
            n_tokens: n as u32,
            top_k: k as u32,
            ..Default::default()
        };
        self.rec.dispatch(
            Kernel::MoeCombine,
            None,
            p.words(),
            &[
                resid.into(),
                (&s.moe_o).into(),
                (&s.route).into(),
                (&s.x).into(),
            ],
            grid((cfg.hidden_size * n).div_ceil(64)),
        );
        Ok(())
    }

    /// The gate/up and down kernels of `count` assignments from `start`, over one page. With
    /// `indirect = Some((args, offset))` the grids are read on the GPU (gate/up's at
    /// `offset`, down's 12 bytes later, as the resident routing kernel writes them) and
    /// `count` is only an upper bound.
    fn experts(
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
        // Quantized kernels read a decode token's x interleaved, and write h interleaved
        // when the down projection is quantized too.
        let x_layout = match quant {
            Some((bits, _)) if interleaves(self.n, cfg.hidden_size) => {
                XLayout::for_bits(bits, self.m.f32_activations)
            }
            _ => XLayout::Natural,
        };
        let h_il = quant.is_some() && down_quant.is_some();
        let (h, i) = (cfg.hidden_size, kernels.inter);
        let (rpt, team, groups) = expert_grid(self.m, quant.is_some(), i, h, count);
        // A 2- to 6-bit down projection reads h in the quad 8+8-bit layout (integer dot
        // products), where gate/up's workgroups compute whole quads.
        let h_quads = h_il
            && !self.m.f32_activations
            && matches!(down_quant, Some((bits, _)) if kernels::reads_q8_activations(bits))
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
                    ..Default::default()
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
                    ..Default::default()
                };
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
                    ..Default::default()
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
                    ..Default::default()
                };
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

    /// The gate/up and down mat-mat kernels of `n_tiles` tiles of assignments from tile
    /// `tile_base` (of `Scratch::tiles`), over one page of quantized experts.
    fn experts_tiled(
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
                slot_words,
                gate,
                up,
            },
            DownSlot::Quant {
                scale_dtype: down_dtype,
                quant: down_quant,
                down,
                ..
            },
        ) = (kernels.gate_up, kernels.down)
        else {
            unreachable!("tiled experts are quantized");
        };
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
            ..Default::default()
        };
        self.rec.dispatch_q(
            Kernel::MoeGateUpQmm,
            Some(gate_up_dtype),
            Some(gate_up_quant),
            p.words(),
            &[
                page.into(),
                (&s.xn).into(),
                (&s.assign).into(),
                (&s.tiles).into(),
                (&s.moe_h).into(),
            ],
            kernels::moe_gate_up_qmm_groups(is, n_tiles),
        );
        let p = MoeDownQmmParams {
            hidden: hs,
            inter: is,
            tile_base,
            slot_words,
            down_q: down[0],
            down_s: down[1],
            down_b: down[2],
            ..Default::default()
        };
        self.rec.dispatch_q(
            Kernel::MoeDownQmm,
            Some(down_dtype),
            Some(down_quant),
            p.words(),
            &[
                page.into(),
                (&s.moe_h).into(),
                (&s.assign).into(),
                (&s.tiles).into(),
                (&s.assign_w).into(),
                (&s.moe_o).into(),
            ],
            kernels::moe_down_qmm_groups(hs, n_tiles),
        );
    }

    /// The MoE block of one decode token without a host round trip: the routing kernel maps
    /// the router's choices to cache slots through the GPU slot table (flagging experts that
    /// are not resident), then the expert and combine kernels run as usual. The chosen ids
    /// are logged for the host, which checks the miss flags after the step.
    fn moe_resident(
        &mut self,
        l: usize,
        spec: &crate::arch::MoeSpec,
        resid: &wgpu::Buffer,
    ) -> Result<()> {
        let m = self.m;
        let s = self.s;
        let cfg = &m.cfg;
        let (k, ne) = (spec.top_k, spec.experts);
        let cache = m
            .cache
            .as_ref()
            .ok_or_else(|| Error::Gpu("MoE layer without an expert cache".into()))?;
        let lay = m.store.layout(l).ok_or_else(|| Error::ExpertRead {
            layer: l,
            expert: 0,
            reason: "the expert store has no layout for this layer".into(),
            source: None,
        })?;
        let kernels = ExpertKernels::new(l, lay, cache.slot_bytes)?;
        // Workgroups per assignment, as `experts` sizes the grids (for pages of up to k
        // assignments).
        let (h, i) = (cfg.hidden_size, kernels.inter);
        let (_, _, (gate_up_x, _)) =
            expert_grid(m, kernels.gate_up.quant().is_some(), i, h, k as u32);
        let (_, _, (down_x, _)) = expert_grid(m, kernels.down.quant().is_some(), h, i, k as u32);
        // Only the pages that hold any of this layer's experts get kernels (a resident
        // model preloaded layer by layer has each layer in one or two pages); the routing
        // kernel flags an expert in any other page (one filled by another session since)
        // as a miss. Past 32 pages, the pages from 32 on always get kernels.
        let pages: Vec<usize> = {
            let state = cache.lock();
            let mut p = state.policy.layer_pages(l);
            p.retain(|&p| p < 32);
            p.extend(32..cache.pages.len());
            p
        };
        let page_mask = pages
            .iter()
            .filter(|&&p| p < 32)
            .fold(0u32, |m, &p| m | (1 << p));
        let p = MoeRouteParams {
            top_k: k as u32,
            table_base: (l * ne) as u32,
            layer: l as u32,
            slots_per_page: cache.slots_per_page as u32,
            n_pages: cache.pages.len() as u32,
            gate_up_x,
            down_x,
            page_mask,
            log_base: (cfg.num_hidden_layers + l * k) as u32,
            n_experts: ne as u32,
            norm_topk: u32::from(spec.norm_topk_prob),
            ..Default::default()
        };
        self.rec.dispatch(
            Kernel::MoeRoute,
            None,
            p.words(),
            &[
                (&s.router_logits).into(),
                (&cache.table).into(),
                (&s.assign).into(),
                (&s.assign_w).into(),
                (&s.route).into(),
                (&s.route_log).into(),
                (&s.moe_args).into(),
            ],
            (1, 1),
        );
        // An indirect dispatch costs ~5 us on an H200 (its grid waits for the routing
        // kernel's writes): with the layer's experts in one or two pages (a preloaded
        // model), each page's kernels run directly over all top_k assignment rows of the
        // page, its unused ones included (the routing kernel writes them as slot 0, weight
        // 0; the combine does not read them): 182 -> 198 tok/s. More pages keep the exact
        // indirect grids.
        let direct = pages.len() <= 2;
        for p in pages {
            let args = (!direct).then(|| (&s.moe_args, (p * 24) as u64));
            self.experts(&kernels, &cache.pages[p], (p * k) as u32, k as u32, args);
        }
        let p = MoeCombineParams {
            hidden: cfg.hidden_size as u32,
            n_tokens: 1,
            top_k: k as u32,
            ..Default::default()
        };
        self.rec.dispatch(
            Kernel::MoeCombine,
            None,
            p.words(),
            &[
                resid.into(),
                (&s.moe_o).into(),
                (&s.route).into(),
                (&s.x).into(),
            ],
            grid(cfg.hidden_size.div_ceil(64)),
        );
        self.experts_routed += k as u64;
        self.since_submit += 1;
        if self.since_submit >= self.submit_chunk {
            self.rec.submit();
            self.since_submit = 0;
            self.submit_chunk *= 2;
        }
        Ok(())
    }
}

/// Where an expert's gate and up projections sit in a cache slot, by weight format.
#[derive(Debug, Clone, Copy)]
enum GateUpSlot {
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
        slot_words: u32,
        gate: [u32; 3],
        up: [u32; 3],
    },
}

impl GateUpSlot {
    /// (bits, group size) of quantized weights.
    fn quant(&self) -> Option<(u32, u32)> {
        match self {
            GateUpSlot::Float { .. } => None,
            GateUpSlot::Quant { quant, .. } => Some(*quant),
        }
    }
}

/// Where an expert's down projection sits in a cache slot, by weight format.
#[derive(Debug, Clone, Copy)]
enum DownSlot {
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
        slot_words: u32,
        down: [u32; 3],
    },
}

impl DownSlot {
    /// (bits, group size) of quantized weights.
    fn quant(&self) -> Option<(u32, u32)> {
        match self {
            DownSlot::Float { .. } => None,
            DownSlot::Quant { quant, .. } => Some(*quant),
        }
    }
}

/// How a layer's experts are computed, from their layout in a cache slot.
struct ExpertKernels {
    gate_up: GateUpSlot,
    down: DownSlot,
    /// Width of an expert (rows of gate and up).
    inter: usize,
}

impl ExpertKernels {
    fn new(l: usize, lay: &ExpertLayout, slot_bytes: u64) -> Result<Self> {
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
                slot_words,
                gate: q_offsets(g),
                up: q_offsets(u),
            },
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
                slot_words,
                down: q_offsets(d),
            },
        };
        Ok(ExpertKernels {
            gate_up,
            down,
            inter: g.rows,
        })
    }
}
