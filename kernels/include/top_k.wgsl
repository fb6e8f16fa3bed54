// MoE routing of one token by a 64-invocation workgroup (prepended to router.wgsl and
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

var<workgroup> tk_probs: array<f32, 1024>;
var<workgroup> tk_red: array<f32, 64>;
// The chosen experts in rank order, and their weights (u32::MAX / 0 when fewer than
// top_k experts have a finite probability).
var<workgroup> tk_id: array<u32, 1024>;
var<workgroup> tk_w: array<f32, 1024>;

// Routes the token whose logits start at logits[lb] over n experts (<= 1024); top_k <= n.
// Call from uniform control flow with all 64 invocations.
fn route_top_k(lb: u32, n: u32, top_k: u32, norm: bool, lid: u32) {
    var mx = -3.0e38;
    for (var e = lid; e < n; e += 64u) {
        mx = max(mx, logits[lb + e]);
    }
    tk_red[lid] = mx;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) {
            tk_red[lid] = max(tk_red[lid], tk_red[lid + s]);
        }
        workgroupBarrier();
    }
    mx = tk_red[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var e = lid; e < n; e += 64u) {
        let v = exp(logits[lb + e] - mx);
        tk_probs[e] = v;
        sum += v;
    }
    tk_red[lid] = sum;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) {
            tk_red[lid] += tk_red[lid + s];
        }
        workgroupBarrier();
    }
    let total = tk_red[0];
    for (var e = lid; e < n; e += 64u) {
        let v = tk_probs[e] / total;
        // A NaN probability (from NaN logits) is never chosen.
        tk_probs[e] = select(-1.0, v, v == v);
    }
    for (var k = lid; k < top_k; k += 64u) {
        tk_id[k] = 0xffffffffu;
        tk_w[k] = 0.0;
    }
    workgroupBarrier();
    for (var e = lid; e < n; e += 64u) {
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
        for (var k = lid; k < top_k; k += 64u) {
            tk_w[k] = tk_w[k] / chosen;
        }
        workgroupBarrier();
    }
}
