// Shared by the kernels that read MLX affine-quantized weights (prepended by the loader
// after dtype.wgsl; not a kernel itself).
//
// A quantized [rows, cols] matrix: each row is a little-endian, least-significant-bit-first
// stream of BITS-bit unsigned codes in u32 words (cols * BITS / 32 words per row; codes of
// 3, 5 and 6 bits straddle words), and per group of GROUP columns of a row a scale s and a
// bias b (in the WDT dtype, see dtype.wgsl) with w = s * q + b.
//
// The kernels work on octets: 8 consecutive columns of a row. An octet's 8 * BITS bits
// start at bit 8 * BITS * u of the row (u the octet's index), i.e. at bit 0, 8, 16 or 24 of
// a word, and end within the next word at the latest (8 * BITS <= 64, and the start offset
// is 0 or 16 when BITS = 6, 0 when BITS = 8). Every octet lies inside one group (GROUP is a
// multiple of 32).
//
// BITS (2, 3, 4, 5, 6 or 8) and GROUP (32, 64 or 128) have no default: a pipeline must set
// them (`Kernel::constants`).
//
// MXFP4 (WDT = 3, with BITS 4 and GROUP 32): the codes are FP4 (e2m1, bit 3 the sign,
// `fp4`), packed as 4-bit codes are; the scales are e8m0 bytes (2^(s - 127)), four per
// word, the first in the low byte; there are no biases (`block_scale_bias` gives 0).
//
// FP8 with block scales (WDT = 4, with BITS 8 and GROUP 128; DeepSeek-V3's released
// weights): the codes are e4m3 bytes (`e4m3`); one f32 scale per block of 128 x 128
// (rows x columns), the blocks of a row of blocks in order, `ceil(cols / 128)` per row of
// blocks (`group_index`); no biases. A matrix's row chunks start on a row of blocks.
override BITS: u32;
override GROUP: u32;

// Whether the format has biases (affine codes; not MXFP4 or FP8).
fn has_biases() -> bool {
    return WDT < 3u;
}

// The index of the scale (and bias) of column k of row r in a matrix of `cols` columns:
// per group of GROUP columns of a row, or for FP8 per 128 x 128 block.
fn group_index(r: u32, cols: u32, k: u32) -> u32 {
    if (WDT == 4u) {
        return (r >> 7u) * ((cols + 127u) >> 7u) + (k >> 7u);
    }
    return r * (cols / GROUP) + k / GROUP;
}

// The values of the e4m3 codes in the low 8 bits of each lane (higher bits ignored): sign
// bit 7, exponent bits 6..3 (bias 7), mantissa bits 2..0. Normal values 2^(e - 7)
// (1 + m / 8): the 7 bits placed under the f32 exponent rebiased by 120; subnormal ones
// (e = 0) m / 8 * 2^-6, computed apart (a denormal f32 may be flushed). (0x7f, NaN in
// e4m3, reads as 480: no checkpoint stores it.)
fn e4m3(c: vec4<u32>) -> vec4<f32> {
    let mag = c & vec4<u32>(0x7fu);
    let normal = bitcast<vec4<f32>>((mag << vec4<u32>(20u)) + vec4<u32>(120u << 23u));
    let sub = vec4<f32>(mag) * (1.0 / 512.0);
    let v = select(normal, sub, mag < vec4<u32>(8u));
    return bitcast<vec4<f32>>(bitcast<vec4<u32>>(v) | ((c & vec4<u32>(0x80u)) << vec4<u32>(24u)));
}

// The 4 e4m3 bytes of word v, the first the lowest.
fn e4m3_word(v: u32) -> vec4<f32> {
    return e4m3(vec4<u32>(v) >> vec4<u32>(0u, 8u, 16u, 24u));
}

// Word index (from the start of the buffer) of element e of a scales/biases part that
// starts at word `base`: 16-bit elements are packed two per word, the even one low.
fn scale_word(base: u32, e: u32) -> u32 {
    if (WDT == 0u || WDT == 4u) {
        return base + e;
    }
    if (WDT == 3u) {
        return base + (e >> 2u);
    }
    return base + (e >> 1u);
}

// The value of element e, given the word `scale_word` named.
fn scale_value(word: u32, e: u32) -> f32 {
    if (WDT == 0u || WDT == 4u) {
        return bitcast<f32>(word);
    }
    if (WDT == 3u) {
        // e8m0: the byte is the f32 exponent field (0, i.e. 2^-127, reads as 0).
        return bitcast<f32>(((word >> (8u * (e & 3u))) & 0xffu) << 23u);
    }
    return decode_half(word, (e & 1u) == 1u);
}

// Bit offset of octet u inside its row's bit stream, split into (word, bit in word).
fn octet_word(u: u32) -> u32 {
    return (u * 8u * BITS) >> 5u;
}

fn octet_shift(u: u32) -> u32 {
    return (u * 8u * BITS) & 31u;
}

// Whether an octet starting at bit `shift` of its first word continues into the next.
fn octet_spills(shift: u32) -> bool {
    return shift + 8u * BITS > 32u;
}

// The code at bit p (p + BITS <= 64) of the 64-bit stream (hi << 32) | lo.
fn code_at(lo: u32, hi: u32, p: u32) -> f32 {
    let mask = (1u << BITS) - 1u;
    var v: u32;
    if (p >= 32u) {
        v = hi >> (p - 32u);
    } else if (p + BITS <= 32u) {
        v = lo >> p;
    } else {
        // Straddles: p in 27..31 here, so both shifts are in range.
        v = (lo >> p) | (hi << (32u - p));
    }
    return f32(v & mask);
}

// The 8 codes of an octet as floats (columns 0..3 in .q0, 4..7 in .q1), given its first
// word w0, the next word w1 (only read when the octet spills into it) and its start bit.
struct Octet {
    q0: vec4<f32>,
    q1: vec4<f32>,
}

fn octet_codes(w0: u32, w1: u32, shift: u32) -> Octet {
    // Realign so that the octet starts at bit 0 of lo; hi holds the rest (at most 32 bits).
    var lo = w0;
    var hi = w1;
    if (shift != 0u) {
        lo = (w0 >> shift) | (w1 << (32u - shift));
        hi = w1 >> shift;
    }
    let b = BITS;
    return Octet(
        vec4<f32>(code_at(lo, hi, 0u), code_at(lo, hi, b), code_at(lo, hi, 2u * b),
                  code_at(lo, hi, 3u * b)),
        vec4<f32>(code_at(lo, hi, 4u * b), code_at(lo, hi, 5u * b), code_at(lo, hi, 6u * b),
                  code_at(lo, hi, 7u * b)),
    );
}

// The values of the FP4 (e2m1) codes in the low 4 bits of each lane (higher bits ignored):
// sign bit 3, exponent bits 2..1, mantissa bit 0; 0, 0.5, 1, 1.5, 2, 3, 4, 6. Magnitudes
// from 1 up are 2^(e - 1) (1 + m / 2): the 3 bits placed under the f32 exponent of 0.5;
// below 1 (e = 0) the code is m / 2.
fn fp4(c: vec4<u32>) -> vec4<f32> {
    let mag = c & vec4<u32>(7u);
    let big = bitcast<vec4<f32>>((mag << vec4<u32>(22u)) + vec4<u32>(0x3f000000u));
    let v = select(big, vec4<f32>(mag) * 0.5, mag < vec4<u32>(2u));
    return bitcast<vec4<f32>>(bitcast<vec4<u32>>(v) | ((c & vec4<u32>(8u)) << vec4<u32>(28u)));
}

// The 8 weights of an octet (its words w0, w1 and start bit as for `octet_codes`; sw and bw
// the words `scale_word` named for its group's scale and bias, e the group's index):
// s q + b for affine codes, s fp4(q) for MXFP4 (whose octets are whole words; bw unused),
// s e4m3(q) for FP8 (bw unused).
fn octet_weights(w0: u32, w1: u32, shift: u32, sw: u32, bw: u32, e: u32) -> Octet {
    let s = scale_value(sw, e);
    if (WDT == 4u) {
        // An 8-bit octet is two whole words.
        return Octet(s * e4m3_word(w0), s * e4m3_word(w1));
    }
    if (WDT == 3u) {
        let v = vec4<u32>(w0);
        return Octet(s * fp4(v >> vec4<u32>(0u, 4u, 8u, 12u)),
                     s * fp4(v >> vec4<u32>(16u, 20u, 24u, 28u)));
    }
    let q = octet_codes(w0, w1, shift);
    let b = scale_value(bw, e);
    return Octet(s * q.q0 + b, s * q.q1 + b);
}
