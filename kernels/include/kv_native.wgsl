// The KV cache's element type (prepended to the kernels that write or read the KV cache
// in the variant with native f16 conversion; not a kernel itself). KVDT, an override
// constant: 0 for f32 elements, 1 for f16 ones (half the memory and the bytes read; an
// option of the engine, `ModelBuilder::kv_cache_dtype`). The caches are bound as arrays of
// vec4<u32>: 4 f32 elements or 8 f16 ones each. Head rows hold a multiple of 4 elements,
// so a quad of 4 consecutive elements of a head (index i, counted in quads from the
// buffer's start) is one vec4 of f32 or half of one vec4 of f16.
override KVDT: u32 = 0u;

// The vec4<u32> that holds quad i.
fn kv_word(i: u32) -> u32 {
    return select(i, i >> 1u, KVDT == 1u);
}

// Quad i as f32 values, from w, the vec4<u32> at kv_word(i).
fn kv_quad(w: vec4<u32>, i: u32) -> vec4<f32> {
    if (KVDT == 1u) {
        return kv_half4(select(w.xy, w.zw, (i & 1u) != 0u));
    }
    return bitcast<vec4<f32>>(w);
}

// An f16 quad (two words of f16 pairs) as f32 values: with KVDT = 1 and quads in pairs
// (an even quad index and the next), a vec4<u32> of the cache holds two quads, its .xy and
// its .zw, read with one load.
fn kv_half4(h: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(h.x), unpack2x16float(h.y));
}

// Elements a (even index) and b (the next) as the u32 that holds them in f16 (rounded to
// nearest, clamped to the finite f16 range: pack2x16float leaves larger values undefined).
fn kv_pack(a: f32, b: f32) -> u32 {
    let m = vec2<f32>(65504.0);
    return pack2x16float(clamp(vec2<f32>(a, b), -m, m));
}
