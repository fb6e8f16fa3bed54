// Prefill expert down projection over MLX affine-quantized experts, scaled by the routing
// weight, as a mat-mat over the assignments of one expert: for assignment a of tile
// `wid.y`, o[a, j] = route_w[a] * dot(D[j, :], h[a, :]), D [hidden, inter] the down tensor
// of the expert in the assignments' slot of this cache page (laid out as in
// moe_down_q.wgsl). One read of a tile of the expert's weights serves up to 32 of its
// assignments.
//
// tiles[2 (tile_base + wid.y)] and [.. + 1] are the tile's first assignment and count
// (1..32); all the assignments of a tile share one slot. A workgroup of 16x8 threads
// computes 64 rows x 32 assignments, each thread 4 x 4 (rows lid.x + 16 i, assignments
// lid.y + 8 j), over K tiles of 32 columns: per K tile, each thread dequantizes two octets
// of D into workgroup memory and stores 8 values of h; the loads of both are issued a K
// tile ahead, before the previous tile's products (include/qtile.wgsl). Each product
// step loads 8 vec4s from workgroup memory for 16 dot products (2 x 2 per thread loaded 4
// for 4).
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

const TR: u32 = 64u; // rows per tile
const TT: u32 = 32u; // assignments per tile
const TK: u32 = 32u; // columns per K tile
// [row][k / 4] as vec4s, rows padded to 9 vec4s: 8 invocations reading 8 rows at one
// column hit 8 different bank quads.
var<workgroup> ds: array<array<vec4<f32>, 9>, 64>; // dequantized D
var<workgroup> xs: array<array<vec4<f32>, 9>, 32>; // [assignment][k / 4]

@compute @workgroup_size(16, 8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let first = tiles[2u * (p.tile_base + wid.y)];
    let count = min(tiles[2u * (p.tile_base + wid.y) + 1u], TT);
    let row0 = wid.x * TR;
    let sb = assign[2u * first + 1u] * p.slot_words;
    // Loader roles: octets (row lr, octet lo) and (row lr + 32, octet lo) of D; h octet lo
    // of the tile's assignment lr.
    let lr = li >> 2u;
    let lo = li & 3u;
    let xrow = ((first + min(lr, count - 1u)) * p.inter + 8u * lo) >> 2u;
    // Outputs: a<i> holds row lid.x + 16 i; its components assignments lid.y + 8 j.
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    // Each K tile's loads are issued before the previous tile's products, so that they are
    // in flight while the products run.
    let wr0 = row0 + lr;
    let wr1 = wr0 + 32u;
    let live0 = wr0 < p.hidden;
    let live1 = wr1 < p.hidden;
    let dq = sb + p.down_q;
    let dsw = sb + p.down_s;
    let db = sb + p.down_b;
    var ow0 = OctetWords(0u, 0u, 0u, 0u);
    var ow1 = OctetWords(0u, 0u, 0u, 0u);
    if (live0) {
        ow0 = octet_fetch(dq, dsw, db, p.inter, wr0, 0u, lo);
    }
    if (live1) {
        ow1 = octet_fetch(dq, dsw, db, p.inter, wr1, 0u, lo);
    }
    var xv0 = x[xrow];
    var xv1 = x[xrow + 1u];
    for (var k0 = 0u; k0 < p.inter; k0 += TK) {
        var v0 = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        var v1 = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        if (live0) {
            v0 = octet_dequant(ow0, p.inter, wr0, k0, lo);
        }
        if (live1) {
            v1 = octet_dequant(ow1, p.inter, wr1, k0, lo);
        }
        ds[lr][2u * lo] = v0.q0;
        ds[lr][2u * lo + 1u] = v0.q1;
        ds[lr + 32u][2u * lo] = v1.q0;
        ds[lr + 32u][2u * lo + 1u] = v1.q1;
        xs[lr][2u * lo] = xv0;
        xs[lr][2u * lo + 1u] = xv1;
        workgroupBarrier();
        let k1 = k0 + TK;
        if (k1 < p.inter) {
            if (live0) {
                ow0 = octet_fetch(dq, dsw, db, p.inter, wr0, k1, lo);
            }
            if (live1) {
                ow1 = octet_fetch(dq, dsw, db, p.inter, wr1, k1, lo);
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
                let d0 = ds[lid.x][kq];
                let d1 = ds[lid.x + 16u][kq];
                let d2 = ds[lid.x + 32u][kq];
                let d3 = ds[lid.x + 48u][kq];
                a0 += vec4<f32>(dot(d0, x0), dot(d0, x1), dot(d0, x2), dot(d0, x3));
                a1 += vec4<f32>(dot(d1, x0), dot(d1, x1), dot(d1, x2), dot(d1, x3));
                a2 += vec4<f32>(dot(d2, x0), dot(d2, x1), dot(d2, x2), dot(d2, x3));
                a3 += vec4<f32>(dot(d3, x0), dot(d3, x1), dot(d3, x2), dot(d3, x3));
            }
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < 4u; j++) {
        let t = lid.y + 8u * j;
        store(sb, first, count, row0 + lid.x, t, a0[j]);
        store(sb, first, count, row0 + lid.x + 16u, t, a1[j]);
        store(sb, first, count, row0 + lid.x + 32u, t, a2[j]);
        store(sb, first, count, row0 + lid.x + 48u, t, a3[j]);
    }
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
