// Multi-head latent attention (DeepSeek-V3, Kimi-K2): the per-token work between the
// projections and the attention, one workgroup per (part, token). Token t sits at
// position pos0 + t.
// - part h < heads (query head h): rotates the RoPE dims of the head,
//   q[t * heads * (nope + rope) + h * (nope + rope) + nope ..][0..rope], into
//   qr[(t * heads + h) * (rank + rope) + rank ..]. (The head's first `rank` dims of qr,
//   its nope part absorbed into the latent space, come from a batched mat-vec.)
// - part heads: the token's latent. RMSNorm (weight w, eps) of kv_a[t * (rank + rope) ..]
//   [0..rank], then the shared RoPE key kv_a[..][rank..rank + rope] rotated, both into
//   row pos0 + t of the latent cache, [positions, rank + rope] elements of
//   include/kv_*.wgsl (f32, or with KVDT = 1 f16 pairs; rank + rope even).
// RoPE pairs (2i, 2i + 1) with `interleave` (DeepSeek's layout), else (i, i + rope / 2);
// `rope_tab` holds the cos table [positions, rope / 2] and at sin_offset the sin table. The
// norm's arithmetic is rmsnorm.wgsl's: y = w * (x * inverseSqrt(mean(x^2) + eps)).
// rank + rope <= 1024.
struct Params {
    n_tokens: u32,
    heads: u32,
    rank: u32, // r, kv_lora_rank: the latent's width
    rope: u32, // dr, qk_rope_head_dim (even)
    nope: u32, // dn, qk_nope_head_dim
    pos0: u32,
    eps: f32,
    sin_offset: u32,
    interleave: u32, // 1: pairs (2i, 2i + 1)
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kv_a: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> rope_tab: array<f32>;
@group(0) @binding(5) var<storage, read_write> qr: array<f32>;
@group(0) @binding(6) var<storage, read_write> cache: array<u32>; // KV cache elements

const WG: u32 = 64u;
var<workgroup> ys: array<f32, 1024>;
var<workgroup> red: array<f32, 64>;

// The indices of RoPE pair i of a `rope`-wide vector.
fn pair(i: u32) -> vec2<u32> {
    if (p.interleave != 0u) {
        return vec2<u32>(2u * i, 2u * i + 1u);
    }
    return vec2<u32>(i, i + p.rope / 2u);
}

// (a, b) rotated by pair i's angle at position pos.
fn rotate(a: f32, b: f32, i: u32, pos: u32) -> vec2<f32> {
    let half = p.rope / 2u;
    let c = rope_tab[pos * half + i];
    let s = rope_tab[p.sin_offset + pos * half + i];
    return vec2<f32>(a * c - b * s, b * c + a * s);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let part = wid.x;
    let t = wid.y;
    let pos = p.pos0 + t;
    let half = p.rope / 2u;
    let width = p.rank + p.rope;
    if (part < p.heads) {
        let dq = p.nope + p.rope;
        let src = (t * p.heads + part) * dq + p.nope;
        let dst = (t * p.heads + part) * width + p.rank;
        for (var i = lid; i < half; i += WG) {
            let ix = pair(i);
            let r = rotate(q[src + ix.x], q[src + ix.y], i, pos);
            qr[dst + ix.x] = r.x;
            qr[dst + ix.y] = r.y;
        }
        return;
    }
    let src = t * width;
    var ss = 0.0;
    for (var i = lid; i < p.rank; i += WG) {
        let v = kv_a[src + i];
        ss += v * v;
    }
    red[lid] = ss;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    let inv = inverseSqrt(red[0] / f32(p.rank) + p.eps);
    for (var i = lid; i < p.rank; i += WG) {
        ys[i] = w[i] * (kv_a[src + i] * inv);
    }
    for (var i = lid; i < half; i += WG) {
        let ix = pair(i);
        let r = rotate(kv_a[src + p.rank + ix.x], kv_a[src + p.rank + ix.y], i, pos);
        ys[p.rank + ix.x] = r.x;
        ys[p.rank + ix.y] = r.y;
    }
    workgroupBarrier();
    let row = pos * width;
    if (KVDT == 1u) {
        for (var i = lid; 2u * i < width; i += WG) {
            cache[(row >> 1u) + i] = kv_pack(ys[2u * i], ys[2u * i + 1u]);
        }
    } else {
        for (var i = lid; i < width; i += WG) {
            cache[row + i] = bitcast<u32>(ys[i]);
        }
    }
}
