// The activation of a MoE block's shared expert (Qwen3.5, Qwen3-Next), with its sigmoid
// gate folded in:
//   out[t, i] = silu(gate[t, i]) * up[t, i] * sigmoid(sg[t]),
// gate at g[t * g_stride + g_offset + i], up at u[t * u_stride + u_offset + i] (one fused
// [gate | up] projection's rows, or two buffers), the gate's logit sg at
// s[t * s_stride + s_offset]. The down projection then gives the gated shared expert
// directly (it is linear, so scaling its input by sigmoid(sg) scales its output), added to
// the residual by the mat-vec itself. silu(g) = g / (1 + exp(-g)), sigmoid(v) =
// 1 / (1 + exp(-v)). One invocation per value; grid over n * inter / 64 (`kernels::grid`).
struct Params {
    n: u32,
    inter: u32,
    g_stride: u32,
    g_offset: u32,
    u_stride: u32,
    u_offset: u32,
    s_stride: u32,
    s_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> u: array<f32>;
@group(0) @binding(3) var<storage, read> s: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.n * p.inter) {
        return;
    }
    let t = idx / p.inter;
    let i = idx % p.inter;
    let gv = g[t * p.g_stride + p.g_offset + i];
    let uv = u[t * p.u_stride + p.u_offset + i];
    let gate = 1.0 / (1.0 + exp(-s[t * p.s_stride + p.s_offset]));
    out[idx] = gv / (1.0 + exp(-gv)) * uv * gate;
}
