// Decode mat-vec over an MLX affine-quantized row chunk:
// y[row_base + r] = dot(W[r, :], x[x_offset..]) (+ bias) (+ resid), f32 accumulation.
// `w` holds [codes: rows * cols * BITS / 32 words][scales][biases], the scales and biases
// starting at words scales_word / biases_word (see include/quant.wgsl).
//
// ROWS rows per workgroup of 64 threads. Thread `lid` takes octets (8 columns) lid,
// lid + 64, ... of the row: adjacent threads read adjacent code bytes, and each octet of x
// is loaded once into registers and used for all ROWS rows. Per octet and row only one
// scale and one bias are applied (the group trick): s * dot(q, x8) + b * sum(x8).
struct Params {
    rows: u32,
    cols: u32,
    row_base: u32,
    flags: u32, // bit 0: add bias, bit 1: add residual
    x_offset: u32,
    scales_word: u32,
    biases_word: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> resid: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const WG: u32 = 64u;
const ROWS: u32 = 4u; // rows per workgroup: `QMATVEC_ROWS` in src/gpu/kernels.rs

var<workgroup> red: array<vec4<f32>, 64>; // one partial sum per row and thread

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let r0 = (wid.x + wid.y * nwg.x) * ROWS;
    if (r0 >= p.rows) {
        return; // the whole workgroup: no barrier is skipped by only some threads
    }
    let n_rows = min(ROWS, p.rows - r0);
    let words_per_row = p.cols * BITS / 32u;
    let groups_per_row = p.cols / GROUP;
    var acc = vec4<f32>(0.0);
    for (var u = lid; u < p.cols / 8u; u += WG) {
        let xi = p.x_offset + 8u * u;
        let x0 = vec4<f32>(x[xi], x[xi + 1u], x[xi + 2u], x[xi + 3u]);
        let x1 = vec4<f32>(x[xi + 4u], x[xi + 5u], x[xi + 6u], x[xi + 7u]);
        let xsum = dot(x0 + x1, vec4<f32>(1.0));
        let wo = octet_word(u);
        let shift = octet_shift(u);
        let spills = octet_spills(shift);
        let g = (8u * u) / GROUP;
        for (var k = 0u; k < ROWS; k++) {
            if (k < n_rows) {
                let r = r0 + k;
                let wi = r * words_per_row + wo;
                var w1 = 0u;
                if (spills) {
                    w1 = w[wi + 1u];
                }
                let q = octet_codes(w[wi], w1, shift);
                let e = r * groups_per_row + g;
                let s = scale_value(w[scale_word(p.scales_word, e)], e);
                let b = scale_value(w[scale_word(p.biases_word, e)], e);
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
        let o = p.row_base + r0 + lid;
        var v = red[0][lid];
        if ((p.flags & 1u) != 0u) {
            v += bias[o];
        }
        if ((p.flags & 2u) != 0u) {
            v += resid[o];
        }
        y[o] = v;
    }
}
