//! Every WGSL kernel of `Kernel::ALL` but the quantized ones (tests/qkernels.rs covers
//! those) against the plain f32 CPU reference (`moestream::reference`) or exact expectations,
//! on odd and awkward sizes, through the hidden `gpu::testing::KernelRunner` hook, with the
//! parameters and grids the engine (`src/forward.rs`) dispatches them with.
//!
//! Error metric (as llama.cpp's `test-backend-ops`): the normalized mean squared error
//! `nmse = sum((gpu - cpu)^2) / sum(cpu^2)` over the values a dispatch writes, and the
//! largest difference relative to the largest expected value (one wrong value that the mean
//! dilutes); see [`Tol`]. Every value must be finite. Values a dispatch must not write
//! (other rows, other columns, other assignments, around an offset) must come back bit for
//! bit as they went in. Weights are generated in f32 and encoded to the weight dtype, and
//! the CPU side uses the decoded (dtype-rounded) values, so a comparison measures only the
//! kernel's own f32 arithmetic.
//!
//! Scale of the bounds: f32 has a unit roundoff u = 6e-8: one rounding per output is an
//! nmse of order u^2 = 4e-15, a length-n reduction summed in another order than the CPU's
//! sequential sum one of order n u^2. A relative error of 1e-3 on every output is an nmse
//! of 1e-6. Each bound is at least 10x over the worst lavapipe measures over 40 data seeds
//! and at least 30x under a 1e-3 error (printed with `-- --nocapture`; other data with
//! `KERNEL_TEST_SEED=<n>`). Data-movement kernels must be exact.
//!
//! There is no skipping: without a GPU adapter every test fails (CI runs lavapipe).

use moestream::gpu::kernels::{self, attention_tiled_groups, Kernel};
use moestream::gpu::params::{
    AttentionMergeParams, AttentionParams, AttentionSplitParams, CopyParams, EmbeddingParams,
    HeadNormRopeParams, MatMulParams, MatVecParams, MoeCombineNormParams, MoeCombineParams,
    MoeDownParams, MoeGateUpParams, MoeRouteParams, RmsNormParams, RouterParams,
    SharedSwiGluParams, SigmoidGateParams, SubgroupProbeParams, SwiGluParams, TokenPickParams,
    TokenSampleParams, TopKParams,
};
use moestream::gpu::testing::KernelRunner;
use moestream::gpu::ShaderChecks;
use moestream::reference;
use moestream::{format::DType, store::ExpertLayout};

// ---------------------------------------------------------------------------------------
// Bounds. The measured worst values are printed by each test (`-- --nocapture`).

/// Pure data movement (embedding lookup, the copied tail of RoPE, the MoE combine's
/// additions done in the reference's order): the result is exact.
const EXACT: Tol = Tol {
    nmse: 0.0,
    max_rel: 0.0,
    floor: 0.0,
};

/// A handful of f32 roundings per output (RoPE's two products and a difference, SwiGLU's
/// exp and division): a few ulp each, nmse of order u^2 = 4e-15, relative max difference of
/// order 1e-7. (Vulkan allows `exp(x)` an error of 3 + 2|x| ulp, 60 ulp = 7e-6 relative at
/// |x| = 30, but only where silu's output is tiny: SwiGLU is judged against a floor of 1.)
const ELEMENTWISE: Tol = Tol {
    nmse: 1e-12,
    max_rel: 1e-6,
    floor: 0.0,
};

/// Reductions: dot products of up to 2048 terms (matvec, matmul, the expert projections)
/// summed in another order than the CPU's sequential sum (64 strided partial sums and a
/// tree), RMSNorm's sum of squares and `inverseSqrt` (2 ulp in Vulkan), attention's online
/// softmax over up to 150 keys. Rounding noise of a length-n sum is about sqrt(n) u
/// relative to the typical output: an nmse of order n u^2 (1e-11 for n = 2048) and a max
/// difference of a few 1e-6 relative. Worst over 40 seeds (`KERNEL_TEST_SEED`): nmse 9e-12,
/// max 3.4e-6, both matvec with 2048 columns. The bounds sit 10x over that and 10^4x /
/// 30x under a 1e-3 relative error (nmse 1e-6, max 1e-3).
const REDUCTION: Tol = Tol {
    nmse: 1e-10,
    max_rel: 3e-5,
    floor: 0.0,
};

/// Router weights: within 1e-6 absolute (they are probabilities, so `floor` 1 turns the
/// relative bound into an absolute one); ids must match exactly.
const ROUTER_WEIGHTS: Tol = Tol {
    nmse: 1e-10,
    max_rel: 1e-6,
    floor: 1.0,
};

/// Typical size of a dot product of `n` terms, each a product of two values uniform in
/// [-a, a] and [-b, b]: sqrt(n) * a * b / 3.
fn dot_scale(n: usize, a: f64, b: f64) -> f64 {
    (n as f64).sqrt() * a * b / 3.0
}

// ---------------------------------------------------------------------------------------
// Harness.

#[path = "common/harness.rs"]
mod harness;
use harness::*;

/// Runs one dispatch of a float kernel (see [`harness::run_kernel`]).
fn run(
    kernel: Kernel,
    wdt: Option<DType>,
    params: &[u32],
    buffers: &[&[u8]],
    groups: (u32, u32),
) -> Vec<Vec<u8>> {
    run_kernel(kernel, wdt, None, params, buffers, groups)
}

/// Values rounded to f16 (nearest even) and back.
fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

/// An attention case's K and V caches as bytes (f32, or f16 rounded to nearest even) and
/// the reference's output on the values the cache holds: `n` queries from position `pos0`
/// over `n_heads` / `n_kv_heads` heads of `head_dim`.
fn cache_case(
    f16: bool,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (n, pos0, n_heads, n_kv_heads, head_dim): (usize, usize, usize, usize, usize),
) -> (Vec<u8>, Vec<u8>, Vec<f32>) {
    cache_case_with(
        f16,
        q,
        k,
        v,
        (n, pos0, n_heads, n_kv_heads, head_dim),
        None,
        None,
    )
}

/// [`cache_case`] with gpt-oss's sliding window and attention sinks.
fn cache_case_with(
    f16: bool,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (n, pos0, n_heads, n_kv_heads, head_dim): (usize, usize, usize, usize, usize),
    sinks: Option<&[f32]>,
    window: Option<usize>,
) -> (Vec<u8>, Vec<u8>, Vec<f32>) {
    let (k, v) = if f16 {
        (round_f16(k), round_f16(v))
    } else {
        (k.to_vec(), v.to_vec())
    };
    let keys = (pos0 + n) * n_kv_heads * head_dim;
    let want = reference::attention_with(
        q,
        &k[..keys],
        &v[..keys],
        (n, pos0),
        (n_heads, n_kv_heads, head_dim),
        sinks,
        window,
    );
    let bytes = |x: &[f32]| if f16 { f16_bytes(x) } else { f32_bytes(x) };
    (bytes(&k), bytes(&v), want)
}

/// Whether the engine's kernels offer f16 KV caches here (`include/kv_native.wgsl`).
fn kv_f16() -> bool {
    runner().variant().f16
}

/// A 2-D grid of at least `n` workgroups, `x` wide: exercises the `wid.y` / `gid.y` part of
/// the index computation that the engine's grid only reaches past 65535 workgroups.
fn grid_2d(n: usize, x: usize) -> (u32, u32) {
    (x as u32, n.div_ceil(x).max(1) as u32)
}

#[test]
fn every_kernel_is_covered() {
    // The kernels this file tests: every kernel of `Kernel::ALL` that does not read
    // quantized weights (those are tested in tests/qkernels.rs). A float kernel added to
    // `Kernel::ALL` fails here until it is added to a test.
    let covered = [
        Kernel::Embedding,
        Kernel::RmsNorm,
        Kernel::MatVec,
        Kernel::MatMul,
        Kernel::HeadNormRope,
        Kernel::Attention,
        Kernel::AttentionTiled,
        Kernel::AttentionSplit,
        Kernel::AttentionMerge,
        Kernel::Router,
        Kernel::SwiGlu,
        Kernel::SigmoidGate,
        Kernel::SharedSwiGlu,
        Kernel::MoeGateUp,
        Kernel::MoeDown,
        Kernel::MoeCombine,
        Kernel::MoeCombineNorm,
        Kernel::TopK,
        Kernel::TokenPick,
        Kernel::TokenSample,
    ];
    // Tested by name (see `copy`, `moe_route` and `subgroup_probe`), and the Gated
    // DeltaNet kernels in tests/linear_attention.rs.
    let by_name = [
        "copy",
        "moe_route",
        "subgroup_probe",
        "conv1d_silu",
        "gated_delta_net",
        "gated_rmsnorm",
        // tests/mla_kernels.rs
        "mla_latent",
        "mla_attention",
    ];
    for k in Kernel::ALL.into_iter().filter(|k| !k.is_quantized()) {
        assert!(
            covered.contains(&k) || by_name.contains(&k.name()),
            "kernel {} has no test",
            k.name()
        );
    }
    for k in covered {
        assert!(!k.is_quantized(), "{}", k.name());
        let (fields, bindings) = interface(k);
        assert!(
            fields > 0 && bindings > 0,
            "{}: interface not parsed",
            k.name()
        );
    }
}

#[test]
fn metric_catches_a_1e3_error() {
    // A real kernel output (a bf16 matvec, 33 rows x 130 cols) against its reference.
    let mut rng = Rng::new(1);
    let (rows, cols) = (33usize, 130usize);
    let (wb, w) = weights(&mut rng, DType::BF16, rows * cols);
    let x = rng.vec(cols, 1.0);
    let y0 = vec![0.0f32; rows];
    let out = run(
        Kernel::MatVec,
        Some(DType::BF16),
        MatVecParams {
            rows: rows as u32,
            cols: cols as u32,
            ..Default::default()
        }
        .words(),
        &[&wb, &f32_bytes(&x), &[], &[], &f32_bytes(&y0)],
        grid(rows),
    );
    let got = to_f32(&out[4]);
    let want = reference::matmul(&w, rows, cols, &x, 1);
    let tol = REDUCTION.floor(dot_scale(cols, 1.0, 1.0));
    compare(&got, &want, tol).expect("the unperturbed output passes");
    let loose_max = Tol {
        max_rel: f64::INFINITY,
        ..tol
    };
    // A relative error of 1e-3 on every value: nmse 1e-6, caught by the mean alone.
    let scaled: Vec<f32> = got.iter().map(|v| v * 1.001).collect();
    let e = compare(&scaled, &want, loose_max).unwrap_err();
    assert!(e.starts_with("nmse above"), "{e}");
    // One value off by 1e-3 (outputs are of size ~4): the mean over 33 values still sees
    // it (nmse 2e-9), and so does the max alone, which does not dilute with the number
    // of outputs.
    let mut one = got.clone();
    one[17] += 1e-3;
    let e = compare(&one, &want, tol).unwrap_err();
    assert!(e.starts_with("nmse above"), "{e}");
    let loose_nmse = Tol {
        nmse: f64::INFINITY,
        ..tol
    };
    let e = compare(&one, &want, loose_nmse).unwrap_err();
    assert!(e.starts_with("max |diff| above"), "{e}");
    // A NaN or an infinity anywhere fails, as does a wrong length.
    let lax = Tol {
        nmse: f64::INFINITY,
        max_rel: f64::INFINITY,
        floor: 0.0,
    };
    for bad in [f32::NAN, f32::INFINITY] {
        let mut v = got.clone();
        v[3] = bad;
        assert!(compare(&v, &want, lax).is_err());
    }
    assert!(compare(&got[1..], &want, lax).is_err());
    // The floor judges a small output against the typical size: one output of 1e-3
    // computed as 1.1e-3 fails on its own scale, and against a floor of 1 (an error of
    // 1e-4 of the typical size) still fails; an error of 2e-7 of it passes.
    assert!(compare(&[1.1e-3], &[1e-3], REDUCTION).is_err());
    assert!(compare(&[1.1e-3], &[1e-3], REDUCTION.floor(1.0)).is_err());
    assert!(compare(&[1e-3 + 2e-7], &[1e-3], REDUCTION.floor(1.0)).is_ok());
    // Every bound catches a 1e-3 relative error.
    for tol in [EXACT, ELEMENTWISE, REDUCTION, ROUTER_WEIGHTS] {
        assert!(compare(&scaled, &want, tol).is_err());
    }
    // And EXACT means exact.
    let mut ulp = got.clone();
    ulp[0] = f32::from_bits(ulp[0].to_bits() + 1);
    assert!(compare(&ulp, &got, EXACT).is_err());
    compare(&got, &got, EXACT).expect("identical values");
}

// ---------------------------------------------------------------------------------------
// Embedding.

/// Kernel parameters passed as immediate data (`MOESTREAM_IMMEDIATES=1`: the shader's
/// uniform becomes `var<immediate>`, set before each dispatch) give the same bits as the
/// uniform buffer: RMSNorm and a mat-vec with every parameter non-trivial, several
/// dispatches with different parameters on one runner. (Every other test runs the uniform
/// path; CI's lavapipe offers immediates, so this one runs there.)
#[test]
fn parameters_as_immediates_give_the_same_bits() {
    let Some(imm) = KernelRunner::with_immediates().expect("a GPU adapter") else {
        println!(
            "parameters_as_immediates: not run: {} offers no immediates",
            runner().adapter_name()
        );
        return;
    };
    same_bits_as_the_default_runner(&imm, "immediates");
}

#[test]
fn kernels_without_runtime_checks_give_the_same_bits() {
    // wgpu's loop-bounding counters, division guards and bounds clamps taken out
    // (`MOESTREAM_SHADER_CHECKS`; the default runner keeps the bounds checks only): the
    // kernels compute the same bits as with all of wgpu's checks.
    let all = KernelRunner::with_shader_checks(ShaderChecks::All).expect("a GPU adapter");
    same_bits_as_the_default_runner(&all, "shader checks All");
    let none = KernelRunner::with_shader_checks(ShaderChecks::None).expect("a GPU adapter");
    same_bits_as_the_default_runner(&none, "shader checks None");
}

/// A norm over 1 to 5 rows and a float mat-vec under every flag give the same bits on
/// `other` as on the default runner.
fn same_bits_as_the_default_runner(other: &KernelRunner, what: &str) {
    let mut rng = Rng::new(77);
    for &(n, rows) in &[(64usize, 3usize), (2048, 1), (100, 5)] {
        let x = rng.vec(3 + rows * n, 2.0);
        let w = rng.vec(n, 1.5);
        let before = rng.vec(2 + rows * n, 1.0);
        let yi = rng.vec(rows * n, 1.0);
        let yq = vec![0u32; rows * n / 32 * 18 + 3];
        let params = RmsNormParams {
            n: n as u32,
            rows: rows as u32,
            eps: 1e-5,
            x_offset: 3,
            y_offset: 2,
            flags: if n % 32 == 0 {
                RmsNormParams::INTERLEAVED | RmsNormParams::Q8
            } else {
                0
            },
            ..Default::default()
        };
        let bufs: [&[u8]; 5] = [
            &f32_bytes(&x),
            &f32_bytes(&w),
            &f32_bytes(&before),
            &f32_bytes(&yi),
            bytemuck::cast_slice(&yq),
        ];
        let a = run_kernel_on(
            runner(),
            Kernel::RmsNorm,
            None,
            None,
            params.words(),
            &bufs,
            grid(rows),
        );
        let b = run_kernel_on(
            other,
            Kernel::RmsNorm,
            None,
            None,
            params.words(),
            &bufs,
            grid(rows),
        );
        assert_eq!(a, b, "{what}: rmsnorm n {n} rows {rows}");
    }
    for flags in 0u32..4 {
        let (rows, cols) = (37usize, 96usize);
        let (wb, _) = weights(&mut rng, DType::F32, rows * cols);
        let x = rng.vec(5 + cols, 1.0);
        let bias = rng.vec(6 + rows, 1.0);
        let resid = rng.vec(6 + rows, 1.0);
        let before = rng.vec(6 + rows, 1.0);
        let params = MatVecParams {
            rows: rows as u32,
            cols: cols as u32,
            row_base: 6,
            flags,
            x_offset: 5,
            ..Default::default()
        };
        let bufs: [&[u8]; 5] = [
            &wb,
            &f32_bytes(&x),
            &f32_bytes(&bias),
            &f32_bytes(&resid),
            &f32_bytes(&before),
        ];
        let g = grid_2d(rows, 2);
        let a = run_kernel_on(
            runner(),
            Kernel::MatVec,
            Some(DType::F32),
            None,
            params.words(),
            &bufs,
            g,
        );
        let b = run_kernel_on(
            other,
            Kernel::MatVec,
            Some(DType::F32),
            None,
            params.words(),
            &bufs,
            g,
        );
        assert_eq!(a, b, "{what}: matvec flags {flags}");
    }
}

#[test]
fn embedding() {
    let mut ck = Checker::new("embedding");
    let mut rng = Rng::new(10);
    for dtype in DTYPES {
        for &hidden in &[1usize, 3, 17, 64, 130] {
            // A row chunk [row_start, row_start + row_count) of a vocabulary of 40.
            for &(row_start, row_count) in &[(0usize, 40usize), (13, 9)] {
                let n_tokens = 11;
                let mut ids: Vec<u32> = (0..n_tokens).map(|_| rng.below(40) as u32).collect();
                // The chunk's first and last rows and the ids just outside it.
                let (first, end) = (row_start as u32, (row_start + row_count) as u32);
                ids[1] = first;
                ids[4] = end - 1;
                ids[7] = first.saturating_sub(1);
                ids[9] = end.min(39);
                let (tb, table) = weights(&mut rng, dtype, row_count * hidden);
                let before = rng.vec(n_tokens * hidden, 1.0);
                let mut want = before.clone();
                let mut written = vec![false; want.len()];
                for (t, &id) in ids.iter().enumerate() {
                    let id = id as usize;
                    if (row_start..row_start + row_count).contains(&id) {
                        let r = id - row_start;
                        want[t * hidden..(t + 1) * hidden]
                            .copy_from_slice(&table[r * hidden..(r + 1) * hidden]);
                        written[t * hidden..(t + 1) * hidden].fill(true);
                    }
                }
                let groups = (n_tokens * hidden).div_ceil(64);
                for (g, groups) in [grid(groups), grid_2d(groups, 2)].into_iter().enumerate() {
                    let case =
                        format!("{dtype} hidden {hidden} chunk {row_start}+{row_count} grid {g}");
                    let out = run(
                        Kernel::Embedding,
                        Some(dtype),
                        EmbeddingParams {
                            hidden: hidden as u32,
                            n_tokens: n_tokens as u32,
                            row_start: row_start as u32,
                            row_count: row_count as u32,
                        }
                        .words(),
                        &[&u32_bytes(&ids), &tb, &f32_bytes(&before)],
                        groups,
                    );
                    let got = to_f32(&out[2]);
                    ck.untouched(&case, &got, &before, &written);
                    ck.close(&case, &pick(&got, &written), &pick(&want, &written), EXACT);
                }
            }
        }
    }
    ck.report();
}

#[test]
fn embedding_special_values() {
    // Decoding is exact for every value of each 16-bit dtype, subnormals, signed zeros and
    // infinities included (NaN payloads are left out: not every GPU path keeps them). The
    // tables are bit patterns, looked up in reverse order.
    let (mut checked, mut flushes) = (0, 0);
    let f16_bits: [u16; 15] = [
        0x0000, 0x8000, // +0, -0
        0x3c00, 0xc100, // 1, -2.5
        0x7bff, 0xfbff, // +-65504, the largest finite
        0x0400, // 2^-14, the smallest normal
        0x0001, // 2^-24, the smallest subnormal
        0x03ff, // the largest subnormal
        0x8200, // -2^-15, a subnormal
        0x3c01, // 1 + 1 ulp
        0x7c00, 0xfc00, // +-inf
        0x3555, 0x4248, // 0.333, 3.14
    ];
    let bf16_bits: [u16; 15] = [
        0x0000, 0x8000, // +0, -0
        0x3f80, 0xc020, // 1, -2.5
        0x7f7f, 0xff7f, // +-3.39e38, the largest finite
        0x0080, // 2^-126, the smallest normal
        0x0001, // 2^-133, the smallest subnormal
        0x807f, // minus the largest subnormal
        0x3f81, // 1 + 1 ulp
        0x7f80, 0xff80, // +-inf
        0x3eab, 0x4049, // 0.334, 3.14
        0x0040, // 2^-127, a subnormal
    ];
    for (dtype, bits) in [(DType::F16, f16_bits), (DType::BF16, bf16_bits)] {
        let table_bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let table = dtype.decode(&table_bytes);
        // hidden 1 (every element its own row, odd and even halves of a word), 3 and 5
        // (rows starting mid-word).
        for hidden in [1usize, 3, 5] {
            let rows = table.len() / hidden;
            let ids: Vec<u32> = (0..rows as u32).rev().collect();
            let before = vec![7.0f32; rows * hidden];
            let out = run(
                Kernel::Embedding,
                Some(dtype),
                EmbeddingParams {
                    hidden: hidden as u32,
                    n_tokens: rows as u32,
                    row_start: 0,
                    row_count: rows as u32,
                }
                .words(),
                &[&u32_bytes(&ids), &table_bytes, &f32_bytes(&before)],
                grid((rows * hidden).div_ceil(64)),
            );
            let got = to_f32(&out[2]);
            let want: Vec<f32> = ids
                .iter()
                .flat_map(|&id| table[id as usize * hidden..(id as usize + 1) * hidden].to_vec())
                .collect();
            // WGSL lets an implementation flush subnormals to zero (lavapipe does not):
            // a flushed subnormal weight is harmless, any other difference is a bug.
            let min_normal = if dtype == DType::F16 {
                6.103_515_6e-5
            } else {
                f32::MIN_POSITIVE
            };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let flushed = *g == 0.0 && w.abs() < min_normal;
                assert!(
                    g.to_bits() == w.to_bits() || flushed,
                    "embedding {dtype} hidden {hidden}: value {i} is {g:e}, expected {w:e}"
                );
                flushes += usize::from(flushed && *w != 0.0);
            }
            checked += got.len();
        }
    }
    println!("embedding special: {checked} values checked, {flushes} subnormals flushed to zero");
}

// ---------------------------------------------------------------------------------------
// RMSNorm.

#[test]
fn rmsnorm() {
    let mut ck = Checker::new("rmsnorm");
    let mut rng = Rng::new(20);
    let eps = 1e-6f32;
    for &n in &[1usize, 3, 17, 63, 64, 65, 130, 257, 1100, 2048, 4160] {
        for &rows in &[1usize, 5, 33] {
            for &(x_offset, y_offset, two_d) in &[(0usize, 0usize, false), (7, 3, true)] {
                let case =
                    format!("n {n} rows {rows} x_offset {x_offset} y_offset {y_offset} 2d {two_d}");
                // Input rows after x_offset junk values, followed by a junk row.
                let mut x = rng.vec(x_offset + (rows + 1) * n, 2.0);
                if rows == 5 {
                    // An all-zero row: eps keeps it finite, the output is zero.
                    x[x_offset + 2 * n..x_offset + 3 * n].fill(0.0);
                }
                let w = rng.vec(n, 1.5);
                let before = rng.vec(y_offset + rows * n + 5, 1.0);
                let rows_in = &x[x_offset..x_offset + rows * n];
                let norm = reference::rms_norm(rows_in, &w, eps);
                let mut want = before.clone();
                want[y_offset..y_offset + rows * n].copy_from_slice(&norm);
                let mut written = vec![false; want.len()];
                written[y_offset..y_offset + rows * n].fill(true);
                let groups = if two_d { grid_2d(rows, 4) } else { grid(rows) };
                // Rows of a multiple of 32 values are also written interleaved (at row * n)
                // and in the 8+8-bit layout (at row * 18 n / 32 words).
                let il = n % 32 == 0;
                let yi_before = rng.vec(rows * n + 3, 1.0);
                let yq_before = vec![0x7fc0_0000u32; rows * n / 32 * 18 + 3];
                let out = run(
                    Kernel::RmsNorm,
                    None,
                    RmsNormParams {
                        n: n as u32,
                        rows: rows as u32,
                        eps,
                        x_offset: x_offset as u32,
                        y_offset: y_offset as u32,
                        flags: if il {
                            RmsNormParams::INTERLEAVED | RmsNormParams::Q8
                        } else {
                            0
                        },
                        ..Default::default()
                    }
                    .words(),
                    &[
                        &f32_bytes(&x),
                        &f32_bytes(&w),
                        &f32_bytes(&before),
                        &f32_bytes(&yi_before),
                        &u32_bytes(&yq_before),
                    ],
                    groups,
                );
                let got = to_f32(&out[2]);
                ck.untouched(&case, &got, &before, &written);
                // Each output is x * inv * w: no cancellation, so no floor.
                ck.close(&case, &pick(&got, &written), &norm, REDUCTION);
                let yi = to_f32(&out[3]);
                let mut yi_written = vec![false; yi.len()];
                if il {
                    yi_written[..rows * n].fill(true);
                    let case = format!("{case} interleaved");
                    ck.close(&case, &deinterleave(&yi[..rows * n], n), &norm, REDUCTION);
                }
                ck.untouched(&case, &yi, &yi_before, &yi_written);
                let yq = to_u32(&out[4]);
                let rq = n / 32 * 18;
                if il {
                    for (r, want) in norm.chunks_exact(n).enumerate() {
                        check_q8_row(&format!("{case} row {r}"), &yq[r * rq..(r + 1) * rq], want);
                    }
                }
                let tail = if il { rows * rq } else { 0 };
                assert!(
                    yq[tail..].iter().all(|&w| w == 0x7fc0_0000),
                    "{case}: 8+8-bit words written past the rows"
                );
            }
        }
    }
    ck.report();
}

// ---------------------------------------------------------------------------------------
// MatVec and MatMul.

const COLS: [usize; 10] = [1, 3, 17, 63, 64, 65, 130, 256, 257, 2048];
const ROWS: [usize; 3] = [1, 5, 33];

#[test]
fn matvec() {
    let mut ck = Checker::new("matvec");
    let mut rng = Rng::new(30);
    for dtype in DTYPES {
        for &cols in &COLS {
            for &rows in &ROWS {
                for (flags, shifted) in (0u32..4).flat_map(|f| [(f, false), (f, true)]) {
                    // Shifted: a row chunk writing into the middle of a wider output at
                    // row_base, reading x from x_offset, on a 2-D grid.
                    let (row_base, extra, x_offset) = if shifted { (6, 4, 5) } else { (0, 0, 0) };
                    let total = row_base + rows + extra;
                    let case = format!("{dtype} rows {rows} cols {cols} flags {flags} row_base {row_base} x_offset {x_offset}");
                    let (wb, w) = weights(&mut rng, dtype, rows * cols);
                    let x = rng.vec(x_offset + cols + 3, 1.0);
                    let bias = rng.vec(total, 1.0);
                    let resid = rng.vec(total, 1.0);
                    let before = rng.vec(total, 1.0);
                    let mut want =
                        reference::matmul(&w, rows, cols, &x[x_offset..x_offset + cols], 1);
                    for (r, v) in want.iter_mut().enumerate() {
                        if flags & 1 != 0 {
                            *v += bias[row_base + r];
                        }
                        if flags & 2 != 0 {
                            *v += resid[row_base + r];
                        }
                    }
                    let mut written = vec![false; total];
                    written[row_base..row_base + rows].fill(true);
                    let (bb, rb) = (f32_bytes(&bias), f32_bytes(&resid));
                    let groups = if shifted {
                        grid_2d(rows, 2)
                    } else {
                        grid(rows)
                    };
                    let out = run(
                        Kernel::MatVec,
                        Some(dtype),
                        MatVecParams {
                            rows: rows as u32,
                            cols: cols as u32,
                            row_base: row_base as u32,
                            flags,
                            x_offset: x_offset as u32,
                            ..Default::default()
                        }
                        .words(),
                        &[
                            &wb,
                            &f32_bytes(&x),
                            if flags & 1 != 0 { &bb } else { &[] },
                            if flags & 2 != 0 { &rb } else { &[] },
                            &f32_bytes(&before),
                        ],
                        groups,
                    );
                    let got = to_f32(&out[4]);
                    ck.untouched(&case, &got, &before, &written);
                    ck.close(
                        &case,
                        &pick(&got, &written),
                        &want,
                        REDUCTION.floor(dot_scale(cols, 1.0, 1.0)),
                    );
                }
            }
        }
    }
    ck.report();
}

#[test]
fn matmul() {
    let mut ck = Checker::new("matmul");
    let mut rng = Rng::new(40);
    let cases_cols = [1usize, 3, 17, 63, 65, 130, 257, 2048];
    let mut case_no = 0usize;
    for dtype in DTYPES {
        for &cols in &cases_cols {
            for &rows in &ROWS {
                for &tokens in &[1usize, 3, 17, 40] {
                    // Cycle through the 4 flag values x 2 placements; over the 96 cases of
                    // each dtype every combination meets many sizes.
                    let flags = (case_no % 4) as u32;
                    let chunk = (case_no / 4) % 2 == 1;
                    case_no += 1;
                    // A row chunk writes columns [row_base, row_base + rows) of an output
                    // with out_stride columns (the engine: row0 and the matrix's rows).
                    let (row_base, out_stride) = if chunk { (7, 7 + rows + 3) } else { (0, rows) };
                    let case = format!(
                        "{dtype} rows {rows} cols {cols} tokens {tokens} flags {flags} row_base {row_base} stride {out_stride}"
                    );
                    let (wb, w) = weights(&mut rng, dtype, rows * cols);
                    let x = rng.vec(tokens * cols, 1.0);
                    let bias = rng.vec(out_stride, 1.0);
                    let resid = rng.vec(tokens * out_stride, 1.0);
                    let before = rng.vec(tokens * out_stride, 1.0);
                    let y = reference::matmul(&w, rows, cols, &x, tokens);
                    let mut want = Vec::with_capacity(tokens * rows);
                    let mut written = vec![false; tokens * out_stride];
                    for t in 0..tokens {
                        for r in 0..rows {
                            let o = row_base + r;
                            let mut v = y[t * rows + r];
                            if flags & 1 != 0 {
                                v += bias[o];
                            }
                            if flags & 2 != 0 {
                                v += resid[t * out_stride + o];
                            }
                            want.push(v);
                            written[t * out_stride + o] = true;
                        }
                    }
                    let (bb, rb) = (f32_bytes(&bias), f32_bytes(&resid));
                    let out = run(
                        Kernel::MatMul,
                        Some(dtype),
                        MatMulParams {
                            rows: rows as u32,
                            cols: cols as u32,
                            n_tokens: tokens as u32,
                            row_base: row_base as u32,
                            out_stride: out_stride as u32,
                            flags,
                            ..Default::default()
                        }
                        .words(),
                        &[
                            &wb,
                            &f32_bytes(&x),
                            if flags & 1 != 0 { &bb } else { &[] },
                            if flags & 2 != 0 { &rb } else { &[] },
                            &f32_bytes(&before),
                        ],
                        (rows.div_ceil(16) as u32, tokens.div_ceil(16) as u32),
                    );
                    let got = to_f32(&out[4]);
                    ck.untouched(&case, &got, &before, &written);
                    ck.close(
                        &case,
                        &pick(&got, &written),
                        &want,
                        REDUCTION.floor(dot_scale(cols, 1.0, 1.0)),
                    );
                }
            }
        }
    }
    ck.report();
}

// ---------------------------------------------------------------------------------------
// RoPE.

/// With `ring` (a sliding layer's ring-buffer KV cache of 2 x 6 rows) every key and value
/// row is also written at its mirror, 6 rows after or before it; the rows themselves are
/// those of a plain cache, and no other row is touched. Tokens 4..9 straddle the halves.
#[test]
fn head_norm_rope_writes_ring_mirrors() {
    let mut rng = Rng::new(51);
    let (n, nq, nk, hd, cap, row0) = (5usize, 1usize, 2usize, 16usize, 6usize, 4usize);
    let kd = nk * hd;
    let x_stride = (nq + 2 * nk) * hd;
    let rows_in = rng.vec(n * x_stride, 2.0);
    let (cos, sin) = reference::rope_tables(1e4, hd, 20 + n);
    let w = rng.vec(hd, 1.0);
    let kv_len = 2 * cap * kd;
    let k_before = rng.vec(kv_len, 1.0);
    let v_before = rng.vec(kv_len, 1.0);
    let dtypes: Vec<Option<DType>> = if kv_f16() {
        vec![None, Some(DType::F16)]
    } else {
        vec![None]
    };
    for kv in dtypes {
        let enc = |v: &[f32]| match kv {
            None => f32_bytes(v),
            Some(_) => f16_bytes(&round_f16(v)),
        };
        let dec = |b: &[u8]| match kv {
            None => to_f32(b),
            Some(_) => from_f16_bytes(b),
        };
        let go = |ring: usize| {
            let out = run(
                Kernel::HeadNormRope,
                kv,
                HeadNormRopeParams {
                    n_tokens: n as u32,
                    head_dim: hd as u32,
                    rotary_half: (hd / 2) as u32,
                    pos0: 20,
                    eps: 1e-6,
                    x_stride: x_stride as u32,
                    q_heads: nq as u32,
                    k_heads: nk as u32,
                    k_offset: (nq * hd) as u32,
                    k_out: (row0 * kd) as u32,
                    copy_v: 1,
                    v_offset: ((nq + nk) * hd) as u32,
                    sin_offset: cos.len() as u32,
                    q_head_stride: hd as u32,
                    norm: 1,
                    ring: (ring * kd) as u32,
                    ..Default::default()
                }
                .words(),
                &[
                    &f32_bytes(&rows_in),
                    &f32_bytes(&w),
                    &f32_bytes(&w),
                    &f32_bytes(&[cos.clone(), sin.clone()].concat()),
                    &f32_bytes(&vec![0.0; n * nq * hd]),
                    &enc(&k_before),
                    &f32_bytes(&rows_in),
                    &enc(&v_before),
                ],
                ((nq + nk) as u32, n as u32),
            );
            (dec(&out[5]), dec(&out[7]))
        };
        let (k_plain, v_plain) = go(0);
        let (k_ring, v_ring) = go(cap);
        for (what, plain, ringed, before) in [
            ("k", &k_plain, &k_ring, &k_before),
            ("v", &v_plain, &v_ring, &v_before),
        ] {
            let before = match kv {
                None => before.clone(),
                Some(_) => round_f16(before),
            };
            for r in 0..2 * cap {
                let row = |v: &[f32]| v[r * kd..(r + 1) * kd].to_vec();
                let written = (row0..row0 + n).contains(&r);
                let mirror_of = (row0..row0 + n).find(|&w| (w + cap) % (2 * cap) == r);
                let want = if written {
                    row(plain)
                } else if let Some(w) = mirror_of {
                    plain[w * kd..(w + 1) * kd].to_vec()
                } else {
                    row(&before)
                };
                assert!(
                    row(ringed) == want,
                    "{what} ({kv:?}) row {r}: written {written}, mirror of {mirror_of:?}"
                );
                if !written {
                    assert!(
                        row(plain) == row(&before),
                        "{what}: the plain cache's row {r}"
                    );
                }
            }
        }
    }
}

/// OLMoE's variants: with `whole` one RMSNorm over each token's query (key) heads
/// together, weights of that width; with `clip` the normed q and k and the copied v
/// clamped before RoPE. Against `reference::rms_norm` over whole rows, a clamp, and
/// `reference::rope`; the clamp binds on a good share of the values.
#[test]
fn head_norm_rope_whole_width_norm_and_clip() {
    let mut ck = Checker::new("head_norm_rope whole");
    let mut rng = Rng::new(52);
    for (n, nq, nk, hd, clip) in [
        (3usize, 4usize, 2usize, 16usize, 0.0f32),
        (5, 6, 2, 8, 0.6),
        (1, 8, 8, 32, 0.4),
    ] {
        let (qd, kd) = (nq * hd, nk * hd);
        let x_stride = qd + 2 * kd;
        let rows_in = rng.vec(n * x_stride, 2.0);
        let wq = rng.vec(qd, 1.5);
        let wk = rng.vec(kd, 1.5);
        let pos0 = 7;
        let (cos, sin) = reference::rope_tables(1e4, hd, pos0 + n);
        let cut = |off: usize, w: usize| -> Vec<f32> {
            (0..n)
                .flat_map(|t| rows_in[t * x_stride + off..t * x_stride + off + w].to_vec())
                .collect()
        };
        let (q, k, v) = (cut(0, qd), cut(qd, kd), cut(qd + kd, kd));
        let clamp = |v: Vec<f32>| -> Vec<f32> {
            if clip > 0.0 {
                v.into_iter().map(|x| x.clamp(-clip, clip)).collect()
            } else {
                v
            }
        };
        let mut want_q = clamp(reference::rms_norm(&q, &wq, 1e-6));
        let mut want_k = clamp(reference::rms_norm(&k, &wk, 1e-6));
        let want_v = clamp(v.clone());
        if clip > 0.0 {
            let bound = want_q.iter().filter(|x| x.abs() == clip).count();
            assert!(bound * 10 >= want_q.len(), "the clamp binds on few values");
        }
        reference::rope(&mut want_q, n, nq, hd, hd, pos0, &cos, &sin);
        reference::rope(&mut want_k, n, nk, hd, hd, pos0, &cos, &sin);
        let out = run(
            Kernel::HeadNormRope,
            None,
            HeadNormRopeParams {
                n_tokens: n as u32,
                head_dim: hd as u32,
                rotary_half: (hd / 2) as u32,
                pos0: pos0 as u32,
                eps: 1e-6,
                x_stride: x_stride as u32,
                q_heads: nq as u32,
                k_heads: nk as u32,
                k_offset: qd as u32,
                copy_v: 1,
                v_offset: (qd + kd) as u32,
                sin_offset: cos.len() as u32,
                q_head_stride: hd as u32,
                norm: 1,
                whole: 1,
                clip,
                ..Default::default()
            }
            .words(),
            &[
                &f32_bytes(&rows_in),
                &f32_bytes(&wq),
                &f32_bytes(&wk),
                &f32_bytes(&[cos.clone(), sin.clone()].concat()),
                &f32_bytes(&vec![0.0; n * qd]),
                &f32_bytes(&vec![0.0; n * kd]),
                &f32_bytes(&rows_in),
                &f32_bytes(&vec![0.0; n * kd]),
            ],
            ((nq + nk) as u32, n as u32),
        );
        let case = format!("n {n} q heads {nq} k heads {nk} head_dim {hd} clip {clip}");
        ck.close(
            &format!("{case} q"),
            &to_f32(&out[4]),
            &want_q,
            REDUCTION.floor(1.0),
        );
        ck.close(
            &format!("{case} k"),
            &to_f32(&out[5]),
            &want_k,
            REDUCTION.floor(1.0),
        );
        ck.close(&format!("{case} v"), &to_f32(&out[7]), &want_v, EXACT);
    }
    ck.report();
}

#[test]
fn head_norm_rope() {
    // Per-head RMSNorm (as rmsnorm.wgsl) then RoPE of the query heads (weights wq, to
    // outq) and the key heads (weights wk, to outk at k_out) in one dispatch; with copy_v
    // the key heads' values are copied to v_dst at the keys' index.
    let mut ck = Checker::new("head_norm_rope");
    let mut rng = Rng::new(50);
    let theta = 1e6;
    let eps = 1e-6f32;
    // (n_tokens, q heads, k heads, head_dim, rotary_dim, pos0, k_out in key-head rows, copy_v)
    type Case = (usize, usize, usize, usize, usize, usize, usize, bool);
    let cases: [Case; 9] = [
        (1, 1, 1, 16, 16, 0, 0, false),
        (3, 2, 1, 24, 16, 7, 0, true), // partial rotary: 8 normed, unrotated dims
        (1, 4, 2, 64, 64, 149, 149, true), // decode: k and v written into a cache at 149
        (17, 3, 0, 128, 128, 0, 0, false), // prefill, query heads only
        (5, 0, 2, 256, 256, 1000, 0, true), // key heads only, head_dim 256
        (2, 3, 3, 16, 6, 33, 3, true), // odd half (3), keys after 3 rows of 16
        (40, 1, 1, 64, 32, 100, 100, false), // prefill into a cache at position 100
        (3, 8, 4, 128, 64, 4095, 0, false), // a long-context position
        (2, 2, 2, 96, 96, 5, 1, true), // head_dim 96: 64 + 32 dims per invocation loop
    ];
    for (ci, &(n, nq, nk, hd, rd, pos0, k_rows, copy_v)) in cases.iter().enumerate() {
        let (qd, kd) = (nq * hd, nk * hd);
        let k_out = k_rows * kd;
        // The heads inside wider rows, as from a fused q/k/v projection (odd cases with
        // junk between and around them).
        let gap = if ci % 2 == 1 { 3 } else { 0 };
        // Every third case has gated-attention rows: q_proj yields [q | gate] per head, so
        // query heads are 2 head_dim apart (Qwen3.5, Qwen3-Next).
        let q_head_stride = if ci % 3 == 2 { 2 * hd } else { hd };
        let q_span = nq * q_head_stride;
        let (q_offset, k_offset, v_offset) =
            (gap, gap + q_span + gap, gap + q_span + gap + kd + gap);
        let x_stride = v_offset + kd + gap;
        let case = format!(
            "n {n} q heads {nq} k heads {nk} head_dim {hd} rotary {rd} pos0 {pos0} k_out {k_out} copy_v {copy_v} x_stride {x_stride} q_head_stride {q_head_stride} norm {}",
            ci % 4 != 3
        );
        let (cos, sin) = reference::rope_tables(theta, rd, pos0 + n);
        let q = rng.vec(n * qd, 2.0);
        let k = rng.vec(n * kd, 2.0);
        let v = rng.vec(n * kd, 3.0);
        let wq = rng.vec(hd, 1.5);
        let wk = rng.vec(hd, 1.5);
        let mut rows_in = rng.vec(n * x_stride + 8, 9.0);
        for t in 0..n {
            let r = &mut rows_in[t * x_stride..];
            for hq in 0..nq {
                let at = q_offset + hq * q_head_stride;
                r[at..at + hd].copy_from_slice(&q[t * qd + hq * hd..t * qd + (hq + 1) * hd]);
            }
            r[k_offset..k_offset + kd].copy_from_slice(&k[t * kd..(t + 1) * kd]);
            r[v_offset..v_offset + kd].copy_from_slice(&v[t * kd..(t + 1) * kd]);
        }
        // Every fourth case without the norm (attention without q/k norms, gpt-oss): the
        // heads are rotated as they are.
        let norm = ci % 4 != 3;
        // Reference: rms_norm of every head row with its weights, then RoPE.
        let normed = |x: &[f32], w: &[f32], heads: usize| -> (Vec<f32>, Vec<f32>) {
            if heads == 0 {
                return (Vec::new(), Vec::new());
            }
            let normed = if norm {
                reference::rms_norm(x, w, eps)
            } else {
                x.to_vec()
            };
            let mut roped = normed.clone();
            reference::rope(&mut roped, n, heads, hd, rd, pos0, &cos, &sin);
            (roped, normed)
        };
        let (want_q, normed_q) = normed(&q, &wq, nq);
        let (want_k, normed_k) = normed(&k, &wk, nk);
        let q_before = rng.vec(n * qd + 7, 1.0);
        let k_before = rng.vec(k_out + n * kd + 7, 1.0);
        let v_before = rng.vec(k_out + n * kd + 7, 1.0);
        let mut q_written = vec![false; q_before.len()];
        q_written[..n * qd].fill(true);
        let mut k_written = vec![false; k_before.len()];
        k_written[k_out..k_out + n * kd].fill(true);
        // The kernel with the KV cache's dtype (None: f32) and its buffers' bytes before.
        let run_with = |kv: Option<DType>, k_before: &[u8], v_before: &[u8]| {
            run(
                Kernel::HeadNormRope,
                kv,
                HeadNormRopeParams {
                    n_tokens: n as u32,
                    head_dim: hd as u32,
                    rotary_half: (rd / 2) as u32,
                    pos0: pos0 as u32,
                    eps,
                    x_stride: x_stride as u32,
                    q_heads: nq as u32,
                    q_offset: q_offset as u32,
                    k_heads: nk as u32,
                    k_offset: k_offset as u32,
                    k_out: k_out as u32,
                    copy_v: u32::from(copy_v),
                    v_offset: v_offset as u32,
                    sin_offset: cos.len() as u32,
                    q_head_stride: q_head_stride as u32,
                    norm: u32::from(norm),
                    ..Default::default()
                }
                .words(),
                &[
                    &f32_bytes(&rows_in),
                    &f32_bytes(&wq),
                    &f32_bytes(&wk),
                    &f32_bytes(&[cos.clone(), sin.clone()].concat()),
                    &f32_bytes(&q_before),
                    k_before,
                    &f32_bytes(&rows_in),
                    v_before,
                ],
                ((nq + nk) as u32, n as u32),
            )
        };
        let out = run_with(None, &f32_bytes(&k_before), &f32_bytes(&v_before));
        // The dims past rotary_dim are the normed values.
        let tail = |v: &[f32]| -> Vec<f32> {
            v.chunks_exact(hd)
                .flat_map(|head| head[rd..].to_vec())
                .collect()
        };
        for (what, got, before, written, want, normed) in [
            (
                "q",
                to_f32(&out[4]),
                &q_before,
                &q_written,
                &want_q,
                &normed_q,
            ),
            (
                "k",
                to_f32(&out[5]),
                &k_before,
                &k_written,
                &want_k,
                &normed_k,
            ),
        ] {
            let case = format!("{case} {what}");
            ck.untouched(&case, &got, before, written);
            let got = pick(&got, written);
            // y1 c - y2 s can cancel: judged against the typical size of a normed value (~w).
            ck.close(&case, &got, want, REDUCTION.floor(1.0));
            if rd < hd {
                ck.close(
                    &format!("{case} tail"),
                    &tail(&got),
                    &tail(normed),
                    REDUCTION.floor(1.0),
                );
            }
        }
        let got_v = to_f32(&out[7]);
        if copy_v {
            ck.untouched(&format!("{case} v"), &got_v, &v_before, &k_written);
            ck.close(&format!("{case} v"), &pick(&got_v, &k_written), &v, EXACT);
        } else {
            ck.close(&format!("{case} v untouched"), &got_v, &v_before, EXACT);
        }
        if kv_f16() && nk > 0 {
            // The same with an f16 KV cache: keys and values rounded to nearest even (the
            // keys within one f16 step of the reference, which the f32 results may cross).
            let (kb16, vb16) = (round_f16(&k_before), round_f16(&v_before));
            let out = run_with(Some(DType::F16), &f16_bytes(&kb16), &f16_bytes(&vb16));
            let case = format!("{case} f16 cache");
            if nq > 0 {
                ck.close(
                    &format!("{case} q"),
                    &pick(&to_f32(&out[4]), &q_written),
                    &want_q,
                    REDUCTION.floor(1.0),
                );
            }
            let got_k = from_f16_bytes(&out[5]);
            ck.untouched(&format!("{case} k"), &got_k, &kb16, &k_written);
            let f16_step = Tol {
                nmse: 1e-7,
                max_rel: 1.0 / 1024.0,
                floor: 0.0,
            };
            ck.close(
                &format!("{case} k"),
                &pick(&got_k, &k_written),
                &want_k,
                f16_step.floor(1.0),
            );
            let got_v = from_f16_bytes(&out[7]);
            if copy_v {
                ck.untouched(&format!("{case} v"), &got_v, &vb16, &k_written);
                ck.close(
                    &format!("{case} v"),
                    &pick(&got_v, &k_written),
                    &round_f16(&v),
                    EXACT,
                );
            } else {
                ck.close(&format!("{case} v untouched"), &got_v, &vb16, EXACT);
            }
        }
    }
    ck.report();
}

// ---------------------------------------------------------------------------------------
// Attention.

#[test]
fn attention() {
    let mut ck = Checker::new("attention");
    let mut rng = Rng::new(60);
    // (n_tokens, pos0, n_heads, n_kv_heads, head_dim)
    let cases: [(usize, usize, usize, usize, usize); 14] = [
        (1, 0, 1, 1, 16),     // one key
        (1, 149, 4, 4, 64),   // decode over 150 keys (3 key blocks), GQA 1
        (1, 63, 4, 2, 128),   // exactly one block of 64 keys, GQA 2
        (1, 64, 6, 2, 24),    // 65 keys, GQA 3
        (1, 127, 3, 1, 256),  // 128 keys, one kv head, head_dim 256
        (3, 40, 6, 2, 256),   // short prefill over a cache, GQA 3
        (17, 0, 2, 1, 64),    // prefill from empty, causal, one kv head
        (40, 0, 4, 2, 16),    // 40-token prefill
        (40, 110, 3, 1, 128), // prefill over a cache, keys 111..=150 across blocks
        (5, 60, 8, 8, 24),    // queries straddling the 64-key block boundary
        (2, 126, 4, 2, 256),  // 127 and 128 keys
        (16, 50, 6, 3, 64),   // GQA 2, 51..=66 keys
        (150, 0, 2, 1, 128),  // 10 blocks of 16 queries, the last one of 6
        (70, 200, 4, 4, 32),  // query blocks over a cache, keys across 5 key blocks
    ];
    for &(n, pos0, nh, nkv, hd) in &cases {
        let case = format!("tokens {n} pos0 {pos0} heads {nh}/{nkv} head_dim {hd}");
        let n_keys = pos0 + n;
        // The cache holds 9 positions past the last one: keys of 40 that would dominate a
        // softmax reaching them, values of NaN that poison any read of them, even one with
        // a zero weight (the cache past the current position holds anything).
        let cap = n_keys + 9;
        let row = nkv * hd;
        // Scores have a standard deviation of about 2: a peaked but not one-hot softmax.
        let q = rng.vec(n * nh * hd, 6.0);
        let mut k = rng.vec(cap * row, 1.0);
        let mut v = rng.vec(cap * row, 1.0);
        k[n_keys * row..].fill(40.0);
        v[n_keys * row..].fill(f32::NAN);
        // The reference's scale (head_dim^-0.5 rounded from f64); the engine computes it in
        // f32, possibly an ulp away: that is the caller's choice, not the kernel's.
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        // One workgroup per (head, query), and 16 queries per workgroup (heads of a multiple
        // of 4 values, as all of these); the tiled kernel again over an f16 cache (heads of
        // a multiple of 8 values), against the reference on the rounded keys and values.
        let tiled = attention_tiled_groups(nh as u32, n as u32);
        // gpt-oss's variants: a sliding window of about a third of the keys (at least 1;
        // keys before it filled to dominate any score reading them) and sinks, one per
        // head, some far above the scores.
        let window = (n_keys / 3).max(1);
        let sinks: Vec<f32> = (0..nh)
            .map(|h| if h % 3 == 2 { 15.0 } else { 3.0 * rng.f32() })
            .collect();
        let mut k_windowed = k.clone();
        k_windowed[..(pos0 + 1).saturating_sub(window) * row].fill(40.0);
        for (kernel, groups, f16) in [
            (Kernel::Attention, (nh as u32, n as u32), false),
            (Kernel::AttentionTiled, tiled, false),
            (Kernel::AttentionTiled, tiled, true),
        ] {
            if f16 && !(kv_f16() && hd % 8 == 0) {
                continue;
            }
            for (w, with_sinks) in [(None, false), (Some(window), true), (Some(window), false)] {
                let keys = if w.is_some() { &k_windowed } else { &k };
                let (k_bytes, v_bytes, want) = cache_case_with(
                    f16,
                    &q,
                    keys,
                    &v,
                    (n, pos0, nh, nkv, hd),
                    with_sinks.then_some(&sinks[..]),
                    w,
                );
                let before = rng.vec(n * nh * hd, 1.0);
                let out = run(
                    kernel,
                    f16.then_some(DType::F16),
                    AttentionParams {
                        n_tokens: n as u32,
                        pos0: pos0 as u32,
                        n_heads: nh as u32,
                        n_kv_heads: nkv as u32,
                        head_dim: hd as u32,
                        scale,
                        window: w.map_or(0, |w| w as u32),
                        sinks: u32::from(with_sinks),
                    }
                    .words(),
                    &[
                        &f32_bytes(&q),
                        &k_bytes,
                        &v_bytes,
                        &f32_bytes(&before),
                        &f32_bytes(&sinks),
                    ],
                    groups,
                );
                // Outputs are convex combinations of values in [-1, 1], typically dominated
                // by a few keys; an average over many keys can be small: judged against 0.1.
                let f16_case = if f16 { " f16 cache" } else { "" };
                let case = format!(
                    "{}{f16_case} {case} window {w:?} sinks {with_sinks}",
                    kernel.name()
                );
                ck.close(&case, &to_f32(&out[3]), &want, REDUCTION.floor(0.1));
            }
        }
    }
    ck.report();
}

#[test]
fn attention_split_ranges_cover_every_key() {
    use moestream::gpu::kernels::{attention_part_floats, attention_splits, ATTENTION_MAX_SPLITS};
    for n_heads in [1u32, 2, 3, 4, 32, 64, 100, 600] {
        for n_keys in [1u32, 2, 15, 16, 17, 150, 1000, 4096, 100_000, 1 << 22] {
            let (chunk, splits) = attention_splits(n_keys, n_heads);
            assert!(
                chunk >= 16 && chunk % 16 == 0,
                "{n_keys} keys, {n_heads} heads"
            );
            assert!((1..=ATTENTION_MAX_SPLITS).contains(&splits));
            // Every key in exactly one range, no empty range.
            assert!(chunk * splits >= n_keys && chunk * (splits - 1) < n_keys);
            assert!(
                u64::from(n_heads) * u64::from(splits) * 130 <= attention_part_floats(n_heads, 128)
            );
        }
    }
}

/// Decode attention as the engine runs it for one query: `attention_split` over the key
/// ranges of `attention_splits`, then `attention_merge`, against the same reference.
#[test]
fn attention_split_and_merge() {
    use moestream::gpu::kernels::{
        attention_merge_groups, attention_part_floats, attention_splits,
    };
    let mut ck = Checker::new("attention_split + attention_merge");
    let mut rng = Rng::new(61);
    // (pos0, n_heads, n_kv_heads, head_dim)
    let cases: [(usize, usize, usize, usize); 10] = [
        (0, 1, 1, 16),      // one key
        (15, 2, 1, 4),      // 16 keys: one full step; head_dim 4
        (16, 4, 2, 24),     // 17 keys: a one-key step; 6 vec4s (64 invocations don't divide)
        (149, 4, 4, 64),    // 150 keys over many ranges
        (63, 4, 2, 128),    // GQA 2
        (64, 6, 2, 8),      // GQA 3, head_dim 8
        (127, 3, 1, 256),   // one kv head, head_dim 256
        (1000, 1, 1, 128),  // one head: 256 ranges of 16 keys
        (4100, 32, 4, 128), // Qwen3-30B-A3B's heads over a long context
        (300, 5, 5, 12),    // head_dim 12: 3 vec4s
    ];
    for &(pos0, nh, nkv, hd) in &cases {
        let case = format!("pos0 {pos0} heads {nh}/{nkv} head_dim {hd}");
        let n_keys = pos0 + 1;
        let cap = n_keys + 9;
        let row = nkv * hd;
        let q = rng.vec(nh * hd, 6.0);
        let mut k = rng.vec(cap * row, 1.0);
        let mut v = rng.vec(cap * row, 1.0);
        // Past the current position: keys that would dominate, values that poison.
        k[n_keys * row..].fill(40.0);
        v[n_keys * row..].fill(f32::NAN);
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        // An f32 cache, then (where the kernels offer it) an f16 one, against the reference
        // on the rounded keys and values.
        for f16 in [false, true] {
            if f16 && !kv_f16() {
                continue;
            }
            let (k_bytes, v_bytes, want) = cache_case(f16, &q, &k, &v, (1, pos0, nh, nkv, hd));
            let case = format!("{case}{}", if f16 { " f16 cache" } else { "" });
            let (chunk, splits) = attention_splits(n_keys as u32, nh as u32);
            let part = vec![f32::NAN; attention_part_floats(nh as u32, hd as u32) as usize];
            let out = run(
                Kernel::AttentionSplit,
                f16.then_some(DType::F16),
                AttentionSplitParams {
                    pos0: pos0 as u32,
                    n_heads: nh as u32,
                    n_kv_heads: nkv as u32,
                    head_dim: hd as u32,
                    scale,
                    chunk,
                    n_splits: splits,
                    ..Default::default()
                }
                .words(),
                &[&f32_bytes(&q), &k_bytes, &v_bytes, &f32_bytes(&part)],
                (nh as u32, splits),
            );
            for (il, gated) in [(false, false), (true, false), (false, true), (true, true)] {
                if il && (nh * hd) % 32 != 0 {
                    continue;
                }
                let before = rng.vec(nh * hd, 1.0);
                // Gated attention's output gate: per head `[q | gate]` rows (3 junk values
                // first), the merge multiplying by its sigmoid.
                let (g_offset, g_head_stride) = (3 + hd, 2 * hd);
                let gate = rng.vec(3 + nh * 2 * hd, 4.0);
                let want: Vec<f32> = if gated {
                    want.iter()
                        .enumerate()
                        .map(|(j, &w)| {
                            let g = gate[g_offset + (j / hd) * g_head_stride + j % hd];
                            w * (1.0 / (1.0 + (-g).exp()))
                        })
                        .collect()
                } else {
                    want.clone()
                };
                let merged = run(
                    Kernel::AttentionMerge,
                    None,
                    AttentionMergeParams {
                        n_heads: nh as u32,
                        head_dim: hd as u32,
                        n_splits: splits,
                        flags: if il {
                            AttentionMergeParams::INTERLEAVED
                        } else {
                            0
                        } | if gated {
                            AttentionMergeParams::GATED
                        } else {
                            0
                        },
                        g_offset: g_offset as u32,
                        g_head_stride: g_head_stride as u32,
                        ..Default::default()
                    }
                    .words(),
                    &[
                        &out[3],
                        &f32_bytes(&before),
                        &f32_bytes(&gate),
                        &f32_bytes(&gate),
                    ],
                    attention_merge_groups(nh as u32, hd as u32),
                );
                let mut got = to_f32(&merged[1]);
                if il {
                    got = deinterleave(&got, nh * hd);
                }
                let case = format!("{case} interleaved {il} gated {gated}");
                ck.close(&case, &got, &want, REDUCTION.floor(0.1));
            }
        }
    }
    ck.report();
}

/// gpt-oss's decode attention: a sliding window (`key0`: the split ranges cover only the
/// last `window` keys) and attention sinks (the merge counts each head's sink logit in the
/// maximum and the denominator), against `reference::attention_with`.
#[test]
fn attention_split_and_merge_window_and_sinks() {
    use moestream::gpu::kernels::{
        attention_merge_groups, attention_part_floats, attention_splits,
    };
    let mut ck = Checker::new("attention_split + merge, window and sinks");
    let mut rng = Rng::new(62);
    // (pos0, heads, kv heads, head_dim, window, sinks)
    let cases: [(usize, usize, usize, usize, Option<usize>, bool); 7] = [
        (0, 2, 1, 16, Some(4), true),     // one key, window past it
        (10, 4, 2, 64, Some(4), false),   // window only
        (10, 4, 2, 64, None, true),       // sinks only
        (200, 8, 2, 64, Some(128), true), // gpt-oss's window over many ranges
        (127, 8, 2, 64, Some(128), true), // the window exactly full
        (128, 8, 2, 64, Some(128), true), // the first key just left it
        (50, 3, 3, 32, Some(7), true),
    ];
    for &(pos0, nh, nkv, hd, window, with_sinks) in &cases {
        let case = format!(
            "pos0 {pos0} heads {nh}/{nkv} head_dim {hd} window {window:?} sinks {with_sinks}"
        );
        let n_keys = pos0 + 1;
        let row = nkv * hd;
        let q = rng.vec(nh * hd, 3.0);
        let k = rng.vec(n_keys * row, 1.0);
        let v = rng.vec(n_keys * row, 1.0);
        // Sinks around the scores' size, some far above (their exp dominates).
        let sinks: Vec<f32> = (0..nh)
            .map(|h| if h % 3 == 2 { 12.0 } else { 2.0 * rng.f32() })
            .collect();
        let want = reference::attention_with(
            &q,
            &k,
            &v,
            (1, pos0),
            (nh, nkv, hd),
            with_sinks.then_some(&sinks[..]),
            window,
        );
        let key0 = window.map_or(0, |w| n_keys.saturating_sub(w));
        let (chunk, splits) = attention_splits((n_keys - key0) as u32, nh as u32);
        let part = vec![f32::NAN; attention_part_floats(nh as u32, hd as u32) as usize];
        // Keys before the window would dominate every score if read.
        let mut k_in = k.clone();
        k_in[..key0 * row].fill(40.0);
        let out = run(
            Kernel::AttentionSplit,
            None,
            AttentionSplitParams {
                pos0: pos0 as u32,
                n_heads: nh as u32,
                n_kv_heads: nkv as u32,
                head_dim: hd as u32,
                scale: (1.0 / (hd as f64).sqrt()) as f32,
                chunk,
                n_splits: splits,
                key0: key0 as u32,
            }
            .words(),
            &[
                &f32_bytes(&q),
                &f32_bytes(&k_in),
                &f32_bytes(&v),
                &f32_bytes(&part),
            ],
            (nh as u32, splits),
        );
        let before = rng.vec(nh * hd, 1.0);
        let merged = run(
            Kernel::AttentionMerge,
            None,
            AttentionMergeParams {
                n_heads: nh as u32,
                head_dim: hd as u32,
                n_splits: splits,
                flags: if with_sinks {
                    AttentionMergeParams::SINKS
                } else {
                    0
                },
                ..Default::default()
            }
            .words(),
            &[
                &out[3],
                &f32_bytes(&before),
                &f32_bytes(&q),
                &f32_bytes(&sinks),
            ],
            attention_merge_groups(nh as u32, hd as u32),
        );
        ck.close(&case, &to_f32(&merged[1]), &want, REDUCTION.floor(0.1));
    }
    ck.report();
}

// ---------------------------------------------------------------------------------------
// Router.

/// Logits without near-ties: a shuffled ladder over [-4, 4] with steps of 8 / n_experts,
/// each rung jittered by at most a fifth of a step. Any two logits are at least 0.6 step
/// apart (0.005 for 1024 experts): their probabilities differ by 0.5% or more, far beyond
/// any exp rounding, so the ranking cannot depend on it.
fn ladder_logits(rng: &mut Rng, n_tokens: usize, n_experts: usize) -> Vec<f32> {
    let step = 8.0 / n_experts as f32;
    let mut out = Vec::with_capacity(n_tokens * n_experts);
    for _ in 0..n_tokens {
        let mut rank: Vec<usize> = (0..n_experts).collect();
        rng.shuffle(&mut rank);
        out.extend(
            rank.iter()
                .map(|&r| -4.0 + step * (r as f32 + 0.2 * rng.f32())),
        );
    }
    out
}

fn check_router(
    ck: &mut Checker,
    case: &str,
    logits: &[f32],
    n_experts: usize,
    top_k: usize,
    norm: bool,
    groups: (u32, u32),
) {
    let n_tokens = logits.len() / n_experts;
    let (want_ids, want_w) = reference::router_topk(logits, n_experts, top_k, norm);
    // Odd cases read rows one longer than n_experts (the shared expert's gate logit after
    // the experts', Qwen3.5), holding a value that would win every top-k if read.
    let stride = n_experts + (n_tokens + top_k) % 2;
    let rows: Vec<f32> = logits
        .chunks_exact(n_experts)
        .flat_map(|r| {
            r.iter()
                .copied()
                .chain(std::iter::repeat_n(1e30, stride - n_experts))
        })
        .collect();
    let logits = &rows[..];
    // Sentinels: the kernel must write every id and weight of the n_tokens tokens, and
    // nothing past them (one more token's worth).
    let len = n_tokens * top_k;
    let ids0 = vec![u32::MAX - 1; len + top_k];
    let w0 = vec![-7.0f32; len + top_k];
    let out = run(
        Kernel::Router,
        None,
        RouterParams {
            n_experts: n_experts as u32,
            top_k: top_k as u32,
            routing: u32::from(norm),
            n_tokens: n_tokens as u32,
            logit_stride: stride as u32,
            ..Default::default()
        }
        .words(),
        &[&f32_bytes(logits), &u32_bytes(&ids0), &f32_bytes(&w0), &[]],
        groups,
    );
    let (ids, w) = (to_u32(&out[1]), to_f32(&out[2]));
    assert_eq!(
        ids[..len],
        want_ids[..],
        "router [{case}]: expert ids (rank order per token)"
    );
    let mut written = vec![true; len + top_k];
    written[len..].fill(false);
    ck.untouched(case, &w, &w0, &written);
    assert_eq!(
        ids[len..],
        ids0[len..],
        "router [{case}]: ids past the last token"
    );
    ck.close(case, &w[..len], &want_w, ROUTER_WEIGHTS);
}

#[test]
fn router() {
    let mut ck = Checker::new("router");
    let mut rng = Rng::new(70);
    for &ne in &[5usize, 64, 128, 512, 1024] {
        for top_k in 1..=8usize.min(ne) {
            for norm in [false, true] {
                let n_tokens = 3 + (top_k % 3);
                let case = format!("experts {ne} top_k {top_k} norm {norm} tokens {n_tokens}");
                let logits = ladder_logits(&mut rng, n_tokens, ne);
                let groups = if norm {
                    grid_2d(n_tokens, 2)
                } else {
                    grid(n_tokens)
                };
                check_router(&mut ck, &case, &logits, ne, top_k, norm, groups);
            }
        }
    }
    // Many choices; more than invocations (128) for 1024: each fills several ranks.
    for &(ne, top_k) in &[(128usize, 100usize), (1024, 1024), (70, 70)] {
        let case = format!("experts {ne} top_k {top_k}");
        let logits = ladder_logits(&mut rng, 2, ne);
        check_router(&mut ck, &case, &logits, ne, top_k, true, grid(2));
    }
    ck.report();
}

/// With a shared expert in the expert cache (Qwen3.5), the router gives each token one more
/// choice: expert n_experts, weighted by the sigmoid of the logit after the experts'.
#[test]
fn router_with_shared_expert() {
    let mut ck = Checker::new("router shared expert");
    let mut rng = Rng::new(71);
    for &(ne, top_k, norm) in &[(5usize, 2usize, true), (64, 8, false), (256, 8, true)] {
        let n_tokens = 3;
        let kk = top_k + 1;
        let logits = ladder_logits(&mut rng, n_tokens, ne);
        let gates = rng.vec(n_tokens, 6.0);
        let rows: Vec<f32> = (0..n_tokens)
            .flat_map(|t| {
                let mut r = logits[t * ne..(t + 1) * ne].to_vec();
                r.push(gates[t]);
                r
            })
            .collect();
        let (routed_ids, routed_w) = reference::router_topk(&logits, ne, top_k, norm);
        let mut want_ids = Vec::new();
        let mut want_w = Vec::new();
        for t in 0..n_tokens {
            want_ids.extend_from_slice(&routed_ids[t * top_k..(t + 1) * top_k]);
            want_ids.push(ne as u32);
            want_w.extend_from_slice(&routed_w[t * top_k..(t + 1) * top_k]);
            want_w.push(1.0 / (1.0 + (-gates[t]).exp()));
        }
        let len = n_tokens * kk;
        let (ids0, w0) = (vec![u32::MAX - 1; len + 1], vec![-7.0f32; len + 1]);
        let out = run(
            Kernel::Router,
            None,
            RouterParams {
                n_experts: ne as u32,
                top_k: top_k as u32,
                routing: u32::from(norm),
                n_tokens: n_tokens as u32,
                logit_stride: (ne + 1) as u32,
                shared_expert: 1,
                ..Default::default()
            }
            .words(),
            &[&f32_bytes(&rows), &u32_bytes(&ids0), &f32_bytes(&w0), &[]],
            grid(n_tokens),
        );
        let case = format!("experts {ne} top_k {top_k} norm {norm}");
        let (ids, w) = (to_u32(&out[1]), to_f32(&out[2]));
        assert_eq!(ids[..len], want_ids[..], "router [{case}]: ids");
        assert_eq!(ids[len], ids0[len], "router [{case}]: past the last token");
        let mut written = vec![true; len + 1];
        written[len] = false;
        ck.untouched(&case, &w, &w0, &written);
        ck.close(&case, &w[..len], &want_w, ROUTER_WEIGHTS);
    }
    ck.report();
}

/// gpt-oss routing (`ROUTING_TOPK_SOFTMAX`): the top k by logit, weighted by a softmax
/// over those k, against `reference::router_topk_softmax`.
#[test]
fn router_topk_then_softmax() {
    use moestream::gpu::params::ROUTING_TOPK_SOFTMAX;
    let mut ck = Checker::new("router top-k softmax");
    let mut rng = Rng::new(72);
    for &(ne, top_k) in &[
        (4usize, 1usize),
        (6, 2),
        (32, 4),
        (128, 4),
        (1024, 8),
        (70, 70),
    ] {
        let n_tokens = 3;
        let logits = ladder_logits(&mut rng, n_tokens, ne);
        let (want_ids, want_w) = reference::router_topk_softmax(&logits, ne, top_k);
        let len = n_tokens * top_k;
        let (ids0, w0) = (vec![u32::MAX - 1; len + 1], vec![-7.0f32; len + 1]);
        let out = run(
            Kernel::Router,
            None,
            RouterParams {
                n_experts: ne as u32,
                top_k: top_k as u32,
                routing: ROUTING_TOPK_SOFTMAX,
                n_tokens: n_tokens as u32,
                logit_stride: ne as u32,
                ..Default::default()
            }
            .words(),
            &[&f32_bytes(&logits), &u32_bytes(&ids0), &f32_bytes(&w0), &[]],
            grid(n_tokens),
        );
        let case = format!("experts {ne} top_k {top_k}");
        let (ids, w) = (to_u32(&out[1]), to_f32(&out[2]));
        assert_eq!(ids[..len], want_ids[..], "router [{case}]: ids");
        let mut written = vec![true; len + 1];
        written[len] = false;
        ck.untouched(&case, &w, &w0, &written);
        ck.close(&case, &w[..len], &want_w, ROUTER_WEIGHTS);
    }
    ck.report();
}

/// GLM-4.5 / DeepSeek-V3 routing: sigmoid scores plus a correction bias (positive and
/// negative) for the choice, group limits (1, 4 and 8 groups), renormalized or not, a
/// scale, and an ungated shared expert (weight 1) as one more choice; against
/// `reference::router_sigmoid_groups`. The bias and the group limit each change the
/// choice (checked against the reference without them).
#[test]
fn router_sigmoid_groups() {
    use moestream::gpu::params::{ROUTING_SIGMOID, ROUTING_SIGMOID_NORM};
    let mut ck = Checker::new("router sigmoid");
    let mut rng = Rng::new(73);
    let (mut bias_mattered, mut groups_mattered) = (false, false);
    for &(ne, top_k, groups, topk_groups, norm, shared) in &[
        (16usize, 4usize, 1usize, 1usize, true, false),
        (32, 4, 4, 2, true, true),
        (64, 6, 8, 3, false, false),
        (256, 8, 8, 4, true, true),
        (12, 3, 4, 2, false, true),
    ] {
        let n_tokens = 4;
        let logits = ladder_logits(&mut rng, n_tokens, ne);
        let corr = rng.vec(ne, 0.5);
        let scale = 2.5;
        let (want_ids, want_w) = reference::router_sigmoid_groups(
            &logits,
            &corr,
            ne,
            top_k,
            (groups, topk_groups),
            norm,
            scale,
        );
        let plain = reference::router_sigmoid_groups(
            &logits,
            &vec![0.0; ne],
            ne,
            top_k,
            (groups, topk_groups),
            norm,
            scale,
        );
        bias_mattered |= plain.0 != want_ids;
        let ungrouped =
            reference::router_sigmoid_groups(&logits, &corr, ne, top_k, (1, 1), norm, scale);
        groups_mattered |= groups > 1 && ungrouped.0 != want_ids;
        let kk = top_k + usize::from(shared);
        let len = n_tokens * kk;
        let (ids0, w0) = (vec![u32::MAX - 1; len + 1], vec![-7.0f32; len + 1]);
        let out = run(
            Kernel::Router,
            None,
            RouterParams {
                n_experts: ne as u32,
                top_k: top_k as u32,
                routing: if norm {
                    ROUTING_SIGMOID_NORM
                } else {
                    ROUTING_SIGMOID
                },
                n_tokens: n_tokens as u32,
                logit_stride: ne as u32,
                shared_expert: if shared { 2 } else { 0 },
                groups: groups as u32,
                topk_groups: topk_groups as u32,
                scale,
                ..Default::default()
            }
            .words(),
            &[
                &f32_bytes(&logits),
                &u32_bytes(&ids0),
                &f32_bytes(&w0),
                &f32_bytes(&corr),
            ],
            grid(n_tokens),
        );
        let case = format!(
            "experts {ne} top_k {top_k} groups {topk_groups}/{groups} norm {norm} shared {shared}"
        );
        let (ids, w) = (to_u32(&out[1]), to_f32(&out[2]));
        let mut got_ids = Vec::new();
        let mut got_w = Vec::new();
        for t in 0..n_tokens {
            got_ids.extend_from_slice(&ids[t * kk..t * kk + top_k]);
            got_w.extend_from_slice(&w[t * kk..t * kk + top_k]);
            if shared {
                assert_eq!(
                    ids[t * kk + top_k],
                    ne as u32,
                    "[{case}]: the shared expert"
                );
                assert_eq!(w[t * kk + top_k], 1.0, "[{case}]: the shared weight");
            }
        }
        assert_eq!(got_ids, want_ids, "router [{case}]: ids");
        assert_eq!(ids[len], ids0[len], "router [{case}]: past the last token");
        ck.close(&case, &got_w, &want_w, ROUTER_WEIGHTS);
    }
    assert!(bias_mattered && groups_mattered);
    ck.report();
}

#[test]
fn router_exact_ties_go_to_the_lower_index() {
    // Logits on a coarse grid tie exactly; equal logits give bitwise equal probabilities on
    // both sides, and the lower expert index must rank first.
    let mut ck = Checker::new("router ties");
    let mut rng = Rng::new(71);
    // Past 128 experts the ranked experts are first cut down to those scoring at least the
    // top_k-th largest maximum of 16 runs: ties at that threshold, and more than 128 such
    // experts (4 distinct values over 512: ~128 at the top), which ranks all of them.
    for &ne in &[5usize, 64, 128, 256, 384, 512] {
        for &top_k in &[2usize, 4, 8, 16] {
            let top_k = top_k.min(ne);
            let n_tokens = 4;
            let logits: Vec<f32> = (0..n_tokens * ne)
                .map(|_| rng.below(4) as f32 * 0.5)
                .collect();
            let case = format!("ties: experts {ne} top_k {top_k}");
            check_router(&mut ck, &case, &logits, ne, top_k, true, grid(n_tokens));
        }
    }
    ck.report();
}

// ---------------------------------------------------------------------------------------
// SwiGLU.

#[test]
fn swiglu() {
    let mut ck = Checker::new("swiglu");
    let mut rng = Rng::new(80);
    for &n in &[1usize, 63, 64, 65, 130, 1000, 4097] {
        for two_d in [false, true] {
            let case = format!("n {n} 2d {two_d}");
            // Gates over [-30, 30]: both tails of silu, exp(30) = 1e13 still finite.
            let gate = rng.vec(n, 30.0);
            let up = rng.vec(n, 2.0);
            let before = rng.vec(n + 3, 1.0);
            let want = reference::swiglu(&gate, &up);
            let groups = n.div_ceil(64);
            let groups = if two_d {
                grid_2d(groups, 3)
            } else {
                grid(groups)
            };
            let out = run(
                Kernel::SwiGlu,
                None,
                SwiGluParams {
                    n: n as u32,
                    ..Default::default()
                }
                .words(),
                &[&f32_bytes(&gate), &f32_bytes(&up), &f32_bytes(&before)],
                groups,
            );
            let got = to_f32(&out[2]);
            let mut written = vec![false; n + 3];
            written[..n].fill(true);
            ck.untouched(&case, &got, &before, &written);
            // |out| <= 60: a few ulp of 60 is 2e-5.
            // Outputs are O(1) or larger except where g << 0 (see ELEMENTWISE).
            ck.close(&case, &got[..n], &want, ELEMENTWISE.floor(1.0));
        }
    }
    ck.report();
}

#[test]
fn sigmoid_gate() {
    // x *= sigmoid(gate) in place, the gates inside rows of a fused projection, per head
    // 2 head_dim apart (q_proj's [q | gate] per head), as the attention block dispatches it.
    let mut ck = Checker::new("sigmoid_gate");
    let mut rng = Rng::new(81);
    // (tokens, heads, head_dim, junk around the gates)
    for &(n, heads, hd, gap) in &[
        (1usize, 1usize, 8usize, 0usize),
        (3, 2, 16, 3),
        (70, 4, 32, 5),
        (2, 16, 256, 1),
    ] {
        let case = format!("n {n} heads {heads} head_dim {hd} gap {gap}");
        let width = heads * hd;
        let g_head_stride = 2 * hd;
        let g_offset = gap + hd;
        let g_stride = gap + heads * g_head_stride + 7;
        let g = rng.vec(n * g_stride, 30.0);
        let x = rng.vec(n * width + 5, 2.0);
        let mut want = x.clone();
        for t in 0..n {
            for i in 0..width {
                let gi = t * g_stride + g_offset + (i / hd) * g_head_stride + i % hd;
                want[t * width + i] *= 1.0 / (1.0 + (-g[gi]).exp());
            }
        }
        let p = SigmoidGateParams {
            n: n as u32,
            width: width as u32,
            head_dim: hd as u32,
            g_stride: g_stride as u32,
            g_offset: g_offset as u32,
            g_head_stride: g_head_stride as u32,
            ..Default::default()
        };
        let out = run(
            Kernel::SigmoidGate,
            None,
            p.words(),
            &[&f32_bytes(&g), &f32_bytes(&x)],
            grid((n * width).div_ceil(64)),
        );
        let got = to_f32(&out[1]);
        let mut written = vec![false; x.len()];
        written[..n * width].fill(true);
        ck.untouched(&case, &got, &x, &written);
        ck.close(
            &case,
            &got[..n * width],
            &want[..n * width],
            ELEMENTWISE.floor(1.0),
        );
    }
    ck.report();
}

#[test]
fn shared_swiglu() {
    // silu(gate) * up * sigmoid(sg[t]), gate and up inside rows of a fused [gate | up]
    // projection (or two buffers), the gate logits at a stride.
    let mut ck = Checker::new("shared_swiglu");
    let mut rng = Rng::new(82);
    // (tokens, inter, fused)
    for &(n, inter, fused) in &[
        (1usize, 1usize, true),
        (3, 40, true),
        (70, 64, false),
        (5, 1000, true),
    ] {
        let case = format!("n {n} inter {inter} fused {fused}");
        let (gs, go, us, uo) = if fused {
            (2 * inter + 3, 1, 2 * inter + 3, inter + 1)
        } else {
            (inter, 0, inter + 2, 2)
        };
        let g = rng.vec(n * gs + 8, 30.0);
        let u = rng.vec(n * us + 8, 2.0);
        let sg = rng.vec(2 * n + 1, 30.0);
        let out0 = rng.vec(n * inter + 3, 2.0);
        let mut want = Vec::with_capacity(n * inter);
        for t in 0..n {
            let gate = 1.0 / (1.0 + (-sg[2 * t + 1]).exp());
            for i in 0..inter {
                let gv = g[t * gs + go + i];
                want.push(reference::silu(gv) * u[t * us + uo + i] * gate);
            }
        }
        let p = SharedSwiGluParams {
            n: n as u32,
            inter: inter as u32,
            g_stride: gs as u32,
            g_offset: go as u32,
            u_stride: us as u32,
            u_offset: uo as u32,
            s_stride: 2,
            s_offset: 1,
        };
        let out = run(
            Kernel::SharedSwiGlu,
            None,
            p.words(),
            &[
                &f32_bytes(&g),
                &f32_bytes(&u),
                &f32_bytes(&sg),
                &f32_bytes(&out0),
            ],
            grid((n * inter).div_ceil(64)),
        );
        let got = to_f32(&out[3]);
        let mut written = vec![false; out0.len()];
        written[..n * inter].fill(true);
        ck.untouched(&case, &got, &out0, &written);
        // Outputs are O(1) or larger except where g << 0 (as swiglu).
        ck.close(&case, &got[..n * inter], &want, ELEMENTWISE.floor(1.0));
    }
    ck.report();
}

// ---------------------------------------------------------------------------------------
// MoE: experts in cache slots.

/// A cache page of `n_slots` experts laid out as the engine does (`src/cache.rs`): each
/// expert blob in the `ExpertLayout::swiglu` layout, the slot stride its size rounded up to
/// 256 bytes. Padding bytes (between tensors and slots) are 0xFF, a NaN in every dtype, so
/// a read outside a tensor poisons the output.
struct Page {
    bytes: Vec<u8>,
    slot_elems: u32,
    offs: [u32; 3],
    /// Decoded (gate, up, down) of each slot.
    experts: Vec<[Vec<f32>; 3]>,
}

fn page(rng: &mut Rng, dtype: DType, hidden: usize, inter: usize, n_slots: usize) -> Page {
    let lay = ExpertLayout::swiglu(dtype, hidden, inter);
    let slot_bytes = lay.bytes.div_ceil(256) * 256;
    let esize = dtype.size();
    let mut bytes = vec![0xFFu8; n_slots * slot_bytes];
    let mut experts = Vec::with_capacity(n_slots);
    for s in 0..n_slots {
        let mut tensors: [Vec<f32>; 3] = Default::default();
        for (i, t) in lay.tensors.iter().enumerate() {
            let (b, v) = weights(rng, dtype, t.rows * t.cols);
            let at = s * slot_bytes + t.offset;
            bytes[at..at + b.len()].copy_from_slice(&b);
            tensors[i] = v;
        }
        experts.push(tensors);
    }
    Page {
        bytes,
        slot_elems: (slot_bytes / esize) as u32,
        offs: [0, 1, 2].map(|i| (lay.tensors[i].offset / esize) as u32),
        experts,
    }
}

/// Expert sizes (hidden, inter): odd sizes take the unpaired 16-bit path, even ones the
/// paired path.
const MOE_SIZES: [(usize, usize); 9] = [
    (1, 1),
    (3, 5),
    (17, 9),
    (64, 24),
    (65, 33),
    (130, 7),
    (257, 3),
    (96, 130),
    (512, 384), // the shape of a small real model's experts
];

/// Random assignments (token, slot) over `n_tokens` tokens and slots 1..n_slots (slot 0
/// is loaded but unused); with more assignments than tokens and slots, some share both.
fn assignments(
    rng: &mut Rng,
    n_tokens: usize,
    n_slots: usize,
    n_assign: usize,
) -> Vec<(usize, usize)> {
    (0..n_assign)
        .map(|_| (rng.below(n_tokens), 1 + rng.below(n_slots - 1)))
        .collect()
}

#[test]
fn moe_gate_up() {
    let mut ck = Checker::new("moe_gate_up");
    let mut rng = Rng::new(90);
    for dtype in DTYPES {
        for &(hidden, inter) in &MOE_SIZES {
            let (n_tokens, n_slots, n_assign) = (3, 4, 7);
            let pg = page(&mut rng, dtype, hidden, inter, n_slots);
            let asg = assignments(&mut rng, n_tokens, n_slots, n_assign);
            let pairs = assignment_words(&asg);
            let x = rng.vec(n_tokens * hidden, 1.0);
            for &(base, count) in &[(0usize, n_assign), (2, 4)] {
                let case = format!("{dtype} hidden {hidden} inter {inter} assign {base}+{count}");
                let before = rng.vec(n_assign * inter, 1.0);
                let mut want = Vec::new();
                let mut written = vec![false; before.len()];
                for (a, &(t, s)) in asg.iter().enumerate().skip(base).take(count) {
                    let xt = &x[t * hidden..(t + 1) * hidden];
                    let [g, u, _] = &pg.experts[s];
                    let g = reference::matmul(g, inter, hidden, xt, 1);
                    let u = reference::matmul(u, inter, hidden, xt, 1);
                    want.extend(reference::swiglu(&g, &u));
                    written[a * inter..(a + 1) * inter].fill(true);
                }
                let out = run(
                    Kernel::MoeGateUp,
                    Some(dtype),
                    MoeGateUpParams {
                        hidden: hidden as u32,
                        inter: inter as u32,
                        assign_base: base as u32,
                        n_assign: count as u32,
                        gate_off: pg.offs[0],
                        up_off: pg.offs[1],
                        slot_elems: pg.slot_elems,
                        ..Default::default()
                    }
                    .words(),
                    &[
                        &pg.bytes,
                        &f32_bytes(&x),
                        &u32_bytes(&pairs),
                        &f32_bytes(&before),
                    ],
                    (inter as u32, count as u32),
                );
                let got = to_f32(&out[3]);
                ck.untouched(&case, &got, &before, &written);
                // silu(g) * u with |g|, |u| ~ sqrt(hidden) / 3 <= 6: outputs up to ~30.
                ck.close(
                    &case,
                    &pick(&got, &written),
                    &want,
                    REDUCTION.floor(dot_scale(hidden, 1.0, 1.0).powi(2) / 2.0),
                );
            }
        }
    }
    ck.report();
}

#[test]
fn moe_down() {
    let mut ck = Checker::new("moe_down");
    let mut rng = Rng::new(100);
    for dtype in DTYPES {
        for &(hidden, inter) in &MOE_SIZES {
            let (n_slots, n_assign) = (4, 7);
            let pg = page(&mut rng, dtype, hidden, inter, n_slots);
            // The token of an assignment is not read by the down projection.
            let asg = assignments(&mut rng, 2, n_slots, n_assign);
            let pairs = assignment_words(&asg);
            let h = rng.vec(n_assign * inter, 2.0);
            let route_w: Vec<f32> = (0..n_assign).map(|_| 0.5 + 0.5 * rng.f32()).collect();
            for &(base, count) in &[(0usize, n_assign), (3, 2)] {
                let case = format!("{dtype} hidden {hidden} inter {inter} assign {base}+{count}");
                let before = rng.vec(n_assign * hidden, 1.0);
                let mut want = Vec::new();
                let mut written = vec![false; before.len()];
                for (a, &(_, s)) in asg.iter().enumerate().skip(base).take(count) {
                    let d = &pg.experts[s][2];
                    let y = reference::matmul(d, hidden, inter, &h[a * inter..(a + 1) * inter], 1);
                    want.extend(y.iter().map(|v| v * route_w[a]));
                    written[a * hidden..(a + 1) * hidden].fill(true);
                }
                let out = run(
                    Kernel::MoeDown,
                    Some(dtype),
                    MoeDownParams {
                        hidden: hidden as u32,
                        inter: inter as u32,
                        assign_base: base as u32,
                        n_assign: count as u32,
                        down_off: pg.offs[2],
                        slot_elems: pg.slot_elems,
                        ..Default::default()
                    }
                    .words(),
                    &[
                        &pg.bytes,
                        &f32_bytes(&h),
                        &u32_bytes(&pairs),
                        &f32_bytes(&route_w),
                        &f32_bytes(&before),
                    ],
                    (hidden as u32, count as u32),
                );
                let got = to_f32(&out[4]);
                ck.untouched(&case, &got, &before, &written);
                ck.close(
                    &case,
                    &pick(&got, &written),
                    &want,
                    REDUCTION.floor(dot_scale(inter, 1.0, 2.0) / 2.0),
                );
            }
        }
    }
    ck.report();
}

#[test]
fn moe_combine() {
    let mut ck = Checker::new("moe_combine");
    let mut rng = Rng::new(110);
    // (hidden, n_tokens)
    for &(hidden, n_tokens) in &[(1usize, 1usize), (17, 3), (64, 2), (130, 5), (1000, 7)] {
        for top_k in 1..=4usize {
            let case = format!("hidden {hidden} tokens {n_tokens} top_k {top_k}");
            // Assignment rows in a shuffled order, plus two rows no route points at.
            let n_rows = n_tokens * top_k + 2;
            let mut perm: Vec<u32> = (0..n_rows as u32).collect();
            rng.shuffle(&mut perm);
            let route = &perm[..n_tokens * top_k];
            let o = rng.vec(n_rows * hidden, 1.0);
            let resid = rng.vec(n_tokens * hidden, 1.0);
            let before = rng.vec(n_tokens * hidden, 1.0);
            let mut want = Vec::with_capacity(n_tokens * hidden);
            for t in 0..n_tokens {
                for j in 0..hidden {
                    let mut s = 0.0f32;
                    for k in 0..top_k {
                        s += o[route[t * top_k + k] as usize * hidden + j];
                    }
                    want.push(resid[t * hidden + j] + s);
                }
            }
            let groups = (hidden * n_tokens).div_ceil(64);
            let groups = if top_k % 2 == 0 {
                grid_2d(groups, 2)
            } else {
                grid(groups)
            };
            let out = run(
                Kernel::MoeCombine,
                None,
                MoeCombineParams {
                    hidden: hidden as u32,
                    n_tokens: n_tokens as u32,
                    top_k: top_k as u32,
                    ..Default::default()
                }
                .words(),
                &[
                    &f32_bytes(&resid),
                    &f32_bytes(&o),
                    &u32_bytes(route),
                    &f32_bytes(&before),
                ],
                groups,
            );
            // At most 5 additions of values <= 1.
            ck.close(&case, &to_f32(&out[3]), &want, EXACT);
        }
    }
    ck.report();
}

/// The combine of one decode token that also leaves the next RMSNorm's input
/// (`moe_combine_norm`): the combined row as `moe_combine` adds it, the row times the norm's
/// weight in the 8+8-bit layout (the values, scales and sums as `rmsnorm` writes them) or
/// interleaved (bit for bit), each block's sum of squares of the combined row after it, and
/// nothing written past that.
#[test]
fn moe_combine_norm() {
    let mut ck = Checker::new("moe_combine_norm");
    let mut rng = Rng::new(62);
    for &hidden in &[32usize, 96, 256, 288, 2048] {
        for &top_k in &[1usize, 4, 9] {
            for q8 in [true, false] {
                let case = format!("hidden {hidden} top_k {top_k} q8 {q8}");
                let nb = hidden / 32;
                let n_rows = top_k + 2;
                let mut perm: Vec<u32> = (0..n_rows as u32).collect();
                rng.shuffle(&mut perm);
                let route = &perm[..top_k];
                let o = rng.vec(n_rows * hidden, 1.0);
                let resid = rng.vec(hidden, 2.0);
                let g = rng.vec(hidden, 1.5);
                let before = rng.vec(hidden, 1.0);
                let want: Vec<f32> = (0..hidden)
                    .map(|j| {
                        let s = route
                            .iter()
                            .fold(0f32, |s, &r| s + o[r as usize * hidden + j]);
                        resid[j] + s
                    })
                    .collect();
                let gx: Vec<f32> = want.iter().zip(&g).map(|(v, w)| w * v).collect();
                // The row's words, its blocks' sums of squares, then 3 words never written.
                let row_words = if q8 { 18 * nb } else { hidden };
                let yr_before = vec![0x7fc0_0000u32; row_words + nb + 3];
                let out = run(
                    Kernel::MoeCombineNorm,
                    None,
                    MoeCombineNormParams {
                        hidden: hidden as u32,
                        top_k: top_k as u32,
                        flags: if q8 { MoeCombineNormParams::Q8 } else { 0 },
                        ..Default::default()
                    }
                    .words(),
                    &[
                        &f32_bytes(&resid),
                        &f32_bytes(&o),
                        &u32_bytes(route),
                        &f32_bytes(&before),
                        &f32_bytes(&g),
                        &u32_bytes(&yr_before),
                    ],
                    (kernels::moe_combine_norm_groups(hidden as u32), 1),
                );
                let got = to_f32(&out[3]);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{case}: the combined row differs from the sum in order"
                );
                let yr = to_u32(&out[5]);
                if q8 {
                    check_q8_row(&case, &yr[..row_words], &gx);
                } else {
                    let row: Vec<f32> = yr[..hidden].iter().map(|&w| f32::from_bits(w)).collect();
                    let back = deinterleave(&row, hidden);
                    assert!(
                        back.iter()
                            .zip(&gx)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{case}: the interleaved row is not g * out"
                    );
                }
                let sq: Vec<f32> = yr[row_words..row_words + nb]
                    .iter()
                    .map(|&w| f32::from_bits(w))
                    .collect();
                let sq_want: Vec<f32> = want
                    .chunks_exact(32)
                    .map(|b| b.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() as f32)
                    .collect();
                ck.close(&format!("{case} sums of squares"), &sq, &sq_want, REDUCTION);
                assert!(
                    yr[row_words + nb..].iter().all(|&w| w == 0x7fc0_0000),
                    "{case}: words written past the sums of squares"
                );
            }
        }
    }
    ck.report();
}

// ---------------------------------------------------------------------------------------
// The engine's grid past 65535 workgroups.

#[test]
fn grid_past_65535_workgroups() {
    // A 70000-row matvec (a vocabulary-sized lm_head chunk, on a single column to stay
    // cheap) on the engine's grid: `grid_of` splits it into (35000, 2), and rows 35000..
    // come from `wid.y`. (The other tests reach `wid.y` with small 2-D grids.)
    let mut ck = Checker::new("big grid");
    let mut rng = Rng::new(120);
    let rows = 70_000usize;
    let g = grid(rows);
    assert_eq!(g, (35000, 2));
    let dtype = DType::BF16;
    let (wb, w) = weights(&mut rng, dtype, rows);
    let x = [0.75f32];
    let before = rng.vec(rows, 1.0);
    let out = run(
        Kernel::MatVec,
        Some(dtype),
        MatVecParams {
            rows: rows as u32,
            cols: 1,
            ..Default::default()
        }
        .words(),
        &[&wb, &f32_bytes(&x), &[], &[], &f32_bytes(&before)],
        g,
    );
    let want = reference::matmul(&w, rows, 1, &x, 1);
    // bf16 times 0.75 is exact in f32, and the other lanes add zeros.
    ck.close(
        &format!("matvec {dtype} rows {rows}"),
        &to_f32(&out[4]),
        &want,
        EXACT,
    );
    ck.report();
}

// ---------------------------------------------------------------------------------------
// Copy (the benchmarks' bandwidth baseline).

/// A kernel looked up by name: for kernels added while this file was written, so that the
/// file compiles whatever becomes of them.
fn kernel_named(name: &str) -> Kernel {
    Kernel::ALL
        .into_iter()
        .find(|k| k.name() == name)
        .unwrap_or_else(|| {
            panic!("Kernel::ALL has no `{name}` kernel: drop its test if it was removed")
        })
}

#[test]
fn copy() {
    let kernel = kernel_named("copy");
    let mut rng = Rng::new(130);
    let mut cases = 0;
    // n 16-byte words; the destination has 5 more that must stay as they are.
    for &n in &[1usize, 3, 64, 255, 256, 257, 1000, 5000] {
        for two_d in [false, true] {
            // Any bits, NaN patterns included: a copy must not go through float registers
            // that could canonicalize them.
            let src: Vec<u32> = (0..4 * n).map(|_| rng.next_u64() as u32).collect();
            let before: Vec<u32> = (0..4 * (n + 5)).map(|_| rng.next_u64() as u32).collect();
            let groups = n.div_ceil(256);
            let groups = if two_d {
                grid_2d(groups, 2)
            } else {
                grid(groups)
            };
            let out = run(
                kernel,
                None,
                CopyParams {
                    n: n as u32,
                    ..Default::default()
                }
                .words(),
                &[&u32_bytes(&src), &u32_bytes(&before)],
                groups,
            );
            let got = to_u32(&out[1]);
            assert_eq!(
                &got[..4 * n],
                &src[..],
                "copy n {n} 2d {two_d}: copied words"
            );
            assert_eq!(
                &got[4 * n..],
                &before[4 * n..],
                "copy n {n} 2d {two_d}: words past n"
            );
            cases += 1;
        }
    }
    println!("copy         {cases:>4} cases, exact");
}

// ---------------------------------------------------------------------------------------
// Decode routing through the GPU slot table.

#[test]
fn moe_route() {
    // For the top_k experts of the decode token: look up each expert's slot in this layer's
    // part of the slot table; group the assignments by cache page (page = slot /
    // slots_per_page): assignment j of page p is row p * top_k + j, holding (token 0, slot
    // within the page) and the weight; route[k] is that row; per page the indirect grids
    // (gate_up_x, count, 1, down_x, count, 1), and a page's unused rows (0, 0) with weight
    // 0. An expert without a slot (u32::MAX), or in a page whose bit of page_mask is clear,
    // sets the layer's miss flag and counts as slot 0.
    // The chosen ids go to the route log after the miss flags, at log_base. The experts
    // and weights are routed from the logits by the router's own code: they must equal
    // the router kernel's, bit for bit. With a shared expert in the cache, it is one more
    // choice (id ne, slot at table entry ne of the layer's ne + 1, its logit after the
    // experts'), not logged, and pages have top_k + 1 rows. Dispatched as one workgroup.
    let kernel = kernel_named("moe_route");
    let mut rng = Rng::new(140);
    const NONE: u32 = u32::MAX;
    let (n_layers, ne, spp, pages) = (3usize, 128usize, 16u32, 3usize);
    let (gate_up_x, down_x) = (11u32, 13u32);
    let mut cases = 0;
    for (layer, shared) in [(0usize, false), (2, false), (1, true), (2, true)] {
        // Table entries per layer, choices per token.
        let stride = ne + usize::from(shared);
        for top_k in [1usize, 2, 5, 8] {
            let kk = top_k + usize::from(shared);
            for (with_miss, page_mask) in [(false, u32::MAX), (true, u32::MAX), (false, 0b101)] {
                // Slot table of all layers: a random slot (over 3 pages) or none (the
                // shared expert always has one).
                let mut table: Vec<u32> = (0..n_layers * stride)
                    .map(|_| {
                        if rng.below(3) == 0 {
                            NONE
                        } else {
                            rng.below(40) as u32
                        }
                    })
                    .collect();
                if shared {
                    table[layer * stride + ne] = rng.below(40) as u32;
                }
                // Routing as the router kernel does it (checked against the CPU reference
                // by `router`).
                let mut logits = ladder_logits(&mut rng, 1, ne);
                if shared {
                    logits.push(3.0 * rng.f32());
                }
                // Every routing mode (softmax, renormalized, top-k then softmax).
                let routing = (top_k % 3) as u32;
                let routed = run(
                    Kernel::Router,
                    None,
                    RouterParams {
                        n_experts: ne as u32,
                        top_k: top_k as u32,
                        routing,
                        n_tokens: 1,
                        logit_stride: stride as u32,
                        shared_expert: u32::from(shared),
                        ..Default::default()
                    }
                    .words(),
                    &[
                        &f32_bytes(&logits),
                        &u32_bytes(&vec![0u32; kk]),
                        &f32_bytes(&vec![0f32; kk]),
                        &[],
                    ],
                    (1, 1),
                );
                let (ids, weights) = (to_u32(&routed[1]), to_f32(&routed[2]));
                assert!(ids[..top_k].iter().all(|&e| (e as usize) < ne));
                if shared {
                    assert_eq!(ids[top_k] as usize, ne, "the shared expert is choice top_k");
                }
                for (k, &e) in ids[..top_k].iter().enumerate() {
                    let at = layer * stride + e as usize;
                    let missing = with_miss && k == top_k / 2;
                    if missing {
                        table[at] = NONE;
                    } else if table[at] == NONE {
                        table[at] = rng.below(40) as u32;
                    }
                }
                // Sentinels past the rows used; other layers' miss flags are 7.
                let rows = pages * kk + 1;
                let assign0 = vec![0xdead_beefu32; 2 * rows];
                let assign_w0 = vec![-5.0f32; rows];
                let route0 = vec![0xdead_beefu32; kk + 1];
                // The route log: miss flags per layer, then top_k ids per layer (other
                // layers' entries are 7 and must stay so).
                let mut miss0 = vec![7u32; n_layers * (1 + top_k)];
                miss0[layer] = 0;
                let args0 = vec![0x5555_5555u32; 6 * pages + 1];
                let out = run(
                    kernel,
                    None,
                    MoeRouteParams {
                        top_k: top_k as u32,
                        table_base: (layer * stride) as u32,
                        layer: layer as u32,
                        slots_per_page: spp,
                        n_pages: pages as u32,
                        gate_up_x,
                        down_x,
                        page_mask,
                        log_base: (n_layers + layer * top_k) as u32,
                        n_experts: ne as u32,
                        routing,
                        shared_expert: u32::from(shared),
                        ..Default::default()
                    }
                    .words(),
                    &[
                        &f32_bytes(&logits),
                        &u32_bytes(&table),
                        &u32_bytes(&assign0),
                        &f32_bytes(&assign_w0),
                        &u32_bytes(&route0),
                        &u32_bytes(&miss0),
                        &u32_bytes(&args0),
                        &[],
                    ],
                    (1, 1),
                );
                let case = format!(
                    "layer {layer} top_k {top_k} shared {shared} miss {with_miss} pages {page_mask:b}"
                );
                let mut want_assign = assign0.clone();
                let mut want_w = assign_w0.clone();
                let mut want_route = route0.clone();
                let mut want_miss = miss0.clone();
                let mut want_args = args0.clone();
                for p in 0..pages {
                    want_args[6 * p..6 * p + 6].copy_from_slice(&[gate_up_x, 0, 1, down_x, 0, 1]);
                    // Rows a page does not use: token 0, slot 0, weight 0 (hosts may run
                    // all top_k rows of a page).
                    for a in p * kk..(p + 1) * kk {
                        want_assign[2 * a..2 * a + 2].copy_from_slice(&[0, 0]);
                        want_w[a] = 0.0;
                    }
                }
                for (k, &e) in ids.iter().enumerate() {
                    if k < top_k {
                        want_miss[n_layers + layer * top_k + k] = e;
                    }
                    let mut slot = table[layer * stride + e as usize];
                    if slot == NONE || (page_mask >> (slot / spp)) & 1 == 0 {
                        want_miss[layer] = 1;
                        slot = 0;
                    }
                    let p = (slot / spp) as usize;
                    let j = want_args[6 * p + 1] as usize;
                    want_args[6 * p + 1] += 1;
                    want_args[6 * p + 4] += 1;
                    let a = p * kk + j;
                    want_assign[2 * a] = 0;
                    want_assign[2 * a + 1] = slot % spp;
                    want_w[a] = weights[k];
                    want_route[k] = a as u32;
                }
                // Page 1 is not recorded with mask 0b101: any expert there is a miss.
                let in_page_1 = ids
                    .iter()
                    .any(|&e| table[layer * stride + e as usize] / spp == 1);
                assert_eq!(
                    want_miss[layer],
                    u32::from(with_miss || (page_mask == 0b101 && in_page_1)),
                    "{case}"
                );
                assert_eq!(to_u32(&out[2]), want_assign, "moe_route [{case}]: assign");
                let got_w = to_f32(&out[3]);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got_w), bits(&want_w), "moe_route [{case}]: weights");
                assert_eq!(to_u32(&out[4]), want_route, "moe_route [{case}]: route");
                assert_eq!(to_u32(&out[5]), want_miss, "moe_route [{case}]: route log");
                assert_eq!(
                    to_u32(&out[6]),
                    want_args,
                    "moe_route [{case}]: indirect grids"
                );
                // The inputs are read only.
                assert_eq!(to_u32(&out[1]), table, "moe_route [{case}]: slot table");
                cases += 1;
            }
        }
    }
    println!("moe_route    {cases:>4} cases, exact");
}

#[test]
fn topk() {
    // Per chunk of `chunk` logits: the n best as (f32 bits, id), ordered by logit
    // descending then id ascending; NaN counts as -3e38; ids of missing entries are
    // u32::MAX. The merged lists must give the exact top-n of the whole vector.
    let mut rng = Rng::new(150);
    let mut cases = 0;
    for (vocab, chunk, n) in [
        (1usize, 2048u32, 1usize),
        (5, 2048, 8),
        (300, 64, 5),
        (4097, 2048, 1),
        (4097, 2048, 64),
        (10_000, 2048, 40),
        (151_936, 2048, 2),
    ] {
        let mut logits = rng.vec(vocab, 8.0);
        // Exact ties and NaNs.
        if vocab > 10 {
            logits[3] = logits[vocab - 2];
            logits[vocab / 2] = f32::NAN;
            logits[1] = logits[vocab / 3];
        }
        let groups = vocab.div_ceil(chunk as usize);
        let out0 = vec![0x5555_5555u32; groups * n * 2];
        let out = run(
            Kernel::TopK,
            None,
            TopKParams {
                n_vocab: vocab as u32,
                chunk,
                n_top: n as u32,
                ..Default::default()
            }
            .words(),
            &[&f32_bytes(&logits), &u32_bytes(&out0)],
            (groups as u32, 1),
        );
        let words = to_u32(&out[1]);
        let key = |v: f32| if v.is_nan() { -3.0e38 } else { v };
        for g in 0..groups {
            let lo = g * chunk as usize;
            let hi = (lo + chunk as usize).min(vocab);
            let mut want: Vec<(f32, u32)> = (lo..hi).map(|i| (key(logits[i]), i as u32)).collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for r in 0..n {
                let got = (
                    f32::from_bits(words[2 * (g * n + r)]),
                    words[2 * (g * n + r) + 1],
                );
                match want.get(r) {
                    Some(&(v, i)) => assert_eq!(
                        (got.0.to_bits(), got.1),
                        (v.to_bits(), i),
                        "topk vocab {vocab} chunk {chunk} n {n}: group {g} rank {r}"
                    ),
                    None => assert_eq!(got.1, u32::MAX, "topk: missing entries have no id"),
                }
            }
        }
        cases += 1;
    }
    println!("topk         {cases:>4} cases, exact");
}

#[test]
fn token_pick() {
    // The best of per-chunk candidate lists (TopK's output): larger logit first, then
    // smaller id; missing entries (id u32::MAX) skipped; 0 when there is none. Against the
    // merge the host does (`step_top`), on TopK's own output and on made-up lists with
    // ties across chunks, equal logits of both signs of zero excluded (the order of
    // `total_cmp` and of the kernel's `>` differ there; the session checks the token a
    // step ran, so such a tie costs a step, never a wrong result).
    let mut rng = Rng::new(151);
    let mut cases = 0;
    for (chunks, n, tie, missing) in [
        (1usize, 1usize, false, false),
        (75, 1, false, false),
        (75, 1, true, false),
        (75, 4, true, true),
        (300, 2, true, true),
        (3, 1, false, true),
    ] {
        let mut words = vec![0u32; chunks * n * 2];
        let mut want: Option<(f32, u32)> = None;
        for c in 0..chunks {
            for r in 0..n {
                let v = rng.vec(1, 8.0)[0];
                let id = (c * 1000 + r) as u32;
                let none = missing && (c % 3 == 1 || chunks == 3);
                words[2 * (c * n + r)] = v.to_bits();
                words[2 * (c * n + r) + 1] = if none { u32::MAX } else { id };
                // Only a chunk's first entry counts.
                if r == 0 && !none && want.is_none_or(|(wv, wi)| v > wv || (v == wv && id < wi)) {
                    want = Some((v, id));
                }
            }
        }
        if tie && chunks > 2 {
            // The best logit again in a later chunk, with a larger id: the smaller id wins.
            let (v, _) = want.unwrap();
            words[2 * ((chunks - 1) * n)] = v.to_bits();
            words[2 * ((chunks - 1) * n) + 1] = (chunks * 1000) as u32;
        }
        let out = run(
            Kernel::TokenPick,
            None,
            TokenPickParams {
                n_chunks: chunks as u32,
                n_top: n as u32,
                ..Default::default()
            }
            .words(),
            &[&u32_bytes(&words), &u32_bytes(&[0x5555_5555u32])],
            (1, 1),
        );
        let got = to_u32(&out[1])[0];
        assert_eq!(
            got,
            want.map_or(0, |w| w.1),
            "token_pick chunks {chunks} n {n}"
        );
        cases += 1;
    }
    println!("token_pick: {cases} cases exact");
}

/// The draw of `token_sample.wgsl`, in f64 as the host's sampler computes it: the `top_k`
/// best of `cands` (larger logit first, then smaller id), over the temperature, top-p
/// (keep while the mass before is below `top_p` of the total, at least one), min-p, then
/// the weights walked in id order up to `u` times their sum. Also returns how close the
/// draw came to a boundary (of top-p's cut or of the chosen interval), relative to the
/// total mass: where that is below f32 rounding, the kernel may fairly differ.
fn sample_reference(
    cands: &[(f32, u32)],
    top_k: usize,
    temperature: f32,
    top_p: f32,
    min_p: f32,
    u: f32,
) -> (u32, f64) {
    let mut c: Vec<(f32, u32)> = cands.to_vec();
    c.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    c.truncate(top_k);
    if c.is_empty() {
        return (0, f64::INFINITY);
    }
    let l: Vec<f64> = c.iter().map(|x| f64::from(x.0 / temperature)).collect();
    let w: Vec<f64> = l.iter().map(|x| (x - l[0]).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut margin = f64::INFINITY;
    let mut m = c.len();
    if top_p < 1.0 {
        let goal = f64::from(top_p) * total;
        let mut before = 0.0;
        for (j, wj) in w.iter().enumerate() {
            if j > 0 {
                margin = margin.min((before - goal).abs() / total);
                if before >= goal {
                    m = j;
                    break;
                }
            }
            before += wj;
        }
    }
    if min_p > 0.0 {
        let cut = f64::from(min_p).ln();
        for j in 1..m {
            margin = margin.min(((l[j] - l[0]) - cut).abs());
            if l[j] - l[0] < cut {
                m = j;
                break;
            }
        }
    }
    let mut kept: Vec<(u32, f64)> = (0..m).map(|j| (c[j].1, w[j])).collect();
    kept.sort_by_key(|x| x.0);
    let sum: f64 = kept.iter().map(|x| x.1).sum();
    let goal = f64::from(u) * sum;
    let mut before = 0.0;
    for (id, wj) in &kept {
        margin = margin.min((goal - before).abs() / sum);
        if goal < before + wj {
            margin = margin.min((before + wj - goal).abs() / sum);
            return (*id, margin);
        }
        before += wj;
    }
    (kept.last().map_or(0, |x| x.0), 0.0)
}

#[test]
fn token_sample() {
    // The sampled token of per-chunk candidate lists (TopK's output format: each chunk's
    // list sorted, missing entries id u32::MAX at its end), against the f64 reference
    // above, over top-k sizes, temperatures, top-p, min-p and random numbers. Cases whose
    // draw falls within 1e-5 of a boundary are not compared (f32 sums may fairly land on
    // the other side; the session checks the token a step ran), and must be few.
    let chunk = 2048usize;
    let mut rng = Rng::new(152);
    let (mut cases, mut close) = (0, 0);
    for (chunks, n_top, top_k) in [
        (1usize, 1usize, 1usize),
        (1, 8, 8),
        (75, 20, 20),
        (75, 20, 7),
        (300, 4, 4),
        (74, 64, 50),
        (128, 256, 256),
        (3, 5, 12),
    ] {
        for round in 0..6 {
            let mut words = vec![0u32; chunks * n_top * 2];
            let mut all = Vec::new();
            for c in 0..chunks {
                // A few chunks have fewer candidates than n_top; logits with ties.
                let have = if c % 7 == 3 { n_top / 2 } else { n_top };
                let mut list: Vec<(f32, u32)> = (0..have)
                    .map(|_| {
                        let v = (rng.f32() * 8.0 * 64.0).round() / 64.0;
                        (v, (c * chunk + rng.below(chunk)) as u32)
                    })
                    .collect();
                list.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                list.dedup_by_key(|x| x.1);
                for r in 0..n_top {
                    let (v, id) = list.get(r).copied().unwrap_or((0.0, u32::MAX));
                    words[2 * (c * n_top + r)] = v.to_bits();
                    words[2 * (c * n_top + r) + 1] = id;
                    if id != u32::MAX {
                        all.push((v, id));
                    }
                }
            }
            let temperature = [0.7f32, 1.0, 0.2, 1.6, 1.0, 0.05][round];
            let top_p = [1.0f32, 0.9, 0.5, 0.95, 1.0, 0.8][round];
            let min_p = [0.0f32, 0.0, 0.05, 0.0, 0.2, 0.0][round];
            // Random numbers across [0, 1), so that draws land on the rare tokens too.
            for q in 0..16 {
                let u = (q as f32 + (rng.f32() + 1.0) / 2.0) / 16.0;
                let (want, margin) = sample_reference(&all, top_k, temperature, top_p, min_p, u);
                let params = TokenSampleParams {
                    n_chunks: chunks as u32,
                    n_top: n_top as u32,
                    top_k: top_k as u32,
                    chunk: chunk as u32,
                    temperature,
                    top_p,
                    min_p,
                    u,
                };
                let out = run(
                    Kernel::TokenSample,
                    None,
                    params.words(),
                    &[&u32_bytes(&words), &u32_bytes(&[0x5555_5555u32])],
                    (1, 1),
                );
                let got = to_u32(&out[1])[0];
                cases += 1;
                if margin < 1e-5 {
                    close += 1;
                    continue;
                }
                assert_eq!(
                    got, want,
                    "token_sample chunks {chunks} n_top {n_top} top_k {top_k} round {round}: {params:?}"
                );
            }
        }
    }
    assert!(
        close * 10 <= cases,
        "{close} of {cases} cases too close to call"
    );
    println!("token_sample: {cases} cases, {close} too close to call, the rest exact");
}

#[test]
fn subgroup_probe() {
    // The probe measures the subgroup size the team kernels use. lavapipe (CI) offers
    // subgroups of 8, so there the subgroup variant must be in use and measured; on an
    // adapter without subgroups the probe kernel cannot be compiled at all.
    let r = runner();
    println!(
        "adapter {}: variant {}",
        r.adapter_name(),
        r.variant().name()
    );
    if r.adapter_name().contains("llvmpipe") {
        assert!(
            r.variant().subgroups,
            "lavapipe offers subgroups; the variant has none"
        );
        assert_eq!(r.team(2048), 8, "lavapipe's subgroups are 8 wide");
    }
    if !r.variant().subgroups {
        return;
    }
    let team = r.team(2048);
    let out = run_kernel(
        Kernel::SubgroupProbe,
        None,
        None,
        SubgroupProbeParams {
            n: 64,
            ..Default::default()
        }
        .words(),
        &[&u32_bytes(&[0; 64])],
        (1, 1),
    );
    let sizes = to_u32(&out[0]);
    assert!(sizes.iter().all(|&n| n == team), "{sizes:?} (team {team})");
    // Only the first `n` invocations write.
    let out = run_kernel(
        Kernel::SubgroupProbe,
        None,
        None,
        SubgroupProbeParams {
            n: 5,
            ..Default::default()
        }
        .words(),
        &[&u32_bytes(&[7; 64])],
        (1, 1),
    );
    let sizes = to_u32(&out[0]);
    assert!(sizes[..5].iter().all(|&n| n == team) && sizes[5..].iter().all(|&n| n == 7));
}
