// Top-n candidates of the logits, per chunk, so the host reads a few pairs instead of the
// whole vocabulary. Workgroup c scans logits [c * chunk, (c + 1) * chunk) and writes its n
// best as (f32 bits, id) pairs, best first, ordered by (logit descending, id ascending);
// NaN counts as -3e38. Each of the n rounds takes the next element after the previous
// pick in that order, so nothing needs marking. Missing entries have id 0xffffffff.
struct Params {
    n_vocab: u32,
    chunk: u32,
    n_top: u32,
    pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

// Stands for NaN logits; "no candidate" is tracked by the id (NONE, include/best.wgsl
// with the order `before`), not the value.
const NEG: f32 = -3.0e38;

var<workgroup> bv: array<f32, 256>;
var<workgroup> bi: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let start = wid.x * p.chunk;
    let end = min(start + p.chunk, p.n_vocab);
    var last_v = 0.0;
    var last_i = NONE;
    var have_last = false;
    for (var r = 0u; r < p.n_top; r++) {
        var best_v = NEG;
        var best_i = NONE;
        for (var i = start + lid; i < end; i += 256u) {
            var v = logits[i];
            // A NaN test on the bits: compilers may assume `v != v` is false.
            if ((bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u) {
                v = NEG;
            }
            let after_last = !have_last || before(last_v, last_i, v, i);
            if (after_last && (best_i == NONE || before(v, i, best_v, best_i))) {
                best_v = v;
                best_i = i;
            }
        }
        bv[lid] = best_v;
        bi[lid] = best_i;
        reduce_best(lid, 128u);
        last_v = bv[0];
        last_i = bi[0];
        have_last = true;
        if (lid == 0u) {
            let o = 2u * (wid.x * p.n_top + r);
            out[o] = bitcast<u32>(last_v);
            out[o + 1u] = last_i;
        }
        workgroupBarrier();
    }
}
