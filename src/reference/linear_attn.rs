//! The Gated DeltaNet token mixer of Qwen3.5-MoE / Qwen3-Next linear-attention layers, as
//! HF transformers' eager torch fallbacks compute it (`torch_causal_conv1d_update`,
//! `torch_recurrent_gated_delta_rule`, `Qwen3NextRMSNormGated`): plain `f32`, row-major,
//! sequential sums.
//!
//! One layer, per token: a fused projection gives `qkv` (C = 2 Hk Dk + Hv Dv channels: the
//! Hk query heads, then the Hk key heads, then the Hv value heads), `z` (Hv Dv), `b` and `a`
//! (Hv each). Then [`causal_conv1d_silu`] over the `qkv` channels; [`delta_gates`] from `b`
//! and `a`; [`gated_delta_rule`] on the conv output's q, k, v; [`gated_rms_norm`] of its
//! output with `z`; and the output projection. Prefill in HF uses the chunked form of the
//! rule (`torch_chunk_gated_delta_rule`), which equals this per-token recurrence up to f32
//! rounding (tested below).

use super::ops::silu;

/// Causal depthwise convolution of width `k` over `n` tokens of `c` channels, then SiLU.
///
/// `u` is `n x c` (the pre-activation projections), `w` is `c x k` (PyTorch's `[C, 1, K]`
/// conv weight: tap `k - 1` multiplies the current token), `state` is `(k - 1) x c`: the
/// `k - 1` inputs before `u[0]`, oldest first (zeros at the start of a sequence). Returns
/// `y` (`n x c`) with `y[t, ch] = silu(sum_j w[ch, j] * x[t + j, ch])`, where `x` is the
/// state followed by `u`, summed over `j = 0..k` in order; `state` becomes the last `k - 1`
/// rows of `x`, as HF's `torch_causal_conv1d_update` keeps them.
///
/// # Panics
/// If `k == 0` or a slice's length does not match the sizes.
pub fn causal_conv1d_silu(
    u: &[f32],
    w: &[f32],
    state: &mut [f32],
    n: usize,
    c: usize,
    k: usize,
) -> Vec<f32> {
    assert!(k > 0, "causal_conv1d_silu: kernel width 0");
    assert_eq!(u.len(), n * c, "causal_conv1d_silu: input is not {n} x {c}");
    assert_eq!(
        w.len(),
        c * k,
        "causal_conv1d_silu: weight is not {c} x {k}"
    );
    assert_eq!(
        state.len(),
        (k - 1) * c,
        "causal_conv1d_silu: state is not {} x {c}",
        k - 1
    );
    let h = k - 1;
    // Row s of the state followed by the inputs.
    let x = |s: usize, ch: usize, state: &[f32]| {
        if s < h {
            state[s * c + ch]
        } else {
            u[(s - h) * c + ch]
        }
    };
    let mut y = Vec::with_capacity(n * c);
    for t in 0..n {
        for ch in 0..c {
            let mut acc = 0.0f32;
            for j in 0..k {
                acc += w[ch * k + j] * x(t + j, ch, state);
            }
            y.push(silu(acc));
        }
    }
    let old = state.to_vec();
    for s in 0..h {
        for ch in 0..c {
            state[s * c + ch] = x(n + s, ch, &old);
        }
    }
    y
}

/// torch's `softplus` (beta 1, threshold 20): `x` above 20, else `log1p(exp(x))`.
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// The gates of one token and value head from its projections `b` and `a` and the head's
/// `A_log` and `dt_bias`: `(beta, g)` with `beta = sigmoid(b)` and the log-decay
/// `g = -exp(A_log) * softplus(a + dt_bias)` (the state decays by `exp(g)`).
pub fn delta_gates(b: f32, a: f32, a_log: f32, dt_bias: f32) -> (f32, f32) {
    let beta = 1.0 / (1.0 + (-b).exp());
    let g = -a_log.exp() * softplus(a + dt_bias);
    (beta, g)
}

/// Head counts and sizes of a Gated DeltaNet layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaNetShape {
    /// Key (and query) heads, Hk.
    pub key_heads: usize,
    /// Value heads, Hv (a multiple of Hk; value head h uses key head `h / (Hv / Hk)`).
    pub value_heads: usize,
    /// Dims per key head, Dk.
    pub key_dim: usize,
    /// Dims per value head, Dv.
    pub value_dim: usize,
}

impl DeltaNetShape {
    /// Conv channels per token: `2 Hk Dk + Hv Dv` (q, k and v).
    pub fn conv_channels(&self) -> usize {
        2 * self.key_heads * self.key_dim + self.value_heads * self.value_dim
    }

    /// Floats of the recurrent state: `Hv Dk Dv`.
    pub fn state_len(&self) -> usize {
        self.value_heads * self.key_dim * self.value_dim
    }

    fn check(&self) {
        assert!(
            self.key_heads > 0
                && self.value_heads % self.key_heads == 0
                && self.value_heads > 0
                && self.key_dim > 0
                && self.value_dim > 0,
            "DeltaNetShape {self:?}: empty, or value heads not a multiple of key heads"
        );
    }
}

/// `x * (1 / sqrt(sum(x^2) + 1e-6))`, HF's `l2norm` (eps inside the square root, fixed).
fn l2norm(x: &[f32]) -> Vec<f32> {
    let sum: f32 = x.iter().map(|v| v * v).sum();
    let inv = 1.0 / (sum + 1e-6).sqrt();
    x.iter().map(|v| v * inv).collect()
}

/// The gated delta rule over `n` tokens, per token recurrent, as HF's
/// `torch_recurrent_gated_delta_rule` with `use_qk_l2norm_in_kernel=True`.
///
/// `q`, `k` are `[n, Hk, Dk]`, `v` is `[n, Hv, Dv]`, `beta` and `g` are `[n, Hv]` (see
/// [`delta_gates`]), `state` is `[Hv, Dk, Dv]` (HF's layout; zeros at the start of a
/// sequence), updated in place. q and k are L2-normalized per head (`l2norm`, eps 1e-6) and
/// q is scaled by `1 / sqrt(Dk)` (an f32 constant). Value head h reads key head
/// `h / (Hv / Hk)`. Per token and value head, with `S` the head's state:
/// `S = exp(g) S; kv = S^T k; delta = beta (v - kv); S += k delta^T; o = S^T q`.
/// Returns `o` as `[n, Hv, Dv]`.
///
/// # Panics
/// If the shape is invalid or a slice's length does not match it.
#[allow(clippy::too_many_arguments)]
pub fn gated_delta_rule(
    shape: DeltaNetShape,
    n: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    beta: &[f32],
    g: &[f32],
    state: &mut [f32],
) -> Vec<f32> {
    shape.check();
    let DeltaNetShape {
        key_heads: hk,
        value_heads: hv,
        key_dim: dk,
        value_dim: dv,
    } = shape;
    assert_eq!(
        q.len(),
        n * hk * dk,
        "gated_delta_rule: q is not [{n}, {hk}, {dk}]"
    );
    assert_eq!(
        k.len(),
        n * hk * dk,
        "gated_delta_rule: k is not [{n}, {hk}, {dk}]"
    );
    assert_eq!(
        v.len(),
        n * hv * dv,
        "gated_delta_rule: v is not [{n}, {hv}, {dv}]"
    );
    assert_eq!(
        beta.len(),
        n * hv,
        "gated_delta_rule: beta is not [{n}, {hv}]"
    );
    assert_eq!(g.len(), n * hv, "gated_delta_rule: g is not [{n}, {hv}]");
    assert_eq!(
        state.len(),
        shape.state_len(),
        "gated_delta_rule: state is not [{hv}, {dk}, {dv}]"
    );
    let scale = (1.0 / (dk as f64).sqrt()) as f32;
    let rep = hv / hk;
    let mut o = vec![0f32; n * hv * dv];
    for t in 0..n {
        for h in 0..hv {
            let kh = h / rep;
            let at = (t * hk + kh) * dk;
            let qn: Vec<f32> = l2norm(&q[at..at + dk]).iter().map(|x| x * scale).collect();
            let kn = l2norm(&k[at..at + dk]);
            let vt = &v[(t * hv + h) * dv..(t * hv + h + 1) * dv];
            let decay = g[t * hv + h].exp();
            let b = beta[t * hv + h];
            let s = &mut state[h * dk * dv..(h + 1) * dk * dv];
            s.iter_mut().for_each(|x| *x *= decay);
            for j in 0..dv {
                let mut kv = 0.0f32;
                for i in 0..dk {
                    kv += s[i * dv + j] * kn[i];
                }
                let delta = (vt[j] - kv) * b;
                for i in 0..dk {
                    s[i * dv + j] += kn[i] * delta;
                }
                let mut acc = 0.0f32;
                for i in 0..dk {
                    acc += s[i * dv + j] * qn[i];
                }
                o[(t * hv + h) * dv + j] = acc;
            }
        }
    }
    o
}

/// The gated RMSNorm of the layer's output (`Qwen3NextRMSNormGated`, norm before gate) on
/// rows of `Dv = w.len()` values (one row per token and value head): `o * (1 / sqrt(mean(o^2)
/// + eps))`, times `w` (a plain weight, shared by all heads), times `silu(z)`.
///
/// # Panics
/// If `w` is empty, `o.len()` is not a multiple of it, or `z.len() != o.len()`.
pub fn gated_rms_norm(o: &[f32], z: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    assert_eq!(z.len(), o.len(), "gated_rms_norm: o and z lengths differ");
    super::ops::rms_norm(o, w, eps)
        .iter()
        .zip(z)
        .map(|(&y, &z)| y * silu(z))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64 values in [-1, 1).
    struct Rng(u64);
    impl Rng {
        fn f32(&mut self) -> f32 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
        fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| self.f32() * scale).collect()
        }
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
    }

    fn max_abs(a: &[f32]) -> f32 {
        a.iter().fold(0f32, |m, x| m.max(x.abs()))
    }

    #[test]
    fn softplus_and_gates() {
        assert_eq!(softplus(25.0), 25.0);
        assert!((softplus(0.0) - std::f32::consts::LN_2).abs() < 1e-7);
        assert!((softplus(-30.0) - (-30.0f32).exp()).abs() < 1e-20);
        let (beta, g) = delta_gates(0.0, 1.0, 0.0, -1.0);
        assert_eq!(beta, 0.5);
        assert!((g + std::f32::consts::LN_2).abs() < 1e-7);
        let (_, g) = delta_gates(0.0, 30.0, 2f32.ln(), 0.0);
        assert!((g + 60.0).abs() < 1e-5, "{g}");
    }

    #[test]
    fn conv_hand_case() {
        // One channel, k = 3, weights [1, 10, 100] (tap 2 is the current token).
        let w = [1.0, 10.0, 100.0];
        let mut state = vec![0.0; 2];
        let y = causal_conv1d_silu(&[1.0, 2.0, 3.0], &w, &mut state, 3, 1, 3);
        let want = [100.0, 210.0, 321.0].map(silu);
        assert_eq!(y, want.to_vec());
        assert_eq!(state, vec![2.0, 3.0]);
        // One more token: the state supplies the two older inputs.
        let y = causal_conv1d_silu(&[4.0], &w, &mut state, 1, 1, 3);
        assert_eq!(y, vec![silu(2.0 + 30.0 + 400.0)]);
        assert_eq!(state, vec![3.0, 4.0]);
        // k = 1: no state.
        let mut none = Vec::new();
        let y = causal_conv1d_silu(&[1.0, -2.0], &[3.0, 0.5], &mut none, 1, 2, 1);
        assert_eq!(y, vec![silu(3.0), silu(-1.0)]);
    }

    #[test]
    fn conv_state_carries_across_calls() {
        let mut rng = Rng(3);
        let (n, c, k) = (11, 5, 4);
        let u = rng.vec(n * c, 1.0);
        let w = rng.vec(c * k, 1.0);
        let init = rng.vec((k - 1) * c, 1.0);
        let mut s1 = init.clone();
        let whole = causal_conv1d_silu(&u, &w, &mut s1, n, c, k);
        for split in [1, 2, 5, 10] {
            let mut s2 = init.clone();
            let mut parts = causal_conv1d_silu(&u[..split * c], &w, &mut s2, split, c, k);
            // A split of one token at a time at the end too (shorter than the state).
            for t in split..n {
                parts.extend(causal_conv1d_silu(
                    &u[t * c..(t + 1) * c],
                    &w,
                    &mut s2,
                    1,
                    c,
                    k,
                ));
            }
            assert_eq!(parts, whole, "split {split}");
            assert_eq!(s2, s1, "split {split}");
        }
    }

    /// HF's `torch_chunk_gated_delta_rule` (chunk 64, zero-padded), written naively in f64
    /// over the already normalized and scaled q and k of one head: (o [n, Dv], final state).
    #[allow(clippy::too_many_arguments)]
    fn chunked_one_head(
        q: &[Vec<f64>],
        k: &[Vec<f64>],
        v: &[Vec<f64>],
        beta: &[f64],
        g: &[f64],
        s0: &[f64],
        dk: usize,
        dv: usize,
    ) -> (Vec<Vec<f64>>, Vec<f64>) {
        const CH: usize = 64;
        let n = q.len();
        let total = n.div_ceil(CH) * CH;
        let pad = |x: &[Vec<f64>], d: usize| {
            let mut y = x.to_vec();
            y.resize(total, vec![0.0; d]);
            y
        };
        let (q, k, v) = (pad(q, dk), pad(k, dk), pad(v, dv));
        let mut beta = beta.to_vec();
        beta.resize(total, 0.0);
        let mut g = g.to_vec();
        g.resize(total, 0.0);
        let mut s = s0.to_vec(); // [dk, dv]
        let mut out = vec![vec![0.0; dv]; total];
        for c0 in (0..total).step_by(CH) {
            // Cumulative log-decay within the chunk.
            let mut gc = vec![0.0; CH];
            let mut acc = 0.0;
            for i in 0..CH {
                acc += g[c0 + i];
                gc[i] = acc;
            }
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
            // attn = -(k_beta k^T * decay_mask), strictly lower triangular.
            let mut attn = vec![vec![0.0; CH]; CH];
            for i in 0..CH {
                for j in 0..i {
                    attn[i][j] =
                        -beta[c0 + i] * dot(&k[c0 + i], &k[c0 + j]) * (gc[i] - gc[j]).exp();
                }
            }
            for i in 1..CH {
                let row: Vec<f64> = attn[i][..i].to_vec();
                for j in 0..i {
                    let mut add = 0.0;
                    for m in 0..i {
                        add += row[m] * attn[m][j];
                    }
                    attn[i][j] = row[j] + add;
                }
            }
            for (i, r) in attn.iter_mut().enumerate() {
                r[i] += 1.0;
            }
            // value = attn @ v_beta; k_cumdecay = attn @ (k_beta * exp(g)).
            let mut value = vec![vec![0.0; dv]; CH];
            let mut kcd = vec![vec![0.0; dk]; CH];
            for i in 0..CH {
                for m in 0..CH {
                    let a = attn[i][m];
                    for j in 0..dv {
                        value[i][j] += a * v[c0 + m][j] * beta[c0 + m];
                    }
                    for j in 0..dk {
                        kcd[i][j] += a * k[c0 + m][j] * beta[c0 + m] * gc[m].exp();
                    }
                }
            }
            // v_new = value - k_cumdecay S; o = (q e^g) S + (q k^T * mask, j <= i) v_new.
            let mut v_new = vec![vec![0.0; dv]; CH];
            for i in 0..CH {
                for j in 0..dv {
                    let mut vp = 0.0;
                    for m in 0..dk {
                        vp += kcd[i][m] * s[m * dv + j];
                    }
                    v_new[i][j] = value[i][j] - vp;
                }
            }
            for i in 0..CH {
                for j in 0..dv {
                    let mut inter = 0.0;
                    for m in 0..dk {
                        inter += q[c0 + i][m] * gc[i].exp() * s[m * dv + j];
                    }
                    let mut intra = 0.0;
                    for m in 0..=i {
                        intra += dot(&q[c0 + i], &k[c0 + m]) * (gc[i] - gc[m]).exp() * v_new[m][j];
                    }
                    out[c0 + i][j] = inter + intra;
                }
            }
            let last = gc[CH - 1];
            for i in 0..dk {
                for j in 0..dv {
                    let mut add = 0.0;
                    for m in 0..CH {
                        add += k[c0 + m][i] * (last - gc[m]).exp() * v_new[m][j];
                    }
                    s[i * dv + j] = s[i * dv + j] * last.exp() + add;
                }
            }
        }
        out.truncate(n);
        (out, s)
    }

    /// q, k, v, beta, g and an initial state.
    type Case = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

    fn random_case(rng: &mut Rng, shape: DeltaNetShape, n: usize) -> Case {
        let (hk, hv, dk, dv) = (
            shape.key_heads,
            shape.value_heads,
            shape.key_dim,
            shape.value_dim,
        );
        let q = rng.vec(n * hk * dk, 1.0);
        let k = rng.vec(n * hk * dk, 1.0);
        let v = rng.vec(n * hv * dv, 1.0);
        let mut beta = Vec::new();
        let mut g = Vec::new();
        for _ in 0..n * hv {
            let (b, gg) = delta_gates(
                rng.f32() * 3.0,
                rng.f32() * 3.0,
                (1.0 + 7.0 * (rng.f32() + 1.0)).ln(),
                rng.f32(),
            );
            beta.push(b);
            g.push(gg);
        }
        let s0 = rng.vec(shape.state_len(), 0.5);
        (q, k, v, beta, g, s0)
    }

    #[test]
    fn recurrence_equals_hf_chunked_form() {
        let mut rng = Rng(7);
        let shape = DeltaNetShape {
            key_heads: 2,
            value_heads: 4,
            key_dim: 8,
            value_dim: 6,
        };
        let n = 70; // two chunks of 64
        let (q, k, v, beta, g, s0) = random_case(&mut rng, shape, n);
        let mut state = s0.clone();
        let o = gated_delta_rule(shape, n, &q, &k, &v, &beta, &g, &mut state);
        let (hk, hv, dk, dv) = (2, 4, 8, 6);
        let scale = 1.0 / (dk as f64).sqrt();
        let norm = |x: &[f32], s: f64| {
            let ss: f64 = x.iter().map(|&a| f64::from(a) * f64::from(a)).sum();
            let inv = 1.0 / (ss + 1e-6).sqrt();
            x.iter()
                .map(|&a| f64::from(a) * inv * s)
                .collect::<Vec<f64>>()
        };
        let mut want_o = vec![0f32; o.len()];
        let mut want_s = vec![0f32; state.len()];
        for h in 0..hv {
            let kh = h / (hv / hk);
            let qh: Vec<Vec<f64>> = (0..n)
                .map(|t| norm(&q[(t * hk + kh) * dk..][..dk], scale))
                .collect();
            let kk: Vec<Vec<f64>> = (0..n)
                .map(|t| norm(&k[(t * hk + kh) * dk..][..dk], 1.0))
                .collect();
            let vh: Vec<Vec<f64>> = (0..n)
                .map(|t| {
                    v[(t * hv + h) * dv..][..dv]
                        .iter()
                        .map(|&x| x.into())
                        .collect()
                })
                .collect();
            let bh: Vec<f64> = (0..n).map(|t| beta[t * hv + h].into()).collect();
            let gh: Vec<f64> = (0..n).map(|t| g[t * hv + h].into()).collect();
            let sh: Vec<f64> = s0[h * dk * dv..][..dk * dv]
                .iter()
                .map(|&x| x.into())
                .collect();
            let (oh, s) = chunked_one_head(&qh, &kk, &vh, &bh, &gh, &sh, dk, dv);
            for t in 0..n {
                for j in 0..dv {
                    want_o[(t * hv + h) * dv + j] = oh[t][j] as f32;
                }
            }
            for (i, x) in s.iter().enumerate() {
                want_s[h * dk * dv + i] = *x as f32;
            }
        }
        let d_o = max_abs_diff(&o, &want_o) / max_abs(&want_o);
        let d_s = max_abs_diff(&state, &want_s) / max_abs(&want_s);
        assert!(d_o < 1e-5, "outputs differ by {d_o} relative");
        assert!(d_s < 1e-5, "states differ by {d_s} relative");
    }

    #[test]
    fn state_carries_across_calls() {
        let mut rng = Rng(11);
        let shape = DeltaNetShape {
            key_heads: 3,
            value_heads: 6,
            key_dim: 5,
            value_dim: 7,
        };
        let n = 13;
        let (q, k, v, beta, g, s0) = random_case(&mut rng, shape, n);
        let mut whole_s = s0.clone();
        let whole = gated_delta_rule(shape, n, &q, &k, &v, &beta, &g, &mut whole_s);
        let m = 9;
        let (kq, kv, kg) = (3 * 5, 6 * 7, 6);
        let mut s = s0.clone();
        let mut parts = gated_delta_rule(
            shape,
            m,
            &q[..m * kq],
            &k[..m * kq],
            &v[..m * kv],
            &beta[..m * kg],
            &g[..m * kg],
            &mut s,
        );
        parts.extend(gated_delta_rule(
            shape,
            n - m,
            &q[m * kq..],
            &k[m * kq..],
            &v[m * kv..],
            &beta[m * kg..],
            &g[m * kg..],
            &mut s,
        ));
        assert_eq!(parts, whole);
        assert_eq!(s, whole_s);
    }

    #[test]
    fn delta_rule_hand_case() {
        // One head, Dk = 2, Dv = 1, zero state, g = 0 (no decay), beta = 1: the state
        // stores v at the normalized key, and a query along the key reads v / sqrt(2) back
        // (q is scaled by 1 / sqrt(Dk)).
        let shape = DeltaNetShape {
            key_heads: 1,
            value_heads: 1,
            key_dim: 2,
            value_dim: 1,
        };
        let mut state = vec![0.0; 2];
        let o = gated_delta_rule(
            shape,
            1,
            &[3.0, 0.0],
            &[2.0, 0.0],
            &[5.0],
            &[1.0],
            &[0.0],
            &mut state,
        );
        let kn = 2.0 / (4.0f32 + 1e-6).sqrt();
        let qn = 3.0 / (9.0f32 + 1e-6).sqrt() * (1.0 / 2f32.sqrt());
        assert!(
            (state[0] - kn * 5.0).abs() < 1e-6 && state[1] == 0.0,
            "{state:?}"
        );
        assert!((o[0] - kn * 5.0 * qn).abs() < 1e-5, "{o:?}");
    }

    #[test]
    fn gated_rms_norm_hand_case() {
        // Row [3, 4]: mean of squares 12.5.
        let y = gated_rms_norm(&[3.0, 4.0], &[0.0, 1.0], &[1.0, 2.0], 0.0);
        let s = 1.0 / 12.5f32.sqrt();
        assert_eq!(y[0], 0.0);
        assert!((y[1] - 8.0 * s * silu(1.0)).abs() < 1e-6, "{y:?}");
    }
}
