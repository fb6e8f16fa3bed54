// Expert gate/up projections with the SwiGLU activation, addressed through cache slots:
// for assignment a = (token, slot): h[a, i] = silu(dot(G[i, :], x[token])) * dot(U[i, :], x[token]),
// G and U of the expert in `slot` of this cache page. One workgroup per (row i, assignment).
struct Params {
    hidden: u32,
    inter: u32,
    assign_base: u32,
    n_assign: u32,
    gate_off: u32,   // element offset of the gate tensor inside a slot
    up_off: u32,     // element offset of the up tensor inside a slot
    slot_elems: u32, // elements per slot (even)
    pad0: u32,
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
        let gs = rg[0];
        h[a * p.inter + i] = gs / (1.0 + exp(-gs)) * ru[0];
    }
}
