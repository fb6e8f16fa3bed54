// The token a sampler will draw from the top-k kernel's per-chunk lists (kernels/topk.wgsl),
// written as the token of the next decode step, as token_pick.wgsl does for greedy steps:
// a sampled step can then be submitted before the host has read back the one before it.
// The host's sampler (`Sampler::sample_candidates`, f64 sums) has the last word: the
// session checks the token a step ran against the one its call asks for, so a rounding
// difference here costs a step, never a wrong result.
//
// What it computes, as the host's draw does on the merged candidates:
// 1. the top_k best (logit, id) of all chunks, larger logit first, then smaller id (a merge
//    of the sorted per-chunk lists: top_k rounds of a workgroup arg-max over the chunks'
//    heads; chunk c holds ids [c * chunk, (c + 1) * chunk));
// 2. logits over the temperature; top-p keeps the best while the mass before them is below
//    top_p of the total (at least one); min-p keeps those within ln(min_p) of the best;
// 3. the draw: the weights exp(l - best) walked in id order up to u times their sum.
struct Params {
    n_chunks: u32,
    n_top: u32, // candidates per chunk
    top_k: u32, // at most MAX_K
    chunk: u32, // vocabulary ids per chunk
    temperature: f32,
    top_p: f32, // 1: off
    min_p: f32, // 0: off
    u: f32,     // the host's next uniform draw in [0, 1)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> cand: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

const WG: u32 = 64u;
const MAX_K: u32 = 256u;
const MAX_CHUNKS: u32 = 1024u;

var<workgroup> bv: array<f32, 64>;
var<workgroup> bi: array<u32, 64>;
// Per chunk, how many of its candidates the merge has taken.
var<workgroup> heads: array<u32, 1024>;
// The merged candidates (logit, id, weight), best first.
var<workgroup> sv: array<f32, 256>;
var<workgroup> si: array<u32, 256>;
var<workgroup> sw: array<f32, 256>;
var<workgroup> won: u32;
var<workgroup> kept: u32;
var<workgroup> goal_mass: f32;
var<workgroup> pick: u32;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32) {
    let n_chunks = min(p.n_chunks, MAX_CHUNKS);
    for (var c = lid; c < n_chunks; c += WG) {
        heads[c] = 0u;
    }
    let k_max = min(p.top_k, MAX_K);
    var k = 0u;
    for (var r = 0u; r < k_max; r++) {
        workgroupBarrier();
        var best_v = 0.0;
        var best_i = NONE;
        for (var c = lid; c < n_chunks; c += WG) {
            let h = heads[c];
            if (h < p.n_top) {
                let o = 2u * (c * p.n_top + h);
                let v = bitcast<f32>(cand[o]);
                let i = cand[o + 1u];
                if (i != NONE && (best_i == NONE || before(v, i, best_v, best_i))) {
                    best_v = v;
                    best_i = i;
                }
            }
        }
        bv[lid] = best_v;
        bi[lid] = best_i;
        reduce_best(lid, WG / 2u);
        if (lid == 0u) {
            won = bi[0];
            if (bi[0] != NONE) {
                sv[r] = bv[0];
                si[r] = bi[0];
                let c = bi[0] / max(p.chunk, 1u);
                if (c < n_chunks) {
                    heads[c] += 1u;
                } else {
                    won = NONE;
                }
            }
        }
        if (workgroupUniformLoad(&won) == NONE) {
            break;
        }
        k += 1u;
    }
    if (lid == 0u) {
        // Temperature, weights against the best, top-p and min-p: a prefix of the list.
        var total = 0.0;
        for (var j = 0u; j < k; j++) {
            sv[j] = sv[j] / p.temperature;
            sw[j] = exp(sv[j] - sv[0]);
            total += sw[j];
        }
        var m = k;
        if (p.top_p < 1.0) {
            let goal = p.top_p * total;
            var before_j = 0.0;
            for (var j = 0u; j < k; j++) {
                if (j > 0u && before_j >= goal) {
                    m = j;
                    break;
                }
                before_j += sw[j];
            }
        }
        if (p.min_p > 0.0) {
            let cut = log(p.min_p);
            for (var j = 1u; j < m; j++) {
                if (sv[j] - sv[0] < cut) {
                    m = j;
                    break;
                }
            }
        }
        var sum = 0.0;
        var last = 0u;
        for (var j = 0u; j < m; j++) {
            sum += sw[j];
            if (sw[j] > 0.0) {
                last = max(last, si[j]);
            }
        }
        kept = m;
        goal_mass = p.u * sum;
        // Rounding past the end: the largest id with a weight, as the host falls back to.
        pick = select(last, 0u, k == 0u);
    }
    // Each kept candidate's mass before it in id order: the one whose interval holds the
    // target is the draw.
    let m = workgroupUniformLoad(&kept);
    let goal = goal_mass;
    for (var j = lid; j < m; j += WG) {
        var before_j = 0.0;
        for (var i = 0u; i < m; i++) {
            if (si[i] < si[j]) {
                before_j += sw[i];
            }
        }
        if (sw[j] > 0.0 && before_j <= goal && goal < before_j + sw[j]) {
            pick = si[j];
        }
    }
    workgroupBarrier();
    if (lid == 0u) {
        out[0] = pick;
    }
}
