// Multi-head latent attention over the latent cache (DeepSeek-V3, Kimi-K2), decode and
// prefill: one workgroup per (head, query token). Every head attends over the same cache
// rows, [positions, rank + rope] elements of include/kv_*.wgsl (f32, or with KVDT = 1 f16):
// a row is the token's normalized latent (rank values) and its rotated RoPE key (rope
// values). Query t (at position pos0 + t) of head h is qr[(t * heads + h) * (rank + rope)
// ..]: its nope part absorbed into the latent space (rank values), then its rotated RoPE
// part. Its score against key u <= pos0 + t is scale * dot(query, cache row u); its output,
// the softmax-weighted sum of the keys' latents (the first rank values of each row),
// goes to out[(t * heads + h) * rank ..] (the batched mat-vec after it maps the latent to
// the head's values).
//
// With n_splits > 0 (a decode step: one query) the keys are split into ranges of `chunk`:
// workgroup (h, s) takes keys [s * chunk, min((s + 1) * chunk, pos0 + 1)) and writes its
// partial softmax state to part[(h * n_splits + s) * (rank + 2) ..] (m, l, then the rank
// unnormalized sums) for attention_merge.wgsl, as attention_split.wgsl does: one workgroup
// per head walking every key kept the GPU idle (176 us per layer for ~100 keys and 128
// heads on an H100).
//
// A step takes 16 keys, each score summed by 4 invocations over every 4th quad of the row;
// the output's quads are spread over the invocations (c, c + 64, ...). rank and rope are
// multiples of 4, rank + rope <= 1024 (rank <= 1024 - 4).
struct Params {
    n_tokens: u32,
    heads: u32,
    rank: u32,
    rope: u32,
    pos0: u32,
    scale: f32,
    chunk: u32, // keys per range, with n_splits > 0
    n_splits: u32, // 0: every key, normalized outputs; else ranges, partial states
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qr: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> cache: array<vec4<u32>>; // include/kv_*.wgsl
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;

const WG: u32 = 64u;
const KB: u32 = 16u;
const NEG: f32 = -3.0e38;
var<workgroup> qs: array<vec4<f32>, 256>;
var<workgroup> dots: array<f32, 64>;
var<workgroup> wts: array<f32, 16>;
var<workgroup> stat: array<f32, 2>; // the step's maximum, then its weights' sum

// Quad i (4 elements) of the cache, as f32.
fn quad(i: u32) -> vec4<f32> {
    return kv_quad(cache[kv_word(i)], i);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let split = p.n_splits > 0u;
    let t = select(wid.y, 0u, split);
    let w4 = (p.rank + p.rope) / 4u;
    let r4 = p.rank / 4u;
    let g = t * p.heads + h;
    for (var d = lid; d < w4; d += WG) {
        qs[d] = qr[g * w4 + d];
    }
    workgroupBarrier();
    let n_keys = p.pos0 + t + 1u;
    let k0 = select(0u, wid.y * p.chunk, split);
    let k1 = select(n_keys, min(k0 + p.chunk, n_keys), split);
    let kj = lid >> 2u;
    let quarter = lid & 3u;
    var m = NEG;
    var l = 0.0;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kb = k0; kb < k1; kb += KB) {
        let nk = min(KB, k1 - kb);
        var d4 = vec4<f32>(0.0);
        if (kj < nk) {
            // Two quads per iteration, both loads in flight.
            let row = (kb + kj) * w4;
            var e4 = vec4<f32>(0.0);
            var i = quarter;
            for (; i + 4u < w4; i += 8u) {
                d4 += qs[i] * quad(row + i);
                e4 += qs[i + 4u] * quad(row + i + 4u);
            }
            if (i < w4) {
                d4 += qs[i] * quad(row + i);
            }
            d4 += e4;
        }
        dots[lid] = (d4.x + d4.y) + (d4.z + d4.w);
        workgroupBarrier();
        if (lid == 0u) {
            var mx = m;
            for (var k = 0u; k < nk; k++) {
                let s = ((dots[4u * k] + dots[4u * k + 1u]) + (dots[4u * k + 2u] + dots[4u * k + 3u]))
                    * p.scale;
                wts[k] = s;
                mx = max(mx, s);
            }
            var sum = 0.0;
            for (var k = 0u; k < nk; k++) {
                let e = exp(wts[k] - mx);
                wts[k] = e;
                sum += e;
            }
            stat[0] = mx;
            stat[1] = sum;
        }
        workgroupBarrier();
        let mx = stat[0];
        let corr = exp(m - mx);
        l = l * corr + stat[1];
        m = mx;
        acc0 *= corr;
        acc1 *= corr;
        acc2 *= corr;
        acc3 *= corr;
        for (var k = 0u; k < nk; k++) {
            let wk = wts[k];
            let row = (kb + k) * w4;
            if (lid < r4) {
                acc0 += wk * quad(row + lid);
            }
            if (lid + WG < r4) {
                acc1 += wk * quad(row + lid + WG);
            }
            if (lid + 2u * WG < r4) {
                acc2 += wk * quad(row + lid + 2u * WG);
            }
            if (lid + 3u * WG < r4) {
                acc3 += wk * quad(row + lid + 3u * WG);
            }
        }
        workgroupBarrier();
    }
    if (split) {
        let base = (h * p.n_splits + wid.y) * (p.rank + 2u);
        if (lid == 0u) {
            part[base] = m;
            part[base + 1u] = l;
        }
        let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
        for (var j = 0u; j < 4u; j++) {
            let c = lid + j * WG;
            if (c < r4) {
                let o = base + 2u + 4u * c;
                part[o] = accs[j].x;
                part[o + 1u] = accs[j].y;
                part[o + 2u] = accs[j].z;
                part[o + 3u] = accs[j].w;
            }
        }
        return;
    }
    let inv = 1.0 / l;
    if (lid < r4) {
        out[g * r4 + lid] = acc0 * inv;
    }
    if (lid + WG < r4) {
        out[g * r4 + lid + WG] = acc1 * inv;
    }
    if (lid + 2u * WG < r4) {
        out[g * r4 + lid + 2u * WG] = acc2 * inv;
    }
    if (lid + 3u * WG < r4) {
        out[g * r4 + lid + 3u * WG] = acc3 * inv;
    }
}
