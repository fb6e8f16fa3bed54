// MoE routing of one token by a 128-invocation workgroup (prepended to router.wgsl and
// moe_route.wgsl; not a kernel itself): softmax over the experts' logits in f32, the top_k
// experts (ties to the lower index), their probabilities optionally renormalized to sum
// to 1. Both kernels share this code so that the routing-readback path and the resident
// path choose the same experts with bit-identical weights.
//
// The top k are found by rank, not by k rounds of a workgroup-wide arg-max: each
// invocation counts, for each of its experts, the experts that beat it, four comparisons
// at a time (one at a time, with its dependent loop test, cost 9 us more per routing on an
// H200), stopping once k do; an expert of rank r < k is written to slot r. A single
// barrier instead of k reduction trees.

// Invocations of the routing workgroup.
const TK_WG: u32 = 128u;

var<workgroup> tk_probs: array<f32, 1024>;
var<workgroup> tk_max: array<f32, 128>;
var<workgroup> tk_sum: array<f32, 128>;
// The chosen experts in rank order, and their weights (u32::MAX / 0 when fewer than
// top_k experts have a finite probability).
var<workgroup> tk_id: array<u32, 1024>;
var<workgroup> tk_w: array<f32, 1024>;

// Routes the token whose logits start at logits[lb] over n experts (<= 1024); top_k <= n.
// Call from uniform control flow with all TK_WG invocations.
fn route_top_k(lb: u32, n: u32, top_k: u32, norm: bool, lid: u32) {
    // The softmax's max and sum in one pass (each invocation's running pair, rescaled as
    // its max grows) and one reduction tree over the pairs; the logits stay in workgroup
    // memory for the second pass.
    var mx = -3.0e38;
    var sum = 0.0;
    for (var e = lid; e < n; e += TK_WG) {
        let v = logits[lb + e];
        tk_probs[e] = v;
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
        let v = exp(tk_probs[e] - mx) / total;
        // A NaN (from a NaN logit, or an all -inf row) never ranks.
        tk_probs[e] = select(-1.0, v, v == v);
    }
    for (var k = lid; k < top_k; k += TK_WG) {
        tk_id[k] = 0xffffffffu;
        tk_w[k] = 0.0;
    }
    workgroupBarrier();
    for (var e = lid; e < n; e += TK_WG) {
        let v = tk_probs[e];
        if (v >= 0.0) {
            var r4 = vec4<u32>(0u);
            var o = 0u;
            // Stop once k experts beat this one: it is not chosen.
            for (; o + 4u <= n && (r4.x + r4.y) + (r4.z + r4.w) < top_k; o += 4u) {
                let ov = vec4<f32>(tk_probs[o], tk_probs[o + 1u], tk_probs[o + 2u], tk_probs[o + 3u]);
                let oi = vec4<u32>(o, o + 1u, o + 2u, o + 3u);
                let beats = (ov > vec4<f32>(v)) | ((ov == vec4<f32>(v)) & (oi < vec4<u32>(e)));
                r4 += select(vec4<u32>(0u), vec4<u32>(1u), beats);
            }
            var rank = r4.x + r4.y + r4.z + r4.w;
            for (; o < n && rank < top_k; o++) {
                let ov = tk_probs[o];
                if (ov > v || (ov == v && o < e)) {
                    rank++;
                }
            }
            if (rank < top_k) {
                tk_id[rank] = e;
                tk_w[rank] = v;
            }
        }
    }
    workgroupBarrier();
    if (norm) {
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
}
