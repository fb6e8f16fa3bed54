// RoPE, NeoX "rotate_half" form, over the first rotary_dim dims of each head.
// x: [n_tokens, n_heads, head_dim]; token t is at position pos0 + t; cos/sin tables are
// [positions, rotary_dim / 2]. Writes out[out_offset + (t*n_heads + h)*head_dim + i], so
// keys can be written straight into the KV cache. Dims past rotary_dim are copied.
struct Params {
    n_tokens: u32,
    n_heads: u32,
    head_dim: u32,
    rotary_half: u32,
    pos0: u32,
    out_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.n_tokens * p.n_heads * p.head_dim) {
        return;
    }
    let i = idx % p.head_dim;
    let t = idx / (p.n_heads * p.head_dim);
    let base = idx - i;
    let half = p.rotary_half;
    if (i >= 2u * half) {
        out[p.out_offset + idx] = x[idx];
        return;
    }
    if (i >= half) {
        return; // written by its partner i - half
    }
    let c = cos_t[(p.pos0 + t) * half + i];
    let s = sin_t[(p.pos0 + t) * half + i];
    let x1 = x[base + i];
    let x2 = x[base + i + half];
    out[p.out_offset + base + i] = x1 * c - x2 * s;
    out[p.out_offset + base + i + half] = x2 * c + x1 * s;
}
