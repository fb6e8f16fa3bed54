// Shared by kernels that read weights (prepended by the loader; not a kernel itself).
// Weight element type: 0 = f32, 1 = f16, 2 = bf16. Weights are bound as array<u32>;
// 16-bit elements are packed two per word, the even element in the low half.
// f16 is converted by `f16_to_f32`, from half_int.wgsl (integer operations, portable) or
// half_native.wgsl (the hardware, with shader-f16), one of which is prepended before this.
override WDT: u32 = 0u;

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
