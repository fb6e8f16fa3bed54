// Prefill expert down projection on cooperative matrices (tensor cores): as
// moe_down_qmm.wgsl computes it (o[a, j] = route_w[a] * (dot(D[j, :], h[a, :]) (+ bias)),
// one tile of up to 32 assignments of one expert's slot per workgroup column), with D and
// h rounded to f16 and the products summed in f32.
//
// A workgroup of 128 invocations, four subgroups of 32, computes 64 rows x 32 assignments:
// subgroup sg rows 16 sg .. 16 sg + 15 as two 16 x 16 accumulators (assignments 0-15,
// 16-31), over K tiles of 64 columns. Per K tile every invocation dequantizes four octets
// of D (octets lo and lo + 4 of rows lr and lr + 32) and converts two octets of h (of the
// tile's assignment lr) into f16 workgroup tiles (vec4<f16> stores: scalar 16-bit stores
// cost more than everything else, see qmatmul_coop.wgsl), the loads issued a K tile ahead.
// h is scaled by its routing weight before rounding. A full tile (32 assignments, 64 rows,
// no bias) stores its accumulators straight into o; any other goes out through a 16 x 16
// corner of workgroup memory per subgroup. Needs a subgroup size of 32 and `inter`
// a multiple of 64 (the engine checks).
enable f16;
enable wgpu_cooperative_matrix;

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
const TK: u32 = 64u; // columns per K tile
// Row stride of the f16 tiles in halves: 64 columns and 8 of padding (144 bytes); the
// tiles are vec4s, so offsets and strides below count vec4s.
const S: u32 = 72u;

var<workgroup> ws: array<vec4<f16>, 1152>; // D tile, [row][k], TR x S
var<workgroup> xs: array<vec4<f16>, 576>; // h tile, [assignment][k], TT x S
var<workgroup> cs: array<f32, 1024>; // a 16 x 16 accumulator per subgroup, column-major

fn put_w(row: u32, lo: u32, v: Octet) {
    let i = (row * S + 8u * lo) >> 2u;
    ws[i] = vec4<f16>(v.q0);
    ws[i + 1u] = vec4<f16>(v.q1);
}

fn put_x(t: u32, lo: u32, a: vec4<f32>, b: vec4<f32>) {
    let i = (t * S + 8u * lo) >> 2u;
    xs[i] = vec4<f16>(a);
    xs[i + 1u] = vec4<f16>(b);
}

// o of row r for the tile's assignment t, if both exist: v, the sum over h already scaled
// by the routing weight, plus (with act bit 0) the scaled bias of the slot starting at
// word sb.
fn store(sb: u32, first: u32, count: u32, r: u32, t: u32, v: f32) {
    if (r < p.hidden && t < count) {
        let a = first + t;
        var y = v;
        if ((p.act & 1u) != 0u) {
            y += bitcast<f32>(w[sb + p.down_bias + r]) * route_w[a];
        }
        o[a * p.hidden + r] = y;
    }
}

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let first = tiles[2u * (p.tile_base + wid.y)];
    let count = min(tiles[2u * (p.tile_base + wid.y) + 1u], TT);
    let row0 = wid.x * TR;
    let sb = assign[2u * first + 1u] * p.slot_words;
    let lr = li >> 2u;
    let lo = li & 3u;
    let sg = li >> 5u;
    let lane = li & 31u;
    // (`&`, not `&&`: a short-circuit is control flow naga does not see as uniform.)
    let direct = (count == TT) & (row0 + TR <= p.hidden) & ((p.act & 1u) == 0u)
        & ((p.hidden & 3u) == 0u);
    let ys = p.hidden;
    let c16 = p.hidden * 0u + 16u;
    for (var i = li; i < 1024u; i += 128u) {
        cs[i] = 0.0;
    }
    workgroupBarrier();
    var c0 = coopLoad<coop_mat16x16<f32, C>>(&cs[0], 16u);
    var c1 = c0;

    let wr0 = row0 + lr;
    let wr1 = wr0 + 32u;
    let live0 = wr0 < p.hidden;
    let live1 = wr1 < p.hidden;
    let dq = sb + p.down_q;
    let dsw = sb + p.down_s;
    let db = sb + p.down_b;
    // The loader's assignment (past the tile's count: its last, whose results are not
    // stored) and its routing weight, folded into h in every tile (so an assignment's
    // result is the same bits whichever way its tile goes out: split-invariant prefill).
    let xa = first + min(lr, count - 1u);
    let xrow = (xa * p.inter) >> 2u;
    let xscale = route_w[xa];
    var ow0 = OctetWords(0u, 0u, 0u, 0u);
    var ow1 = OctetWords(0u, 0u, 0u, 0u);
    var ow2 = OctetWords(0u, 0u, 0u, 0u);
    var ow3 = OctetWords(0u, 0u, 0u, 0u);
    if (live0) {
        ow0 = octet_fetch(dq, dsw, db, p.inter, wr0, 0u, lo);
        ow2 = octet_fetch(dq, dsw, db, p.inter, wr0, 32u, lo);
    }
    if (live1) {
        ow1 = octet_fetch(dq, dsw, db, p.inter, wr1, 0u, lo);
        ow3 = octet_fetch(dq, dsw, db, p.inter, wr1, 32u, lo);
    }
    var x0 = x[xrow + 2u * lo];
    var x1 = x[xrow + 2u * lo + 1u];
    var x2 = x[xrow + 8u + 2u * lo];
    var x3 = x[xrow + 8u + 2u * lo + 1u];
    for (var k0 = 0u; k0 < p.inter; k0 += TK) {
        var v0 = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        var v1 = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        var v2 = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        var v3 = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        if (live0) {
            v0 = octet_dequant(ow0, p.inter, wr0, k0, lo);
            v2 = octet_dequant(ow2, p.inter, wr0, k0 + 32u, lo);
        }
        if (live1) {
            v1 = octet_dequant(ow1, p.inter, wr1, k0, lo);
            v3 = octet_dequant(ow3, p.inter, wr1, k0 + 32u, lo);
        }
        put_w(lr, lo, v0);
        put_w(lr, lo + 4u, v2);
        put_w(lr + 32u, lo, v1);
        put_w(lr + 32u, lo + 4u, v3);
        put_x(lr, lo, x0 * xscale, x1 * xscale);
        put_x(lr, lo + 4u, x2 * xscale, x3 * xscale);
        workgroupBarrier();
        let k1 = k0 + TK;
        if (k1 < p.inter) {
            if (live0) {
                ow0 = octet_fetch(dq, dsw, db, p.inter, wr0, k1, lo);
                ow2 = octet_fetch(dq, dsw, db, p.inter, wr0, k1 + 32u, lo);
            }
            if (live1) {
                ow1 = octet_fetch(dq, dsw, db, p.inter, wr1, k1, lo);
                ow3 = octet_fetch(dq, dsw, db, p.inter, wr1, k1 + 32u, lo);
            }
            let xk = xrow + (k1 >> 2u);
            x0 = x[xk + 2u * lo];
            x1 = x[xk + 2u * lo + 1u];
            x2 = x[xk + 8u + 2u * lo];
            x3 = x[xk + 8u + 2u * lo + 1u];
        }
        for (var kk = 0u; kk < TK; kk += 16u) {
            // A: 16 rows x 16 columns of D, row-major; B: 16 columns x 16 assignments of
            // h, column-major (an assignment's columns are contiguous).
            let a = coopLoadT<coop_mat16x16<f16, A>>(&ws[(16u * sg * S + kk) >> 2u], S / 4u);
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&xs[kk >> 2u], S / 4u);
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&xs[(16u * S + kk) >> 2u], S / 4u);
            c0 = coopMultiplyAdd(a, b0, c0);
            c1 = coopMultiplyAdd(a, b1, c1);
        }
        workgroupBarrier();
    }
    // C is rows x assignments; column-major, an assignment's rows are contiguous in o.
    if (direct) {
        let o0 = first * ys + row0 + 16u * sg;
        let o1 = o0 + 16u * ys;
        coopStore(c0, &o[o0], ys);
        coopStore(c1, &o[o1], ys);
        return;
    }
    let base = sg * 256u;
    for (var q = 0u; q < 2u; q++) {
        workgroupBarrier();
        if (q == 0u) {
            coopStore(c0, &cs[base], c16);
        } else {
            coopStore(c1, &cs[base], c16);
        }
        workgroupBarrier();
        for (var e = 0u; e < 8u; e++) {
            let idx = lane * 8u + e;
            store(sb, first, count, row0 + 16u * sg + (idx & 15u), 16u * q + (idx >> 4u),
                  cs[base + idx]);
        }
    }
}
