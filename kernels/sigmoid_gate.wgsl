// The output gate of gated attention (Qwen3.5, Qwen3-Next): x *= sigmoid(gate) in place,
// where x holds n rows of `width` values (heads of head_dim values) and the gate of value
// i of token t sits at g[t * g_stride + g_offset + (i / head_dim) * g_head_stride +
// i % head_dim] (inside a fused q/k/v projection's rows, where q_proj yields [q | gate]
// per head). sigmoid(v) = 1 / (1 + exp(-v)), as torch computes it in f32.
// One invocation per value; grid over n * width / 64 (`kernels::grid`).
struct Params {
    n: u32,
    width: u32,
    head_dim: u32,
    g_stride: u32,
    g_offset: u32,
    g_head_stride: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.n * p.width) {
        return;
    }
    let t = idx / p.width;
    let i = idx % p.width;
    let gi = t * p.g_stride + p.g_offset + (i / p.head_dim) * p.g_head_stride + i % p.head_dim;
    x[idx] = x[idx] * (1.0 / (1.0 + exp(-g[gi])));
}
