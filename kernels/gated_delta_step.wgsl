// One decode step of a Gated DeltaNet layer (Qwen3.5-MoE / Qwen3-Next linear attention)
// in one dispatch: what conv1d_silu, gated_delta_net and gated_rmsnorm do for one token,
// without the two round trips through memory and the barriers between them.
//
// Per value head h (key head kh = h / (Hv / Hk)), from the token's projection row
// proj, with the C = 2 Hk Dk + Hv Dv conv channels [q | k | v] at `offset` and z, b, a at
// theirs:
//   1. conv + SiLU of the head's channels (q and k of kh, v of h), each
//      silu(sum_{j < K} w[c * K + j] * x_j[c]) with x_0 .. x_{K-2} the conv state
//      (state rows, oldest first; zeros with `fresh`) and x_{K-1} the token; the new conv
//      state (rows x_1 .. x_{K-1}) goes to conv_out: v channels by their head, q and k
//      channels by the first value head of their key head (each channel written once).
//   2. the gated delta rule as gated_delta_net.wgsl (its regrouped form: kv = decay A rk,
//      d = beta (v - kv), o = decay B qs + d (k^ . q^) with A = S^T k, B = S^T q over
//      the raw k and q), the state [Hv, Dk, Dv] read from state_in (zero with `fresh`)
//      and written to state_out.
//   3. the gated RMSNorm (norm before gate) of the head's Dv outputs:
//      out[h * Dv + j] = (wn[j] * (o_j * inverseSqrt(mean(o^2) + eps))) * silu(z_j).
// `consts` holds the layer's small tensors: the conv weights [C, K] at 0, A_log and
// dt_bias [Hv] and the norm weight [Dv] at their offsets (floats).
//
// Layout: one workgroup of 256 invocations per value head, grid (Hv, 1). For the state,
// invocation lid is column j = lid % Dv of lane r = lid / Dv (L = lanes = 256 / Dv lanes;
// invocations past L Dv only help with the conv and the sums), holding rows
// i = r + L m (m < ceil(Dk / L) <= 64) of column j in registers: Dv <= 256,
// Dk <= 256 and ceil(Dk / L) <= 64 (`kernels::gated_delta_step_fits`; Qwen3.5's
// Dk = Dv = 128: 2 lanes of 64 rows). Sums over the workgroup are trees in a fixed
// order, the lanes' partial dot products added in lane order.
struct Params {
    key_heads: u32,
    value_heads: u32,
    dk: u32,
    dv: u32,
    k: u32,       // conv kernel width (<= KMAX)
    lanes: u32,   // 256 / dv
    b_offset: u32, // of b in proj (floats)
    a_offset: u32,
    z_offset: u32,
    a_log_offset: u32, // in consts (floats)
    dt_bias_offset: u32,
    norm_offset: u32,
    q_scale: f32, // 1 / sqrt(dk), rounded to f32
    eps: f32,
    fresh: u32, // 1: the states start at zero (conv_in and state_in are not read)
    offset: u32, // of the conv channels in proj (floats)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> proj: array<f32>;
@group(0) @binding(2) var<storage, read> consts: array<f32>;
@group(0) @binding(3) var<storage, read> conv_in: array<f32>;
@group(0) @binding(4) var<storage, read_write> conv_out: array<f32>;
@group(0) @binding(5) var<storage, read> state_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> state_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
const KMAX: u32 = 8u;

// The head's conv outputs: q, k (Dk each), v (Dv).
var<workgroup> qs: array<f32, 256>;
var<workgroup> ks: array<f32, 256>;
var<workgroup> vs: array<f32, 256>;
// Tree sums, and the lanes' partial (A, B) per column.
var<workgroup> red: array<vec4<f32>, 256>;
var<workgroup> pab: array<vec2<f32>, 256>;

// log(1 + e) for e in [0, 1] (as gated_delta_net.wgsl): 2 atanh(e / (2 + e)) by its series.
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

// The workgroup's sum of v (each component), a tree in a fixed order; uniform control
// flow only.
fn wg_sum(v: vec4<f32>, lid: u32) -> vec4<f32> {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let dk = p.dk;
    let dv = p.dv;
    let hk = p.key_heads;
    let hv = p.value_heads;
    let group = hv / hk;
    let kh = h / group;
    let ch = 2u * hk * dk + hv * dv;
    let kw = p.k;
    let fresh = p.fresh != 0u;

    // 1. The conv of the head's 2 Dk + Dv channels.
    let writes_qk = h % group == 0u;
    for (var x = lid; x < 2u * dk + dv; x += WG) {
        var c = 0u;
        if (x < dk) {
            c = kh * dk + x;
        } else if (x < 2u * dk) {
            c = hk * dk + kh * dk + (x - dk);
        } else {
            c = 2u * hk * dk + h * dv + (x - 2u * dk);
        }
        // x_0 .. x_{K-1} (state rows, then the token), loaded without branches on the
        // data so that all the loads are in flight together.
        let cur = proj[p.offset + c];
        let top = max(kw, 2u) - 2u; // the last state row
        var xv: array<f32, KMAX>;
        var acc = 0.0;
        for (var j = 0u; j < KMAX; j++) {
            if (j < kw) {
                let st = select(conv_in[min(j, top) * ch + c], 0.0, fresh);
                xv[j] = select(st, cur, j + 1u == kw);
                acc += consts[c * kw + j] * xv[j];
            }
        }
        let y = acc / (1.0 + exp(-acc));
        if (x < dk) {
            qs[x] = y;
        } else if (x < 2u * dk) {
            ks[x - dk] = y;
        } else {
            vs[x - 2u * dk] = y;
        }
        if (x >= 2u * dk || writes_qk) {
            for (var j = 1u; j < KMAX; j++) {
                if (j < kw) {
                    conv_out[(j - 1u) * ch + c] = xv[j];
                }
            }
        }
    }
    workgroupBarrier();

    // The token's scalars: k^2, q^2 and k . q summed over Dk.
    var part = vec4<f32>(0.0);
    for (var i = lid; i < dk; i += WG) {
        part += vec4<f32>(ks[i] * ks[i], qs[i] * qs[i], ks[i] * qs[i], 0.0);
    }
    let sums = wg_sum(part, lid);
    let rk = inverseSqrt(sums.x + 1e-6);
    let qsc = inverseSqrt(sums.y + 1e-6) * p.q_scale;
    let kq = (sums.z * rk) * qsc;
    let beta = 1.0 / (1.0 + exp(-proj[p.b_offset + h]));
    let g = -exp(consts[p.a_log_offset + h]) * softplus(proj[p.a_offset + h]
        + consts[p.dt_bias_offset + h]);
    let decay = exp(g);

    // 2. The delta rule: lane r of column j holds rows r + L m.
    let lanes = p.lanes;
    let j = lid % dv;
    let r = lid / dv;
    let holds = r < lanes;
    let sbase = h * dk * dv;
    var s: array<vec4<f32>, 16>;
    var pa = 0.0;
    var pb = 0.0;
    // Branch-free loads (rows past Dk re-read row Dk - 1 and are zeroed), so all of an
    // invocation's loads are in flight together.
    let last = (dk - 1u) * dv + j;
    for (var m = 0u; m < 16u; m++) {
        let i = r + lanes * (4u * m + vec4<u32>(0u, 1u, 2u, 3u));
        let keep = (i < vec4<u32>(dk)) & vec4<bool>(holds);
        let at = min(i * dv + j, vec4<u32>(last));
        let v4 = vec4<f32>(state_in[sbase + at.x], state_in[sbase + at.y],
                           state_in[sbase + at.z], state_in[sbase + at.w]);
        let ic = min(i, vec4<u32>(dk - 1u));
        let k4 = vec4<f32>(ks[ic.x], ks[ic.y], ks[ic.z], ks[ic.w]);
        let q4 = vec4<f32>(qs[ic.x], qs[ic.y], qs[ic.z], qs[ic.w]);
        let sm = select(vec4<f32>(0.0), v4, keep & vec4<bool>(!fresh));
        s[m] = sm;
        pa += dot(sm, select(vec4<f32>(0.0), k4, keep));
        pb += dot(sm, select(vec4<f32>(0.0), q4, keep));
    }
    if (holds) {
        pab[lid] = vec2<f32>(pa, pb);
    }
    workgroupBarrier();
    var o = 0.0;
    if (holds) {
        var ab = vec2<f32>(0.0);
        for (var l = 0u; l < lanes; l++) {
            ab += pab[l * dv + j];
        }
        let kv = decay * (ab.x * rk);
        let d = beta * (vs[j] - kv);
        o = decay * (ab.y * qsc) + d * kq;
        for (var m = 0u; m < 16u; m++) {
            for (var e = 0u; e < 4u; e++) {
                let i = r + lanes * (4u * m + e);
                if (i < dk) {
                    state_out[sbase + i * dv + j] = decay * s[m][e] + (ks[i] * rk) * d;
                }
            }
        }
    }

    // 3. The gated RMSNorm over the head's Dv outputs (lane 0 of each column).
    let first = r == 0u;
    let sq = wg_sum(vec4<f32>(select(0.0, o * o, first), 0.0, 0.0, 0.0), lid);
    let inv = inverseSqrt(sq.x / f32(dv) + p.eps);
    if (first) {
        let z = proj[p.z_offset + h * dv + j];
        out[h * dv + j] = (consts[p.norm_offset + j] * (o * inv)) * (z / (1.0 + exp(-z)));
    }
}
