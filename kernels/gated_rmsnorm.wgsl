// The gated RMSNorm at the end of a Gated DeltaNet layer (Qwen3NextRMSNormGated, norm
// before gate), per token and value head of dv values:
//   out = (w * (x * inverseSqrt(mean(x^2) + eps))) * silu(z),
// with x = the delta rule's output x[(t * heads + h) * dv + i], z of the head at
// proj[t * stride + z_offset + h * dv + i] (a fused projection's rows; stride and offset
// also fit a separate buffer), w [dv] shared by all heads. out has x's layout [n, heads * dv]
// (the output projection's input). One workgroup of 64 invocations per (head, token): grid
// (heads, n) (`kernels::gated_rmsnorm_groups`); any dv (rows past 256 values loop).
struct Params {
    n_tokens: u32,
    heads: u32,
    dv: u32,
    eps: f32,
    stride: u32, // floats per token of proj
    z_offset: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> proj: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    if (h >= p.heads || t >= p.n_tokens) {
        return;
    }
    let dv = p.dv;
    let xb = (t * p.heads + h) * dv;
    let zb = t * p.stride + p.z_offset + h * dv;
    var s = 0.0;
    for (var i = lid; i < dv; i += WG) {
        let v = x[xb + i];
        s += v * v;
    }
    red[lid] = s;
    workgroupBarrier();
    if (lid < 8u) {
        let r = 8u * lid;
        red[r] = ((red[r] + red[r + 1u]) + (red[r + 2u] + red[r + 3u]))
            + ((red[r + 4u] + red[r + 5u]) + (red[r + 6u] + red[r + 7u]));
    }
    workgroupBarrier();
    let total = ((red[0] + red[8]) + (red[16] + red[24])) + ((red[32] + red[40]) + (red[48] + red[56]));
    let inv = inverseSqrt(total / f32(dv) + p.eps);
    for (var i = lid; i < dv; i += WG) {
        let z = proj[zb + i];
        out[xb + i] = (w[i] * (x[xb + i] * inv)) * (z / (1.0 + exp(-z)));
    }
}
