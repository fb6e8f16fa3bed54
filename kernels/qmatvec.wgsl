// Decode mat-vec over an MLX affine-quantized row chunk:
// y[row_base + r] = dot(W[r, :], x[x_offset..]) (+ bias) (+ resid), f32 accumulation.
// `w` holds [codes: rows * cols * BITS / 32 words][scales][biases], the scales and biases
// starting at words scales_word / biases_word (see include/quant.wgsl).
//
// x is read as vec4s: x_offset must be a multiple of 4 (a token's row of a [tokens, cols]
// activation always is, cols being a multiple of 32); otherwise every output is NaN.
//
// ROWS rows per workgroup of WG threads. Each step, thread `lid` takes 16 columns (two
// octets, one group) starting at column 16 * (lid + WG * step): adjacent threads read
// adjacent code words, and the 16 values of x are loaded once (4 vec4 loads: scalar loads
// cost twice the time on an H200) into registers for all ROWS rows. Per row and step one scale and one bias are applied (the group trick):
// s * dot(q, x16) + b * sum(x16). Rows past the end of the chunk re-read the last row so
// that the loads of all ROWS rows are issued without branches (their sums are dropped):
// the kernel is bound by memory latency, and independent loads in flight are what count.
struct Params {
    rows: u32,
    cols: u32,
    row_base: u32,
    flags: u32, // bit 0: add bias, bit 1: add residual
    x_offset: u32, // in floats, a multiple of 4
    scales_word: u32,
    biases_word: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> resid: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const WG: u32 = 64u;
const ROWS: u32 = 4u; // rows per workgroup (one vec4 lane each): `QMATVEC_ROWS` in src/gpu/kernels.rs

var<workgroup> red: array<vec4<f32>, WG>; // one partial sum per row and thread

// The codes of octet u of the row whose words start at `row`.
fn codes(row: u32, u: u32) -> Octet {
    let wi = row + octet_word(u);
    let shift = octet_shift(u);
    var w1 = 0u;
    if (octet_spills(shift)) {
        w1 = w[wi + 1u];
    }
    return octet_codes(w[wi], w1, shift);
}

// s * dot(W[r, 8u .. 8u + 16], x16) + b * xsum, x16 = (xa, xb, xc, xd).
fn row_dot(r: u32, u: u32, xa: vec4<f32>, xb: vec4<f32>, xc: vec4<f32>, xd: vec4<f32>,
           xsum: f32) -> f32 {
    let row = r * (p.cols * BITS / 32u);
    let q0 = codes(row, u);
    let q1 = codes(row, u + 1u);
    let e = r * (p.cols / GROUP) + (8u * u) / GROUP;
    let s = scale_value(w[scale_word(p.scales_word, e)], e);
    let b = scale_value(w[scale_word(p.biases_word, e)], e);
    let d = dot(q0.q0, xa) + dot(q0.q1, xb) + dot(q1.q0, xc) + dot(q1.q1, xd);
    return s * d + b * xsum;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let r0 = (wid.x + wid.y * nwg.x) * ROWS;
    if (r0 >= p.rows) {
        return; // the whole workgroup: no barrier is skipped by only some threads
    }
    let last = p.rows - 1u;
    var acc = vec4<f32>(0.0);
    // Octet pairs: cols is a multiple of 32, so the octet count is even.
    for (var u = 2u * lid; u < p.cols / 8u; u += 2u * WG) {
        let xi = (p.x_offset >> 2u) + 2u * u;
        let xa = x[xi];
        let xb = x[xi + 1u];
        let xc = x[xi + 2u];
        let xd = x[xi + 3u];
        let xsum = dot(xa + xb + xc + xd, vec4<f32>(1.0));
        acc += vec4<f32>(
            row_dot(r0, u, xa, xb, xc, xd, xsum),
            row_dot(min(r0 + 1u, last), u, xa, xb, xc, xd, xsum),
            row_dot(min(r0 + 2u, last), u, xa, xb, xc, xd, xsum),
            row_dot(min(r0 + 3u, last), u, xa, xb, xc, xd, xsum),
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
    if (lid < min(ROWS, p.rows - r0)) {
        let o = p.row_base + r0 + lid;
        var v = red[0][lid];
        if ((p.x_offset & 3u) != 0u) {
            v = bitcast<f32>(0x7fc00000u); // NaN: a misaligned x_offset is not supported
        }
        if ((p.flags & 1u) != 0u) {
            v += bias[o];
        }
        if ((p.flags & 2u) != 0u) {
            v += resid[o];
        }
        y[o] = v;
    }
}
