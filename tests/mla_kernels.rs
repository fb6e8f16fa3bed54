//! The multi-head latent attention kernels (`mla_latent`, `mla_attention`) and the batched
//! per-head float mat-vec (`matvec` with `heads` > 0) against plain CPU references in f64,
//! through the hidden `gpu::testing::KernelRunner` hook. Error metric and bounds as in
//! tests/kernels.rs (nmse and the largest difference relative to the largest expected
//! value); values a dispatch must not write come back bit for bit. With an f16 latent
//! cache (where the adapter converts f16 natively) the references read the cache's
//! f16-rounded values, and what the kernel writes is compared with the f32 result rounded
//! to f16. Measured values: `cargo test --release --test mla_kernels -- --nocapture`.
//!
//! There is no skipping: without a GPU adapter every test fails (CI runs lavapipe).

use moestream::format::DType;
use moestream::gpu::kernels::{self, Kernel};
use moestream::gpu::params::{MatVecParams, MlaAttentionParams, MlaLatentParams};

#[path = "common/harness.rs"]
mod harness;
use harness::*;

/// Elementwise results (a norm, a rotation): a few f32 roundings each.
const ELEMENTWISE: Tol = Tol {
    nmse: 1e-12,
    max_rel: 2e-6,
    floor: 0.0,
};

/// Reductions (dot products of up to 1024 terms, softmax sums over up to 100 keys) in
/// another order than the f64 reference: nmse of order n u^2, a largest difference of a
/// few sqrt(n) u relative (as tests/kernels.rs).
const REDUCTION: Tol = Tol {
    nmse: 1e-10,
    max_rel: 3e-5,
    floor: 0.0,
};

/// What an f16 cache element may differ by: one f16 rounding of a value computed in
/// another order (2^-11 relative, twice for a tie the other way).
const F16_ROUNDING: Tol = Tol {
    nmse: 1e-6,
    max_rel: 1e-3,
    floor: 0.0,
};

/// The cache dtypes to test: f32, and f16 where the adapter converts f16 natively.
fn cache_dtypes() -> Vec<DType> {
    let mut d = vec![DType::F32];
    if runner().variant().f16 {
        d.push(DType::F16);
    }
    d
}

/// RoPE tables `[positions, half]` (cos, then sin), random angles.
fn rope_tables(rng: &mut Rng, positions: usize, half: usize) -> (Vec<f32>, Vec<f32>) {
    let angles: Vec<f32> = (0..positions * half).map(|_| rng.f32() * 6.0).collect();
    (
        angles.iter().map(|a| a.cos()).collect(),
        angles.iter().map(|a| a.sin()).collect(),
    )
}

/// The pairs RoPE rotates in a `rope`-wide vector.
fn pair(i: usize, rope: usize, interleave: bool) -> (usize, usize) {
    if interleave {
        (2 * i, 2 * i + 1)
    } else {
        (i, i + rope / 2)
    }
}

#[test]
fn mla_latent() {
    let mut check = Checker::new("mla_latent");
    let mut rng = Rng::new(71);
    // (heads, rank, rope, nope, tokens, pos0, interleave)
    let cases = [
        (4usize, 24usize, 8usize, 16usize, 1usize, 0usize, true),
        (4, 144, 16, 32, 3, 5, true),
        (3, 512, 64, 128, 2, 7, true),
        (2, 32, 16, 24, 4, 1, false),
        (1, 1016, 8, 8, 1, 2, true),
    ];
    for (heads, rank, rope, nope, n, pos0, interleave) in cases {
        for dtype in cache_dtypes() {
            let case = format!(
                "heads {heads} rank {rank} rope {rope} tokens {n} pos0 {pos0} interleave {interleave} {dtype}"
            );
            let width = rank + rope;
            let dq = nope + rope;
            let positions = pos0 + n + 2;
            let half = rope / 2;
            let q = rng.vec(n * heads * dq, 1.0);
            let kv_a = rng.vec(n * width, 2.0);
            let w = rng.vec(rank, 1.0);
            let (cos, sin) = rope_tables(&mut rng, positions, half);
            let rope_buf = [cos.clone(), sin.clone()].concat();
            let eps = 1e-6f32;
            let qr0 = rng.vec(n * heads * width, 1.0);
            let cache0 = rng.vec(positions * width, 1.0);
            let cache_bytes = match dtype {
                DType::F16 => f16_bytes(&cache0),
                _ => f32_bytes(&cache0),
            };
            let p = MlaLatentParams {
                n_tokens: n as u32,
                heads: heads as u32,
                rank: rank as u32,
                rope: rope as u32,
                nope: nope as u32,
                pos0: pos0 as u32,
                eps,
                sin_offset: cos.len() as u32,
                interleave: u32::from(interleave),
                ..Default::default()
            };
            let out = run_kernel(
                Kernel::MlaLatent,
                Some(dtype),
                None,
                p.words(),
                &[
                    &f32_bytes(&q),
                    &f32_bytes(&kv_a),
                    &f32_bytes(&w),
                    &f32_bytes(&rope_buf),
                    &f32_bytes(&qr0),
                    &cache_bytes,
                ],
                (heads as u32 + 1, n as u32),
            );
            let rot = |a: f32, b: f32, i: usize, pos: usize| -> (f64, f64) {
                let (c, s) = (
                    f64::from(cos[pos * half + i]),
                    f64::from(sin[pos * half + i]),
                );
                let (a, b) = (f64::from(a), f64::from(b));
                (a * c - b * s, b * c + a * s)
            };
            // The queries' RoPE dims, and nothing else of qr.
            let qr = to_f32(&out[4]);
            let mut want = qr0.clone();
            let mut written = vec![false; qr0.len()];
            for t in 0..n {
                for h in 0..heads {
                    let src = (t * heads + h) * dq + nope;
                    let dst = (t * heads + h) * width + rank;
                    for i in 0..half {
                        let (a, b) = pair(i, rope, interleave);
                        let (x, y) = rot(q[src + a], q[src + b], i, pos0 + t);
                        want[dst + a] = x as f32;
                        want[dst + b] = y as f32;
                        written[dst + a] = true;
                        written[dst + b] = true;
                    }
                }
            }
            check.untouched(&case, &qr, &qr0, &written);
            check.close(
                &format!("{case} queries"),
                &pick(&qr, &written),
                &pick(&want, &written),
                ELEMENTWISE,
            );
            // The cache rows of the pass's positions.
            let mut want = Vec::with_capacity(n * width);
            for t in 0..n {
                let row = &kv_a[t * width..(t + 1) * width];
                let ss: f64 = row[..rank]
                    .iter()
                    .map(|&v| f64::from(v) * f64::from(v))
                    .sum();
                let inv = 1.0 / (ss / rank as f64 + f64::from(eps)).sqrt();
                let mut out_row: Vec<f64> = (0..rank)
                    .map(|i| f64::from(w[i]) * f64::from(row[i]) * inv)
                    .collect();
                out_row.resize(width, 0.0);
                for i in 0..half {
                    let (a, b) = pair(i, rope, interleave);
                    let (x, y) = rot(row[rank + a], row[rank + b], i, pos0 + t);
                    out_row[rank + a] = x;
                    out_row[rank + b] = y;
                }
                want.extend(out_row.into_iter().map(|v| v as f32));
            }
            let (cache, before) = match dtype {
                DType::F16 => (from_f16_bytes(&out[5]), from_f16_bytes(&f16_bytes(&cache0))),
                _ => (to_f32(&out[5]), cache0.clone()),
            };
            let mut written = vec![false; cache.len()];
            written[pos0 * width..(pos0 + n) * width].fill(true);
            check.untouched(&case, &cache, &before, &written);
            let tol = if dtype == DType::F16 {
                F16_ROUNDING
            } else {
                ELEMENTWISE
            };
            check.close(
                &format!("{case} cache"),
                &cache[pos0 * width..(pos0 + n) * width],
                &want,
                tol,
            );
        }
    }
    check.report();
}

#[test]
fn mla_attention() {
    let mut check = Checker::new("mla_attention");
    let mut rng = Rng::new(72);
    // (heads, rank, rope, tokens, pos0): the fixtures' shapes, DeepSeek-V3's (512 + 64),
    // the widest row the kernel takes (1024), prefills across several 16-key steps.
    let cases = [
        (4usize, 24usize, 8usize, 1usize, 0usize),
        (4, 32, 16, 5, 3),
        (4, 144, 16, 20, 0),
        (3, 512, 64, 1, 40),
        (2, 512, 64, 17, 30),
        (2, 1016, 8, 3, 18),
    ];
    for (heads, rank, rope, n, pos0) in cases {
        for dtype in cache_dtypes() {
            let case =
                format!("heads {heads} rank {rank} rope {rope} tokens {n} pos0 {pos0} {dtype}");
            let width = rank + rope;
            let keys = pos0 + n;
            let qr = rng.vec(n * heads * width, 1.0);
            let cache = rng.vec((keys + 3) * width, 1.0);
            let (cache_bytes, cache_vals) = match dtype {
                DType::F16 => {
                    let b = f16_bytes(&cache);
                    let v = from_f16_bytes(&b);
                    (b, v)
                }
                _ => (f32_bytes(&cache), cache.clone()),
            };
            let scale = 1.0 / (width as f32).sqrt() * 1.7;
            let out0 = rng.vec(n * heads * rank + 5, 1.0);
            let p = MlaAttentionParams {
                n_tokens: n as u32,
                heads: heads as u32,
                rank: rank as u32,
                rope: rope as u32,
                pos0: pos0 as u32,
                scale,
                ..Default::default()
            };
            let out = run_kernel(
                Kernel::MlaAttention,
                Some(dtype),
                None,
                p.words(),
                &[&f32_bytes(&qr), &cache_bytes, &f32_bytes(&out0), &[]],
                (heads as u32, n as u32),
            );
            let got = to_f32(&out[2]);
            // A decode step split into key ranges (as the engine runs it, and ranges of 5
            // keys, shorter than a step): the partial states, merged here, give the same.
            let mut split_runs = Vec::new();
            if n == 1 {
                let engine = kernels::attention_splits(keys as u32, heads as u32);
                for (chunk, splits) in [engine, (5, (keys as u32).div_ceil(5))] {
                    let p = MlaAttentionParams {
                        chunk,
                        n_splits: splits,
                        ..p
                    };
                    let stride = rank + 2;
                    let part0 = vec![0f32; heads * splits as usize * stride];
                    let out = run_kernel(
                        Kernel::MlaAttention,
                        Some(dtype),
                        None,
                        p.words(),
                        &[
                            &f32_bytes(&qr),
                            &cache_bytes,
                            &f32_bytes(&out0),
                            &f32_bytes(&part0),
                        ],
                        (heads as u32, splits),
                    );
                    assert_eq!(
                        to_f32(&out[2]),
                        out0,
                        "{case}: split mode writes only partials"
                    );
                    let part = to_f32(&out[3]);
                    let mut merged = Vec::with_capacity(heads * rank);
                    for h in 0..heads {
                        let ranges: Vec<&[f32]> = (0..splits as usize)
                            .map(|s| &part[(h * splits as usize + s) * stride..][..stride])
                            .collect();
                        let big = ranges
                            .iter()
                            .map(|r| f64::from(r[0]))
                            .fold(f64::MIN, f64::max);
                        let total: f64 = ranges
                            .iter()
                            .map(|r| (f64::from(r[0]) - big).exp() * f64::from(r[1]))
                            .sum();
                        for d in 0..rank {
                            let v: f64 = ranges
                                .iter()
                                .map(|r| (f64::from(r[0]) - big).exp() * f64::from(r[2 + d]))
                                .sum();
                            merged.push((v / total) as f32);
                        }
                    }
                    split_runs.push((format!("{case} split {chunk}x{splits}"), merged));
                }
            }
            let mut want = Vec::with_capacity(n * heads * rank);
            for t in 0..n {
                for h in 0..heads {
                    let q = &qr[(t * heads + h) * width..(t * heads + h + 1) * width];
                    let scores: Vec<f64> = (0..=pos0 + t)
                        .map(|u| {
                            let row = &cache_vals[u * width..(u + 1) * width];
                            let d: f64 = q
                                .iter()
                                .zip(row)
                                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                                .sum();
                            d * f64::from(scale)
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for d in 0..rank {
                        let v: f64 = e
                            .iter()
                            .enumerate()
                            .map(|(u, w)| w * f64::from(cache_vals[u * width + d]))
                            .sum();
                        want.push((v / total) as f32);
                    }
                }
            }
            let len = n * heads * rank;
            let mut written = vec![false; got.len()];
            written[..len].fill(true);
            check.untouched(&case, &got, &out0, &written);
            check.close(&case, &got[..len], &want, REDUCTION);
            for (c, merged) in &split_runs {
                check.close(c, merged, &want, REDUCTION);
            }
        }
    }
    check.report();
}

#[test]
fn matvec_batched_heads() {
    let mut check = Checker::new("matvec heads");
    let mut rng = Rng::new(73);
    // (heads, rows per head, cols, tokens, x stride, y stride)
    let cases = [
        (3usize, 5usize, 24usize, 2usize, 32usize, 8usize),
        (4, 64, 130, 1, 130, 64),
        (2, 20, 16, 3, 40, 25),
    ];
    for (heads, rows, cols, n, xs, ys) in cases {
        for dtype in DTYPES {
            let case = format!("{heads} heads x {rows}x{cols}, {n} tokens, {dtype}");
            let (wb, w) = weights(&mut rng, dtype, heads * rows * cols);
            let x = rng.vec(n * heads * xs + 3, 1.0);
            let y0 = rng.vec(n * heads * ys + 7, 1.0);
            let p = MatVecParams {
                rows: rows as u32,
                cols: cols as u32,
                heads: heads as u32,
                x_stride: xs as u32,
                y_stride: ys as u32,
                ..Default::default()
            };
            let out = run_kernel_grid_on(
                runner(),
                Kernel::MatVec,
                Some(dtype),
                None,
                0,
                p.words(),
                &[&wb, &f32_bytes(&x), &[], &[], &f32_bytes(&y0)],
                kernels::head_batch_groups(rows as u32, heads as u32, n as u32),
            );
            let got = to_f32(&out[4]);
            let mut want = y0.clone();
            let mut written = vec![false; y0.len()];
            for t in 0..n {
                for h in 0..heads {
                    let g = t * heads + h;
                    for r in 0..rows {
                        let wr = &w[(h * rows + r) * cols..(h * rows + r + 1) * cols];
                        let v: f64 = wr
                            .iter()
                            .zip(&x[g * xs..g * xs + cols])
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum();
                        want[g * ys + r] = v as f32;
                        written[g * ys + r] = true;
                    }
                }
            }
            check.untouched(&case, &got, &y0, &written);
            let typical = (cols as f64).sqrt() / 3.0;
            check.close(
                &case,
                &pick(&got, &written),
                &pick(&want, &written),
                REDUCTION.floor(typical),
            );
        }
    }
    check.report();
}
