//! The MLX affine-quantized kernels (`qmatvec`, `qmatmul`, `qembedding`, `moe_gate_up_q`,
//! `moe_down_q`) against the plain f32 CPU reference, through the hidden
//! `gpu::testing::KernelRunner` hook.
//!
//! Quantized matrices are built on the CPU: random codes of every width, random scales
//! (about half of them negative) and biases in each scale dtype, packed LSB-first into u32
//! words as MLX does and laid out as `WeightFormat::parts` places them. The packer is checked
//! to round-trip through `moestream`'s own dequantizer (`WeightFormat::decode`), and the CPU
//! side of every comparison is that dequantized matrix fed to `moestream::reference`, so a
//! comparison measures only the kernel's unpacking and its f32 arithmetic.
//!
//! Error metric (as tests/kernels.rs and llama.cpp's `test-backend-ops`): the normalized
//! mean squared error `nmse = sum((gpu - cpu)^2) / sum(cpu^2)` over the values a dispatch
//! writes, and the largest absolute difference relative to the largest expected value (one
//! wrong value that the mean dilutes). Values a dispatch must not write come back bit for
//! bit as they went in.
//!
//! Scale of the bounds: f32 has a unit roundoff u = 6e-8. A dot product of n terms summed in
//! another order than the CPU's sequential sum is off by about sqrt(n) u relative to its
//! typical size: an nmse of order n u^2 (7e-12 for n = 2048) and a largest difference of a
//! few sqrt(n) u (3e-6 for n = 2048). The kernels also regroup the sum
//! (`s * dot(q, x) + b * sum(x)` per 8 columns instead of `sum((s q + b) x)`), which changes
//! the rounding but not its order of size: every term involved is bounded by |w| |x| with
//! |w| <= 3. lavapipe measures exactly that (worst qmatvec nmse 3.1e-12, max 2.4e-6, both
//! at 2048 columns); the bounds (1e-10, 1e-5) sit 30x / 4x over it, and 10^4x / 100x under
//! a relative error of 1e-3 on every output (nmse 1e-6). One code off by one changes an
//! output by |s x| (up to 0.1 of a typical output here): `metric_catches_small_errors`
//! checks that such a single error fails. Measured values are printed with
//! `cargo test --release --test qkernels -- --nocapture`.
//!
//! There is no skipping: without a GPU adapter every test fails (CI runs lavapipe).

use moestream::gpu::kernels::{self, Kernel};
use moestream::gpu::params::{
    MoeDownQParams, MoeDownQmmParams, MoeGateUpQParams, MoeGateUpQmmParams, QEmbeddingParams,
    QMatMulParams, QMatVecParams, LINEAR_BIAS, LINEAR_NORM_OUT_INTERLEAVED, LINEAR_NORM_OUT_Q8,
    LINEAR_RESIDUAL, LINEAR_X_INTERLEAVED, LINEAR_X_NORM, LINEAR_X_Q8, LINEAR_X_RAW_NORM,
};
use moestream::gpu::testing::{self, KernelRunner};
use moestream::reference;
use moestream::{
    format::{AffineQuant, DType, WeightFormat},
    store::ExpertLayout,
};

// ---------------------------------------------------------------------------------------
// Bounds. The measured worst values are printed by each test (`-- --nocapture`).

/// Dequantization alone (embedding lookup): `s * q + b` per value, one or two f32
/// roundings (the GPU may fuse the multiply-add, the CPU does not): at most 1 ulp of the
/// larger of |s q| and |b|, relative to outputs of size ~1.
const DEQUANT: Tol = Tol {
    nmse: 1e-12,
    max_rel: 1e-6,
    floor: 0.0,
};

/// Reductions (every mat-vec / mat-mat / expert projection): dot products of up to 2048
/// terms in another order and grouping than the CPU's: nmse of order n u^2 = 7e-12 and a max
/// difference of a few sqrt(n) u = 3e-6 relative for n = 2048 (see the top of the file).
const REDUCTION: Tol = Tol {
    nmse: 1e-10,
    max_rel: 1e-5,
    floor: 0.0,
};

/// A dot product of inputs rounded to f16 (relative error up to 2^-11 each, about
/// 2.8e-4 rms) summed in f32: nmse ~1e-7 for random signs; bounded 10x above that.
const HALF_INPUTS: Tol = Tol {
    nmse: 1e-6,
    max_rel: 4e-3,
    floor: 0.0,
};

// ---------------------------------------------------------------------------------------
// Harness (after tests/kernels.rs).

#[path = "common/harness.rs"]
mod harness;
use harness::*;

/// Runs one dispatch of a quantized kernel (see [`harness::run_kernel`]).
fn run(
    kernel: Kernel,
    q: &AffineQuant,
    params: &[u32],
    buffers: &[&[u8]],
    groups: (u32, u32),
) -> Vec<Vec<u8>> {
    run_kernel(
        kernel,
        Some(q.scale_dtype),
        Some((q.bits, q.group_size)),
        params,
        buffers,
        groups,
    )
}

/// One `qmatvec` of `m` (`rows` x `cols`) with x given as bytes, `flags` and `x_offset`,
/// no bias or residual, as the engine runs it with 4 rows per team: the outputs.
fn qmatvec_plain(
    m: &QMat,
    (rows, cols): (usize, usize),
    x: &[u8],
    flags: u32,
    x_offset: u32,
) -> Vec<f32> {
    let out = run(
        Kernel::QMatVec,
        &m.q,
        QMatVecParams {
            rows: rows as u32,
            cols: cols as u32,
            row_base: 0,
            flags,
            x_offset,
            scales_word: m.scales_word,
            biases_word: m.biases_word,
            team: runner().team(cols),
            ..Default::default()
        }
        .words(),
        &[
            &m.bytes,
            x,
            &[],
            &[],
            &f32_bytes(&vec![0.0; rows]),
            &m.bytes,
            &[], // the normalized-row output (unused)
        ],
        kernels::qmatvec_groups(rows as u32, runner().team(cols), 4),
    );
    to_f32(&out[4])
}

/// The ways a team kernel (`qmatvec`, `moe_gate_up_q`, `moe_down_q`) runs for rows of
/// `cols` codes: as the engine runs it (the subgroup variant where the adapter has
/// subgroups, the team being the subgroup), and the portable variant with teams of 4, 16
/// and 64 invocations; in the subgroup variant also with a team of part of a subgroup (4
/// invocations) and of the whole workgroup (64).
fn team_setups(cols: usize) -> Vec<(&'static KernelRunner, u32, String)> {
    let engine = runner();
    let mut setups = vec![
        (
            engine,
            engine.team(cols),
            format!("{} team {}", engine.variant().name(), engine.team(cols)),
        ),
        (portable_runner(), 4, "portable team 4".into()),
        (portable_runner(), 16, "portable team 16".into()),
        (portable_runner(), 64, "portable team 64".into()),
    ];
    if engine.variant().subgroups && engine.team(cols) > 4 {
        // A team of part of a subgroup: its lanes' sums exchanged by shuffles.
        setups.push((
            engine,
            4,
            format!("{} team 4 (part of a subgroup)", engine.variant().name()),
        ));
    }
    if engine.variant().subgroups && engine.team(cols) != 64 {
        // A wide team: the workgroup's subgroups, added through workgroup memory.
        setups.push((
            engine,
            64,
            format!("{} team 64 (wide)", engine.variant().name()),
        ));
    }
    setups
}

/// As [`run`], on the given runner.
fn run_on(
    on: &KernelRunner,
    kernel: Kernel,
    q: &AffineQuant,
    params: &[u32],
    buffers: &[&[u8]],
    groups: (u32, u32),
) -> Vec<Vec<u8>> {
    run_kernel_on(
        on,
        kernel,
        Some(q.scale_dtype),
        Some((q.bits, q.group_size)),
        params,
        buffers,
        groups,
    )
}

/// A 2-D grid of at least `n` workgroups, 2 wide: exercises the `wid.y` part of the
/// linearized index that the engine's grid only reaches past 65535 workgroups, and (for
/// odd `n`) a surplus workgroup that must write nothing.
fn grid_2d(n: u32) -> (u32, u32) {
    (2, n.div_ceil(2).max(1))
}

fn rms(v: &[f32]) -> f64 {
    (v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

// ---------------------------------------------------------------------------------------
// Quantized matrices.

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
const BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];
const GROUPS: [u32; 3] = [32, 64, 128];

fn align16(n: usize) -> usize {
    n.div_ceil(16) * 16
}

/// Packs `codes` (`rows x cols`, each below 2^bits) as MLX does: per row, a little-endian
/// bit stream, code `c` at bits `[c * bits, (c + 1) * bits)`, in `cols * bits / 32` u32
/// words (codes of 3, 5 and 6 bits straddle words).
fn pack(codes: &[u32], rows: usize, cols: usize, bits: u32) -> Vec<u32> {
    let bits = bits as usize;
    assert_eq!(cols * bits % 32, 0, "{cols} columns of {bits} bits");
    let wpr = cols * bits / 32;
    let mut words = vec![0u32; rows * wpr];
    for r in 0..rows {
        let row = &mut words[r * wpr..(r + 1) * wpr];
        for c in 0..cols {
            let q = codes[r * cols + c];
            assert!(q >> bits == 0, "code {q} does not fit {bits} bits");
            let (w, off) = ((c * bits) / 32, (c * bits) % 32);
            row[w] |= q << off;
            if off + bits > 32 {
                row[w + 1] |= q >> (32 - off);
            }
        }
    }
    words
}

/// A quantized `[rows, cols]` matrix: its stored bytes and what they stand for.
struct QMat {
    rows: usize,
    cols: usize,
    q: AffineQuant,
    /// `[codes][pad to 16 B][scales][pad][biases]`, as `WeightFormat::parts` lays it out.
    bytes: Vec<u8>,
    /// The codes and the decoded scales / biases (in f32) they were packed from.
    codes: Vec<u32>,
    scales: Vec<f32>,
    /// Word offsets of the scales and biases from the start of `bytes`.
    scales_word: u32,
    biases_word: u32,
    /// The dequantized matrix, as `moestream::format::WeightFormat::decode` reads `bytes`.
    values: Vec<f32>,
}

impl QMat {
    /// Random codes; scales uniform in +-2 / (2^bits - 1) (so |s q| <= 2, half of them
    /// negative) and biases uniform in +-1, rounded to the scale dtype.
    fn random(rng: &mut Rng, rows: usize, cols: usize, q: AffineQuant) -> QMat {
        let n_groups = rows * cols / q.group_size as usize;
        let codes: Vec<u32> = (0..rows * cols)
            .map(|_| rng.below(1 << q.bits) as u32)
            .collect();
        let smax = 2.0 / ((1u32 << q.bits) - 1) as f32;
        let scales = rng.vec(n_groups, smax);
        let biases = rng.vec(n_groups, 1.0);
        QMat::from_parts(rows, cols, q, codes, &scales, &biases)
    }

    fn from_parts(
        rows: usize,
        cols: usize,
        q: AffineQuant,
        codes: Vec<u32>,
        scales: &[f32],
        biases: &[f32],
    ) -> QMat {
        let words = pack(&codes, rows, cols, q.bits);
        let sb = q.scale_dtype.encode(scales);
        let bb = q.scale_dtype.encode(biases);
        let so = align16(words.len() * 4);
        let bo = so + align16(sb.len());
        let mut bytes = vec![0u8; bo + bb.len()];
        bytes[..words.len() * 4].copy_from_slice(&u32_bytes(&words));
        bytes[so..so + sb.len()].copy_from_slice(&sb);
        bytes[bo..].copy_from_slice(&bb);
        let format = WeightFormat::Affine(q);
        assert_eq!(
            bytes.len(),
            format.stored_bytes(rows, cols),
            "layout of {rows}x{cols} {format}"
        );
        let values = format.decode(&bytes, rows, cols);
        let m = QMat {
            rows,
            cols,
            q,
            bytes,
            codes,
            scales: q.scale_dtype.decode(&sb),
            scales_word: (so / 4) as u32,
            biases_word: (bo / 4) as u32,
            values,
        };
        m.check_round_trip(&q.scale_dtype.decode(&bb));
        m
    }

    /// `moestream`'s dequantizer reads back exactly the codes, scales and biases packed.
    fn check_round_trip(&self, biases: &[f32]) {
        let g = self.q.group_size as usize;
        for r in 0..self.rows {
            for c in 0..self.cols {
                let i = r * self.cols + c;
                let gi = r * (self.cols / g) + c / g;
                let want = self.scales[gi] * self.codes[i] as f32 + biases[gi];
                assert_eq!(
                    self.values[i].to_bits(),
                    want.to_bits(),
                    "{}x{} {}: packed value ({r}, {c}) dequantizes to {}, expected {want}",
                    self.rows,
                    self.cols,
                    WeightFormat::Affine(self.q),
                    self.values[i]
                );
            }
        }
    }

    /// The typical size of a dot product of a row with a vector of rms `x_rms`.
    fn dot_scale(&self, x_rms: f64) -> f64 {
        (self.cols as f64).sqrt() * rms(&self.values) * x_rms
    }
}

fn quant(bits: u32, group: u32, dtype: DType) -> AffineQuant {
    AffineQuant::new(bits, group, dtype).expect("a supported quantization")
}

// ---------------------------------------------------------------------------------------
// Self-checks of the harness.

#[test]
fn every_quantized_kernel_is_covered() {
    let covered = [
        Kernel::QMatVec,
        Kernel::QMatMul,
        Kernel::QMatMulCoop,
        Kernel::QEmbedding,
        Kernel::MoeGateUpQ,
        Kernel::MoeDownQ,
        Kernel::MoeGateUpQmm,
        Kernel::MoeGateUpQmmCoop,
        Kernel::MoeDownQmm,
        Kernel::MoeDownQmmCoop,
    ];
    for k in Kernel::ALL {
        assert_eq!(
            k.is_quantized(),
            covered.contains(&k),
            "kernel {}: is_quantized() disagrees with this file's coverage",
            k.name()
        );
        if k.is_quantized() {
            let (fields, bindings) = interface(k);
            assert!(fields > 0 && bindings > 0, "{}: interface", k.name());
            assert!(k.reads_weights(), "{}: WDT is the scale dtype", k.name());
            let mut want = vec![("WDT", 2.0), ("BITS", 5.0), ("GROUP", 32.0)];
            if k.uses_teams() {
                // Rows per team, 4 unless the engine lowers it for a matrix of few rows.
                want.push(("ROWS", 4.0));
            }
            if k.pipeline_flags().is_some() {
                // Set per dispatch from the flags parameter.
                want.push(("FLAGS", 0.0));
            }
            assert_eq!(k.constants(2, Some((5, 32))), want, "{}", k.name());
        }
    }
    // Kernels that are not quantized take no BITS / GROUP, whatever is passed.
    assert_eq!(
        Kernel::MatVec.constants(1, Some((4, 64))),
        vec![("WDT", 1.0)]
    );
    assert!(Kernel::RmsNorm.constants(0, None).is_empty());
    // Rows per team: 2, 1 for chunks of fewer than 64 rows.
    assert_eq!(kernels::qmatvec_rows_per_team(32), 1);
    assert_eq!(kernels::qmatvec_rows_per_team(128), 2);
    // Whole-workgroup teams for few, long rows only.
    assert!(kernels::qmatvec_wide_team(1024, 4096) && kernels::qmatvec_wide_team(768, 2048));
    assert!(!kernels::qmatvec_wide_team(4096, 4096) && !kernels::qmatvec_wide_team(2048, 768));
    assert!(!kernels::qmatvec_wide_team(128, 2048));
    assert_eq!(kernels::qmatvec_rows_per_team(65536), 2);
    assert_eq!(kernels::qmatvec_groups(4096, 32, 4), (512, 1));
    assert_eq!(kernels::qmatvec_groups(4096, 32, 1), (2048, 1));
    assert_eq!(kernels::qmatvec_groups(4096, 32, 3), (2048, 1)); // unsupported: 1 row
}

#[test]
#[should_panic(expected = "BITS and GROUP are required")]
fn quantized_kernel_constants_need_bits_and_group() {
    let _ = Kernel::QMatVec.constants(0, None);
}

#[test]
fn packer_round_trips_through_moestream_dequantize() {
    // Every width and group size, odd row counts, and rows whose words straddle.
    let mut rng = Rng::new(1);
    let mut checked = 0;
    for bits in BITS {
        for group in GROUPS {
            for (i, &cols) in [128usize, 384, 640].iter().enumerate() {
                let q = quant(bits, group, DTYPES[i]);
                if cols % group as usize != 0 {
                    continue;
                }
                // (QMat::random asserts the round trip value by value.)
                let m = QMat::random(&mut rng, 3, cols, q);
                checked += m.values.len();
            }
        }
    }
    // A hand-made case: 3-bit codes 0..7 repeated (they straddle words 0/1 at column 10
    // and 1/2 at column 21), scale 2 and bias -1: bits 30..32 of word 0 hold code 10 = 2
    // (binary 010) -> bit 31 set, bit 0 of word 1 clear.
    let q = quant(3, 32, DType::F32);
    let codes: Vec<u32> = (0..32).map(|i| i % 8).collect();
    let words = pack(&codes, 1, 32, 3);
    assert_eq!(words.len(), 3);
    assert_eq!(words[0], 0b10_001_000_111_110_101_100_011_010_001_000);
    let m = QMat::from_parts(1, 32, q, codes.clone(), &[2.0], &[-1.0]);
    let want: Vec<f32> = codes.iter().map(|&c| 2.0 * c as f32 - 1.0).collect();
    assert_eq!(m.values, want);
    println!("packer: {checked} values round-tripped");
}

#[test]
fn metric_catches_small_errors() {
    // A real qmatvec output (4-bit, group 64, bf16 scales, 33 x 384) against its
    // reference.
    let mut rng = Rng::new(2);
    let q = quant(4, 64, DType::BF16);
    let (rows, cols) = (33usize, 384usize);
    let m = QMat::random(&mut rng, rows, cols, q);
    let x = rng.vec(cols, 1.0);
    let got = qmatvec_plain(&m, (rows, cols), &f32_bytes(&x), 0, 0);
    let want = reference::matmul(&m.values, rows, cols, &x, 1);
    let tol = REDUCTION.floor(m.dot_scale(rms(&x)));
    compare(&got, &want, tol).expect("the unperturbed output passes");
    // A relative error of 1e-3 on every value (nmse 1e-6).
    let scaled: Vec<f32> = got.iter().map(|v| v * 1.001).collect();
    assert!(compare(&scaled, &want, tol).is_err());
    // One value off by 1e-3 of the typical output: caught by the mean and by the max.
    let mut one = got.clone();
    one[17] += (1e-3 * tol.floor) as f32;
    let e = compare(&one, &want, tol).unwrap_err();
    assert!(e.starts_with("nmse above"), "{e}");
    let e = compare(&one, &want, Tol { nmse: 1.0, ..tol }).unwrap_err();
    assert!(e.starts_with("max |diff| above"), "{e}");
    // One code off by one in the weights the GPU reads (row 5, at the column where that
    // moves the output most: |s x| ~ 0.1 of a typical output of ~10), the reference
    // unchanged: a single mis-unpacked code fails the comparison.
    let c = (0..cols)
        .max_by(|&a, &b| {
            let w = |c: usize| (m.scales[(5 * cols + c) / 64] * x[c]).abs();
            w(a).total_cmp(&w(b))
        })
        .expect("columns");
    let mut codes = m.codes.clone();
    let i = 5 * cols + c;
    codes[i] = if codes[i] == 15 { 14 } else { codes[i] + 1 };
    let groups = rows * cols / 64;
    let biases = q
        .scale_dtype
        .decode(&m.bytes[m.biases_word as usize * 4..m.biases_word as usize * 4 + groups * 2]);
    let bad = QMat::from_parts(rows, cols, q, codes, &m.scales, &biases);
    let bad_out = qmatvec_plain(&bad, (rows, cols), &f32_bytes(&x), 0, 0);
    let e = compare(&bad_out, &want, tol).unwrap_err();
    println!("one code off by one: {e}");
    // A NaN fails, and so does a wrong length.
    let mut nan = got.clone();
    nan[3] = f32::NAN;
    assert!(compare(&nan, &want, tol).is_err());
    assert!(compare(&got[1..], &want, tol).is_err());
}

// ---------------------------------------------------------------------------------------
// qmatvec.

/// Column counts of the mat-vec tests; each (bits, group) takes those that are multiples
/// of the group.
const QMATVEC_COLS: [usize; 5] = [32, 96, 128, 384, 2048];
const QMATVEC_ROWS: [usize; 4] = [1, 3, 33, 67];

#[test]
fn qmatvec() {
    let mut ck = Checker::new("qmatvec");
    let mut rng = Rng::new(10);
    let mut case_no = 0usize;
    for bits in BITS {
        for group in GROUPS {
            for dtype in DTYPES {
                let q = quant(bits, group, dtype);
                for &cols in QMATVEC_COLS.iter().filter(|&&c| c % group as usize == 0) {
                    for &rows in &QMATVEC_ROWS {
                        case_no += 1;
                        // Bias, residual, and every third case x interleaved; 2- to 6-bit
                        // cases with x at offset 0, every third x in the 8+8-bit layout.
                        let il = case_no % 3 == 0;
                        let q8 = kernels::reads_q8_activations(bits) && case_no % 6 == 4;
                        let flags =
                            (case_no % 4) as u32 | (u32::from(il) << 2) | (u32::from(q8) << 3);
                        // Every other case writes into the middle of a wider output at
                        // row_base, reads x from x_offset (a multiple of 4: x is read as
                        // vec4s), on a 2-D grid.
                        let shifted = case_no % 2 == 1;
                        let (row_base, extra, x_offset) =
                            if shifted { (6, 5, 12) } else { (0, 0, 0) };
                        let total = row_base + rows + extra;
                        let case = format!(
                            "{bits}-bit g{group} {dtype} rows {rows} cols {cols} flags {flags:#x} row_base {row_base}"
                        );
                        let m = QMat::random(&mut rng, rows, cols, q);
                        let mut x = rng.vec(x_offset + cols + 3, 1.0);
                        let mut x_row = x[x_offset..x_offset + cols].to_vec();
                        let mut x_bytes = None;
                        if il {
                            let row = interleave(&x_row, cols);
                            x[x_offset..x_offset + cols].copy_from_slice(&row);
                        }
                        if q8 {
                            // The kernel's exact input: the values the layout stands for.
                            assert_eq!(x_offset, 0);
                            let (words, values) = testing::q8_row(&x_row);
                            x_bytes = Some(u32_bytes(&words));
                            x_row = values;
                        }
                        let bias = rng.vec(total, 1.0);
                        let resid = rng.vec(total, 1.0);
                        let before = rng.vec(total, 1.0);
                        let mut want = reference::matmul(&m.values, rows, cols, &x_row, 1);
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
                        let setups = team_setups(cols);
                        let (on, team, how) = &setups[case_no / 2 % setups.len()];
                        // Rows per team (the ROWS pipeline constant) in turn.
                        let rpt = [4u32, 2, 1][case_no / 8 % 3];
                        let case = format!("{case} {how} {rpt} rows per team");
                        let g = kernels::qmatvec_groups(rows as u32, *team, rpt);
                        let groups = if shifted { grid_2d(g.0 * g.1) } else { g };
                        let out = run_kernel_rows_on(
                            on,
                            Kernel::QMatVec,
                            Some(q.scale_dtype),
                            Some((q.bits, q.group_size)),
                            rpt,
                            QMatVecParams {
                                rows: rows as u32,
                                cols: cols as u32,
                                row_base: row_base as u32,
                                flags,
                                x_offset: x_offset as u32,
                                scales_word: m.scales_word,
                                biases_word: m.biases_word,
                                team: *team,
                                ..Default::default()
                            }
                            .words(),
                            &[
                                &m.bytes,
                                &x_bytes.unwrap_or_else(|| f32_bytes(&x)),
                                &f32_bytes(&bias),
                                &f32_bytes(&resid),
                                &f32_bytes(&before),
                                &m.bytes, // `ws`: the weights again, as words
                                &[],      // the normalized-row output (unused)
                            ],
                            groups,
                        );
                        let got = to_f32(&out[4]);
                        ck.untouched(&case, &got, &before, &written);
                        ck.close(
                            &case,
                            &pick(&got, &written),
                            &want,
                            REDUCTION.floor(m.dot_scale(rms(&x))),
                        );
                    }
                }
            }
        }
    }
    ck.report();
}

/// One `qmatvec` dispatch of the two norm tests below: `m` on `on` with teams of `team`
/// invocations of `rpt` rows, x at offset 0; `bufs` are x, bias, resid, y and the
/// normalized-row output (the weights go in twice, as `w` and as `ws`).
fn qmatvec_norm_run(
    (on, m, team, rpt): (&KernelRunner, &QMat, u32, u32),
    (rows, cols, row_base, flags, eps): (usize, usize, usize, u32, f32),
    bufs: [&[u8]; 5],
    grid: (u32, u32),
) -> Vec<Vec<u8>> {
    let [x, bias, resid, y, yq] = bufs;
    run_kernel_rows_on(
        on,
        Kernel::QMatVec,
        Some(m.q.scale_dtype),
        Some((m.q.bits, m.q.group_size)),
        rpt,
        QMatVecParams {
            rows: rows as u32,
            cols: cols as u32,
            row_base: row_base as u32,
            flags,
            x_offset: 0,
            scales_word: m.scales_word,
            biases_word: m.biases_word,
            team,
            eps,
            ..Default::default()
        }
        .words(),
        &[&m.bytes, x, bias, resid, y, &m.bytes, yq],
        grid,
    )
}

/// What the two norm tests below want of rows `0..rows` of `m`: `inv * dot(W[r], x)` in
/// f64, plus the bias and the residual at `row_base + r` where `flags` say.
fn normed_rows(
    m: &QMat,
    x: &[f64],
    inv: f64,
    flags: u32,
    (bias, resid): (&[f32], &[f32]),
    row_base: usize,
) -> Vec<f32> {
    let (rows, cols) = (m.values.len() / x.len(), x.len());
    (0..rows)
        .map(|r| {
            let w = &m.values[r * cols..(r + 1) * cols];
            let dot: f64 = w.iter().zip(x).map(|(&w, &v)| f64::from(w) * v).sum();
            let mut v = inv * dot;
            if flags & LINEAR_BIAS != 0 {
                v += f64::from(bias[row_base + r]);
            }
            if flags & LINEAR_RESIDUAL != 0 {
                v += f64::from(resid[row_base + r]);
            }
            v as f32
        })
        .collect()
}

/// `qmatvec`'s grid for `rows` rows, or (`two_d`) as many workgroups on a 2-D grid.
fn qmatvec_norm_grid(rows: usize, team: u32, rpt: u32, two_d: bool) -> (u32, u32) {
    let grid = kernels::qmatvec_groups(rows as u32, team, rpt);
    if two_d {
        grid_2d(grid.0 * grid.1)
    } else {
        grid
    }
}

/// `qmatvec` with `LINEAR_X_NORM`: x is an RMSNorm's input `g * x` not yet divided by its
/// RMS, as `kernels/moe_combine_norm.wgsl` leaves it (in the 8+8-bit layout for 2- to 6-bit
/// weights, and interleaved f32 for every width), followed by each 32-value block's sum of
/// squares of x; the outputs must be `dot(W[r], g x) / sqrt(mean(x^2) + eps)`, bias and
/// residual added after the scaling. Both layouts run with every rows per team (4 adds up
/// the sums of squares on its own, 2 and 1 carry them in a free component), each also
/// through the two-block loop (more blocks than lanes), on every team setup, with an eps
/// that matters. One pipeline per width (rows per team, variant, group and scale dtype in
/// turn): compiling them is most of the test's time on lavapipe.
#[test]
fn qmatvec_applies_a_norm_left_by_the_combine() {
    let mut ck = Checker::new("qmatvec norm");
    let mut rng = Rng::new(12);
    let mut case_no = 0usize;
    // (x in the 8+8-bit layout, rows per team) of the cases whose lanes ran the two-block
    // loop (nb > team), not only its tail.
    let mut looped = std::collections::BTreeSet::new();
    for (bi, bits) in BITS.into_iter().enumerate() {
        let rpt = [4u32, 2, 1][bi % 3];
        let portable = bi % 2 == 1;
        let group = [32u32, 64][bi.div_ceil(2) % 2];
        let dtype = DTYPES[bi / 2 % 3];
        let mut k = 0usize;
        for cols in [64usize, 384, 2048] {
            // The team setups of this width's variant in turn.
            let setups: Vec<_> = team_setups(cols)
                .into_iter()
                .filter(|(on, ..)| std::ptr::eq(*on, portable_runner()) == portable)
                .collect();
            for q8 in [true, false] {
                if q8 && !kernels::reads_q8_activations(bits) {
                    continue;
                }
                let (on, team, how) = &setups[(k / 2 + bi) % setups.len()];
                k += 1;
                case_no += 1;
                let rows = [1usize, 3, 67][case_no % 3];
                let layout = if q8 {
                    LINEAR_X_Q8
                } else {
                    LINEAR_X_INTERLEAVED
                };
                let flags = (case_no / 2 % 4) as u32 | layout | LINEAR_X_NORM;
                // An eps of the order of the mean square now and then, so that leaving it
                // out fails.
                let eps = if case_no % 5 == 2 { 0.5f32 } else { 1e-6 };
                // Every other case writes into the middle of a wider output, on a 2-D grid.
                let shifted = case_no / 3 % 2 == 1;
                let (row_base, extra) = if shifted { (6, 5) } else { (0, 0) };
                let total = row_base + rows + extra;
                let q = quant(bits, group, dtype);
                let m = QMat::random(&mut rng, rows, cols, q);
                let nb = cols / 32;
                // The norm's input, its weight, and the row the combine leaves: g * x in the
                // layout, then the blocks' sums of squares of x.
                let x = rng.vec(cols, 0.5 + (case_no % 4) as f32 * 0.5);
                let g = rng.vec(cols, 1.5);
                let gx: Vec<f32> = g.iter().zip(&x).map(|(g, x)| g * x).collect();
                let block_sq: Vec<f32> = x
                    .chunks_exact(32)
                    .map(|b| b.iter().map(|v| v * v).sum())
                    .collect();
                let (x_bytes, values) = if q8 {
                    // The kernel's exact input: the values the layout stands for.
                    let (mut words, values) = testing::q8_row(&gx);
                    assert_eq!(words.len(), 18 * nb);
                    words.extend(block_sq.iter().map(|s| s.to_bits()));
                    (u32_bytes(&words), values)
                } else {
                    let mut row = interleave(&gx, cols);
                    row.extend(&block_sq);
                    (f32_bytes(&row), gx.clone())
                };
                let ms = x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / cols as f64;
                let inv = 1.0 / (ms + f64::from(eps)).sqrt();
                let bias = rng.vec(total, 1.0);
                let resid = rng.vec(total, 1.0);
                let before = rng.vec(total, 1.0);
                let values64: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
                let want = normed_rows(&m, &values64, inv, flags, (&bias, &resid), row_base);
                let mut written = vec![false; total];
                written[row_base..row_base + rows].fill(true);
                if nb > *team as usize {
                    looped.insert((q8, rpt));
                }
                let case = format!(
                    "{bits}-bit g{group} {dtype} rows {rows} cols {cols} flags {flags:#x} \
                     eps {eps} row_base {row_base} {how} {rpt} rows per team"
                );
                let grid = qmatvec_norm_grid(rows, *team, rpt, shifted);
                let out = qmatvec_norm_run(
                    (on, &m, *team, rpt),
                    (rows, cols, row_base, flags, eps),
                    [
                        &x_bytes,
                        &f32_bytes(&bias),
                        &f32_bytes(&resid),
                        &f32_bytes(&before),
                        &[],
                    ],
                    grid,
                );
                let got = to_f32(&out[4]);
                ck.untouched(&case, &got, &before, &written);
                ck.close(
                    &case,
                    &pick(&got, &written),
                    &want,
                    REDUCTION.floor(m.dot_scale(rms(&values) * inv)),
                );
            }
        }
    }
    let all: std::collections::BTreeSet<(bool, u32)> = [true, false]
        .into_iter()
        .flat_map(|q8| [4u32, 2, 1].map(|rpt| (q8, rpt)))
        .collect();
    assert_eq!(
        looped, all,
        "every layout and rows per team through the two-block loop"
    );
    ck.report();
}

/// `qmatvec` with `LINEAR_X_RAW_NORM`: x is an RMSNorm's raw input (f32, natural layout,
/// at offset 0) and the norm's weight g is bound in place of the residual; the outputs must
/// be `dot(W[r], g x) / sqrt(mean(x^2) + eps)` (bias added after the scaling), and with
/// `LINEAR_NORM_OUT_Q8` (`LINEAR_NORM_OUT_INTERLEAVED`) the workgroups also write the
/// normalized row `g x / rms` into the last binding in the 8+8-bit (interleaved f32)
/// layout, nothing past it. Both layouts run with every team setup and rows per team, on
/// rows from 1 to 130 and 64 to 2048 columns: so also with fewer workgroups than the row's
/// blocks / 16, the row writer going round more than once, and on a 2-D grid whose
/// workgroup index takes wid.y. One pipeline per width (rows per team, variant, group and
/// scale dtype in turn), as the sibling test above.
#[test]
fn qmatvec_applies_a_norm_to_its_raw_input_and_writes_the_row() {
    let mut ck = Checker::new("qmatvec raw norm");
    let mut rng = Rng::new(13);
    let mut case_no = 0usize;
    // The setups by name; the team of the engine's own one is the same at every width
    // where the adapter has subgroups (and a valid team at any width otherwise).
    let setups = team_setups(2048);
    let mut covered = std::collections::BTreeSet::new();
    // Output layouts (8+8-bit?) of the cases whose row writer went round more than once,
    // and of those on a 2-D grid where workgroups with wid.y > 0 write part of the row.
    let mut rounds = std::collections::BTreeSet::new();
    let mut two_d = std::collections::BTreeSet::new();
    // The largest relative error of a value of the interleaved row.
    let mut worst_row = 0f64;
    for (bi, bits) in BITS.into_iter().enumerate() {
        let rpt = [4u32, 2, 1][bi % 3];
        let portable = bi % 2 == 1;
        let group = [32u32, 64][bi.div_ceil(2) % 2];
        let dtype = DTYPES[bi / 2 % 3];
        let q = quant(bits, group, dtype);
        let mine = setups
            .iter()
            .filter(|(on, ..)| std::ptr::eq(*on, portable_runner()) == portable);
        for (on, team, how) in mine {
            for q8 in [true, false] {
                let cols = [2048usize, 64, 384][case_no % 3];
                let rows = [1usize, 3, 67, 130][case_no % 4];
                let eps = if case_no / 5 % 2 == 0 { 1e-6f32 } else { 0.5 };
                let out_layout = if q8 {
                    LINEAR_NORM_OUT_Q8
                } else {
                    LINEAR_NORM_OUT_INTERLEAVED
                };
                let bias_flag = if (case_no / 3 + bi) % 2 == 0 {
                    LINEAR_BIAS
                } else {
                    0
                };
                let flags = LINEAR_X_RAW_NORM | out_layout | bias_flag;
                // Now and then (and for 67 rows of 2048 columns in the 8+8-bit layout) the
                // middle of a wider output, on a 2-D grid.
                let shifted = case_no % 5 == 2 || case_no % 12 == 6;
                case_no += 1;
                let (row_base, extra) = if shifted { (6, 5) } else { (0, 0) };
                let total = row_base + rows + extra;
                let nb = cols / 32;
                let m = QMat::random(&mut rng, rows, cols, q);
                let x = rng.vec(cols, 2.0);
                let g = rng.vec(cols, 1.5);
                let ms = x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / cols as f64;
                let inv = 1.0 / (ms + f64::from(eps)).sqrt();
                let gx: Vec<f32> = g.iter().zip(&x).map(|(g, x)| g * x).collect();
                // The normalized row, in f64 and rounded.
                let norm: Vec<f64> = g
                    .iter()
                    .zip(&x)
                    .map(|(&g, &x)| f64::from(g) * f64::from(x) * inv)
                    .collect();
                let norm32: Vec<f32> = norm.iter().map(|&v| v as f32).collect();
                let bias = rng.vec(total, 1.0);
                let before = rng.vec(total, 1.0);
                let gx64: Vec<f64> = g
                    .iter()
                    .zip(&x)
                    .map(|(&g, &x)| f64::from(g) * f64::from(x))
                    .collect();
                let want = normed_rows(&m, &gx64, inv, flags, (&bias, &[]), row_base);
                let mut written = vec![false; total];
                written[row_base..row_base + rows].fill(true);
                let row_words = if q8 { 18 * nb } else { cols };
                let yq_before = vec![0x7fc0_0000u32; row_words + 3];
                let grid = qmatvec_norm_grid(rows, *team, rpt, shifted);
                let n_wg = (grid.0 * grid.1) as usize;
                if n_wg * 16 < nb {
                    rounds.insert(q8);
                }
                if grid.1 > 1 && nb > 16 * grid.0 as usize {
                    two_d.insert(q8);
                }
                covered.insert((q8, how.clone(), rpt));
                let case = format!(
                    "{bits}-bit g{group} {dtype} rows {rows} cols {cols} flags {flags:#x} \
                     eps {eps} row_base {row_base} grid {grid:?} {how} {rpt} rows per team"
                );
                let out = qmatvec_norm_run(
                    (on, &m, *team, rpt),
                    (rows, cols, row_base, flags, eps),
                    // `resid` holds the norm's weight.
                    [
                        &f32_bytes(&x),
                        &f32_bytes(&bias),
                        &f32_bytes(&g),
                        &f32_bytes(&before),
                        &u32_bytes(&yq_before),
                    ],
                    grid,
                );
                let got = to_f32(&out[4]);
                ck.untouched(&case, &got, &before, &written);
                ck.close(
                    &case,
                    &pick(&got, &written),
                    &want,
                    REDUCTION.floor(m.dot_scale(rms(&gx) * inv)),
                );
                // The normalized row.
                let yq = to_u32(&out[6]);
                assert!(
                    yq[row_words..].iter().all(|&w| w == 0x7fc0_0000),
                    "{case}: words written past the normalized row"
                );
                if q8 {
                    check_q8_row(&case, &yq[..row_words], &norm32);
                } else {
                    // g x / rms rounded a few times in f32 (the sum of squares, 1 / rms and
                    // two products): within 2e-6 of each value, relative.
                    let row: Vec<f32> = yq[..cols].iter().map(|&w| f32::from_bits(w)).collect();
                    for (j, (&got, &v)) in deinterleave(&row, cols).iter().zip(&norm).enumerate() {
                        let err = (f64::from(got) - v).abs();
                        if v != 0.0 {
                            worst_row = worst_row.max(err / v.abs());
                        }
                        assert!(
                            err <= 2e-6 * v.abs(),
                            "{case} value {j}: interleaved {got} want {v}"
                        );
                    }
                }
            }
        }
    }
    let all: std::collections::BTreeSet<(bool, String, u32)> = [true, false]
        .into_iter()
        .flat_map(|q8| {
            setups
                .iter()
                .flat_map(move |(_, _, how)| [4u32, 2, 1].map(|rpt| (q8, how.clone(), rpt)))
        })
        .collect();
    assert_eq!(
        covered, all,
        "every output layout with every team setup and rows per team"
    );
    let both: std::collections::BTreeSet<bool> = [true, false].into();
    assert_eq!(
        rounds, both,
        "the row writer round more than once, both layouts"
    );
    assert_eq!(
        two_d, both,
        "a 2-D grid whose second row of workgroups writes, both layouts"
    );
    println!("qmatvec raw norm: worst relative error of the interleaved row {worst_row:.3e}");
    ck.report();
}

/// The batched per-head `qmatvec` (`heads` > 0; latent attention's absorbed projections):
/// `heads` stacked matrices, group g = token * heads + head reading x at g * x_stride and
/// writing y from g * y_stride, on every team setup and rows per team; the gaps between
/// groups' outputs stay untouched.
#[test]
fn qmatvec_batched_heads() {
    let mut ck = Checker::new("qmatvec heads");
    let mut rng = Rng::new(11);
    let mut case_no = 0usize;
    // (bits, group, heads, rows per head, cols, tokens, x stride, y stride)
    let cases = [
        (
            4u32, 32u32, 4usize, 128usize, 32usize, 1usize, 48usize, 144usize,
        ),
        (4, 64, 3, 20, 128, 2, 128, 20),
        (8, 32, 2, 67, 64, 3, 68, 70),
        (3, 32, 2, 5, 96, 2, 100, 9),
    ];
    for (bits, group, heads, rows, cols, n, xs, ys) in cases {
        for dtype in DTYPES {
            let q = quant(bits, group, dtype);
            let m = QMat::random(&mut rng, heads * rows, cols, q);
            let x = rng.vec(n * heads * xs + 4, 1.0);
            let before = rng.vec(n * heads * ys + 6, 1.0);
            let mut want = before.clone();
            let mut written = vec![false; before.len()];
            for t in 0..n {
                for h in 0..heads {
                    let g = t * heads + h;
                    let w = &m.values[h * rows * cols..(h + 1) * rows * cols];
                    let y = reference::matmul(w, rows, cols, &x[g * xs..g * xs + cols], 1);
                    want[g * ys..g * ys + rows].copy_from_slice(&y);
                    written[g * ys..g * ys + rows].fill(true);
                }
            }
            for (on, team, how) in team_setups(cols) {
                case_no += 1;
                // Rows per team in turn: every fifth case, so that each layout runs each
                // with 2048 columns (64 blocks, more than a team of up to 32 lanes).
                let rpt = [4u32, 2, 1][case_no / 5 % 3];
                let case = format!(
                    "{bits}-bit g{group} {dtype} {heads} heads x {rows}x{cols}, {n} tokens, {how}, {rpt} rows per team"
                );
                let out = run_kernel_grid_on(
                    on,
                    Kernel::QMatVec,
                    Some(q.scale_dtype),
                    Some((q.bits, q.group_size)),
                    rpt,
                    QMatVecParams {
                        rows: rows as u32,
                        cols: cols as u32,
                        scales_word: m.scales_word,
                        biases_word: m.biases_word,
                        team,
                        heads: heads as u32,
                        x_stride: xs as u32,
                        y_stride: ys as u32,
                        ..Default::default()
                    }
                    .words(),
                    &[
                        &m.bytes,
                        &f32_bytes(&x),
                        &[],
                        &[],
                        &f32_bytes(&before),
                        &m.bytes,
                        &[], // the normalized-row output (unused)
                    ],
                    kernels::head_batch_groups(
                        kernels::qmatvec_head_blocks(rows as u32, team, rpt),
                        heads as u32,
                        n as u32,
                    ),
                );
                let got = to_f32(&out[4]);
                ck.untouched(&case, &got, &before, &written);
                ck.close(
                    &case,
                    &pick(&got, &written),
                    &pick(&want, &written),
                    REDUCTION.floor(m.dot_scale(rms(&x))),
                );
            }
        }
    }
    ck.report();
}

#[test]
fn qmatvec_grid_past_65535_workgroups() {
    // 262200 rows of 32 columns (2-bit: one word and one group per row) on the engine's
    // grid with teams of 64 (portable): 65550 workgroups of 4 rows, split by `grid_of`
    // into (32775, 2).
    let mut ck = Checker::new("qmatvec grid");
    let mut rng = Rng::new(11);
    let (rows, cols) = (262_200usize, 32usize);
    let g = kernels::qmatvec_groups(rows as u32, 64, 4);
    assert_eq!(g, (32775, 2));
    let q = quant(2, 32, DType::F16);
    let m = QMat::random(&mut rng, rows, cols, q);
    let x = rng.vec(cols, 1.0);
    let out = run_on(
        portable_runner(),
        Kernel::QMatVec,
        &q,
        QMatVecParams {
            rows: rows as u32,
            cols: cols as u32,
            scales_word: m.scales_word,
            biases_word: m.biases_word,
            team: 64,
            ..Default::default()
        }
        .words(),
        &[
            &m.bytes,
            &f32_bytes(&x),
            &[],
            &[],
            &f32_bytes(&vec![f32::NAN; rows]),
            &m.bytes,
            &[], // the normalized-row output (unused)
        ],
        g,
    );
    let want = reference::matmul(&m.values, rows, cols, &x, 1);
    ck.close(
        &format!("rows {rows}"),
        &to_f32(&out[4]),
        &want,
        REDUCTION.floor(m.dot_scale(rms(&x))),
    );
    ck.report();
}

#[test]
fn qmatvec_misaligned_x_offset_is_loud() {
    // x is read as vec4s: an x_offset that is not a multiple of 4 is not supported, and
    // makes every output NaN rather than silently wrong.
    let mut rng = Rng::new(12);
    let (rows, cols) = (5usize, 64usize);
    let q = quant(4, 32, DType::F32);
    let m = QMat::random(&mut rng, rows, cols, q);
    let x = rng.vec(cols + 8, 1.0);
    for x_offset in [1u32, 2, 3, 5] {
        let got = qmatvec_plain(&m, (rows, cols), &f32_bytes(&x), 0, x_offset);
        assert!(
            got.iter().all(|v| v.is_nan()),
            "x_offset {x_offset}: {got:?}"
        );
    }
}

#[test]
fn q8_activations_with_8_bit_weights_are_loud() {
    // The 8+8-bit activation layout pairs with 2- to 6-bit codes only; with 8-bit codes
    // the mat-vec writes NaN rather than a wrong dot product (moe_gate_up_q does the
    // same).
    let mut rng = Rng::new(13);
    let (rows, cols) = (5usize, 64usize);
    assert!(!kernels::reads_q8_activations(8));
    assert!((2..=6).all(kernels::reads_q8_activations));
    let q = quant(8, 32, DType::F16);
    let m = QMat::random(&mut rng, rows, cols, q);
    let (words, _) = testing::q8_row(&rng.vec(cols, 1.0));
    let got = qmatvec_plain(&m, (rows, cols), &u32_bytes(&words), 8, 0);
    assert!(got.iter().all(|v| v.is_nan()), "8-bit: {got:?}");
}

#[test]
fn quad_h_with_8_bit_down_is_loud() {
    // The quad 8+8-bit layout of h pairs with 2- to 6-bit codes only: an 8-bit down
    // projection given it writes NaN.
    let mut rng = Rng::new(14);
    let (hidden, inter) = (64usize, 64usize);
    let q = quant(8, 32, DType::BF16);
    let pg = page(&mut rng, q, q, hidden, inter, 2);
    let (words, _) = testing::quad_q8_row(&rng.vec(inter, 1.0));
    let d = pg.offs[2];
    let team = runner().team(inter);
    let out = run_kernel_rows_on(
        runner(),
        Kernel::MoeDownQ,
        Some(q.scale_dtype),
        Some((q.bits, q.group_size)),
        2,
        MoeDownQParams {
            hidden: hidden as u32,
            inter: inter as u32,
            assign_base: 0,
            n_assign: 1,
            slot_words: pg.slot_words,
            down_q: d[0],
            down_s: d[1],
            down_b: d[2],
            team,
            flags: MoeDownQParams::H_QUAD_Q8,
            ..Default::default()
        }
        .words(),
        &[
            &pg.bytes,
            &u32_bytes(&words),
            &u32_bytes(&assignment_words(&[(0, 1)])),
            &f32_bytes(&[1.0]),
            &f32_bytes(&vec![0.0; hidden]),
            &pg.bytes,
        ],
        kernels::moe_down_q_groups(hidden as u32, 1, team, 2),
    );
    let got = to_f32(&out[4]);
    assert!(got.iter().all(|v| v.is_nan()), "8-bit: {got:?}");
}

#[test]
fn quad_h_needs_whole_quads_per_workgroup() {
    // 64-invocation workgroups: teams of 64 with fewer than 4 rows cannot write quads.
    assert!(kernels::writes_quad_h(32, 2));
    assert!(kernels::writes_quad_h(8, 1));
    assert!(kernels::writes_quad_h(64, 4));
    assert!(!kernels::writes_quad_h(64, 2));
    assert!(!kernels::writes_quad_h(32, 1));
}

#[test]
fn expert_teams_split_subgroups_only_for_large_even_grids() {
    // 128 experts of 2048x768: 24 blocks a row, teams of 8 (8192 workgroups).
    assert_eq!(kernels::expert_team(32, 2048, 768, 128, 4), 8);
    // A decode token's 8: teams of 8 would leave 512 workgroups; 16 split 24 blocks
    // unevenly; so the subgroup.
    assert_eq!(kernels::expert_team(32, 2048, 768, 8, 4), 32);
    assert_eq!(kernels::expert_team(32, 768, 2048, 8, 2), 32);
    // Qwen3.5-397B-A17B's 10 experts: gate/up teams of 16, down teams of 8.
    assert_eq!(kernels::expert_team(32, 1024, 4096, 10, 2), 16);
    assert_eq!(kernels::expert_team(32, 4096, 1024, 10, 4), 8);
    // Never below 8 invocations, never above the subgroup.
    assert_eq!(kernels::expert_team(8, 2048, 768, 128, 4), 8);
    assert_eq!(kernels::expert_team(4, 2048, 768, 128, 4), 4);
    assert_eq!(kernels::expert_team(64, 2048, 768, 128, 4), 8);
    // 12 blocks a row: no team of 8 or 16 divides them.
    assert_eq!(kernels::expert_team(32, 4096, 384, 128, 4), 32);
    // Huge grids do not overflow.
    assert_eq!(kernels::expert_team(32, u32::MAX, 256, u32::MAX, 4), 8);
}

#[test]
fn quad_layout_round_trips() {
    let mut rng = Rng::new(15);
    let h: Vec<f32> = rng.vec(96, 3.0).into_iter().chain([0.0; 32]).collect();
    let (words, values) = testing::quad_q8_row(&h);
    let back = testing::quad_q8_values(&words).unwrap();
    assert_eq!(back, values);
    for (i, (v, x)) in values.iter().zip(&h).enumerate() {
        assert!((v - x).abs() <= 3.0 / 64516.0, "value {i}: {v} for {x}");
    }
    // A corrupted sum is caught.
    let mut bad = words.clone();
    bad[3 * 4 * (128 / 32)] ^= 0x40_0000;
    assert!(testing::quad_q8_values(&bad).is_err());
}

// ---------------------------------------------------------------------------------------
// qmatmul.

#[test]
fn qmatmul() {
    check_qmatmul(Kernel::QMatMul, "qmatmul", &[2, 17, 40]);
}

/// The cooperative-matrix mat-mat, where the adapter has cooperative matrices (not
/// lavapipe: there this test says so and checks nothing; with
/// `MOESTREAM_REQUIRE_COOPERATIVE_MATRICES=1`, as on the GPU machine, it fails instead).
/// Its inputs are rounded to f16, so its bound is f16's.
#[test]
fn qmatmul_coop() {
    if coop_unavailable("qmatmul_coop") {
        return;
    }
    check_qmatmul(Kernel::QMatMulCoop, "qmatmul_coop", &[2, 17, 40, 64, 100]);
}

/// Whether the cooperative-matrix kernel test `name` cannot run here (saying so), or
/// fails if `MOESTREAM_REQUIRE_COOPERATIVE_MATRICES=1` (as on the GPU machine).
fn coop_unavailable(name: &str) -> bool {
    if runner().cooperative_matrices() {
        return false;
    }
    let required = std::env::var("MOESTREAM_REQUIRE_COOPERATIVE_MATRICES").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{} has no cooperative matrices the kernels can use",
        runner().adapter_name()
    );
    println!(
        "{name}: not run: {} has no cooperative matrices",
        runner().adapter_name()
    );
    true
}

fn check_qmatmul(kernel: Kernel, name: &'static str, token_counts: &[usize]) {
    let coop = kernel == Kernel::QMatMulCoop;
    let mut ck = Checker::new(name);
    let mut rng = Rng::new(20);
    // Every width, with the group sizes and scale dtypes spread over them.
    let configs = [
        (2, 128, DType::F32),
        (3, 64, DType::BF16),
        (4, 64, DType::BF16),
        (4, 32, DType::F16),
        (5, 32, DType::F16),
        (6, 64, DType::BF16),
        (8, 128, DType::F32),
    ];
    let mut case_no = 0usize;
    for &(bits, group, dtype) in &configs {
        let q = quant(bits, group, dtype);
        for &(rows, cols) in &[
            (1usize, 128usize),
            (33, 384),
            (67, 256),
            (130, 512),
            (128, 256),
        ] {
            for &n_tokens in token_counts {
                case_no += 1;
                let flags = (case_no % 4) as u32;
                let (row_base, extra) = if case_no % 2 == 1 { (5, 3) } else { (0, 0) };
                let out_stride = row_base + rows + extra;
                let case = format!(
                    "{bits}-bit g{group} {dtype} rows {rows} cols {cols} tokens {n_tokens} flags {flags} row_base {row_base}"
                );
                let m = QMat::random(&mut rng, rows, cols, q);
                let x = rng.vec(n_tokens * cols, 1.0);
                let bias = rng.vec(out_stride, 1.0);
                let resid = rng.vec(n_tokens * out_stride, 1.0);
                let before = rng.vec(n_tokens * out_stride, 1.0);
                let prod = reference::matmul(&m.values, rows, cols, &x, n_tokens);
                let mut want = Vec::with_capacity(n_tokens * rows);
                let mut written = vec![false; before.len()];
                for t in 0..n_tokens {
                    for r in 0..rows {
                        let oi = t * out_stride + row_base + r;
                        let mut v = prod[t * rows + r];
                        if flags & 1 != 0 {
                            v += bias[row_base + r];
                        }
                        if flags & 2 != 0 {
                            v += resid[oi];
                        }
                        want.push(v);
                        written[oi] = true;
                    }
                }
                let out = run(
                    kernel,
                    &q,
                    QMatMulParams {
                        rows: rows as u32,
                        cols: cols as u32,
                        n_tokens: n_tokens as u32,
                        row_base: row_base as u32,
                        out_stride: out_stride as u32,
                        flags,
                        scales_word: m.scales_word,
                        biases_word: m.biases_word,
                    }
                    .words(),
                    &[
                        &m.bytes,
                        &f32_bytes(&x),
                        &f32_bytes(&bias),
                        &f32_bytes(&resid),
                        &f32_bytes(&before),
                    ],
                    if coop {
                        kernels::qmatmul_coop_groups(rows as u32, n_tokens as u32)
                    } else {
                        kernels::qmatmul_groups(rows as u32, n_tokens as u32)
                    },
                );
                let got = to_f32(&out[4]);
                ck.untouched(&case, &got, &before, &written);
                let tol = if coop { HALF_INPUTS } else { REDUCTION };
                ck.close(
                    &case,
                    &pick(&got, &written),
                    &want,
                    tol.floor(m.dot_scale(rms(&x))),
                );
            }
        }
    }
    ck.report();
}

// ---------------------------------------------------------------------------------------
// qembedding.

#[test]
fn qembedding() {
    let mut ck = Checker::new("qembedding");
    let mut rng = Rng::new(30);
    let vocab = 40usize;
    let mut case_no = 0usize;
    for bits in BITS {
        for group in GROUPS {
            let dtype = DTYPES[case_no % 3];
            let q = quant(bits, group, dtype);
            for &hidden in &[128usize, 384] {
                // A row chunk [row_start, row_start + row_count) of the vocabulary.
                for &(row_start, row_count) in &[(0usize, vocab), (13, 9)] {
                    case_no += 1;
                    let n_tokens = 11;
                    let ids: Vec<u32> = (0..n_tokens).map(|_| rng.below(vocab) as u32).collect();
                    let m = QMat::random(&mut rng, row_count, hidden, q);
                    let before = rng.vec(n_tokens * hidden, 1.0);
                    let mut want = before.clone();
                    let mut written = vec![false; want.len()];
                    for (t, &id) in ids.iter().enumerate() {
                        let id = id as usize;
                        if (row_start..row_start + row_count).contains(&id) {
                            let r = id - row_start;
                            want[t * hidden..(t + 1) * hidden]
                                .copy_from_slice(&m.values[r * hidden..(r + 1) * hidden]);
                            written[t * hidden..(t + 1) * hidden].fill(true);
                        }
                    }
                    let g = kernels::qembedding_groups(hidden as u32, n_tokens as u32);
                    for (gi, groups) in [g, grid_2d(g.0 * g.1)].into_iter().enumerate() {
                        let case = format!(
                            "{bits}-bit g{group} {dtype} hidden {hidden} chunk {row_start}+{row_count} grid {gi}"
                        );
                        let out = run(
                            Kernel::QEmbedding,
                            &q,
                            QEmbeddingParams {
                                hidden: hidden as u32,
                                n_tokens: n_tokens as u32,
                                row_start: row_start as u32,
                                row_count: row_count as u32,
                                scales_word: m.scales_word,
                                biases_word: m.biases_word,
                                ..Default::default()
                            }
                            .words(),
                            &[&u32_bytes(&ids), &m.bytes, &f32_bytes(&before)],
                            groups,
                        );
                        let got = to_f32(&out[2]);
                        ck.untouched(&case, &got, &before, &written);
                        // Values are |s q + b| <= 3; judged against a typical size of 1.
                        ck.close(
                            &case,
                            &pick(&got, &written),
                            &pick(&want, &written),
                            DEQUANT.floor(1.0),
                        );
                    }
                }
            }
        }
    }
    ck.report();
}

// ---------------------------------------------------------------------------------------
// MoE: quantized experts in cache slots.

/// A cache page of `n_slots` quantized experts laid out as the engine does: each expert
/// blob in the `ExpertLayout::swiglu_with` layout (gate and up in `gu`, down in `down`),
/// slots `slot_bytes` apart. Padding bytes are 0xFF (a NaN scale in every dtype), so a
/// read outside a tensor's parts poisons the output.
struct Page {
    bytes: Vec<u8>,
    slot_words: u32,
    /// Word offsets inside a slot of (codes, scales, biases) of gate, up and down.
    offs: [[u32; 3]; 3],
    /// (gate, up, down) of each slot.
    experts: Vec<[QMat; 3]>,
}

fn page(
    rng: &mut Rng,
    gu: AffineQuant,
    down: AffineQuant,
    hidden: usize,
    inter: usize,
    n_slots: usize,
) -> Page {
    let formats = [
        WeightFormat::Affine(gu),
        WeightFormat::Affine(gu),
        WeightFormat::Affine(down),
    ];
    let lay = ExpertLayout::swiglu_with(formats, hidden, inter).expect("a valid expert layout");
    // Slots a little more than a blob apart (as a page of the expert cache may be).
    let slot_bytes = lay.bytes + 48;
    let mut bytes = vec![0xFFu8; n_slots * slot_bytes];
    let mut experts = Vec::with_capacity(n_slots);
    let mut offs = [[0u32; 3]; 3];
    for s in 0..n_slots {
        let mats: [QMat; 3] = std::array::from_fn(|i| {
            let t = &lay.tensors[i];
            let q = if i == 2 { down } else { gu };
            let m = QMat::random(rng, t.rows, t.cols, q);
            assert_eq!(m.bytes.len(), t.len());
            let at = s * slot_bytes + t.offset;
            // The parts only: the padding between them stays 0xFF.
            let p = [
                (0, m.codes.len() * q.bits as usize / 8),
                (
                    m.scales_word as usize * 4,
                    m.scales.len() * q.scale_dtype.size(),
                ),
                (
                    m.biases_word as usize * 4,
                    m.scales.len() * q.scale_dtype.size(),
                ),
            ];
            for (o, n) in p {
                bytes[at + o..at + o + n].copy_from_slice(&m.bytes[o..o + n]);
            }
            let base = (t.offset / 4) as u32;
            offs[i] = [base, base + m.scales_word, base + m.biases_word];
            m
        });
        experts.push(mats);
    }
    Page {
        bytes,
        slot_words: (slot_bytes / 4) as u32,
        offs,
        experts,
    }
}

/// Expert shapes (hidden, inter), each with the (gate/up, down) quantizations it is tried
/// with: uniform widths, and gate/up and down of different widths as in mlx-lm's mixed
/// recipes (3-bit gate/up with a 6-bit down in `mixed_3_6`).
fn moe_cases() -> Vec<(usize, usize, AffineQuant, AffineQuant)> {
    // (hidden, inter, gate/up bits, down bits, group, scale dtype)
    let cases = [
        (64, 32, 4, 4, 32, DType::F16),
        // A hidden size that is not a multiple of the down mat-mat's 64-row tile.
        (96, 64, 4, 4, 32, DType::F16),
        (128, 64, 3, 6, 64, DType::BF16),
        (128, 96, 8, 8, 32, DType::F16),
        (128, 128, 2, 2, 128, DType::F32),
        (256, 160, 5, 3, 32, DType::F32),
        (384, 192, 6, 5, 64, DType::BF16),
        (512, 384, 4, 4, 64, DType::BF16),
    ];
    cases
        .iter()
        .map(|&(h, i, gu, d, g, dt)| (h, i, quant(gu, g, dt), quant(d, g, dt)))
        .collect()
}

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
fn moe_gate_up_q() {
    let mut ck = Checker::new("moe_gate_up_q");
    let mut rng = Rng::new(40);
    for (hidden, inter, gu, down) in moe_cases() {
        let (n_tokens, n_slots, n_assign) = (3, 4, 7);
        let pg = page(&mut rng, gu, down, hidden, inter, n_slots);
        let asg = assignments(&mut rng, n_tokens, n_slots, n_assign);
        let x = rng.vec(n_tokens * hidden, 1.0);
        let x_il = interleave(&x, hidden);
        for (run_no, ((base, count), (on, team, how))) in [(0usize, n_assign), (2, 4)]
            .into_iter()
            .flat_map(|bc| team_setups(hidden).into_iter().map(move |t| (bc, t)))
            .enumerate()
        {
            // x read interleaved (bit 0) and h written interleaved (bit 1), in turn; for
            // 2- to 6-bit experts every fourth run reads token 0's x in the 8+8-bit layout
            // (as decode does), all assignments on token 0.
            let q8 = kernels::reads_q8_activations(gu.bits) && run_no % 4 == 3;
            let flags = if q8 { 4 | 2 } else { (run_no % 4) as u32 };
            let (q8_words, x0) = testing::q8_row(&x[..hidden]);
            let asg: Vec<(usize, usize)> = if q8 {
                asg.iter().map(|&(_, s)| (0, s)).collect()
            } else {
                asg.clone()
            };
            let pairs = assignment_words(&asg);
            let case = format!(
                "{}-bit g{} {} hidden {hidden} inter {inter} assign {base}+{count} {how} flags {flags}",
                gu.bits, gu.group_size, gu.scale_dtype
            );
            let before = rng.vec(n_assign * inter, 1.0);
            let mut want = Vec::new();
            let mut written = vec![false; before.len()];
            let mut floor: f64 = 0.0;
            for (a, &(t, s)) in asg.iter().enumerate().skip(base).take(count) {
                let xt = if q8 {
                    &x0[..]
                } else {
                    &x[t * hidden..(t + 1) * hidden]
                };
                let [g, u, _] = &pg.experts[s];
                let gv = reference::matmul(&g.values, inter, hidden, xt, 1);
                let uv = reference::matmul(&u.values, inter, hidden, xt, 1);
                want.extend(reference::swiglu(&gv, &uv));
                written[a * inter..(a + 1) * inter].fill(true);
                // silu(g) u with g, u of typical sizes dg, du: about dg du / 2.
                floor = floor.max(g.dot_scale(rms(xt)) * u.dot_scale(rms(xt)) / 2.0);
            }
            let [g, u, _] = pg.offs;
            // Rows per team (the ROWS pipeline constant) in turn.
            let rpt = [4u32, 2, 1][run_no / 2 % 3];
            // Each run again writing h in the quad 8+8-bit layout where the workgroup's
            // rows make whole quads.
            for quad in [false, true] {
                if quad && !kernels::writes_quad_h(team, rpt) {
                    continue;
                }
                let flags = flags | if quad { MoeGateUpQParams::H_QUAD_Q8 } else { 0 };
                let case = format!("{case} {rpt} rows per team flags {flags}");
                let out = run_kernel_rows_on(
                    on,
                    Kernel::MoeGateUpQ,
                    Some(gu.scale_dtype),
                    Some((gu.bits, gu.group_size)),
                    rpt,
                    MoeGateUpQParams {
                        hidden: hidden as u32,
                        inter: inter as u32,
                        assign_base: base as u32,
                        n_assign: count as u32,
                        slot_words: pg.slot_words,
                        gate_q: g[0],
                        gate_s: g[1],
                        gate_b: g[2],
                        up_q: u[0],
                        up_s: u[1],
                        up_b: u[2],
                        team,
                        flags,
                        ..Default::default()
                    }
                    .words(),
                    &[
                        &pg.bytes,
                        &if q8 {
                            u32_bytes(&q8_words)
                        } else {
                            f32_bytes(if flags & 1 != 0 { &x_il } else { &x })
                        },
                        &u32_bytes(&pairs),
                        &f32_bytes(&before),
                        &pg.bytes,
                    ],
                    kernels::moe_gate_up_q_groups(inter as u32, count as u32, team, rpt),
                );
                let mut got = to_f32(&out[3]);
                ck.untouched(&case, &got, &before, &written);
                for row in got.chunks_exact_mut(inter).skip(base).take(count) {
                    // The rows written interleaved or quantized, back to the natural layout.
                    let natural = if quad {
                        let words: Vec<u32> = row.iter().map(|v| v.to_bits()).collect();
                        testing::quad_q8_values(&words).unwrap_or_else(|e| panic!("{case}: {e}"))
                    } else if flags & 2 != 0 {
                        deinterleave(row, inter)
                    } else {
                        continue;
                    };
                    row.copy_from_slice(&natural);
                }
                // Quantized h against the expected values quantized the same way (an
                // f32 rounding difference may move a value by one step of its quad).
                let want: Vec<f32> = if quad {
                    want.chunks_exact(inter)
                        .flat_map(|row| testing::quad_q8_row(row).1)
                        .collect()
                } else {
                    want.clone()
                };
                // One step of a quad is at most 1 / 32258 of the largest value; the values
                // that moved by one step bound the nmse by about max_rel^2.
                let tol = if quad {
                    Tol {
                        max_rel: 4e-5,
                        nmse: 2e-9,
                        ..REDUCTION
                    }
                } else {
                    REDUCTION
                };
                ck.close(&case, &pick(&got, &written), &want, tol.floor(floor));
            }
        }
    }
    ck.report();
}

#[test]
fn moe_down_q() {
    let mut ck = Checker::new("moe_down_q");
    let mut rng = Rng::new(50);
    for (hidden, inter, gu, down) in moe_cases() {
        let (n_slots, n_assign) = (4, 7);
        let pg = page(&mut rng, gu, down, hidden, inter, n_slots);
        // The token of an assignment is not read by the down projection.
        let asg = assignments(&mut rng, 2, n_slots, n_assign);
        let pairs = assignment_words(&asg);
        let h = rng.vec(n_assign * inter, 2.0);
        let h_il = interleave(&h, inter);
        let (hq_words, hq_values): (Vec<u32>, Vec<Vec<f32>>) = {
            let rows: Vec<(Vec<u32>, Vec<f32>)> =
                h.chunks_exact(inter).map(testing::quad_q8_row).collect();
            (
                rows.iter().flat_map(|r| r.0.iter().copied()).collect(),
                rows.into_iter().map(|r| r.1).collect(),
            )
        };
        let route_w: Vec<f32> = (0..n_assign).map(|_| 0.5 + 0.5 * rng.f32()).collect();
        for (run_no, ((base, count), (on, team, how))) in [(0usize, n_assign), (3, 2)]
            .into_iter()
            .flat_map(|bc| team_setups(inter).into_iter().map(move |t| (bc, t)))
            .enumerate()
        {
            // h read interleaved in every other run.
            let flags = (run_no % 2) as u32;
            let case = format!(
                "{}-bit g{} {} hidden {hidden} inter {inter} assign {base}+{count} {how} flags {flags}",
                down.bits, down.group_size, down.scale_dtype
            );
            let before = rng.vec(n_assign * hidden, 1.0);
            let mut want = Vec::new();
            let mut written = vec![false; before.len()];
            let mut floor: f64 = 0.0;
            for (a, &(_, s)) in asg.iter().enumerate().skip(base).take(count) {
                let ha = &h[a * inter..(a + 1) * inter];
                let d = &pg.experts[s][2];
                let o = reference::matmul(&d.values, hidden, inter, ha, 1);
                want.extend(o.iter().map(|v| v * route_w[a]));
                written[a * hidden..(a + 1) * hidden].fill(true);
                floor = floor.max(d.dot_scale(rms(ha)) * f64::from(route_w[a]));
            }
            let d = pg.offs[2];
            // Rows per team (the ROWS pipeline constant) in turn.
            let rpt = [4u32, 2, 1][run_no % 3];
            let run = |flags: u32, h: &[u8]| {
                let out = run_kernel_rows_on(
                    on,
                    Kernel::MoeDownQ,
                    Some(down.scale_dtype),
                    Some((down.bits, down.group_size)),
                    rpt,
                    MoeDownQParams {
                        hidden: hidden as u32,
                        inter: inter as u32,
                        assign_base: base as u32,
                        n_assign: count as u32,
                        slot_words: pg.slot_words,
                        down_q: d[0],
                        down_s: d[1],
                        down_b: d[2],
                        team,
                        flags,
                        ..Default::default()
                    }
                    .words(),
                    &[
                        &pg.bytes,
                        h,
                        &u32_bytes(&pairs),
                        &f32_bytes(&route_w),
                        &f32_bytes(&before),
                        &pg.bytes,
                    ],
                    kernels::moe_down_q_groups(hidden as u32, count as u32, team, rpt),
                );
                to_f32(&out[4])
            };
            let case = format!("{case} {rpt} rows per team");
            let got = run(flags, &f32_bytes(if flags & 1 != 0 { &h_il } else { &h }));
            ck.untouched(&case, &got, &before, &written);
            ck.close(&case, &pick(&got, &written), &want, REDUCTION.floor(floor));
            if kernels::reads_q8_activations(down.bits) {
                // h in the quad 8+8-bit layout (flags bit 1), against the values it
                // stands for: the integer dot products are exact.
                let case = format!("{case} quad h");
                let mut want = Vec::new();
                for (a, &(_, s)) in asg.iter().enumerate().skip(base).take(count) {
                    let d = &pg.experts[s][2];
                    let o = reference::matmul(&d.values, hidden, inter, &hq_values[a], 1);
                    want.extend(o.iter().map(|v| v * route_w[a]));
                }
                let got = run(2, &u32_bytes(&hq_words));
                ck.untouched(&case, &got, &before, &written);
                ck.close(&case, &pick(&got, &written), &want, REDUCTION.floor(floor));
            }
        }
    }
    ck.report();
}

/// Assignments grouped by slot as the engine orders a prefill's (each expert's assignments
/// consecutive): slot 1 with 37 assignments (two tiles), slot 3 with 5, slot 2 with 1, on
/// random tokens.
fn grouped_assignments(rng: &mut Rng, n_tokens: usize) -> Vec<(usize, usize)> {
    let mut asg = Vec::new();
    for (slot, n) in [(1usize, 37usize), (3, 5), (2, 1)] {
        asg.extend((0..n).map(|_| (rng.below(n_tokens), slot)));
    }
    asg
}

#[test]
fn moe_qmm_tiles_split_by_slot_and_size() {
    let slots = [4u32, 4, 4, 7, 7, 4];
    assert_eq!(
        kernels::moe_qmm_tiles(10, &slots),
        vec![10, 3, 13, 2, 15, 1]
    );
    let many = vec![2u32; 70];
    assert_eq!(kernels::moe_qmm_tiles(0, &many), vec![0, 32, 32, 32, 64, 6]);
    assert!(kernels::moe_qmm_tiles(0, &[]).is_empty());
}

/// The tiles buffer of the tiled expert kernels for the assignments `from..` (whose
/// slots are `slots[from..]`), written from tile `tile_base` on after junk tiles: the
/// buffer and its tile count from `tile_base`.
fn tiles_from(slots: &[u32], from: usize, tile_base: u32) -> (Vec<u32>, u32) {
    let mut tiles = vec![u32::MAX; 2 * tile_base as usize];
    tiles.extend(kernels::moe_qmm_tiles(from as u32, &slots[from..]));
    let n_tiles = (tiles.len() / 2) as u32 - tile_base;
    (tiles, n_tiles)
}

#[test]
fn moe_gate_up_qmm() {
    check_moe_gate_up_qmm(Kernel::MoeGateUpQmm, "moe_gate_up_qmm");
}

/// The cooperative-matrix expert gate/up projections, where the adapter has cooperative
/// matrices (see `qmatmul_coop`), on the cases whose `hidden` is a multiple of 64.
#[test]
fn moe_gate_up_qmm_coop() {
    if coop_unavailable("moe_gate_up_qmm_coop") {
        return;
    }
    check_moe_gate_up_qmm(Kernel::MoeGateUpQmmCoop, "moe_gate_up_qmm_coop");
}

fn check_moe_gate_up_qmm(kernel: Kernel, name: &'static str) {
    let coop = kernel.needs_cooperative_matrices();
    let mut ck = Checker::new(name);
    let mut rng = Rng::new(45);
    for (hidden, inter, gu, down) in moe_cases() {
        if coop && hidden % 64 != 0 {
            continue;
        }
        let (n_tokens, n_slots) = (9, 4);
        let pg = page(&mut rng, gu, down, hidden, inter, n_slots);
        let asg = grouped_assignments(&mut rng, n_tokens);
        let pairs = assignment_words(&asg);
        let slots: Vec<u32> = asg.iter().map(|&(_, s)| s as u32).collect();
        let x = rng.vec(n_tokens * hidden, 1.0);
        // All tiles from tile 0, then only those of assignments 37.. from a tile base of 2.
        for (from, tile_base) in [(0usize, 0u32), (37, 2)] {
            let (tiles, n_tiles) = tiles_from(&slots, from, tile_base);
            let case = format!(
                "{}-bit g{} {} hidden {hidden} inter {inter} from {from}",
                gu.bits, gu.group_size, gu.scale_dtype
            );
            let before = rng.vec(asg.len() * inter, 1.0);
            let mut want = Vec::new();
            let mut written = vec![false; before.len()];
            let mut floor: f64 = 0.0;
            for (a, &(t, s)) in asg.iter().enumerate().skip(from) {
                let xt = &x[t * hidden..(t + 1) * hidden];
                let [g, u, _] = &pg.experts[s];
                let gv = reference::matmul(&g.values, inter, hidden, xt, 1);
                let uv = reference::matmul(&u.values, inter, hidden, xt, 1);
                want.extend(reference::swiglu(&gv, &uv));
                written[a * inter..(a + 1) * inter].fill(true);
                floor = floor.max(g.dot_scale(rms(xt)) * u.dot_scale(rms(xt)) / 2.0);
            }
            let [g, u, _] = pg.offs;
            let out = run(
                kernel,
                &gu,
                MoeGateUpQmmParams {
                    hidden: hidden as u32,
                    inter: inter as u32,
                    tile_base,
                    slot_words: pg.slot_words,
                    gate_q: g[0],
                    gate_s: g[1],
                    gate_b: g[2],
                    up_q: u[0],
                    up_s: u[1],
                    up_b: u[2],
                    ..Default::default()
                }
                .words(),
                &[
                    &pg.bytes,
                    &f32_bytes(&x),
                    &u32_bytes(&pairs),
                    &u32_bytes(&tiles),
                    &f32_bytes(&before),
                ],
                kernels::moe_gate_up_qmm_groups(inter as u32, n_tiles),
            );
            let got = to_f32(&out[4]);
            ck.untouched(&case, &got, &before, &written);
            let tol = if coop { HALF_INPUTS } else { REDUCTION };
            ck.close(&case, &pick(&got, &written), &want, tol.floor(floor));
        }
    }
    ck.report();
}

#[test]
fn moe_down_qmm() {
    check_moe_down_qmm(Kernel::MoeDownQmm, "moe_down_qmm");
}

/// The cooperative-matrix expert down projection, where the adapter has cooperative
/// matrices (see `qmatmul_coop`), on the cases whose `inter` is a multiple of 64.
#[test]
fn moe_down_qmm_coop() {
    if coop_unavailable("moe_down_qmm_coop") {
        return;
    }
    check_moe_down_qmm(Kernel::MoeDownQmmCoop, "moe_down_qmm_coop");
}

fn check_moe_down_qmm(kernel: Kernel, name: &'static str) {
    let coop = kernel.needs_cooperative_matrices();
    let mut ck = Checker::new(name);
    let mut rng = Rng::new(55);
    for (hidden, inter, gu, down) in moe_cases() {
        if coop && inter % 64 != 0 {
            continue;
        }
        let n_slots = 4;
        let pg = page(&mut rng, gu, down, hidden, inter, n_slots);
        let asg = grouped_assignments(&mut rng, 3);
        let pairs = assignment_words(&asg);
        let slots: Vec<u32> = asg.iter().map(|&(_, s)| s as u32).collect();
        let h = rng.vec(asg.len() * inter, 2.0);
        let route_w: Vec<f32> = (0..asg.len()).map(|_| 0.5 + 0.5 * rng.f32()).collect();
        for (from, tile_base) in [(0usize, 0u32), (37, 2)] {
            let (tiles, n_tiles) = tiles_from(&slots, from, tile_base);
            let case = format!(
                "{}-bit g{} {} hidden {hidden} inter {inter} from {from}",
                down.bits, down.group_size, down.scale_dtype
            );
            let before = rng.vec(asg.len() * hidden, 1.0);
            let mut want = Vec::new();
            let mut written = vec![false; before.len()];
            let mut floor: f64 = 0.0;
            for (a, &(_, s)) in asg.iter().enumerate().skip(from) {
                let ha = &h[a * inter..(a + 1) * inter];
                let d = &pg.experts[s][2];
                let o = reference::matmul(&d.values, hidden, inter, ha, 1);
                want.extend(o.iter().map(|v| v * route_w[a]));
                written[a * hidden..(a + 1) * hidden].fill(true);
                floor = floor.max(d.dot_scale(rms(ha)) * f64::from(route_w[a]));
            }
            let d = pg.offs[2];
            let out = run(
                kernel,
                &down,
                MoeDownQmmParams {
                    hidden: hidden as u32,
                    inter: inter as u32,
                    tile_base,
                    slot_words: pg.slot_words,
                    down_q: d[0],
                    down_s: d[1],
                    down_b: d[2],
                    ..Default::default()
                }
                .words(),
                &[
                    &pg.bytes,
                    &f32_bytes(&h),
                    &u32_bytes(&pairs),
                    &u32_bytes(&tiles),
                    &f32_bytes(&route_w),
                    &f32_bytes(&before),
                ],
                kernels::moe_down_qmm_groups(hidden as u32, n_tiles),
            );
            let got = to_f32(&out[5]);
            ck.untouched(&case, &got, &before, &written);
            let tol = if coop { HALF_INPUTS } else { REDUCTION };
            ck.close(&case, &pick(&got, &written), &want, tol.floor(floor));
        }
    }
    ck.report();
}
