// Causal attention over the KV cache, for prefill (n_tokens > 1) and decode (n_tokens = 1).
// q: [n_tokens, n_heads, head_dim]; k_cache, v_cache: [positions, n_kv_heads, head_dim].
// Query t sits at position pos0 + t and sees keys 0..=pos0 + t. One workgroup per
// (head, query); keys in blocks of 64 with an online (running max) softmax in f32.
// head_dim <= 256. With `window` > 0 (a sliding-window layer) query t sees only the last
// `window` keys up to its own; with `sinks` 1 (gpt-oss) head h's sink logit sinks[h]
// joins the softmax's denominator (as exp(sinks[h] - m) against the running max m; an
// exp that overflows there makes the output 0, the limit of a sink that dominates).
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
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> sinks: array<f32>;

const B: u32 = 64u;
const NEG: f32 = -3.0e38;
var<workgroup> qs: array<f32, 256>;
var<workgroup> pw: array<f32, 64>;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    let hd = p.head_dim;
    let kvh = h / (p.n_heads / p.n_kv_heads);
    let kv_stride = p.n_kv_heads * hd;
    let qb = (t * p.n_heads + h) * hd;
    for (var d = lid; d < hd; d += B) {
        qs[d] = q[qb + d];
    }
    workgroupBarrier();
    let n_keys = p.pos0 + t + 1u;
    var m = NEG;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    let first = select(0u, n_keys - p.window, p.window > 0u && n_keys > p.window);
    for (var kb = first; kb < n_keys; kb += B) {
        let j = kb + lid;
        var s = NEG;
        if (j < n_keys) {
            let kbase = j * kv_stride + kvh * hd;
            // Four independent partial sums, so that four loads are in flight at once
            // (head_dim is even: at most a pair is left over).
            var d4 = vec4<f32>(0.0);
            var d = 0u;
            for (; d + 4u <= hd; d += 4u) {
                d4 += vec4<f32>(qs[d], qs[d + 1u], qs[d + 2u], qs[d + 3u])
                    * vec4<f32>(k_cache[kbase + d], k_cache[kbase + d + 1u],
                                k_cache[kbase + d + 2u], k_cache[kbase + d + 3u]);
            }
            for (; d < hd; d++) {
                d4.x += qs[d] * k_cache[kbase + d];
            }
            let dot = (d4.x + d4.y) + (d4.z + d4.w);
            s = dot * p.scale;
        }
        red[lid] = s;
        workgroupBarrier();
        for (var stride = 32u; stride > 0u; stride >>= 1u) {
            if (lid < stride) {
                red[lid] = max(red[lid], red[lid + stride]);
            }
            workgroupBarrier();
        }
        let m_new = max(m, red[0]);
        workgroupBarrier();
        let pj = select(0.0, exp(s - m_new), j < n_keys);
        pw[lid] = pj;
        red[lid] = pj;
        workgroupBarrier();
        for (var stride = 32u; stride > 0u; stride >>= 1u) {
            if (lid < stride) {
                red[lid] += red[lid + stride];
            }
            workgroupBarrier();
        }
        let corr = exp(m - m_new);
        l = l * corr + red[0];
        let nb = min(B, n_keys - kb);
        for (var c = 0u; c < 4u; c++) {
            let d = lid + c * B;
            if (d < hd) {
                // Four keys per step with independent sums: four loads in flight.
                var a4 = vec4<f32>(acc[c] * corr, 0.0, 0.0, 0.0);
                let vb = kb * kv_stride + kvh * hd + d;
                var jj = 0u;
                for (; jj + 4u <= nb; jj += 4u) {
                    a4 += vec4<f32>(pw[jj], pw[jj + 1u], pw[jj + 2u], pw[jj + 3u])
                        * vec4<f32>(v_cache[vb + jj * kv_stride],
                                    v_cache[vb + (jj + 1u) * kv_stride],
                                    v_cache[vb + (jj + 2u) * kv_stride],
                                    v_cache[vb + (jj + 3u) * kv_stride]);
                }
                for (; jj < nb; jj++) {
                    a4.x += pw[jj] * v_cache[vb + jj * kv_stride];
                }
                let a = (a4.x + a4.y) + (a4.z + a4.w);
                acc[c] = a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    if (p.sinks != 0u) {
        l += exp(sinks[h] - m);
    }
    for (var c = 0u; c < 4u; c++) {
        let d = lid + c * B;
        if (d < hd) {
            out[qb + d] = acc[c] / l;
        }
    }
}
