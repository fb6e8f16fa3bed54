// Decode attention split over the keys, second half: combines the partial softmax states
// that attention_split.wgsl wrote for the n_splits key ranges of each head into
// out[h * head_dim + d] = sum_s exp(m_s - M) acc_s[d] / sum_s exp(m_s - M) l_s,
// M = max_s m_s. Workgroup (h, c) takes dims 16 c .. 16 c + 15 of head h (grid:
// `kernels::attention_merge_groups`), invocation i dim i % 16 over the ranges i / 16,
// i / 16 + 4, ...; n_splits <= 256. With flags bit 1 (gated attention, Qwen3.5), each
// output is also multiplied by sigmoid(gate[g_offset + h * g_head_stride + d]) =
// 1 / (1 + exp(-gate)), the output gate sigmoid_gate.wgsl applies in a prefill. With flags
// bit 2 (attention sinks, gpt-oss) head h's sink logit sinks[h] joins the softmax: it
// counts in the maximum M and adds exp(sinks[h] - M) to the denominator, with no value.
//
// A decode step waits on this kernel, so it is written for latency: the ranges' m and l
// are loaded in one round and shared through workgroup memory, and each invocation loads
// its accumulators 8 ranges at a time, all 8 loads in flight (one invocation per dim over
// every range took 8 us for 16 ranges and 12.5 us for 63 on an H200). The serial passes
// over the ranges (their maximum, the weighted sum of their l) read 4 ranges per vec4:
// scalar passes took 8.0 instead of 4.6 us for 63 ranges.
struct Params {
    n_heads: u32,
    head_dim: u32,
    n_splits: u32,
    flags: u32, // bit 0: write out in the interleaved layout (include/interleave.wgsl);
                // bit 1: multiply by the sigmoid of the output gate; bit 2: attention sinks
    g_offset: u32, // the gate of head 0 in `gate` (floats)
    g_head_stride: u32, // floats from one head's gate to the next
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> gate: array<f32>;
@group(0) @binding(4) var<storage, read> sinks: array<f32>;

const WG: u32 = 64u;
// Dims per workgroup, and groups of ranges (WG = DIMS * GROUPS).
const DIMS: u32 = 16u;
const GROUPS: u32 = 4u;
// The ranges' m, l and weights exp(m - M), 4 ranges per vec4 (past n_splits: m = -3e38,
// l = 0, weight 0), so that the serial passes over them read a vec4 at a time.
var<workgroup> ms: array<vec4<f32>, 64>;
var<workgroup> ls: array<vec4<f32>, 64>;
var<workgroup> wts: array<vec4<f32>, 64>;
var<workgroup> sums: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let stride = p.head_dim + 2u;
    let base = h * p.n_splits * stride;
    let ns = min(p.n_splits, 256u);
    let n4 = (ns + 3u) / 4u;
    for (var s = lid; s < 4u * n4; s += WG) {
        let r = base + min(s, ns - 1u) * stride;
        ms[s >> 2u][s & 3u] = select(-3.0e38, part[r], s < ns);
        ls[s >> 2u][s & 3u] = select(0.0, part[r + 1u], s < ns);
    }
    workgroupBarrier();
    var big4 = vec4<f32>(-3.0e38);
    for (var i = 0u; i < n4; i++) {
        big4 = max(big4, ms[i]);
    }
    let with_sink = (p.flags & 4u) != 0u;
    var sink = -3.0e38;
    if (with_sink) {
        sink = sinks[h];
    }
    let big = max(max(max(big4.x, big4.y), max(big4.z, big4.w)), sink);
    for (var i = lid; i < n4; i += WG) {
        wts[i] = exp(ms[i] - vec4<f32>(big));
    }
    workgroupBarrier();
    let d = wid.y * DIMS + lid % DIMS;
    let g = lid / DIMS;
    var a = 0.0;
    if (d < p.head_dim) {
        let o = base + 2u + d;
        let last = ns - 1u;
        // Ranges g + GROUPS k, 8 values of k per round (past ns: weight 0, a valid load).
        for (var s0 = g; s0 < ns; s0 += 8u * GROUPS) {
            let s = s0 + GROUPS * vec4<u32>(0u, 1u, 2u, 3u);
            let t = s + 4u * GROUPS;
            let sa = min(s, vec4<u32>(last));
            let sb = min(t, vec4<u32>(last));
            let va = vec4<f32>(part[o + sa.x * stride], part[o + sa.y * stride],
                               part[o + sa.z * stride], part[o + sa.w * stride]);
            let vb = vec4<f32>(part[o + sb.x * stride], part[o + sb.y * stride],
                               part[o + sb.z * stride], part[o + sb.w * stride]);
            let wa = select(vec4<f32>(0.0), vec4<f32>(weight(sa.x), weight(sa.y), weight(sa.z),
                                                      weight(sa.w)), s < vec4<u32>(ns));
            let wb = select(vec4<f32>(0.0), vec4<f32>(weight(sb.x), weight(sb.y), weight(sb.z),
                                                      weight(sb.w)), t < vec4<u32>(ns));
            a += dot(wa, va) + dot(wb, vb);
        }
    }
    sums[lid] = a;
    workgroupBarrier();
    if (g == 0u && d < p.head_dim) {
        var total = 0.0;
        for (var i = 0u; i < n4; i++) {
            total += dot(wts[i], ls[i]);
        }
        if (with_sink) {
            total += exp(sink - big);
        }
        let acc = (sums[lid] + sums[lid + DIMS]) + (sums[lid + 2u * DIMS] + sums[lid + 3u * DIMS]);
        let j = h * p.head_dim + d;
        var v = acc / total;
        if ((p.flags & 2u) != 0u) {
            v = v * (1.0 / (1.0 + exp(-gate[p.g_offset + h * p.g_head_stride + d])));
        }
        out[select(j, interleaved(j, p.n_heads * p.head_dim), (p.flags & 1u) != 0u)] = v;
    }
}

// The weight of range s.
fn weight(s: u32) -> f32 {
    return wts[s >> 2u][s & 3u];
}
