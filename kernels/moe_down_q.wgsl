// Expert down projection over MLX affine-quantized experts, scaled by the routing weight,
// addressed through cache slots: o[a, j] = route_w[a] * dot(D[j, :], h[a, :]) with D
// [hidden, inter] the down tensor of the expert in the assignment's slot of this cache page.
// A slot is slot_words words; inside it, down_q, down_s and down_b are the word offsets of
// the codes, scales and biases (see include/quant.wgsl).
//
// Workgroup (wid.x, wid.y) computes rows ROWS * wid.x .. + ROWS of assignment
// assign_base + wid.y with 64 threads, as qmatvec.wgsl does.
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
@group(0) @binding(2) var<storage, read> h: array<f32>;
@group(0) @binding(3) var<storage, read> assign: array<u32>;
@group(0) @binding(4) var<storage, read> route_w: array<f32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;

const WG: u32 = 64u;
const ROWS: u32 = 4u; // rows per workgroup: `MOE_Q_ROWS` in src/gpu/kernels.rs

var<workgroup> red: array<vec4<f32>, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j0 = wid.x * ROWS;
    if (j0 >= p.hidden || wid.y >= p.n_assign) {
        return; // the whole workgroup
    }
    let n_rows = min(ROWS, p.hidden - j0);
    let a = p.assign_base + wid.y;
    let slot = assign[2u * a + 1u];
    let sb = slot * p.slot_words;
    let q_base = sb + p.down_q;
    let words_per_row = p.inter * BITS / 32u;
    let groups_per_row = p.inter / GROUP;
    let hb = a * p.inter;
    var acc = vec4<f32>(0.0);
    for (var u = lid; u < p.inter / 8u; u += WG) {
        let hi = hb + 8u * u;
        let x0 = vec4<f32>(h[hi], h[hi + 1u], h[hi + 2u], h[hi + 3u]);
        let x1 = vec4<f32>(h[hi + 4u], h[hi + 5u], h[hi + 6u], h[hi + 7u]);
        let xsum = dot(x0 + x1, vec4<f32>(1.0));
        let wo = octet_word(u);
        let shift = octet_shift(u);
        let spills = octet_spills(shift);
        let g = (8u * u) / GROUP;
        for (var k = 0u; k < ROWS; k++) {
            if (k < n_rows) {
                let j = j0 + k;
                let wi = q_base + j * words_per_row + wo;
                var w1 = 0u;
                if (spills) {
                    w1 = experts[wi + 1u];
                }
                let q = octet_codes(experts[wi], w1, shift);
                let e = j * groups_per_row + g;
                let s = scale_value(experts[scale_word(sb + p.down_s, e)], e);
                let b = scale_value(experts[scale_word(sb + p.down_b, e)], e);
                acc[k] += s * (dot(q.q0, x0) + dot(q.q1, x1)) + b * xsum;
            }
        }
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid < n_rows) {
        o[a * p.hidden + j0 + lid] = red[0][lid] * route_w[a];
    }
}
