// Decode attention split over the keys (attention_split.wgsl) with the layer's per-head
// norm and RoPE (head_norm_rope.wgsl) folded in: the same partial softmax states from the
// raw q/k/v projection row instead of from rotated queries and a KV cache that already
// holds the current position, so that a decode step waits on one dispatch fewer per
// attention layer (a dependency level costs a few microseconds of a latency-bound step).
//
// Workgroup (h, s) first normalizes and rotates query head h itself: from x[q_offset +
// h * q_head_stride ..] (q_head_stride = head_dim, or 2 head_dim where q_proj yields
// [q | gate] per head), the q_norm weights wq and the cos / sin of position rope_pos in
// `rope` (cos table [positions, rotary_half], the sin table at sin_offset). The workgroups
// of the last key range, which holds the current position pos0, also compute that
// position's key from x[k_offset + kvh * head_dim ..] (k_norm weights wk) and take its
// value from x[v_offset + kvh * head_dim ..], use them for key pos0 (several query heads
// share a KV head: each uses its own copy, never the cache entry another workgroup may not
// have written yet), and the first query head of each KV head writes them into the K and V
// caches at row pos0 for later steps (with `ring` > 0 also at its mirror, as
// head_norm_rope). The arithmetic is head_norm_rope's, operation for operation (the sum of
// squares in 64 strided partial sums and the same tree, y = w * (x * inverseSqrt(mean(x^2)
// + eps)), clip, y1 c - y2 s, y2 c + y1 s; `norm` 0: y = x), and an f16 cache's key and
// value are rounded as the cache rounds them, so the results are bit for bit those of
// head_norm_rope followed by attention_split. (Not supported here: head_norm_rope's
// `whole`-width norm and separate q/k/v buffers; the engine runs the two kernels then.)
//
// The added work per workgroup is one load round (issued before the first barrier, as the
// query load of attention_split; the last range's workgroups load the key and value heads in
// the same round), a sum of squares of head_dim values (two barriers, the query's and the
// key's partials reduced together) and the rotation. head_dim is a multiple of 4 and at
// most 256; keys, values and part as in attention_split.wgsl.
struct Params {
    pos0: u32, // the query's row in the KV cache (its position less a ring's shift)
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    scale: f32,
    chunk: u32,
    n_splits: u32,
    key0: u32, // the first key attended to (0, or a sliding window's start)
    rope_pos: u32, // the query's position: its row of the RoPE tables
    rotary_half: u32,
    eps: f32,
    norm: u32, // 1: RMSNorm each head before the rotation
    q_offset: u32, // float offsets of query head 0, key head 0 and value head 0 in x
    k_offset: u32,
    v_offset: u32,
    q_head_stride: u32,
    sin_offset: u32,
    ring: u32, // floats of half a ring-buffer KV cache (0: none): the row written twice
    clip: f32, // > 0: q, k (normed) and v clamped to [-clip, clip] before RoPE (clip_qkv)
    pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wq: array<f32>;
@group(0) @binding(3) var<storage, read> wk: array<f32>;
@group(0) @binding(4) var<storage, read> rope: array<f32>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<vec4<u32>>; // include/kv_*.wgsl
@group(0) @binding(6) var<storage, read_write> v_cache: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read_write> part: array<f32>;

const WG: u32 = 64u;
// Keys per step: each key's score is summed by 4 invocations.
const KB: u32 = 16u;
const NEG: f32 = -3.0e38;
var<workgroup> qs: array<vec4<f32>, 64>;
var<workgroup> dots: array<f32, 64>;
var<workgroup> scores: array<vec4<f32>, 4>; // a step's scores (NEG past its keys)
var<workgroup> wts: array<vec4<f32>, 4>; // their exp(score - running max) (0 past them)
var<workgroup> accs: array<vec4<f32>, 64>;
// The norm and rotation: the raw query head, the raw key head (rotated in place: each dim
// is read and written by one invocation), their weights, the position's cos / sin, the
// partial sums of squares (the query's, then the key's) and the current value.
var<workgroup> xq: array<f32, 256>;
var<workgroup> xk: array<f32, 256>;
var<workgroup> wqs: array<f32, 256>;
var<workgroup> wks: array<f32, 256>;
var<workgroup> cs: array<f32, 128>;
var<workgroup> ss: array<f32, 128>;
var<workgroup> red: array<f32, 128>;
var<workgroup> vf: array<f32, 256>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let s = wid.y;
    let hd = p.head_dim;
    let hd4 = hd / 4u;
    let group = p.n_heads / p.n_kv_heads;
    let kvh = h / group;
    let row4 = p.n_kv_heads * hd4;
    let head4 = kvh * hd4;
    let k0 = p.key0 + s * p.chunk;
    let k1 = min(k0 + p.chunk, p.pos0 + 1u);
    // The range that holds the current position (the last one).
    let cur = p.pos0 < k0 + p.chunk;
    let half = p.rotary_half;
    let rp = p.rope_pos * half;
    let qb = p.q_offset + h * p.q_head_stride;
    let kb = p.k_offset + kvh * hd;
    let vb = p.v_offset + kvh * hd;
    // Everything the norms read, in one round.
    var sq = 0.0;
    var sk = 0.0;
    for (var i = lid; i < hd; i += WG) {
        let a = x[qb + i];
        xq[i] = a;
        wqs[i] = weight(true, i);
        if (i < half) {
            cs[i] = rope[rp + i];
            ss[i] = rope[p.sin_offset + rp + i];
        }
        if (cur) {
            let b = x[kb + i];
            xk[i] = b;
            wks[i] = weight(false, i);
            vf[i] = clip(x[vb + i]);
            sk += b * b;
        }
        sq += a * a;
    }
    // head_norm_rope's tree (8 partial sums of 8), the query's and the key's at once.
    red[lid] = sq;
    red[WG + lid] = sk;
    workgroupBarrier();
    if (lid < 16u) {
        let r = 8u * lid;
        red[r] = ((red[r] + red[r + 1u]) + (red[r + 2u] + red[r + 3u]))
            + ((red[r + 4u] + red[r + 5u]) + (red[r + 6u] + red[r + 7u]));
    }
    workgroupBarrier();
    let invq = inv_rms(0u);
    let invk = inv_rms(WG);
    for (var i = lid; i < hd; i += WG) {
        let y = clip(wqs[i] * (xq[i] * invq));
        if (i >= 2u * half) {
            qs[i >> 2u][i & 3u] = y;
        } else if (i < half) {
            let j = i + half;
            let y2 = clip(wqs[j] * (xq[j] * invq));
            let c = cs[i];
            let sn = ss[i];
            qs[i >> 2u][i & 3u] = y * c - y2 * sn;
            qs[j >> 2u][j & 3u] = y2 * c + y * sn;
        }
        if (cur) {
            let z = clip(wks[i] * (xk[i] * invk));
            if (i >= 2u * half) {
                xk[i] = z;
            } else if (i < half) {
                let j = i + half;
                let z2 = clip(wks[j] * (xk[j] * invk));
                let c = cs[i];
                let sn = ss[i];
                xk[i] = z * c - z2 * sn;
                xk[j] = z2 * c + z * sn;
            }
        }
    }
    workgroupBarrier();
    // The key and value of the current position into the caches, once per KV head (no
    // workgroup of this dispatch reads that row: those of the last range use their own).
    if (cur && h % group == 0u) {
        let row = p.pos0 * row4 + head4;
        for (var d = lid; d < hd4; d += WG) {
            put(true, row + d, own_key(d));
            put(false, row + d, own_value(d));
            if (p.ring != 0u) {
                put(true, mirror(row + d), own_key(d));
                put(false, mirror(row + d), own_value(d));
            }
        }
    }
    // attention_split.wgsl from here on, with key and value pos0 this workgroup's own.
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
            let own = kb + kj == p.pos0;
            let kbase = (kb + kj) * row4 + head4;
            var e4 = vec4<f32>(0.0);
            var i = quarter;
            for (; i + 4u < hd4; i += 8u) {
                d4 += qs[i] * key(own, kbase, i);
                e4 += qs[i + 4u] * key(own, kbase, i + 4u);
            }
            if (i < hd4) {
                d4 += qs[i] * key(own, kbase, i);
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
                acc += wts[t >> 2u][t & 3u] * value(kb + t == p.pos0, vbase + t * row4, c);
                let u = t + nph;
                b4 += wts[u >> 2u][u & 3u] * value(kb + u == p.pos0, vbase + u * row4, c);
            }
            if (t < nk) {
                acc += wts[t >> 2u][t & 3u] * value(kb + t == p.pos0, vbase + t * row4, c);
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

// 1 / RMS of the head whose 64 partial sums of squares start at red[r] (1 without `norm`).
fn inv_rms(r: u32) -> f32 {
    let total = ((red[r] + red[r + 8u]) + (red[r + 16u] + red[r + 24u]))
        + ((red[r + 32u] + red[r + 40u]) + (red[r + 48u] + red[r + 56u]));
    return select(1.0, inverseSqrt(total / f32(p.head_dim) + p.eps), p.norm != 0u);
}

// Quad d of the head at key kbase (in quads) as f32: this workgroup's own key (`own`), else
// the K cache's.
fn key(own: bool, kbase: u32, d: u32) -> vec4<f32> {
    if (own) {
        return own_key(d);
    }
    let i = kbase + d;
    return kv_quad(k_cache[kv_word(i)], i);
}

// Quad i (4 elements, column c of the head) of the V cache as f32, or with `own` this
// workgroup's current value.
fn value(own: bool, i: u32, c: u32) -> vec4<f32> {
    if (own) {
        return own_value(c);
    }
    return kv_quad(v_cache[kv_word(i)], i);
}

// Quad d of the current key (xk after the rotation) and of the current value, as the
// cache holds them.
fn own_key(d: u32) -> vec4<f32> {
    return as_cached(vec4<f32>(xk[4u * d], xk[4u * d + 1u], xk[4u * d + 2u], xk[4u * d + 3u]));
}

fn own_value(d: u32) -> vec4<f32> {
    return as_cached(vec4<f32>(vf[4u * d], vf[4u * d + 1u], vf[4u * d + 2u], vf[4u * d + 3u]));
}

// A quad as the cache stores it: the f16 words of its pairs (kv_pack).
fn cache_words(v: vec4<f32>) -> vec2<u32> {
    return vec2<u32>(kv_pack(v.x, v.y), kv_pack(v.z, v.w));
}

// A quad rounded as the cache rounds it (f32: unchanged; f16: to nearest, clamped).
fn as_cached(v: vec4<f32>) -> vec4<f32> {
    if (KVDT == 0u) {
        return v;
    }
    return kv_half4(cache_words(v));
}

// Writes quad i of the K cache (`is_k`) or of the V cache.
fn put(is_k: bool, i: u32, v: vec4<f32>) {
    if (KVDT == 0u) {
        if (is_k) {
            k_cache[i] = bitcast<vec4<u32>>(v);
        } else {
            v_cache[i] = bitcast<vec4<u32>>(v);
        }
        return;
    }
    // f16: half of a vec4<u32>, its .xy or its .zw.
    let w = cache_words(v);
    let at = 2u * (i & 1u);
    if (is_k) {
        k_cache[i >> 1u][at] = w.x;
        k_cache[i >> 1u][at + 1u] = w.y;
    } else {
        v_cache[i >> 1u][at] = w.x;
        v_cache[i >> 1u][at + 1u] = w.y;
    }
}

// The mirror of KV quad i in a ring of 2 p.ring floats.
fn mirror(i: u32) -> u32 {
    let r4 = p.ring / 4u;
    return select(i + r4, i - r4, i >= r4);
}

// v clamped to [-clip, clip] where `clip` is set.
fn clip(v: f32) -> f32 {
    if (p.clip > 0.0) {
        return clamp(v, -p.clip, p.clip);
    }
    return v;
}

// Norm weight i of the query (wq) or key (wk) head.
fn weight(is_q: bool, i: u32) -> f32 {
    if (p.norm == 0u) {
        return 1.0;
    }
    if (is_q) {
        return wq[i];
    }
    return wk[i];
}
