// Sums over a team of threads through workgroup memory (the portable variant; prepended to
// the kernels that reduce per team; not a kernel itself). A team is `team` consecutive
// invocations (a power of two, at most 64) of a 64-invocation workgroup. Call from uniform
// control flow with `team` uniform; the sum is valid in the team's first invocation.
var<workgroup> team_red: array<vec4<f32>, 64>;

fn team_sum(v: vec4<f32>, lid: u32, team: u32) -> vec4<f32> {
    team_red[lid] = v;
    workgroupBarrier();
    for (var s = team >> 1u; s > 0u; s >>= 1u) {
        if ((lid & (team - 1u)) < s) {
            team_red[lid] += team_red[lid + s];
        }
        workgroupBarrier();
    }
    return team_red[lid];
}
