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
// file at the start of the buffer, dotted with integer dot products. With bit 4 (and bit
// 2 or 3), that row is an RMSNorm's input not yet divided by its RMS, with its blocks'
// sums of squares after it (kernels/moe_combine_norm.wgsl): every team adds those up beside
// its dot products and scales its sums by 1 / sqrt(mean + eps) before bias and residual.
// With bit 5 instead, x is the raw input of an RMSNorm (f32, natural layout, at x_offset)
// whose weight is bound as `resid` (no residual then): the teams scale each block by the
// weight as they load it and apply the norm as with bit 4, from the sums of squares of
// what they load; with bit 6 (or 7) the workgroups also write the normalized row in the
// 8+8-bit (or interleaved) layout into yq, for the norm's other readers (the router
// mat-vec of a MoE layer: the expert kernels run two levels later).
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
struct Params {
    rows: u32,
    cols: u32,
    row_base: u32,
    flags: u32, // bit 0: add bias, bit 1: add residual, bit 2: x interleaved, bit 3: x 8+8-bit,
                // bit 4: (with bit 2 or 3) x is a norm's input left by moe_combine_norm,
                // bit 5: x is a norm's raw input, its weight in `resid`; bit 6 / 7: also
                // write the normalized row into yq, 8+8-bit / interleaved
    x_offset: u32, // in floats, a multiple of 4
    scales_word: u32,
    biases_word: u32,
    team: u32,
    heads: u32,
    x_stride: u32,
    y_stride: u32,
    eps: f32, // with flags bit 4: the RMSNorm's epsilon
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> resid: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read> ws: array<u32>; // w again, as words (include/qblock.wgsl)
// With flags bit 5 and bit 6 or 7: the normalized row, for the other readers of the norm
// (include/q8_row.wgsl writes the 8+8-bit layout here).
@group(0) @binding(7) var<storage, read_write> yq: array<u32>;

// Bit 5: the sum of squares of the raw row's blocks this invocation loaded.
var<private> raw_sq: f32;
// Bit 5: 1 / rms of the raw row, for the workgroup's writers of the normalized row.
var<workgroup> row_inv: f32;

const WG: u32 = 64u;

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
    // With bit 4, x is a row not yet divided by its RMS, with its blocks' sums of squares
    // after it (kernels/moe_combine_norm.wgsl): each lane adds up those of its blocks, their
    // loads in flight with the blocks' own.
    // With bit 5, x is the raw row (natural, at x_offset) of an RMSNorm whose weight is in
    // `resid`: each block is scaled by the weight as it is loaded (`load_in`), and its sum
    // of squares added up as with bit 4.
    let raw = (p.flags & 32u) != 0u;
    let stats = (p.flags & 16u) != 0u;
    let norm = stats || raw;
    var ssq = 0.0;
    if (q8 && (BITS >= 2u && BITS <= 6u)) {
        for (; b + team < nb; b += 2u * team) {
            acc += step_q8(b, nb, ra, rb, rc, rd) + step_q8(b + team, nb, ra, rb, rc, rd);
            ssq += block_sq(stats, q8, b, nb) + block_sq(stats, q8, b + team, nb);
        }
        if (b < nb) {
            acc += step_q8(b, nb, ra, rb, rc, rd);
            ssq += block_sq(stats, q8, b, nb);
        }
    } else if (ROWS == 4u) {
        for (; b + team < nb; b += 2u * team) {
            let s0 = step(xo, b, ra, rb, rc, rd);
            let s1 = step(xo, b + team, ra, rb, rc, rd);
            acc += s0 + s1;
            ssq += block_sq(stats, q8, b, nb) + block_sq(stats, q8, b + team, nb);
        }
        if (b < nb) {
            acc += step(xo, b, ra, rb, rc, rd);
            ssq += block_sq(stats, q8, b, nb);
        }
    } else if (ROWS == 2u) {
        var acc2 = vec2<f32>(0.0);
        for (; b + team < nb; b += 2u * team) {
            let s0 = step2(xo, b, ra, rb);
            let s1 = step2(xo, b + team, ra, rb);
            acc2 += s0 + s1;
            ssq += block_sq(stats, q8, b, nb) + block_sq(stats, q8, b + team, nb);
        }
        if (b < nb) {
            acc2 += step2(xo, b, ra, rb);
            ssq += block_sq(stats, q8, b, nb);
        }
        acc = vec4<f32>(acc2, 0.0, 0.0);
    } else {
        var acc1 = 0.0;
        for (; b + team < nb; b += 2u * team) {
            let s0 = step1(xo, b, ra);
            let s1 = step1(xo, b + team, ra);
            acc1 += s0 + s1;
            ssq += block_sq(stats, q8, b, nb) + block_sq(stats, q8, b + team, nb);
        }
        if (b < nb) {
            acc1 += step1(xo, b, ra);
            ssq += block_sq(stats, q8, b, nb);
        }
        acc.x = acc1;
    }
    // The sum of squares rides in a component the rows leave free (ROWS < 4), else in a
    // sum of its own.
    ssq += raw_sq;
    if (ROWS < 4u) {
        acc.w = ssq;
    }
    let total = team_sum(acc, lid, team);
    var sq_total = total.w;
    if (ROWS == 4u && norm) {
        sq_total = team_sum(vec4<f32>(ssq, 0.0, 0.0, 0.0), lid, team).x;
    }
    let inv = select(1.0, inverseSqrt(sq_total / f32(p.cols) + p.eps), norm);
    if (lane == 0u) {
        for (var i = 0u; i < nrows; i++) {
            if (r0 + i < p.rows) {
                let o = y0 + r0 + i;
                var v = total[i] * inv;
                let q8_bits = BITS >= 2u && BITS <= 6u;
                if (((p.x_offset | (g * p.x_stride)) & 3u) != 0u || (q8 && !q8_bits)) {
                    v = bitcast<f32>(0x7fc00000u); // NaN: unsupported x_offset or layout
                }
                if ((p.flags & 1u) != 0u) {
                    v += bias[o];
                }
                if ((p.flags & 2u) != 0u && !raw) {
                    v += resid[o];
                }
                y[o] = v;
            }
        }
    }
    if (raw && (p.flags & 192u) != 0u) {
        write_normalized(blk, nwg.x * nwg.y, lid, inv);
    }
}

// With bit 5 and bit 6 (8+8-bit) or 7 (interleaved f32): the normalized row
// g * x / rms(x) into yq for the norm's other readers, 16 blocks per workgroup and round
// (an octet per invocation), from workgroup `wg` of `n_wg` on. `inv` is valid in the
// first invocation (the first team's sum). Call from uniform control flow.
fn write_normalized(wg: u32, n_wg: u32, lid: u32, inv: f32) {
    if (lid == 0u) {
        row_inv = inv;
    }
    let ri = workgroupUniformLoad(&row_inv);
    let n = p.cols;
    let nb = n / 32u;
    let q8 = (p.flags & 64u) != 0u;
    for (var b0 = wg * 16u; b0 < nb; b0 += n_wg * 16u) {
        let t = 4u * b0 + lid;
        let j = min(8u * t, n - 8u);
        let xi = (p.x_offset >> 2u) + (j >> 2u);
        let va = vec4<f32>(resid[j], resid[j + 1u], resid[j + 2u], resid[j + 3u])
            * (x[xi] * ri);
        let vb = vec4<f32>(resid[j + 4u], resid[j + 5u], resid[j + 6u], resid[j + 7u])
            * (x[xi + 1u] * ri);
        if (q8) {
            put_q8_octet(va, vb, t, nb, 0u, lid);
        } else if (t < 4u * nb) {
            for (var i = 0u; i < 4u; i++) {
                yq[interleaved(j + i, n)] = bitcast<u32>(va[i]);
                yq[interleaved(j + 4u + i, n)] = bitcast<u32>(vb[i]);
            }
        }
    }
}

// Block b of x as the f32 loops read it: with bit 5, the raw row's block times the norm's
// weight (`resid`), its sum of squares added to `raw_sq`.
fn load_in(xo: u32, b: u32, nb: u32) -> X32 {
    let xs = load_x32(xo, b, nb, (p.flags & 4u) != 0u);
    if ((p.flags & 32u) == 0u) {
        return xs;
    }
    raw_sq += dot(xs.a, xs.a) + dot(xs.b, xs.b) + dot(xs.c, xs.c) + dot(xs.d, xs.d)
        + dot(xs.e, xs.e) + dot(xs.f, xs.f) + dot(xs.g, xs.g) + dot(xs.h, xs.h);
    let j = 32u * b;
    return X32(xs.a * g4(j), xs.b * g4(j + 4u), xs.c * g4(j + 8u), xs.d * g4(j + 12u),
               xs.e * g4(j + 16u), xs.f * g4(j + 20u), xs.g * g4(j + 24u),
               xs.h * g4(j + 28u));
}

// Values j .. j + 3 of the norm's weight (bit 5).
fn g4(j: u32) -> vec4<f32> {
    return vec4<f32>(resid[j], resid[j + 1u], resid[j + 2u], resid[j + 3u]);
}

// The sum of squares of block b of a row left by moe_combine_norm (its word after the row:
// 18 nb + b in the 8+8-bit layout, x_offset + 32 nb + b in the interleaved one); 0 without
// `norm`.
fn block_sq(norm: bool, q8: bool, b: u32, nb: u32) -> f32 {
    if (!norm) {
        return 0.0;
    }
    let w = select(p.x_offset + 32u * nb, 18u * nb, q8) + b;
    return x[w >> 2u][w & 3u];
}

// The sums of block b of the team's ROWS rows (the first of ra..rd) with x in the 8+8-bit
// layout. (Written out rather than through `rows_block_q8_n`: that call together with
// `scale_q8` in include/qblock.wgsl made the 4- and 3-bit mat-vecs 1% and 4% slower on an
// H200, though each alone measured the same as before.)
fn step_q8(b: u32, nb: u32, ra: u32, rb: u32, rc: u32, rd: u32) -> vec4<f32> {
    let xq = load_xq8(b, nb);
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
    let xs = load_in(xo, b, p.cols / 32u);
    return rows_block(0u, p.scales_word, p.biases_word, p.cols, vec4<u32>(ra, rb, rc, rd), b,
                      xs, x32_sum(xs));
}

// The sums of block b of rows ra, rb with x, for teams of 2 rows.
fn step2(xo: u32, b: u32, ra: u32, rb: u32) -> vec2<f32> {
    let xs = load_in(xo, b, p.cols / 32u);
    let xsum = x32_sum(xs);
    return vec2<f32>(row_block(0u, p.scales_word, p.biases_word, p.cols, ra, b, xs, xsum),
                     row_block(0u, p.scales_word, p.biases_word, p.cols, rb, b, xs, xsum));
}

// The sum of block b of row ra with x, for teams of 1 row.
fn step1(xo: u32, b: u32, ra: u32) -> f32 {
    let xs = load_in(xo, b, p.cols / 32u);
    return row_block(0u, p.scales_word, p.biases_word, p.cols, ra, b, xs, x32_sum(xs));
}
