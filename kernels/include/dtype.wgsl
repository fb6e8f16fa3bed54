// Shared by kernels that read weights (prepended by the loader; not a kernel itself).
// Weight element type: 0 = f32, 1 = f16, 2 = bf16. Weights are bound as array<u32>;
// 16-bit elements are packed two per word, the even element in the low half.
override WDT: u32 = 0u;

fn decode_half(word: u32, hi: bool) -> f32 {
    if (WDT == 1u) {
        let v = unpack2x16float(word);
        return select(v.x, v.y, hi);
    }
    return bitcast<f32>(select(word << 16u, word & 0xffff0000u, hi));
}

// Both elements of a packed 16-bit word.
fn decode_pair(word: u32) -> vec2<f32> {
    if (WDT == 1u) {
        return unpack2x16float(word);
    }
    return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}
