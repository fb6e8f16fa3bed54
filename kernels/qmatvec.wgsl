// Decode mat-vec over an MLX affine-quantized row chunk:
// y[row_base + r] = dot(W[r, :], x[x_offset..]) (+ bias) (+ resid), f32 accumulation.
// `w` holds [codes: rows * cols * BITS / 32 words][scales][biases], the scales and biases
// starting at words scales_word / biases_word (see include/quant.wgsl).
//
// x is read as vec4s: x_offset must be a multiple of 4 (a token's row of a [tokens, cols]
// activation always is, cols being a multiple of 32); otherwise every output is NaN. With
// flags bit 2 the row of x at x_offset is in the interleaved layout
// (include/interleave.wgsl), whose loads touch 8x fewer cache lines; with bit 3 (2- to 6-bit
// weights only, else the outputs are NaN) x is one row in the 8+8-bit layout of that
// file at the start of the buffer, dotted with integer dot products.
//
// A workgroup of 64 invocations is 64 / team teams (`team` a power of two from 4 to 64; in
// the subgroup variant, the subgroup size); each team computes ROWS (a pipeline constant:
// 4, 2 or 1) consecutive rows. More rows share each load of x; fewer spread a matrix over
// more invocations, each with a shorter serial chain of work (kernels::qmatvec_rows_per_team
// picks). Lane l of a team takes the 32-code blocks l, l + team, ... of its rows
// (include/qblock.wgsl), two per iteration: it loads a block's values of x once and the
// block's codes of all its rows, so the loads of its rows and 2 blocks are in flight
// together. Rows past the end of the chunk re-read the last row (branch-free loads; their
// sums are dropped). The team's partial sums are added by `team_sum` (include/team_*.wgsl).
// `ws` is the weight buffer again, read a word at a time (scales and biases; see
// include/qblock.wgsl).
//
// With `heads` > 0 the dispatch is a batch of per-head mat-vecs (multi-head latent
// attention's absorbed projections): the weights are `heads` stacked matrices of `rows`
// rows, the grid's y is the head and its z the token; group g = token * heads + head
// multiplies head's matrix with the row of x at x_offset + g * x_stride (a multiple of 4)
// into y from row_base + g * y_stride. x in the natural layout, no bias or residual.
//
// With flags bit 4 (with bit 3; the FLAGS pipeline constant, so other pipelines compile
// none of it) the kernel is also the RMSNorm in front of it (decode; kernels/rmsnorm.wgsl
// otherwise): x is the raw f32 row of `cols` values (the residual stream, at x_offset),
// `nw` the norm's weights, `eps` its epsilon. Every workgroup normalizes the row itself in
// a prologue, into workgroup memory in the 8+8-bit layout, which its main loop then reads
// instead of the buffer; workgroup 0 also writes that row to `xq`, for the kernels after
// this one that read the norm's row (decode's 2- to 6-bit mat-vecs and experts read no
// other layout; the f32 and interleaved rows are not written: the kernel has no storage
// binding left under WebGPU's 8). This saves a dependent dispatch (the norm, one workgroup
// over the row) per norm and decode step. The prologue computes exactly what rmsnorm.wgsl
// computes, so the codes match bit for bit: the sum of squares in rmsnorm's order (its 256
// invocations' partial sums are 4 per invocation here, from one round of vec4 loads, and
// its tree of partial sums is redone by every invocation from one round of workgroup
// memory reads: one barrier), the normalized values and their blocks' quantization as in
// its `write_q8`, from registers: invocation i takes the 32-value blocks i and i + 64,
// whose values and weights it loads together with the strided ones. Rows of up to
// NORM_COLS values (the workgroup arrays' size).
struct Params {
    rows: u32,
    cols: u32,
    row_base: u32,
    flags: u32, // bit 0: bias, 1: residual, 2: x interleaved, 3: x 8+8-bit, 4: norm x first
    x_offset: u32, // in floats, a multiple of 4
    scales_word: u32,
    biases_word: u32,
    team: u32,
    heads: u32,
    x_stride: u32,
    y_stride: u32,
    eps: f32, // the norm's epsilon (flags bit 4)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> resid: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read> ws: array<u32>; // w again, as words (include/qblock.wgsl)
@group(0) @binding(7) var<storage, read> nw: array<vec4<f32>>; // the norm's weights (bit 4)
@group(0) @binding(8) var<storage, read_write> xq: array<u32>; // the normalized row (bit 4)

const WG: u32 = 64u;

// The flags bits that specialize the pipeline (`Kernel::pipeline_flags`): bit 4.
override FLAGS: u32 = 0u;
// The longest row the fused norm takes: 64 invocations x 2 blocks of 32 values.
const NORM_COLS: u32 = 4096u;
// The normalized row in the 8+8-bit layout (include/interleave.wgsl): the hi and lo vec4s
// of block b at j * nb + b (j = 0..3), as in the buffer; the blocks' (t, sum) apart.
var<workgroup> nq: array<vec4<u32>, 512>;
var<workgroup> nts: array<vec2<f32>, 128>;
// The 256 partial sums of squares of rmsnorm.wgsl's invocations, 4 per invocation here.
var<workgroup> nred: array<vec4<f32>, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let team = p.team;
    let lane = lid & (team - 1u);
    let nrows = team_rows(); // ROWS, from include/qblock.wgsl
    let batched = p.heads > 0u;
    let blk = select(wid.x + wid.y * nwg.x, wid.x, batched);
    let r0 = (blk * (WG / team) + lid / team) * nrows;
    // A batch's group: its x row, its head's rows of w, its rows of y.
    let g = select(0u, wid.z * p.heads + wid.y, batched);
    let xo = (p.x_offset + g * p.x_stride) >> 2u;
    let w0 = select(0u, wid.y * p.rows, batched);
    let y0 = p.row_base + g * p.y_stride;
    let last = p.rows - 1u;
    if ((FLAGS & 16u) != 0u) {
        norm_prologue(lid, blk == 0u && !batched);
    }
    let ra = min(r0, last) + w0;
    let rb = min(r0 + 1u, last) + w0;
    let rc = min(r0 + 2u, last) + w0;
    let rd = min(r0 + 3u, last) + w0;
    var acc = vec4<f32>(0.0);
    let nb = p.cols / 32u;
    var b = lane;
    // Two blocks per iteration: the loads of both are in flight together. ROWS is a
    // pipeline constant: the compiler keeps only one of these loops.
    let q8 = (p.flags & 8u) != 0u;
    if (q8 && (BITS >= 2u && BITS <= 6u)) {
        for (; b + team < nb; b += 2u * team) {
            acc += step_q8(b, nb, ra, rb, rc, rd) + step_q8(b + team, nb, ra, rb, rc, rd);
        }
        if (b < nb) {
            acc += step_q8(b, nb, ra, rb, rc, rd);
        }
    } else if (ROWS == 4u) {
        for (; b + team < nb; b += 2u * team) {
            let s0 = step(xo, b, ra, rb, rc, rd);
            let s1 = step(xo, b + team, ra, rb, rc, rd);
            acc += s0 + s1;
        }
        if (b < nb) {
            acc += step(xo, b, ra, rb, rc, rd);
        }
    } else if (ROWS == 2u) {
        var acc2 = vec2<f32>(0.0);
        for (; b + team < nb; b += 2u * team) {
            let s0 = step2(xo, b, ra, rb);
            let s1 = step2(xo, b + team, ra, rb);
            acc2 += s0 + s1;
        }
        if (b < nb) {
            acc2 += step2(xo, b, ra, rb);
        }
        acc = vec4<f32>(acc2, 0.0, 0.0);
    } else {
        var acc1 = 0.0;
        for (; b + team < nb; b += 2u * team) {
            let s0 = step1(xo, b, ra);
            let s1 = step1(xo, b + team, ra);
            acc1 += s0 + s1;
        }
        if (b < nb) {
            acc1 += step1(xo, b, ra);
        }
        acc.x = acc1;
    }
    let total = team_sum(acc, lid, team);
    if (lane == 0u) {
        for (var i = 0u; i < nrows; i++) {
            if (r0 + i < p.rows) {
                let o = y0 + r0 + i;
                var v = total[i];
                let q8_bits = BITS >= 2u && BITS <= 6u;
                let norm_bad = (FLAGS & 16u) != 0u && (!q8 || p.cols > NORM_COLS || batched);
                if (((p.x_offset | (g * p.x_stride)) & 3u) != 0u || (q8 && !q8_bits) || norm_bad) {
                    v = bitcast<f32>(0x7fc00000u); // NaN: unsupported x_offset or layout
                }
                if ((p.flags & 1u) != 0u) {
                    v += bias[o];
                }
                if ((p.flags & 2u) != 0u) {
                    v += resid[o];
                }
                y[o] = v;
            }
        }
    }
}

// The sums of block b of the team's ROWS rows (the first of ra..rd) with x in the 8+8-bit
// layout. (Written out rather than through `rows_block_q8_n`: that call together with
// `scale_q8` in include/qblock.wgsl made the 4- and 3-bit mat-vecs 1% and 4% slower on an
// H200, though each alone measured the same as before.)
fn step_q8(b: u32, nb: u32, ra: u32, rb: u32, rc: u32, rd: u32) -> vec4<f32> {
    let xq = x_q8(b, nb);
    let s = p.scales_word;
    let c = p.biases_word;
    let first = row_block_q8(0u, s, c, p.cols, ra, b, xq);
    if (ROWS == 4u) {
        return vec4<f32>(first, row_block_q8(0u, s, c, p.cols, rb, b, xq),
                         row_block_q8(0u, s, c, p.cols, rc, b, xq),
                         row_block_q8(0u, s, c, p.cols, rd, b, xq));
    }
    if (ROWS == 2u) {
        return vec4<f32>(first, row_block_q8(0u, s, c, p.cols, rb, b, xq), 0.0, 0.0);
    }
    return vec4<f32>(first, 0.0, 0.0, 0.0);
}

// The sums of block b of rows ra..rd with x, for the 4 rows of a team.
fn step(xo: u32, b: u32, ra: u32, rb: u32, rc: u32, rd: u32) -> vec4<f32> {
    let xs = load_x32(xo, b, p.cols / 32u, (p.flags & 4u) != 0u);
    return rows_block(0u, p.scales_word, p.biases_word, p.cols, vec4<u32>(ra, rb, rc, rd), b,
                      xs, x32_sum(xs));
}

// The sums of block b of rows ra, rb with x, for teams of 2 rows.
fn step2(xo: u32, b: u32, ra: u32, rb: u32) -> vec2<f32> {
    let xs = load_x32(xo, b, p.cols / 32u, (p.flags & 4u) != 0u);
    let xsum = x32_sum(xs);
    return vec2<f32>(row_block(0u, p.scales_word, p.biases_word, p.cols, ra, b, xs, xsum),
                     row_block(0u, p.scales_word, p.biases_word, p.cols, rb, b, xs, xsum));
}

// The sum of block b of row ra with x, for teams of 1 row.
fn step1(xo: u32, b: u32, ra: u32) -> f32 {
    let xs = load_x32(xo, b, p.cols / 32u, (p.flags & 4u) != 0u);
    return row_block(0u, p.scales_word, p.biases_word, p.cols, ra, b, xs, x32_sum(xs));
}

// Block b of the 8+8-bit row: from the buffer, or (fused norm) from workgroup memory.
fn x_q8(b: u32, nb: u32) -> XQ8 {
    if ((FLAGS & 16u) != 0u) {
        let i = min(b, 127u);
        let ts = nts[i];
        return XQ8(nq[i], nq[min(nb + b, 511u)], nq[min(2u * nb + b, 511u)],
                   nq[min(3u * nb + b, 511u)], ts.x, ts.y);
    }
    return load_xq8(b, nb);
}

// Vec4 i of the raw row (0 past its n / 4 vec4s).
fn norm_x(xo: u32, i: u32, nv: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), x[xo + min(i, nv - 1u)], i < nv);
}

// The fused norm (flags bit 4, see the header): the row's blocks in the 8+8-bit layout into
// `nq` and `nts`, and, if `out`, into `xq`. Ends with a barrier.
fn norm_prologue(lid: u32, out: bool) {
    let n = min(p.cols, NORM_COLS);
    let nv = n / 4u;
    let nb = n / 32u;
    let xo = p.x_offset >> 2u;
    // One round of loads: vec4s lid + 64 k of the row (for the sum of squares), and the
    // values and weights of blocks lid and lid + 64 (for the quantization).
    // (Rows of up to 2048 values have 8 strided vec4s and one block per invocation.)
    let long = n > 2048u;
    var v: array<vec4<f32>, 16>;
    for (var k = 0u; k < 16u; k++) {
        if (k < 8u || long) {
            v[k] = norm_x(xo, lid + 64u * k, nv);
        }
    }
    let b0 = min(lid, nb - 1u);
    let b1 = min(lid + 64u, nb - 1u);
    var xa: array<vec4<f32>, 8>;
    var wa: array<vec4<f32>, 8>;
    var xb: array<vec4<f32>, 8>;
    var wb: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        xa[i] = x[xo + 8u * b0 + i];
        wa[i] = nw[8u * b0 + i];
        if (long) {
            xb[i] = x[xo + 8u * b1 + i];
            wb[i] = nw[8u * b1 + i];
        }
    }
    // Component c of vec4 lid + 64 k is value v + 256 k of rmsnorm's invocation
    // v = 4 lid + c: its partial sum, with rmsnorm's operations in rmsnorm's order.
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    var s3 = vec4<f32>(0.0);
    if (!long) {
        // Its rows of up to 8 x 256 values: s = xa * xa + xc * xc.
        s0 = v[0] * v[0] + v[4] * v[4];
        s1 = v[1] * v[1] + v[5] * v[5];
        s2 = v[2] * v[2] + v[6] * v[6];
        s3 = v[3] * v[3] + v[7] * v[7];
    } else {
        // Longer rows: s += a * a for the 4-value steps i = v + 1024 j while
        // i + 768 < n, then s.x += x[i]^2 for the rest (0 past the row adds nothing).
        let vi = 4u * lid + vec4<u32>(0u, 1u, 2u, 3u);
        for (var j = 0u; j < 4u; j++) {
            let full = vi + vec4<u32>(1024u * j + 768u) < vec4<u32>(n);
            let a = v[4u * j];
            let b = v[4u * j + 1u];
            let c = v[4u * j + 2u];
            let d = v[4u * j + 3u];
            let first = s0 + a * a;
            let rest = ((first + b * b) + c * c) + d * d;
            s0 = select(rest, first, full);
            s1 = select(s1, s1 + b * b, full);
            s2 = select(s2, s2 + c * c, full);
            s3 = select(s3, s3 + d * d, full);
        }
    }
    nred[lid] = (s0 + s1) + (s2 + s3);
    workgroupBarrier();
    // rmsnorm's tree over its 256 partials (v += v + 128, then 64, ... 1), here over the
    // vec4s: q += q + 32, 16, 8, 4, 2, 1, then within the vec4.
    let e0 = norm_d(0u) + norm_d(2u);
    let e1 = norm_d(1u) + norm_d(3u);
    let f = e0 + e1;
    let inv = inverseSqrt(((f.x + f.z) + (f.y + f.w)) / f32(n) + p.eps);
    if (lid < nb) {
        norm_block(lid, nb, inv, xa, wa, out);
    }
    if (lid + 64u < nb) {
        norm_block(lid + 64u, nb, inv, xb, wb, out);
    }
    workgroupBarrier();
}

// Levels 32, 16 and 8 of the tree: sums of 8 of `nred`'s vec4s.
fn norm_d(q: u32) -> vec4<f32> {
    let b0 = (nred[q] + nred[q + 32u]) + (nred[q + 16u] + nred[q + 48u]);
    let b1 = (nred[q + 8u] + nred[q + 40u]) + (nred[q + 24u] + nred[q + 56u]);
    let c0 = b0 + b1;
    let b2 = (nred[q + 4u] + nred[q + 36u]) + (nred[q + 20u] + nred[q + 52u]);
    let b3 = (nred[q + 12u] + nred[q + 44u]) + (nred[q + 28u] + nred[q + 60u]);
    return c0 + (b2 + b3);
}

// Normalizes and quantizes block b (values xs, weights ws8) as rmsnorm.wgsl's `write_q8`.
fn norm_block(b: u32, nb: u32, inv: f32, xs: array<vec4<f32>, 8>, ws8: array<vec4<f32>, 8>,
              out: bool) {
    var o: array<vec4<f32>, 8>;
    var amax = 0.0;
    for (var i = 0u; i < 8u; i++) {
        o[i] = ws8[i] * (xs[i] * inv);
    }
    for (var e = 0u; e < 4u; e++) {
        let m = max(abs(o[2u * e]), abs(o[2u * e + 1u]));
        amax = max(amax, max(max(m.x, m.y), max(m.z, m.w)));
    }
    // hi = round(v * 127 / amax); lo = round(v / tq - 254 hi), tq = amax / (127 * 254).
    let k = select(0.0, 127.0 / amax, amax > 0.0);
    let lim = vec4<f32>(127.0);
    var words: array<u32, 16>; // hi words 0..7, lo words 8..15
    var r: array<f32, 4>;
    for (var e = 0u; e < 4u; e++) {
        let va = o[2u * e];
        let vb = o[2u * e + 1u];
        let ha = clamp(round(va * k), -lim, lim);
        let hb = clamp(round(vb * k), -lim, lim);
        let la = clamp(round(va * (254.0 * k) - 254.0 * ha), -lim, lim);
        let lb = clamp(round(vb * (254.0 * k) - 254.0 * hb), -lim, lim);
        r[e] = dot(254.0 * (ha + hb) + (la + lb), vec4<f32>(1.0));
        let hi = vec4<i32>(ha);
        let hj = vec4<i32>(hb);
        let lo = vec4<i32>(la);
        let lj = vec4<i32>(lb);
        // Word 2e packs values 8e + 0, 2, 4, 6 and word 2e + 1 values 8e + 1, 3, 5, 7.
        words[2u * e] = pack4xI8(vec4<i32>(hi.x, hi.z, hj.x, hj.z));
        words[2u * e + 1u] = pack4xI8(vec4<i32>(hi.y, hi.w, hj.y, hj.w));
        words[8u + 2u * e] = pack4xI8(vec4<i32>(lo.x, lo.z, lj.x, lj.z));
        words[9u + 2u * e] = pack4xI8(vec4<i32>(lo.y, lo.w, lj.y, lj.w));
    }
    let t = amax / (127.0 * 254.0);
    let sum = ((r[0] + r[1]) + (r[2] + r[3])) * t;
    for (var j = 0u; j < 4u; j++) {
        let q = vec4<u32>(words[4u * j], words[4u * j + 1u], words[4u * j + 2u],
                          words[4u * j + 3u]);
        nq[j * nb + b] = q;
        if (out) {
            let wi = 4u * (j * nb + b);
            xq[wi] = q.x;
            xq[wi + 1u] = q.y;
            xq[wi + 2u] = q.z;
            xq[wi + 3u] = q.w;
        }
    }
    nts[b] = vec2<f32>(t, sum);
    if (out) {
        xq[16u * nb + 2u * b] = bitcast<u32>(t);
        xq[16u * nb + 2u * b + 1u] = bitcast<u32>(sum);
    }
}
