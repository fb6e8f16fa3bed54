// Weighted expert combine + residual: out[t, j] = resid[t, j] + sum_k o[route[t*top_k + k], j],
// where route maps each (token, choice) to its assignment row of o (already weighted).
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
    // Four choices per iteration: their rows' loads do not wait on each other (one
    // choice at a time made each route load and the o load after it a dependent pair);
    // the sum keeps the choices' order.
    let rb = t * p.top_k;
    let res = resid[idx];
    var s = 0.0;
    var k = 0u;
    for (; k + 4u <= p.top_k; k += 4u) {
        let r = vec4<u32>(route[rb + k], route[rb + k + 1u], route[rb + k + 2u],
                          route[rb + k + 3u]) * p.hidden + j;
        let v = vec4<f32>(o[r.x], o[r.y], o[r.z], o[r.w]);
        s = (((s + v.x) + v.y) + v.z) + v.w; // in order, as the CPU reference adds
    }
    for (; k < p.top_k; k++) {
        s += o[route[rb + k] * p.hidden + j];
    }
    out[idx] = res + s;
}
