// Shared by kernels that read weights (prepended by the loader; not a kernel itself).
// Weight element type: 0 = f32, 1 = f16, 2 = bf16. Weights are bound as array<u32>;
// 16-bit elements are packed two per word, the even element in the low half.
// f16 is decoded with integer operations rather than unpack2x16float, which some drivers
// (llvmpipe without native f16) do not offer; the conversion is exact.
override WDT: u32 = 0u;

// The f32 value of the f16 bit pattern in the low 16 bits of h.
fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let em = h & 0x7fffu;
    // Normal numbers: rebias the exponent from 15 to 127 (add 112 << 10), widen the mantissa.
    let normal = bitcast<f32>(sign | ((em + 0x1c000u) << 13u));
    // Zero and subnormals: mantissa * 2^-24, exact in f32.
    let sub = f32(em) * 5.9604644775390625e-8;
    let inf_nan = bitcast<f32>(sign | 0x7f800000u | ((h & 0x3ffu) << 13u));
    var v = select(normal, select(sub, -sub, sign != 0u), em < 0x400u);
    return select(v, inf_nan, em >= 0x7c00u);
}

fn decode_half(word: u32, hi: bool) -> f32 {
    let bits = select(word & 0xffffu, word >> 16u, hi);
    if (WDT == 1u) {
        return f16_to_f32(bits);
    }
    return bitcast<f32>(bits << 16u);
}

// Both elements of a packed 16-bit word.
fn decode_pair(word: u32) -> vec2<f32> {
    if (WDT == 1u) {
        return vec2<f32>(f16_to_f32(word & 0xffffu), f16_to_f32(word >> 16u));
    }
    return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}
