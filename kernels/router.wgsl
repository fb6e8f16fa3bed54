// MoE router: per token, softmax over all experts in f32, top-k (ties to the lower index),
// optionally renormalized to sum to 1. One workgroup per token; n_experts <= 1024.
struct Params {
    n_experts: u32,
    top_k: u32,
    norm_topk: u32,
    n_tokens: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> weights: array<f32>;

var<workgroup> probs: array<f32, 1024>;
var<workgroup> rv: array<f32, 64>;
var<workgroup> ri: array<u32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= p.n_tokens) {
        return;
    }
    let e_n = p.n_experts;
    let lb = t * e_n;
    var mx = -3.0e38;
    for (var e = lid; e < e_n; e += 64u) {
        mx = max(mx, logits[lb + e]);
    }
    rv[lid] = mx;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) {
            rv[lid] = max(rv[lid], rv[lid + s]);
        }
        workgroupBarrier();
    }
    mx = rv[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var e = lid; e < e_n; e += 64u) {
        let v = exp(logits[lb + e] - mx);
        probs[e] = v;
        sum += v;
    }
    rv[lid] = sum;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) {
            rv[lid] += rv[lid + s];
        }
        workgroupBarrier();
    }
    let total = rv[0];
    workgroupBarrier();
    for (var e = lid; e < e_n; e += 64u) {
        probs[e] = probs[e] / total;
    }
    workgroupBarrier();
    var chosen_sum = 0.0;
    for (var k = 0u; k < p.top_k; k++) {
        var bv = -1.0;
        var bi = 0xffffffffu;
        for (var e = lid; e < e_n; e += 64u) {
            let v = probs[e];
            if (v > bv) {
                bv = v;
                bi = e;
            }
        }
        rv[lid] = bv;
        ri[lid] = bi;
        workgroupBarrier();
        for (var s = 32u; s > 0u; s >>= 1u) {
            if (lid < s) {
                let ov = rv[lid + s];
                let oi = ri[lid + s];
                if (ov > rv[lid] || (ov == rv[lid] && oi < ri[lid])) {
                    rv[lid] = ov;
                    ri[lid] = oi;
                }
            }
            workgroupBarrier();
        }
        let sel = ri[0];
        let val = rv[0];
        chosen_sum += val;
        if (lid == 0u) {
            ids[t * p.top_k + k] = sel;
            weights[t * p.top_k + k] = val;
            probs[sel] = -2.0;
        }
        workgroupBarrier();
    }
    if (p.norm_topk != 0u && lid == 0u) {
        for (var k = 0u; k < p.top_k; k++) {
            weights[t * p.top_k + k] = weights[t * p.top_k + k] / chosen_sum;
        }
    }
}
