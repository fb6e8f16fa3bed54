// Measures the subgroup size: each invocation of one 64-invocation workgroup writes the
// number of active invocations of its subgroup (all of them: control flow is uniform).
// Run once when a device with the subgroups feature opens; the team kernels use subgroup
// reductions only if every invocation saw the same power of two from 4 to 64.
struct Params {
    n: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> sizes: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32) {
    let n = subgroupAdd(1u);
    if (lid < p.n) {
        sizes[lid] = n;
    }
}
