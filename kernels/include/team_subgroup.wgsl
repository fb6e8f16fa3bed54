// Sums over a team of threads with a subgroup reduction (the variant for adapters with the
// subgroups feature and a fixed subgroup size; prepended to the kernels that reduce per
// team; not a kernel itself). The host makes a team exactly one subgroup (`team` = the
// subgroup size); should the driver run other subgroup sizes, the sums are NaN rather
// than silently wrong. Call from uniform control flow.
fn team_sum(v: vec4<f32>, lid: u32, team: u32) -> vec4<f32> {
    let ok = subgroupAdd(1u) == team;
    return select(vec4<f32>(bitcast<f32>(0x7fc00000u)), subgroupAdd(v), ok);
}
