//! The expert kernels with gpt-oss's variants against the plain f32 CPU reference: biases
//! after each projection, the clamped SwiGLU, and the weight formats decoded in the
//! kernels other than MLX affine: MXFP4 (FP4 codes with e8m0 scales) and FP8 (e4m3 codes
//! with f32 scales per 128 x 128 block, DeepSeek-V3's; partial blocks included), through
//! the hidden `gpu::testing::KernelRunner` hook; and the resident quantized kernels
//! (`qmatvec`, `qmatmul`, `qembedding`) over such matrices (MLX `mode: "mxfp4"`
//! checkpoints quantize every matrix so, DeepSeek-V3's FP8 release every linear layer).
//!
//! Each case builds a cache page of experts in the engine's blob layout
//! (`ExpertLayout::swiglu_biased`, slots a little more than a blob apart, the padding
//! 0xFF so a read outside a tensor poisons the output), dequantizes each tensor with
//! `WeightFormat::decode` (MXFP4: `format::mxfp4_decode`, checked against transformers'
//! dequantizer by the gpt-oss fixtures) and compares every kernel's output with
//! `reference::matmul` + `reference::clamped_swiglu` / `swiglu` + bias, under the same
//! normalized error bounds as tests/qkernels.rs (nmse 1e-10, largest difference 1e-5
//! relative). Gate/up kernels write the clamped activation, whose clamps are hit: the
//! gate and up sums are scaled so that a good share of them pass the limit.
//!
//! There is no skipping: without a GPU adapter every test fails (CI runs lavapipe).

use moestream::gpu::kernels::{self, Kernel};
use moestream::gpu::params::{
    MoeDownParams, MoeDownQParams, MoeDownQmmParams, MoeGateUpParams, MoeGateUpQParams,
    MoeGateUpQmmParams, QEmbeddingParams, QMatMulParams, QMatVecParams, EXPERT_BIAS,
    EXPERT_CLAMPED, LINEAR_BIAS, LINEAR_RESIDUAL, LINEAR_X_INTERLEAVED,
};
use moestream::reference;
use moestream::{
    format::{DType, WeightFormat},
    store::ExpertLayout,
};

#[path = "common/harness.rs"]
mod harness;
use harness::*;

/// Reductions in another order than the CPU's (see tests/qkernels.rs).
const REDUCTION: Tol = Tol {
    nmse: 1e-10,
    max_rel: 1e-5,
    floor: 0.0,
};

const ALPHA: f32 = 1.702;
const LIMIT: f32 = 7.0;

/// A page of `n_slots` experts with biases, and each expert's dequantized tensors.
struct Page {
    bytes: Vec<u8>,
    lay: ExpertLayout,
    slot_bytes: usize,
    /// Per slot: (gate, up, down) values and their biases.
    experts: Vec<[(Vec<f32>, Vec<f32>); 3]>,
}

fn page(rng: &mut Rng, format: WeightFormat, hidden: usize, inter: usize, n: usize) -> Page {
    let lay = ExpertLayout::swiglu_biased([format; 3], hidden, inter).expect("a valid layout");
    assert!(lay.has_biases());
    let slot_bytes = lay.bytes + 48;
    let mut bytes = vec![0xFFu8; n * slot_bytes];
    let mut experts = Vec::with_capacity(n);
    for s in 0..n {
        let mats = std::array::from_fn(|i| {
            let t = &lay.tensors[i];
            let blob = match format {
                WeightFormat::Float(d) => d.encode(&rng.vec(t.rows * t.cols, 1.0)),
                WeightFormat::Mxfp4 => {
                    // Any code; scales 2^-3 .. 2^0 so values stay near 1.
                    let parts = (t.rows * t.cols / 2, t.rows * t.cols / 32);
                    let mut b = vec![0u8; t.len()];
                    for v in &mut b[..parts.0] {
                        *v = rng.below(256) as u8;
                    }
                    let so = t.len() - parts.1;
                    for v in &mut b[so..] {
                        *v = 124 + rng.below(4) as u8;
                    }
                    b
                }
                WeightFormat::Fp8Block => {
                    // Any e4m3 code but NaN; block scales 1e-3 .. 4e-3 (values up to ~1.8).
                    let p = coded_parts(format, t.rows, t.cols);
                    let mut b = vec![0u8; t.len()];
                    for v in &mut b[..p.weight_bytes] {
                        *v = loop {
                            let c = rng.below(256) as u8;
                            if c & 0x7f != 0x7f {
                                break c;
                            }
                        };
                    }
                    let scales: Vec<f32> = (0..p.scales.1 / 4)
                        .map(|_| 0.001 + 0.003 * rng.below(1000) as f32 / 1000.0)
                        .collect();
                    b[p.scales.0..p.scales.0 + p.scales.1].copy_from_slice(&f32_bytes(&scales));
                    b
                }
                other => panic!("untested format {other}"),
            };
            assert_eq!(blob.len(), t.len());
            let at = s * slot_bytes + t.offset;
            bytes[at..at + blob.len()].copy_from_slice(&blob);
            let bias = rng.vec(t.rows, 2.0);
            let b0 = s * slot_bytes + t.bias.expect("biased");
            bytes[b0..b0 + 4 * t.rows].copy_from_slice(&f32_bytes(&bias));
            (format.decode(&blob, t.rows, t.cols), bias)
        });
        experts.push(mats);
    }
    Page {
        bytes,
        lay,
        slot_bytes,
        experts,
    }
}

fn add(v: &[f32], b: &[f32]) -> Vec<f32> {
    v.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// Assignments (token, slot) over `n_tokens` tokens and slots 1..n (slot 0 unused).
fn assignments(rng: &mut Rng, n_tokens: usize, n: usize, count: usize) -> Vec<(usize, usize)> {
    (0..count)
        .map(|_| (rng.below(n_tokens), 1 + rng.below(n - 1)))
        .collect()
}

fn pairs(asg: &[(usize, usize)]) -> Vec<u32> {
    asg.iter()
        .flat_map(|&(t, s)| [t as u32, s as u32])
        .collect()
}

/// The expected h of assignment (t, s): the activation of the biased gate and up sums.
fn want_h(pg: &Page, x: &[f32], hidden: usize, (t, s): (usize, usize), clamped: bool) -> Vec<f32> {
    let [(g, gb), (u, ub), _] = &pg.experts[s];
    let inter = gb.len();
    let xt = &x[t * hidden..(t + 1) * hidden];
    let gv = add(&reference::matmul(g, inter, hidden, xt, 1), gb);
    let uv = add(&reference::matmul(u, inter, hidden, xt, 1), ub);
    if clamped {
        reference::clamped_swiglu(&gv, &uv, ALPHA, LIMIT)
    } else {
        reference::swiglu(&gv, &uv)
    }
}

/// The expected output of assignment a = (_, s): weight * (down h + bias).
fn want_o(pg: &Page, h: &[f32], hidden: usize, s: usize, w: f32) -> Vec<f32> {
    let [_, _, (d, db)] = &pg.experts[s];
    let inter = h.len();
    let o = add(&reference::matmul(d, hidden, inter, h, 1), db);
    o.iter().map(|v| v * w).collect()
}

/// Shapes (hidden, inter): MXFP4 and FP8 need multiples of 32 (FP8: 160 spans two blocks
/// of 128, the second partial); the float kernels take any.
const SHAPES: [(usize, usize); 3] = [(64, 96), (128, 64), (96, 160)];

#[test]
fn float_experts_with_biases_and_clamped_swiglu() {
    let mut ck_gu = Checker::new("moe_gate_up");
    let mut ck_dn = Checker::new("moe_down");
    let mut rng = Rng::new(90);
    for dtype in DTYPES {
        for (hidden, inter) in [(40, 24), (48, 40), (64, 96)] {
            let (n_tokens, n, count) = (3, 4, 6);
            let pg = page(&mut rng, WeightFormat::Float(dtype), hidden, inter, n);
            let asg = assignments(&mut rng, n_tokens, n, count);
            // x of rms ~2: sums of ~sqrt(hidden) * 2 / sqrt(3), many past the limit of 7.
            let x = rng.vec(n_tokens * hidden, 3.5);
            let es = dtype.size();
            for clamped in [false, true] {
                let case = format!("{dtype} hidden {hidden} inter {inter} clamped {clamped}");
                let [g, u, d] = &pg.lay.tensors;
                let p = MoeGateUpParams {
                    hidden: hidden as u32,
                    inter: inter as u32,
                    assign_base: 0,
                    n_assign: count as u32,
                    gate_off: (g.offset / es) as u32,
                    up_off: (u.offset / es) as u32,
                    slot_elems: (pg.slot_bytes / es) as u32,
                    act: EXPERT_BIAS | if clamped { EXPERT_CLAMPED } else { 0 },
                    gate_bias: (g.bias.unwrap() / 4) as u32,
                    up_bias: (u.bias.unwrap() / 4) as u32,
                    alpha: ALPHA,
                    limit: LIMIT,
                };
                let out = run_kernel(
                    Kernel::MoeGateUp,
                    Some(dtype),
                    None,
                    p.words(),
                    &[
                        &pg.bytes,
                        &f32_bytes(&x),
                        &u32_bytes(&pairs(&asg)),
                        &f32_bytes(&vec![0.0; count * inter]),
                    ],
                    (inter as u32, count as u32),
                );
                let got = to_f32(&out[3]);
                let want: Vec<f32> = asg
                    .iter()
                    .flat_map(|&a| want_h(&pg, &x, hidden, a, clamped))
                    .collect();
                ck_gu.close(&case, &got, &want, REDUCTION.floor(1.0));
                // Down over those h (the CPU's), weighted.
                let wts = rng.vec(count, 1.0);
                let p = MoeDownParams {
                    hidden: hidden as u32,
                    inter: inter as u32,
                    assign_base: 0,
                    n_assign: count as u32,
                    down_off: (d.offset / es) as u32,
                    slot_elems: (pg.slot_bytes / es) as u32,
                    act: EXPERT_BIAS,
                    down_bias: (d.bias.unwrap() / 4) as u32,
                };
                let out = run_kernel(
                    Kernel::MoeDown,
                    Some(dtype),
                    None,
                    p.words(),
                    &[
                        &pg.bytes,
                        &f32_bytes(&want),
                        &u32_bytes(&pairs(&asg)),
                        &f32_bytes(&wts),
                        &f32_bytes(&vec![0.0; count * hidden]),
                    ],
                    (hidden as u32, count as u32),
                );
                let got = to_f32(&out[4]);
                let want: Vec<f32> = asg
                    .iter()
                    .enumerate()
                    .flat_map(|(a, &(_, s))| {
                        want_o(&pg, &want[a * inter..(a + 1) * inter], hidden, s, wts[a])
                    })
                    .collect();
                ck_dn.close(&case, &got, &want, REDUCTION.floor(1.0));
            }
        }
    }
    ck_gu.report();
    ck_dn.report();
}

/// Word offsets in a slot of a quantized tensor's codes, scales and biases.
fn q_offsets(t: &moestream::store::ExpertTensor) -> [u32; 3] {
    let p = coded_parts(t.format, t.rows, t.cols);
    [
        (t.offset / 4) as u32,
        ((t.offset + p.scales.0) / 4) as u32,
        ((t.offset + p.scales.0 + p.scales.1) / 4) as u32,
    ]
}

/// Where an MXFP4 or FP8 matrix's parts lie (as `WeightFormat::parts` places them): the
/// codes, then at a 16-byte boundary the scales; no biases.
struct CodedParts {
    weight_bytes: usize,
    /// (offset, bytes)
    scales: (usize, usize),
}

fn coded_parts(f: WeightFormat, rows: usize, cols: usize) -> CodedParts {
    let (weight_bytes, scale_bytes) = match f {
        WeightFormat::Mxfp4 => (rows * cols / 2, rows * cols / 32),
        WeightFormat::Fp8Block => (rows * cols, rows.div_ceil(128) * cols.div_ceil(128) * 4),
        other => panic!("not a coded format: {other}"),
    };
    let so = weight_bytes.div_ceil(16) * 16;
    assert_eq!(f.stored_bytes(rows, cols), so + scale_bytes);
    CodedParts {
        weight_bytes,
        scales: (so, scale_bytes),
    }
}

/// The formats decoded in the quantized kernels whose tests share this file's cases
/// (their `WDT` code, bits and group): MXFP4, and FP8 with 128 x 128 block scales.
const CODED: [(WeightFormat, u32, (u32, u32)); 2] = [
    (WeightFormat::Mxfp4, kernels::WDT_MXFP4, (4, 32)),
    (WeightFormat::Fp8Block, kernels::WDT_FP8, (8, 128)),
];

#[test]
fn coded_expert_mat_vecs_with_biases() {
    let mut ck_gu = Checker::new("moe_gate_up_q mxfp4/fp8");
    let mut ck_dn = Checker::new("moe_down_q mxfp4/fp8");
    let mut rng = Rng::new(91);
    let on = runner();
    for ((hidden, inter), (format, code, quant)) in SHAPES
        .into_iter()
        .flat_map(|s| CODED.into_iter().map(move |c| (s, c)))
    {
        let (n_tokens, n, count) = (3, 5, 7);
        let pg = page(&mut rng, format, hidden, inter, n);
        let asg = assignments(&mut rng, n_tokens, n, count);
        let x = rng.vec(n_tokens * hidden, 1.0);
        let x_il = interleave(&x, hidden);
        let [g, u, d] = &pg.lay.tensors;
        let (go, uo, dof) = (q_offsets(g), q_offsets(u), q_offsets(d));
        let slot_words = (pg.slot_bytes / 4) as u32;
        for (clamped, il, rpt) in [(true, false, 4), (true, true, 2), (false, true, 1)] {
            let team = on.expert_team(inter, hidden, count, rpt);
            let case = format!(
                "{format} hidden {hidden} inter {inter} clamped {clamped} interleaved {il} rows {rpt} team {team}"
            );
            let flags = if il {
                MoeGateUpQParams::X_INTERLEAVED | MoeGateUpQParams::H_INTERLEAVED
            } else {
                0
            };
            let p = MoeGateUpQParams {
                hidden: hidden as u32,
                inter: inter as u32,
                assign_base: 0,
                n_assign: count as u32,
                slot_words,
                gate_q: go[0],
                gate_s: go[1],
                gate_b: go[2],
                up_q: uo[0],
                up_s: uo[1],
                up_b: uo[2],
                team,
                flags,
                act: EXPERT_BIAS | if clamped { EXPERT_CLAMPED } else { 0 },
                gate_bias: (g.bias.unwrap() / 4) as u32,
                up_bias: (u.bias.unwrap() / 4) as u32,
                alpha: ALPHA,
                limit: LIMIT,
                ..Default::default()
            };
            let out = on
                .run_code(
                    Kernel::MoeGateUpQ,
                    code,
                    quant,
                    rpt,
                    p.words(),
                    &[
                        &pg.bytes,
                        &f32_bytes(if il { &x_il } else { &x }),
                        &u32_bytes(&pairs(&asg)),
                        &f32_bytes(&vec![0.0; count * inter]),
                        &pg.bytes,
                    ],
                    kernels::moe_gate_up_q_groups(inter as u32, count as u32, team, rpt),
                )
                .unwrap();
            let mut got = to_f32(&out[3]);
            if il {
                got = got
                    .chunks_exact(inter)
                    .flat_map(|r| deinterleave(r, inter))
                    .collect();
            }
            let want: Vec<f32> = asg
                .iter()
                .flat_map(|&a| want_h(&pg, &x, hidden, a, clamped))
                .collect();
            ck_gu.close(&case, &got, &want, REDUCTION.floor(1.0));

            let team = on.expert_team(hidden, inter, count, rpt);
            let wts = rng.vec(count, 1.0);
            let h_in: Vec<f32> = if il {
                want.chunks_exact(inter)
                    .flat_map(|r| interleave(r, inter))
                    .collect()
            } else {
                want.clone()
            };
            let p = MoeDownQParams {
                hidden: hidden as u32,
                inter: inter as u32,
                assign_base: 0,
                n_assign: count as u32,
                slot_words,
                down_q: dof[0],
                down_s: dof[1],
                down_b: dof[2],
                team,
                flags: if il { MoeDownQParams::H_INTERLEAVED } else { 0 },
                act: EXPERT_BIAS,
                down_bias: (d.bias.unwrap() / 4) as u32,
            };
            let out = on
                .run_code(
                    Kernel::MoeDownQ,
                    code,
                    quant,
                    rpt,
                    p.words(),
                    &[
                        &pg.bytes,
                        &f32_bytes(&h_in),
                        &u32_bytes(&pairs(&asg)),
                        &f32_bytes(&wts),
                        &f32_bytes(&vec![0.0; count * hidden]),
                        &pg.bytes,
                    ],
                    kernels::moe_gate_up_q_groups(hidden as u32, count as u32, team, rpt),
                )
                .unwrap();
            let got = to_f32(&out[4]);
            let want: Vec<f32> = asg
                .iter()
                .enumerate()
                .flat_map(|(a, &(_, s))| {
                    want_o(&pg, &want[a * inter..(a + 1) * inter], hidden, s, wts[a])
                })
                .collect();
            ck_dn.close(&case, &got, &want, REDUCTION.floor(1.0));
        }
    }
    ck_gu.report();
    ck_dn.report();
}

#[test]
fn coded_expert_mat_mats_with_biases() {
    let mut ck_gu = Checker::new("moe_gate_up_qmm mxfp4/fp8");
    let mut ck_dn = Checker::new("moe_down_qmm mxfp4/fp8");
    let mut rng = Rng::new(92);
    let on = runner();
    for ((hidden, inter), (format, code, quant)) in SHAPES
        .into_iter()
        .flat_map(|s| CODED.into_iter().map(move |c| (s, c)))
    {
        let (n_tokens, n) = (40, 3);
        let pg = page(&mut rng, format, hidden, inter, n);
        // Assignments grouped by slot: 37 on slot 1 (tiles of 32 and 5), 9 on slot 2.
        let asg: Vec<(usize, usize)> = (0..37)
            .map(|t| (t % n_tokens, 1))
            .chain((0..9).map(|t| ((3 * t + 1) % n_tokens, 2)))
            .collect();
        let tiles: Vec<u32> = vec![0, 32, 32, 5, 37, 9];
        let n_tiles = 3;
        let count = asg.len();
        let x = rng.vec(n_tokens * hidden, 1.0);
        let [g, u, d] = &pg.lay.tensors;
        let (go, uo, dof) = (q_offsets(g), q_offsets(u), q_offsets(d));
        let slot_words = (pg.slot_bytes / 4) as u32;
        for clamped in [false, true] {
            let case = format!("{format} hidden {hidden} inter {inter} clamped {clamped}");
            let p = MoeGateUpQmmParams {
                hidden: hidden as u32,
                inter: inter as u32,
                tile_base: 0,
                slot_words,
                gate_q: go[0],
                gate_s: go[1],
                gate_b: go[2],
                up_q: uo[0],
                up_s: uo[1],
                up_b: uo[2],
                act: EXPERT_BIAS | if clamped { EXPERT_CLAMPED } else { 0 },
                gate_bias: (g.bias.unwrap() / 4) as u32,
                up_bias: (u.bias.unwrap() / 4) as u32,
                alpha: ALPHA,
                limit: LIMIT,
                ..Default::default()
            };
            let out = on
                .run_code(
                    Kernel::MoeGateUpQmm,
                    code,
                    quant,
                    0,
                    p.words(),
                    &[
                        &pg.bytes,
                        &f32_bytes(&x),
                        &u32_bytes(&pairs(&asg)),
                        &u32_bytes(&tiles),
                        &f32_bytes(&vec![0.0; count * inter]),
                    ],
                    kernels::moe_gate_up_qmm_groups(inter as u32, n_tiles),
                )
                .unwrap();
            let got = to_f32(&out[4]);
            let want: Vec<f32> = asg
                .iter()
                .flat_map(|&a| want_h(&pg, &x, hidden, a, clamped))
                .collect();
            ck_gu.close(&case, &got, &want, REDUCTION.floor(1.0));

            let wts = rng.vec(count, 1.0);
            let p = MoeDownQmmParams {
                hidden: hidden as u32,
                inter: inter as u32,
                tile_base: 0,
                slot_words,
                down_q: dof[0],
                down_s: dof[1],
                down_b: dof[2],
                act: EXPERT_BIAS,
                down_bias: (d.bias.unwrap() / 4) as u32,
                ..Default::default()
            };
            let out = on
                .run_code(
                    Kernel::MoeDownQmm,
                    code,
                    quant,
                    0,
                    p.words(),
                    &[
                        &pg.bytes,
                        &f32_bytes(&want),
                        &u32_bytes(&pairs(&asg)),
                        &u32_bytes(&tiles),
                        &f32_bytes(&wts),
                        &f32_bytes(&vec![0.0; count * hidden]),
                    ],
                    kernels::moe_down_qmm_groups(hidden as u32, n_tiles),
                )
                .unwrap();
            let got = to_f32(&out[5]);
            let want: Vec<f32> = asg
                .iter()
                .enumerate()
                .flat_map(|(a, &(_, s))| {
                    want_o(&pg, &want[a * inter..(a + 1) * inter], hidden, s, wts[a])
                })
                .collect();
            ck_dn.close(&case, &got, &want, REDUCTION.floor(1.0));
        }
    }
    ck_gu.report();
    ck_dn.report();
}

#[test]
fn the_clamp_is_exercised() {
    // The gate/up sums of the cases above pass the limit often: otherwise the clamped and
    // plain activations could agree by luck on a kernel that ignores the clamp.
    let mut rng = Rng::new(90);
    let pg = page(&mut rng, WeightFormat::Float(DType::F32), 64, 96, 4);
    let x = rng.vec(3 * 64, 3.5);
    let [(g, gb), (u, ub), _] = &pg.experts[1];
    let gv = add(&reference::matmul(g, 96, 64, &x[..64], 1), gb);
    let uv = add(&reference::matmul(u, 96, 64, &x[..64], 1), ub);
    let past = gv.iter().chain(&uv).filter(|v| v.abs() > LIMIT).count();
    assert!(past >= 20, "only {past} of 192 sums pass the limit");
}

/// A random MXFP4 (scales 2^-3 .. 2^0) or FP8 (any code but NaN, block scales 1e-3 ..
/// 4e-3) matrix `[rows, cols]` as stored, its values and the word of its scales.
fn coded_matrix(
    rng: &mut Rng,
    f: WeightFormat,
    rows: usize,
    cols: usize,
) -> (Vec<u8>, Vec<f32>, u32) {
    let p = coded_parts(f, rows, cols);
    let mut b = vec![0u8; f.stored_bytes(rows, cols)];
    for v in &mut b[..p.weight_bytes] {
        *v = rng.below(256) as u8;
        if f == WeightFormat::Fp8Block && *v & 0x7f == 0x7f {
            *v &= 0xfe;
        }
    }
    if f == WeightFormat::Fp8Block {
        let scales: Vec<f32> = (0..p.scales.1 / 4)
            .map(|_| 0.001 + 0.003 * rng.below(1000) as f32 / 1000.0)
            .collect();
        b[p.scales.0..p.scales.0 + p.scales.1].copy_from_slice(&f32_bytes(&scales));
    } else {
        for v in &mut b[p.scales.0..p.scales.0 + p.scales.1] {
            *v = 124 + rng.below(4) as u8;
        }
    }
    let values = f.decode(&b, rows, cols);
    (b, values, (p.scales.0 / 4) as u32)
}

#[test]
fn coded_resident_matrices() {
    let mut ck_mv = Checker::new("qmatvec mxfp4/fp8");
    let mut ck_mm = Checker::new("qmatmul mxfp4/fp8");
    let mut ck_e = Checker::new("qembedding mxfp4/fp8");
    let mut rng = Rng::new(93);
    let on = runner();
    for ((rows, cols), (format, code, quant)) in [(64, 96), (130, 256), (40, 64)]
        .into_iter()
        .flat_map(|s| CODED.into_iter().map(move |c| (s, c)))
    {
        let (w, values, sw) = coded_matrix(&mut rng, format, rows, cols);
        let bias = rng.vec(rows, 1.0);
        let resid = rng.vec(rows, 1.0);
        // Mat-vec: x natural or interleaved, with bias and residual.
        let x = rng.vec(cols, 1.0);
        for (il, rpt) in [(false, 4), (true, 2), (true, 1)] {
            let team = on.qmatvec_team(rows, cols);
            let flags = LINEAR_BIAS | LINEAR_RESIDUAL | if il { LINEAR_X_INTERLEAVED } else { 0 };
            let p = QMatVecParams {
                rows: rows as u32,
                cols: cols as u32,
                row_base: 0,
                flags,
                x_offset: 0,
                scales_word: sw,
                biases_word: (w.len() / 4) as u32,
                team,
                ..Default::default()
            };
            let out = on
                .run_code(
                    Kernel::QMatVec,
                    code,
                    quant,
                    rpt,
                    p.words(),
                    &[
                        &w,
                        &f32_bytes(&if il { interleave(&x, cols) } else { x.clone() }),
                        &f32_bytes(&bias),
                        &f32_bytes(&resid),
                        &f32_bytes(&vec![0.0; rows]),
                        &w,
                        &[], // the normalized-row output (unused)
                    ],
                    kernels::qmatvec_groups(rows as u32, team, rpt),
                )
                .unwrap();
            let want: Vec<f32> = reference::matmul(&values, rows, cols, &x, 1)
                .iter()
                .zip(&bias)
                .zip(&resid)
                .map(|((v, b), r)| v + b + r)
                .collect();
            let case = format!("{format} {rows}x{cols} interleaved {il} rows {rpt} team {team}");
            ck_mv.close(&case, &to_f32(&out[4]), &want, REDUCTION.floor(1.0));
        }
        // Mat-mat over 37 tokens.
        let n = 37;
        let xs = rng.vec(n * cols, 1.0);
        let p = QMatMulParams {
            rows: rows as u32,
            cols: cols as u32,
            n_tokens: n as u32,
            row_base: 0,
            out_stride: rows as u32,
            flags: LINEAR_BIAS,
            scales_word: sw,
            biases_word: (w.len() / 4) as u32,
        };
        let out = on
            .run_code(
                Kernel::QMatMul,
                code,
                quant,
                0,
                p.words(),
                &[
                    &w,
                    &f32_bytes(&xs),
                    &f32_bytes(&bias),
                    &f32_bytes(&resid),
                    &f32_bytes(&vec![0.0; n * rows]),
                ],
                kernels::qmatmul_groups(rows as u32, n as u32),
            )
            .unwrap();
        let want: Vec<f32> = reference::matmul(&values, rows, cols, &xs, n)
            .chunks_exact(rows)
            .flat_map(|r| r.iter().zip(&bias).map(|(v, b)| v + b).collect::<Vec<_>>())
            .collect();
        ck_mm.close(
            &format!("{format} {rows}x{cols} {n} tokens"),
            &to_f32(&out[4]),
            &want,
            REDUCTION.floor(1.0),
        );
        // Embedding rows (the table is [rows, cols]: `cols` values per token).
        let ids: Vec<u32> = (0..9).map(|_| rng.below(rows) as u32).collect();
        let p = QEmbeddingParams {
            hidden: cols as u32,
            n_tokens: ids.len() as u32,
            row_start: 0,
            row_count: rows as u32,
            scales_word: sw,
            biases_word: (w.len() / 4) as u32,
            ..Default::default()
        };
        let out = on
            .run_code(
                Kernel::QEmbedding,
                code,
                quant,
                0,
                p.words(),
                &[
                    &u32_bytes(&ids),
                    &w,
                    &f32_bytes(&vec![0.0; ids.len() * cols]),
                ],
                kernels::qembedding_groups(cols as u32, ids.len() as u32),
            )
            .unwrap();
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&id| values[id as usize * cols..(id as usize + 1) * cols].to_vec())
            .collect();
        ck_e.close(
            &format!("{rows}x{cols}"),
            &to_f32(&out[2]),
            &want,
            Tol {
                nmse: 0.0,
                max_rel: 0.0,
                floor: 0.0,
            },
        );
    }
    ck_mv.report();
    ck_mm.report();
    ck_e.report();
}
