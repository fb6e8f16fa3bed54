// Prefill expert gate/up projections with the activation on cooperative matrices (tensor
// cores): as moe_gate_up_qmm.wgsl computes them (h[a, i] = act(dot(G[i, :], x[token]),
// dot(U[i, :], x[token])) for the tile's up to 32 assignments of one expert's slot), with
// G, U and x rounded to f16 and the products summed in f32.
//
// A workgroup of 128 invocations, four subgroups of 32, computes 32 rows of G and of U for
// 32 assignments: subgroup sg rows 16 (sg & 1) .. + 15 of both for assignments
// 16 (sg >> 1) .. + 15, as two 16 x 16 accumulators sharing their x operand, over K tiles
// of 64 columns. Per K tile every invocation dequantizes two octets of G and two of U (row
// lr, octets lo and lo + 4) and converts two octets of x (of the tile's assignment lr)
// into f16 workgroup tiles (vec4<f16> stores), the loads issued a K tile ahead. At the end
// each subgroup puts its two accumulators in its corner of workgroup memory, where its
// invocations apply the biases and the activation. Needs a subgroup size of 32 and
// `hidden` a multiple of 64 (the engine checks).
enable f16;
enable wgpu_cooperative_matrix;

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

const TR: u32 = 32u; // rows of G and of U per tile
const TT: u32 = 32u; // assignments per tile
const TK: u32 = 64u; // columns per K tile
// Row stride of the f16 tiles in halves: 64 columns and 8 of padding (144 bytes); the
// tiles are vec4s, so offsets and strides below count vec4s.
const S: u32 = 72u;

var<workgroup> gs: array<vec4<f16>, 576>; // G tile, [row][k], TR x S
var<workgroup> us: array<vec4<f16>, 576>; // U tile
var<workgroup> xs: array<vec4<f16>, 576>; // x tile, [assignment][k], TT x S
var<workgroup> cs: array<f32, 2048>; // per subgroup: G then U accumulator, column-major

fn put(which: u32, row: u32, lo: u32, v: Octet) {
    let i = (row * S + 8u * lo) >> 2u;
    if (which == 0u) {
        gs[i] = vec4<f16>(v.q0);
        gs[i + 1u] = vec4<f16>(v.q1);
    } else {
        us[i] = vec4<f16>(v.q0);
        us[i + 1u] = vec4<f16>(v.q1);
    }
}

fn put_x(t: u32, lo: u32, a: vec4<f32>, b: vec4<f32>) {
    let i = (t * S + 8u * lo) >> 2u;
    xs[i] = vec4<f16>(a);
    xs[i + 1u] = vec4<f16>(b);
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
    let qr = (sg & 1u) * 16u;
    let qt = (sg >> 1u) * 16u;
    let c16 = p.hidden * 0u + 16u;
    for (var i = li; i < 256u; i += 128u) {
        cs[i] = 0.0;
    }
    workgroupBarrier();
    var cg = coopLoad<coop_mat16x16<f32, C>>(&cs[0], 16u);
    var cu = cg;

    let token = assign[2u * (first + min(lr, count - 1u))];
    let wr = row0 + lr;
    let w_live = wr < p.inter;
    let gq = sb + p.gate_q;
    let gsw = sb + p.gate_s;
    let gb = sb + p.gate_b;
    let uq = sb + p.up_q;
    let usw = sb + p.up_s;
    let ub = sb + p.up_b;
    var og0 = OctetWords(0u, 0u, 0u, 0u);
    var og1 = OctetWords(0u, 0u, 0u, 0u);
    var ou0 = OctetWords(0u, 0u, 0u, 0u);
    var ou1 = OctetWords(0u, 0u, 0u, 0u);
    if (w_live) {
        og0 = octet_fetch(gq, gsw, gb, p.hidden, wr, 0u, lo);
        og1 = octet_fetch(gq, gsw, gb, p.hidden, wr, 32u, lo);
        ou0 = octet_fetch(uq, usw, ub, p.hidden, wr, 0u, lo);
        ou1 = octet_fetch(uq, usw, ub, p.hidden, wr, 32u, lo);
    }
    let xrow = (token * p.hidden) >> 2u;
    var x0 = x[xrow + 2u * lo];
    var x1 = x[xrow + 2u * lo + 1u];
    var x2 = x[xrow + 8u + 2u * lo];
    var x3 = x[xrow + 8u + 2u * lo + 1u];
    for (var k0 = 0u; k0 < p.hidden; k0 += TK) {
        var vg0 = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        var vg1 = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        var vu0 = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        var vu1 = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        if (w_live) {
            vg0 = octet_dequant(og0, p.hidden, wr, k0, lo);
            vg1 = octet_dequant(og1, p.hidden, wr, k0 + 32u, lo);
            vu0 = octet_dequant(ou0, p.hidden, wr, k0, lo);
            vu1 = octet_dequant(ou1, p.hidden, wr, k0 + 32u, lo);
        }
        put(0u, lr, lo, vg0);
        put(0u, lr, lo + 4u, vg1);
        put(1u, lr, lo, vu0);
        put(1u, lr, lo + 4u, vu1);
        put_x(lr, lo, x0, x1);
        put_x(lr, lo + 4u, x2, x3);
        workgroupBarrier();
        let k1 = k0 + TK;
        if (k1 < p.hidden) {
            if (w_live) {
                og0 = octet_fetch(gq, gsw, gb, p.hidden, wr, k1, lo);
                og1 = octet_fetch(gq, gsw, gb, p.hidden, wr, k1 + 32u, lo);
                ou0 = octet_fetch(uq, usw, ub, p.hidden, wr, k1, lo);
                ou1 = octet_fetch(uq, usw, ub, p.hidden, wr, k1 + 32u, lo);
            }
            let xk = xrow + (k1 >> 2u);
            x0 = x[xk + 2u * lo];
            x1 = x[xk + 2u * lo + 1u];
            x2 = x[xk + 8u + 2u * lo];
            x3 = x[xk + 8u + 2u * lo + 1u];
        }
        for (var kk = 0u; kk < TK; kk += 16u) {
            // A: 16 rows x 16 columns of G or U, row-major; B: 16 columns x 16
            // assignments of x, column-major (an assignment's columns are contiguous).
            let ag = coopLoadT<coop_mat16x16<f16, A>>(&gs[(qr * S + kk) >> 2u], S / 4u);
            let au = coopLoadT<coop_mat16x16<f16, A>>(&us[(qr * S + kk) >> 2u], S / 4u);
            let b = coopLoad<coop_mat16x16<f16, B>>(&xs[(qt * S + kk) >> 2u], S / 4u);
            cg = coopMultiplyAdd(ag, b, cg);
            cu = coopMultiplyAdd(au, b, cu);
        }
        workgroupBarrier();
    }
    // Column-major 16 x 16 corners: (row i, assignment j) at 16 j + i.
    // (Indices as `let`s: naga's SPIR-V writer wants a cooperative store's operands
    // emitted before the store.)
    let base = sg * 512u;
    let base_u = base + 256u;
    coopStore(cg, &cs[base], c16);
    coopStore(cu, &cs[base_u], c16);
    workgroupBarrier();
    for (var e = 0u; e < 8u; e++) {
        let idx = lane * 8u + e;
        let r = row0 + qr + (idx & 15u);
        let t = qt + (idx >> 4u);
        if (r < p.inter && t < count) {
            var g = cs[base + idx];
            var u = cs[base + 256u + idx];
            if ((p.act & 1u) != 0u) {
                g += bitcast<f32>(w[sb + p.gate_bias + r]);
                u += bitcast<f32>(w[sb + p.up_bias + r]);
            }
            h[(first + t) * p.inter + r] = expert_act(g, u, p.act, p.alpha, p.limit);
        }
    }
}
