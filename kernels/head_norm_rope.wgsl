// Per-head RMSNorm, then RoPE in the NeoX "rotate_half" form over the first rotary_dim
// dims of each head, in one pass (Qwen3's q_norm / k_norm + rotary embedding), for the
// query heads and the key heads of a layer in one dispatch; the key heads' values are
// copied into the value cache by the same dispatch, so a layer's keys and values reach
// the KV cache here.
//
// Token t (at position pos0 + t) reads its heads from rows of x_stride floats, so that
// they may sit inside the rows of a fused q/k/v projection:
// - query head h (h < q_heads) at x[t * x_stride + q_offset + h * q_head_stride ..]
//   (q_head_stride = head_dim, or 2 head_dim where q_proj yields [q | gate] per head), normed
//   with wq, written to outq[(t * q_heads + h) * head_dim ..];
// - key head h (the workgroups after the query heads) at x[t * x_stride + k_offset +
//   h * head_dim ..], normed with wk, written to outk[k_out + (t * k_heads + h) *
//   head_dim ..], and with copy_v its values v_src[t * x_stride + v_offset + h * head_dim
//   ..] to v_dst at the same index (k_out places them in the KV cache).
// `rope` holds the cos table [positions, rotary_dim / 2] and at sin_offset the sin table.
// Dims past rotary_dim are normed, not rotated. One workgroup per (head, token);
// head_dim <= 256. outk and v_dst hold KV cache elements (include/kv_*.wgsl): f32, or with
// KVDT = 1 f16 pairs (head_dim and k_out even), whose words a key head writes after a
// barrier, once all its dims are computed. The arithmetic is rmsnorm.wgsl's followed by
// the rotation: y = w * (x * inverseSqrt(mean(x^2) + eps)), y1 c - y2 s, y2 c + y1 s;
// with `norm` 0 (attention without q/k norms, gpt-oss) y = x (wq and wk are not read).
// With `whole` 1 the norm spans all of a token's query (key) heads, one RMS over
// q_heads (k_heads) x head_dim values, with weights of that width (OLMoE's q_norm and
// k_norm over the whole projection); with `clip` > 0 the normed q and k and the copied v
// are clamped to [-clip, clip] before the rotation (OLMoE's clip_qkv).
// With `ring` > 0 (a sliding-window layer's ring of 2 ring floats, engine::state::KvRing)
// every key and value element is also written at its mirror, `ring` floats after or
// before it (whichever lies in the ring).
struct Params {
    n_tokens: u32,
    head_dim: u32,
    rotary_half: u32,
    pos0: u32,
    eps: f32,
    x_stride: u32, // floats per token in x and v_src
    q_heads: u32,
    q_offset: u32,
    k_heads: u32,
    k_offset: u32,
    k_out: u32,
    copy_v: u32,
    v_offset: u32,
    sin_offset: u32,
    q_head_stride: u32, // floats from one query head to the next in x
    norm: u32, // 1: RMSNorm each head before the rotation
    ring: u32, // floats of half a ring-buffer KV cache (0: none): each row written twice
    whole: u32, // 1: one RMSNorm over all the token's heads of a kind (OLMoE), weights per head
    clip: f32, // > 0: q, k (normed) and v clamped to [-clip, clip] before RoPE (clip_qkv)
    pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wq: array<f32>;
@group(0) @binding(3) var<storage, read> wk: array<f32>;
@group(0) @binding(4) var<storage, read> rope: array<f32>;
@group(0) @binding(5) var<storage, read_write> outq: array<f32>;
@group(0) @binding(6) var<storage, read_write> outk: array<u32>; // KV cache elements
@group(0) @binding(7) var<storage, read> v_src: array<f32>;
@group(0) @binding(8) var<storage, read_write> v_dst: array<u32>; // KV cache elements

const WG: u32 = 64u;
var<workgroup> xs: array<f32, 256>;
var<workgroup> ws: array<f32, 256>;
var<workgroup> cs: array<f32, 128>;
var<workgroup> ss: array<f32, 128>;
var<workgroup> red: array<f32, 64>;
var<workgroup> ys: array<f32, 256>; // a key head's results, for f16 pairs

// A decode step waits on this kernel, so everything it reads (the head, its norm weights,
// the cos / sin of its position and, for a key head, its values) is loaded in one round,
// before the sum of squares, which takes two barriers (8 partial sums of 8).
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.y;
    let is_q = wid.x < p.q_heads;
    let h = select(wid.x - p.q_heads, wid.x, is_q);
    let hd = p.head_dim;
    let xb = t * p.x_stride + select(p.k_offset + h * hd, p.q_offset + h * p.q_head_stride, is_q);
    let half = p.rotary_half;
    let pos = (p.pos0 + t) * half;
    let qb = (t * p.q_heads + h) * hd;
    let kb = p.k_out + (t * p.k_heads + h) * hd;
    let copy_v = !is_q && p.copy_v != 0u;
    var s = 0.0;
    for (var i = lid; i < hd; i += WG) {
        let v = x[xb + i];
        xs[i] = v;
        ws[i] = weight(is_q, select(i, h * hd + i, p.whole != 0u));
        if (i < half) {
            cs[i] = rope[pos + i];
            ss[i] = rope[p.sin_offset + pos + i];
        }
        if (copy_v && KVDT == 0u) {
            let v = bitcast<u32>(clip(v_src[t * p.x_stride + p.v_offset + h * hd + i]));
            v_dst[kb + i] = v;
            if (p.ring != 0u) {
                v_dst[mirror(kb) + i] = v;
            }
        }
        s += v * v;
    }
    // The whole projection's sum of squares instead (every head of this kind).
    let heads = select(p.k_heads, p.q_heads, is_q);
    if (p.whole != 0u) {
        s = 0.0;
        let stride = select(hd, p.q_head_stride, is_q);
        let base = t * p.x_stride + select(p.k_offset, p.q_offset, is_q);
        for (var j = lid; j < heads * hd; j += WG) {
            let v = x[base + (j / hd) * stride + j % hd];
            s += v * v;
        }
    }
    red[lid] = s;
    workgroupBarrier();
    if (lid < 8u) {
        let r = 8u * lid;
        red[r] = ((red[r] + red[r + 1u]) + (red[r + 2u] + red[r + 3u]))
            + ((red[r + 4u] + red[r + 5u]) + (red[r + 6u] + red[r + 7u]));
    }
    workgroupBarrier();
    let total = ((red[0] + red[8]) + (red[16] + red[24])) + ((red[32] + red[40]) + (red[48] + red[56]));
    let width = select(hd, heads * hd, p.whole != 0u);
    let inv = select(1.0, inverseSqrt(total / f32(width) + p.eps), p.norm != 0u);
    for (var i = lid; i < hd; i += WG) {
        let y = clip(ws[i] * (xs[i] * inv));
        if (i >= 2u * half) {
            store(is_q, qb, kb, i, y);
        } else if (i < half) {
            // Dim i and its partner i + half.
            let j = i + half;
            let y2 = clip(ws[j] * (xs[j] * inv));
            let c = cs[i];
            let sn = ss[i];
            store(is_q, qb, kb, i, y * c - y2 * sn);
            store(is_q, qb, kb, j, y2 * c + y * sn);
        }
    }
    if (!is_q && KVDT != 0u) {
        // f16: the key head's pairs from ys, and the values' pairs from v_src.
        workgroupBarrier();
        let vb = t * p.x_stride + p.v_offset + h * hd;
        for (var i = lid; i < hd / 2u; i += WG) {
            let kw = kv_pack(ys[2u * i], ys[2u * i + 1u]);
            outk[kb / 2u + i] = kw;
            if (p.ring != 0u) {
                outk[mirror(kb) / 2u + i] = kw;
            }
            if (copy_v) {
                let vw = kv_pack(clip(v_src[vb + 2u * i]), clip(v_src[vb + 2u * i + 1u]));
                v_dst[kb / 2u + i] = vw;
                if (p.ring != 0u) {
                    v_dst[mirror(kb) / 2u + i] = vw;
                }
            }
        }
    }
}

// The mirror of KV float offset kb in a ring of 2 p.ring floats.
fn mirror(kb: u32) -> u32 {
    return select(kb + p.ring, kb - p.ring, kb >= p.ring);
}

// v clamped to [-clip, clip] where `clip` is set.
fn clip(v: f32) -> f32 {
    if (p.clip > 0.0) {
        return clamp(v, -p.clip, p.clip);
    }
    return v;
}

// Norm weight i of a query (wq) or key (wk) head.
fn weight(is_q: bool, i: u32) -> f32 {
    if (p.norm == 0u) {
        return 1.0;
    }
    if (is_q) {
        return wq[i];
    }
    return wk[i];
}

// Writes dim i of the head: to outq at qb for a query head, else to outk at kb (f32
// elements) or to ys (f16 pairs, written by the caller).
fn store(is_q: bool, qb: u32, kb: u32, i: u32, v: f32) {
    if (is_q) {
        outq[qb + i] = v;
    } else if (KVDT == 0u) {
        outk[kb + i] = bitcast<u32>(v);
        if (p.ring != 0u) {
            outk[mirror(kb) + i] = bitcast<u32>(v);
        }
    } else {
        ys[i] = v;
    }
}
