// Decode routing without a host round trip: route the one token of this step from its
// router logits (include/top_k.wgsl, the code the router kernel runs), then for the top_k
// experts chosen look up their cache slots in the GPU slot table and write, per
// cache page, the assignment list the expert kernels read and the indirect dispatch sizes
// of the gate/up and down kernels over that page, and log the chosen ids for the host.
// With `shared_expert`, the layer's shared expert (in a fixed cache slot, table entry
// n_experts) is one more choice (include/top_k.wgsl): `choices` = top_k + shared_expert.
// Assignments of page p occupy rows p * choices .. of the assignment buffers. An expert that is not resident sets this layer's
// miss flag (and points at slot 0 so the kernels stay in bounds); the host then discards
// the step and runs it again with a routing readback. So does an expert in a page whose
// kernels the host did not record (pages below 32 whose bit in page_mask is clear: the
// host skips pages that held none of the layer's experts when it recorded the step, and
// another session may have filled one since). The workgroup routes, looks up all chosen
// experts at once, and writes the assignments and the grids of every page in parallel
// (and the page's unused assignment rows as token 0, slot 0, weight 0, for hosts that
// dispatch all `choices` rows of a page directly).
struct Params {
    top_k: u32,
    table_base: u32, // layer * (n_experts + shared_expert)
    layer: u32,
    slots_per_page: u32,
    n_pages: u32,
    gate_up_x: u32, // workgroups along x of the gate/up kernel
    down_x: u32,    // and of the down kernel
    page_mask: u32, // bit p: the kernels of page p (< 32) were recorded; pages >= 32 always
    log_base: u32,  // where this layer's chosen ids go in route_log (after the miss flags)
    n_experts: u32,
    routing: u32, // as router.wgsl
    shared_expert: u32, // 1 gated, 2 ungated
    groups: u32,
    topk_groups: u32,
    scale: f32,
    pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> assign: array<u32>;
@group(0) @binding(4) var<storage, read_write> assign_w: array<f32>;
@group(0) @binding(5) var<storage, read_write> route: array<u32>;
// Per layer a miss flag, then per layer the top_k chosen ids (for the host's LRU order).
@group(0) @binding(6) var<storage, read_write> route_log: array<u32>;
// Per page: (gate_up_x, count, 1, down_x, count, 1).
@group(0) @binding(7) var<storage, read_write> args: array<u32>;
@group(0) @binding(8) var<storage, read> corr: array<f32>; // correction bias (routing 3, 4)

const NONE: u32 = 0xffffffffu;

@compute @workgroup_size(128)
fn main(@builtin(local_invocation_index) lid: u32) {
    route_top_k(0u, p.n_experts, p.top_k, p.routing, p.shared_expert,
                Groups(p.groups, p.topk_groups, p.scale), lid);
    let with_shared = min(p.shared_expert, 1u);
    let choices = p.top_k + with_shared;
    // Look the chosen experts up in parallel; tk_id[k] becomes the slot (0 for a miss).
    for (var k = lid; k < choices; k += TK_WG) {
        let id = tk_id[k];
        if (k < p.top_k) {
            route_log[p.log_base + k] = id;
        }
        // An empty choice (NaN logits) is a miss.
        let last = p.n_experts + with_shared - 1u;
        var slot = select(table[p.table_base + min(id, last)], NONE, id == NONE);
        let pg = slot / p.slots_per_page;
        let recorded = pg >= 32u || ((p.page_mask >> pg) & 1u) != 0u;
        if (slot == NONE || !recorded) {
            route_log[p.layer] = 1u;
            slot = 0u;
        }
        tk_id[k] = slot;
    }
    workgroupBarrier();
    // Assignment j of page pg is row pg * top_k + j, j counting the earlier choices in pg.
    // A slot s is in page pg when s - pg * slots_per_page < slots_per_page (wrapping): the
    // serial loops compare rather than divide every slot (on an H200 their divisions cost
    // the kernel 0.8 of its 6.3 us).
    for (var k = lid; k < choices; k += TK_WG) {
        let slot = tk_id[k];
        let pg = slot / p.slots_per_page;
        let first = pg * p.slots_per_page;
        var j = 0u;
        for (var o = 0u; o < k; o++) {
            j += u32(tk_id[o] - first < p.slots_per_page);
        }
        let a = pg * choices + j;
        assign[2u * a] = 0u;
        assign[2u * a + 1u] = slot - first;
        assign_w[a] = tk_w[k];
        route[k] = a;
    }
    for (var pg = lid; pg < p.n_pages; pg += TK_WG) {
        let first = pg * p.slots_per_page;
        var count = 0u;
        for (var k = 0u; k < choices; k++) {
            count += u32(tk_id[k] - first < p.slots_per_page);
        }
        args[6u * pg] = p.gate_up_x;
        args[6u * pg + 1u] = count;
        args[6u * pg + 2u] = 1u;
        args[6u * pg + 3u] = p.down_x;
        args[6u * pg + 4u] = count;
        args[6u * pg + 5u] = 1u;
        // The page's other rows: token 0, slot 0, weight 0, for the host's direct grids
        // (which run all `choices` rows of a page; the combine reads only the chosen ones).
        for (var j = count; j < choices; j++) {
            let a = pg * choices + j;
            assign[2u * a] = 0u;
            assign[2u * a + 1u] = 0u;
            assign_w[a] = 0.0;
        }
    }
}
