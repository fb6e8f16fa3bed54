// Decode mat-vec: y[row_base + r] = dot(W[r, :], x) (+ bias) (+ resid), W a row chunk
// [rows, cols] in f32/f16/bf16, f32 accumulation. One workgroup per row.
struct Params {
    rows: u32,
    cols: u32,
    row_base: u32,
    flags: u32, // bit 0: add bias, bit 1: add residual
    x_offset: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> resid: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= p.rows) {
        return;
    }
    var acc = 0.0;
    if (WDT == 0u) {
        let base = r * p.cols;
        for (var c = lid; c < p.cols; c += 64u) {
            acc += bitcast<f32>(w[base + c]) * x[p.x_offset + c];
        }
    } else if ((p.cols & 1u) == 0u) {
        let wbase = (r * p.cols) >> 1u;
        let half_cols = p.cols >> 1u;
        for (var c = lid; c < half_cols; c += 64u) {
            let v = decode_pair(w[wbase + c]);
            let xi = p.x_offset + 2u * c;
            acc += v.x * x[xi] + v.y * x[xi + 1u];
        }
    } else {
        let base = r * p.cols;
        for (var c = lid; c < p.cols; c += 64u) {
            let i = base + c;
            acc += decode_half(w[i >> 1u], (i & 1u) == 1u) * x[p.x_offset + c];
        }
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let o = p.row_base + r;
        var v = red[0];
        if ((p.flags & 1u) != 0u) {
            v += bias[o];
        }
        if ((p.flags & 2u) != 0u) {
            v += resid[o];
        }
        y[o] = v;
    }
}
