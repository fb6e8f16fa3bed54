// Expert gate/up projections with the SwiGLU activation over MLX affine-quantized experts,
// addressed through cache slots: for assignment a = (token, slot),
// h[a, i] = silu(dot(G[i, :], x[token])) * dot(U[i, :], x[token]), G and U [inter, hidden]
// of the expert in `slot` of this cache page (gate and up share BITS, GROUP and WDT).
// A slot is slot_words words (a multiple of 4); inside it, gate_q / up_q are the word
// offsets of the codes and gate_s, gate_b, up_s, up_b those of the scales and biases (see
// include/quant.wgsl), the codes 16-byte aligned.
//
// Workgroup (wid.x, wid.y) works on assignment assign_base + wid.y, as qmatvec.wgsl does:
// 64 / team teams of ROWS (4, 2 or 1, a pipeline constant; include/qblock.wgsl) rows of
// both G and U, lane l of a team taking the 32-code blocks l, l + team, ...
// (include/qblock.wgsl), two per iteration, with x loaded once per block for all the rows;
// rows past `inter` re-read the last row (branch-free loads, sums dropped).
// The rows of x and h are in the natural or the interleaved layout
// (include/interleave.wgsl), as `flags` says; with flags bit 2 (2- to 6-bit experts
// only, else h is NaN) x is one row (token 0) in the 8+8-bit layout of that file. With
// flags bit 3, h is written in the quad 8+8-bit layout of that file (for a 2- to 6-bit
// down projection): a workgroup then computes whole quads (the host sees to it that its
// rows are a multiple of 4), its local row l being value l % 4 of its quad l / 4, and
// writes them after a barrier.
struct Params {
    hidden: u32,
    inter: u32,
    assign_base: u32,
    n_assign: u32,
    slot_words: u32,
    gate_q: u32,
    gate_s: u32,
    gate_b: u32,
    up_q: u32,
    up_s: u32,
    up_b: u32,
    team: u32,
    // bit 0: x rows interleaved, bit 1: write h rows interleaved, bit 2: x 8+8-bit,
    // bit 3: write h rows in the quad 8+8-bit layout
    flags: u32,
    act: u32,       // bit 0: biases, bit 1: clamped SwiGLU (include/expert_act.wgsl)
    gate_bias: u32, // word offset of the gate bias (f32) inside a slot
    up_bias: u32,   // word offset of the up bias (f32) inside a slot
    alpha: f32,
    limit: f32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>; // the cache page
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>; // [tokens, hidden], read as vec4s
@group(0) @binding(3) var<storage, read> assign: array<u32>;
@group(0) @binding(4) var<storage, read_write> h: array<u32>; // f32 values or quad fields
@group(0) @binding(5) var<storage, read> ws: array<u32>; // w again, as words (include/qblock.wgsl)

const WG: u32 = 64u;

// The workgroup's rows of h by quad, for the quad layout: at most 64 rows (16 teams of 4).
var<workgroup> quads: array<vec4<f32>, 16>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let team = p.team;
    let lane = lid & (team - 1u);
    let wg_rows = (WG / team) * team_rows();
    let local = (lid / team) * team_rows(); // the team's first row in the workgroup
    let i0 = wid.x * wg_rows + local;
    if (wid.y >= p.n_assign) {
        return; // the whole workgroup: no barrier is skipped by only some invocations
    }
    let hq8 = (p.flags & 8u) != 0u;
    let a = p.assign_base + wid.y;
    let last = p.inter - 1u;
    let q0 = wid.x * (wg_rows / 4u); // the workgroup's first quad
    let ia = min(select(i0, h_row(q0, local), hq8), last);
    let ib = min(select(i0 + 1u, h_row(q0, local + 1u), hq8), last);
    let ic = min(select(i0 + 2u, h_row(q0, local + 2u), hq8), last);
    let id = min(select(i0 + 3u, h_row(q0, local + 3u), hq8), last);
    let token = assign[2u * a];
    let sb = assign[2u * a + 1u] * p.slot_words;
    let gq = sb + p.gate_q;
    let gs = sb + p.gate_s;
    let gb = sb + p.gate_b;
    let uq = sb + p.up_q;
    let us = sb + p.up_s;
    let ub = sb + p.up_b;
    var acc = Pair(vec4<f32>(0.0), vec4<f32>(0.0));
    let nb = p.hidden / 32u;
    let base = token * (p.hidden / 4u);
    let rows = vec4<u32>(ia, ib, ic, id);
    let il = (p.flags & 1u) != 0u;
    var b = lane;
    let q8 = (p.flags & 4u) != 0u;
    if (q8 && (BITS >= 2u && BITS <= 6u)) {
        for (; b + team < nb; b += 2u * team) {
            let s0 = step_q8(b, nb, rows, gq, gs, gb, uq, us, ub);
            let s1 = step_q8(b + team, nb, rows, gq, gs, gb, uq, us, ub);
            acc = Pair(acc.g + s0.g + s1.g, acc.u + s0.u + s1.u);
        }
        if (b < nb) {
            let s0 = step_q8(b, nb, rows, gq, gs, gb, uq, us, ub);
            acc = Pair(acc.g + s0.g, acc.u + s0.u);
        }
    }
    // Two blocks per iteration: the loads of both are in flight together.
    for (; !q8 && b + team < nb; b += 2u * team) {
        let s0 = step(base, b, nb, il, rows, gq, gs, gb, uq, us, ub);
        let s1 = step(base, b + team, nb, il, rows, gq, gs, gb, uq, us, ub);
        acc = Pair(acc.g + s0.g + s1.g, acc.u + s0.u + s1.u);
    }
    if (!q8 && b < nb) {
        let s0 = step(base, b, nb, il, rows, gq, gs, gb, uq, us, ub);
        acc = Pair(acc.g + s0.g, acc.u + s0.u);
    }
    let g = acc.g;
    let u = acc.u;
    let gt = team_sum(g, lid, team);
    let ut = team_sum(u, lid, team);
    if (hq8) {
        if (lane == 0u) {
            for (var i = 0u; i < team_rows(); i++) {
                let l = local + i;
                let r = h_row(q0, l);
                quads[l >> 2u][l & 3u] = act_row(sb, min(r, last), gt[i], ut[i]);
            }
        }
        workgroupBarrier();
        let quad = q0 + lid;
        if (lid < wg_rows / 4u && 4u * quad < p.inter) {
            let f = quad_q8(quads[lid]);
            let nb = p.inter / 32u;
            let row = a * p.inter;
            h[row + quad_word(quad, 0u, nb)] = f.x;
            h[row + quad_word(quad, 1u, nb)] = f.y;
            h[row + quad_word(quad, 2u, nb)] = f.z;
            h[row + quad_word(quad, 3u, nb)] = f.w;
        }
        return;
    }
    if (lane == 0u) {
        for (var i = 0u; i < team_rows(); i++) {
            if (i0 + i < p.inter) {
                let gate = gt[i];
                let j = select(i0 + i, interleaved(i0 + i, p.inter), (p.flags & 2u) != 0u);
                var v = act_row(sb, i0 + i, gate, ut[i]);
                if (q8 && !(BITS >= 2u && BITS <= 6u)) {
                    v = bitcast<f32>(0x7fc00000u); // NaN: the 8+8-bit x needs 2- to 6-bit experts
                }
                h[a * p.inter + j] = bitcast<u32>(v);
            }
        }
    }
}

// The activation of row r of h from its gate and up sums (the biases of the slot starting
// at word sb added first, with act bit 0).
fn act_row(sb: u32, r: u32, g: f32, u: f32) -> f32 {
    var gs = g;
    var us = u;
    if ((p.act & 1u) != 0u) {
        gs += bitcast<f32>(ws[sb + p.gate_bias + r]);
        us += bitcast<f32>(ws[sb + p.up_bias + r]);
    }
    return expert_act(gs, us, p.act, p.alpha, p.limit);
}

// Gate and up sums of 4 rows.
struct Pair {
    g: vec4<f32>,
    u: vec4<f32>,
}

// The sums of block b of rows `rows` of G and U with the token's x (its row at vec4 `base`).
fn step(base: u32, b: u32, nb: u32, il: bool, rows: vec4<u32>, gq: u32, gs: u32, gb: u32,
        uq: u32, us: u32, ub: u32) -> Pair {
    let xs = load_x32(base, b, nb, il);
    let xsum = x32_sum(xs);
    return Pair(
        rows_block_n(gq, gs, gb, p.hidden, rows, b, xs, xsum),
        rows_block_n(uq, us, ub, p.hidden, rows, b, xs, xsum),
    );
}

// `step` with x in the 8+8-bit layout.
fn step_q8(b: u32, nb: u32, rows: vec4<u32>, gq: u32, gs: u32, gb: u32, uq: u32, us: u32,
           ub: u32) -> Pair {
    let xq = load_xq8(b, nb);
    return Pair(
        rows_block_q8_n(gq, gs, gb, p.hidden, rows, b, xq),
        rows_block_q8_n(uq, us, ub, p.hidden, rows, b, xq),
    );
}

// The row of h that local row l of the workgroup whose first quad is q0 computes in the
// quad layout: value l % 4 of quad q0 + l / 4.
fn h_row(q0: u32, l: u32) -> u32 {
    return quad_value(q0 + (l >> 2u), l & 3u);
}
