//! GPU time per dispatch of the small kernels of a decode step, in a dependent chain.
//!
//! ```text
//! cargo bench --bench latency
//! cargo bench --bench latency -- --ranges 32,63,128   # decode attention with other key ranges
//! ```
//! A decode token of Qwen3-30B-A3B is a chain of ~600 dispatches, most of them too small
//! to be bound by memory bandwidth: what they cost is latency (launch, the barrier
//! after the previous dispatch, dependent memory round trips and workgroup barriers
//! inside). Each kernel here runs at that model's decode shapes, back to back, each
//! dispatch writing what the next overwrites (so the driver puts a barrier between them,
//! as in a decode step), and its time per dispatch is printed next to the floor: a copy
//! of 16 bytes in the same chain. The difference is what a rewrite of the kernel could
//! save per dispatch; times the dispatches per token, what it could save per token.

#[path = "common/mod.rs"]
mod common;

use common::{matrix_bytes, median_time, parts_words};
use moestream::gpu::kernels::{self, Kernel};
use moestream::gpu::params::{
    AttentionMergeParams, AttentionSplitParams, CopyParams, HeadNormRopeParams,
    MoeCombineNormParams, MoeCombineParams, MoeRouteParams, QMatVecParams, RmsNormParams,
    LINEAR_X_INTERLEAVED, LINEAR_X_Q8,
};
use moestream::gpu::testing::{DeviceBuffer, GpuBench};
use moestream::{
    format::{AffineQuant, DType},
    Result,
};

/// Qwen3-30B-A3B's decode shapes.
const HIDDEN: usize = 2048;
const Q_HEADS: usize = 32;
const KV_HEADS: usize = 4;
const HEAD_DIM: usize = 128;
const EXPERTS: usize = 128;
const TOP_K: usize = 8;
const LAYERS: usize = 48;

/// Dispatches per timed chain.
const ITERS: u32 = 400;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// Pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Median seconds per dispatch of `ITERS` dispatches in a chain.
#[allow(clippy::too_many_arguments)]
fn time(
    bench: &GpuBench,
    kernel: Kernel,
    wdt: Option<DType>,
    quant: Option<(u32, u32)>,
    rows: u32,
    params: &[u32],
    bufs: &[&DeviceBuffer],
    groups: (u32, u32),
) -> Result<f64> {
    median_time(
        bench,
        kernel,
        wdt,
        quant,
        rows,
        params,
        &[bufs.to_vec()],
        groups,
        ITERS,
    )
}

fn report(name: &str, per_token: usize, t: f64, floor: f64) {
    println!(
        "{name:<58} {:>7.2} us  floor + {:>5.2} us  x {per_token:>3} per token = {:>5.3} ms above the floor",
        t * 1e6,
        (t - floor) * 1e6,
        (t - floor) * per_token as f64 * 1e3
    );
}

/// Layers' KV caches cycled through by the attention timings.
const KV_COPIES: usize = 8;

/// `KV_COPIES` (K, V) cache pairs of `positions` positions of `kv_dtype` (f32 or f16)
/// elements, pseudo-random.
fn kv_caches(
    bench: &GpuBench,
    kv_dtype: DType,
    positions: usize,
) -> Vec<(DeviceBuffer, DeviceBuffer)> {
    let elems = positions * KV_HEADS * HEAD_DIM;
    let cache = |seed: u64| {
        let v = values(elems, seed);
        bench.upload(&if kv_dtype == DType::F16 {
            v.iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect()
        } else {
            f32_bytes(&v)
        })
    };
    (0..KV_COPIES as u64)
        .map(|i| (cache(7 + 2 * i), cache(8 + 2 * i)))
        .collect()
}

/// Time per dispatch of `attention_split` at `pos0 + 1` keys in `splits` ranges of `chunk`,
/// cycling through `sets` (q, K cache, V cache, partial states).
fn time_split(
    bench: &GpuBench,
    kv_dtype: DType,
    sets: &[Vec<&DeviceBuffer>],
    pos0: u32,
    chunk: u32,
    splits: u32,
) -> Result<f64> {
    median_time(
        bench,
        Kernel::AttentionSplit,
        Some(kv_dtype),
        None,
        0,
        AttentionSplitParams {
            pos0,
            n_heads: Q_HEADS as u32,
            n_kv_heads: KV_HEADS as u32,
            head_dim: HEAD_DIM as u32,
            scale: 1.0 / (HEAD_DIM as f32).sqrt(),
            chunk,
            n_splits: splits,
            ..Default::default()
        }
        .words(),
        sets,
        (Q_HEADS as u32, splits),
        ITERS,
    )
}

/// Time per dispatch of `attention_merge` over `splits` ranges per head.
fn time_merge(
    bench: &GpuBench,
    part: &DeviceBuffer,
    attn: &DeviceBuffer,
    splits: u32,
) -> Result<f64> {
    time(
        bench,
        Kernel::AttentionMerge,
        None,
        None,
        0,
        AttentionMergeParams {
            n_heads: Q_HEADS as u32,
            head_dim: HEAD_DIM as u32,
            n_splits: splits,
            flags: AttentionMergeParams::INTERLEAVED,
            ..Default::default()
        }
        .words(),
        // No output gate, no sinks: `part` stands in for their buffers.
        &[part, attn, part, part],
        kernels::attention_merge_groups(Q_HEADS as u32, HEAD_DIM as u32),
    )
}

fn main() -> Result<()> {
    let bench = GpuBench::new()?;
    let a = bench.adapter();
    println!(
        "adapter: {} ({}), kernels: {}, timing: {}",
        a.name,
        a.backend,
        a.variant.name(),
        if bench.has_timestamps() {
            "GPU timestamps"
        } else {
            "wall clock (no timestamp queries)"
        }
    );
    let q8 = a.integer_dot_products;

    // The floor: a 16-byte copy.
    let src = bench.upload(&[0u8; 16]);
    let dst = bench.zeros(16);
    let floor = time(
        &bench,
        Kernel::Copy,
        None,
        None,
        0,
        CopyParams {
            n: 1,
            ..Default::default()
        }
        .words(),
        &[&src, &dst],
        kernels::copy_groups(1),
    )?;
    println!("floor (a 16-byte copy): {:.2} us per dispatch", floor * 1e6);

    // RMSNorm of the residual row (input and post-attention norms, and the final one),
    // written natural, interleaved and (with integer dot products) in 8+8-bit blocks.
    let x = bench.upload(&f32_bytes(&values(HIDDEN, 1)));
    let w = bench.upload(&f32_bytes(&values(HIDDEN, 2)));
    let y = bench.zeros((HIDDEN * 4) as u64);
    let yi = bench.zeros((HIDDEN * 4) as u64);
    let yq = bench.zeros((HIDDEN / 32 * 18 * 4) as u64);
    let t = time(
        &bench,
        Kernel::RmsNorm,
        None,
        None,
        0,
        RmsNormParams {
            n: HIDDEN as u32,
            rows: 1,
            eps: 1e-6,
            x_offset: 0,
            y_offset: 0,
            flags: RmsNormParams::INTERLEAVED | if q8 { RmsNormParams::Q8 } else { 0 },
            ..Default::default()
        }
        .words(),
        &[&x, &w, &y, &yi, &yq],
        (1, 1),
    )?;
    report("rmsnorm 2048", 2 * LAYERS + 1, t, floor);

    // q/k norm + RoPE + V-cache write of one layer.
    let qkv = (Q_HEADS + 2 * KV_HEADS) * HEAD_DIM;
    let xq = bench.upload(&f32_bytes(&values(qkv, 3)));
    let wq = bench.upload(&f32_bytes(&values(HEAD_DIM, 4)));
    let wk = bench.upload(&f32_bytes(&values(HEAD_DIM, 5)));
    let positions = 8192;
    let half = HEAD_DIM / 2;
    let rope = bench.upload(&f32_bytes(&values(2 * positions * half, 6)));
    let outq = bench.zeros((Q_HEADS * HEAD_DIM * 4) as u64);
    let cache_bytes = (positions * KV_HEADS * HEAD_DIM * 4) as u64;
    let kc = bench.zeros(cache_bytes);
    let vc = bench.zeros(cache_bytes);
    let pos0 = 200u32;
    let t = time(
        &bench,
        Kernel::HeadNormRope,
        None,
        None,
        0,
        HeadNormRopeParams {
            n_tokens: 1,
            head_dim: HEAD_DIM as u32,
            rotary_half: half as u32,
            pos0,
            eps: 1e-6,
            x_stride: qkv as u32,
            q_heads: Q_HEADS as u32,
            q_offset: 0,
            k_heads: KV_HEADS as u32,
            k_offset: (Q_HEADS * HEAD_DIM) as u32,
            k_out: pos0 * (KV_HEADS * HEAD_DIM) as u32,
            copy_v: 1,
            v_offset: ((Q_HEADS + KV_HEADS) * HEAD_DIM) as u32,
            sin_offset: (positions * half) as u32,
            q_head_stride: HEAD_DIM as u32,
            norm: 1,
            ..Default::default()
        }
        .words(),
        &[&xq, &wq, &wk, &rope, &outq, &kc, &xq, &vc],
        ((Q_HEADS + KV_HEADS) as u32, 1),
    )?;
    report("head_norm_rope 32 + 4 heads of 128", LAYERS, t, floor);

    // Split attention and its merge at three context lengths, over KV caches of f32 and
    // (in the f16 kernel variant) f16. Consecutive dispatches read the caches of the next
    // of KV_COPIES layers, together larger than the GPU's L2 (an H200 has 60 MB; one
    // layer's f32 cache at 8001 keys is 16 MB), so that, as in a decode step, keys and
    // values come from memory.
    let part = bench.zeros(kernels::attention_part_floats(Q_HEADS as u32, HEAD_DIM as u32) * 4);
    let attn = bench.zeros((Q_HEADS * HEAD_DIM * 4) as u64);
    for kv_dtype in [DType::F32, DType::F16] {
        if kv_dtype == DType::F16 && !a.variant.f16 {
            continue;
        }
        let caches = kv_caches(&bench, kv_dtype, positions);
        let sets: Vec<Vec<&DeviceBuffer>> = caches
            .iter()
            .map(|(k, v)| vec![&outq, k, v, &part])
            .collect();
        for pos0 in [200u32, 2000, 8000] {
            let (chunk, splits) = kernels::attention_splits(pos0 + 1, Q_HEADS as u32);
            let t = time_split(&bench, kv_dtype, &sets, pos0, chunk, splits)?;
            report(
                &format!(
                    "attention_split, {} keys ({splits} ranges per head), {kv_dtype:?} cache",
                    pos0 + 1
                ),
                LAYERS,
                t,
                floor,
            );
            if kv_dtype == DType::F16 {
                continue; // the merge does not read the cache
            }
            let t = time_merge(&bench, &part, &attn, splits)?;
            report(
                &format!("attention_merge, {splits} ranges per head"),
                LAYERS,
                t,
                floor,
            );
        }
    }

    // `--ranges R,...`: split attention + merge at 2001 and 8001 keys with R key ranges per
    // head instead of the engine's choice (f32 caches, as above).
    let ranges: Vec<u32> = std::env::args()
        .skip_while(|a| a != "--ranges")
        .nth(1)
        .map(|v| v.split(',').filter_map(|r| r.parse().ok()).collect())
        .unwrap_or_default();
    if !ranges.is_empty() {
        let caches = kv_caches(&bench, DType::F32, positions);
        let most = ranges
            .iter()
            .copied()
            .max()
            .unwrap_or(1)
            .min(kernels::ATTENTION_MAX_SPLITS);
        let part = bench.zeros(u64::from(most) * (Q_HEADS * (HEAD_DIM + 2) * 4) as u64);
        let sets: Vec<Vec<&DeviceBuffer>> = caches
            .iter()
            .map(|(k, v)| vec![&outq, k, v, &part])
            .collect();
        for pos0 in [2000u32, 8000] {
            for &r in &ranges {
                let chunk = (pos0 + 1).div_ceil(r.clamp(1, most)).div_ceil(16) * 16;
                let splits = (pos0 + 1).div_ceil(chunk);
                let t = time_split(&bench, DType::F32, &sets, pos0, chunk, splits)?;
                let m = time_merge(&bench, &part, &attn, splits)?;
                println!(
                    "{} keys, {splits} ranges of {chunk}: split {:.2} us + merge {:.2} us = {:.2} us",
                    pos0 + 1,
                    t * 1e6,
                    m * 1e6,
                    (t + m) * 1e6
                );
            }
        }
    }

    // The router's logits (a 4-bit mat-vec of 128 rows) and the routing kernel.
    let q = AffineQuant::new(4, 64, DType::BF16)?;
    let router = matrix_bytes(q, EXPERTS, HIDDEN, 11);
    let (sw, bw) = parts_words(q, EXPERTS, HIDDEN);
    let router = bench.upload(&router);
    let logits = bench.zeros((EXPERTS * 4) as u64);
    let xin = if q8 {
        bench.zeros((HIDDEN / 32 * 18 * 4) as u64)
    } else {
        bench.upload(&f32_bytes(&values(HIDDEN, 8)))
    };
    let dummy = bench.zeros(16);
    let team = bench.qmatvec_team(EXPERTS, HIDDEN);
    let rpt = kernels::qmatvec_rows_per_team(EXPERTS as u32);
    let t = time(
        &bench,
        Kernel::QMatVec,
        Some(q.scale_dtype),
        Some((q.bits, q.group_size)),
        rpt,
        QMatVecParams {
            rows: EXPERTS as u32,
            cols: HIDDEN as u32,
            row_base: 0,
            flags: if q8 {
                LINEAR_X_Q8
            } else {
                LINEAR_X_INTERLEAVED
            },
            x_offset: 0,
            scales_word: sw,
            biases_word: bw,
            team,
            ..Default::default()
        }
        .words(),
        &[&router, &xin, &dummy, &dummy, &logits, &router, &logits],
        kernels::qmatvec_groups(EXPERTS as u32, team, rpt),
    )?;
    report("qmatvec 4-bit 128x2048 (router logits)", LAYERS, t, floor);

    let logit_values = bench.upload(&f32_bytes(&values(EXPERTS, 9)));
    let slots: Vec<u32> = (0..EXPERTS as u32).collect();
    let table = bench.upload(bytemuck::cast_slice(&slots));
    let assign = bench.zeros((2 * TOP_K * 4 * 4) as u64);
    let assign_w = bench.zeros((TOP_K * 4 * 4) as u64);
    let route = bench.zeros((TOP_K * 4) as u64);
    let route_log = bench.zeros(((LAYERS + LAYERS * TOP_K) * 4) as u64);
    let args = bench.zeros(6 * 4 * 4);
    let t = time(
        &bench,
        Kernel::MoeRoute,
        None,
        None,
        0,
        MoeRouteParams {
            top_k: TOP_K as u32,
            table_base: 0,
            layer: 0,
            slots_per_page: EXPERTS as u32,
            n_pages: 1,
            gate_up_x: 192,
            down_x: 256,
            page_mask: 1,
            log_base: LAYERS as u32,
            n_experts: EXPERTS as u32,
            routing: moestream::gpu::params::ROUTING_SOFTMAX_NORM,
            ..Default::default()
        }
        .words(),
        &[
            &logit_values,
            &table,
            &assign,
            &assign_w,
            &route,
            &route_log,
            &args,
        ],
        (1, 1),
    )?;
    report("moe_route 128 experts, top 8", LAYERS, t, floor);

    // The weighted combine of the 8 experts' outputs with the residual.
    let o = bench.upload(&f32_bytes(&values(TOP_K * HIDDEN, 10)));
    let order: Vec<u32> = (0..TOP_K as u32).collect();
    let route = bench.upload(bytemuck::cast_slice(&order));
    let out = bench.zeros((HIDDEN * 4) as u64);
    let t = time(
        &bench,
        Kernel::MoeCombine,
        None,
        None,
        0,
        MoeCombineParams {
            hidden: HIDDEN as u32,
            n_tokens: 1,
            top_k: TOP_K as u32,
            ..Default::default()
        }
        .words(),
        &[&x, &o, &route, &out],
        kernels::grid(HIDDEN.div_ceil(64) as u32),
    )?;
    report("moe_combine 2048, top 8", LAYERS, t, floor);

    // The same combine folding the next layer's input norm in (a decode step's default
    // where the mat-vecs read 8+8-bit rows): the row times the norm's weight in that layout
    // and the blocks' sums of squares, in place of the rmsnorm above.
    let g = bench.upload(&f32_bytes(&values(HIDDEN, 11)));
    let yq = bench.zeros((HIDDEN / 32 * 19 * 4) as u64);
    let t = time(
        &bench,
        Kernel::MoeCombineNorm,
        None,
        None,
        0,
        MoeCombineNormParams {
            hidden: HIDDEN as u32,
            top_k: TOP_K as u32,
            flags: MoeCombineNormParams::Q8,
            ..Default::default()
        }
        .words(),
        &[&x, &o, &route, &out, &g, &yq],
        (kernels::moe_combine_norm_groups(HIDDEN as u32), 1),
    )?;
    report(
        "moe_combine_norm 2048, top 8 (8+8-bit row)",
        LAYERS,
        t,
        floor,
    );
    Ok(())
}
