// Weighted expert combine + residual: out[t, j] = resid[t, j] + sum_k o[route[t*top_k + k], j],
// where route maps each (token, choice) to its assignment row of o (already weighted);
// the sum is include/routed_sum.wgsl's.
struct Params {
    hidden: u32,
    n_tokens: u32,
    top_k: u32,
    pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> resid: array<f32>;
@group(0) @binding(2) var<storage, read> o: array<f32>;
@group(0) @binding(3) var<storage, read> route: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.hidden * p.n_tokens) {
        return;
    }
    let t = idx / p.hidden;
    let j = idx % p.hidden;
    let res = resid[idx];
    out[idx] = res + routed_sum(t * p.top_k, p.top_k, p.hidden, j);
}
