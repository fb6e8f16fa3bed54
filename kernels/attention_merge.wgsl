// Decode attention split over the keys, second half: combines the partial softmax states
// that attention_split.wgsl wrote for the n_splits key ranges of each head into
// out[h * head_dim + d] = sum_s exp(m_s - M) acc_s[d] / sum_s exp(m_s - M) l_s,
// M = max_s m_s. One workgroup per head; n_splits <= 256.
struct Params {
    n_heads: u32,
    head_dim: u32,
    n_splits: u32,
    flags: u32, // bit 0: write out in the interleaved layout (include/interleave.wgsl)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
var<workgroup> ms: array<f32, 256>;
var<workgroup> ls: array<f32, 256>;
var<workgroup> wts: array<f32, 256>;

// A decode step waits on this kernel, so it is written for latency: the splits' m and l
// are loaded in one round and shared through workgroup memory (two barriers, no reduction
// trees), and the accumulators are loaded 8 splits at a time, all 8 loads in flight.
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let stride = p.head_dim + 2u;
    let base = h * p.n_splits * stride;
    let ns = min(p.n_splits, 256u);
    for (var s = lid; s < ns; s += WG) {
        ms[s] = part[base + s * stride];
        ls[s] = part[base + s * stride + 1u];
    }
    workgroupBarrier();
    var big = -3.0e38;
    for (var s = 0u; s < ns; s++) {
        big = max(big, ms[s]);
    }
    for (var s = lid; s < ns; s += WG) {
        wts[s] = exp(ms[s] - big);
    }
    workgroupBarrier();
    var total = 0.0;
    for (var s = 0u; s < ns; s++) {
        total += wts[s] * ls[s];
    }
    let il = (p.flags & 1u) != 0u;
    for (var d = lid; d < p.head_dim; d += WG) {
        let o = base + 2u + d;
        var a = 0.0;
        var s = 0u;
        for (; s + 8u <= ns; s += 8u) {
            let q = o + s * stride;
            let v0 = part[q];
            let v1 = part[q + stride];
            let v2 = part[q + 2u * stride];
            let v3 = part[q + 3u * stride];
            let v4 = part[q + 4u * stride];
            let v5 = part[q + 5u * stride];
            let v6 = part[q + 6u * stride];
            let v7 = part[q + 7u * stride];
            a += ((wts[s] * v0 + wts[s + 1u] * v1) + (wts[s + 2u] * v2 + wts[s + 3u] * v3))
                + ((wts[s + 4u] * v4 + wts[s + 5u] * v5) + (wts[s + 6u] * v6 + wts[s + 7u] * v7));
        }
        for (; s < ns; s++) {
            a += wts[s] * part[o + s * stride];
        }
        let j = h * p.head_dim + d;
        out[select(j, interleaved(j, p.n_heads * p.head_dim), il)] = a / total;
    }
}
