//! The MoE block: the router, the shared expert, routing (read back, or on the GPU for
//! resident decode steps), expert loading through the cache and the combine; the expert
//! kernels themselves are in `super::experts`.

use std::collections::BTreeMap;

use super::expert_kernels::ExpertKernels;
use super::experts::expert_grid;
use super::linear::{RawNorm, XLayout};
use super::pass::{grid, Pass};
use super::weights::{GateUp, Moe, Shared, SharedExpert};
use crate::error::{Error, Result};
use crate::gpu::kernels::{self, Kernel};
use crate::gpu::params::{MoeRouteParams, RouterParams, SharedSwiGluParams};
use crate::gpu::GpuVec;

/// Average assignments per expert of a prefill pass below which
/// [`EXPERT_MATVECS_ENV`] brings back the per-assignment mat-vecs.
const TILED_EXPERT_ASSIGNMENTS: usize = 8;

/// Environment variable (`1`) that brings back, for measuring, the choice made before
/// prefill was split-invariant: per-assignment expert mat-vecs in prefill passes with
/// fewer than [`TILED_EXPERT_ASSIGNMENTS`] assignments per expert on average. Results
/// then depend on how a prompt is split into passes. (`cargo bench --bench prefill`.)
const EXPERT_MATVECS_ENV: &str = "MOESTREAM_PREFILL_EXPERT_MATVECS";

fn expert_matvecs_env() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(EXPERT_MATVECS_ENV).is_some_and(|v| v == "1"))
}

impl<'a> Pass<'a> {
    /// `x = h + routed experts (+ the gated shared expert)` over the normalized rows.
    /// With `fold` ([`Pass::folded_post_norm`]) the router's mat-vec applies the
    /// post-attention norm to the raw row `h` and writes the normalized row the others read.
    pub(crate) fn moe(&mut self, l: usize, moe: &Moe, fold: Option<RawNorm<'a>>) -> Result<()> {
        let s = self.s;
        let h = self.m.cfg.hidden_size;
        // The router's logits (and, as its last row, the shared expert's gate logit).
        let router = &moe.router;
        let bias = moe.router_bias.as_ref();
        match fold {
            Some(f) => {
                let x = (&s.h, XLayout::Natural);
                let (n, decode) = (self.n, self.decode);
                self.linear_n(router, x, &s.router_logits, bias, None, n, decode, Some(f));
            }
            None => self.linear(router, self.input(router, h), &s.router_logits, bias, None),
        }
        // The residual the combine adds the routed experts to: h, or h plus the gated
        // shared expert where it has mat-vecs of its own (computed first, from the same
        // normalized rows); a shared expert in the cache is one more routed choice.
        let resid = match &moe.shared {
            Some(Shared::Resident(sh)) => {
                self.shared_expert(sh, moe);
                &s.shared_o
            }
            Some(Shared::Dense(mlp)) => {
                self.dense_mlp(mlp, &s.shared_o, Some(&s.h));
                &s.shared_o
            }
            Some(Shared::Cached) | None => &s.h,
        };
        self.routed_experts(l, moe, resid)
    }

    /// `shared_o = h + sigmoid(sg . xn) * down(silu(gate(xn)) * up(xn))`, the gate's logit
    /// sg from the router's last row or its own mat-vec.
    fn shared_expert(&mut self, sh: &SharedExpert, moe: &Moe) {
        let s = self.s;
        let (h, n) = (self.m.cfg.hidden_size, self.n);
        // The gate logits: their buffer, floats per token, offset in a token's row.
        let (sg, s_stride, s_offset) = match &sh.gate {
            Some(gate) => {
                self.linear(gate, self.input(gate, h), &s.shared_g, None, None);
                (&s.shared_g, 1, 0)
            }
            None => (&s.router_logits, moe.router.rows, moe.spec.experts),
        };
        let inter = sh.down.cols;
        let (gb, ub, gs, go, us, uo) = match &sh.gate_up {
            GateUp::Fused(gu) => {
                self.linear(gu, self.input(gu, h), &s.shared_gu, None, None);
                (&s.shared_gu, &s.shared_gu, 2 * inter, 0, 2 * inter, inter)
            }
            GateUp::Separate { gate, up } => {
                self.linear(gate, self.input(gate, h), &s.mlp_g, None, None);
                self.linear(up, self.input(up, h), &s.mlp_u, None, None);
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

    /// `x = resid + sum_j w_j expert_j(xn)` for the experts the router picks (and the
    /// shared expert, where it rides in the cache, as choice `top_k`).
    fn routed_experts(&mut self, l: usize, moe: &Moe, resid: &wgpu::Buffer) -> Result<()> {
        let m = self.m;
        let s = self.s;
        let spec = &moe.spec;
        let cache = m
            .cache
            .as_ref()
            .ok_or_else(|| Error::Internal("MoE layer without an expert cache".into()))?;
        // The fixed slot of the shared expert riding in the cache.
        let shared_slot = match moe.shared {
            Some(Shared::Cached) => Some(cache.shared_slot(l).ok_or_else(|| {
                Error::Internal(format!(
                    "layer {l}'s shared expert has no expert cache slot"
                ))
            })?),
            _ => None,
        };
        let (n, k, ne) = (self.n, spec.top_k, spec.experts);
        // Choices per token.
        let kk = k + usize::from(shared_slot.is_some());
        if self.resident {
            // The routing kernel routes from the logits itself.
            return self.moe_resident(l, moe, resid, shared_slot.is_some());
        }
        let (groups, topk_groups, scale) = groups(spec);
        let p = RouterParams {
            n_experts: ne as u32,
            top_k: k as u32,
            routing: routing(spec),
            n_tokens: n as u32,
            logit_stride: moe.router.rows as u32,
            shared_expert: shared_code(spec, shared_slot.is_some()),
            groups,
            topk_groups,
            scale,
            ..Default::default()
        };
        let corr = moe
            .correction
            .as_ref()
            .map_or((&self.m.gpu.dummy).into(), GpuVec::bind);
        self.rec.dispatch(
            Kernel::Router,
            None,
            p.words(),
            &[
                (&s.router_logits).into(),
                (&s.route_ids).into(),
                (&s.route_w).into(),
                corr,
            ],
            grid(n),
        );
        let bytes = (n * kk * 4) as u64;
        let parts = self.rec.read(
            &[(&s.route_ids, 0, bytes), (&s.route_w, 0, bytes)],
            &s.readback,
        )?;
        let mut ids: Vec<u32> = bytemuck::pod_collect_to_vec(&parts[0]);
        if let Some((trace, t0)) = self.follow {
            // A benchmark's routing: the trace's experts for each token (cycling through
            // the trace), the routers' weights kept.
            for t in 0..n {
                if let Some(ex) = trace.experts((t0 + t) % trace.len().max(1), l) {
                    for (j, &e) in ex.iter().take(k).enumerate() {
                        ids[t * kk + j] = u32::from(e);
                    }
                }
            }
        }
        let wts: Vec<f32> = bytemuck::pod_collect_to_vec(&parts[1]);
        if let Some(log) = self.routing.as_mut() {
            log.push((l, ids.clone(), kk));
        }

        // Group the (token, choice) pairs by expert (the shared expert, id `ne`, apart).
        self.experts_routed += (n * k) as u64;
        let mut by_expert: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (flat, &e) in ids.iter().enumerate() {
            let shared = shared_slot.is_some() && flat % kk == k && e as usize == ne;
            if e as usize >= ne && !shared {
                return Err(Error::Internal(format!(
                    "router of layer {l} returned expert id {e} (the layer has {ne} experts)"
                )));
            }
            by_expert.entry(e as usize).or_default().push(flat);
        }
        let experts: Vec<usize> = by_expert.keys().copied().filter(|&e| e < ne).collect();
        let lay = m.store.layout(l).ok_or_else(|| Error::ExpertRead {
            layer: l,
            expert: experts.first().copied().unwrap_or(0),
            reason: "the expert store has no layout for this layer".into(),
            cause: None,
        })?;
        let kernels = ExpertKernels::new(l, lay, cache.slot_bytes, spec.activation)?;
        let mut route = vec![0u32; n * kk];
        let mut pairs: Vec<u32> = Vec::with_capacity(2 * n * kk);
        let mut aw: Vec<f32> = Vec::with_capacity(n * kk);
        // Quantized experts in a prefill pass: mat-mat kernels over tiles of each expert's
        // assignments (one weight read per tile of up to 32 instead of one per assignment).
        // A token's rows come out of the tiled kernels with the same sums whichever tile it
        // shares, but not with the mat-vecs' sums, so every prefill pass takes them,
        // however few its assignments (`Pass::decode`; what that costs short passes:
        // docs/performance.md, "Split-invariant prefill", and `EXPERT_MATVECS_ENV`).
        let tiled = !self.decode
            && kernels.gate_up.quant().is_some()
            && kernels.down.quant().is_some()
            && !(expert_matvecs_env() && n * k < TILED_EXPERT_ASSIGNMENTS * ne);
        let mut tiles: Vec<u32> = Vec::new();
        let mut state = cache.lock();
        let group_size = state.policy.slots();
        for (g, group) in experts.chunks(group_size).enumerate() {
            let keys: Vec<(usize, usize)> = group.iter().map(|&e| (l, e)).collect();
            let mut slots =
                cache.acquire(&m.gpu, &mut state, m.store.as_ref(), &keys, &mut self.stats)?;
            // The shared expert's assignments go with the first group's.
            let mut group = group.to_vec();
            if let (0, Some(slot)) = (g, shared_slot) {
                group.push(ne);
                slots.push(slot);
            }
            let mut order: Vec<usize> = (0..group.len()).collect();
            order.sort_by_key(|&i| slots[i]);
            let a0 = aw.len();
            // Runs of consecutive assignments within one cache page.
            let mut runs: Vec<(usize, usize, usize)> = Vec::new();
            for i in order {
                let (page, local) = cache.locate(slots[i]);
                let start = aw.len();
                for &flat in by_expert.get(&group[i]).map_or(&[][..], Vec::as_slice) {
                    route[flat] = aw.len() as u32;
                    pairs.push((flat / kk) as u32);
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
        self.combine(resid, kk);
        Ok(())
    }

    /// The MoE block of one decode token without a host round trip: the routing kernel maps
    /// the router's choices to cache slots through the GPU slot table (flagging experts that
    /// are not resident), then the expert and combine kernels run as usual. The chosen ids
    /// are logged for the host, which checks the miss flags after the step.
    fn moe_resident(
        &mut self,
        l: usize,
        moe: &Moe,
        resid: &wgpu::Buffer,
        shared: bool,
    ) -> Result<()> {
        let m = self.m;
        let s = self.s;
        let cfg = &m.cfg;
        let spec = &moe.spec;
        let (k, ne) = (spec.top_k, spec.experts);
        let (groups, topk_groups, scale) = groups(spec);
        // Choices: the routed experts, then the shared expert where it rides in the cache.
        let kk = k + usize::from(shared);
        let cache = m
            .cache
            .as_ref()
            .ok_or_else(|| Error::Internal("MoE layer without an expert cache".into()))?;
        let lay = m.store.layout(l).ok_or_else(|| Error::ExpertRead {
            layer: l,
            expert: 0,
            reason: "the expert store has no layout for this layer".into(),
            cause: None,
        })?;
        let kernels = ExpertKernels::new(l, lay, cache.slot_bytes, spec.activation)?;
        // Workgroups per assignment, as `experts` sizes the grids (for pages of up to kk
        // assignments).
        let (h, i) = (cfg.hidden_size, kernels.inter);
        let (_, _, (gate_up_x, _)) =
            expert_grid(m, kernels.gate_up.quant().is_some(), i, h, kk as u32);
        let (_, _, (down_x, _)) = expert_grid(m, kernels.down.quant().is_some(), h, i, kk as u32);
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
            table_base: (l * cache.table_stride()) as u32,
            layer: l as u32,
            slots_per_page: cache.slots_per_page as u32,
            n_pages: cache.pages.len() as u32,
            gate_up_x,
            down_x,
            page_mask,
            log_base: (cfg.num_hidden_layers + l * k) as u32,
            n_experts: ne as u32,
            routing: routing(spec),
            shared_expert: shared_code(spec, shared),
            groups,
            topk_groups,
            scale,
            ..Default::default()
        };
        let corr = moe
            .correction
            .as_ref()
            .map_or((&self.m.gpu.dummy).into(), GpuVec::bind);
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
                corr,
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
            self.experts(&kernels, &cache.pages[p], (p * kk) as u32, kk as u32, args);
        }
        self.combine(resid, kk);
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

/// The routing kernels' `routing` for a MoE variant.
fn routing(spec: &crate::arch::MoeSpec) -> u32 {
    use crate::arch::RouterKind;
    use crate::gpu::params::{
        ROUTING_SIGMOID, ROUTING_SIGMOID_NORM, ROUTING_SOFTMAX, ROUTING_SOFTMAX_NORM,
        ROUTING_TOPK_SOFTMAX,
    };
    match spec.router {
        RouterKind::TopKSoftmax => ROUTING_TOPK_SOFTMAX,
        RouterKind::Sigmoid { .. } if spec.norm_topk_prob => ROUTING_SIGMOID_NORM,
        RouterKind::Sigmoid { .. } => ROUTING_SIGMOID,
        _ if spec.norm_topk_prob => ROUTING_SOFTMAX_NORM,
        _ => ROUTING_SOFTMAX,
    }
}

/// The routing kernels' (groups, topk_groups, scale): the sigmoid routing's, else (1, 1, 1).
fn groups(spec: &crate::arch::MoeSpec) -> (u32, u32, f32) {
    match spec.router {
        crate::arch::RouterKind::Sigmoid {
            groups,
            topk_groups,
            scale,
        } => (groups as u32, topk_groups as u32, scale),
        _ => (1, 1, 1.0),
    }
}

/// The routing kernels' `shared_expert`: 0 none in the cache, 1 gated, 2 ungated.
fn shared_code(spec: &crate::arch::MoeSpec, cached: bool) -> u32 {
    match (cached, spec.shared_gate) {
        (false, _) => 0,
        (true, true) => 1,
        (true, false) => 2,
    }
}
