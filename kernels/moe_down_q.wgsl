// Expert down projection over MLX affine-quantized experts, scaled by the routing weight,
// addressed through cache slots: o[a, j] = route_w[a] * dot(D[j, :], h[a, :]) with D
// [hidden, inter] the down tensor of the expert in the assignment's slot of this cache page.
// A slot is slot_words words; inside it, down_q, down_s and down_b are the word offsets of
// the codes, scales and biases (see include/quant.wgsl).
//
// Workgroup (wid.x, wid.y) computes rows ROWS * wid.x .. + ROWS of assignment
// assign_base + wid.y with WG threads, as qmatvec.wgsl does (16 columns per thread and
// step, h read as vec4s (inter is a multiple of 32), rows past `hidden` re-read the last
// row: branch-free loads, sums dropped).
struct Params {
    hidden: u32,
    inter: u32,
    assign_base: u32,
    n_assign: u32,
    slot_words: u32,
    down_q: u32,
    down_s: u32,
    down_b: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> experts: array<u32>;
@group(0) @binding(2) var<storage, read> h: array<vec4<f32>>; // [assignments, inter], read as vec4s
@group(0) @binding(3) var<storage, read> assign: array<u32>;
@group(0) @binding(4) var<storage, read> route_w: array<f32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;

const WG: u32 = 64u;
const ROWS: u32 = 4u; // rows per workgroup (one vec4 lane each): `MOE_Q_ROWS` in src/gpu/kernels.rs

var<workgroup> red: array<vec4<f32>, WG>;

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

// s * dot(D[j, 8u .. 8u + 16], h16) + b * hsum for the down matrix whose codes, scales and
// biases start at words q_base, s_base, b_base; h16 = (ha, hb, hc, hd).
fn row_dot(q_base: u32, s_base: u32, b_base: u32, j: u32, u: u32, ha: vec4<f32>,
           hb: vec4<f32>, hc: vec4<f32>, hd: vec4<f32>, hsum: f32) -> f32 {
    let row = q_base + j * (p.inter * BITS / 32u);
    let q0 = codes(row, u);
    let q1 = codes(row, u + 1u);
    let e = j * (p.inter / GROUP) + (8u * u) / GROUP;
    let s = scale_value(experts[scale_word(s_base, e)], e);
    let b = scale_value(experts[scale_word(b_base, e)], e);
    let d = dot(q0.q0, ha) + dot(q0.q1, hb) + dot(q1.q0, hc) + dot(q1.q1, hd);
    return s * d + b * hsum;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j0 = wid.x * ROWS;
    if (j0 >= p.hidden || wid.y >= p.n_assign) {
        return; // the whole workgroup
    }
    let last = p.hidden - 1u;
    let j1 = min(j0 + 1u, last);
    let j2 = min(j0 + 2u, last);
    let j3 = min(j0 + 3u, last);
    let a = p.assign_base + wid.y;
    let sb = assign[2u * a + 1u] * p.slot_words;
    let dq = sb + p.down_q;
    let ds = sb + p.down_s;
    let db = sb + p.down_b;
    var acc = vec4<f32>(0.0);
    // Octet pairs: inter is a multiple of 32, so the octet count is even.
    for (var u = 2u * lid; u < p.inter / 8u; u += 2u * WG) {
        let hi = a * (p.inter / 4u) + 2u * u;
        let ha = h[hi];
        let hb = h[hi + 1u];
        let hc = h[hi + 2u];
        let hd = h[hi + 3u];
        let hsum = dot(ha + hb + hc + hd, vec4<f32>(1.0));
        acc += vec4<f32>(
            row_dot(dq, ds, db, j0, u, ha, hb, hc, hd, hsum),
            row_dot(dq, ds, db, j1, u, ha, hb, hc, hd, hsum),
            row_dot(dq, ds, db, j2, u, ha, hb, hc, hd, hsum),
            row_dot(dq, ds, db, j3, u, ha, hb, hc, hd, hsum),
        );
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid < min(ROWS, p.hidden - j0)) {
        o[a * p.hidden + j0 + lid] = red[0][lid] * route_w[a];
    }
}
