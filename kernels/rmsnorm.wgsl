// RMSNorm over rows of length n: y = x / sqrt(mean(x^2) + eps) * w, statistics in f32.
// One workgroup per row; rows are read from x_offset and written from y_offset (elements).
// Each invocation keeps four loads in flight (a row of 2048 is two rounds of loads, not
// the 32 dependent ones of a plain strided loop). With flags bit 0 each row is also written
// to yi in the interleaved layout (include/interleave.wgsl; n a multiple of 32), the row
// at row * n, for the quantized mat-vec kernels.
struct Params {
    n: u32,
    rows: u32,
    eps: f32,
    x_offset: u32,
    y_offset: u32,
    flags: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> yi: array<f32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let n = p.n;
    let xb = p.x_offset + row * n;
    var s = vec4<f32>(0.0);
    var i = lid;
    for (; i + 3u * WG < n; i += 4u * WG) {
        let v = vec4<f32>(x[xb + i], x[xb + i + WG], x[xb + i + 2u * WG], x[xb + i + 3u * WG]);
        s += v * v;
    }
    for (; i < n; i += WG) {
        let v = x[xb + i];
        s.x += v * v;
    }
    red[lid] = (s.x + s.y) + (s.z + s.w);
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    let inv = inverseSqrt(red[0] / f32(n) + p.eps);
    let yb = p.y_offset + row * n;
    let il = (p.flags & 1u) != 0u;
    i = lid;
    for (; i + 3u * WG < n; i += 4u * WG) {
        let v = vec4<f32>(x[xb + i], x[xb + i + WG], x[xb + i + 2u * WG], x[xb + i + 3u * WG]);
        let g = vec4<f32>(w[i], w[i + WG], w[i + 2u * WG], w[i + 3u * WG]);
        let o = g * (v * inv);
        y[yb + i] = o.x;
        y[yb + i + WG] = o.y;
        y[yb + i + 2u * WG] = o.z;
        y[yb + i + 3u * WG] = o.w;
        if (il) {
            let r = row * n;
            yi[r + interleaved(i, n)] = o.x;
            yi[r + interleaved(i + WG, n)] = o.y;
            yi[r + interleaved(i + 2u * WG, n)] = o.z;
            yi[r + interleaved(i + 3u * WG, n)] = o.w;
        }
    }
    for (; i < n; i += WG) {
        let o = w[i] * (x[xb + i] * inv);
        y[yb + i] = o;
        if (il) {
            yi[row * n + interleaved(i, n)] = o;
        }
    }
}
