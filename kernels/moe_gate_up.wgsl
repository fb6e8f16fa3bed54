// Expert gate/up projections with the SwiGLU activation, addressed through cache slots:
// for assignment a = (token, slot): h[a, i] = silu(dot(G[i, :], x[token])) * dot(U[i, :], x[token]),
// G and U of the expert in `slot` of this cache page. One workgroup per (row i, assignment).
// With act bit 0 the slot's f32 biases are added to the sums first; act bit 1 selects the
// clamped SwiGLU (include/expert_act.wgsl).
struct Params {
    hidden: u32,
    inter: u32,
    assign_base: u32,
    n_assign: u32,
    gate_off: u32,   // element offset of the gate tensor inside a slot
    up_off: u32,     // element offset of the up tensor inside a slot
    slot_elems: u32, // elements per slot (even)
    act: u32,        // bit 0: biases, bit 1: clamped SwiGLU
    gate_bias: u32,  // word offset of the gate bias (f32) inside a slot
    up_bias: u32,    // word offset of the up bias (f32) inside a slot
    alpha: f32,
    limit: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> experts: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> assign: array<u32>;
@group(0) @binding(4) var<storage, read_write> h: array<f32>;

var<workgroup> rg: array<f32, 64>;
var<workgroup> ru: array<f32, 64>;

fn wload(i: u32) -> f32 {
    if (WDT == 0u) {
        return bitcast<f32>(experts[i]);
    }
    return decode_half(experts[i >> 1u], (i & 1u) == 1u);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = wid.x;
    let a = p.assign_base + wid.y;
    if (i >= p.inter || wid.y >= p.n_assign) {
        return;
    }
    let token = assign[2u * a];
    let slot = assign[2u * a + 1u];
    let gb = slot * p.slot_elems + p.gate_off + i * p.hidden;
    let ub = slot * p.slot_elems + p.up_off + i * p.hidden;
    let xb = token * p.hidden;
    var g = 0.0;
    var u = 0.0;
    if (WDT != 0u && (p.hidden & 1u) == 0u) {
        let half_h = p.hidden >> 1u;
        for (var c = lid; c < half_h; c += 64u) {
            let gv = decode_pair(experts[(gb >> 1u) + c]);
            let uv = decode_pair(experts[(ub >> 1u) + c]);
            let x0 = x[xb + 2u * c];
            let x1 = x[xb + 2u * c + 1u];
            g += gv.x * x0 + gv.y * x1;
            u += uv.x * x0 + uv.y * x1;
        }
    } else {
        for (var c = lid; c < p.hidden; c += 64u) {
            let xv = x[xb + c];
            g += wload(gb + c) * xv;
            u += wload(ub + c) * xv;
        }
    }
    rg[lid] = g;
    ru[lid] = u;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) {
            rg[lid] += rg[lid + s];
            ru[lid] += ru[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var gs = rg[0];
        var us = ru[0];
        if ((p.act & 1u) != 0u) {
            // The slot's first word: slot_elems elements of 4 or 2 bytes.
            let sw = slot * select(p.slot_elems, p.slot_elems >> 1u, WDT != 0u);
            gs += bitcast<f32>(experts[sw + p.gate_bias + i]);
            us += bitcast<f32>(experts[sw + p.up_bias + i]);
        }
        h[a * p.inter + i] = expert_act(gs, us, p.act, p.alpha, p.limit);
    }
}
