// Causal attention over the KV cache for prefill, 16 queries of one head per workgroup.
// q: [n_tokens, n_heads, head_dim]; k_cache, v_cache: [positions, n_kv_heads, head_dim] of
// f32, read 4 elements per load (head_dim a multiple of 4, at most 256), or of f16, read 8
// elements per load (head_dim a multiple of 8; include/kv_*.wgsl); out: [n_tokens,
// n_heads, head_dim]. Query t sits at position pos0 + t and sees keys 0..=pos0 + t. Workgroup
// (h, b) computes head h for queries 16 b .. 16 b + 15, over tiles of 64 keys with an
// online (running max) softmax in f32, so that each key and value read serves 16 queries.
//
// Per tile, four phases separated by workgroup barriers:
// 1. scores: invocation (qg, kg) = (lid / 16, lid % 16) computes the 4 x 4 scores of
//    queries 4 qg .. 4 qg + 3 and keys 4 kg .. 4 kg + 3 (16 dot products per step of
//    4 dimensions, from 8 vec4 loads), masked and written to `pw`;
// 2. row maxima: invocation (row, part) = (lid / 4, lid % 4) takes 16 of row `row`'s
//    scores; the 4 parts' maxima meet in `red`;
// 3. weights: the same invocations turn their scores into exp(s - m), sum them, and keep
//    the row's running max and sum (every part of a row holds the same copy);
// 4. values: invocation (qg, dg) = (lid / 16, lid % 16) accumulates vec4 columns dg,
//    dg + 16, ... (at most 4) of queries 4 qg .. 4 qg + 3, rescaled by the row's
//    correction.
// Per-query state lives in named vec4s, never in indexed arrays (which drivers may place
// in memory). With `window` > 0 (a sliding-window layer) query t sees only the last
// `window` keys up to its own (the tiles start at the first query's first key, rounded
// down to a multiple of 64); with
// `sinks` 1 head h's sink logit joins each row's denominator as exp(sinks[h] - m), m the
// row's running max (attention.wgsl).
struct Params {
    n_tokens: u32,
    pos0: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    scale: f32,
    window: u32,
    sinks: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k_cache: array<vec4<u32>>; // include/kv_*.wgsl
@group(0) @binding(3) var<storage, read> v_cache: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> sinks: array<f32>;

const BK: u32 = 64u; // keys per tile
const BQ: u32 = 16u; // queries per workgroup
const NEG: f32 = -3.0e38;
var<workgroup> pw: array<vec4<f32>, 256>; // [query][key / 4]: scores, then weights
var<workgroup> red: array<f32, 64>; // [row][part]: a tile's part maxima, then part sums
var<workgroup> corr_s: array<f32, 16>; // [query]: a tile's correction; at the end, the sum

// One vec4 column of the output of an invocation's 4 queries (a: query 4 qg, ..., d:
// query 4 qg + 3).
struct Cols {
    a: vec4<f32>,
    b: vec4<f32>,
    c: vec4<f32>,
    d: vec4<f32>,
}

// Each query's column times its factor (a field of f).
fn scaled(x: Cols, f: vec4<f32>) -> Cols {
    return Cols(x.a * f.x, x.b * f.y, x.c * f.z, x.d * f.w);
}

// Each query's column plus its weight (a field of w) times the value column v.
fn add_weighted(x: Cols, w: vec4<f32>, v: vec4<f32>) -> Cols {
    return Cols(x.a + w.x * v, x.b + w.y * v, x.c + w.z * v, x.d + w.w * v);
}

// One step of 4 dimensions of a query's scores with 4 keys.
fn dots(qv: vec4<f32>, k0: vec4<f32>, k1: vec4<f32>, k2: vec4<f32>,
        k3: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(dot(qv, k0), dot(qv, k1), dot(qv, k2), dot(qv, k3));
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t0 = wid.y * BQ;
    let nq = min(BQ, p.n_tokens - t0);
    let hd4 = p.head_dim / 4u;
    let kvh = h / (p.n_heads / p.n_kv_heads);
    let kv4 = p.n_kv_heads * hd4; // vec4s per cache position
    let q4 = p.n_heads * hd4; // vec4s per token of q and out
    // The last key any of the workgroup's queries sees.
    let last = p.pos0 + t0 + nq - 1u;

    // Phase 1 and 4 roles.
    let qg = lid / 16u;
    let kg = lid % 16u;
    let dg = kg;
    let qi = 4u * qg; // first of the invocation's 4 queries
    // Its queries' rows of q (rows past the last token re-read it; their scores are masked).
    let qa = min(t0 + qi, p.n_tokens - 1u) * q4 + h * hd4;
    let qb = min(t0 + qi + 1u, p.n_tokens - 1u) * q4 + h * hd4;
    let qc = min(t0 + qi + 2u, p.n_tokens - 1u) * q4 + h * hd4;
    let qd = min(t0 + qi + 3u, p.n_tokens - 1u) * q4 + h * hd4;
    // The last key each of its queries sees (none for queries past the last token).
    let lim = vec4<u32>(p.pos0 + t0) + vec4<u32>(qi) + vec4<u32>(0u, 1u, 2u, 3u);
    let live = (vec4<u32>(qi) + vec4<u32>(0u, 1u, 2u, 3u)) < vec4<u32>(nq);
    // Value columns of the invocation: dg + 16 i for i < nch; with an f16 cache (whose
    // vec4<u32> loads hold two columns; head_dim a multiple of 8) the pairs 2 dg + 32 i and
    // 2 dg + 32 i + 1 (from `dcol`).
    let f16 = KVDT == 1u;
    let nch = select(select(0u, (hd4 - dg + 15u) / 16u, dg < hd4),
                     select(0u, 2u * ((hd4 - 2u * dg + 31u) / 32u), 2u * dg < hd4), f16);
    let dcol = select(dg, 2u * dg, f16);

    // Phase 2 and 3 roles: row `row` of the tile's scores, part `part` of 4.
    let row = lid / 4u;
    let part = lid % 4u;
    var m = NEG; // the row's running max
    var l = 0.0; // the row's running sum of exp(s - m)

    // The 4 queries' value columns dg (o0), dg + 16 (o1), dg + 32 (o2) and dg + 48 (o3).
    var o0 = Cols(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    var o1 = o0;
    var o2 = o0;
    var o3 = o0;

    // The first key each query sees (the window's start, else 0), and the tiles' start:
    // the first query's first key rounded down to a multiple of BK, so that a query's
    // tiles hold the same keys whichever queries share its workgroup (the tiles before its
    // window are wholly masked and change nothing), and its result does not depend on how
    // a prompt was split into passes. (A ring cache's shift is a multiple of BK too.)
    let w = p.window;
    let lo = select(vec4<u32>(0u), lim + 1u - vec4<u32>(w),
                    vec4<bool>(w > 0u) & (lim + 1u > vec4<u32>(w)));
    let first_key = select(0u, p.pos0 + t0 + 1u - w, w > 0u && p.pos0 + t0 + 1u > w)
        / BK * BK;
    for (var kb = first_key; kb <= last; kb += BK) {
        // 1. Scores of queries qi.. and keys kb + 4 kg + (0..3); keys past `last` re-read it.
        let kj = vec4<u32>(kb + 4u * kg) + vec4<u32>(0u, 1u, 2u, 3u);
        let kr = min(kj, vec4<u32>(last)) * kv4 + vec4<u32>(kvh * hd4);
        var s0 = vec4<f32>(0.0);
        var s1 = vec4<f32>(0.0);
        var s2 = vec4<f32>(0.0);
        var s3 = vec4<f32>(0.0);
        // An f16 cache: two columns of each key per load.
        for (var d = 0u; f16 && d < hd4; d += 2u) {
            let w0 = k_cache[(kr.x + d) >> 1u];
            let w1 = k_cache[(kr.y + d) >> 1u];
            let w2 = k_cache[(kr.z + d) >> 1u];
            let w3 = k_cache[(kr.w + d) >> 1u];
            let k0 = kv_half4(w0.xy);
            let k1 = kv_half4(w1.xy);
            let k2 = kv_half4(w2.xy);
            let k3 = kv_half4(w3.xy);
            let k4 = kv_half4(w0.zw);
            let k5 = kv_half4(w1.zw);
            let k6 = kv_half4(w2.zw);
            let k7 = kv_half4(w3.zw);
            s0 += dots(q[qa + d], k0, k1, k2, k3) + dots(q[qa + d + 1u], k4, k5, k6, k7);
            s1 += dots(q[qb + d], k0, k1, k2, k3) + dots(q[qb + d + 1u], k4, k5, k6, k7);
            s2 += dots(q[qc + d], k0, k1, k2, k3) + dots(q[qc + d + 1u], k4, k5, k6, k7);
            s3 += dots(q[qd + d], k0, k1, k2, k3) + dots(q[qd + d + 1u], k4, k5, k6, k7);
        }
        for (var d = 0u; !f16 && d < hd4; d++) {
            let k0 = key(kr.x + d);
            let k1 = key(kr.y + d);
            let k2 = key(kr.z + d);
            let k3 = key(kr.w + d);
            s0 += dots(q[qa + d], k0, k1, k2, k3);
            s1 += dots(q[qb + d], k0, k1, k2, k3);
            s2 += dots(q[qc + d], k0, k1, k2, k3);
            s3 += dots(q[qd + d], k0, k1, k2, k3);
        }
        let neg = vec4<f32>(NEG);
        pw[qi * 16u + kg] = select(neg, s0 * p.scale,
            kj <= vec4<u32>(lim.x) & kj >= vec4<u32>(lo.x) & vec4<bool>(live.x));
        pw[(qi + 1u) * 16u + kg] = select(neg, s1 * p.scale,
            kj <= vec4<u32>(lim.y) & kj >= vec4<u32>(lo.y) & vec4<bool>(live.y));
        pw[(qi + 2u) * 16u + kg] = select(neg, s2 * p.scale,
            kj <= vec4<u32>(lim.z) & kj >= vec4<u32>(lo.z) & vec4<bool>(live.z));
        pw[(qi + 3u) * 16u + kg] = select(neg, s3 * p.scale,
            kj <= vec4<u32>(lim.w) & kj >= vec4<u32>(lo.w) & vec4<bool>(live.w));
        workgroupBarrier();

        // 2. The row's maximum over the tile.
        let pi = row * 16u + 4u * part;
        let sa = pw[pi];
        let sb = pw[pi + 1u];
        let sc = pw[pi + 2u];
        let sd = pw[pi + 3u];
        let mx4 = max(max(sa, sb), max(sc, sd));
        red[lid] = max(max(mx4.x, mx4.y), max(mx4.z, mx4.w));
        workgroupBarrier();

        // 3. Weights exp(s - m_new) (0 for masked scores), the running max and sum.
        let r4 = 4u * row;
        let m_new = max(m, max(max(red[r4], red[r4 + 1u]), max(red[r4 + 2u], red[r4 + 3u])));
        let wa = select(vec4<f32>(0.0), exp(sa - m_new), sa > neg);
        let wb = select(vec4<f32>(0.0), exp(sb - m_new), sb > neg);
        let wc = select(vec4<f32>(0.0), exp(sc - m_new), sc > neg);
        let wd = select(vec4<f32>(0.0), exp(sd - m_new), sd > neg);
        pw[pi] = wa;
        pw[pi + 1u] = wb;
        pw[pi + 2u] = wc;
        pw[pi + 3u] = wd;
        let corr = exp(m - m_new);
        if (part == 0u) {
            corr_s[row] = corr;
        }
        // The sums of the row's 4 parts, through `red` after the next barrier.
        let part_sum = dot(wa + wb + wc + wd, vec4<f32>(1.0));
        m = m_new;
        workgroupBarrier();
        red[lid] = part_sum;

        // 4. Values: rescale, then add the tile's weighted values.
        let cq = vec4<f32>(corr_s[qi], corr_s[qi + 1u], corr_s[qi + 2u], corr_s[qi + 3u]);
        o0 = scaled(o0, cq);
        o1 = scaled(o1, cq);
        o2 = scaled(o2, cq);
        o3 = scaled(o3, cq);
        let nk = min(BK, last + 1u - kb);
        let vb0 = kb * kv4 + kvh * hd4 + dcol;
        for (var j = 0u; f16 && j < nk; j++) {
            let w4 = j / 4u;
            let wj = j % 4u;
            let wq = vec4<f32>(pw[qi * 16u + w4][wj], pw[(qi + 1u) * 16u + w4][wj],
                               pw[(qi + 2u) * 16u + w4][wj], pw[(qi + 3u) * 16u + w4][wj]);
            let vw = (vb0 + j * kv4) >> 1u;
            if (nch > 0u) {
                let w = v_cache[vw];
                o0 = add_weighted(o0, wq, kv_half4(w.xy));
                o1 = add_weighted(o1, wq, kv_half4(w.zw));
            }
            if (nch > 2u) {
                let w = v_cache[vw + 16u];
                o2 = add_weighted(o2, wq, kv_half4(w.xy));
                o3 = add_weighted(o3, wq, kv_half4(w.zw));
            }
        }
        for (var j = 0u; !f16 && j < nk; j++) {
            let w4 = j / 4u;
            let wj = j % 4u;
            let wq = vec4<f32>(pw[qi * 16u + w4][wj], pw[(qi + 1u) * 16u + w4][wj],
                               pw[(qi + 2u) * 16u + w4][wj], pw[(qi + 3u) * 16u + w4][wj]);
            let vb = vb0 + j * kv4;
            if (nch > 0u) {
                o0 = add_weighted(o0, wq, value(vb));
            }
            if (nch > 1u) {
                o1 = add_weighted(o1, wq, value(vb + 16u));
            }
            if (nch > 2u) {
                o2 = add_weighted(o2, wq, value(vb + 32u));
            }
            if (nch > 3u) {
                o3 = add_weighted(o3, wq, value(vb + 48u));
            }
        }
        workgroupBarrier();
        // (Read before the next tile's maxima overwrite `red`, after its first barrier.)
        l = l * corr + ((red[r4] + red[r4 + 1u]) + (red[r4 + 2u] + red[r4 + 3u]));
    }
    // The rows' sums to the value invocations.
    if (part == 0u) {
        var sum = l;
        if (p.sinks != 0u) {
            sum += exp(sinks[h] - m);
        }
        corr_s[row] = sum;
    }
    workgroupBarrier();
    let col = h * hd4 + dcol;
    store(qi, nq, t0, q4, col, nch, o0.a, o1.a, o2.a, o3.a, corr_s[qi]);
    store(qi + 1u, nq, t0, q4, col, nch, o0.b, o1.b, o2.b, o3.b, corr_s[qi + 1u]);
    store(qi + 2u, nq, t0, q4, col, nch, o0.c, o1.c, o2.c, o3.c, corr_s[qi + 2u]);
    store(qi + 3u, nq, t0, q4, col, nch, o0.d, o1.d, o2.d, o3.d, corr_s[qi + 3u]);
}

// Writes query i's value columns c0, c1, ... (the first nch; vec4s `col`, `col` + 16, ...
// of its row of `out`, or with an f16 cache `col`, `col` + 1, `col` + 32, `col` + 33)
// divided by its sum.
fn store(i: u32, nq: u32, t0: u32, q4: u32, col: u32, nch: u32, c0: vec4<f32>,
         c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>, sum: f32) {
    if (i >= nq) {
        return;
    }
    let base = (t0 + i) * q4 + col;
    let inv = 1.0 / sum;
    // Columns col + 16 k, or with an f16 cache col, col + 1, col + 32, col + 33.
    let f16 = KVDT == 1u;
    if (nch > 0u) {
        out[base] = c0 * inv;
    }
    if (nch > 1u) {
        out[base + select(16u, 1u, f16)] = c1 * inv;
    }
    if (nch > 2u) {
        out[base + 32u] = c2 * inv;
    }
    if (nch > 3u) {
        out[base + select(48u, 33u, f16)] = c3 * inv;
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
