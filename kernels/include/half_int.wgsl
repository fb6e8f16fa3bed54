// f16 to f32 by integer operations (the portable variant; prepended before dtype.wgsl; not
// a kernel itself). unpack2x16float is not used: some drivers (llvmpipe without native
// f16) do not offer it. The conversion is exact.

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

