// Decode routing without a host round trip: for the top_k experts the router chose for the
// one token of this step, look up their cache slots in the GPU slot table and write, per
// cache page, the assignment list the expert kernels read and the indirect dispatch sizes
// of the gate/up and down kernels over that page, and log the chosen ids for the host.
// Assignments of page p occupy rows p * top_k .. of the assignment buffers. An expert that is not resident sets this layer's
// miss flag (and points at slot 0 so the kernels stay in bounds); the host then discards
// the step and runs it again with a routing readback. So does an expert in a page whose
// kernels the host did not record (pages below 32 whose bit in page_mask is clear: the
// host skips pages that held none of the layer's experts when it recorded the step, and
// another session may have filled one since). One invocation does it all: top_k and the
// page count are small.
struct Params {
    top_k: u32,
    table_base: u32, // layer * n_experts
    layer: u32,
    slots_per_page: u32,
    n_pages: u32,
    gate_up_x: u32, // workgroups along x of the gate/up kernel
    down_x: u32,    // and of the down kernel
    page_mask: u32, // bit p: the kernels of page p (< 32) were recorded; pages >= 32 always
    log_base: u32,  // where this layer's chosen ids go in route_log (after the miss flags)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> weights: array<f32>;
@group(0) @binding(3) var<storage, read> table: array<u32>;
@group(0) @binding(4) var<storage, read_write> assign: array<u32>;
@group(0) @binding(5) var<storage, read_write> assign_w: array<f32>;
@group(0) @binding(6) var<storage, read_write> route: array<u32>;
// Per layer a miss flag, then per layer the top_k chosen ids (for the host's LRU order).
@group(0) @binding(7) var<storage, read_write> route_log: array<u32>;
// Per page: (gate_up_x, count, 1, down_x, count, 1).
@group(0) @binding(8) var<storage, read_write> args: array<u32>;

const NONE: u32 = 0xffffffffu;

@compute @workgroup_size(1)
fn main() {
    for (var pg = 0u; pg < p.n_pages; pg++) {
        args[6u * pg] = p.gate_up_x;
        args[6u * pg + 1u] = 0u;
        args[6u * pg + 2u] = 1u;
        args[6u * pg + 3u] = p.down_x;
        args[6u * pg + 4u] = 0u;
        args[6u * pg + 5u] = 1u;
    }
    for (var k = 0u; k < p.top_k; k++) {
        route_log[p.log_base + k] = ids[k];
        var slot = table[p.table_base + ids[k]];
        let recorded = slot / p.slots_per_page >= 32u
            || ((p.page_mask >> (slot / p.slots_per_page)) & 1u) != 0u;
        if (slot == NONE || !recorded) {
            route_log[p.layer] = 1u;
            slot = 0u;
        }
        let pg = slot / p.slots_per_page;
        let j = args[6u * pg + 1u];
        args[6u * pg + 1u] = j + 1u;
        args[6u * pg + 4u] = j + 1u;
        let a = pg * p.top_k + j;
        assign[2u * a] = 0u;
        assign[2u * a + 1u] = slot % p.slots_per_page;
        assign_w[a] = weights[k];
        route[k] = a;
    }
}
