// RMSNorm over rows of length n: y = x / sqrt(mean(x^2) + eps) * w, statistics in f32.
// One workgroup per row; rows are read from x_offset and written from y_offset (elements).
struct Params {
    n: u32,
    rows: u32,
    eps: f32,
    x_offset: u32,
    y_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let xb = p.x_offset + row * p.n;
    var s = 0.0;
    for (var i = lid; i < p.n; i += 64u) {
        let v = x[xb + i];
        s += v * v;
    }
    red[lid] = s;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    let inv = inverseSqrt(red[0] / f32(p.n) + p.eps);
    let yb = p.y_offset + row * p.n;
    for (var i = lid; i < p.n; i += 64u) {
        y[yb + i] = w[i] * (x[xb + i] * inv);
    }
}
