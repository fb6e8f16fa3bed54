//! Each kernel's dispatch grid (`*_groups`, named after the kernel) and the workgroup
//! shapes and tuning choices behind them (rows per team, team sizes, tiles), so callers
//! need not know workgroup shapes.

use super::*;

/// Invocations per workgroup of the team kernels ([`Kernel::QMatVec`],
/// [`Kernel::MoeGateUpQ`], [`Kernel::MoeDownQ`]); each team computes 4 rows.
pub const TEAM_WG: u32 = 64;
/// Rows and tokens per workgroup tile of [`Kernel::QMatMul`] (`TR`, `TT` in
/// `kernels/qmatmul.wgsl`).
const QMATMUL_ROWS: u32 = 64;
const QMATMUL_TOKENS: u32 = 32;
/// Output octets (8 values) per workgroup of [`Kernel::QEmbedding`] (its workgroup size).
const QEMBEDDING_OCTETS: u32 = 64;

/// Logits per workgroup of [`Kernel::TopK`].
pub const TOPK_CHUNK: u32 = 2048;

/// Most chunks of [`Kernel::TopK`]'s output [`Kernel::TokenSample`] merges (`MAX_CHUNKS` in
/// `kernels/token_sample.wgsl`): vocabularies up to 2M tokens.
pub const TOKEN_SAMPLE_MAX_CHUNKS: u32 = 1024;

/// Grid of [`Kernel::TopK`] over a vocabulary of `n_vocab` logits.
pub fn topk_groups(n_vocab: u32) -> (u32, u32) {
    (n_vocab.div_ceil(TOPK_CHUNK).max(1), 1)
}

/// Grid of [`Kernel::MoeCombineNorm`] over a row of `hidden` values (256 per workgroup, 8
/// blocks of the 8+8-bit layout).
pub fn moe_combine_norm_groups(hidden: u32) -> u32 {
    hidden.div_ceil(256).max(1)
}

/// Most key ranges per head of the split decode attention (`kernels/attention_merge.wgsl`
/// holds one weight per range in workgroup memory).
pub const ATTENTION_MAX_SPLITS: u32 = 256;

/// Key ranges of the split decode attention ([`Kernel::AttentionSplit`], grid
/// `(n_heads, n_splits)`) over `n_keys` keys: `(chunk, n_splits)`, `chunk` keys per range
/// (a multiple of 16), about 2048 workgroups in all but no range shorter than 16 keys, and at
/// most [`ATTENTION_MAX_SPLITS`] ranges. Each range's keys are a serial chain of 16-key
/// steps, so long contexts want many short ranges: on an H200 with Qwen3-30B-A3B's 32
/// heads, 2001 keys took 33.9 us (split + merge) over 512 workgroups and 24.8 over 2048;
/// 8001 keys 113.7 and 60.7 us (`cargo bench --bench latency`).
pub fn attention_splits(n_keys: u32, n_heads: u32) -> (u32, u32) {
    let target = attention_most_splits(n_heads);
    let chunk = n_keys.max(1).div_ceil(target).div_ceil(16) * 16;
    (chunk, n_keys.max(1).div_ceil(chunk))
}

/// Grid of [`Kernel::AttentionMerge`]: one workgroup per head and 16 dims.
pub fn attention_merge_groups(n_heads: u32, head_dim: u32) -> (u32, u32) {
    (n_heads, head_dim.div_ceil(16).max(1))
}

/// f32 values of the partial softmax states [`Kernel::AttentionSplit`] writes for one
/// decode step: `(head_dim + 2)` per head and key range.
pub fn attention_part_floats(n_heads: u32, head_dim: u32) -> u64 {
    u64::from(n_heads) * u64::from(attention_most_splits(n_heads)) * u64::from(head_dim + 2)
}

/// Key ranges per head of the split decode attention at most: about 2048 workgroups in all.
fn attention_most_splits(n_heads: u32) -> u32 {
    (2048 / n_heads.max(1)).clamp(1, ATTENTION_MAX_SPLITS)
}

/// The 2-D grid the engine launches `n` workgroups as, within the 65535-per-dimension
/// limit and with rows as even as possible (kernels linearize it as
/// `wid.x + wid.y * num_workgroups.x`).
pub fn grid(n: u32) -> (u32, u32) {
    grid_of(n)
}

/// Grid of [`Kernel::Copy`] over `vec4_words` 16-byte words.
pub fn copy_groups(vec4_words: u32) -> (u32, u32) {
    grid_of(vec4_words.div_ceil(256))
}

/// The team size (invocations per 4 rows, the `team` parameter) of the team kernels in the
/// portable variant for rows of `cols` codes: about two 32-code blocks per invocation, so
/// that small matrices still spread over many invocations. (The subgroup variant's team is
/// the subgroup.)
pub fn portable_team(cols: u32) -> u32 {
    (cols / 32)
        .div_ceil(2)
        .next_power_of_two()
        .clamp(4, TEAM_WG)
}

/// Rows per workgroup of the team kernels with teams of `team` invocations of
/// `rows_per_team` rows each (4, 2 or 1; other values mean 1, as in the kernels).
fn team_rows(team: u32, rows_per_team: u32) -> u32 {
    let per_team = match rows_per_team {
        4 => 4,
        2 => 2,
        _ => 1,
    };
    per_team * (TEAM_WG / team.clamp(1, TEAM_WG))
}

/// Whether [`Kernel::QMatVec`] takes the whole 64-invocation workgroup as one team (in the
/// subgroup variant, several subgroups whose sums are added through workgroup memory) for
/// a chunk of `rows` rows of `cols` codes, rather than one subgroup: for rows of at least
/// 2048 codes (a block for each of 64 lanes) in matrices of 256 to 2048 rows, whose
/// one-subgroup teams are too few to keep the GPU's loads in flight. Measured on an H200
/// (4-bit, 2 rows per team, 32-lane subgroups): 1024x4096 5.60 -> 4.82 us, 512x4096
/// 5.46 -> 4.63, 2048x4096 5.85 -> 5.38, 768x2048 4.28 -> 4.02; slower for 4096x4096
/// (6.64 -> 6.83), 4096x1024 (4.38 -> 5.24) and 2048x768 (3.80 -> 4.50). The router's
/// 128x2048 measured 4.01 -> 3.80 us alone but 3.13 -> 3.28 in a decode-like chain of
/// dispatches (`cargo bench --bench latency`), so it keeps one subgroup.
pub fn qmatvec_wide_team(rows: u32, cols: u32) -> bool {
    cols >= 2048 && (256..=2048).contains(&rows)
}

/// Rows per team of [`Kernel::QMatVec`] (its `ROWS` pipeline constant) for a chunk of
/// `rows` rows: 2, or 1 for a chunk of fewer than 64 rows. Measured on an H200 with
/// 4-bit weights: 2 rows per team is the fastest of 4, 2 and 1 at every shape tried
/// (128x2048 to 65536x4096; 65536x4096: 42.0 us with 2, 45.1 with 4, 50.6 with 1); with
/// 8-bit weights 4 and 2 are within 1%.
pub fn qmatvec_rows_per_team(rows: u32) -> u32 {
    if rows >= 64 {
        2
    } else {
        1
    }
}

/// Grid of [`Kernel::QMatVec`] for a chunk of `rows` rows with teams of `team` invocations
/// of `rows_per_team` rows each (any count: past 65535 workgroups the grid is 2-D, which
/// the kernel linearizes).
pub fn qmatvec_groups(rows: u32, team: u32, rows_per_team: u32) -> (u32, u32) {
    grid_of(rows.div_ceil(team_rows(team, rows_per_team)))
}

/// Grid of a batch of per-head mat-vecs ([`Kernel::QMatVec`] or [`Kernel::MatVec`] with
/// `heads` > 0): `blocks` workgroups per head's rows (for `QMatVec`, `rows` over the rows
/// of its teams, [`qmatvec_head_blocks`]; for `MatVec`, `rows`), then the heads and the
/// tokens.
pub fn head_batch_groups(blocks: u32, heads: u32, tokens: u32) -> (u32, u32, u32) {
    (blocks.max(1), heads.max(1), tokens.max(1))
}

/// Workgroups of a batched [`Kernel::QMatVec`] per head of `rows` rows.
pub fn qmatvec_head_blocks(rows: u32, team: u32, rows_per_team: u32) -> u32 {
    rows.div_ceil(team_rows(team, rows_per_team))
}

/// Grid of [`Kernel::AttentionTiled`]: one workgroup per head and 16 queries.
pub fn attention_tiled_groups(n_heads: u32, n_tokens: u32) -> (u32, u32) {
    (n_heads, n_tokens.div_ceil(16).max(1))
}

/// Assignments per tile of the prefill expert mat-mat kernels.
pub const MOE_QMM_TILE: usize = 32;

/// The tiles of [`Kernel::MoeGateUpQmm`] / [`Kernel::MoeDownQmm`] over assignments
/// `start .. start + slots.len()` whose cache slots are `slots` (an expert's assignments
/// consecutive): (first assignment, count) pairs of at most [`MOE_QMM_TILE`] assignments
/// of one slot each, flattened.
pub fn moe_qmm_tiles(start: u32, slots: &[u32]) -> Vec<u32> {
    let mut tiles = Vec::new();
    let mut i = 0;
    while i < slots.len() {
        let mut j = i + 1;
        while j < slots.len() && j - i < MOE_QMM_TILE && slots[j] == slots[i] {
            j += 1;
        }
        tiles.extend([start + i as u32, (j - i) as u32]);
        i = j;
    }
    tiles
}

/// Grid of [`Kernel::MoeGateUpQmm`] for `n_tiles` tiles (at most 65535) of experts of
/// `inter` rows.
pub fn moe_gate_up_qmm_groups(inter: u32, n_tiles: u32) -> (u32, u32) {
    (inter.div_ceil(32).max(1), n_tiles.max(1))
}

/// Grid of [`Kernel::MoeDownQmm`] for `n_tiles` tiles (at most 65535) of experts of
/// `hidden` rows.
pub fn moe_down_qmm_groups(hidden: u32, n_tiles: u32) -> (u32, u32) {
    (hidden.div_ceil(64).max(1), n_tiles.max(1))
}

/// The `WDT` override code of the quantized kernels for MXFP4 weights (`BITS` 4, `GROUP`
/// 32): FP4 (e2m1) codes, one e8m0 scale byte per block, no biases
/// (`kernels/include/quant.wgsl`).
pub const WDT_MXFP4: u32 = 3;

/// The `WDT` code of FP8 weights with block scales (with `BITS` 8 and `GROUP` 128): e4m3
/// codes, one f32 scale per 128 x 128 block, no biases (`kernels/include/quant.wgsl`).
pub const WDT_FP8: u32 = 4;

/// Whether decode mat-vecs of `bits`-bit weights can read the 8+8-bit activation layout
/// (`kernels/include/interleave.wgsl`) and dot it with integer dot products: 2 to 6 bits,
/// whose codes the kernels spread into bytes (`row_block_q8` in
/// `kernels/include/qblock.wgsl`; with 8 bits the kernels write NaN).
pub fn reads_q8_activations(bits: u32) -> bool {
    matches!(bits, 2..=6)
}

/// Whether [`Kernel::MoeGateUpQ`] can write h in the quad 8+8-bit layout
/// (`kernels/include/interleave.wgsl`, its flags bit 3) with teams of `team` invocations of
/// `rows_per_team` rows: a workgroup must compute whole quads of 4 rows. The layout serves
/// a 2- to 6-bit down projection ([`reads_q8_activations`] of its width; [`Kernel::MoeDownQ`]
/// flags bit 1), which then dots h with integer dot products.
pub fn writes_quad_h(team: u32, rows_per_team: u32) -> bool {
    team_rows(team, rows_per_team) % 4 == 0
}

/// Rows per team of the expert kernels ([`Kernel::MoeGateUpQ`], [`Kernel::MoeDownQ`];
/// their `ROWS` pipeline constant) for experts of `rows` rows per projection: a decode
/// step's 8 experts spread over more invocations than one matrix, so experts take more
/// rows per team than a single mat-vec of their shape (measured on an H200 with the 8
/// experts of Qwen3-30B-A3B: gate/up of 768 rows 12.4 -> 9.3 us with 2 rows instead of 4,
/// 1 row slower; down of 2048 rows fastest with 4).
pub fn expert_rows_per_team(rows: u32) -> u32 {
    if rows >= 2048 {
        4
    } else {
        2
    }
}

/// Fewest workgroups an expert kernel's grid keeps when [`expert_team`] takes teams smaller
/// than a subgroup: about 10 per streaming multiprocessor of an H200, below which its loads
/// in flight, not the work per invocation, bound the kernel.
const EXPERT_MIN_WORKGROUPS: u32 = 1280;

/// The team size of the expert kernels ([`Kernel::MoeGateUpQ`], [`Kernel::MoeDownQ`]) in the
/// subgroup variant, for `count` assignments of experts of `rows` rows of `cols` codes per
/// projection with `rows_per_team` rows per team: the smallest power of two from 8 below
/// the subgroup size that divides the row's 32-code blocks evenly and still leaves the grid
/// `EXPERT_MIN_WORKGROUPS` (1280) workgroups, else the subgroup. A team of part of a
/// subgroup does more blocks per invocation and fewer shuffles per block, and leaves no
/// lane idle where a row has fewer blocks than a subgroup has lanes (the 24 blocks of a
/// 768-code row). Measured on an H200 (4-bit, 32-lane subgroups; `cargo bench --bench
/// qmatvec -- --teams`): down of 128 experts 2048x768 56.5 -> 40.3 us with teams of 8, of
/// 32 17.2 -> 15.1, of 10 experts 4096x1024 13.2 -> 11.9; gate/up of 128 experts 768x2048
/// 74.4 -> 66.8 (teams of 8), of 10 experts 1024x4096 19.9 -> 18.2 (16). With fewer
/// workgroups the subgroup is faster: gate/up of 8 experts 768x2048 8.7 us, 10.0 with
/// teams of 16; and teams that split a row's blocks unevenly are slower (down 2048x768
/// with teams of 16: 62.7 us for 128 experts).
pub fn expert_team(subgroup: u32, rows: u32, cols: u32, count: u32, rows_per_team: u32) -> u32 {
    let blocks = cols / 32;
    let mut team = 8;
    while team < subgroup {
        let groups = rows
            .div_ceil(team_rows(team, rows_per_team))
            .saturating_mul(count);
        if blocks % team == 0 && groups >= EXPERT_MIN_WORKGROUPS {
            return team;
        }
        team *= 2;
    }
    subgroup
}

/// Rows and tokens per workgroup tile of [`Kernel::QMatMulCoop`] (`TR`, `TT` in
/// `kernels/qmatmul_coop.wgsl`).
const QMATMUL_COOP_TILE: u32 = 64;

/// Grid of [`Kernel::QMatMulCoop`] for a chunk of `rows` rows and `n_tokens` tokens.
pub fn qmatmul_coop_groups(rows: u32, n_tokens: u32) -> (u32, u32) {
    (
        rows.div_ceil(QMATMUL_COOP_TILE).max(1),
        n_tokens.div_ceil(QMATMUL_COOP_TILE).max(1),
    )
}

/// Grid of [`Kernel::QMatMul`] for a chunk of `rows` rows and `n_tokens` tokens
/// (`rows <= 65535 * 64`, `n_tokens <= 65535 * 32`).
pub fn qmatmul_groups(rows: u32, n_tokens: u32) -> (u32, u32) {
    (
        rows.div_ceil(QMATMUL_ROWS).max(1),
        n_tokens.div_ceil(QMATMUL_TOKENS).max(1),
    )
}

/// Grid of [`Kernel::QEmbedding`] for `n_tokens` tokens of `hidden` columns (a multiple of
/// the group size, so of 8).
pub fn qembedding_groups(hidden: u32, n_tokens: u32) -> (u32, u32) {
    grid_of((hidden / 8 * n_tokens).div_ceil(QEMBEDDING_OCTETS))
}

/// Grid of [`Kernel::MoeGateUpQ`] for `n_assign` assignments (at most 65535 per dispatch)
/// of `inter` rows each, with teams of `team` invocations of `rows_per_team` rows
/// ([`expert_rows_per_team`]).
pub fn moe_gate_up_q_groups(
    inter: u32,
    n_assign: u32,
    team: u32,
    rows_per_team: u32,
) -> (u32, u32) {
    (
        inter.div_ceil(team_rows(team, rows_per_team)).max(1),
        n_assign.max(1),
    )
}

/// Grid of [`Kernel::MoeDownQ`] for `n_assign` assignments (at most 65535 per dispatch) of
/// `hidden` rows each, with teams of `team` invocations of `rows_per_team` rows
/// ([`expert_rows_per_team`]).
pub fn moe_down_q_groups(hidden: u32, n_assign: u32, team: u32, rows_per_team: u32) -> (u32, u32) {
    (
        hidden.div_ceil(team_rows(team, rows_per_team)).max(1),
        n_assign.max(1),
    )
}

/// Channels per workgroup of [`Kernel::Conv1dSilu`] (its workgroup size).
const CONV1D_CHANNELS: u32 = 64;
/// Tokens per invocation of [`Kernel::Conv1dSilu`] (`TCHUNK` in `kernels/conv1d_silu.wgsl`).
const CONV1D_TOKENS: u32 = 16;
/// Widest convolution [`Kernel::Conv1dSilu`] computes (`KMAX`; Qwen3.5 and Qwen3-Next use 4).
pub const CONV1D_MAX_KERNEL: u32 = 8;

/// Grid of [`Kernel::Conv1dSilu`] over `channels` channels (at most 65535 * 64) and
/// `n_tokens` tokens (at most 65535 * 16): one invocation per channel and 16 tokens.
pub fn conv1d_silu_groups(channels: u32, n_tokens: u32) -> (u32, u32) {
    (
        channels.div_ceil(CONV1D_CHANNELS).max(1),
        n_tokens.div_ceil(CONV1D_TOKENS).max(1),
    )
}

/// State columns per workgroup of [`Kernel::GatedDeltaNet`] (`CB` in
/// `kernels/gated_delta_net.wgsl`).
const DELTA_NET_COLUMNS: u32 = 16;
/// Largest key head dim (Dk) [`Kernel::GatedDeltaNet`] computes: an invocation holds 16
/// rows of a state column in registers, 16 invocations per column.
pub const DELTA_NET_MAX_KEY_DIM: u32 = 256;

/// Grid of [`Kernel::GatedDeltaNet`] for `value_heads` value heads (at most 65535) of
/// `value_dim` dims: one 256-invocation workgroup per value head and 16 state columns
/// (`(Dv / 16, Hv)` rounded up), for any number of tokens.
pub fn gated_delta_net_groups(value_heads: u32, value_dim: u32) -> (u32, u32) {
    (
        value_dim.div_ceil(DELTA_NET_COLUMNS).max(1),
        value_heads.max(1),
    )
}

/// Grid of [`Kernel::GatedRmsNorm`]: one workgroup per value head and token (`n_tokens` at
/// most 65535).
pub fn gated_rmsnorm_groups(value_heads: u32, n_tokens: u32) -> (u32, u32) {
    (value_heads.max(1), n_tokens.max(1))
}
