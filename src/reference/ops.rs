//! The building blocks of the forward pass, on plain row-major `f32` slices.
//!
//! Every function computes in `f32`, in the order HF transformers' eager PyTorch code does,
//! so that results agree with it to a few units in the last place. Accumulations are plain
//! sequential `f32` sums (PyTorch uses blocked/vectorized sums; the difference is rounding
//! noise far below any test tolerance).
//!
//! Shape mismatches between arguments are programming errors and panic with a message
//! naming the sizes involved.

/// RMSNorm of each row of `x` (`rows x n`, `n = weight.len()`):
/// `y = (x * (1 / sqrt(mean(x^2) + eps))) * weight`.
///
/// As in HF `Qwen3MoeRMSNorm` (which does `hidden.pow(2).mean(-1)` and `torch.rsqrt` in
/// f32), the mean of squares is an `f32` sum divided by `n` in `f32`, and the reciprocal
/// square root is computed in `f32` as `1 / sqrt(.)`. The weight is a plain multiplier
/// (not `1 + w`).
///
/// # Panics
/// If `weight` is empty or `x.len()` is not a multiple of `weight.len()`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let n = weight.len();
    assert!(
        n > 0 && x.len() % n == 0,
        "rms_norm: input of {} values is not a whole number of rows of {n}",
        x.len()
    );
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks_exact(n) {
        let sum_sq: f32 = row.iter().map(|v| v * v).sum();
        let mean = sum_sq / n as f32;
        let inv = 1.0 / (mean + eps).sqrt();
        y.extend(row.iter().zip(weight).map(|(v, w)| (v * inv) * w));
    }
    y
}

/// A linear layer without bias: `y[t, r] = sum_c w[r * cols + c] * x[t * cols + c]`.
///
/// `w` is `[rows, cols]` (PyTorch `Linear` weight `[out, in]`), `x` is `n x cols`; the
/// result is `n x rows`.
///
/// # Panics
/// If `w.len() != rows * cols` or `x.len() != n * cols`.
pub fn matmul(w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f32> {
    assert_eq!(
        w.len(),
        rows * cols,
        "matmul: weight is not {rows} x {cols}"
    );
    assert_eq!(x.len(), n * cols, "matmul: input is not {n} x {cols}");
    let mut y = Vec::with_capacity(n * rows);
    for t in 0..n {
        let xt = &x[t * cols..(t + 1) * cols];
        for r in 0..rows {
            let wr = &w[r * cols..(r + 1) * cols];
            y.push(dot(wr, xt));
        }
    }
    y
}

/// Sequential `f32` dot product.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Adds `bias` (length `m`) to every row of `x` (`n x m`).
///
/// # Panics
/// If `bias` is empty or `x.len()` is not a multiple of `bias.len()`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    let m = bias.len();
    assert!(
        m > 0 && x.len() % m == 0,
        "add_bias: input of {} values is not a whole number of rows of {m}",
        x.len()
    );
    for row in x.chunks_exact_mut(m) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// RoPE inverse frequencies, `rotary_dim / 2` of them: `inv_freq[i] = 1 / theta^(2i / d)`,
/// computed in f32 as HF transformers' default RoPE does
/// (`1.0 / (theta ** (torch.arange(0, d, 2).float() / d))`).
///
/// The exponent `(2i as f32) / (d as f32)` is an f32 division; `theta ** tensor_f32` is an
/// f32 `pow` whose Python-float base is rounded to f32, so here `(theta as f32).powf(exp)`,
/// then an f32 reciprocal. PyTorch's vectorized `pow` is not always correctly rounded:
/// against torch 2.15 on CPU this matches every value bit for bit in the cases checked
/// (theta 1e4 .. 1e7, d 16 .. 256) except one element of 64 for theta 1e6 / d 128
/// (i = 37), which differs by one ulp.
///
/// # Panics
/// If `rotary_dim` is zero or odd.
pub fn rope_inv_freq(theta: f64, rotary_dim: usize) -> Vec<f32> {
    assert!(
        rotary_dim > 0 && rotary_dim % 2 == 0,
        "rope_inv_freq: rotary_dim {rotary_dim} must be positive and even"
    );
    let base = theta as f32;
    (0..rotary_dim / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / rotary_dim as f32;
            1.0f32 / base.powf(exponent)
        })
        .collect()
}

/// RoPE cosine and sine tables, each `n_pos x (rotary_dim / 2)` row-major: entry
/// `[p, i]` is `cos(p * inv_freq[i])` / `sin(p * inv_freq[i])` with `inv_freq` from
/// [`rope_inv_freq`].
///
/// These are the single source of truth for RoPE: the GPU kernels use the same tables.
/// They reproduce HF transformers' `RotaryEmbedding.forward`, which works in f32:
///
/// - `freqs = (pos as f32) * inv_freq[i]`, an f32 product (so large positions carry the
///   f32 rounding of the angle, as in HF);
/// - `cos`/`sin` of that f32 angle, computed in f64 and rounded to f32 (correctly
///   rounded). PyTorch's vectorized f32 `cos`/`sin` differ from this by at most one ulp
///   (in about 5% of entries, measured against torch 2.15 on CPU up to position 4096).
///
/// # Panics
/// If `rotary_dim` is zero or odd.
pub fn rope_tables(theta: f64, rotary_dim: usize, n_pos: usize) -> (Vec<f32>, Vec<f32>) {
    rope_tables_scaled(theta, rotary_dim, n_pos, None)
}

/// The inverse frequencies of YaRN-scaled RoPE, as transformers' `_compute_yarn_parameters`
/// computes them in f32: with `p = theta^(2i / d)`, `extrap = 1 / p`, `interp = 1 / (factor
/// p)`, the ramp `r = clamp((i - low) / (high - low), 0, 1)` between the correction dims
/// `d ln(orig / (2 pi beta)) / (2 ln theta)` of `beta_fast` (low) and `beta_slow` (high),
/// floored / ceiled with `truncate` and clipped to `[0, d - 1]`: `interp r + extrap (1 - r)`.
///
/// # Panics
/// If `rotary_dim` is zero or odd.
pub fn yarn_inv_freq(theta: f64, rotary_dim: usize, y: &crate::config::Yarn) -> Vec<f32> {
    assert!(
        rotary_dim > 0 && rotary_dim % 2 == 0,
        "yarn_inv_freq: rotary_dim {rotary_dim} must be positive and even"
    );
    let d = rotary_dim as f64;
    let orig = y.original_max_position_embeddings as f64;
    let corr = |rot: f64| d * (orig / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln());
    let (mut low, mut high) = (corr(y.beta_fast), corr(y.beta_slow));
    if y.truncate {
        low = low.floor();
        high = high.ceil();
    }
    let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
    if low == high {
        high += 0.001;
    }
    let (base, factor) = (theta as f32, y.factor as f32);
    // As torch: `(arange(f32) - low) / (high - low)`, the Python floats rounded to f32
    // after their difference.
    let (span, low) = ((high - low) as f32, low as f32);
    (0..rotary_dim / 2)
        .map(|i| {
            let p = base.powf((2 * i) as f32 / rotary_dim as f32);
            let (extrap, interp) = (1.0 / p, 1.0 / (factor * p));
            let ramp = ((i as f32 - low) / span).clamp(0.0, 1.0);
            let keep = 1.0 - ramp;
            interp * (1.0 - keep) + extrap * keep
        })
        .collect()
}

/// [`rope_tables`] with YaRN scaling where `yarn` is given: its inverse frequencies
/// ([`yarn_inv_freq`]) and every cosine and sine multiplied by its `attention_factor`
/// (in f32, as transformers scales them).
///
/// # Panics
/// If `rotary_dim` is zero or odd.
pub fn rope_tables_scaled(
    theta: f64,
    rotary_dim: usize,
    n_pos: usize,
    yarn: Option<&crate::config::Yarn>,
) -> (Vec<f32>, Vec<f32>) {
    let inv_freq = match yarn {
        Some(y) => yarn_inv_freq(theta, rotary_dim, y),
        None => rope_inv_freq(theta, rotary_dim),
    };
    let scale = yarn.map(|y| y.attention_factor as f32);
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(n_pos * half);
    let mut sin = Vec::with_capacity(n_pos * half);
    for p in 0..n_pos {
        for &f in &inv_freq {
            let angle = (p as f32) * f;
            let (s, c) = f64::from(angle).sin_cos();
            let (c, s) = (c as f32, s as f32);
            match scale {
                Some(a) => {
                    cos.push(c * a);
                    sin.push(s * a);
                }
                None => {
                    cos.push(c);
                    sin.push(s);
                }
            }
        }
    }
    (cos, sin)
}

/// Applies RoPE in place, NeoX "rotate_half" form, to `x` = `[n_tokens, n_heads, head_dim]`.
///
/// Token `t` is at position `pos0 + t`. With `half = rotary_dim / 2`, for `i < half`:
/// `x1 = x[i]`, `x2 = x[i + half]`, `out[i] = x1 * cos - x2 * sin`,
/// `out[i + half] = x2 * cos + x1 * sin`, with `cos`/`sin` from row `pos0 + t`, column `i`
/// of the [`rope_tables`]. Dims `>= rotary_dim` of each head are left untouched.
///
/// # Panics
/// If the sizes disagree or the tables have fewer than `pos0 + n_tokens` rows.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    x: &mut [f32],
    n_tokens: usize,
    n_heads: usize,
    head_dim: usize,
    rotary_dim: usize,
    pos0: usize,
    cos: &[f32],
    sin: &[f32],
) {
    assert_eq!(
        x.len(),
        n_tokens * n_heads * head_dim,
        "rope: input is not [{n_tokens}, {n_heads}, {head_dim}]"
    );
    assert!(
        rotary_dim % 2 == 0 && rotary_dim <= head_dim,
        "rope: rotary_dim {rotary_dim} must be even and at most head_dim {head_dim}"
    );
    let half = rotary_dim / 2;
    assert!(
        cos.len() == sin.len() && cos.len() >= (pos0 + n_tokens) * half,
        "rope: tables hold {} positions, {} needed",
        cos.len() / half.max(1),
        pos0 + n_tokens
    );
    for t in 0..n_tokens {
        let p = pos0 + t;
        let c = &cos[p * half..(p + 1) * half];
        let s = &sin[p * half..(p + 1) * half];
        for h in 0..n_heads {
            let head = &mut x[(t * n_heads + h) * head_dim..(t * n_heads + h + 1) * head_dim];
            for i in 0..half {
                let x1 = head[i];
                let x2 = head[i + half];
                // HF: q * cos + rotate_half(q) * sin, rotate_half(q) = cat(-q2, q1).
                head[i] = x1 * c[i] + (-x2) * s[i];
                head[i + half] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

/// Causal scaled-dot-product attention with grouped-query heads.
///
/// `q` is `[n_tokens, n_heads, head_dim]` (already normed and roped), for positions
/// `pos0 .. pos0 + n_tokens`; `k` and `v` are the whole cache
/// `[pos0 + n_tokens, n_kv_heads, head_dim]`. Query `t` attends to keys `0 ..= pos0 + t`.
/// Scores are `(q . k) * scale` with `scale = head_dim^-0.5` (computed in f64, rounded to
/// f32, as PyTorch does for a Python-float scalar); softmax in f32 after subtracting the
/// row maximum. Query head `h` uses kv head `h / (n_heads / n_kv_heads)`.
/// Returns `[n_tokens, n_heads, head_dim]`.
///
/// # Panics
/// If the sizes disagree or `n_kv_heads` does not divide `n_heads`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_tokens: usize,
    pos0: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    attention_with(
        q,
        k,
        v,
        (n_tokens, pos0),
        (n_heads, n_kv_heads, head_dim),
        None,
        None,
    )
}

/// [`attention`] with gpt-oss's variants: `sinks` (one logit per query head) joins each
/// softmax (its maximum and its denominator, with no value), as transformers' eager
/// attention concatenates it to the scores and drops its column after the softmax; with
/// `window`, query `t` attends only to the last `window` keys up to its own position
/// (keys `j` with `pos0 + t - window < j <= pos0 + t`).
///
/// # Panics
/// As [`attention`]; also if `sinks` does not hold one value per query head or `window`
/// is zero.
pub fn attention_with(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (n_tokens, pos0): (usize, usize),
    (n_heads, n_kv_heads, head_dim): (usize, usize, usize),
    sinks: Option<&[f32]>,
    window: Option<usize>,
) -> Vec<f32> {
    if let Some(s) = sinks {
        assert_eq!(s.len(), n_heads, "attention: one sink per query head");
    }
    assert!(window != Some(0), "attention: a window of 0 keys");
    assert!(
        n_kv_heads > 0 && n_heads % n_kv_heads == 0,
        "attention: {n_kv_heads} kv heads do not divide {n_heads} query heads"
    );
    let n_keys = pos0 + n_tokens;
    assert_eq!(
        q.len(),
        n_tokens * n_heads * head_dim,
        "attention: q is not [{n_tokens}, {n_heads}, {head_dim}]"
    );
    assert_eq!(
        k.len(),
        n_keys * n_kv_heads * head_dim,
        "attention: k is not [{n_keys}, {n_kv_heads}, {head_dim}]"
    );
    assert_eq!(
        v.len(),
        n_keys * n_kv_heads * head_dim,
        "attention: v is not [{n_keys}, {n_kv_heads}, {head_dim}]"
    );
    let group = n_heads / n_kv_heads;
    let scale = (1.0 / (head_dim as f64).sqrt()) as f32;
    let kv_row = |j: usize, kvh: usize| (j * n_kv_heads + kvh) * head_dim;
    let mut out = vec![0.0f32; q.len()];
    let mut scores = Vec::with_capacity(n_keys);
    for t in 0..n_tokens {
        let visible = pos0 + t + 1;
        let first = window.map_or(0, |w| visible.saturating_sub(w));
        for h in 0..n_heads {
            let kvh = h / group;
            let qo = (t * n_heads + h) * head_dim;
            let qh = &q[qo..qo + head_dim];
            scores.clear();
            scores.extend((first..visible).map(|j| {
                let ko = kv_row(j, kvh);
                dot(qh, &k[ko..ko + head_dim]) * scale
            }));
            match sinks {
                // The sink as one more score whose probability is dropped.
                Some(s) => {
                    scores.push(s[h]);
                    softmax_in_place(&mut scores);
                    scores.pop();
                }
                None => softmax_in_place(&mut scores),
            }
            let oh = &mut out[qo..qo + head_dim];
            for (i, &p) in scores.iter().enumerate() {
                let vo = kv_row(first + i, kvh);
                for (o, &vv) in oh.iter_mut().zip(&v[vo..vo + head_dim]) {
                    *o += p * vv;
                }
            }
        }
    }
    out
}

/// Softmax of one row in f32: subtract the maximum, exponentiate, divide by the sum.
pub(crate) fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Softmax of each row of `x` (`rows x n`), in f32, subtracting the row maximum first.
///
/// # Panics
/// If `n` is zero or `x.len()` is not a multiple of `n`.
pub fn softmax_rows(x: &[f32], n: usize) -> Vec<f32> {
    assert!(
        n > 0 && x.len() % n == 0,
        "softmax_rows: input of {} values is not a whole number of rows of {n}",
        x.len()
    );
    let mut y = x.to_vec();
    for row in y.chunks_exact_mut(n) {
        softmax_in_place(row);
    }
    y
}

/// gpt-oss's expert activation of `gate` and `up` (each `n x inter`): with
/// `g = min(gate, limit)`, `(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha g)`, the
/// sigmoid as `1 / (1 + exp(-alpha g))`.
///
/// # Panics
/// If the lengths differ.
pub fn clamped_swiglu(gate: &[f32], up: &[f32], alpha: f32, limit: f32) -> Vec<f32> {
    assert_eq!(
        gate.len(),
        up.len(),
        "clamped_swiglu: gate and up lengths differ"
    );
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| {
            let g = g.min(limit);
            let u = u.clamp(-limit, limit);
            (u + 1.0) * (g * (1.0 / (1.0 + (-(alpha * g)).exp())))
        })
        .collect()
}

/// SiLU: `x * sigmoid(x)`, computed as `x / (1 + exp(-x))`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// SwiGLU: `silu(gate[i]) * up[i]` elementwise.
///
/// # Panics
/// If the lengths differ.
pub fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    assert_eq!(gate.len(), up.len(), "swiglu: gate and up lengths differ");
    gate.iter().zip(up).map(|(&g, &u)| silu(g) * u).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn rms_norm_hand_case() {
        // Row [3, 4]: mean of squares 12.5, 1/sqrt(12.5) = 0.28284271.
        // Row [2, 2]: mean of squares 4, scale 1/2.
        let y = rms_norm(&[3.0, 4.0, 2.0, 2.0], &[1.0, 2.0], 0.0);
        let s = 1.0 / 12.5f32.sqrt();
        assert!(close(&y, &[3.0 * s, 8.0 * s, 1.0, 2.0], 1e-7), "{y:?}");
        // eps keeps a zero row finite.
        let y = rms_norm(&[0.0, 0.0], &[1.0, 1.0], 1e-6);
        assert_eq!(y, vec![0.0, 0.0]);
    }

    #[test]
    fn matmul_hand_case() {
        // w = [[1, 2, 3], [4, 5, 6]], x rows [1, 0, -1], [2, 1, 0].
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let x = [1.0, 0.0, -1.0, 2.0, 1.0, 0.0];
        assert_eq!(matmul(&w, 2, 3, &x, 2), vec![-2.0, -2.0, 4.0, 13.0]);
    }

    #[test]
    fn add_bias_rows() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        add_bias(&mut x, &[10.0, 20.0]);
        assert_eq!(x, vec![11.0, 22.0, 13.0, 24.0]);
    }

    #[test]
    fn rope_tables_values() {
        let (cos, sin) = rope_tables(10000.0, 4, 3);
        assert_eq!(cos.len(), 6);
        // Position 0: angle 0 everywhere.
        assert_eq!(&cos[..2], &[1.0, 1.0]);
        assert_eq!(&sin[..2], &[0.0, 0.0]);
        // inv_freq = [1, 10000^-0.5 = 0.01].
        assert!(close(&cos[2..4], &[1f32.cos(), 0.01f32.cos()], 1e-7));
        assert!(close(&sin[4..6], &[2f32.sin(), 0.02f32.sin()], 1e-7));
    }

    #[test]
    // The values are torch's f32 results printed as Python floats (exact).
    #[allow(clippy::excessive_precision)]
    fn rope_inv_freq_matches_torch() {
        // torch 2.15 CPU: (1.0 / (theta ** (torch.arange(0, d, 2).float() / d))).tolist()
        let cases: [(f64, usize, &[f32]); 3] = [
            (
                1e6,
                16,
                &[
                    1.0,
                    0.17782793939113617,
                    0.03162277862429619,
                    0.005623413249850273,
                    0.0010000000474974513,
                    0.00017782794020604342,
                    3.162277425872162e-05,
                    5.62341347176698e-06,
                ],
            ),
            (
                5e5,
                16,
                &[
                    1.0,
                    0.193922758102417,
                    0.03760603070259094,
                    0.00729266507551074,
                    0.001414213445968926,
                    0.00027424818836152554,
                    5.3182957344688475e-05,
                    1.0313385246263351e-05,
                ],
            ),
            (
                1e4,
                8,
                &[
                    1.0,
                    0.10000000149011612,
                    0.009999999776482582,
                    0.0010000000474974513,
                ],
            ),
        ];
        for (theta, d, torch) in cases {
            assert_eq!(rope_inv_freq(theta, d), torch, "theta {theta}, d {d}");
        }
    }

    #[test]
    // The values are torch's f32 results printed as Python floats (exact).
    #[allow(clippy::excessive_precision)]
    fn rope_tables_match_torch() {
        // torch 2.15 CPU, theta 1e6, d 16: (pos.float() * inv_freq).cos() / .sin(), rows 1, 2.
        let cos_torch: [f32; 16] = [
            0.5403023362159729,
            0.9842302203178406,
            0.999500036239624,
            0.9999842047691345,
            0.9999995231628418,
            1.0,
            1.0,
            1.0,
            -0.416146844625473,
            0.9374183416366577,
            0.9980006814002991,
            0.9999367594718933,
            0.9999980330467224,
            0.9999999403953552,
            1.0,
            1.0,
        ];
        let sin_torch: [f32; 16] = [
            0.8414709568023682,
            0.17689219117164612,
            0.031617507338523865,
            0.0056233834475278854,
            0.0009999999310821295,
            0.00017782794020604342,
            3.162277425872162e-05,
            5.62341347176698e-06,
            0.9092974066734314,
            0.3482052683830261,
            0.06320340186357498,
            0.01124658901244402,
            0.0019999986980110407,
            0.00035565588041208684,
            6.324554851744324e-05,
            1.124682694353396e-05,
        ];
        let (cos, sin) = rope_tables(1e6, 16, 3);
        // At most one ulp apart (torch's vectorized cos/sin are not correctly rounded).
        let ulp_close = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).abs() <= 1;
        for i in 0..16 {
            assert!(
                ulp_close(cos[8 + i], cos_torch[i]),
                "cos {i}: {} vs {}",
                cos[8 + i],
                cos_torch[i]
            );
            assert!(
                ulp_close(sin[8 + i], sin_torch[i]),
                "sin {i}: {} vs {}",
                sin[8 + i],
                sin_torch[i]
            );
        }
    }

    #[test]
    fn rope_at_position_zero_is_identity() {
        let (cos, sin) = rope_tables(1e6, 8, 4);
        let orig: Vec<f32> = (0..2 * 3 * 8).map(|i| i as f32 * 0.1 - 1.0).collect();
        let mut x = orig.clone();
        rope(&mut x, 2, 3, 8, 8, 0, &cos, &sin);
        // Token 0 (position 0) is unchanged; token 1 (position 1) is rotated.
        assert_eq!(&x[..24], &orig[..24]);
        assert_ne!(&x[24..], &orig[24..]);
    }

    #[test]
    fn rope_rotates_pairs_and_leaves_tail() {
        // head_dim 6, rotary_dim 4: pairs (0, 2) and (1, 3); dims 4, 5 untouched.
        let (cos, sin) = rope_tables(10000.0, 4, 2);
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        rope(&mut x, 1, 1, 6, 4, 1, &cos, &sin);
        let (c0, s0) = (1f32.cos(), 1f32.sin());
        let (c1, s1) = (0.01f32.cos(), 0.01f32.sin());
        let expected = [
            1.0 * c0 - 3.0 * s0,
            2.0 * c1 - 4.0 * s1,
            3.0 * c0 + 1.0 * s0,
            4.0 * c1 + 2.0 * s1,
            5.0,
            6.0,
        ];
        assert!(close(&x, &expected, 1e-6), "{x:?}");
        // A rotation preserves the norm of each pair.
        assert!(((x[0] * x[0] + x[2] * x[2]) - 10.0).abs() < 1e-5);
    }

    #[test]
    fn attention_with_one_key_returns_v() {
        let q = [0.3, -1.0, 2.0, 0.5];
        let k = [1.0, 2.0];
        let v = [7.0, -3.0];
        // 2 query heads share one kv head.
        let out = attention(&q, &k, &v, 1, 0, 2, 1, 2);
        assert_eq!(out, vec![7.0, -3.0, 7.0, -3.0]);
    }

    #[test]
    fn attention_causal_and_gqa() {
        // head_dim 1, 2 kv heads, 4 query heads (group 2), 2 tokens, pos0 = 1.
        // keys/values for positions 0, 1, 2.
        let k = [0.0, 1.0, 0.0, 2.0, 0.0, 3.0];
        let v = [1.0, 10.0, 2.0, 20.0, 4.0, 40.0];
        let q = [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0];
        let out = attention(&q, &k, &v, 2, 1, 4, 2, 1);
        // Heads 0, 1 use kv head 0 whose keys are all 0: uniform average of visible v.
        assert!(close(&[out[0], out[1]], &[1.5, 1.5], 1e-6), "{out:?}");
        assert!(
            close(&[out[4], out[5]], &[7.0 / 3.0, 7.0 / 3.0], 1e-6),
            "{out:?}"
        );
        // Heads 2, 3 use kv head 1; token 0 (position 1) sees keys 1, 2 with q = 1.
        let (a, b) = (1.0f32, 2.0f32);
        let (ea, eb) = (a.exp(), b.exp());
        let want = (10.0 * ea + 20.0 * eb) / (ea + eb);
        assert!((out[2] - want).abs() < 1e-4, "{} vs {want}", out[2]);
        assert_eq!(out[2], out[3]);
        // Token 1 (position 2) sees all three keys, q = 2.
        let e = [2f32.exp(), 4f32.exp(), 6f32.exp()];
        let want = (10.0 * e[0] + 20.0 * e[1] + 40.0 * e[2]) / (e[0] + e[1] + e[2]);
        assert!((out[6] - want).abs() < 1e-4, "{} vs {want}", out[6]);
    }

    #[test]
    fn silu_and_swiglu() {
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((silu(-20.0)).abs() < 1e-7);
        assert_eq!(swiglu(&[0.0, 1.0], &[5.0, 2.0]), vec![0.0, 2.0 * silu(1.0)]);
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let y = softmax_rows(&[1000.0, 1000.0, -5.0, 0.0, 1.0, 2.0], 3);
        assert!(y.iter().all(|v| v.is_finite()));
        assert!((y[0] - 0.5).abs() < 1e-7);
        assert!((y[3..].iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
