//! The harness shared by the kernel tests (`tests/kernels.rs`, `tests/qkernels.rs`): one
//! device for all tests, interface checks, a deterministic PRNG, and the error metric
//! (normalized mean squared error plus the largest relative difference, as llama.cpp's
//! `test-backend-ops`; `tests/expert_shapes.rs` judges logits by it too). Included by
//! path, so only those test binaries compile it.
#![allow(dead_code)]

use std::sync::OnceLock;

use moestream::format::DType;
use moestream::gpu::kernels::{Kernel, Variant};
use moestream::gpu::testing::KernelRunner;

/// A runner restricted to the portable kernels (no subgroups, no shader-f16), so that both
/// variants are tested on adapters that have the optional features.
pub fn portable_runner() -> &'static KernelRunner {
    static RUNNER: OnceLock<KernelRunner> = OnceLock::new();
    RUNNER.get_or_init(|| {
        KernelRunner::with_variant(Variant::PORTABLE)
            .unwrap_or_else(|e| panic!("the kernel tests need a GPU adapter: {e}"))
    })
}

pub fn runner() -> &'static KernelRunner {
    static RUNNER: OnceLock<KernelRunner> = OnceLock::new();
    RUNNER.get_or_init(|| {
        KernelRunner::new().unwrap_or_else(|e| {
            panic!(
                "the kernel tests need a GPU adapter and do not skip without one \
                 (on Linux without a GPU: apt-get install mesa-vulkan-drivers): {e}"
            )
        })
    })
}

/// Number of fields of the kernel's `Params` struct and of its storage bindings, read
/// from the compiled source, so a kernel whose interface changed fails loudly here rather
/// than reading a short uniform.
pub fn interface(kernel: Kernel) -> (usize, usize) {
    let src = kernel.source();
    let start = src
        .find("struct Params {")
        .unwrap_or_else(|| panic!("{}: no `struct Params`", kernel.name()));
    let body = &src[start + "struct Params {".len()..];
    let body = &body[..body.find('}').expect("unterminated Params")];
    let fields = body
        .lines()
        .map(|l| l.split("//").next().unwrap_or("").trim())
        .filter(|l| l.contains(':'))
        .count();
    let bindings = src.matches("@binding(").count() - 1;
    (fields, bindings)
}

/// Runs one dispatch and returns the final content of every buffer, after checking the
/// count of params and buffers against the kernel's source. `quant` = (bits, group) for the
/// quantized kernels (then `wdt` is their scale dtype).
pub fn run_kernel(
    kernel: Kernel,
    wdt: Option<DType>,
    quant: Option<(u32, u32)>,
    params: &[u32],
    buffers: &[&[u8]],
    groups: (u32, u32),
) -> Vec<Vec<u8>> {
    run_kernel_on(runner(), kernel, wdt, quant, params, buffers, groups)
}

/// As [`run_kernel`], on the given runner.
#[allow(clippy::too_many_arguments)]
pub fn run_kernel_on(
    on: &KernelRunner,
    kernel: Kernel,
    wdt: Option<DType>,
    quant: Option<(u32, u32)>,
    params: &[u32],
    buffers: &[&[u8]],
    groups: (u32, u32),
) -> Vec<Vec<u8>> {
    run_kernel_rows_on(on, kernel, wdt, quant, 0, params, buffers, groups)
}

/// As [`run_kernel_on`], with the `ROWS` pipeline constant (rows per team of qmatvec) set
/// to `rows` unless it is 0.
#[allow(clippy::too_many_arguments)]
#[allow(dead_code)] // not every test file that includes the harness uses it
pub fn run_kernel_rows_on(
    on: &KernelRunner,
    kernel: Kernel,
    wdt: Option<DType>,
    quant: Option<(u32, u32)>,
    rows: u32,
    params: &[u32],
    buffers: &[&[u8]],
    groups: (u32, u32),
) -> Vec<Vec<u8>> {
    run_kernel_grid_on(
        on,
        kernel,
        wdt,
        quant,
        rows,
        params,
        buffers,
        (groups.0, groups.1, 1),
    )
}

/// As [`run_kernel_rows_on`], over a 3-D grid.
#[allow(clippy::too_many_arguments)]
#[allow(dead_code)] // not every test file that includes the harness uses it
pub fn run_kernel_grid_on(
    on: &KernelRunner,
    kernel: Kernel,
    wdt: Option<DType>,
    quant: Option<(u32, u32)>,
    rows: u32,
    params: &[u32],
    buffers: &[&[u8]],
    groups: (u32, u32, u32),
) -> Vec<Vec<u8>> {
    let (fields, bindings) = interface(kernel);
    assert_eq!(
        params.len(),
        fields,
        "{}: the test passes {} params, the kernel declares {fields}",
        kernel.name(),
        params.len()
    );
    assert_eq!(
        buffers.len(),
        bindings,
        "{}: the test passes {} buffers, the kernel declares {bindings}",
        kernel.name(),
        buffers.len()
    );
    // A dtype for the kernels that read weights (their WDT) and, optionally, for those of
    // the KV cache (their KVDT, f32 without one).
    assert!(
        kernel.reads_weights() == wdt.is_some() || kernel.uses_kv_cache(),
        "{}",
        kernel.name()
    );
    assert_eq!(kernel.is_quantized(), quant.is_some(), "{}", kernel.name());
    on.run_grid(kernel, wdt, quant, rows, params, buffers, groups)
        .unwrap_or_else(|e| panic!("{} ({wdt:?}, {quant:?}): {e}", kernel.name()))
}

/// The engine's grid for `n` workgroups ([`moestream::gpu::kernels::grid`]).
pub fn grid(n: usize) -> (u32, u32) {
    moestream::gpu::kernels::grid(n as u32)
}

/// The rows of `v` (each `n` values, `n` a multiple of 32) in the interleaved layout of
/// `kernels/include/interleave.wgsl`: vec4 i of 32-value block b of a row at vec4 index
/// i * (n / 32) + b of the row.
pub fn interleave(v: &[f32], n: usize) -> Vec<f32> {
    assert_eq!(n % 32, 0);
    let nb = n / 32;
    let mut out = vec![f32::NAN; v.len()];
    for (row_in, row_out) in v.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        for (j, &val) in row_in.iter().enumerate() {
            let (b, i, c) = (j / 32, j % 32 / 4, j % 4);
            row_out[4 * (i * nb + b) + c] = val;
        }
    }
    out
}

/// The inverse of [`interleave`].
pub fn deinterleave(v: &[f32], n: usize) -> Vec<f32> {
    let nb = n / 32;
    let mut out = vec![f32::NAN; v.len()];
    for (row_in, row_out) in v.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        for (j, o) in row_out.iter_mut().enumerate() {
            let (b, i, c) = (j / 32, j % 32 / 4, j % 4);
            *o = row_in[4 * (i * nb + b) + c];
        }
    }
    out
}

/// The values, per-block scales t and per-block sums of a row of `n` values in the 8+8-bit
/// layout of `kernels/include/interleave.wgsl` (the decoder of
/// `moestream::gpu::testing::q8_row`, written from the layout's description).
pub fn q8_decode(words: &[u32], n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let nb = n / 32;
    let byte = |w: u32, i: usize| f32::from((w >> (8 * i)) as u8 as i8);
    let mut values = vec![0f32; n];
    let (mut ts, mut sums) = (Vec::new(), Vec::new());
    for b in 0..nb {
        let t = f32::from_bits(words[16 * nb + 2 * b]);
        ts.push(t);
        sums.push(f32::from_bits(words[16 * nb + 2 * b + 1]));
        for word in 0..8 {
            let (vec, comp) = (word / 4, word % 4);
            let hi = words[4 * (vec * nb + b) + comp];
            let lo = words[4 * ((2 + vec) * nb + b) + comp];
            // Word 2k: values 8k, 8k + 2, 8k + 4, 8k + 6; word 2k + 1: the odd ones.
            for i in 0..4 {
                let j = 8 * (word / 2) + (word % 2) + 2 * i;
                values[32 * b + j] = t * (254.0 * byte(hi, i) + byte(lo, i));
            }
        }
    }
    (values, ts, sums)
}

/// That `words` hold the row `want` in the 8+8-bit layout: each block's scale t from its
/// largest magnitude, its sum that of the values it stands for, and each value within
/// half a step of lo (t / 2), plus rounding.
pub fn check_q8_row(case: &str, words: &[u32], want: &[f32]) {
    let (vals, ts, sums) = q8_decode(words, want.len());
    for (b, blk) in want.chunks_exact(32).enumerate() {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let t_want = amax / (127.0 * 254.0);
        assert!(
            (ts[b] - t_want).abs() <= 1e-5 * t_want,
            "{case} block {b}: t {} want {t_want}",
            ts[b]
        );
        let s_want: f32 = vals[32 * b..32 * (b + 1)].iter().sum();
        let s_tol = 1e-5 * blk.iter().map(|v| v.abs()).sum::<f32>();
        assert!(
            (sums[b] - s_want).abs() <= s_tol,
            "{case} block {b}: sum {} want {s_want}",
            sums[b]
        );
        for (j, &v) in blk.iter().enumerate() {
            let got = vals[32 * b + j];
            assert!(
                (got - v).abs() <= 0.51 * t_want + 1e-6 * v.abs(),
                "{case} value {}: 8+8-bit {got} want {v}",
                32 * b + j
            );
        }
    }
}

/// The expert kernels' `assign` buffer for (token, slot) assignments: the pairs as words.
pub fn assignment_words(asg: &[(usize, usize)]) -> Vec<u32> {
    asg.iter()
        .flat_map(|&(t, s)| [t as u32, s as u32])
        .collect()
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn to_u32(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// SplitMix64: a tiny deterministic generator.
pub struct Rng(pub u64);

impl Rng {
    /// A generator for one test. `KERNEL_TEST_SEED=<n>` in the environment changes every
    /// test's data (to look for rare failures); unset, the data are fixed.
    pub fn new(seed: u64) -> Self {
        let extra = std::env::var("KERNEL_TEST_SEED")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        Rng((seed ^ 0x5DEE_CE66_D1CE_5EED).wrapping_add(extra.wrapping_mul(0x2545_F491_4F6C_DD1D)))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// `n` random weights in `dtype`: the encoded bytes and the values they decode to.
pub fn weights(rng: &mut Rng, dtype: DType, n: usize) -> (Vec<u8>, Vec<f32>) {
    let bytes = dtype.encode(&rng.vec(n, 1.0));
    let values = dtype.decode(&bytes);
    (bytes, values)
}

pub const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// What a comparison allows.
#[derive(Debug, Clone, Copy)]
pub struct Tol {
    /// Bound on the nmse, `sum((got - want)^2) / max(sum(want^2), n * floor^2)`.
    pub nmse: f64,
    /// Bound on the largest difference relative to the largest expected value,
    /// `max |got - want| / max(max |want|, floor)`: one wrong value that the mean dilutes.
    pub max_rel: f64,
    /// The typical size of an output (0 if none). A dot product of random-sign terms can
    /// cancel to a value far smaller than its terms, and its f32 rounding error is set by
    /// the terms, not the result: a case of one or a few such outputs is judged against
    /// this typical size instead of its own, or a lucky cancellation would look like a
    /// large relative error.
    pub floor: f64,
}

impl Tol {
    pub fn floor(self, floor: f64) -> Tol {
        Tol { floor, ..self }
    }
}

/// Compares `got` with `want`: every value finite, nmse and largest relative difference
/// within `tol`. Returns (nmse, max relative difference).
pub fn compare(got: &[f32], want: &[f32], tol: Tol) -> Result<(f64, f64), String> {
    if got.len() != want.len() {
        return Err(format!("{} values, {} expected", got.len(), want.len()));
    }
    let (mut num, mut den, mut max_diff, mut max_want, mut at) =
        (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if !g.is_finite() {
            return Err(format!("value {i} is {g} (expected {w})"));
        }
        let (g, w) = (f64::from(g), f64::from(w));
        let d = g - w;
        num += d * d;
        den += w * w;
        max_want = max_want.max(w.abs());
        if d.abs() > max_diff {
            max_diff = d.abs();
            at = i;
        }
    }
    let den = den.max(got.len() as f64 * tol.floor * tol.floor);
    let nmse = if num == 0.0 { 0.0 } else { num / den };
    let max_rel = if max_diff == 0.0 {
        0.0
    } else {
        max_diff / max_want.max(tol.floor)
    };
    let detail = || {
        format!(
            "nmse {nmse:.3e}, max |diff| {max_diff:.3e} (relative {max_rel:.3e}) at {at}: got {}, expected {}",
            got[at], want[at]
        )
    };
    if nmse.is_nan() || nmse > tol.nmse {
        return Err(format!("nmse above {:.0e}: {}", tol.nmse, detail()));
    }
    if max_rel.is_nan() || max_rel > tol.max_rel {
        return Err(format!(
            "max |diff| above {:.0e} relative: {}",
            tol.max_rel,
            detail()
        ));
    }
    Ok((nmse, max_rel))
}

/// Checks one kernel's cases and keeps the worst errors seen, for the report.
pub struct Checker {
    pub kernel: &'static str,
    pub cases: usize,
    pub worst_nmse: f64,
    pub worst_diff: f64,
    pub nmse_case: String,
    pub diff_case: String,
}

impl Checker {
    pub fn new(kernel: &'static str) -> Self {
        Checker {
            kernel,
            cases: 0,
            worst_nmse: 0.0,
            worst_diff: 0.0,
            nmse_case: String::new(),
            diff_case: String::new(),
        }
    }

    pub fn close(&mut self, case: &str, got: &[f32], want: &[f32], tol: Tol) {
        match compare(got, want, tol) {
            Ok((e, d)) => {
                self.cases += 1;
                if e > self.worst_nmse {
                    self.worst_nmse = e;
                    self.nmse_case = case.to_string();
                }
                if d > self.worst_diff {
                    self.worst_diff = d;
                    self.diff_case = case.to_string();
                }
            }
            Err(msg) => panic!("{} [{case}]: {msg}", self.kernel),
        }
    }

    /// Values at positions where `written` is false must be exactly `before`.
    pub fn untouched(&self, case: &str, got: &[f32], before: &[f32], written: &[bool]) {
        assert_eq!(
            got.len(),
            before.len(),
            "{} [{case}]: buffer size",
            self.kernel
        );
        for (i, ((g, b), w)) in got.iter().zip(before).zip(written).enumerate() {
            assert!(
                *w || g.to_bits() == b.to_bits(),
                "{} [{case}]: value {i} must not be written, was {b}, now {g}",
                self.kernel
            );
        }
    }

    pub fn report(&self) {
        assert!(self.cases > 0, "{}: no case checked", self.kernel);
        println!(
            "{:<12} {:>4} cases, worst nmse {:.3e} [{}], worst max relative diff {:.3e} [{}]",
            self.kernel,
            self.cases,
            self.worst_nmse,
            self.nmse_case,
            self.worst_diff,
            self.diff_case
        );
    }
}

/// Picks `mask[i]` values of `a`.
pub fn pick(a: &[f32], mask: &[bool]) -> Vec<f32> {
    a.iter()
        .zip(mask)
        .filter(|(_, &m)| m)
        .map(|(&v, _)| v)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Self-checks of the harness.

/// Values as a KV cache of f16 elements (rounded to nearest even, as `half` does).
#[allow(dead_code)] // not every test file that includes the harness uses it
pub fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect()
}

/// A KV cache of f16 elements, as f32 values.
#[allow(dead_code)]
pub fn from_f16_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}
