// Decode routing without a host round trip: for the top_k experts the router chose for the
// one token of this step, look up their cache slots in the GPU slot table and write the
// assignment list the expert kernels read. An expert that is not resident sets this
// layer's miss flag (and points at slot 0 so the kernels stay in bounds); the host then
// discards the step and runs it again with a routing readback.
struct Params {
    top_k: u32,
    table_base: u32, // layer * n_experts
    layer: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> weights: array<f32>;
@group(0) @binding(3) var<storage, read> table: array<u32>;
@group(0) @binding(4) var<storage, read_write> assign: array<u32>;
@group(0) @binding(5) var<storage, read_write> assign_w: array<f32>;
@group(0) @binding(6) var<storage, read_write> route: array<u32>;
@group(0) @binding(7) var<storage, read_write> miss: array<u32>;

const NONE: u32 = 0xffffffffu;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) k: u32) {
    if (k >= p.top_k) {
        return;
    }
    var slot = table[p.table_base + ids[k]];
    if (slot == NONE) {
        miss[p.layer] = 1u;
        slot = 0u;
    }
    assign[2u * k] = 0u;
    assign[2u * k + 1u] = slot;
    assign_w[k] = weights[k];
    route[k] = k;
}
