// Embedding lookup: out[t, :] = table[ids[t], :] for the ids inside this row chunk.
struct Params {
    hidden: u32,
    n_tokens: u32,
    row_start: u32,
    row_count: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn wload(i: u32) -> f32 {
    if (WDT == 0u) {
        return bitcast<f32>(w[i]);
    }
    return decode_half(w[i >> 1u], (i & 1u) == 1u);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.hidden * p.n_tokens) {
        return;
    }
    let t = idx / p.hidden;
    let d = idx % p.hidden;
    let id = ids[t];
    if (id < p.row_start || id >= p.row_start + p.row_count) {
        return;
    }
    out[idx] = wload((id - p.row_start) * p.hidden + d);
}
