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
override BITS: u32;
override GROUP: u32;

// Word index (from the start of the buffer) of element e of a scales/biases part that
// starts at word `base`: 16-bit elements are packed two per word, the even one low.
fn scale_word(base: u32, e: u32) -> u32 {
    if (WDT == 0u) {
        return base + e;
    }
    return base + (e >> 1u);
}

// The value of element e, given the word `scale_word` named.
fn scale_value(word: u32, e: u32) -> f32 {
    if (WDT == 0u) {
        return bitcast<f32>(word);
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
