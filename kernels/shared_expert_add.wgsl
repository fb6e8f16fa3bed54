// Adds a MoE block's shared expert to the residual stream (Qwen3.5, Qwen3-Next):
// x[t, i] += sigmoid(g[t]) * s[t, i], g the shared expert gate's logit per token and s the
// shared expert's output, n rows of `width` values. sigmoid(v) = 1 / (1 + exp(-v)).
// One invocation per value; grid over n * width / 64 (`kernels::grid`).
struct Params {
    n: u32,
    width: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> s: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.n * p.width) {
        return;
    }
    let gate = 1.0 / (1.0 + exp(-g[idx / p.width]));
    x[idx] = x[idx] + gate * s[idx];
}
