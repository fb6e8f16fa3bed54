// A token's routed expert rows added up (prepended to moe_combine and moe_combine_norm; not
// a kernel itself). The kernel declares `route` (per (token, choice) its assignment row of
// o) and `o` (the assignments' rows, already weighted), both storage arrays.

// sum_k o[route[rb + k] * hidden + j] over the top_k choices from rb, added in choice
// order as the CPU reference adds them. Four choices per iteration: their rows' loads do
// not wait on each other (one choice at a time made each route load and the o load after
// it a dependent pair).
fn routed_sum(rb: u32, top_k: u32, hidden: u32, j: u32) -> f32 {
    var s = 0.0;
    var k = 0u;
    for (; k + 4u <= top_k; k += 4u) {
        let r = vec4<u32>(route[rb + k], route[rb + k + 1u], route[rb + k + 2u],
                          route[rb + k + 3u]) * hidden + j;
        let v = vec4<f32>(o[r.x], o[r.y], o[r.z], o[r.w]);
        s = (((s + v.x) + v.y) + v.z) + v.w;
    }
    for (; k < top_k; k++) {
        s += o[route[rb + k] * hidden + j];
    }
    return s;
}
