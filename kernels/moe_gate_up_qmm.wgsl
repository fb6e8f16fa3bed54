// Prefill expert gate/up projections with the SwiGLU activation over MLX affine-quantized
// experts, as a mat-mat over the assignments of one expert: for assignment a = (token,
// slot) of tile `wid.y`, h[a, i] = silu(dot(G[i, :], x[token])) * dot(U[i, :], x[token]),
// G and U [inter, hidden] of the expert in `slot` of this cache page (laid out as in
// moe_gate_up_q.wgsl). One read of a tile of the expert's weights serves up to 32 of its
// assignments, where the mat-vec kernel reads the weights once per assignment.
//
// tiles[2 (tile_base + wid.y)] and [.. + 1] are the tile's first assignment and count
// (1..32); all the assignments of a tile share one slot. A workgroup of 16x8 threads
// computes 32 rows of G and of U for the tile's assignments, each thread 2 rows x 4
// assignments of both (rows lid.x + 16 i, assignments lid.y + 8 j), over K tiles of 32
// columns (one block: BITS whole words per row, one group): per K tile, each thread
// dequantizes one octet of G and one of U into workgroup memory and stores 8 values of x;
// the loads of both are issued a K tile ahead, before the previous tile's products
// (include/qtile.wgsl). Each product step loads 8 vec4s from workgroup memory for 16 dot
// products (2 rows x 2 assignments per thread loaded 6 for 8).
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

@compute @workgroup_size(16, 8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let first = tiles[2u * (p.tile_base + wid.y)];
    let count = min(tiles[2u * (p.tile_base + wid.y) + 1u], TT);
    let row0 = wid.x * TR;
    let sb = assign[2u * first + 1u] * p.slot_words;
    // Loader roles: octet (row lr, octet lo) of G and of U; x octet lo of assignment lr.
    let lr = li >> 2u;
    let lo = li & 3u;
    let token = assign[2u * (first + min(lr, count - 1u))];
    // Outputs: g<i> / u<i> hold row lid.x + 16 i; their components assignments lid.y + 8 j.
    var g0 = vec4<f32>(0.0);
    var g1 = vec4<f32>(0.0);
    var u0 = vec4<f32>(0.0);
    var u1 = vec4<f32>(0.0);
    // Each K tile's loads are issued before the previous tile's products, so that they are
    // in flight while the products run.
    let wr = row0 + lr;
    let w_live = wr < p.inter;
    var og = OctetWords(0u, 0u, 0u, 0u);
    var ou = OctetWords(0u, 0u, 0u, 0u);
    if (w_live) {
        og = octet_fetch(sb + p.gate_q, sb + p.gate_s, sb + p.gate_b, p.hidden, wr, 0u, lo);
        ou = octet_fetch(sb + p.up_q, sb + p.up_s, sb + p.up_b, p.hidden, wr, 0u, lo);
    }
    let xrow = (token * p.hidden + 8u * lo) >> 2u;
    var xv0 = x[xrow];
    var xv1 = x[xrow + 1u];
    for (var k0 = 0u; k0 < p.hidden; k0 += TK) {
        var vg = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        var vu = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        if (w_live) {
            vg = octet_dequant(og, p.hidden, wr, k0, lo);
            vu = octet_dequant(ou, p.hidden, wr, k0, lo);
        }
        gs[lr][2u * lo] = vg.q0;
        gs[lr][2u * lo + 1u] = vg.q1;
        us[lr][2u * lo] = vu.q0;
        us[lr][2u * lo + 1u] = vu.q1;
        xs[lr][2u * lo] = xv0;
        xs[lr][2u * lo + 1u] = xv1;
        workgroupBarrier();
        let k1 = k0 + TK;
        if (k1 < p.hidden) {
            if (w_live) {
                og = octet_fetch(sb + p.gate_q, sb + p.gate_s, sb + p.gate_b, p.hidden, wr, k1,
                                 lo);
                ou = octet_fetch(sb + p.up_q, sb + p.up_s, sb + p.up_b, p.hidden, wr, k1, lo);
            }
            xv0 = x[xrow + (k1 >> 2u)];
            xv1 = x[xrow + (k1 >> 2u) + 1u];
        }
        // A thread whose assignments are all past the tile's last skips the products
        // (its sums are never stored); the others run them unchanged, so every stored
        // sum is the same bits whatever the tile's fill (split-invariant prefill).
        if (lid.y < count) {
            for (var kq = 0u; kq < TK / 4u; kq++) {
                let x0 = xs[lid.y][kq];
                let x1 = xs[lid.y + 8u][kq];
                let x2 = xs[lid.y + 16u][kq];
                let x3 = xs[lid.y + 24u][kq];
                let ga = gs[lid.x][kq];
                let gb = gs[lid.x + 16u][kq];
                let ua = us[lid.x][kq];
                let ub = us[lid.x + 16u][kq];
                g0 += vec4<f32>(dot(ga, x0), dot(ga, x1), dot(ga, x2), dot(ga, x3));
                g1 += vec4<f32>(dot(gb, x0), dot(gb, x1), dot(gb, x2), dot(gb, x3));
                u0 += vec4<f32>(dot(ua, x0), dot(ua, x1), dot(ua, x2), dot(ua, x3));
                u1 += vec4<f32>(dot(ub, x0), dot(ub, x1), dot(ub, x2), dot(ub, x3));
            }
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < 4u; j++) {
        store(sb, first, count, row0 + lid.x, lid.y + 8u * j, g0[j], u0[j]);
        store(sb, first, count, row0 + lid.x + 16u, lid.y + 8u * j, g1[j], u1[j]);
    }
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
