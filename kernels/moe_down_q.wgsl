// Expert down projection over MLX affine-quantized experts, scaled by the routing weight,
// addressed through cache slots: o[a, j] = route_w[a] * dot(D[j, :], h[a, :]) with D
// [hidden, inter] the down tensor of the expert in the assignment's slot of this cache page.
// A slot is slot_words words (a multiple of 4); inside it, down_q, down_s and down_b are the
// word offsets of the codes, scales and biases (see include/quant.wgsl), the codes 16-byte
// aligned.
//
// Workgroup (wid.x, wid.y) works on assignment assign_base + wid.y, as qmatvec.wgsl does:
// 64 / team teams of ROWS rows (4, 2 or 1, a pipeline constant; include/qblock.wgsl),
// lane l of a team taking the 32-code blocks l, l + team, ...
// (include/qblock.wgsl), two per iteration; rows past `hidden` re-read the last row
// (branch-free loads, sums dropped). The rows of h are in the natural or, with flags bit
// 0, the interleaved layout, or with flags bit 1 (2- to 6-bit experts only, else the
// output is NaN) in the quad 8+8-bit layout (include/interleave.wgsl), dotted with
// integer dot products. The kernel reads the flags as its FLAGS pipeline constant, which
// the engine sets from `flags` for every dispatch (`Kernel::pipeline_flags`), so that a
// pipeline holds only the code of its layout: with both compiled in, the quad path ran
// 10% slower on an H200 (60.7 against 55.0 us for 128 experts).
struct Params {
    hidden: u32,
    inter: u32,
    assign_base: u32,
    n_assign: u32,
    slot_words: u32,
    down_q: u32,
    down_s: u32,
    down_b: u32,
    team: u32,
    flags: u32, // bit 0: h rows interleaved, bit 1: h rows in the quad 8+8-bit layout
    act: u32,       // bit 0: add the down bias
    down_bias: u32, // word offset of the down bias (f32) inside a slot
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>; // the cache page
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>; // h: [assignments, inter], read as vec4s
@group(0) @binding(3) var<storage, read> assign: array<u32>;
@group(0) @binding(4) var<storage, read> route_w: array<f32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;
@group(0) @binding(6) var<storage, read> ws: array<u32>; // w again, as words (include/qblock.wgsl)

const WG: u32 = 64u;

// `flags`, as a pipeline constant.
override FLAGS: u32 = 0u;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let team = p.team;
    let lane = lid & (team - 1u);
    let j0 = (wid.x * (WG / team) + lid / team) * team_rows();
    if (wid.y >= p.n_assign) {
        return; // the whole workgroup: no barrier is skipped by only some invocations
    }
    let a = p.assign_base + wid.y;
    let last = p.hidden - 1u;
    let ja = min(j0, last);
    let jb = min(j0 + 1u, last);
    let jc = min(j0 + 2u, last);
    let jd = min(j0 + 3u, last);
    let sb = assign[2u * a + 1u] * p.slot_words;
    let dq = sb + p.down_q;
    let ds = sb + p.down_s;
    let db = sb + p.down_b;
    var acc = vec4<f32>(0.0);
    let nb = p.inter / 32u;
    let base = a * (p.inter / 4u);
    let rows = vec4<u32>(ja, jb, jc, jd);
    let il = (FLAGS & 1u) != 0u;
    var b = lane;
    let hq8 = (FLAGS & 2u) != 0u;
    // The quad loop also tests the uniform's flag (the same bit): written with FLAGS alone
    // (or as if / else), the quad pipeline measured 57.7 instead of 55.0 us for 128
    // experts on an H200, the driver scheduling it differently.
    if (hq8 && (p.flags & 2u) != 0u && (BITS >= 2u && BITS <= 6u)) {
        for (; b + team < nb; b += 2u * team) {
            let s0 = step_hq8(base, b, nb, rows, dq, ds, db);
            let s1 = step_hq8(base, b + team, nb, rows, dq, ds, db);
            acc += s0 + s1;
        }
        if (b < nb) {
            acc += step_hq8(base, b, nb, rows, dq, ds, db);
        }
    }
    if (!hq8) {
        for (; b + team < nb; b += 2u * team) {
            let s0 = step(base, b, nb, il, rows, dq, ds, db);
            let s1 = step(base, b + team, nb, il, rows, dq, ds, db);
            acc += s0 + s1;
        }
        if (b < nb) {
            acc += step(base, b, nb, il, rows, dq, ds, db);
        }
    }
    var total = team_sum(acc, lid, team);
    if (hq8 && !(BITS >= 2u && BITS <= 6u)) {
        total = vec4<f32>(bitcast<f32>(0x7fc00000u)); // NaN: the quad layout needs 2- to 6-bit experts
    }
    if (lane == 0u) {
        for (var i = 0u; i < team_rows(); i++) {
            if (j0 + i < p.hidden) {
                var v = total[i];
                if ((p.act & 1u) != 0u) {
                    v += bitcast<f32>(ws[sb + p.down_bias + j0 + i]);
                }
                o[a * p.hidden + j0 + i] = v * route_w[a];
            }
        }
    }
}

// The sums of block b of rows `rows` of D with the assignment's h (its row at vec4 `base`).
fn step(base: u32, b: u32, nb: u32, il: bool, rows: vec4<u32>, dq: u32, ds: u32,
        db: u32) -> vec4<f32> {
    let hv = load_x32(base, b, nb, il);
    return rows_block_n(dq, ds, db, p.inter, rows, b, hv, x32_sum(hv));
}

// `step` with h in the quad 8+8-bit layout.
fn step_hq8(base: u32, b: u32, nb: u32, rows: vec4<u32>, dq: u32, ds: u32,
            db: u32) -> vec4<f32> {
    let hq = load_hq8(base, b, nb);
    return rows_block_hq8_n(dq, ds, db, p.inter, rows, b, hq);
}
