// Sums over a team of threads with subgroup operations (the variant for adapters with the
// subgroups feature and a fixed subgroup size; prepended to the kernels that reduce per
// team; not a kernel itself). A team is one subgroup (`team` = the subgroup size), a part
// of one (`team` a smaller power of two, at least 4: its lanes' sums exchanged by
// butterfly shuffles, for rows of few blocks that would leave lanes of a whole subgroup
// idle), or, with `team` = 64, the whole workgroup: its subgroups' sums are then added
// through workgroup memory (a wide team, for matrices of few, long rows). Teams are
// consecutive invocations, as subgroups are; should the driver run a subgroup size that
// does not fit the team, the sums are NaN rather than silently wrong. Call from uniform
// control flow with `team` uniform; every invocation of a team gets its sum.
var<workgroup> team_parts: array<vec4<f32>, 16>; // a 64-invocation workgroup's subgroups

fn team_sum(v: vec4<f32>, lid: u32, team: u32) -> vec4<f32> {
    let sg = subgroupAdd(1u);
    let ok = sg == team || (team == 64u && 64u % sg == 0u && sg >= 4u)
        || (team < sg && team >= 4u && sg % team == 0u);
    var s = v;
    if (team < sg) {
        for (var m = 1u; m < team; m <<= 1u) {
            s += subgroupShuffleXor(s, m);
        }
    } else {
        s = subgroupAdd(v);
    }
    if (team == 64u) {
        if ((lid & (sg - 1u)) == 0u) {
            team_parts[(lid / sg) & 15u] = s;
        }
        workgroupBarrier();
        s = team_parts[0];
        for (var i = 1u; i < 64u / max(sg, 4u); i++) {
            s += team_parts[i];
        }
        workgroupBarrier(); // the parts are read before a next call writes them
    }
    return select(vec4<f32>(bitcast<f32>(0x7fc00000u)), s, ok);
}
