// Expert down projection, scaled by the routing weight, addressed through cache slots:
// o[a, j] = weight[a] * dot(D[j, :], h[a, :]) with D the down tensor of the expert in the
// assignment's slot of this cache page (plus, with act bit 0, the slot's f32 bias b[j]
// before the weight). One workgroup per (output row j, assignment).
struct Params {
    hidden: u32,
    inter: u32,
    assign_base: u32,
    n_assign: u32,
    down_off: u32,   // element offset of the down tensor inside a slot
    slot_elems: u32, // elements per slot (even)
    act: u32,        // bit 0: add the down bias
    down_bias: u32,  // word offset of the down bias (f32) inside a slot
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> experts: array<u32>;
@group(0) @binding(2) var<storage, read> h: array<f32>;
@group(0) @binding(3) var<storage, read> assign: array<u32>;
@group(0) @binding(4) var<storage, read> route_w: array<f32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;

var<workgroup> red: array<f32, 64>;

fn wload(i: u32) -> f32 {
    if (WDT == 0u) {
        return bitcast<f32>(experts[i]);
    }
    return decode_half(experts[i >> 1u], (i & 1u) == 1u);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = wid.x;
    let a = p.assign_base + wid.y;
    if (j >= p.hidden || wid.y >= p.n_assign) {
        return;
    }
    let slot = assign[2u * a + 1u];
    let db = slot * p.slot_elems + p.down_off + j * p.inter;
    let hb = a * p.inter;
    var acc = 0.0;
    if (WDT != 0u && (p.inter & 1u) == 0u) {
        let half_i = p.inter >> 1u;
        for (var c = lid; c < half_i; c += 64u) {
            let v = decode_pair(experts[(db >> 1u) + c]);
            acc += v.x * h[hb + 2u * c] + v.y * h[hb + 2u * c + 1u];
        }
    } else {
        for (var c = lid; c < p.inter; c += 64u) {
            acc += wload(db + c) * h[hb + c];
        }
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var v = red[0];
        if ((p.act & 1u) != 0u) {
            let sw = slot * select(p.slot_elems, p.slot_elems >> 1u, WDT != 0u);
            v += bitcast<f32>(experts[sw + p.down_bias + j]);
        }
        o[a * p.hidden + j] = v * route_w[a];
    }
}
