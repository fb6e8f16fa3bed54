// The order of logit candidates shared by topk.wgsl and token_pick.wgsl, the order in which
// the host merges them (`engine::pass::decode_readout`): larger logit first, then smaller
// id; id NONE marks a missing candidate. The kernel declares `bv` and `bi`, workgroup
// arrays of one candidate (logit, id) per invocation.
const NONE: u32 = 0xffffffffu;

// Whether (v, i) comes before (w, j).
fn before(v: f32, i: u32, w: f32, j: u32) -> bool {
    return v > w || (v == w && i < j);
}

// After each invocation lid < 2 half wrote its candidate to bv / bi, leaves the best of them
// in bv[0] / bi[0] (a tree over the workgroup; half: the workgroup size / 2). Called by
// every invocation of the workgroup.
fn reduce_best(lid: u32, half: u32) {
    workgroupBarrier();
    for (var s = half; s > 0u; s >>= 1u) {
        if (lid < s) {
            let ov = bv[lid + s];
            let oi = bi[lid + s];
            if (oi != NONE && (bi[lid] == NONE || before(ov, oi, bv[lid], bi[lid]))) {
                bv[lid] = ov;
                bi[lid] = oi;
            }
        }
        workgroupBarrier();
    }
}
