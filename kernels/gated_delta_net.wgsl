// The gated delta rule of a Gated DeltaNet layer (Qwen3.5-MoE / Qwen3-Next linear
// attention) over n tokens in one dispatch (a decode step or a whole prefill), with the
// recurrent state kept in registers while the workgroup walks the tokens.
//
// Inputs: the conv output y, rows of cw = 2 Hk Dk + Hv Dv floats per token (Hk query heads,
// then Hk key heads, then Hv value heads); b and a of value head h at
// proj[t * stride + b_offset + h] and proj[t * stride + a_offset + h]; a_log and dt_bias
// [Hv]. The state is [Hv, Dk, Dv] (HF's layout), read from state_in at the start (zero
// with `fresh`) and written to state at the end.
// Value head h uses key head h / (Hv / Hk). Per token and value head (HF's
// torch_recurrent_gated_delta_rule, use_qk_l2norm_in_kernel):
//   q^ = q * rsqrt(sum q^2 + 1e-6) * q_scale, k^ = k * rsqrt(sum k^2 + 1e-6),
//   beta = sigmoid(b), decay = exp(-exp(a_log) * softplus(a + dt_bias)),
//   S = decay S; kv = S^T k^; d = beta (v - kv); S += k^ d^T; o = S^T q^,
// o written to o[(t * Hv + h) * Dv + j].
//
// Layout: one workgroup of 256 invocations per (16 columns j of the state, value head);
// grid (Dv / 16 rounded up, Hv) (`kernels::gated_delta_net_groups`). Invocation (r, c) =
// (lid / 16, lid % 16) holds column j = 16 wid.x + c of the state at rows r + 16 m
// (m = 0..15, so Dk <= 256) in four vec4 registers s0..s3 (s2, s3 only when Dk > 128).
// Both dot products a token needs come from the state before its update, so a token takes
// one reduction and one barrier: with A = S^T k and B = S^T q over the raw (unnormalized)
// k and q,
//   kv = decay A rk, d = beta (v - kv), o = decay B qs + d (k^ . q^)
// (rk, qs the two norms' factors), which is the rule above regrouped. Each invocation adds
// its rows' products, the 16 partial sums of a column meet in workgroup memory (two
// buffers by token parity, so one barrier per token suffices), and every invocation of the
// column adds them in the same order, so all hold the same d. The per-token scalars (rk, qs,
// k^ . q^, beta, decay) are computed once per workgroup for 16 tokens at a time, before
// those tokens: 16 invocations per token sum the squares and k . q, one invocation per token
// finishes them (two barriers per 16 tokens). softplus is torch's (x above 20, else
// log1p(exp(x)), here as max(x, 0) + log1p(exp(-|x|)) with log1p by its atanh series, which
// keeps full f32 precision for small values where log(1 + y) would lose it).
//
// With conv_k > 0 (a decode step: n_tokens must be 1) the kernel also runs the layer's
// causal depthwise convolution + SiLU (conv1d_silu.wgsl, same sums in the same order)
// itself instead of reading y: channel c's input is proj[conv_offset + c], its k - 1
// earlier inputs conv_in[s * cw + c] (zeros with `fresh`), its taps consts[c * conv_k + j].
// Each workgroup computes the q and k channels of its key head and the v channels of its
// 16 columns into workgroup memory, and writes the new conv state of the channels it
// alone owns: the v channels of its columns; the q/k channels of a key head by the first
// column block of the key head's first value head. This saves the conv dispatch (and a
// dependency level) per layer and step.
struct Params {
    n_tokens: u32,
    key_heads: u32,
    value_heads: u32,
    dk: u32,
    dv: u32,
    stride: u32, // floats per token of proj
    b_offset: u32,
    a_offset: u32,
    q_scale: f32, // 1 / sqrt(dk), rounded to f32
    fresh: u32, // 1: the states start at zero (state_in, conv_in are not read)
    conv_k: u32, // 0: y holds the conv output; else the conv's width (n_tokens 1)
    conv_offset: u32, // of the conv's channel 0 in a token's row of proj
    a_log_at: u32, // where A_log [Hv] starts in consts
    dt_bias_at: u32, // and dt_bias [Hv]
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> proj: array<f32>;
// The layer's small tensors: the conv taps [cw, conv_k] at 0, A_log and dt_bias.
@group(0) @binding(3) var<storage, read> consts: array<f32>;
@group(0) @binding(4) var<storage, read_write> state: array<f32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;
// The state before the tokens (the session's committed copy); the state after them goes
// to `state`, so a pass whose results are dropped leaves the committed state as it was.
@group(0) @binding(6) var<storage, read> state_in: array<f32>;
// The conv state before the step ([conv_k - 1, cw], oldest first) and after it (written
// with conv_k > 0 only; the two are kept apart like state_in and state).
@group(0) @binding(7) var<storage, read> conv_in: array<f32>;
@group(0) @binding(8) var<storage, read_write> conv_out: array<f32>;

const CB: u32 = 16u; // state columns per workgroup
const RL: u32 = 16u; // invocations per column (row lanes)
const TC: u32 = 16u; // tokens per round of per-token scalars

// Partial sums of A (first 64 vec4) and B (next 64) per token parity (128 vec4 each):
// row lane r of column c at vec4 (r / 4) * 16 + c, component r % 4.
var<workgroup> pab: array<vec4<f32>, 256>;
// Per-token partial sums of k^2, q^2 and k . q (64 vec4 each): lane l of token tk at vec4
// tk * 4 + l / 4, component l % 4.
var<workgroup> pn: array<vec4<f32>, 192>;
// Per token of the round: (rk, qs, k^ . q^, beta) and decay.
var<workgroup> sc: array<vec4<f32>, 16>;
var<workgroup> sd: array<f32, 16>;
// With conv_k > 0: the step's conv outputs of the workgroup's q (dk), k (dk) and v (CB)
// channels, in that order.
var<workgroup> ycv: array<f32, 528>;

// Value i (< dk) of a q or k head: of y at base, or with conv_k > 0 of ycv at wbase.
fn yh(base: u32, wbase: u32, i: u32) -> f32 {
    if (p.conv_k > 0u) {
        return ycv[wbase + i];
    }
    return y[base + i];
}

// Value i of a head (0 past dk).
fn yv(base: u32, wbase: u32, i: u32) -> f32 {
    return select(0.0, yh(base, wbase, min(i, p.dk - 1u)), i < p.dk);
}

// Rows i0, i0 + 16, i0 + 32, i0 + 48 of a head.
fn y4(base: u32, wbase: u32, i0: u32) -> vec4<f32> {
    return vec4<f32>(yv(base, wbase, i0), yv(base, wbase, i0 + RL),
                     yv(base, wbase, i0 + 2u * RL), yv(base, wbase, i0 + 3u * RL));
}

// Input s (0 .. conv_k - 1) of conv channel c for the step: the conv state, then the token.
fn conv_x(s: u32, c: u32, cw: u32) -> f32 {
    if (s + 1u < p.conv_k) {
        return select(conv_in[s * cw + c], 0.0, p.fresh != 0u);
    }
    return proj[p.conv_offset + c];
}

// The step's conv output of channel c (as conv1d_silu.wgsl: taps summed in order, SiLU),
// and, with `keep`, channel c's new conv state (its last conv_k - 1 inputs).
fn conv_step(c: u32, cw: u32, keep: bool) -> f32 {
    let k = p.conv_k;
    var acc = 0.0;
    for (var j = 0u; j < k; j++) {
        acc += consts[c * k + j] * conv_x(j, c, cw);
    }
    if (keep) {
        for (var s = 0u; s + 1u < k; s++) {
            conv_out[s * cw + c] = conv_x(s + 1u, c, cw);
        }
    }
    return acc / (1.0 + exp(-acc));
}

// State entry (i, j) of the head at base (0 outside dk x dv).
fn sv(base: u32, i: u32, j: u32) -> f32 {
    if (i < p.dk && j < p.dv && p.fresh == 0u) {
        return state_in[base + i * p.dv + j];
    }
    return 0.0;
}

fn s4(base: u32, i0: u32, j: u32) -> vec4<f32> {
    return vec4<f32>(sv(base, i0, j), sv(base, i0 + RL, j), sv(base, i0 + 2u * RL, j),
                     sv(base, i0 + 3u * RL, j));
}

fn put_s(base: u32, i0: u32, j: u32, s: vec4<f32>) {
    for (var m = 0u; m < 4u; m++) {
        let i = i0 + m * RL;
        if (i < p.dk && j < p.dv) {
            state[base + i * p.dv + j] = s[m];
        }
    }
}

// log(1 + e) for e in [0, 1]: 2 atanh(s), s = e / (2 + e) <= 1/3, by its series to s^17.
fn log1p_small(e: f32) -> f32 {
    let s = e / (2.0 + e);
    let s2 = s * s;
    var q = 1.0 / 17.0;
    q = q * s2 + 1.0 / 15.0;
    q = q * s2 + 1.0 / 13.0;
    q = q * s2 + 1.0 / 11.0;
    q = q * s2 + 1.0 / 9.0;
    q = q * s2 + 1.0 / 7.0;
    q = q * s2 + 1.0 / 5.0;
    q = q * s2 + 1.0 / 3.0;
    q = q * s2 + 1.0;
    return 2.0 * s * q;
}

// torch's softplus (threshold 20).
fn softplus(x: f32) -> f32 {
    if (x > 20.0) {
        return x;
    }
    return max(x, 0.0) + log1p_small(exp(-abs(x)));
}

// The sum of the 16 partials at vec4 base, base + 16, base + 32, base + 48, in a fixed order.
fn sum16(base: u32) -> f32 {
    let v = (pab[base] + pab[base + CB]) + (pab[base + 2u * CB] + pab[base + 3u * CB]);
    return (v.x + v.y) + (v.z + v.w);
}

fn sum_pn(base: u32) -> f32 {
    let v = (pn[base] + pn[base + 1u]) + (pn[base + 2u] + pn[base + 3u]);
    return (v.x + v.y) + (v.z + v.w);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.y;
    let c = lid % CB;
    let r = lid / CB;
    let j = wid.x * CB + c;
    let n = p.n_tokens;
    let dk = p.dk;
    let dv = p.dv;
    let hv = p.value_heads;
    let col = j < dv;
    let wide = dk > 8u * RL;
    let kh = h / (hv / p.key_heads);
    let cw = 2u * p.key_heads * dk + hv * dv;
    let qoff = kh * dk;
    let koff = p.key_heads * dk + kh * dk;
    let voff = 2u * p.key_heads * dk + h * dv + min(j, dv - 1u);
    let sbase = h * dk * dv;

    if (p.conv_k > 0u) {
        // The step's convolution of this workgroup's channels (n_tokens is 1).
        let owns_qk = wid.x == 0u && h % (hv / p.key_heads) == 0u;
        for (var i = lid; i < 2u * dk + CB; i += 256u) {
            if (i < 2u * dk) {
                let ch = select(koff + (i - dk), qoff + i, i < dk);
                ycv[i] = conv_step(ch, cw, owns_qk);
            } else {
                let jj = wid.x * CB + (i - 2u * dk);
                let ch = 2u * p.key_heads * dk + h * dv + min(jj, dv - 1u);
                ycv[i] = conv_step(ch, cw, jj < dv);
            }
        }
        workgroupBarrier();
    }

    var s0 = s4(sbase, r, j);
    var s1 = s4(sbase, r + 4u * RL, j);
    var s2 = vec4<f32>(0.0);
    var s3 = vec4<f32>(0.0);
    if (wide) {
        s2 = s4(sbase, r + 8u * RL, j);
        s3 = s4(sbase, r + 12u * RL, j);
    }

    for (var t0 = 0u; t0 < n; t0 += TC) {
        // The scalars of tokens t0 .. t0 + 15: 16 invocations per token sum k^2, q^2, k . q.
        let tk = lid / RL;
        let ln = lid % RL;
        let tt = t0 + tk;
        var nk = 0.0;
        var nq = 0.0;
        var nkq = 0.0;
        if (tt < n) {
            let base = tt * cw;
            for (var i = ln; i < dk; i += RL) {
                let kv = yh(base + koff, dk, i);
                let qv = yh(base + qoff, 0u, i);
                nk += kv * kv;
                nq += qv * qv;
                nkq += kv * qv;
            }
        }
        let at = tk * 4u + ln / 4u;
        pn[at][ln % 4u] = nk;
        pn[64u + at][ln % 4u] = nq;
        pn[128u + at][ln % 4u] = nkq;
        workgroupBarrier();
        if (lid < TC && t0 + lid < n) {
            let t = t0 + lid;
            let rk = inverseSqrt(sum_pn(lid * 4u) + 1e-6);
            let qs = inverseSqrt(sum_pn(64u + lid * 4u) + 1e-6) * p.q_scale;
            let kq = (sum_pn(128u + lid * 4u) * rk) * qs;
            let b = proj[t * p.stride + p.b_offset + h];
            let a = proj[t * p.stride + p.a_offset + h];
            let beta = 1.0 / (1.0 + exp(-b));
            let g = -exp(consts[p.a_log_at + h]) * softplus(a + consts[p.dt_bias_at + h]);
            sc[lid] = vec4<f32>(rk, qs, kq, beta);
            sd[lid] = exp(g);
        }
        workgroupBarrier();

        let t1 = min(t0 + TC, n);
        for (var t = t0; t < t1; t++) {
            let base = t * cw;
            let k0 = y4(base + koff, dk, r);
            let k1 = y4(base + koff, dk, r + 4u * RL);
            let q0 = y4(base + qoff, 0u, r);
            let q1 = y4(base + qoff, 0u, r + 4u * RL);
            var k2 = vec4<f32>(0.0);
            var k3 = vec4<f32>(0.0);
            var pa = dot(s0, k0) + dot(s1, k1);
            var pb = dot(s0, q0) + dot(s1, q1);
            if (wide) {
                k2 = y4(base + koff, dk, r + 8u * RL);
                k3 = y4(base + koff, dk, r + 12u * RL);
                let q2 = y4(base + qoff, 0u, r + 8u * RL);
                let q3 = y4(base + qoff, 0u, r + 12u * RL);
                pa += dot(s2, k2) + dot(s3, k3);
                pb += dot(s2, q2) + dot(s3, q3);
            }
            var v = 0.0;
            if (p.conv_k > 0u) {
                v = ycv[2u * dk + c];
            } else {
                v = y[base + voff];
            }
            v = select(0.0, v, col);
            let par = (t & 1u) * 128u;
            let slot = (r / 4u) * CB + c;
            pab[par + slot][r % 4u] = pa;
            pab[par + 64u + slot][r % 4u] = pb;
            workgroupBarrier();
            let a_sum = sum16(par + c);
            let b_sum = sum16(par + 64u + c);
            let x = sc[t - t0];
            let decay = sd[t - t0];
            let kv = decay * (a_sum * x.x);
            let d = x.w * (v - kv);
            let out = decay * (b_sum * x.y) + d * x.z;
            s0 = decay * s0 + (k0 * x.x) * d;
            s1 = decay * s1 + (k1 * x.x) * d;
            if (wide) {
                s2 = decay * s2 + (k2 * x.x) * d;
                s3 = decay * s3 + (k3 * x.x) * d;
            }
            if (r == 0u && col) {
                o[(t * hv + h) * dv + j] = out;
            }
        }
    }

    put_s(sbase, r, j, s0);
    put_s(sbase, r + 4u * RL, j, s1);
    if (wide) {
        put_s(sbase, r + 8u * RL, j, s2);
        put_s(sbase, r + 12u * RL, j, s3);
    }
}
