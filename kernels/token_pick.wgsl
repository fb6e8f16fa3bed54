// The best candidate of the top-k kernel's per-chunk lists (kernels/topk.wgsl), written
// as the token of the next decode step: a greedy step can then be submitted before the
// host has read back the one before it (`Session`'s steps run ahead). Order as the host
// merges the candidates (include/best.wgsl, as topk.wgsl orders them): larger logit first,
// then smaller id; entries with id NONE are missing. `out[0]` gets the chosen id (0 when there is
// none; the host compares the token a step ran with the one it asked for, so a step that
// ran another token is discarded, never used).
struct Params {
    n_chunks: u32,
    n_top: u32, // candidates per chunk (the first of each is its best)
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> cand: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

const WG: u32 = 64u;

var<workgroup> bv: array<f32, 64>;
var<workgroup> bi: array<u32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32) {
    var best_v = 0.0;
    var best_i = NONE;
    for (var c = lid; c < p.n_chunks; c += WG) {
        let o = 2u * c * p.n_top;
        let v = bitcast<f32>(cand[o]);
        let i = cand[o + 1u];
        if (i != NONE && (best_i == NONE || before(v, i, best_v, best_i))) {
            best_v = v;
            best_i = i;
        }
    }
    bv[lid] = best_v;
    bi[lid] = best_i;
    reduce_best(lid, WG / 2u);
    if (lid == 0u) {
        out[0] = select(bi[0], 0u, bi[0] == NONE);
    }
}
