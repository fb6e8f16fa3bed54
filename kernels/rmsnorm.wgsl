// RMSNorm over rows of length n: y = x / sqrt(mean(x^2) + eps) * w, statistics in f32.
// One workgroup per row; rows are read from x_offset and written from y_offset (elements).
// Rows of up to 8 * 256 values are loaded in one round (8 values of x and of w per
// invocation); longer ones with four loads in flight per invocation, not the dependent
// ones of a plain strided loop. With flags bit 0 each row is also written
// to yi in the interleaved layout (include/interleave.wgsl; n a multiple of 32), the row
// at row * n, and with bit 1 to yq in the 8+8-bit layout of that file (the row at
// row * 18 n / 32 words), for the quantized mat-vec kernels.
//
// Decode runs this kernel twice per layer on one row, so its latency counts (`cargo bench
// --bench latency`): rows of up to 2048 values are loaded once, x and w together, and
// kept in registers for the normalization (4.71 -> 4.35 us on an H200, against loading w
// and x again after the reduction), and keep their normalized values in workgroup
// memory, read back as vec4s by the 8+8-bit blocks' octets (5.1 -> 4.7 us, against
// re-reading x and w). Measured slower there: any reduction other than the tree below (16
// serial workgroup-memory reads per invocation cost more than 9 barriers), and scalar
// reads of 8 consecutive values per invocation (bank conflicts).
struct Params {
    n: u32,
    rows: u32,
    eps: f32,
    x_offset: u32,
    y_offset: u32,
    flags: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> yi: array<f32>;
@group(0) @binding(5) var<storage, read_write> yq: array<u32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;
var<workgroup> vals: array<vec4<f32>, 512>; // the normalized row (rows of up to 2048)

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let n = p.n;
    let xb = p.x_offset + row * n;
    var s = vec4<f32>(0.0);
    // Rows of up to 8 WG values: the invocation's values lid + k WG (k = 0..7) of x and w,
    // loaded together once and kept in registers (0 past the row).
    let small = n <= 8u * WG;
    var xa = vec4<f32>(0.0);
    var xc = vec4<f32>(0.0);
    var wa = vec4<f32>(0.0);
    var wc = vec4<f32>(0.0);
    if (small) {
        xa = vec4<f32>(xv(xb, lid, n), xv(xb, lid + WG, n), xv(xb, lid + 2u * WG, n),
                       xv(xb, lid + 3u * WG, n));
        xc = vec4<f32>(xv(xb, lid + 4u * WG, n), xv(xb, lid + 5u * WG, n),
                       xv(xb, lid + 6u * WG, n), xv(xb, lid + 7u * WG, n));
        wa = vec4<f32>(wv(lid, n), wv(lid + WG, n), wv(lid + 2u * WG, n), wv(lid + 3u * WG, n));
        wc = vec4<f32>(wv(lid + 4u * WG, n), wv(lid + 5u * WG, n), wv(lid + 6u * WG, n),
                       wv(lid + 7u * WG, n));
        s = xa * xa + xc * xc;
    } else {
        var i = lid;
        for (; i + 3u * WG < n; i += 4u * WG) {
            let v = vec4<f32>(x[xb + i], x[xb + i + WG], x[xb + i + 2u * WG], x[xb + i + 3u * WG]);
            s += v * v;
        }
        for (; i < n; i += WG) {
            let v = x[xb + i];
            s.x += v * v;
        }
    }
    red[lid] = (s.x + s.y) + (s.z + s.w);
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    let inv = inverseSqrt(red[0] / f32(n) + p.eps);
    // Whether the normalized row stays in `vals` for the 8+8-bit blocks (written only when
    // they are): rows of up to 2048 values (8 WG).
    let keep = small && (p.flags & 2u) != 0u && (n & 3u) == 0u;
    let yb = p.y_offset + row * n;
    let il = (p.flags & 1u) != 0u;
    if (small) {
        let oa = wa * (xa * inv);
        let oc = wc * (xc * inv);
        put(lid, oa.x, row, yb, keep, il);
        put(lid + WG, oa.y, row, yb, keep, il);
        put(lid + 2u * WG, oa.z, row, yb, keep, il);
        put(lid + 3u * WG, oa.w, row, yb, keep, il);
        put(lid + 4u * WG, oc.x, row, yb, keep, il);
        put(lid + 5u * WG, oc.y, row, yb, keep, il);
        put(lid + 6u * WG, oc.z, row, yb, keep, il);
        put(lid + 7u * WG, oc.w, row, yb, keep, il);
    } else {
        var i = lid;
        for (; i + 3u * WG < n; i += 4u * WG) {
            let v = vec4<f32>(x[xb + i], x[xb + i + WG], x[xb + i + 2u * WG], x[xb + i + 3u * WG]);
            let g = vec4<f32>(w[i], w[i + WG], w[i + 2u * WG], w[i + 3u * WG]);
            let o = g * (v * inv);
            put(i, o.x, row, yb, false, il);
            put(i + WG, o.y, row, yb, false, il);
            put(i + 2u * WG, o.z, row, yb, false, il);
            put(i + 3u * WG, o.w, row, yb, false, il);
        }
        for (; i < n; i += WG) {
            put(i, w[i] * (x[xb + i] * inv), row, yb, false, il);
        }
    }
    if ((p.flags & 2u) != 0u) {
        workgroupBarrier(); // red[0] has been read by all
        write_q8(row, xb, inv, lid, keep);
    }
}

// Value i of the row of x starting at xb (0 past the row's n values).
fn xv(xb: u32, i: u32, n: u32) -> f32 {
    return select(0.0, x[xb + min(i, n - 1u)], i < n);
}

// Value i of w (0 past n).
fn wv(i: u32, n: u32) -> f32 {
    return select(0.0, w[min(i, n - 1u)], i < n);
}

// Writes normalized value o of index i (if inside the row) to y, and to `vals` and yi
// when kept / interleaved.
fn put(i: u32, o: f32, row: u32, yb: u32, keep: bool, il: bool) {
    if (i < p.n) {
        if (keep) {
            vals[i >> 2u][i & 3u] = o;
        }
        y[yb + i] = o;
        if (il) {
            yi[row * p.n + interleaved(i, p.n)] = o;
        }
    }
}

// The row in the 8+8-bit layout: 4 invocations per 32-value block, 8 values each.
fn write_q8(row: u32, xb: u32, inv: f32, lid: u32, keep: bool) {
    let n = p.n;
    let nb = n / 32u;
    let base = row * 18u * nb;
    for (var t0 = 0u; t0 < 4u * nb; t0 += WG) {
        let t = t0 + lid;
        // Values 8t .. 8t + 7: block t / 4, eighth t % 4 of it (clamped when past the row).
        let j = min(8u * t, n - 8u);
        var va: vec4<f32>;
        var vb: vec4<f32>;
        if (keep) {
            va = vals[j >> 2u];
            vb = vals[(j >> 2u) + 1u];
        } else {
            va = vec4<f32>(w[j], w[j + 1u], w[j + 2u], w[j + 3u])
                * (vec4<f32>(x[xb + j], x[xb + j + 1u], x[xb + j + 2u], x[xb + j + 3u]) * inv);
            vb = vec4<f32>(w[j + 4u], w[j + 5u], w[j + 6u], w[j + 7u])
                * (vec4<f32>(x[xb + j + 4u], x[xb + j + 5u], x[xb + j + 6u], x[xb + j + 7u]) * inv);
        }
        put_q8_octet(va, vb, t, nb, base, lid);
    }
}
