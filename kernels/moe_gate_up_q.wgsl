// Expert gate/up projections with the SwiGLU activation over MLX affine-quantized experts,
// addressed through cache slots: for assignment a = (token, slot),
// h[a, i] = silu(dot(G[i, :], x[token])) * dot(U[i, :], x[token]), G and U [inter, hidden]
// of the expert in `slot` of this cache page (gate and up share BITS, GROUP and WDT).
// A slot is slot_words words; inside it, gate_q / up_q are the word offsets of the codes
// and gate_s, gate_b, up_s, up_b those of the scales and biases (see include/quant.wgsl).
//
// Workgroup (wid.x, wid.y) computes rows ROWS * wid.x .. + ROWS of assignment
// assign_base + wid.y with 64 threads, as qmatvec.wgsl does: thread `lid` takes octets
// lid, lid + 64, ... of the rows, each octet of x loaded once for all 2 * ROWS rows.
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
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> assign: array<u32>;
@group(0) @binding(4) var<storage, read_write> h: array<f32>;

const WG: u32 = 64u;
const ROWS: u32 = 4u; // rows per workgroup: `MOE_Q_ROWS` in src/gpu/kernels.rs

var<workgroup> rg: array<vec4<f32>, 64>;
var<workgroup> ru: array<vec4<f32>, 64>;

// s * dot(q, x8) + b * sum(x8) for octet u of row r of the matrix whose codes, scales and
// biases start at words q_base, s_base, b_base.
fn octet_dot(q_base: u32, s_base: u32, b_base: u32, r: u32, u: u32, x0: vec4<f32>,
             x1: vec4<f32>, xsum: f32) -> f32 {
    let wi = q_base + r * (p.hidden * BITS / 32u) + octet_word(u);
    let shift = octet_shift(u);
    var w1 = 0u;
    if (octet_spills(shift)) {
        w1 = experts[wi + 1u];
    }
    let q = octet_codes(experts[wi], w1, shift);
    let e = r * (p.hidden / GROUP) + (8u * u) / GROUP;
    let s = scale_value(experts[scale_word(s_base, e)], e);
    let b = scale_value(experts[scale_word(b_base, e)], e);
    return s * (dot(q.q0, x0) + dot(q.q1, x1)) + b * xsum;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i0 = wid.x * ROWS;
    if (i0 >= p.inter || wid.y >= p.n_assign) {
        return; // the whole workgroup
    }
    let n_rows = min(ROWS, p.inter - i0);
    let a = p.assign_base + wid.y;
    let token = assign[2u * a];
    let slot = assign[2u * a + 1u];
    let sb = slot * p.slot_words;
    let xb = token * p.hidden;
    var g = vec4<f32>(0.0);
    var up = vec4<f32>(0.0);
    for (var u = lid; u < p.hidden / 8u; u += WG) {
        let xi = xb + 8u * u;
        let x0 = vec4<f32>(x[xi], x[xi + 1u], x[xi + 2u], x[xi + 3u]);
        let x1 = vec4<f32>(x[xi + 4u], x[xi + 5u], x[xi + 6u], x[xi + 7u]);
        let xsum = dot(x0 + x1, vec4<f32>(1.0));
        for (var k = 0u; k < ROWS; k++) {
            if (k < n_rows) {
                let i = i0 + k;
                g[k] += octet_dot(sb + p.gate_q, sb + p.gate_s, sb + p.gate_b, i, u, x0, x1, xsum);
                up[k] += octet_dot(sb + p.up_q, sb + p.up_s, sb + p.up_b, i, u, x0, x1, xsum);
            }
        }
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
    if (lid < n_rows) {
        let gs = rg[0][lid];
        h[a * p.inter + i0 + lid] = gs / (1.0 + exp(-gs)) * ru[0][lid];
    }
}
