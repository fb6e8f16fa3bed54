// f16 to f32 by the hardware (the f16 variant, for adapters that convert f16 natively:
// wgpu's SHADER_F16_IN_F32 downlevel flag; prepended before dtype.wgsl; not a kernel
// itself). Exact, as the integer conversion of half_int.wgsl.

// The f32 value of the f16 bit pattern in the low 16 bits of h.
fn f16_to_f32(h: u32) -> f32 {
    return unpack2x16float(h).x;
}
