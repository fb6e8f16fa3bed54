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
