// MoE routing of one token by a 128-invocation workgroup (prepended to router.wgsl and
// moe_route.wgsl; not a kernel itself): softmax over the experts' logits in f32, the top_k
// experts (ties to the lower index), weighted by `routing`: 0 their probabilities, 1 those
// renormalized to sum to 1, 2 a softmax over their k logits only (gpt-oss: the maximum of
// the k, then exp and sum in rank order, as the CPU reference). Routing 3 and 4 (GLM-4.5,
// DeepSeek-V3) rank `sigmoid(logit) + corr[e]` (the kernel's correction-bias binding)
// instead, among the experts of the `topk_groups` best of `groups` equal groups (a group's
// score: the sum of its two best; ties to the lower group), and weigh the chosen by their
// sigmoids, with 4 renormalized (sum + 1e-20, in rank order), times `scale`. Both kernels
// share this code so that the routing-readback path and the resident path choose the same
// experts with bit-identical weights.
//
// The top k are found by rank, not by k rounds of a workgroup-wide arg-max: each
// invocation counts, for each of its experts, the experts that beat it, 16 comparisons
// at a time; an expert of rank r < k is written to slot r. A single barrier instead of k
// reduction trees. With more experts than invocations (Qwen3.5's 256, DeepSeek's 256,
// 384 for Kimi-K2) that count is quadratic, so the experts that can rank are first cut
// down (`tk_candidates`): the experts fall in 16 equal runs, T is the top_k-th largest of
// the runs' maxima (top_k <= 16), and only experts scoring at least T are ranked, among
// themselves. That is exact: top_k runs hold an expert scoring >= T, so the top_k experts
// all score >= T, and every expert that beats one scoring >= T does too. With random
// scores about 5% of 256 experts pass; when more than TK_WG pass (ties), all are ranked as
// before.

// Invocations of the routing workgroup.
const TK_WG: u32 = 128u;

// The experts' logits, then their ranking scores (probabilities, or biased sigmoids), 4
// per vec4, padded to a multiple of 16 with PAD; a NaN's score is NEVER (both below
// every real score: only scores above RANKS rank).
var<workgroup> tk_probs: array<vec4<f32>, 256>;
var<workgroup> tk_max: array<f32, 128>;
var<workgroup> tk_sum: array<f32, 128>;
// The chosen experts in rank order, and their weights (u32::MAX / 0 when fewer than
// top_k experts have a finite probability).
var<workgroup> tk_id: array<u32, 1024>;
var<workgroup> tk_w: array<f32, 1024>;
// The experts that may rank (their count, then the first TK_WG of them in tk_cand), and T.
var<workgroup> tk_count: atomic<u32>;
var<workgroup> tk_cand: array<u32, 128>;
var<workgroup> tk_thr: f32;

const PAD: f32 = -3.4e38;
const NEVER: f32 = -3.0e38;
const RANKS: f32 = -1.0e38;

// Expert groups of the sigmoid routings (`groups` 1: no group limit).
struct Groups {
    groups: u32,
    topk_groups: u32,
    scale: f32,
}

// Routes the token whose logits start at logits[lb] over n experts (<= 1024); top_k <= n.
// With `shared` 1 (a shared expert riding in the expert cache, Qwen3.5, Qwen3-Next), choice
// top_k (< 1024) is one more: expert n, weighted by the sigmoid of the logit after the
// routed ones, logits[lb + n]; sigmoid(v) = 1 / (1 + exp(-v)); with `shared` 2 (an
// ungated shared expert, GLM-4.5) weighted 1. Call from uniform control flow with all
// TK_WG invocations.
fn route_top_k(lb: u32, n: u32, top_k: u32, routing: u32, shared_mode: u32, g: Groups, lid: u32) {
    let sigmoid_routing = routing == 3u || routing == 4u;
    // The softmax's max and sum in one pass (each invocation's running pair, rescaled as
    // its max grows) and one reduction tree over the pairs; the logits stay in workgroup
    // memory for the second pass.
    var mx = -3.0e38;
    var sum = 0.0;
    for (var e = lid; e < n; e += TK_WG) {
        let v = logits[lb + e];
        tk_probs[e >> 2u][e & 3u] = v;
        let m2 = max(mx, v);
        sum = sum * exp(mx - m2) + exp(v - m2);
        mx = m2;
    }
    tk_max[lid] = mx;
    tk_sum[lid] = sum;
    workgroupBarrier();
    for (var s = TK_WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let ma = tk_max[lid];
            let mb = tk_max[lid + s];
            let m2 = max(ma, mb);
            tk_sum[lid] = tk_sum[lid] * exp(ma - m2) + tk_sum[lid + s] * exp(mb - m2);
            tk_max[lid] = m2;
        }
        workgroupBarrier();
    }
    mx = tk_max[0];
    let total = tk_sum[0];
    for (var e = lid; e < n; e += TK_WG) {
        var v = exp(tk_probs[e >> 2u][e & 3u] - mx) / total;
        if (sigmoid_routing) {
            v = 1.0 / (1.0 + exp(-logits[lb + e])) + corr[e];
        }
        // A NaN (from a NaN logit, or an all -inf row) never ranks.
        tk_probs[e >> 2u][e & 3u] = select(NEVER, v, v == v);
    }
    let n16 = (n + 15u) & ~15u;
    for (var e = n + lid; e < n16; e += TK_WG) {
        tk_probs[e >> 2u][e & 3u] = PAD;
    }
    if (sigmoid_routing && g.groups > 1u) {
        workgroupBarrier();
        // Group scores (the sum of each group's two best) into tk_sum, then the kept
        // groups (rank < topk_groups) as 1.0 in tk_max; the others' experts never rank.
        let gsize = n / g.groups;
        for (var q = lid; q < g.groups; q += TK_WG) {
            var b1 = NEVER;
            var b2 = NEVER;
            for (var e = q * gsize; e < (q + 1u) * gsize; e++) {
                let v = tk_probs[e >> 2u][e & 3u];
                if (v > b1) {
                    b2 = b1;
                    b1 = v;
                } else if (v > b2) {
                    b2 = v;
                }
            }
            tk_sum[q] = b1 + b2;
        }
        workgroupBarrier();
        for (var q = lid; q < g.groups; q += TK_WG) {
            let sq = tk_sum[q];
            var rank = 0u;
            for (var o = 0u; o < g.groups; o++) {
                let so = tk_sum[o];
                rank += u32(so > sq || (so == sq && o < q));
            }
            tk_max[q] = select(0.0, 1.0, rank < g.topk_groups);
        }
        workgroupBarrier();
        for (var e = lid; e < n; e += TK_WG) {
            if (tk_max[e / gsize] == 0.0) {
                tk_probs[e >> 2u][e & 3u] = NEVER;
            }
        }
    }
    for (var k = lid; k < top_k; k += TK_WG) {
        tk_id[k] = 0xffffffffu;
        tk_w[k] = 0.0;
    }
    workgroupBarrier();
    var cands = 0xffffffffu; // more than TK_WG: rank every expert
    if (n > TK_WG && top_k <= 16u) {
        cands = tk_candidates(n, n16, top_k, lid);
    }
    if (cands <= TK_WG) {
        // Each candidate counts the candidates that beat it.
        for (var i = lid; i < cands; i += TK_WG) {
            let e = tk_cand[i];
            let v = tk_probs[e >> 2u][e & 3u];
            var rank = 0u;
            for (var o = 0u; o < cands; o++) {
                let eo = tk_cand[o];
                let vo = tk_probs[eo >> 2u][eo & 3u];
                rank += u32(vo > v || (vo == v && eo < e));
            }
            if (rank < top_k) {
                tk_id[rank] = e;
                tk_w[rank] = v;
            }
        }
    }
    for (var e = lid; e < n && cands > TK_WG; e += TK_WG) {
        let v = tk_probs[e >> 2u][e & 3u];
        if (v > RANKS) {
            // Count the experts that beat this one: all of them, 16 per iteration with
            // independent loads (stopping once k beat it, with an exit test per 4
            // comparisons, made the routing kernel 7.7 us instead of 6.3 on an H200).
            let vv = vec4<f32>(v);
            let ev = vec4<u32>(e);
            var r4 = vec4<u32>(0u);
            for (var o = 0u; o < n16 / 4u; o += 4u) {
                let i0 = 4u * o + vec4<u32>(0u, 1u, 2u, 3u);
                r4 += beats(tk_probs[o], vv, i0, ev) + beats(tk_probs[o + 1u], vv, i0 + 4u, ev)
                    + beats(tk_probs[o + 2u], vv, i0 + 8u, ev)
                    + beats(tk_probs[o + 3u], vv, i0 + 12u, ev);
            }
            let rank = (r4.x + r4.y) + (r4.z + r4.w);
            if (rank < top_k) {
                tk_id[rank] = e;
                tk_w[rank] = v;
            }
        }
    }
    workgroupBarrier();
    if (routing == 2u) {
        // Every invocation reads the k chosen logits in rank order (empty choices, from
        // NaN logits, weigh 0).
        var top = -3.0e38;
        for (var k = 0u; k < top_k; k++) {
            if (tk_id[k] != 0xffffffffu) {
                top = max(top, logits[lb + tk_id[k]]);
            }
        }
        var total = 0.0;
        for (var k = 0u; k < top_k; k++) {
            if (tk_id[k] != 0xffffffffu) {
                total += exp(logits[lb + tk_id[k]] - top);
            }
        }
        workgroupBarrier();
        for (var k = lid; k < top_k; k += TK_WG) {
            if (tk_id[k] != 0xffffffffu) {
                tk_w[k] = exp(logits[lb + tk_id[k]] - top) / total;
            }
        }
        workgroupBarrier();
    }
    if (routing == 1u) {
        // Every invocation sums the chosen probabilities in rank order (the same order as
        // the CPU reference), then normalizes its share of them.
        var chosen = 0.0;
        for (var k = 0u; k < top_k; k++) {
            chosen += tk_w[k];
        }
        workgroupBarrier();
        for (var k = lid; k < top_k; k += TK_WG) {
            tk_w[k] = tk_w[k] / chosen;
        }
        workgroupBarrier();
    }
    if (sigmoid_routing) {
        // The chosen experts' unbiased sigmoids, renormalized (routing 4) in rank order,
        // times the scale.
        var chosen = 0.0;
        for (var k = 0u; k < top_k; k++) {
            if (tk_id[k] != 0xffffffffu) {
                chosen += 1.0 / (1.0 + exp(-logits[lb + tk_id[k]]));
            }
        }
        let denom = select(1.0, chosen + 1e-20, routing == 4u);
        workgroupBarrier();
        for (var k = lid; k < top_k; k += TK_WG) {
            if (tk_id[k] != 0xffffffffu) {
                let s = 1.0 / (1.0 + exp(-logits[lb + tk_id[k]]));
                tk_w[k] = s / denom * g.scale;
            }
        }
        workgroupBarrier();
    }
    if (shared_mode != 0u) {
        if (lid == 0u) {
            tk_id[top_k] = n;
            tk_w[top_k] = select(1.0 / (1.0 + exp(-logits[lb + n])), 1.0, shared_mode == 2u);
        }
        workgroupBarrier();
    }
}

// The experts scoring at least T (above): their count, the first TK_WG of them in tk_cand
// (in no particular order). Uses tk_max (the runs' maxima). Call from uniform control flow
// with all TK_WG invocations, after the scores are in tk_probs and a barrier.
fn tk_candidates(n: u32, n16: u32, top_k: u32, lid: u32) -> u32 {
    let run = n16 / 16u;
    if (lid < 16u) {
        var m = NEVER;
        for (var e = lid * run; e < (lid + 1u) * run; e++) {
            m = max(m, tk_probs[e >> 2u][e & 3u]);
        }
        tk_max[lid] = m;
    }
    if (lid == 0u) {
        atomicStore(&tk_count, 0u);
    }
    workgroupBarrier();
    if (lid < 16u) {
        // The run maxima by rank (ties to the lower run): rank top_k - 1 is T.
        let m = tk_max[lid];
        var rank = 0u;
        for (var o = 0u; o < 16u; o++) {
            let mo = tk_max[o];
            rank += u32(mo > m || (mo == m && o < lid));
        }
        if (rank == top_k - 1u) {
            tk_thr = m;
        }
    }
    workgroupBarrier();
    let t = tk_thr;
    for (var e = lid; e < n; e += TK_WG) {
        let v = tk_probs[e >> 2u][e & 3u];
        if (v >= t && v > RANKS) {
            let i = atomicAdd(&tk_count, 1u);
            if (i < TK_WG) {
                tk_cand[i] = e;
            }
        }
    }
    workgroupBarrier();
    return atomicLoad(&tk_count);
}

// 1 where the expert of probability ov and index oi beats the one of probability vv and
// index ev (higher, or equal at a lower index), else 0.
fn beats(ov: vec4<f32>, vv: vec4<f32>, oi: vec4<u32>, ev: vec4<u32>) -> vec4<u32> {
    return select(vec4<u32>(0u), vec4<u32>(1u), (ov > vv) | ((ov == vv) & (oi < ev)));
}
