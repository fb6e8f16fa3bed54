// Decode attention split over the keys (one query, n_tokens = 1), first half: workgroup
// (h, s) takes keys [key0 + s * chunk, min(key0 + (s + 1) * chunk, pos0 + 1)) of head h
// (key0 > 0: a sliding window's first key) and writes its
// partial online-softmax state to part[(h * n_splits + s) * (head_dim + 2) ..]:
// m (the largest score), l (the sum of exp(score - m)) and head_dim values
// acc = sum(exp(score - m) * v). attention_merge.wgsl combines the splits of each head.
// Many workgroups over short key ranges keep the GPU busy where one workgroup per head
// would walk every key serially.
//
// q: [n_heads, head_dim]; k_cache, v_cache: [positions, n_kv_heads, head_dim] of f32 or f16
// (include/kv_*.wgsl), read 4 elements at a time: head_dim is a multiple of 4 and at most
// 256.
struct Params {
    pos0: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    scale: f32,
    chunk: u32,
    n_splits: u32,
    key0: u32, // the first key attended to (0, or a sliding window's start)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k_cache: array<vec4<u32>>; // include/kv_*.wgsl
@group(0) @binding(3) var<storage, read> v_cache: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;

const WG: u32 = 64u;
// Keys per step: each key's score is summed by 4 invocations.
const KB: u32 = 16u;
const NEG: f32 = -3.0e38;
var<workgroup> qs: array<vec4<f32>, 64>;
var<workgroup> dots: array<f32, 64>;
var<workgroup> scores: array<vec4<f32>, 4>; // a step's scores (NEG past its keys)
var<workgroup> wts: array<vec4<f32>, 4>; // their exp(score - running max) (0 past them)
var<workgroup> accs: array<vec4<f32>, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let s = wid.y;
    let hd4 = p.head_dim / 4u;
    let kvh = h / (p.n_heads / p.n_kv_heads);
    let row4 = p.n_kv_heads * hd4;
    let head4 = kvh * hd4;
    for (var d = lid; d < hd4; d += WG) {
        qs[d] = q[h * hd4 + d];
    }
    workgroupBarrier();
    let k0 = p.key0 + s * p.chunk;
    let k1 = min(k0 + p.chunk, p.pos0 + 1u);
    // Scores: key kj of a step, vec4s quarter, quarter + 4, ... of the head.
    let kj = lid >> 2u;
    let quarter = lid & 3u;
    // Values: vec4 column c of the head, for the keys of phase ph (keys ph, ph + nph, ...).
    let nph = WG / hd4;
    let c = lid % hd4;
    let ph = lid / hd4;
    var m = NEG;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var kb = k0; kb < k1; kb += KB) {
        let nk = min(KB, k1 - kb);
        var d4 = vec4<f32>(0.0);
        if (kj < nk) {
            let kbase = (kb + kj) * row4 + head4;
            var e4 = vec4<f32>(0.0);
            var i = quarter;
            for (; i + 4u < hd4; i += 8u) {
                d4 += qs[i] * key(kbase + i);
                e4 += qs[i + 4u] * key(kbase + i + 4u);
            }
            if (i < hd4) {
                d4 += qs[i] * key(kbase + i);
            }
            d4 += e4;
        }
        dots[lid] = (d4.x + d4.y) + (d4.z + d4.w);
        workgroupBarrier();
        if (lid < KB) {
            let t = 4u * lid;
            let sc = ((dots[t] + dots[t + 1u]) + (dots[t + 2u] + dots[t + 3u])) * p.scale;
            scores[lid >> 2u][lid & 3u] = select(NEG, sc, lid < nk);
        }
        workgroupBarrier();
        // The step's maximum from 4 vec4 reads, each weight computed once (by the
        // invocation of its score) and their sum from 4 more: every invocation walking the
        // 16 scores twice, with 16 exps, took a quarter of the kernel's time on an H200.
        let s4 = max(max(scores[0], scores[1]), max(scores[2], scores[3]));
        let mx = max(m, max(max(s4.x, s4.y), max(s4.z, s4.w)));
        let corr = exp(m - mx);
        if (lid < KB) {
            let w = exp(scores[lid >> 2u][lid & 3u] - mx);
            wts[lid >> 2u][lid & 3u] = select(0.0, w, lid < nk);
        }
        workgroupBarrier();
        let sum = dot((wts[0] + wts[1]) + (wts[2] + wts[3]), vec4<f32>(1.0));
        l = l * corr + sum;
        acc *= corr;
        if (ph < nph) {
            let vbase = kb * row4 + head4 + c;
            var b4 = vec4<f32>(0.0);
            var t = ph;
            for (; t + nph < nk; t += 2u * nph) {
                acc += wts[t >> 2u][t & 3u] * value(vbase + t * row4);
                b4 += wts[(t + nph) >> 2u][(t + nph) & 3u] * value(vbase + (t + nph) * row4);
            }
            if (t < nk) {
                acc += wts[t >> 2u][t & 3u] * value(vbase + t * row4);
            }
            acc += b4;
        }
        m = mx;
        workgroupBarrier();
    }
    // Add up the phases of each column.
    accs[lid] = acc;
    workgroupBarrier();
    let base = (h * p.n_splits + s) * (p.head_dim + 2u);
    if (lid == 0u) {
        part[base] = m;
        part[base + 1u] = l;
    }
    if (lid < hd4) {
        var a = accs[lid];
        for (var k = 1u; k < nph; k++) {
            a += accs[lid + k * hd4];
        }
        let o = base + 2u + 4u * lid;
        part[o] = a.x;
        part[o + 1u] = a.y;
        part[o + 2u] = a.z;
        part[o + 3u] = a.w;
    }
}

// Quad i (4 elements) of the K cache, as f32.
fn key(i: u32) -> vec4<f32> {
    return kv_quad(k_cache[kv_word(i)], i);
}

// Quad i (4 elements) of the V cache, as f32.
fn value(i: u32) -> vec4<f32> {
    return kv_quad(v_cache[kv_word(i)], i);
}
