// attention_split.wgsl for grouped-query attention: workgroup (w, s) takes keys
// [s * chunk, min((s + 1) * chunk, pos0 + 1)) of the 4 query heads 4w .. 4w + 3, which
// share one kv head (n_heads / n_kv_heads a multiple of 4), so each key and value is loaded
// once for 4 heads instead of once per head. The 4 heads' scores, softmax states and
// probabilities are the 4 lanes of vec4s. It writes the same partial states as
// attention_split.wgsl: part[(h * n_splits + s) * (head_dim + 2) ..] = m, l, acc.
//
// q: [n_heads, head_dim]; k_cache, v_cache: [positions, n_kv_heads, head_dim], read as
// vec4s: head_dim is a multiple of 4 and at most 256.
struct Params {
    pos0: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    scale: f32,
    chunk: u32,
    n_splits: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v_cache: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;

const WG: u32 = 64u;
// Keys per step: each key's scores are summed by 4 invocations.
const KB: u32 = 16u;
const NEG: f32 = -3.0e38;
var<workgroup> qs: array<vec4<f32>, 256>; // [vec4 of the head][head]
var<workgroup> dots: array<vec4<f32>, 64>; // partial scores of the 4 heads
var<workgroup> scores: array<vec4<f32>, 16>; // [key of the step]: the 4 heads' scores
var<workgroup> accs: array<vec4<f32>, 64>;
var<workgroup> lsums: array<vec4<f32>, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = wid.y;
    let hd4 = p.head_dim / 4u;
    let h0 = 4u * wid.x;
    let kvh = h0 / (p.n_heads / p.n_kv_heads);
    let row4 = p.n_kv_heads * hd4;
    let head4 = kvh * hd4;
    for (var i = lid; i < 4u * hd4; i += WG) {
        qs[i] = q[(h0 + (i & 3u)) * hd4 + (i >> 2u)];
    }
    workgroupBarrier();
    let k0 = s * p.chunk;
    let k1 = min(k0 + p.chunk, p.pos0 + 1u);
    // Scores: key kj of a step, vec4s quarter, quarter + 4, ... of the head.
    let kj = lid >> 2u;
    let quarter = lid & 3u;
    // Values: vec4 column c of the head, for the keys of phase ph (keys ph, ph + nph, ...).
    let nph = WG / hd4;
    let c = lid % hd4;
    let ph = lid / hd4;
    var m = vec4<f32>(NEG);
    var l = vec4<f32>(0.0); // over this invocation's phase's keys
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var kb = k0; kb < k1; kb += KB) {
        let nk = min(KB, k1 - kb);
        var d = vec4<f32>(0.0);
        if (kj < nk) {
            let kbase = (kb + kj) * row4 + head4;
            for (var i = quarter; i < hd4; i += 4u) {
                let kv = k_cache[kbase + i];
                d += vec4<f32>(dot(qs[4u * i], kv), dot(qs[4u * i + 1u], kv),
                               dot(qs[4u * i + 2u], kv), dot(qs[4u * i + 3u], kv));
            }
        }
        dots[lid] = d;
        workgroupBarrier();
        if (lid < KB) {
            let t = 4u * lid;
            let sc = ((dots[t] + dots[t + 1u]) + (dots[t + 2u] + dots[t + 3u])) * p.scale;
            scores[lid] = select(vec4<f32>(NEG), sc, lid < nk);
        }
        workgroupBarrier();
        var mx = m;
        for (var t = 0u; t < nk; t++) {
            mx = max(mx, scores[t]);
        }
        let corr = exp(m - mx);
        l *= corr;
        a0 *= corr.x;
        a1 *= corr.y;
        a2 *= corr.z;
        a3 *= corr.w;
        m = mx;
        if (ph < nph) {
            let vbase = kb * row4 + head4 + c;
            for (var t = ph; t < nk; t += nph) {
                let v = v_cache[vbase + t * row4];
                let e = exp(scores[t] - m);
                l += e;
                a0 += e.x * v;
                a1 += e.y * v;
                a2 += e.z * v;
                a3 += e.w * v;
            }
        }
        workgroupBarrier();
    }
    // Add up the phases of each column, and of l (the phases' first columns).
    lsums[lid] = select(vec4<f32>(0.0), l, c == 0u && ph < nph);
    for (var g = 0u; g < 4u; g++) {
        accs[lid] = select(select(select(a3, a2, g == 2u), a1, g == 1u), a0, g == 0u);
        workgroupBarrier();
        let base = ((h0 + g) * p.n_splits + s) * (p.head_dim + 2u);
        if (lid == 0u) {
            var lt = 0.0;
            for (var k = 0u; k < nph; k++) {
                lt += lsums[k * hd4][g];
            }
            part[base] = m[g];
            part[base + 1u] = lt;
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
        workgroupBarrier();
    }
}
