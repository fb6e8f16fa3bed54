// Decode mat-vec: y[row_base + r] = dot(W[r, :], x) (+ bias) (+ resid), W a row chunk
// [rows, cols] in f32/f16/bf16, f32 accumulation. One workgroup per row.
//
// With `heads` > 0 the dispatch is a batch of per-head mat-vecs (multi-head latent
// attention's absorbed projections): the weights are `heads` stacked matrices of `rows`
// rows, the grid is (rows, heads, tokens), and group g = token * heads + head multiplies
// head's matrix with the row of x at x_offset + g * x_stride into y from
// row_base + g * y_stride. No bias or residual.
struct Params {
    rows: u32,
    cols: u32,
    row_base: u32,
    flags: u32, // bit 0: add bias, bit 1: add residual
    x_offset: u32,
    heads: u32,
    x_stride: u32,
    y_stride: u32,
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
    let batched = p.heads > 0u;
    let r = select(wid.x + wid.y * nwg.x, wid.x, batched);
    if (r >= p.rows) {
        return;
    }
    // A batch's group: its x row, its head's rows of w, its rows of y.
    let g = select(0u, wid.z * p.heads + wid.y, batched);
    let xo = p.x_offset + g * p.x_stride;
    let wr = r + select(0u, wid.y * p.rows, batched);
    var acc = 0.0;
    if (WDT == 0u) {
        let base = wr * p.cols;
        for (var c = lid; c < p.cols; c += 64u) {
            acc += bitcast<f32>(w[base + c]) * x[xo + c];
        }
    } else if ((p.cols & 1u) == 0u) {
        let wbase = (wr * p.cols) >> 1u;
        let half_cols = p.cols >> 1u;
        for (var c = lid; c < half_cols; c += 64u) {
            let v = decode_pair(w[wbase + c]);
            let xi = xo + 2u * c;
            acc += v.x * x[xi] + v.y * x[xi + 1u];
        }
    } else {
        let base = wr * p.cols;
        for (var c = lid; c < p.cols; c += 64u) {
            let i = base + c;
            acc += decode_half(w[i >> 1u], (i & 1u) == 1u) * x[xo + c];
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
        let o = p.row_base + g * p.y_stride + r;
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
