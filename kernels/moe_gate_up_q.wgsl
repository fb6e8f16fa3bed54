// Expert gate/up projections with the SwiGLU activation over MLX affine-quantized experts,
// addressed through cache slots: for assignment a = (token, slot),
// h[a, i] = silu(dot(G[i, :], x[token])) * dot(U[i, :], x[token]), G and U [inter, hidden]
// of the expert in `slot` of this cache page (gate and up share BITS, GROUP and WDT).
// A slot is slot_words words; inside it, gate_q / up_q are the word offsets of the codes
// and gate_s, gate_b, up_s, up_b those of the scales and biases (see include/quant.wgsl).
//
// Workgroup (wid.x, wid.y) computes rows ROWS * wid.x .. + ROWS of assignment
// assign_base + wid.y with WG threads, as qmatvec.wgsl does: each step, thread `lid` takes
// 16 columns (two octets, one group), loads them of x once (as 4 vec4s: hidden is a
// multiple of 32, so every token's row is vec4-aligned) and uses them for the ROWS rows
// of both G and U; rows past `inter` re-read the last row (branch-free loads, sums dropped).
struct Params {
    hidden: u32,
    inter: u32,
    assign_base: u32,
    n_assign: u32,
    slot_words: u32,
    gate_q: u32,
    gate_s: u32,
    gate_b: u32,
    up_q: u32,
    up_s: u32,
    up_b: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> experts: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>; // [tokens, hidden], read as vec4s
@group(0) @binding(3) var<storage, read> assign: array<u32>;
@group(0) @binding(4) var<storage, read_write> h: array<f32>;

const WG: u32 = 64u;
const ROWS: u32 = 4u; // rows per workgroup (one vec4 lane each): `MOE_Q_ROWS` in src/gpu/kernels.rs

var<workgroup> rg: array<vec4<f32>, WG>;
var<workgroup> ru: array<vec4<f32>, WG>;

// The codes of octet u of the row whose words start at `row`.
fn codes(row: u32, u: u32) -> Octet {
    let wi = row + octet_word(u);
    let shift = octet_shift(u);
    var w1 = 0u;
    if (octet_spills(shift)) {
        w1 = experts[wi + 1u];
    }
    return octet_codes(experts[wi], w1, shift);
}

// s * dot(M[r, 8u .. 8u + 16], x16) + b * xsum for the [inter, hidden] matrix M whose
// codes, scales and biases start at words q_base, s_base, b_base; x16 = (xa, xb, xc, xd).
fn row_dot(q_base: u32, s_base: u32, b_base: u32, r: u32, u: u32, xa: vec4<f32>,
           xb: vec4<f32>, xc: vec4<f32>, xd: vec4<f32>, xsum: f32) -> f32 {
    let row = q_base + r * (p.hidden * BITS / 32u);
    let q0 = codes(row, u);
    let q1 = codes(row, u + 1u);
    let e = r * (p.hidden / GROUP) + (8u * u) / GROUP;
    let s = scale_value(experts[scale_word(s_base, e)], e);
    let b = scale_value(experts[scale_word(b_base, e)], e);
    let d = dot(q0.q0, xa) + dot(q0.q1, xb) + dot(q1.q0, xc) + dot(q1.q1, xd);
    return s * d + b * xsum;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i0 = wid.x * ROWS;
    if (i0 >= p.inter || wid.y >= p.n_assign) {
        return; // the whole workgroup
    }
    let last = p.inter - 1u;
    let i1 = min(i0 + 1u, last);
    let i2 = min(i0 + 2u, last);
    let i3 = min(i0 + 3u, last);
    let a = p.assign_base + wid.y;
    let token = assign[2u * a];
    let sb = assign[2u * a + 1u] * p.slot_words;
    let gq = sb + p.gate_q;
    let gs = sb + p.gate_s;
    let gb = sb + p.gate_b;
    let uq = sb + p.up_q;
    let us = sb + p.up_s;
    let ub = sb + p.up_b;
    var g = vec4<f32>(0.0);
    var up = vec4<f32>(0.0);
    // Octet pairs: hidden is a multiple of 32, so the octet count is even.
    for (var u = 2u * lid; u < p.hidden / 8u; u += 2u * WG) {
        let xi = token * (p.hidden / 4u) + 2u * u;
        let xa = x[xi];
        let xb = x[xi + 1u];
        let xc = x[xi + 2u];
        let xd = x[xi + 3u];
        let xsum = dot(xa + xb + xc + xd, vec4<f32>(1.0));
        g += vec4<f32>(
            row_dot(gq, gs, gb, i0, u, xa, xb, xc, xd, xsum),
            row_dot(gq, gs, gb, i1, u, xa, xb, xc, xd, xsum),
            row_dot(gq, gs, gb, i2, u, xa, xb, xc, xd, xsum),
            row_dot(gq, gs, gb, i3, u, xa, xb, xc, xd, xsum),
        );
        up += vec4<f32>(
            row_dot(uq, us, ub, i0, u, xa, xb, xc, xd, xsum),
            row_dot(uq, us, ub, i1, u, xa, xb, xc, xd, xsum),
            row_dot(uq, us, ub, i2, u, xa, xb, xc, xd, xsum),
            row_dot(uq, us, ub, i3, u, xa, xb, xc, xd, xsum),
        );
    }
    rg[lid] = g;
    ru[lid] = up;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            rg[lid] += rg[lid + stride];
            ru[lid] += ru[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid < min(ROWS, p.inter - i0)) {
        let gate = rg[0][lid];
        h[a * p.inter + i0 + lid] = gate / (1.0 + exp(-gate)) * ru[0][lid];
    }
}
