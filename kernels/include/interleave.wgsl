// The interleaved layout of a row of activations (prepended to the kernels that write or
// read it; not a kernel itself). The team kernels (include/qblock.wgsl) give lane l of a
// team the 32-value blocks l, l + team, ... of a row; each lane reads its block's 8 vec4s.
// In the natural layout those 8 loads are 128 bytes apart from lane to lane, so every
// load instruction of a team touches `team` cache lines. In the interleaved layout vec4 i
// of block b sits at vec4 index i * (n / 32) + b: the lanes of a team read consecutive
// vec4s, a few cache lines per instruction.
//
// A row holds n values (n a multiple of 32); value j of the row (block j / 32, vec4
// (j % 32) / 4 of the block, component j % 4) sits at `interleaved(j, n)` in the row.
fn interleaved(j: u32, n: u32) -> u32 {
    return 4u * (((j & 31u) >> 2u) * (n >> 5u) + (j >> 5u)) + (j & 3u);
}

// The 8+8-bit layout of one row (decode) for 2- to 6-bit weights: each 32-value block b
// of the row as x ~= t * (254 hi + lo), t = max |x| of the block / (127 * 254),
// hi = round(x / (254 t)) and lo = round(x / t - 254 hi), both in [-127, 127] (error at
// most max |x| / 64516), so that a row block of codes is dotted by 16 packed 4x8-bit
// integer dot products, exactly, instead of 32 float multiply-adds (include/qblock.wgsl,
// `row_block_q8`; other widths' codes are first spread into bytes). In u32 words:
// - vec4 j of block b at vec4 index j * nb + b (nb = n / 32, coalesced like the
//   interleaved layout): j = 0, 1 hold hi, j = 2, 3 lo, as 8 words each whose word 2k
//   packs the bytes of values 8k, 8k + 2, 8k + 4, 8k + 6 and word 2k + 1 those of values
//   8k + 1, 8k + 3, 8k + 5, 8k + 7 (the order in which a word of 4-bit codes splits into
//   its low and high nibbles);
// - then, at words 16 nb + 2b and 16 nb + 2b + 1, the f32 bits of t and of the sum of
//   the values the block stands for, t * (254 sum(hi) + sum(lo)) (for the bias term: with
//   the sum of the represented values rather than of x, the bias cancels the mean code's
//   share of the quantization error instead of adding it).
// A row takes 18 nb words.
//
// A row that kernels/moe_combine_norm.wgsl leaves for a norm the mat-vecs apply is
// followed by each block's sum of squares (of the norm's input): block b's at word
// 18 nb + b after an 8+8-bit row, at float n + b after an interleaved one.

// The quad 8+8-bit layout of a row of h (the expert kernels' intermediate, decode), for
// 2- to 6-bit down projections: as the 8+8-bit layout above, but with a scale t per quad
// of 4 values rather than per block, so that the gate/up workgroup computing a quad's
// values can write it without the rest of its block (a block's rows come from 8 or more
// workgroups). Quad j (0..7) of block b holds the values 32 b + 8 (j / 2) + (j % 2) + 2 r,
// r = 0..3: the 4 values of octet j / 2 that a word of 4-bit codes splits into (its low
// nibbles for even j, its high nibbles for odd j). Each quad is stored as hi and lo
// words (byte r: value r), t = max |v| / (127 * 254) and the sum of the values it stands
// for, t * (254 sum(hi) + sum(lo)); in u32 words, field f of quad j at word
// 4 ((2 f + j / 4) nb + b) + j % 4 (f = 0: hi, 1: lo, 2: t, 3: sum; nb = n / 32), so a
// block's 8 quads are 8 vec4s, coalesced across the lanes of a team as above. A row takes
// n words, as many as the f32 row.

// Value index (in the row) of value r of quad `quad` (block quad / 8, quad quad % 8).
fn quad_value(quad: u32, r: u32) -> u32 {
    return 32u * (quad >> 3u) + 8u * ((quad & 7u) >> 1u) + (quad & 1u) + 2u * r;
}

// Word index (in the row of nb blocks) of field f of quad `quad`.
fn quad_word(quad: u32, f: u32, nb: u32) -> u32 {
    return 4u * ((2u * f + ((quad & 7u) >> 2u)) * nb + (quad >> 3u)) + (quad & 3u);
}

// The four fields (hi, lo, t, sum) of the quad of values v, as words.
fn quad_q8(v: vec4<f32>) -> vec4<u32> {
    let m = abs(v);
    let amax = max(max(m.x, m.y), max(m.z, m.w));
    // hi = round(v * 127 / amax); lo = round(v / t - 254 hi), t = amax / (127 * 254).
    let k = select(0.0, 127.0 / amax, amax > 0.0);
    let lim = vec4<f32>(127.0);
    let hi = clamp(round(v * k), -lim, lim);
    let lo = clamp(round(v * (254.0 * k) - 254.0 * hi), -lim, lim);
    let t = amax / (127.0 * 254.0);
    let sum = dot(254.0 * hi + lo, vec4<f32>(1.0)) * t;
    return vec4<u32>(pack4xI8(vec4<i32>(hi)), pack4xI8(vec4<i32>(lo)), bitcast<u32>(t),
                     bitcast<u32>(sum));
}
