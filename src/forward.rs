//! One forward pass over a run of tokens: the kernels of each layer recorded in order, with
//! a routing readback and expert loading at each MoE layer.

use std::collections::BTreeMap;

use crate::cache::CacheStats;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::WeightFormat;
use crate::gpu::kernels::{self, Kernel};
use crate::gpu::{GpuMatrix, GpuVec, Recorder, Size};
use crate::model::ModelInner;
use crate::sampling::Candidate;
use crate::session::Scratch;
use crate::store::{ExpertLayout, ExpertTensor};
use crate::weights::{Layer, Mlp, Qkv};

fn grid(n: usize) -> (u32, u32) {
    crate::gpu::grid_of(n as u32)
}

fn bits(f: f32) -> u32 {
    f.to_bits()
}

/// The layout of a mat-vec's input row (`kernels/include/interleave.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum XLayout {
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
    fn for_bits(bits: u32, f32_activations: bool) -> XLayout {
        if kernels::reads_q8_activations(bits) && !f32_activations {
            XLayout::Q8
        } else {
            XLayout::Interleaved
        }
    }
}

impl Scratch {
    /// The buffer holding the normalized decode row in `layout`.
    fn row_in(&self, layout: XLayout) -> &wgpu::Buffer {
        match layout {
            XLayout::Natural => &self.xn,
            XLayout::Interleaved => &self.xi,
            XLayout::Q8 => &self.xq,
        }
    }
}

/// Rows per team (0: the kernel's default), team (0 for the float kernels) and grid of an
/// expert projection of `rows` rows of `cols` values over `count` assignments: the
/// quantized team kernels, or the float kernels' one workgroup per row and assignment.
/// (`moe_gate_up_q_groups` and `moe_down_q_groups` size their grids alike; a grid's
/// workgroups along x do not depend on `count`, but the team may.)
fn expert_grid(
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

/// Whether a normalization of `rows` rows of `len` values also writes its row in the
/// interleaved layout (`kernels/include/interleave.wgsl`): decode rows whose length the
/// layout allows.
fn interleaves(rows: usize, len: usize) -> bool {
    rows == 1 && len % 32 == 0
}

/// The state one forward pass works on.
pub(crate) struct Pass<'a> {
    pub m: &'a ModelInner,
    pub s: &'a Scratch,
    pub rec: Recorder<'a>,
    /// Tokens in this pass.
    pub n: usize,
    /// Position of the first token.
    pub pos0: usize,
    pub stats: CacheStats,
    /// (token, expert) routing choices made so far.
    pub experts_routed: u64,
    /// Route through the GPU slot table instead of reading the routing back (decode of a
    /// model whose cache is one page); see [`Pass::moe_resident`].
    pub resident: bool,
    /// MoE layers recorded since the last submit (resident passes submit in chunks).
    pub since_submit: usize,
    /// MoE layers in the resident pass's current chunk: 1, then doubling
    /// ([`RESIDENT_FIRST_CHUNK`]).
    pub submit_chunk: usize,
}

/// Average assignments per expert of a pass from which quantized experts run as tiled
/// mat-mats (`kernels/moe_*_qmm.wgsl`): on the H200, 64-token prefills of Qwen3-30B-A3B
/// (4 per expert) are faster with per-assignment mat-vecs, 512-token ones (32) 2x faster
/// tiled.
const TILED_EXPERT_ASSIGNMENTS: usize = 8;

/// A resident pass submits its first this many MoE layers, then chunks twice as long as
/// the last (1, 2, 4, 8, ... layers), so the GPU starts after one layer's recording and the
/// step pays for few submits. Recording a layer takes the host about half as long as the
/// GPU takes to run it (wgpu's `CommandEncoder::finish` is most of it), so the host stays
/// ahead. Measured on an H200 (`cargo bench --bench decode -- --resident-only`,
/// Qwen3-30B-A3B 4-bit, 48 layers): a submit every 1 / 2 / 4 / 8 / 16 layers 168 / 188 /
/// 198 / 205 / 204 tok/s, one per token 158; in four alternating runs each, every 4 layers
/// 198.5 tok/s (greedy with a top-1 readback 202.5, all logits 186.1), doubling chunks
/// from 1 layer 201.2 (211.9, 195.3). The host's recording time varies from run to run
/// (1.7-3.1 ms per token), and with it these numbers.
pub(crate) const RESIDENT_FIRST_CHUNK: usize = 1;

impl<'a> Pass<'a> {
    /// y = x W^T (+ bias) (+ resid) for `self.n` tokens, x in layout `x.1` (other than
    /// natural only for a quantized `w` and one token, see [`Pass::input`]).
    fn linear(
        &mut self,
        w: &GpuMatrix,
        x: (&wgpu::Buffer, XLayout),
        y: &wgpu::Buffer,
        bias: Option<&GpuVec>,
        resid: Option<&wgpu::Buffer>,
    ) {
        self.linear_n(w, x, y, bias, resid, self.n);
    }

    /// The input of a mat-vec by `w` normalized by [`Pass::rmsnorm`] over `rows` rows of
    /// `len` values: when the norm wrote the other layouts and `w` is quantized, the
    /// 8+8-bit copy `xq` for 2- to 6-bit weights (integer dot products) or the interleaved
    /// copy `xi` (fewer cache lines per load); else `xn`.
    fn input(&self, w: &GpuMatrix, rows: usize, len: usize) -> (&'a wgpu::Buffer, XLayout) {
        match w.format {
            WeightFormat::Affine(q) if interleaves(rows, len) => {
                let layout = XLayout::for_bits(q.bits, self.m.f32_activations);
                (self.s.row_in(layout), layout)
            }
            _ => (&self.s.xn, XLayout::Natural),
        }
    }

    fn linear_n(
        &mut self,
        w: &GpuMatrix,
        (x, layout): (&wgpu::Buffer, XLayout),
        y: &wgpu::Buffer,
        bias: Option<&GpuVec>,
        resid: Option<&wgpu::Buffer>,
        n: usize,
    ) {
        let dummy = &self.m.gpu.dummy;
        debug_assert!(
            layout == XLayout::Natural || (n == 1 && matches!(w.format, WeightFormat::Affine(_)))
        );
        let flags = u32::from(bias.is_some())
            | (u32::from(resid.is_some()) << 1)
            | match layout {
                XLayout::Natural => 0,
                XLayout::Interleaved => 4,
                XLayout::Q8 => 8,
            };
        let bias_buf = bias.map_or(dummy, |b| &b.buffer);
        let resid_buf = resid.unwrap_or(dummy);
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
                WeightFormat::Float(dt) if n == 1 => self.rec.dispatch(
                    Kernel::MatVec,
                    Some(dt),
                    &[r, c, r0, flags, 0],
                    &binds,
                    grid(*rows),
                ),
                WeightFormat::Float(dt) => self.rec.dispatch(
                    Kernel::MatMul,
                    Some(dt),
                    &[r, c, n as u32, r0, w.rows as u32, flags],
                    &binds,
                    (rows.div_ceil(16) as u32, n.div_ceil(16) as u32),
                ),
                WeightFormat::Affine(q) => {
                    let parts = w.format.parts(*rows, w.cols);
                    let (sw, bw) = ((parts.scales.0 / 4) as u32, (parts.biases.0 / 4) as u32);
                    let quant = Some((q.bits, q.group_size));
                    if n == 1 {
                        let team = self.m.gpu.qmatvec_team(*rows, w.cols);
                        let rpt = kernels::qmatvec_rows_per_team(r);
                        // The weights again as words (`ws`, include/qblock.wgsl).
                        let [b0, b1, b2, b3, b4] = binds;
                        self.rec.dispatch_q_rows(
                            Kernel::QMatVec,
                            Some(q.scale_dtype),
                            quant,
                            rpt,
                            &[r, c, r0, flags, 0, sw, bw, team],
                            &[b0, b1, b2, b3, b4, buf.into()],
                            kernels::qmatvec_groups(r, team, rpt),
                        );
                    } else {
                        self.rec.dispatch_q(
                            Kernel::QMatMul,
                            Some(q.scale_dtype),
                            quant,
                            &[r, c, n as u32, r0, w.rows as u32, flags, sw, bw],
                            &binds,
                            kernels::qmatmul_groups(r, n as u32),
                        );
                    }
                }
            }
        }
    }

    /// RMSNorm of `rows` rows of `len` values of x (from `x_offset`) into y; a single row
    /// of a multiple of 32 values is also written interleaved into `xi` ([`interleaves`])
    /// and, unless the model keeps f32 activations, in 8+8-bit blocks into `xq`.
    fn rmsnorm(
        &mut self,
        x: &wgpu::Buffer,
        w: &GpuVec,
        y: &wgpu::Buffer,
        rows: usize,
        len: usize,
        x_offset: usize,
    ) {
        let eps = self.m.cfg.rms_norm_eps;
        let il = interleaves(rows, len);
        // The 8+8-bit row only for models whose mat-vecs read it (`XLayout::for_bits`).
        let q8 = il && !self.m.f32_activations;
        let dummy = &self.m.gpu.dummy;
        let yi = if il { &self.s.xi } else { dummy };
        let yq = if q8 { &self.s.xq } else { dummy };
        self.rec.dispatch(
            Kernel::RmsNorm,
            None,
            &[
                len as u32,
                rows as u32,
                bits(eps),
                x_offset as u32,
                0,
                u32::from(il) | (u32::from(q8) << 1),
            ],
            &[x.into(), w.bind(), y.into(), yi.into(), yq.into()],
            grid(rows),
        );
    }

    pub fn embed(&mut self) {
        let h = self.m.cfg.hidden_size;
        let e = &self.m.weights.embed;
        for (buf, row0, rows) in &e.chunks {
            let binds = [(&self.s.ids).into(), buf.into(), (&self.s.x).into()];
            let p = [h as u32, self.n as u32, *row0 as u32, *rows as u32];
            match e.format {
                WeightFormat::Float(dt) => self.rec.dispatch(
                    Kernel::Embedding,
                    Some(dt),
                    &p,
                    &binds,
                    grid((h * self.n).div_ceil(64)),
                ),
                WeightFormat::Affine(q) => {
                    let parts = e.format.parts(*rows, e.cols);
                    let (sw, bw) = ((parts.scales.0 / 4) as u32, (parts.biases.0 / 4) as u32);
                    self.rec.dispatch_q(
                        Kernel::QEmbedding,
                        Some(q.scale_dtype),
                        Some((q.bits, q.group_size)),
                        &[p[0], p[1], p[2], p[3], sw, bw],
                        &binds,
                        kernels::qembedding_groups(h as u32, self.n as u32),
                    );
                }
            }
        }
    }

    /// `h = x + o_proj(attention(input_norm(x)))`, writing this pass's keys and values into
    /// the KV cache of layer `l`.
    pub fn attention(&mut self, l: usize, layer: &Layer) {
        let cfg = &self.m.cfg;
        let s = self.s;
        let (h, hd, nh, nkv) = (
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
        );
        let n = self.n;
        let a = &layer.attn;
        self.rmsnorm(&s.x, &layer.input_norm, &s.xn, n, h, 0);
        // q, k, v as [n, q_dim + 2 kv_dim] rows of `qkv` (one mat-vec) or in `q`, `k`, `v`:
        // their buffers, the token strides of q and of k/v, and their offsets in a token row.
        let (qd, kvd) = (nh * hd, nkv * hd);
        let (qb, kb, vb, q_stride, kv_stride, offs) = match &a.qkv {
            Qkv::Fused { w, bias } => {
                self.linear(w, self.input(w, n, h), &s.qkv, bias.as_ref(), None);
                let row = qd + 2 * kvd;
                (&s.qkv, &s.qkv, &s.qkv, row, row, [0, qd, qd + kvd])
            }
            Qkv::Separate {
                q,
                k,
                v,
                q_bias,
                k_bias,
                v_bias,
            } => {
                self.linear(q, self.input(q, n, h), &s.q, q_bias.as_ref(), None);
                self.linear(k, self.input(k, n, h), &s.k, k_bias.as_ref(), None);
                self.linear(v, self.input(v, n, h), &s.v, v_bias.as_ref(), None);
                (&s.q, &s.k, &s.v, qd, kvd, [0, 0, 0])
            }
        };
        // q_norm + RoPE into `qr`; k_norm + RoPE straight into the layer's K cache at the
        // current position, with v copied into the V cache by the same dispatch.
        let half = (cfg.rotary_dim / 2) as u32;
        let kv_off = self.pos0 * nkv * hd;
        let (kc, vc) = &s.kv[l];
        let eps = bits(cfg.rms_norm_eps);
        // The KV cache's elements (f32 or f16): the dtype of the kernels that touch it.
        let kv_dtype = self.m.kv_cache_dtype;
        let [q_off, k_off, v_off] = offs.map(|o| o as u32);
        // The query and key heads in one dispatch when they sit in the rows of one buffer
        // (a fused q/k/v projection), else one dispatch each: (x, stride, query heads,
        // key heads) per dispatch.
        let parts = if std::ptr::eq(qb, kb) {
            vec![(qb, q_stride, nh, nkv)]
        } else {
            vec![(qb, q_stride, nh, 0), (kb, kv_stride, 0, nkv)]
        };
        for (x, stride, q_heads, k_heads) in parts {
            self.rec.dispatch(
                Kernel::HeadNormRope,
                Some(kv_dtype),
                &[
                    n as u32,
                    hd as u32,
                    half,
                    self.pos0 as u32,
                    eps,
                    stride as u32,
                    q_heads as u32,
                    q_off,
                    k_heads as u32,
                    k_off,
                    kv_off as u32,
                    u32::from(k_heads > 0),
                    v_off,
                    s.rope_sin,
                ],
                &[
                    x.into(),
                    a.q_norm.bind(),
                    a.k_norm.bind(),
                    (&s.rope).into(),
                    (&s.qr).into(),
                    kc.into(),
                    vb.into(),
                    vc.into(),
                ],
                ((q_heads + k_heads) as u32, n as u32),
            );
        }
        // As transformers: `head_dim ** -0.5` in double precision, rounded to f32.
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        let split = n == 1 && hd % 4 == 0;
        // The merge of a decode step writes its output interleaved for a quantized o_proj.
        let o_layout = if split && matches!(a.o.format, WeightFormat::Affine(_)) && qd % 32 == 0 {
            XLayout::Interleaved
        } else {
            XLayout::Natural
        };
        if split {
            // Decode: many workgroups over short key ranges, then one merge per head
            // (the split kernel reads heads as vec4s).
            let (chunk, splits) = kernels::attention_splits(self.pos0 as u32 + 1, nh as u32);
            self.rec.dispatch(
                Kernel::AttentionSplit,
                Some(kv_dtype),
                &[
                    self.pos0 as u32,
                    nh as u32,
                    nkv as u32,
                    hd as u32,
                    bits(scale),
                    chunk,
                    splits,
                ],
                &[(&s.qr).into(), kc.into(), vc.into(), (&s.attn_part).into()],
                (nh as u32, splits),
            );
            self.rec.dispatch(
                Kernel::AttentionMerge,
                None,
                &[
                    nh as u32,
                    hd as u32,
                    splits,
                    u32::from(o_layout == XLayout::Interleaved),
                ],
                &[(&s.attn_part).into(), (&s.attn).into()],
                kernels::attention_merge_groups(nh as u32, hd as u32),
            );
        } else {
            // Prefill: 16 queries per workgroup (heads read as vec4s); else one per query.
            let (kernel, groups) = if n > 1 && hd % 4 == 0 {
                (
                    Kernel::AttentionTiled,
                    kernels::attention_tiled_groups(nh as u32, n as u32),
                )
            } else {
                (Kernel::Attention, (nh as u32, n as u32))
            };
            self.rec.dispatch(
                kernel,
                kernel.uses_kv_cache().then_some(kv_dtype),
                &[
                    n as u32,
                    self.pos0 as u32,
                    nh as u32,
                    nkv as u32,
                    hd as u32,
                    bits(scale),
                ],
                &[(&s.qr).into(), kc.into(), vc.into(), (&s.attn).into()],
                groups,
            );
        }
        self.linear(
            &a.o,
            (&s.attn, o_layout),
            &s.h,
            a.o_bias.as_ref(),
            Some(&s.x),
        );
    }

    /// `x = h + mlp(post_norm(h))` for a dense layer, or the MoE equivalent.
    pub fn mlp(&mut self, l: usize, layer: &Layer) -> Result<()> {
        let s = self.s;
        let h = self.m.cfg.hidden_size;
        let n = self.n;
        self.rmsnorm(&s.h, &layer.post_norm, &s.xn, n, h, 0);
        match &layer.mlp {
            Mlp::Dense { gate, up, down } => {
                self.linear(gate, self.input(gate, n, h), &s.mlp_g, None, None);
                self.linear(up, self.input(up, n, h), &s.mlp_u, None, None);
                let len = n * gate.rows;
                self.rec.dispatch(
                    Kernel::SwiGlu,
                    None,
                    &[len as u32],
                    &[(&s.mlp_g).into(), (&s.mlp_u).into(), (&s.mlp_a).into()],
                    grid(len.div_ceil(64)),
                );
                self.linear(down, (&s.mlp_a, XLayout::Natural), &s.x, None, Some(&s.h));
                Ok(())
            }
            Mlp::Moe { router } => self.moe(l, router),
        }
    }

    fn moe(&mut self, l: usize, router: &GpuMatrix) -> Result<()> {
        let m = self.m;
        let s = self.s;
        let cfg = &m.cfg;
        let (n, k, ne) = (self.n, cfg.num_experts_per_tok, cfg.num_experts);
        self.linear(
            router,
            self.input(router, n, cfg.hidden_size),
            &s.router_logits,
            None,
            None,
        );
        if self.resident {
            // The routing kernel routes from the logits itself.
            return self.moe_resident(l);
        }
        self.rec.dispatch(
            Kernel::Router,
            None,
            &[ne as u32, k as u32, u32::from(cfg.norm_topk_prob), n as u32],
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
            && kernels.gate_up.2.is_some()
            && kernels.down.2.is_some();
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
        self.rec.dispatch(
            Kernel::MoeCombine,
            None,
            &[hs, n as u32, k as u32],
            &[
                (&s.h).into(),
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
        let (hs, is) = (cfg.hidden_size as u32, cfg.moe_intermediate_size as u32);
        let (kernel, wdt, quant, tail) = &kernels.gate_up;
        // Quantized kernels read a decode token's x interleaved, and write h interleaved
        // when the down projection is quantized too.
        let x_layout = match quant {
            Some((bits, _)) if interleaves(self.n, cfg.hidden_size) => {
                XLayout::for_bits(*bits, self.m.f32_activations)
            }
            _ => XLayout::Natural,
        };
        let h_il = quant.is_some() && kernels.down.2.is_some();
        let mut params = vec![hs, is, start, count];
        params.extend_from_slice(tail);
        let (h, i) = (cfg.hidden_size, cfg.moe_intermediate_size);
        let (rpt, team, groups) = expert_grid(self.m, quant.is_some(), i, h, count);
        // A 2- to 6-bit down projection reads h in the quad 8+8-bit layout (integer dot
        // products), where gate/up's workgroups compute whole quads.
        let h_quads = h_il
            && !self.m.f32_activations
            && matches!(kernels.down.2, Some((bits, _)) if kernels::reads_q8_activations(bits))
            && kernels::writes_quad_h(team, rpt);
        if quant.is_some() {
            let x_flags = match x_layout {
                XLayout::Natural => 0,
                XLayout::Interleaved => 1,
                XLayout::Q8 => 4,
            };
            params.extend([
                team,
                x_flags | (u32::from(h_il) << 1) | (u32::from(h_quads) << 3),
            ]);
        }
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
        self.rec.dispatch_sized(
            *kernel,
            Some(*wdt),
            *quant,
            rpt,
            &params,
            &binds,
            size(groups, 0),
        );
        let (kernel, wdt, quant, tail) = &kernels.down;
        let mut params = vec![hs, is, start, count];
        params.extend_from_slice(tail);
        let (rpt, team, groups) = expert_grid(self.m, quant.is_some(), h, i, count);
        if quant.is_some() {
            params.extend([team, if h_quads { 2 } else { u32::from(h_il) }]);
        }
        let mut binds = vec![
            page.into(),
            (&s.moe_h).into(),
            (&s.assign).into(),
            (&s.assign_w).into(),
            (&s.moe_o).into(),
        ];
        if quant.is_some() {
            binds.push(page.into());
        }
        self.rec.dispatch_sized(
            *kernel,
            Some(*wdt),
            *quant,
            rpt,
            &params,
            &binds,
            size(groups, 12),
        );
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
        let (hs, is) = (cfg.hidden_size as u32, cfg.moe_intermediate_size as u32);
        let (_, wdt, quant, tail) = &kernels.gate_up;
        // tail: slot_words, then the codes/scales/biases offsets of gate and up.
        let mut params = vec![hs, is, tile_base];
        params.extend_from_slice(tail);
        self.rec.dispatch_q(
            Kernel::MoeGateUpQmm,
            Some(*wdt),
            *quant,
            &params,
            &[
                page.into(),
                (&s.xn).into(),
                (&s.assign).into(),
                (&s.tiles).into(),
                (&s.moe_h).into(),
            ],
            kernels::moe_gate_up_qmm_groups(is, n_tiles),
        );
        let (_, wdt, quant, tail) = &kernels.down;
        let mut params = vec![hs, is, tile_base];
        params.extend_from_slice(tail);
        self.rec.dispatch_q(
            Kernel::MoeDownQmm,
            Some(*wdt),
            *quant,
            &params,
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
    fn moe_resident(&mut self, l: usize) -> Result<()> {
        let m = self.m;
        let s = self.s;
        let cfg = &m.cfg;
        let (k, ne) = (cfg.num_experts_per_tok, cfg.num_experts);
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
        let (h, i) = (cfg.hidden_size, cfg.moe_intermediate_size);
        let (_, _, (gate_up_x, _)) = expert_grid(m, kernels.gate_up.2.is_some(), i, h, k as u32);
        let (_, _, (down_x, _)) = expert_grid(m, kernels.down.2.is_some(), h, i, k as u32);
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
        self.rec.dispatch(
            Kernel::MoeRoute,
            None,
            &[
                k as u32,
                (l * ne) as u32,
                l as u32,
                cache.slots_per_page as u32,
                cache.pages.len() as u32,
                gate_up_x,
                down_x,
                page_mask,
                (cfg.num_hidden_layers + l * k) as u32,
                ne as u32,
                u32::from(cfg.norm_topk_prob),
            ],
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
        self.rec.dispatch(
            Kernel::MoeCombine,
            None,
            &[cfg.hidden_size as u32, 1, k as u32],
            &[
                (&s.h).into(),
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

    /// The logits of the last token of the pass (all of them, or the `top` best), and the
    /// bytes of `extra` buffer ranges read back with them.
    pub fn readout(
        &mut self,
        top: Option<usize>,
        extra: &[(&wgpu::Buffer, u64, u64)],
    ) -> Result<(Readout, Vec<Vec<u8>>)> {
        let s = self.s;
        let w = &self.m.weights;
        let h = self.m.cfg.hidden_size;
        let v = self.m.cfg.vocab_size;
        self.rmsnorm(&s.x, &w.final_norm, &s.xn, 1, h, (self.n - 1) * h);
        let head = w.lm_head();
        self.linear_n(head, self.input(head, 1, h), &s.logits, None, None, 1);
        let mut parts = Vec::with_capacity(extra.len() + 1);
        if let Some(n) = top {
            let groups = kernels::topk_groups(v as u32);
            self.rec.dispatch(
                Kernel::TopK,
                None,
                &[v as u32, kernels::TOPK_CHUNK, n as u32],
                &[(&s.logits).into(), (&s.topk).into()],
                groups,
            );
            parts.push((&s.topk, 0, groups.0 as u64 * n as u64 * 8));
        } else {
            parts.push((&s.logits, 0, (v * 4) as u64));
        }
        parts.extend_from_slice(extra);
        let mut out = self.rec.read(&parts, &s.readback)?;
        let rest = out.split_off(1);
        let readout = match top {
            None => Readout::Full(bytemuck::pod_collect_to_vec(&out[0])),
            Some(n) => {
                let words: Vec<u32> = bytemuck::pod_collect_to_vec(&out[0]);
                let mut c: Vec<Candidate> = words
                    .chunks_exact(2)
                    .filter(|p| p[1] != u32::MAX)
                    .map(|p| Candidate {
                        id: p[1],
                        logit: f32::from_bits(p[0]),
                    })
                    .collect();
                c.sort_by(|a, b| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id)));
                c.truncate(n);
                Readout::Top(c)
            }
        };
        Ok((readout, rest))
    }
}

/// What a pass reads back of the logits of its last token.
pub(crate) enum Readout {
    /// Every logit.
    Full(Vec<f32>),
    /// The best few, by (logit descending, id ascending).
    Top(Vec<Candidate>),
}

/// The kernel, dtype, quantization and trailing parameters of an expert projection.
type ExpertDispatch = (Kernel, DType, Option<(u32, u32)>, Vec<u32>);

/// How a layer's experts are computed, from their layout in a cache slot.
struct ExpertKernels {
    gate_up: ExpertDispatch,
    down: ExpertDispatch,
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
                (
                    Kernel::MoeGateUp,
                    a,
                    None,
                    vec![
                        (g.offset / es) as u32,
                        (u.offset / es) as u32,
                        (slot_bytes as usize / es) as u32,
                    ],
                )
            }
            (WeightFormat::Affine(a), WeightFormat::Affine(b)) if a == b => {
                let [gq, gs, gb] = q_offsets(g);
                let [uq, us, ub] = q_offsets(u);
                (
                    Kernel::MoeGateUpQ,
                    a.scale_dtype,
                    Some((a.bits, a.group_size)),
                    vec![slot_words, gq, gs, gb, uq, us, ub],
                )
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
                (
                    Kernel::MoeDown,
                    a,
                    None,
                    vec![(d.offset / es) as u32, (slot_bytes as usize / es) as u32],
                )
            }
            WeightFormat::Affine(q) => {
                let [dq, ds, db] = q_offsets(d);
                (
                    Kernel::MoeDownQ,
                    q.scale_dtype,
                    Some((q.bits, q.group_size)),
                    vec![slot_words, dq, ds, db],
                )
            }
        };
        Ok(ExpertKernels { gate_up, down })
    }
}
