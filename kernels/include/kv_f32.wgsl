// The KV cache's element type for the portable variant (prepended to the kernels that write
// or read the KV cache; not a kernel itself): f32 only, since f16 conversion by
// unpack2x16float / pack2x16float is not available everywhere (see half_int.wgsl). The
// same interface as kv_native.wgsl; a pipeline given KVDT = 1 here reads NaN and writes
// NaN, so a wrong setting cannot pass for working.
override KVDT: u32 = 0u;

// The vec4<u32> that holds quad i.
fn kv_word(i: u32) -> u32 {
    return i;
}

// Quad i as f32 values, from w, the vec4<u32> at kv_word(i).
fn kv_quad(w: vec4<u32>, i: u32) -> vec4<f32> {
    if (KVDT != 0u) {
        return vec4<f32>(bitcast<f32>(0x7fc00000u));
    }
    return bitcast<vec4<f32>>(w);
}

// An f16 quad: not available in this variant (NaN).
fn kv_half4(h: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(bitcast<f32>(0x7fc00000u));
}

// The f16 pair word: not available in this variant (a NaN pattern).
fn kv_pack(a: f32, b: f32) -> u32 {
    return 0x7e007e00u;
}
