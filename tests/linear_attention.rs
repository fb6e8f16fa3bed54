//! The Gated DeltaNet kernels of Qwen3.5-MoE / Qwen3-Next linear-attention layers
//! (`conv1d_silu`, `gated_delta_net`, `gated_rmsnorm`) against the plain f32 CPU reference
//! (`moestream::reference::{causal_conv1d_silu, delta_gates, gated_delta_rule,
//! gated_rms_norm}`), in the engine's kernel variant and the portable one, on odd sizes,
//! through the hidden `gpu::testing::KernelRunner` hook, with the typed parameters
//! (`moestream::gpu::params`) and grids (`moestream::gpu::kernels::*_groups`) the engine
//! dispatches them with.
//!
//! Inputs sit where the engine keeps them: the q/k/v channels, z, b and a inside the rows
//! of one fused projection buffer (row stride and offsets nonzero, junk around them), a
//! conv state and a recurrent state carried in (random, as after earlier tokens, or zero,
//! as at a session's start). Values a dispatch must not write (buffer tails) must come back
//! bit for bit.
//!
//! The error metric and the scale of the bounds are those of tests/kernels.rs (nmse and the
//! largest difference relative to the largest expected value, [`Tol`]); each bound is about
//! 10x over the worst lavapipe measured over 20 data seeds (`KERNEL_TEST_SEED=1..20`, the
//! worst of a run printed with `-- --nocapture`) and at least 10x under a 1e-3 relative
//! error (nmse 1e-6, max 1e-3).
//!
//! There is no skipping: without a GPU adapter every test fails (CI runs lavapipe).

use moestream::gpu::kernels::{
    conv1d_silu_groups, gated_delta_net_groups, gated_rmsnorm_groups, Kernel,
};
use moestream::gpu::params::{Conv1dSiluParams, GatedDeltaNetParams, GatedRmsNormParams};
use moestream::gpu::testing::KernelRunner;
use moestream::reference::{self, DeltaNetShape};

#[path = "common/harness.rs"]
mod harness;
use harness::*;

// ---------------------------------------------------------------------------------------
// Bounds. The measured worst values are printed by each test (`-- --nocapture`).

/// The convolution: a sum of k <= 8 products and SiLU's exp and division per output, a
/// handful of roundings (a few ulp; Vulkan allows exp 3 + 2|x| ulp). Worst over 20 seeds:
/// nmse 1.8e-14 (a decode step's few values), max 2.0e-7 relative. The conv state is
/// copied, so it is compared exactly.
const CONV: Tol = Tol {
    nmse: 2e-13,
    max_rel: 2e-6,
    floor: 0.0,
};

/// The delta rule: per token, dot products of Dk <= 256 terms summed in another order than
/// the reference's (16 strided partial sums and a tree), regrouped (`o = decay S^T q +
/// d k.q` from the state before the update instead of `S'^T q` after it), the gates' exp,
/// softplus (log1p by its series here, torch's `log1p(exp)` on the CPU) and rsqrt, and the
/// rounding of each token carried into the next through the state, over up to 129 tokens.
/// Worst over 20 seeds: outputs nmse 3.3e-13, max 8.9e-7 relative (Dk = Dv = 256, 7
/// tokens); final states nmse 2.7e-13, max 5.1e-7 (Dk 130, Dv 20, 70 tokens).
const DELTA: Tol = Tol {
    nmse: 3e-12,
    max_rel: 1e-5,
    floor: 0.0,
};

/// The gated RMSNorm: a sum of squares over Dv (up to 300 here: 64 strided partials and a
/// tree), `inverseSqrt` (2 ulp), the weight, SiLU. Worst over 20 seeds: nmse 6.7e-14, max
/// 5.5e-7 relative.
const NORM: Tol = Tol {
    nmse: 1e-12,
    max_rel: 6e-6,
    floor: 0.0,
};

/// The three kernels chained over a prefill and decode steps, against the reference chain.
/// The norm scales each head's output to unit size, so a head whose delta-rule output is
/// far smaller than the others' (a near-cancelling k . q after a full decay: rms 7e-5
/// against 2e-2 typical) has its absolute error, which is set by the typical size of the
/// terms, amplified by the ratio: the worst over 20 seeds, nmse 1.7e-12 and max 7.8e-6
/// relative, is such a head (the others stay under 2.3e-6). The reference itself is that
/// far from exact there.
const CHAIN: Tol = Tol {
    nmse: 2e-11,
    max_rel: 1e-4,
    floor: 0.0,
};

/// The gated norm's epsilon (the models' `rms_norm_eps`).
const EPS: f32 = 1e-6;

// ---------------------------------------------------------------------------------------
// Helpers.

/// The engine's variant and the portable one (both tested, as in tests/kernels.rs).
fn runners() -> [(&'static str, &'static KernelRunner); 2] {
    [("engine", runner()), ("portable", portable_runner())]
}

fn run(
    on: &KernelRunner,
    kernel: Kernel,
    params: &[u32],
    buffers: &[&[u8]],
    groups: (u32, u32),
) -> Vec<Vec<u8>> {
    run_kernel_on(on, kernel, None, None, params, buffers, groups)
}

/// Where a layer's projections sit in a fused projection row:
/// `[junk | qkv (C) | z (Hv Dv) | b (Hv) | a (Hv) | junk]`.
#[derive(Debug, Clone, Copy)]
struct Proj {
    stride: usize,
    qkv: usize,
    z: usize,
    b: usize,
    a: usize,
}

impl Proj {
    fn new(shape: DeltaNetShape) -> Proj {
        let c = shape.conv_channels();
        let vd = shape.value_heads * shape.value_dim;
        let qkv = 3;
        let z = qkv + c;
        let b = z + vd;
        let a = b + shape.value_heads;
        Proj {
            stride: a + shape.value_heads + 2,
            qkv,
            z,
            b,
            a,
        }
    }

    /// The `len` values at `offset` of each of `n` rows.
    fn part(&self, rows: &[f32], n: usize, offset: usize, len: usize) -> Vec<f32> {
        (0..n)
            .flat_map(|t| rows[t * self.stride + offset..][..len].to_vec())
            .collect()
    }
}

/// Random projection rows for `n` tokens: pre-activation q/k/v and z in [-2, 2), b and a in
/// [-3, 3) with some a far out (+-25: softplus's linear branch above 20, and a decay of
/// almost 1 below), junk elsewhere.
fn projection(rng: &mut Rng, shape: DeltaNetShape, pr: Proj, n: usize) -> Vec<f32> {
    let mut rows = rng.vec(n * pr.stride, 2.0);
    for t in 0..n {
        for h in 0..shape.value_heads {
            rows[t * pr.stride + pr.b + h] = 3.0 * rng.f32();
            let a = match rng.below(16) {
                0 => 25.0,
                1 => -25.0,
                _ => 3.0 * rng.f32(),
            };
            rows[t * pr.stride + pr.a + h] = a;
        }
    }
    rows
}

/// Per-layer weights: conv weight [C, k], A_log [Hv] (log of U(1, 16)), dt_bias [Hv] in
/// [-1, 1), norm weight [Dv] around 1.
struct LayerWeights {
    conv: Vec<f32>,
    a_log: Vec<f32>,
    dt_bias: Vec<f32>,
    norm: Vec<f32>,
}

fn layer_weights(rng: &mut Rng, shape: DeltaNetShape, k: usize) -> LayerWeights {
    let hv = shape.value_heads;
    LayerWeights {
        conv: rng.vec(shape.conv_channels() * k, 0.7),
        a_log: (0..hv)
            .map(|_| (1.0 + 7.5 * (rng.f32() + 1.0)).ln())
            .collect(),
        dt_bias: rng.vec(hv, 1.0),
        norm: (0..shape.value_dim)
            .map(|_| 1.0 + 0.5 * rng.f32())
            .collect(),
    }
}

impl LayerWeights {
    /// The delta-rule kernel's constants binding: the conv taps at 0, then (after junk)
    /// A_log and dt_bias; with their offsets.
    fn consts(&self) -> (Vec<f32>, u32, u32) {
        let mut c = self.conv.clone();
        c.extend([f32::NAN; 5]);
        let a_log_at = c.len() as u32;
        c.extend(&self.a_log);
        c.extend([f32::NAN; 3]);
        let dt_bias_at = c.len() as u32;
        c.extend(&self.dt_bias);
        (c, a_log_at, dt_bias_at)
    }
}

/// The delta-rule parameters of a dispatch over `n` projection rows laid out as `pr`,
/// with the constants binding of `lw` (returned with them).
fn delta_params(
    sh: DeltaNetShape,
    pr: Proj,
    n: usize,
    lw: &LayerWeights,
) -> (GatedDeltaNetParams, Vec<f32>) {
    let (consts, a_log_at, dt_bias_at) = lw.consts();
    let params = GatedDeltaNetParams::new(
        n as u32,
        sh.key_heads as u32,
        sh.value_heads as u32,
        sh.key_dim as u32,
        sh.value_dim as u32,
        pr.stride as u32,
        pr.b as u32,
        pr.a as u32,
    )
    .unwrap()
    .with_consts(a_log_at, dt_bias_at);
    (params, consts)
}

/// The reference's beta and g [n, Hv] from the projection rows.
fn gates(rows: &[f32], pr: Proj, n: usize, lw: &LayerWeights) -> (Vec<f32>, Vec<f32>) {
    let hv = lw.a_log.len();
    let (mut beta, mut g) = (Vec::new(), Vec::new());
    for t in 0..n {
        for h in 0..hv {
            let (bt, gt) = reference::delta_gates(
                rows[t * pr.stride + pr.b + h],
                rows[t * pr.stride + pr.a + h],
                lw.a_log[h],
                lw.dt_bias[h],
            );
            beta.push(bt);
            g.push(gt);
        }
    }
    (beta, g)
}

/// The reference delta rule on conv output `y` ([n, C]): q, k and v split from its rows.
fn reference_delta(
    shape: DeltaNetShape,
    n: usize,
    y: &[f32],
    beta: &[f32],
    g: &[f32],
    state: &mut [f32],
) -> Vec<f32> {
    let c = shape.conv_channels();
    let qk = shape.key_heads * shape.key_dim;
    let cols = |from: usize, len: usize| -> Vec<f32> {
        (0..n)
            .flat_map(|t| y[t * c + from..][..len].to_vec())
            .collect()
    };
    let (q, k, v) = (cols(0, qk), cols(qk, qk), cols(2 * qk, c - 2 * qk));
    reference::gated_delta_rule(shape, n, &q, &k, &v, beta, g, state)
}

/// `len` values followed by `tail` junk values (to check that nothing past them is written).
fn with_tail(rng: &mut Rng, v: &[f32], tail: usize) -> Vec<f32> {
    let mut out = v.to_vec();
    out.extend(rng.vec(tail, 9.0));
    out
}

/// Which values of a buffer of `len + tail` values a dispatch writes: the first `len`.
fn written(len: usize, tail: usize) -> Vec<bool> {
    let mut w = vec![true; len];
    w.extend(vec![false; tail]);
    w
}

fn shape(hk: usize, hv: usize, dk: usize, dv: usize) -> DeltaNetShape {
    DeltaNetShape {
        key_heads: hk,
        value_heads: hv,
        key_dim: dk,
        value_dim: dv,
    }
}

const TAIL: usize = 5;

// ---------------------------------------------------------------------------------------
// ---------------------------------------------------------------------------------------
// conv1d_silu.

#[test]
fn conv1d_silu() {
    let mut ck = Checker::new("conv1d_silu");
    let mut rng = Rng::new(301);
    // (Hk, Hv, Dk, Dv) give C; kernel widths 1 ..= 8.
    let cases = [
        (shape(1, 1, 3, 5), 4),
        (shape(2, 4, 24, 8), 4),
        (shape(3, 6, 7, 9), 3),
        (shape(1, 4, 16, 16), 2),
        (shape(2, 2, 5, 3), 1),
        (shape(1, 2, 9, 11), 8),
        (shape(4, 8, 32, 32), 4),
    ];
    for (sh, k) in cases {
        let c = sh.conv_channels();
        let pr = Proj::new(sh);
        for n in [1usize, 7, 70, 129] {
            for carried in [false, true] {
                let case = format!("C {c} k {k} n {n} carried state {carried}");
                let rows = projection(&mut rng, sh, pr, n);
                let w = rng.vec(c * k, 0.7);
                let state0 = if carried {
                    rng.vec((k - 1) * c, 2.0)
                } else {
                    vec![0.0; (k - 1) * c]
                };
                let u = pr.part(&rows, n, pr.qkv, c);
                let mut want_state = state0.clone();
                let want = reference::causal_conv1d_silu(&u, &w, &mut want_state, n, c, k);
                let mut params = Conv1dSiluParams::new(
                    n as u32,
                    c as u32,
                    k as u32,
                    pr.stride as u32,
                    pr.qkv as u32,
                )
                .unwrap();
                // A sequence's start: the kernel must not read state_in (junk here).
                let state_in = if carried {
                    with_tail(&mut rng, &state0, TAIL)
                } else {
                    params.fresh = 1;
                    rng.vec((k - 1) * c + TAIL, 9.0)
                };
                // The new state goes to its own buffer (junk before).
                let state_out = rng.vec((k - 1) * c + TAIL, 9.0);
                let y_in = rng.vec(n * c + TAIL, 9.0);
                for (vname, on) in runners() {
                    let case = format!("{case} ({vname})");
                    let out = run(
                        on,
                        Kernel::Conv1dSilu,
                        params.words(),
                        &[
                            &f32_bytes(&rows),
                            &f32_bytes(&w),
                            &f32_bytes(&state_out),
                            &f32_bytes(&y_in),
                            &f32_bytes(&state_in),
                        ],
                        conv1d_silu_groups(c as u32, n as u32),
                    );
                    let y = to_f32(&out[3]);
                    ck.untouched(&case, &y, &y_in, &written(n * c, TAIL));
                    ck.close(&case, &y[..n * c], &want, CONV);
                    let st = to_f32(&out[2]);
                    ck.untouched(&case, &st, &state_out, &written((k - 1) * c, TAIL));
                    assert_eq!(to_f32(&out[4]), state_in, "conv1d_silu [{case}]: state_in");
                    assert_eq!(
                        &st[..(k - 1) * c],
                        &want_state[..],
                        "conv1d_silu [{case}]: state"
                    );
                }
            }
        }
    }
    ck.report();
}

// ---------------------------------------------------------------------------------------
// gated_delta_net.

/// One delta-rule dispatch over `n` tokens of conv output `y` from `state0`; checks the
/// output and the final state against the reference.
#[allow(clippy::too_many_arguments)]
fn check_delta(
    ck: &mut Checker,
    ck_state: &mut Checker,
    rng: &mut Rng,
    sh: DeltaNetShape,
    n: usize,
    state0: &[f32],
    case: &str,
) {
    let c = sh.conv_channels();
    let pr = Proj::new(sh);
    let rows = projection(rng, sh, pr, n);
    let lw = layer_weights(rng, sh, 4);
    // Conv outputs are silu values: mostly in [-0.28, 2).
    let y: Vec<f32> = rng
        .vec(n * c, 2.0)
        .iter()
        .map(|&x| reference::silu(x))
        .collect();
    let (beta, g) = gates(&rows, pr, n, &lw);
    let mut want_state = state0.to_vec();
    let want = reference_delta(sh, n, &y, &beta, &g, &mut want_state);
    let (mut params, consts) = delta_params(sh, pr, n, &lw);
    let vd = sh.value_heads * sh.value_dim;
    // Without a fused convolution the conv states are neither read nor written.
    let conv_len = 3 * c + TAIL;
    let conv_junk = rng.vec(conv_len, 9.0);
    // A zero starting state is a sequence's start: the kernel must not read state_in
    // (junk here).
    let state_in = if state0.iter().all(|&v| v == 0.0) {
        params.fresh = 1;
        rng.vec(sh.state_len() + TAIL, 9.0)
    } else {
        with_tail(rng, state0, TAIL)
    };
    // The new state goes to its own buffer (junk before).
    let state_out = rng.vec(sh.state_len() + TAIL, 9.0);
    let o_in = rng.vec(n * vd + TAIL, 9.0);
    for (vname, on) in runners() {
        let case = format!("{case} ({vname})");
        let out = run(
            on,
            Kernel::GatedDeltaNet,
            params.words(),
            &[
                &f32_bytes(&y),
                &f32_bytes(&rows),
                &f32_bytes(&consts),
                &f32_bytes(&state_out),
                &f32_bytes(&o_in),
                &f32_bytes(&state_in),
                &f32_bytes(&vec![f32::NAN; conv_len]),
                &f32_bytes(&conv_junk),
            ],
            gated_delta_net_groups(sh.value_heads as u32, sh.value_dim as u32),
        );
        let o = to_f32(&out[4]);
        ck.untouched(&case, &o, &o_in, &written(n * vd, TAIL));
        ck.close(&case, &o[..n * vd], &want, DELTA);
        assert_eq!(
            to_f32(&out[7])
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            conv_junk.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{case}: conv state written without a fused convolution"
        );
        let st = to_f32(&out[3]);
        ck_state.untouched(&case, &st, &state_out, &written(sh.state_len(), TAIL));
        ck_state.close(&case, &st[..sh.state_len()], &want_state, DELTA);
    }
}

#[test]
fn gated_delta_net() {
    for (vname, on) in runners() {
        println!(
            "{vname}: {} ({} variant)",
            on.adapter_name(),
            on.variant().name()
        );
    }
    let mut ck = Checker::new("gated_delta_net output");
    let mut ck_state = Checker::new("gated_delta_net state");
    let mut rng = Rng::new(302);
    // Hv = Hk, 2 Hk, 4 Hk; odd dims; Dk past 128 (the kernel's s2, s3) and at its 256 limit.
    let shapes = [
        shape(3, 3, 16, 16),
        shape(2, 4, 24, 8),
        shape(1, 4, 17, 33),
        shape(2, 2, 5, 3),
        shape(1, 2, 130, 20),
    ];
    for sh in shapes {
        for n in [1usize, 7, 70, 129] {
            for carried in [false, true] {
                let state0 = if carried {
                    rng.vec(sh.state_len(), 0.5)
                } else {
                    vec![0.0; sh.state_len()]
                };
                let case = format!("{sh:?} n {n} carried state {carried}");
                check_delta(&mut ck, &mut ck_state, &mut rng, sh, n, &state0, &case);
            }
        }
    }
    // Real head sizes: Dk = Dv = 128 (Qwen3.5 / Qwen3-Next), fewer heads; and Dk = Dv = 256.
    for (sh, ns) in [
        (shape(2, 4, 128, 128), &[1usize, 7, 70, 129][..]),
        (shape(1, 2, 256, 256), &[1, 7, 70][..]),
        (shape(1, 1, 256, 17), &[1, 7][..]),
    ] {
        for &n in ns {
            let state0 = rng.vec(sh.state_len(), 0.5);
            let case = format!("{sh:?} n {n} carried state true");
            check_delta(&mut ck, &mut ck_state, &mut rng, sh, n, &state0, &case);
        }
    }
    ck.report();
    ck_state.report();
}

/// A decode step of a Qwen3.5-397B-A17B-shaped layer (Hk 16, Hv 64, Dk = Dv = 128).
#[test]
fn gated_delta_net_full_size_decode() {
    let mut ck = Checker::new("gated_delta_net 397B output");
    let mut ck_state = Checker::new("gated_delta_net 397B state");
    let mut rng = Rng::new(303);
    let sh = shape(16, 64, 128, 128);
    let state0 = rng.vec(sh.state_len(), 0.5);
    check_delta(
        &mut ck,
        &mut ck_state,
        &mut rng,
        sh,
        1,
        &state0,
        "397B decode",
    );
    ck.report();
    ck_state.report();
}

/// A decode step with the convolution fused into the delta-rule dispatch (as the engine
/// runs every decode step): the step's conv over the carried conv state (or none, at a
/// session's start: `conv_in` is junk then and must not be read), the delta rule, and the new
/// conv state, against the reference conv and delta rule. `y` is NaN: the kernel must not
/// read it. Shapes with Hv = Hk, 2 Hk, 4 Hk, columns past a 16-column block's end, Dk past
/// 128 and at 256.
#[test]
fn gated_delta_net_with_conv() {
    let mut ck = Checker::new("gated_delta_net+conv output");
    let mut ck_state = Checker::new("gated_delta_net+conv state");
    let mut rng = Rng::new(306);
    for (sh, k) in [
        (shape(3, 3, 16, 16), 4usize),
        (shape(2, 4, 24, 8), 4),
        (shape(1, 4, 17, 33), 3),
        (shape(2, 2, 5, 3), 1),
        (shape(1, 2, 130, 20), 4),
        (shape(2, 4, 128, 128), 4),
        (shape(1, 2, 256, 40), 8),
    ] {
        for fresh in [true, false] {
            let case = format!("{sh:?} k {k} fresh {fresh}");
            let c = sh.conv_channels();
            let vd = sh.value_heads * sh.value_dim;
            let pr = Proj::new(sh);
            let rows = projection(&mut rng, sh, pr, 1);
            let lw = layer_weights(&mut rng, sh, k);
            let conv0 = if fresh {
                vec![0.0; (k - 1) * c]
            } else {
                rng.vec((k - 1) * c, 2.0)
            };
            let state0 = if fresh {
                vec![0.0; sh.state_len()]
            } else {
                rng.vec(sh.state_len(), 0.5)
            };
            let mut want_conv = conv0.clone();
            let u = pr.part(&rows, 1, pr.qkv, c);
            let y = reference::causal_conv1d_silu(&u, &lw.conv, &mut want_conv, 1, c, k);
            let (beta, g) = gates(&rows, pr, 1, &lw);
            let mut want_state = state0.clone();
            let want = reference_delta(sh, 1, &y, &beta, &g, &mut want_state);

            let (params, consts) = delta_params(sh, pr, 1, &lw);
            let mut params = params.with_conv(k as u32, pr.qkv as u32).unwrap();
            let (state_in, conv_in) = if fresh {
                params.fresh = 1;
                (
                    rng.vec(sh.state_len() + TAIL, 9.0),
                    rng.vec((k - 1) * c + TAIL, 9.0),
                )
            } else {
                (
                    with_tail(&mut rng, &state0, TAIL),
                    with_tail(&mut rng, &conv0, TAIL),
                )
            };
            let state_out = rng.vec(sh.state_len() + TAIL, 9.0);
            let conv_out = rng.vec((k - 1) * c + TAIL, 9.0);
            let o_in = rng.vec(vd + TAIL, 9.0);
            // From a zero state a head's whole output is beta v (k^ . q^): a k . q that
            // cancels to far below its terms (seed 0: 1e-5 of |k||q|, Dk 256) would make the
            // few-ulp rounding of the step's conv outputs (here and in the reference) look
            // like a large relative error, so such cases are judged against the typical
            // size of that output, about 0.25 / Dk (|k^ . q^| ~ q_scale / sqrt(Dk)).
            let tol = if fresh {
                DELTA.floor(0.25 / sh.key_dim as f64)
            } else {
                DELTA
            };
            for (vname, on) in runners() {
                let case = format!("{case} ({vname})");
                let out = run(
                    on,
                    Kernel::GatedDeltaNet,
                    params.words(),
                    &[
                        &f32_bytes(&vec![f32::NAN; c + TAIL]),
                        &f32_bytes(&rows),
                        &f32_bytes(&consts),
                        &f32_bytes(&state_out),
                        &f32_bytes(&o_in),
                        &f32_bytes(&state_in),
                        &f32_bytes(&conv_in),
                        &f32_bytes(&conv_out),
                    ],
                    gated_delta_net_groups(sh.value_heads as u32, sh.value_dim as u32),
                );
                let o = to_f32(&out[4]);
                ck.untouched(&case, &o, &o_in, &written(vd, TAIL));
                ck.close(&case, &o[..vd], &want, tol);
                let st = to_f32(&out[3]);
                ck_state.untouched(&case, &st, &state_out, &written(sh.state_len(), TAIL));
                ck_state.close(&case, &st[..sh.state_len()], &want_state, DELTA);
                let cs = to_f32(&out[7]);
                let n_conv = (k - 1) * c;
                ck_state.untouched(&case, &cs, &conv_out, &written(n_conv, TAIL));
                assert_eq!(&cs[..n_conv], &want_conv[..], "{case}: conv state");
            }
        }
    }
    ck.report();
    ck_state.report();
}

// ---------------------------------------------------------------------------------------
// gated_rmsnorm.

#[test]
fn gated_rmsnorm() {
    let mut ck = Checker::new("gated_rmsnorm");
    let mut rng = Rng::new(304);
    for (hv, dv) in [
        (1usize, 1usize),
        (3, 8),
        (4, 33),
        (2, 64),
        (5, 65),
        (2, 128),
        (3, 300),
    ] {
        let sh = shape(1, hv, 4, dv);
        let pr = Proj::new(sh);
        let vd = hv * dv;
        for n in [1usize, 7, 70] {
            let case = format!("Hv {hv} Dv {dv} n {n}");
            let rows = projection(&mut rng, sh, pr, n);
            let x = rng.vec(n * vd, 1.5);
            let w: Vec<f32> = (0..dv).map(|_| 1.0 + 0.5 * rng.f32()).collect();
            let z = pr.part(&rows, n, pr.z, vd);
            let want = reference::gated_rms_norm(&x, &z, &w, EPS);
            let params = GatedRmsNormParams::new(
                n as u32,
                hv as u32,
                dv as u32,
                EPS,
                pr.stride as u32,
                pr.z as u32,
            )
            .unwrap();
            let out_in = rng.vec(n * vd + TAIL, 9.0);
            for (vname, on) in runners() {
                let case = format!("{case} ({vname})");
                let out = run(
                    on,
                    Kernel::GatedRmsNorm,
                    params.words(),
                    &[
                        &f32_bytes(&x),
                        &f32_bytes(&rows),
                        &f32_bytes(&w),
                        &f32_bytes(&out_in),
                    ],
                    gated_rmsnorm_groups(hv as u32, n as u32),
                );
                let got = to_f32(&out[3]);
                ck.untouched(&case, &got, &out_in, &written(n * vd, TAIL));
                ck.close(&case, &got[..n * vd], &want, NORM);
            }
        }
    }
    ck.report();
}

// ---------------------------------------------------------------------------------------
// The three kernels chained, state carried: a prefill, then decode steps.

/// The token mixer's GPU state between dispatches (read back and passed on, as the engine's
/// buffers would keep it).
struct GpuLayer {
    conv_state: Vec<f32>,
    state: Vec<f32>,
}

/// Runs the token mixer's kernels over the `n` projection rows as the engine does
/// (conv1d_silu then gated_delta_net for a prefill, gated_delta_net with the convolution
/// fused for a decode step, then gated_rmsnorm), returning the normed output [n, Hv Dv].
#[allow(clippy::too_many_arguments)]
fn gpu_mixer(
    on: &KernelRunner,
    sh: DeltaNetShape,
    k: usize,
    lw: &LayerWeights,
    pr: Proj,
    rows: &[f32],
    n: usize,
    st: &mut GpuLayer,
) -> Vec<f32> {
    let c = sh.conv_channels();
    let vd = sh.value_heads * sh.value_dim;
    let (delta, consts) = delta_params(sh, pr, n, lw);
    // A decode step runs the convolution inside the delta rule, as the engine does.
    let (delta, y) = if n == 1 {
        let fused = delta.with_conv(k as u32, pr.qkv as u32).unwrap();
        (fused, vec![f32::NAN; c])
    } else {
        (delta, gpu_conv(on, sh, k, lw, pr, rows, n, st))
    };
    let out = run(
        on,
        Kernel::GatedDeltaNet,
        delta.words(),
        &[
            &f32_bytes(&y),
            &f32_bytes(rows),
            &f32_bytes(&consts),
            &f32_bytes(&vec![f32::NAN; st.state.len()]),
            &f32_bytes(&vec![0.0; n * vd]),
            &f32_bytes(&st.state),
            &f32_bytes(&st.conv_state),
            &f32_bytes(&vec![f32::NAN; st.conv_state.len()]),
        ],
        gated_delta_net_groups(sh.value_heads as u32, sh.value_dim as u32),
    );
    st.state = to_f32(&out[3]);
    if n == 1 {
        st.conv_state = to_f32(&out[7]);
    }
    let o = to_f32(&out[4]);
    let norm = GatedRmsNormParams::new(
        n as u32,
        sh.value_heads as u32,
        sh.value_dim as u32,
        EPS,
        pr.stride as u32,
        pr.z as u32,
    )
    .unwrap();
    let out = run(
        on,
        Kernel::GatedRmsNorm,
        norm.words(),
        &[
            &f32_bytes(&o),
            &f32_bytes(rows),
            &f32_bytes(&lw.norm),
            &f32_bytes(&vec![0.0; n * vd]),
        ],
        gated_rmsnorm_groups(sh.value_heads as u32, n as u32),
    );
    to_f32(&out[3])
}

/// conv1d_silu over the `n` projection rows (a prefill's separate convolution dispatch),
/// carrying the conv state; returns the conv output [n, C].
#[allow(clippy::too_many_arguments)]
fn gpu_conv(
    on: &KernelRunner,
    sh: DeltaNetShape,
    k: usize,
    lw: &LayerWeights,
    pr: Proj,
    rows: &[f32],
    n: usize,
    st: &mut GpuLayer,
) -> Vec<f32> {
    let c = sh.conv_channels();
    let conv = Conv1dSiluParams::new(
        n as u32,
        c as u32,
        k as u32,
        pr.stride as u32,
        pr.qkv as u32,
    )
    .unwrap();
    let out = run(
        on,
        Kernel::Conv1dSilu,
        conv.words(),
        &[
            &f32_bytes(rows),
            &f32_bytes(&lw.conv),
            &f32_bytes(&vec![f32::NAN; st.conv_state.len()]),
            &f32_bytes(&vec![0.0; n * c]),
            &f32_bytes(&st.conv_state),
        ],
        conv1d_silu_groups(c as u32, n as u32),
    );
    st.conv_state = to_f32(&out[2]);
    to_f32(&out[3])
}

#[test]
fn prefill_then_decode_equals_one_reference_pass() {
    let mut ck = Checker::new("mixer chain");
    let mut rng = Rng::new(305);
    let k = 4;
    for sh in [
        shape(2, 4, 16, 16),
        shape(1, 4, 24, 8),
        shape(3, 3, 9, 13),
        shape(1, 2, 128, 128),
    ] {
        let (prefill, steps) = (70usize, 3usize);
        let total = prefill + steps;
        let c = sh.conv_channels();
        let vd = sh.value_heads * sh.value_dim;
        let pr = Proj::new(sh);
        let lw = layer_weights(&mut rng, sh, k);
        let rows = projection(&mut rng, sh, pr, total);
        // The reference over all 73 tokens at once, from a session's start.
        let mut conv_state = vec![0.0; (k - 1) * c];
        let u = pr.part(&rows, total, pr.qkv, c);
        let y = reference::causal_conv1d_silu(&u, &lw.conv, &mut conv_state, total, c, k);
        let (beta, g) = gates(&rows, pr, total, &lw);
        let mut state = vec![0.0; sh.state_len()];
        let o = reference_delta(sh, total, &y, &beta, &g, &mut state);
        let z = pr.part(&rows, total, pr.z, vd);
        let want = reference::gated_rms_norm(&o, &z, &lw.norm, EPS);
        for (vname, on) in runners() {
            let case = format!("{sh:?} ({vname})");
            let mut st = GpuLayer {
                conv_state: vec![0.0; (k - 1) * c],
                state: vec![0.0; sh.state_len()],
            };
            let mut got = gpu_mixer(
                on,
                sh,
                k,
                &lw,
                pr,
                &rows[..prefill * pr.stride],
                prefill,
                &mut st,
            );
            for t in prefill..total {
                let row = &rows[t * pr.stride..(t + 1) * pr.stride];
                got.extend(gpu_mixer(on, sh, k, &lw, pr, row, 1, &mut st));
            }
            ck.close(&format!("{case} outputs"), &got, &want, CHAIN);
            ck.close(&format!("{case} state"), &st.state, &state, CHAIN);
            assert_eq!(st.conv_state, conv_state, "{case}: conv state");
        }
    }
    ck.report();
}
