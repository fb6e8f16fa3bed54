// The weighted expert combine + residual of one decode token (as kernels/moe_combine.wgsl:
// out[j] = resid[j] + sum_k o[route[k] * hidden + j], the choices added in order), which
// also leaves the next RMSNorm's input for the quantized mat-vecs that read it, so that
// the norm needs no dispatch of its own: the row g * out (g the norm's weight), not yet
// divided by its RMS, into yq in the layout the mat-vecs read (include/interleave.wgsl):
// with flags bit 0 the 8+8-bit layout, else the interleaved f32 one (as u32 bits); and
// after the row each block's sum of squares of out (word 18 nb + b, or n + b). The
// mat-vecs read that row with LINEAR_X_NORM (kernels/qmatvec.wgsl): they add up the
// blocks' sums of squares with their dot products and scale their sums by
// 1 / sqrt(mean + eps): the normalized row's product, since the row is scaled by one
// number (and the 8+8-bit blocks are scale-invariant: a block of s v is the block of v
// with s times its scale t). hidden a multiple of 32; one value per invocation, 256 (8
// blocks) per workgroup.
struct Params {
    hidden: u32,
    top_k: u32,
    flags: u32, // bit 0: yq in the 8+8-bit layout (else interleaved f32)
    pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> resid: array<f32>;
@group(0) @binding(2) var<storage, read> o: array<f32>;
@group(0) @binding(3) var<storage, read> route: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> g: array<f32>;
@group(0) @binding(6) var<storage, read_write> yq: array<u32>;

const WG: u32 = 256u;
var<workgroup> vals: array<f32, 256>; // g * out
var<workgroup> sqs: array<f32, 256>; // out^2
var<workgroup> octet_sq: array<f32, 32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = p.hidden;
    let j = wid.x * WG + lid;
    let inside = j < n;
    let jc = min(j, n - 1u);
    let v = resid[jc] + routed_sum(0u, p.top_k, n, jc);
    if (inside) {
        out[j] = v;
    }
    let gv = g[jc] * v;
    let q8 = (p.flags & 1u) != 0u;
    if (inside && !q8) {
        yq[interleaved(j, n)] = bitcast<u32>(gv);
    }
    vals[lid] = select(0.0, gv, inside);
    sqs[lid] = select(0.0, v * v, inside);
    workgroupBarrier();
    // Invocations 0..31 take the workgroup's 32 octets (the others pass through the
    // reductions with zeros and write nothing: t past the row).
    let nb = n / 32u;
    let mine = lid < 32u;
    let t = select(4u * nb, wid.x * 32u + lid, mine);
    let i = 8u * (lid & 31u);
    let qa = vec4<f32>(sqs[i], sqs[i + 1u], sqs[i + 2u], sqs[i + 3u]);
    let qb = vec4<f32>(sqs[i + 4u], sqs[i + 5u], sqs[i + 6u], sqs[i + 7u]);
    let sq = ((qa.x + qa.y) + (qa.z + qa.w)) + ((qb.x + qb.y) + (qb.z + qb.w));
    if (mine) {
        octet_sq[lid] = sq;
    }
    if (q8) {
        let va = vec4<f32>(vals[i], vals[i + 1u], vals[i + 2u], vals[i + 3u]);
        let vb = vec4<f32>(vals[i + 4u], vals[i + 5u], vals[i + 6u], vals[i + 7u]);
        put_q8_octet(select(vec4<f32>(0.0), va, mine), select(vec4<f32>(0.0), vb, mine), t,
                     nb, 0u, lid);
    }
    workgroupBarrier();
    // The blocks' sums of squares, after the row.
    let b = wid.x * 8u + lid;
    if (lid < 8u && b < nb) {
        let o4 = 4u * lid;
        let s = (octet_sq[o4] + octet_sq[o4 + 1u]) + (octet_sq[o4 + 2u] + octet_sq[o4 + 3u]);
        yq[select(32u * nb, 18u * nb, q8) + b] = bitcast<u32>(s);
    }
}
