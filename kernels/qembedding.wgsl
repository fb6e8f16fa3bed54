// Embedding lookup from an MLX affine-quantized (or, with WDT 3, MXFP4) row chunk
// [row_count, hidden]:
// out[t, :] = dequant(W[ids[t] - row_start, :]) for the ids inside the chunk; other tokens'
// rows are left untouched. `w` holds [codes][scales][biases] (see include/quant.wgsl).
// One thread per octet (8 columns) of an output row, 64 threads per workgroup.
struct Params {
    hidden: u32,
    n_tokens: u32,
    row_start: u32,
    row_count: u32,
    scales_word: u32,
    biases_word: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.x + wid.y * nwg.x) * 64u + lid;
    let octets = p.hidden / 8u;
    if (idx >= octets * p.n_tokens) {
        return;
    }
    let t = idx / octets;
    let u = idx % octets;
    let id = ids[t];
    if (id < p.row_start || id - p.row_start >= p.row_count) {
        return;
    }
    let r = id - p.row_start;
    let wi = r * (p.hidden * BITS / 32u) + octet_word(u);
    let shift = octet_shift(u);
    var w1 = 0u;
    if (octet_spills(shift)) {
        w1 = w[wi + 1u];
    }
    let e = group_index(r, p.hidden, 8u * u);
    var bw = 0u;
    if (has_biases()) {
        bw = w[scale_word(p.biases_word, e)];
    }
    let v = octet_weights(w[wi], w1, shift, w[scale_word(p.scales_word, e)], bw, e);
    let v0 = v.q0;
    let v1 = v.q1;
    let o = t * p.hidden + 8u * u;
    for (var j = 0u; j < 4u; j++) {
        out[o + j] = v0[j];
        out[o + 4u + j] = v1[j];
    }
}
