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
var<workgroup> wts: array<f32, 256>;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let stride = p.head_dim + 2u;
    let base = h * p.n_splits * stride;
    let ns = min(p.n_splits, 256u);
    var mx = -3.0e38;
    for (var s = lid; s < ns; s += WG) {
        mx = max(mx, part[base + s * stride]);
    }
    red[lid] = mx;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            red[lid] = max(red[lid], red[lid + k]);
        }
        workgroupBarrier();
    }
    let big = red[0];
    workgroupBarrier();
    var l = 0.0;
    for (var s = lid; s < ns; s += WG) {
        let w = exp(part[base + s * stride] - big);
        wts[s] = w;
        l += w * part[base + s * stride + 1u];
    }
    red[lid] = l;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            red[lid] += red[lid + k];
        }
        workgroupBarrier();
    }
    let total = red[0];
    for (var d = lid; d < p.head_dim; d += WG) {
        var a = 0.0;
        for (var s = 0u; s < ns; s++) {
            a += wts[s] * part[base + s * stride + 2u + d];
        }
        let j = h * p.head_dim + d;
        out[select(j, interleaved(j, p.n_heads * p.head_dim), (p.flags & 1u) != 0u)] = a / total;
    }
}
