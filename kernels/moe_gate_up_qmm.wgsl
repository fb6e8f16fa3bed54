// Prefill expert gate/up projections with the SwiGLU activation over MLX affine-quantized
// experts, as a mat-mat over the assignments of one expert: for assignment a = (token,
// slot) of tile `wid.y`, h[a, i] = silu(dot(G[i, :], x[token])) * dot(U[i, :], x[token]),
// G and U [inter, hidden] of the expert in `slot` of this cache page (laid out as in
// moe_gate_up_q.wgsl). One read of a tile of the expert's weights serves up to 32 of its
// assignments, where the mat-vec kernel reads the weights once per assignment.
//
// tiles[2 (tile_base + wid.y)] and [.. + 1] are the tile's first assignment and count
// (1..32); all the assignments of a tile share one slot. A workgroup of 16x16 threads
// computes 32 rows of G and of U for the tile's assignments, each thread 2 rows x 2
// assignments of both, over K tiles of 32 columns (one block: BITS whole words per row,
// one group): per K tile, each thread dequantizes one octet of G (threads 0..127) or U
// (128..255) into workgroup memory and stores 4 values of x; the loads of both are issued
// a K tile ahead, before the previous tile's products (include/qtile.wgsl).
struct Params {
    hidden: u32,
    inter: u32,
    tile_base: u32,
    slot_words: u32,
    gate_q: u32,
    gate_s: u32,
    gate_b: u32,
    up_q: u32,
    up_s: u32,
    up_b: u32,
    act: u32,       // bit 0: biases, bit 1: clamped SwiGLU (include/expert_act.wgsl)
    gate_bias: u32, // word offset of the gate bias (f32) inside a slot
    up_bias: u32,   // word offset of the up bias (f32) inside a slot
    alpha: f32,
    limit: f32,
    pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>; // the cache page
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>; // [tokens, hidden]
@group(0) @binding(3) var<storage, read> assign: array<u32>;
@group(0) @binding(4) var<storage, read> tiles: array<u32>;
@group(0) @binding(5) var<storage, read_write> h: array<f32>;

const TR: u32 = 32u; // rows per tile
const TT: u32 = 32u; // assignments per tile
const TK: u32 = 32u; // columns per K tile
// [row][k / 4] as vec4s, rows padded to 9 vec4s: 8 invocations reading 8 rows at one
// column hit 8 different bank quads.
var<workgroup> gs: array<array<vec4<f32>, 9>, 32>; // dequantized G
var<workgroup> us: array<array<vec4<f32>, 9>, 32>; // dequantized U
var<workgroup> xs: array<array<vec4<f32>, 9>, 32>; // [assignment][k / 4]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let first = tiles[2u * (p.tile_base + wid.y)];
    let count = min(tiles[2u * (p.tile_base + wid.y) + 1u], TT);
    let row0 = wid.x * TR;
    let sb = assign[2u * first + 1u] * p.slot_words;
    // Loader roles: octet (row lr, octet lo) of G (li < 128) or U; x values 4 xo .. 4 xo + 3
    // of assignment xa.
    let lr = (li & 127u) >> 2u;
    let lo = li & 3u;
    let is_up = li >= 128u;
    let q_word = sb + select(p.gate_q, p.up_q, is_up);
    let s_word = sb + select(p.gate_s, p.up_s, is_up);
    let b_word = sb + select(p.gate_b, p.up_b, is_up);
    let xa = li >> 3u;
    let xo = li & 7u;
    let token = assign[2u * (first + min(xa, count - 1u))];
    var g0 = vec2<f32>(0.0);
    var g1 = vec2<f32>(0.0);
    var u0 = vec2<f32>(0.0);
    var u1 = vec2<f32>(0.0);
    // Each K tile's loads are issued before the previous tile's products, so that they are
    // in flight while the products run.
    let wr = row0 + lr;
    let w_live = wr < p.inter;
    var ow = OctetWords(0u, 0u, 0u, 0u);
    if (w_live) {
        ow = octet_fetch(q_word, s_word, b_word, p.hidden, wr, 0u, lo);
    }
    var xv = x[(token * p.hidden + 4u * xo) >> 2u];
    for (var k0 = 0u; k0 < p.hidden; k0 += TK) {
        var v = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        if (w_live) {
            v = octet_dequant(ow, p.hidden, wr, k0, lo);
        }
        if (is_up) {
            us[lr][2u * lo] = v.q0;
            us[lr][2u * lo + 1u] = v.q1;
        } else {
            gs[lr][2u * lo] = v.q0;
            gs[lr][2u * lo + 1u] = v.q1;
        }
        xs[xa][xo] = xv;
        workgroupBarrier();
        let k1 = k0 + TK;
        if (k1 < p.hidden) {
            if (w_live) {
                ow = octet_fetch(q_word, s_word, b_word, p.hidden, wr, k1, lo);
            }
            xv = x[(token * p.hidden + k1 + 4u * xo) >> 2u];
        }
        for (var kq = 0u; kq < TK / 4u; kq++) {
            let xa0 = xs[lid.y][kq];
            let xa1 = xs[lid.y + 16u][kq];
            let ga = gs[lid.x][kq];
            let gb = gs[lid.x + 16u][kq];
            let ua = us[lid.x][kq];
            let ub = us[lid.x + 16u][kq];
            g0 += vec2<f32>(dot(ga, xa0), dot(ga, xa1));
            g1 += vec2<f32>(dot(gb, xa0), dot(gb, xa1));
            u0 += vec2<f32>(dot(ua, xa0), dot(ua, xa1));
            u1 += vec2<f32>(dot(ub, xa0), dot(ub, xa1));
        }
        workgroupBarrier();
    }
    store(sb, first, count, row0 + lid.x, lid.y, g0.x, u0.x);
    store(sb, first, count, row0 + lid.x, lid.y + 16u, g0.y, u0.y);
    store(sb, first, count, row0 + lid.x + 16u, lid.y, g1.x, u1.x);
    store(sb, first, count, row0 + lid.x + 16u, lid.y + 16u, g1.y, u1.y);
}

// h of row r for the tile's assignment t, if both exist (the biases of the slot starting at
// word sb added first, with act bit 0).
fn store(sb: u32, first: u32, count: u32, r: u32, t: u32, g: f32, u: f32) {
    if (r < p.inter && t < count) {
        var gs = g;
        var us = u;
        if ((p.act & 1u) != 0u) {
            gs += bitcast<f32>(w[sb + p.gate_bias + r]);
            us += bitcast<f32>(w[sb + p.up_bias + r]);
        }
        h[(first + t) * p.inter + r] = expert_act(gs, us, p.act, p.alpha, p.limit);
    }
}
