// Decode attention over a short context in one dispatch (one query, n_tokens = 1): workgroup
// h takes every key of head h, key0 ..= pos0 (key0 > 0: a sliding window's first key; at
// most 512 keys, `kernels::ATTENTION_DECODE_MAX_KEYS`), and writes the head's final output
// out[h * head_dim + d] = sum_k exp(s_k - M) v_k[d] / sum_k exp(s_k - M), s_k the scaled
// scores, M their maximum: what attention_split.wgsl + attention_merge.wgsl compute, with
// the merge's flags (bit 0: the interleaved output layout, include/interleave.wgsl; bit 1:
// times the sigmoid of the output gate gate[g_offset + h * g_head_stride + d], Qwen3.5;
// bit 2: attention sinks, sinks[h] counted in M and exp(sinks[h] - M) added to the
// denominator, gpt-oss). At short context the split + merge pair cost two dependent
// dispatches (~19 us per layer on an H100 at 100-200 keys, most of it the fixed cost of
// a level); this kernel is one.
//
// Written for latency, every phase's loads independent of each other (no serial walk over
// the keys): 256 invocations;
// - scores: 4 invocations per key (vec4s quarter, quarter + 4, ... of the head: 4
//   neighbouring invocations read 64 contiguous bytes), 64 keys per round, every round's
//   partial sums kept in workgroup memory, so no barrier between rounds;
// - one barrier, then invocation i turns keys i and i + 256 into scores and their maximum,
//   a two-level maximum over the workgroup (2 barriers), the weights exp(s - M) (1 barrier);
// - P V: invocation i owns vec4 column i % (head_dim / 4) of the output over the keys
//   i / (head_dim / 4), + 256 / (head_dim / 4), ... (one independent load each, two
//   accumulators), also summing their weights; one barrier, and the phases of each column
//   are added (the weights' sum too: every column's phases cover every key once).
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
    key0: u32, // the first key attended to (0, or a sliding window's start)
    flags: u32, // bit 0: interleaved output; bit 1: output gate; bit 2: attention sinks
    g_offset: u32, // the gate of head 0 in `gate` (floats)
    g_head_stride: u32, // floats from one head's gate to the next
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k_cache: array<vec4<u32>>; // include/kv_*.wgsl
@group(0) @binding(3) var<storage, read> v_cache: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> gate: array<f32>;
@group(0) @binding(6) var<storage, read> sinks: array<f32>;

const WG: u32 = 256u;
// Keys at most (2 per invocation), and keys per round of the scores (4 invocations each).
const MAX_KEYS: u32 = 512u;
const ROUND: u32 = 64u;
const NEG: f32 = -3.0e38;
var<workgroup> qs: array<vec4<f32>, 64>;
// Key t's 4 partial dot products (one per quarter); then, reused for P V, invocation i's
// accumulator at [i] and its weights' sum at [WG + i].x.
var<workgroup> dots: array<vec4<f32>, 512>;
// The scores, then their weights exp(s - M) (0 past the keys).
var<workgroup> wts: array<f32, 512>;
// The maxima: one per invocation, then one per 16.
var<workgroup> red: array<vec4<f32>, 64>;
var<workgroup> red16: array<vec4<f32>, 4>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let hd4 = p.head_dim / 4u;
    let kvh = h / (p.n_heads / p.n_kv_heads);
    let row4 = p.n_kv_heads * hd4;
    let head4 = kvh * hd4;
    let nk = min(p.pos0 + 1u - min(p.key0, p.pos0 + 1u), MAX_KEYS);
    for (var d = lid; d < hd4; d += WG) {
        qs[d] = q[h * hd4 + d];
    }
    workgroupBarrier();
    // Scores: key r * ROUND + lid / 4 of round r, quarter lid % 4 of its dot product (the
    // sums in attention_split.wgsl's order).
    let quarter = lid & 3u;
    for (var t = lid >> 2u; t < nk; t += ROUND) {
        let kbase = (p.key0 + t) * row4 + head4;
        var d4 = vec4<f32>(0.0);
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
        dots[t][quarter] = (d4.x + d4.y) + (d4.z + d4.w);
    }
    workgroupBarrier();
    var mx = NEG;
    for (var t = lid; t < MAX_KEYS; t += WG) {
        let d = dots[t];
        let sc = select(NEG, ((d.x + d.y) + (d.z + d.w)) * p.scale, t < nk);
        wts[t] = sc;
        mx = max(mx, sc);
    }
    red[lid >> 2u][lid & 3u] = mx;
    workgroupBarrier();
    if (lid < 16u) {
        let r = 4u * lid;
        let m4 = max(max(red[r], red[r + 1u]), max(red[r + 2u], red[r + 3u]));
        red16[lid >> 2u][lid & 3u] = max(max(m4.x, m4.y), max(m4.z, m4.w));
    }
    workgroupBarrier();
    let m4 = max(max(red16[0], red16[1]), max(red16[2], red16[3]));
    let with_sink = (p.flags & 4u) != 0u;
    var sink = NEG;
    if (with_sink) {
        sink = sinks[h];
    }
    let big = max(max(max(m4.x, m4.y), max(m4.z, m4.w)), sink);
    for (var t = lid; t < MAX_KEYS; t += WG) {
        wts[t] = select(0.0, exp(wts[t] - big), t < nk);
    }
    workgroupBarrier();
    // P V: vec4 column c of the head over the keys of phase ph (keys ph, ph + nph, ...).
    let nph = WG / hd4;
    let c = lid % hd4;
    let ph = lid / hd4;
    var acc = vec4<f32>(0.0);
    var l = 0.0;
    if (ph < nph) {
        let vbase = p.key0 * row4 + head4 + c;
        var b4 = vec4<f32>(0.0);
        var lb = 0.0;
        var t = ph;
        for (; t + nph < nk; t += 2u * nph) {
            let w0 = wts[t];
            let w1 = wts[t + nph];
            acc += w0 * value(vbase + t * row4);
            b4 += w1 * value(vbase + (t + nph) * row4);
            l += w0;
            lb += w1;
        }
        if (t < nk) {
            acc += wts[t] * value(vbase + t * row4);
            l += wts[t];
        }
        acc += b4;
        l += lb;
    }
    // Every invocation has read its partial dots (before the last two barriers): reuse them.
    dots[lid] = acc;
    dots[WG + lid].x = l;
    workgroupBarrier();
    if (lid < hd4) {
        var a = dots[lid];
        var total = dots[WG + lid].x;
        for (var k = 1u; k < nph; k++) {
            a += dots[lid + k * hd4];
            total += dots[WG + lid + k * hd4].x;
        }
        if (with_sink) {
            total += exp(sink - big);
        }
        var v = a / total;
        let n = p.n_heads * p.head_dim;
        let il = (p.flags & 1u) != 0u;
        for (var e = 0u; e < 4u; e++) {
            let d = 4u * lid + e;
            var o = v[e];
            if ((p.flags & 2u) != 0u) {
                o = o * (1.0 / (1.0 + exp(-gate[p.g_offset + h * p.g_head_stride + d])));
            }
            let j = h * p.head_dim + d;
            out[select(j, interleaved(j, n), il)] = o;
        }
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
