// Prefill expert down projection over MLX affine-quantized experts, scaled by the routing
// weight, as a mat-mat over the assignments of one expert: for assignment a of tile
// `wid.y`, o[a, j] = route_w[a] * dot(D[j, :], h[a, :]), D [hidden, inter] the down tensor
// of the expert in the assignments' slot of this cache page (laid out as in
// moe_down_q.wgsl). One read of a tile of the expert's weights serves up to 32 of its
// assignments.
//
// tiles[2 (tile_base + wid.y)] and [.. + 1] are the tile's first assignment and count
// (1..32); all the assignments of a tile share one slot. A workgroup of 16x16 threads
// computes 32 rows x 32 assignments, each thread 2 x 2, over K tiles of 32 columns: per K
// tile, threads 0..127 dequantize one octet of D each into workgroup memory, and every
// thread stores 4 values of h; the loads of both are issued a K tile ahead, before the
// previous tile's products (include/qtile.wgsl).
struct Params {
    hidden: u32,
    inter: u32,
    tile_base: u32,
    slot_words: u32,
    down_q: u32,
    down_s: u32,
    down_b: u32,
    act: u32,       // bit 0: add the down bias
    down_bias: u32, // word offset of the down bias (f32) inside a slot
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>; // the cache page
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>; // h: [assignments, inter]
@group(0) @binding(3) var<storage, read> assign: array<u32>;
@group(0) @binding(4) var<storage, read> tiles: array<u32>;
@group(0) @binding(5) var<storage, read> route_w: array<f32>;
@group(0) @binding(6) var<storage, read_write> o: array<f32>;

const TR: u32 = 32u; // rows per tile
const TT: u32 = 32u; // assignments per tile
const TK: u32 = 32u; // columns per K tile
// [row][k / 4] as vec4s, rows padded to 9 vec4s: 8 invocations reading 8 rows at one
// column hit 8 different bank quads.
var<workgroup> ds: array<array<vec4<f32>, 9>, 32>; // dequantized D
var<workgroup> xs: array<array<vec4<f32>, 9>, 32>; // [assignment][k / 4]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let first = tiles[2u * (p.tile_base + wid.y)];
    let count = min(tiles[2u * (p.tile_base + wid.y) + 1u], TT);
    let row0 = wid.x * TR;
    let sb = assign[2u * first + 1u] * p.slot_words;
    // Loader roles: octet (row lr, octet lo) of D (li < 128); h values 4 xo .. 4 xo + 3 of
    // the tile's assignment xa.
    let lr = (li & 127u) >> 2u;
    let lo = li & 3u;
    let xa = li >> 3u;
    let xo = li & 7u;
    let xrow = (first + min(xa, count - 1u)) * p.inter;
    var a0 = vec2<f32>(0.0);
    var a1 = vec2<f32>(0.0);
    // Each K tile's loads are issued before the previous tile's products, so that they are
    // in flight while the products run.
    let wr = row0 + lr;
    let w_live = li < 128u && wr < p.hidden;
    var ow = OctetWords(0u, 0u, 0u, 0u);
    if (w_live) {
        ow = octet_fetch(sb + p.down_q, sb + p.down_s, sb + p.down_b, p.inter, wr, 0u, lo);
    }
    var xv = x[(xrow + 4u * xo) >> 2u];
    for (var k0 = 0u; k0 < p.inter; k0 += TK) {
        if (li < 128u) {
            var v = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
            if (w_live) {
                v = octet_dequant(ow, p.inter, wr, k0, lo);
            }
            ds[lr][2u * lo] = v.q0;
            ds[lr][2u * lo + 1u] = v.q1;
        }
        xs[xa][xo] = xv;
        workgroupBarrier();
        let k1 = k0 + TK;
        if (k1 < p.inter) {
            if (w_live) {
                ow = octet_fetch(sb + p.down_q, sb + p.down_s, sb + p.down_b, p.inter, wr, k1,
                                 lo);
            }
            xv = x[(xrow + k1 + 4u * xo) >> 2u];
        }
        for (var kq = 0u; kq < TK / 4u; kq++) {
            let xa0 = xs[lid.y][kq];
            let xa1 = xs[lid.y + 16u][kq];
            let da = ds[lid.x][kq];
            let db = ds[lid.x + 16u][kq];
            a0 += vec2<f32>(dot(da, xa0), dot(da, xa1));
            a1 += vec2<f32>(dot(db, xa0), dot(db, xa1));
        }
        workgroupBarrier();
    }
    store(sb, first, count, row0 + lid.x, lid.y, a0.x);
    store(sb, first, count, row0 + lid.x, lid.y + 16u, a0.y);
    store(sb, first, count, row0 + lid.x + 16u, lid.y, a1.x);
    store(sb, first, count, row0 + lid.x + 16u, lid.y + 16u, a1.y);
}

// o of row r for the tile's assignment t, if both exist (plus, with act bit 0, the bias of
// the slot starting at word sb).
fn store(sb: u32, first: u32, count: u32, r: u32, t: u32, v: f32) {
    if (r < p.hidden && t < count) {
        let a = first + t;
        var y = v;
        if ((p.act & 1u) != 0u) {
            y += bitcast<f32>(w[sb + p.down_bias + r]);
        }
        o[a * p.hidden + r] = y * route_w[a];
    }
}
