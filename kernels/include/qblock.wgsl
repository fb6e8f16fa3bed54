// Dot products of quantized rows with f32 vectors, 32 codes at a time (prepended to the
// mat-vec style quantized kernels after quant.wgsl; not a kernel itself). The kernel must
// bind its weights as `w: array<vec4<u32>>`, the same buffer again as `ws: array<u32>`,
// and its input vectors as `x: array<vec4<f32>>`. Codes are loaded as vec4s from `w`;
// single words (scales, biases, the words of 3/5/6-bit octets) as words from `ws`: a vec4
// load costs a 32-lane team 512 bytes of cache bandwidth even when every lane wants the
// same word, so reading scales through `w` made a 4-bit mat-vec 20% slower on an H200.
//
// A block is 32 consecutive codes of a row: BITS whole words, starting at a word index that
// is a multiple of BITS (rows hold a multiple of 32 codes), inside one group (GROUP is a
// multiple of 32). Tensors start 16-byte aligned, so a 4-bit block is one vec4 and an 8-bit
// block two.
//
// 2, 4 and 8 bits avoid integer-to-float conversions (a quarter-rate instruction on many
// GPUs, and what bound the first kernels): a code c masked in place at bit o of a 16-bit
// half word, OR-ed into the mantissa of 2^23, is the float 2^23 + c * 2^o exactly;
// subtracting 2^23 leaves c * 2^o exactly. The four lanes of a vec4 accumulator each hold
// one bit position o, and are scaled back by 2^-o (exact) once per block. 3, 5 and 6 bits
// straddle words and go through the octet unpacking of quant.wgsl.

// Rows per team of the team kernels: 4, 2 or 1 (other values mean 1). Four rows share
// each load of x the most; fewer spread a matrix of few rows over more invocations, each
// with a shorter serial chain of work (kernels::*_rows_per_team pick).
override ROWS: u32 = 4u;

// ROWS as a count.
fn team_rows() -> u32 {
    return select(select(1u, 2u, ROWS == 2u), 4u, ROWS == 4u);
}

const MAGIC: u32 = 0x4b000000u; // the bits of 2^23
const MAGIC_F: f32 = 8388608.0;

// 32 values of x (columns 4i .. 4i + 3 of a block in field i), kept in registers: a struct
// rather than an array, which drivers may place in memory when it is indexed.
struct X32 {
    a: vec4<f32>,
    b: vec4<f32>,
    c: vec4<f32>,
    d: vec4<f32>,
    e: vec4<f32>,
    f: vec4<f32>,
    g: vec4<f32>,
    h: vec4<f32>,
}

// The 32 values of block b of the row of x starting at vec4 `row`, a row of nb blocks in
// the natural layout or, if `il`, the interleaved one (include/interleave.wgsl).
fn load_x32(row: u32, b: u32, nb: u32, il: bool) -> X32 {
    let i = row + select(8u * b, b, il);
    let s = select(1u, nb, il);
    return X32(x[i], x[i + s], x[i + 2u * s], x[i + 3u * s], x[i + 4u * s], x[i + 5u * s],
               x[i + 6u * s], x[i + 7u * s]);
}

// The sum of the 32 values.
fn x32_sum(xs: X32) -> f32 {
    return dot(xs.a + xs.b + xs.c + xs.d + xs.e + xs.f + xs.g + xs.h, vec4<f32>(1.0));
}

// Word i of the weights.
fn word_at(i: u32) -> u32 {
    return ws[i];
}

// The codes selected by `mask` in each lane of v, times 2^(their bit offset), as floats.
fn lanes(v: vec4<u32>, mask: vec4<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>((v & mask) | vec4<u32>(MAGIC)) - vec4<f32>(MAGIC_F);
}

// dot(codes of the block whose words start at word `wi`, xs), xs the 32 values of the
// block's columns as 8 vec4s.
fn block_dot(wi: u32, xs: X32) -> f32 {
    if (WDT == 4u) {
        // FP8: word k holds columns 4k .. 4k + 3, a byte each, the first lowest.
        let qa = w[wi >> 2u];
        let qb = w[(wi >> 2u) + 1u];
        var acc = e4m3_word(qa.x) * xs.a;
        acc += e4m3_word(qa.y) * xs.b;
        acc += e4m3_word(qa.z) * xs.c;
        acc += e4m3_word(qa.w) * xs.d;
        acc += e4m3_word(qb.x) * xs.e;
        acc += e4m3_word(qb.y) * xs.f;
        acc += e4m3_word(qb.z) * xs.g;
        acc += e4m3_word(qb.w) * xs.h;
        return dot(acc, vec4<f32>(1.0));
    }
    if (WDT == 3u) {
        // MXFP4: word k holds columns 8k .. 8k + 7, a nibble each, the first lowest.
        let q = w[wi >> 2u];
        let lo = vec4<u32>(0u, 4u, 8u, 12u);
        let hi = vec4<u32>(16u, 20u, 24u, 28u);
        var acc = fp4(vec4<u32>(q.x) >> lo) * xs.a;
        acc += fp4(vec4<u32>(q.x) >> hi) * xs.b;
        acc += fp4(vec4<u32>(q.y) >> lo) * xs.c;
        acc += fp4(vec4<u32>(q.y) >> hi) * xs.d;
        acc += fp4(vec4<u32>(q.z) >> lo) * xs.e;
        acc += fp4(vec4<u32>(q.z) >> hi) * xs.f;
        acc += fp4(vec4<u32>(q.w) >> lo) * xs.g;
        acc += fp4(vec4<u32>(q.w) >> hi) * xs.h;
        return dot(acc, vec4<f32>(1.0));
    }
    if (BITS == 4u) {
        let q = w[wi >> 2u];
        let m = vec4<u32>(0xfu, 0xf0u, 0xf00u, 0xf000u);
        var acc = lanes(vec4<u32>(q.x), m) * xs.a;
        acc += lanes(vec4<u32>(q.x >> 16u), m) * xs.b;
        acc += lanes(vec4<u32>(q.y), m) * xs.c;
        acc += lanes(vec4<u32>(q.y >> 16u), m) * xs.d;
        acc += lanes(vec4<u32>(q.z), m) * xs.e;
        acc += lanes(vec4<u32>(q.z >> 16u), m) * xs.f;
        acc += lanes(vec4<u32>(q.w), m) * xs.g;
        acc += lanes(vec4<u32>(q.w >> 16u), m) * xs.h;
        return dot(acc, vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625));
    }
    if (BITS == 8u) {
        let qa = w[wi >> 2u];
        let qb = w[(wi >> 2u) + 1u];
        let m = vec4<u32>(0xffu, 0xff00u, 0xffu, 0xff00u);
        var acc = lanes(vec4<u32>(qa.x, qa.x, qa.x >> 16u, qa.x >> 16u), m) * xs.a;
        acc += lanes(vec4<u32>(qa.y, qa.y, qa.y >> 16u, qa.y >> 16u), m) * xs.b;
        acc += lanes(vec4<u32>(qa.z, qa.z, qa.z >> 16u, qa.z >> 16u), m) * xs.c;
        acc += lanes(vec4<u32>(qa.w, qa.w, qa.w >> 16u, qa.w >> 16u), m) * xs.d;
        acc += lanes(vec4<u32>(qb.x, qb.x, qb.x >> 16u, qb.x >> 16u), m) * xs.e;
        acc += lanes(vec4<u32>(qb.y, qb.y, qb.y >> 16u, qb.y >> 16u), m) * xs.f;
        acc += lanes(vec4<u32>(qb.z, qb.z, qb.z >> 16u, qb.z >> 16u), m) * xs.g;
        acc += lanes(vec4<u32>(qb.w, qb.w, qb.w >> 16u, qb.w >> 16u), m) * xs.h;
        return dot(acc, vec4<f32>(1.0, 0.00390625, 1.0, 0.00390625));
    }
    if (BITS == 2u) {
        let q = w[wi >> 2u];
        let pair = select(q.xy, q.zw, (wi & 2u) != 0u);
        let m = vec4<u32>(0x3u, 0xcu, 0x30u, 0xc0u);
        var acc = lanes(vec4<u32>(pair.x), m) * xs.a;
        acc += lanes(vec4<u32>(pair.x >> 8u), m) * xs.b;
        acc += lanes(vec4<u32>(pair.x >> 16u), m) * xs.c;
        acc += lanes(vec4<u32>(pair.x >> 24u), m) * xs.d;
        acc += lanes(vec4<u32>(pair.y), m) * xs.e;
        acc += lanes(vec4<u32>(pair.y >> 8u), m) * xs.f;
        acc += lanes(vec4<u32>(pair.y >> 16u), m) * xs.g;
        acc += lanes(vec4<u32>(pair.y >> 24u), m) * xs.h;
        return dot(acc, vec4<f32>(1.0, 0.25, 0.0625, 0.015625));
    }
    // 3, 5 and 6 bits: four octets of 8 codes (include/quant.wgsl).
    return octet_dot(wi, 0u, xs.a, xs.b) + octet_dot(wi, 1u, xs.c, xs.d)
        + octet_dot(wi, 2u, xs.e, xs.f) + octet_dot(wi, 3u, xs.g, xs.h);
}

// dot(codes of octet o of the block at word wi, (xa, xb)).
fn octet_dot(wi: u32, o: u32, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
    let bit = o * 8u * BITS;
    let wj = wi + (bit >> 5u);
    let shift = bit & 31u;
    var w1 = 0u;
    if (octet_spills(shift)) {
        w1 = word_at(wj + 1u);
    }
    let c = octet_codes(word_at(wj), w1, shift);
    return dot(c.q0, xa) + dot(c.q1, xb);
}

// s * dot(q, xs) + b * xsum for block `b` of row `r` of the matrix whose codes, scales and
// biases start at words q_word, s_word, b_word and whose rows hold `cols` codes.
fn row_block(q_word: u32, s_word: u32, b_word: u32, cols: u32, r: u32, b: u32,
             xs: X32, xsum: f32) -> f32 {
    let d = block_dot(q_word + r * (cols * BITS / 32u) + b * BITS, xs);
    let sb = block_scale_bias(s_word, b_word, cols, r, b);
    return sb.x * d + sb.y * xsum;
}

// The scale and bias of block b of row r (rows of `cols` codes; the scales and biases
// start at words s_word and b_word).
fn block_scale_bias(s_word: u32, b_word: u32, cols: u32, r: u32, b: u32) -> vec2<f32> {
    let e = group_index(r, cols, 32u * b);
    if (!has_biases()) {
        return vec2<f32>(scale_value(word_at(scale_word(s_word, e)), e), 0.0);
    }
    return vec2<f32>(scale_value(word_at(scale_word(s_word, e)), e),
                     scale_value(word_at(scale_word(b_word, e)), e));
}

// s * t * (254 a.x + a.y) + bias * sum for block b of row r, from the integer dot products
// a = (dot(codes, hi), dot(codes, lo)) with a block of x in the 8+8-bit layout.
fn scale_q8(s_word: u32, b_word: u32, cols: u32, r: u32, b: u32, a: vec2<i32>,
            xq: XQ8) -> f32 {
    // Exact in f32 up to 4 bits (|254 hi + lo| . codes <= 32 * 15 * 32385 < 2^24); for 5
    // and 6 bits the conversion rounds (relative 6e-8). 254 * a.x fits an i32 for all.
    let d = f32(254 * a.x + a.y) * xq.t;
    let sb = block_scale_bias(s_word, b_word, cols, r, b);
    return sb.x * d + sb.y * xq.sum;
}

// `row_block` of block b for the 4 rows `rows` of one matrix.
fn rows_block(q_word: u32, s_word: u32, b_word: u32, cols: u32, rows: vec4<u32>, b: u32,
              xs: X32, xsum: f32) -> vec4<f32> {
    return vec4<f32>(
        row_block(q_word, s_word, b_word, cols, rows.x, b, xs, xsum),
        row_block(q_word, s_word, b_word, cols, rows.y, b, xs, xsum),
        row_block(q_word, s_word, b_word, cols, rows.z, b, xs, xsum),
        row_block(q_word, s_word, b_word, cols, rows.w, b, xs, xsum),
    );
}

// One block of a row of x in the 8+8-bit layout (include/interleave.wgsl): hi and lo as
// 8 packed words each, the block's scale t and sum.
struct XQ8 {
    h0: vec4<u32>,
    h1: vec4<u32>,
    l0: vec4<u32>,
    l1: vec4<u32>,
    t: f32,
    sum: f32,
}

// Block b of the 8+8-bit row of nb blocks at the start of x.
fn load_xq8(b: u32, nb: u32) -> XQ8 {
    let sp = x[4u * nb + (b >> 1u)];
    let o = select(sp.xy, sp.zw, (b & 1u) != 0u);
    return XQ8(bitcast<vec4<u32>>(x[b]), bitcast<vec4<u32>>(x[nb + b]),
               bitcast<vec4<u32>>(x[2u * nb + b]), bitcast<vec4<u32>>(x[3u * nb + b]), o.x,
               o.y);
}

// The 8+8-bit layout of x serves 2- to 6-bit codes (`kernels::reads_q8_activations`;
// their codes are spread into bytes). The kernels test the width inline
// (`BITS >= 2u && BITS <= 6u`), with 8-bit codes writing NaN: a helper function's result
// stayed a run-time test and made the 4-bit mat-vec 10% slower on an H200.

// acc + (dot(codes, hi), dot(codes, lo)) for the 4 codes (bytes 0..15) of `c`.
fn dot_q8(c: u32, hi: u32, lo: u32, acc: vec2<i32>) -> vec2<i32> {
    return acc + vec2<i32>(dot4I8Packed(c, hi), dot4I8Packed(c, lo));
}

// `row_block` for a 2- to 6-bit row and x in the 8+8-bit layout: the codes spread into
// bytes (`block_spreads`) and dotted with hi and lo by integer dot products, exact, so
// the result differs from the f32 one only by the quantization of x. Octet k's even
// values pair with words 2k of hi and lo, its odd values with words 2k + 1.
fn row_block_q8(q_word: u32, s_word: u32, b_word: u32, cols: u32, r: u32, b: u32,
                xq: XQ8) -> f32 {
    let s = block_spreads(q_word, cols, r, b);
    var a = dot_q8(s.e.x, xq.h0.x, xq.l0.x, vec2<i32>(0));
    a = dot_q8(s.o.x, xq.h0.y, xq.l0.y, a);
    a = dot_q8(s.e.y, xq.h0.z, xq.l0.z, a);
    a = dot_q8(s.o.y, xq.h0.w, xq.l0.w, a);
    a = dot_q8(s.e.z, xq.h1.x, xq.l1.x, a);
    a = dot_q8(s.o.z, xq.h1.y, xq.l1.y, a);
    a = dot_q8(s.e.w, xq.h1.z, xq.l1.z, a);
    a = dot_q8(s.o.w, xq.h1.w, xq.l1.w, a);
    return scale_q8(s_word, b_word, cols, r, b, a, xq);
}

// `row_block_q8` for the 4 rows `rows` of one matrix.
fn rows_block_q8(q_word: u32, s_word: u32, b_word: u32, cols: u32, rows: vec4<u32>, b: u32,
                 xq: XQ8) -> vec4<f32> {
    return vec4<f32>(
        row_block_q8(q_word, s_word, b_word, cols, rows.x, b, xq),
        row_block_q8(q_word, s_word, b_word, cols, rows.y, b, xq),
        row_block_q8(q_word, s_word, b_word, cols, rows.z, b, xq),
        row_block_q8(q_word, s_word, b_word, cols, rows.w, b, xq),
    );
}

// `rows_block` for the team's first team_rows() of `rows` (the other sums are 0).
fn rows_block_n(q_word: u32, s_word: u32, b_word: u32, cols: u32, rows: vec4<u32>, b: u32,
                xs: X32, xsum: f32) -> vec4<f32> {
    if (ROWS == 4u) {
        return rows_block(q_word, s_word, b_word, cols, rows, b, xs, xsum);
    }
    let first = row_block(q_word, s_word, b_word, cols, rows.x, b, xs, xsum);
    if (ROWS == 2u) {
        return vec4<f32>(first, row_block(q_word, s_word, b_word, cols, rows.y, b, xs, xsum),
                         0.0, 0.0);
    }
    return vec4<f32>(first, 0.0, 0.0, 0.0);
}

// `rows_block_q8` for the team's first team_rows() of `rows` (the other sums are 0).
fn rows_block_q8_n(q_word: u32, s_word: u32, b_word: u32, cols: u32, rows: vec4<u32>,
                   b: u32, xq: XQ8) -> vec4<f32> {
    if (ROWS == 4u) {
        return rows_block_q8(q_word, s_word, b_word, cols, rows, b, xq);
    }
    let first = row_block_q8(q_word, s_word, b_word, cols, rows.x, b, xq);
    if (ROWS == 2u) {
        return vec4<f32>(first, row_block_q8(q_word, s_word, b_word, cols, rows.y, b, xq),
                         0.0, 0.0);
    }
    return vec4<f32>(first, 0.0, 0.0, 0.0);
}

// One block of a row of h in the quad 8+8-bit layout (include/interleave.wgsl): the hi
// and lo words of its 8 quads, their scales t and the sum of the values the block stands
// for.
struct HQ8 {
    h0: vec4<u32>,
    h1: vec4<u32>,
    l0: vec4<u32>,
    l1: vec4<u32>,
    t0: vec4<f32>,
    t1: vec4<f32>,
    sum: f32,
}

// Block b of the quad 8+8-bit row of nb blocks starting at vec4 `row` of x.
fn load_hq8(row: u32, b: u32, nb: u32) -> HQ8 {
    let i = row + b;
    let s = x[i + 6u * nb] + x[i + 7u * nb];
    return HQ8(bitcast<vec4<u32>>(x[i]), bitcast<vec4<u32>>(x[i + nb]),
               bitcast<vec4<u32>>(x[i + 2u * nb]), bitcast<vec4<u32>>(x[i + 3u * nb]),
               x[i + 4u * nb], x[i + 5u * nb], dot(s, vec4<f32>(1.0)));
}

// The codes of octet u of a 5- or 6-bit row whose codes start at word `row`, spread into
// bytes: (the even values' codes, the odd values'). The octet's 8 * BITS bits (within two
// words) split into four pairs of codes, spread into 16-bit slots, whose even and odd
// codes are then gathered into a word of bytes each.
fn spread56(row: u32, u: u32) -> vec2<u32> {
    let wi = row + octet_word(u);
    let sh = octet_shift(u);
    let w0 = ws[wi];
    let w1 = ws[wi + 1u];
    let lo32 = select(w0, (w0 >> sh) | (w1 << (32u - sh)), sh != 0u);
    let hi32 = w1 >> sh;
    // Pairs 0, 1 in the low 4 * BITS bits of h0; pairs 2, 3 in h1. (The shifts masked to
    // 0..31: this function is compiled, not called, for 8-bit codes too, where a constant
    // shift by 32 would not validate.)
    let h0 = lo32;
    let h1 = (lo32 >> ((4u * BITS) & 31u)) | (hi32 << ((32u - 4u * BITS) & 31u));
    let pm = (1u << (2u * BITS)) - 1u;
    let s0 = (h0 & pm) | (((h0 >> (2u * BITS)) & pm) << 16u);
    let s1 = (h1 & pm) | (((h1 >> (2u * BITS)) & pm) << 16u);
    let mm = ((1u << BITS) - 1u) * 0x10001u;
    let e0 = s0 & mm;
    let e1 = s1 & mm;
    let o0 = (s0 >> BITS) & mm;
    let o1 = (s1 >> BITS) & mm;
    // Codes at bits 0 and 16 of two words -> bytes 0..3 of one.
    let even = (e0 & 0xffu) | ((e0 >> 8u) & 0xff00u) | ((e1 & 0xffu) << 16u)
        | ((e1 << 8u) & 0xff000000u);
    let odd = (o0 & 0xffu) | ((o0 >> 8u) & 0xff00u) | ((o1 & 0xffu) << 16u)
        | ((o1 << 8u) & 0xff000000u);
    return vec2<u32>(even, odd);
}

// The codes of the 4 octets of block b of a 2- to 6-bit row r spread into bytes: field k
// of `e` holds octet k's even values' codes, of `o` its odd values' (the order of the
// 8+8-bit layouts' words). Shared by the 8+8-bit x path (`row_block_q8`) and the quad h
// path (`row_block_hq8`); one function for both measured the same on an H200, 3-bit
// mat-vecs 5% faster.
struct Spread {
    e: vec4<u32>,
    o: vec4<u32>,
}

fn block_spreads(q_word: u32, cols: u32, r: u32, b: u32) -> Spread {
    if (BITS == 2u) {
        // Octets are the 16-bit halves of the block's two words. An octet's 4 nibbles
        // (pairs of codes) spread into 4 bytes, whose low 2 bits are the even values'
        // codes and the next 2 bits the odd values'.
        let wi = q_word + r * (cols / 16u) + b * 2u;
        let q = w[wi >> 2u];
        let pair = select(q.xy, q.zw, (wi & 2u) != 0u);
        let u = vec4<u32>(pair.x, pair.x >> 16u, pair.y, pair.y >> 16u) & vec4<u32>(0xffffu);
        var s = (u | (u << vec4<u32>(8u))) & vec4<u32>(0x00ff00ffu);
        s = (s | (s << vec4<u32>(4u))) & vec4<u32>(0x0f0f0f0fu);
        return Spread(s & vec4<u32>(0x03030303u), (s >> vec4<u32>(2u)) & vec4<u32>(0x03030303u));
    }
    if (BITS == 3u) {
        // Octets are the 24-bit quarters of the block's three words. An octet's four
        // 6-bit pairs of codes spread into 4 bytes, whose low 3 bits are the even values'
        // codes and the next 3 bits the odd values'.
        let wi = q_word + r * (cols * 3u / 32u) + b * 3u;
        let w0 = ws[wi];
        let w1 = ws[wi + 1u];
        let w2 = ws[wi + 2u];
        let u = vec4<u32>(w0 & 0xffffffu, (w0 >> 24u) | ((w1 & 0xffffu) << 8u),
                          (w1 >> 16u) | ((w2 & 0xffu) << 16u), w2 >> 8u);
        var s = (u & vec4<u32>(0xfffu)) | ((u & vec4<u32>(0xfff000u)) << vec4<u32>(4u));
        s = (s & vec4<u32>(0x003f003fu)) | ((s & vec4<u32>(0x0fc00fc0u)) << vec4<u32>(2u));
        return Spread(s & vec4<u32>(0x07070707u), (s >> vec4<u32>(3u)) & vec4<u32>(0x07070707u));
    }
    if (BITS == 5u || BITS == 6u) {
        let row = q_word + r * (cols * BITS / 32u);
        let s0 = spread56(row, 4u * b);
        let s1 = spread56(row, 4u * b + 1u);
        let s2 = spread56(row, 4u * b + 2u);
        let s3 = spread56(row, 4u * b + 3u);
        return Spread(vec4<u32>(s0.x, s1.x, s2.x, s3.x), vec4<u32>(s0.y, s1.y, s2.y, s3.y));
    }
    // 4 bits: each word is an octet, its low nibbles the even values.
    let q = w[(q_word + r * (cols / 8u) + b * 4u) >> 2u];
    let m = vec4<u32>(0x0f0f0f0fu);
    return Spread(q & m, (q >> vec4<u32>(4u)) & m);
}

// 254 dot(c, hi) + dot(c, lo) for the 4 codes (bytes) of c and a quad's hi and lo words:
// the quad's dot product in units of its t (exact: at most 4 * 63 * 127 * 255 < 2^24).
fn quad_dots(c: vec4<u32>, hi: vec4<u32>, lo: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(
        f32(254 * dot4I8Packed(c.x, hi.x) + dot4I8Packed(c.x, lo.x)),
        f32(254 * dot4I8Packed(c.y, hi.y) + dot4I8Packed(c.y, lo.y)),
        f32(254 * dot4I8Packed(c.z, hi.z) + dot4I8Packed(c.z, lo.z)),
        f32(254 * dot4I8Packed(c.w, hi.w) + dot4I8Packed(c.w, lo.w)),
    );
}

// `row_block` for a 2- to 6-bit row and a block of h in the quad 8+8-bit layout.
fn row_block_hq8(q_word: u32, s_word: u32, b_word: u32, cols: u32, r: u32, b: u32,
                 hq: HQ8) -> f32 {
    let s = block_spreads(q_word, cols, r, b);
    // Quads 0..3 are the even and odd halves of octets 0 and 1; 4..7 of octets 2 and 3.
    let d0 = quad_dots(vec4<u32>(s.e.x, s.o.x, s.e.y, s.o.y), hq.h0, hq.l0);
    let d1 = quad_dots(vec4<u32>(s.e.z, s.o.z, s.e.w, s.o.w), hq.h1, hq.l1);
    let sb = block_scale_bias(s_word, b_word, cols, r, b);
    return sb.x * (dot(d0, hq.t0) + dot(d1, hq.t1)) + sb.y * hq.sum;
}

// `row_block_hq8` for the team's first team_rows() of `rows` (the other sums are 0).
fn rows_block_hq8_n(q_word: u32, s_word: u32, b_word: u32, cols: u32, rows: vec4<u32>,
                    b: u32, hq: HQ8) -> vec4<f32> {
    let first = row_block_hq8(q_word, s_word, b_word, cols, rows.x, b, hq);
    if (ROWS == 4u) {
        return vec4<f32>(first, row_block_hq8(q_word, s_word, b_word, cols, rows.y, b, hq),
                         row_block_hq8(q_word, s_word, b_word, cols, rows.z, b, hq),
                         row_block_hq8(q_word, s_word, b_word, cols, rows.w, b, hq));
    }
    if (ROWS == 2u) {
        return vec4<f32>(first, row_block_hq8(q_word, s_word, b_word, cols, rows.y, b, hq),
                         0.0, 0.0);
    }
    return vec4<f32>(first, 0.0, 0.0, 0.0);
}
