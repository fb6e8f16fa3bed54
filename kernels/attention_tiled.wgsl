// Causal attention over the KV cache for prefill, 8 queries per workgroup.
// q: [n_tokens, n_heads, head_dim]; k_cache, v_cache: [positions, n_kv_heads, head_dim].
// Query t sits at position pos0 + t and sees keys 0..=pos0 + t. Workgroup (h, b) computes
// head h for queries 8b .. 8b + 7: keys in blocks of 64 (one per invocation) with an online
// (running max) softmax in f32 per query, as attention.wgsl does for one query, so that
// each key and value read and each reduction serve 8 queries instead of one.
// head_dim <= 256 and a multiple of 4.
struct Params {
    n_tokens: u32,
    pos0: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const B: u32 = 64u; // keys per block: one per invocation
const BQ: u32 = 8u; // queries per workgroup
const NEG: f32 = -3.0e38;
var<workgroup> qs: array<vec4<f32>, 512>; // [query][head_dim / 4]
var<workgroup> pw: array<array<f32, 8>, 64>; // [key][query] softmax weights of the block
var<workgroup> red: array<array<f32, 64>, 8>; // [query][invocation]

// Tree reduction over the invocations of red[q][..] for every query: max, or sum.
fn reduce(lid: u32, is_max: bool) {
    workgroupBarrier();
    for (var stride = B / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            for (var i = 0u; i < BQ; i++) {
                let a = red[i][lid];
                let b = red[i][lid + stride];
                red[i][lid] = select(a + b, max(a, b), is_max);
            }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t0 = wid.y * BQ;
    let nq = min(BQ, p.n_tokens - t0);
    let hd = p.head_dim;
    let hd4 = hd / 4u;
    let kvh = h / (p.n_heads / p.n_kv_heads);
    let kv_stride = p.n_kv_heads * hd;
    let q_stride = p.n_heads * hd;
    for (var i = lid; i < BQ * hd4; i += B) {
        let qi = i / hd4;
        let qb = min(t0 + qi, p.n_tokens - 1u) * q_stride + h * hd + 4u * (i % hd4);
        qs[i] = vec4<f32>(q[qb], q[qb + 1u], q[qb + 2u], q[qb + 3u]);
    }
    workgroupBarrier();
    // The last key any of the block's queries sees.
    let last = p.pos0 + t0 + nq - 1u;
    var m: array<f32, 8>;
    var l: array<f32, 8>;
    var acc: array<array<f32, 4>, 8>; // [query][dimension lid + 64 c]
    for (var i = 0u; i < BQ; i++) {
        m[i] = NEG;
        l[i] = 0.0;
        for (var c = 0u; c < 4u; c++) {
            acc[i][c] = 0.0;
        }
    }
    for (var kb = 0u; kb <= last; kb += B) {
        let j = kb + lid;
        var s: array<f32, 8>;
        for (var i = 0u; i < BQ; i++) {
            s[i] = NEG;
        }
        if (j <= last) {
            let kbase = j * kv_stride + kvh * hd;
            var d0 = vec4<f32>(0.0); // queries 0..3
            var d1 = vec4<f32>(0.0); // queries 4..7
            for (var d4 = 0u; d4 < hd4; d4++) {
                let kd = 4u * d4;
                let kv = vec4<f32>(k_cache[kbase + kd], k_cache[kbase + kd + 1u],
                                   k_cache[kbase + kd + 2u], k_cache[kbase + kd + 3u]);
                d0 += vec4<f32>(dot(qs[d4], kv), dot(qs[hd4 + d4], kv),
                                dot(qs[2u * hd4 + d4], kv), dot(qs[3u * hd4 + d4], kv));
                d1 += vec4<f32>(dot(qs[4u * hd4 + d4], kv), dot(qs[5u * hd4 + d4], kv),
                                dot(qs[6u * hd4 + d4], kv), dot(qs[7u * hd4 + d4], kv));
            }
            for (var i = 0u; i < BQ; i++) {
                let dot_i = select(d1[i & 3u], d0[i & 3u], i < 4u);
                // Causal: query i sees keys up to pos0 + t0 + i.
                s[i] = select(NEG, dot_i * p.scale, i < nq && j <= p.pos0 + t0 + i);
            }
        }
        for (var i = 0u; i < BQ; i++) {
            red[i][lid] = s[i];
        }
        reduce(lid, true);
        var m_new: array<f32, 8>;
        for (var i = 0u; i < BQ; i++) {
            m_new[i] = max(m[i], red[i][0]);
        }
        workgroupBarrier();
        for (var i = 0u; i < BQ; i++) {
            let pj = select(0.0, exp(s[i] - m_new[i]), s[i] > NEG);
            pw[lid][i] = pj;
            red[i][lid] = pj;
        }
        reduce(lid, false);
        var corr: array<f32, 8>;
        for (var i = 0u; i < BQ; i++) {
            corr[i] = exp(m[i] - m_new[i]);
            l[i] = l[i] * corr[i] + red[i][0];
            m[i] = m_new[i];
        }
        let nb = min(B, last + 1u - kb);
        for (var c = 0u; c < 4u; c++) {
            let d = lid + c * B;
            if (d < hd) {
                var a0 = vec4<f32>(acc[0][c], acc[1][c], acc[2][c], acc[3][c])
                    * vec4<f32>(corr[0], corr[1], corr[2], corr[3]);
                var a1 = vec4<f32>(acc[4][c], acc[5][c], acc[6][c], acc[7][c])
                    * vec4<f32>(corr[4], corr[5], corr[6], corr[7]);
                let vb = kb * kv_stride + kvh * hd + d;
                for (var jj = 0u; jj < nb; jj++) {
                    let v = v_cache[vb + jj * kv_stride];
                    let pr = pw[jj];
                    a0 += vec4<f32>(pr[0], pr[1], pr[2], pr[3]) * v;
                    a1 += vec4<f32>(pr[4], pr[5], pr[6], pr[7]) * v;
                }
                for (var i = 0u; i < 4u; i++) {
                    acc[i][c] = a0[i];
                    acc[i + 4u][c] = a1[i];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < nq; i++) {
        for (var c = 0u; c < 4u; c++) {
            let d = lid + c * B;
            if (d < hd) {
                out[(t0 + i) * q_stride + h * hd + d] = acc[i][c] / l[i];
            }
        }
    }
}
