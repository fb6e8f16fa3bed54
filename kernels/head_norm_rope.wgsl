// Per-head RMSNorm, then RoPE in the NeoX "rotate_half" form over the first rotary_dim
// dims of each head, in one pass (Qwen3's q_norm / k_norm + rotary embedding). Optionally
// also copies v (the values of the same heads) into the value cache, so a layer's keys
// and values reach the KV cache in this one dispatch.
// Head h of token t is read at x[t * x_stride + x_offset + h * head_dim ..] (and its values
// at v_src[t * x_stride + v_offset + h * head_dim ..]), so the heads may sit inside the
// rows of a fused q/k/v projection; token t is at position pos0 + t; cos/sin tables are
// [positions, rotary_dim / 2]. Writes out[out_offset + (t*n_heads + h)*head_dim + i] (and
// v_dst at the same index when copy_v is 1), so keys and values can be written straight
// into the KV cache. Dims past rotary_dim are normed, not rotated. One workgroup
// per (head, token); head_dim <= 256. The arithmetic is rmsnorm.wgsl's followed by the
// rotation: y = w * (x * inverseSqrt(mean(x^2) + eps)), y1 c - y2 s, y2 c + y1 s.
struct Params {
    n_tokens: u32,
    n_heads: u32,
    head_dim: u32,
    rotary_half: u32,
    pos0: u32,
    out_offset: u32,
    eps: f32,
    copy_v: u32,
    x_stride: u32, // floats per token in x and v_src
    x_offset: u32,
    v_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> cos_t: array<f32>;
@group(0) @binding(4) var<storage, read> sin_t: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> v_src: array<f32>;
@group(0) @binding(7) var<storage, read_write> v_dst: array<f32>;

const WG: u32 = 64u;
var<workgroup> xs: array<f32, 256>;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    let hd = p.head_dim;
    let base = (t * p.n_heads + h) * hd;
    let xb = t * p.x_stride + p.x_offset + h * hd;
    var s = 0.0;
    for (var i = lid; i < hd; i += WG) {
        let v = x[xb + i];
        xs[i] = v;
        s += v * v;
    }
    red[lid] = s;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    let inv = inverseSqrt(red[0] / f32(hd) + p.eps);
    let half = p.rotary_half;
    let ob = p.out_offset + base;
    for (var i = lid; i < hd; i += WG) {
        let y = w[i] * (xs[i] * inv);
        if (i >= 2u * half) {
            out[ob + i] = y;
        } else if (i < half) {
            // Dim i and its partner i + half.
            let j = i + half;
            let y2 = w[j] * (xs[j] * inv);
            let c = cos_t[(p.pos0 + t) * half + i];
            let sn = sin_t[(p.pos0 + t) * half + i];
            out[ob + i] = y * c - y2 * sn;
            out[ob + j] = y2 * c + y * sn;
        }
    }
    if (p.copy_v != 0u) {
        for (var i = lid; i < hd; i += WG) {
            v_dst[ob + i] = v_src[t * p.x_stride + p.v_offset + h * hd + i];
        }
    }
}
